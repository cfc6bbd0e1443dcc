"""What every spec model shares: the strict base class, and finding a spec model inside a type annotation."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Base of every spec model: unknown keys are errors and specs are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The spec model inside a type annotation (``X | None``, ``list[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for arg in getattr(annotation, "__args__", ()) if (m := model_in(arg))), None)
