"""The ``pipelines.yaml`` reference, generated from the spec models so it cannot drift from them."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from lstmflow.config.base import model_in
from lstmflow.config.data import DATA_SPECS
from lstmflow.config.loading import ConfigFile
from lstmflow.config.model import LayerSpec
from lstmflow.config.pipeline import PipelineSpec


def _type_name(annotation: Any) -> str:
    """A type as a user reads it: `` `a`, `b` `` for a Literal, ``int or `auto` `` for a union, ``null`` for None."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return ", ".join(f"`{value}`" for value in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in args)
    if annotation is type(None):
        return "null"
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or str(annotation).replace("typing.", "").replace("pathlib.", "")


def _default_text(field: Any) -> str:
    """A key's default as the table shows it: JSON, ``required``, or nothing for a section listed key by key."""
    if field.default_factory is not None:
        value = field.default_factory()
        structured = isinstance(value, BaseModel) or (
            isinstance(value, list) and value and isinstance(value[0], BaseModel)
        )
        return "" if structured else json.dumps(value)  # mappings and layer lists: their keys are listed below
    if field.default is PydanticUndefined:
        return "required"
    return json.dumps(
        field.default.model_dump(mode="json") if isinstance(field.default, BaseModel) else field.default, default=str
    )


def fields_of(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(key, type, default, description)`` for every key under ``model``, depth first."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if model is PipelineSpec and name == "data":
            meaning = f"{field.description} Its keys depend on `data.kind`: see the tables below."
            rows.append((key, "mapping", "required", meaning))
            continue
        nested = model_in(field.annotation)
        if nested is LayerSpec:
            type_name = "list of layers"
        elif nested and not str(field.annotation).startswith("list"):
            type_name = "mapping"
        else:
            type_name = _type_name(field.annotation)
        rows.append((key, type_name, _default_text(field), field.description or ""))
        if nested is LayerSpec and "[]." not in prefix:  # layers inside a layer have the keys listed once
            rows.extend(fields_of(nested, f"{key}[]."))
        elif nested is LayerSpec:
            continue
        elif nested is not None and typing.get_origin(field.annotation) is dict:
            rows.extend(fields_of(nested, f"{key}.<key>."))  # named entries: `search.space.<key>.int`
        elif nested is not None:
            rows.extend(fields_of(nested, f"{key}."))
    return rows


def _markdown_table(rows: list[tuple[str, str, str, str]]) -> str:
    """Rows from :func:`fields_of` as a Markdown table, with the pipes inside cells escaped."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, type_name, default, description in rows:
        cells = [
            f"`{key}`",
            type_name.replace("|", "\\|"),
            f"`{default}`" if default else "",
            description.replace("|", "\\|"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reference_markdown() -> str:
    """The file's top level, every key of a pipeline, then the keys of each kind of data: one table each."""
    sections = [
        "Top level of the file:\n\n" + _markdown_table(fields_of(ConfigFile)),
        "Keys of each pipeline (`pipelines.NAME.…`, or `defaults.…`):\n\n"
        + _markdown_table([r for r in fields_of(PipelineSpec) if r[0] != "name"]),
    ]
    for kind, spec in DATA_SPECS.items():
        summary = (spec.__doc__ or "").strip().rstrip(".")
        sections.append(f"`data` with `kind: {kind}` ({summary}):\n\n" + _markdown_table(fields_of(spec, "data.")))
    return "\n\n".join(sections) + "\n"
