"""Pydantic's errors in lstmflow's words: where (the YAML path as the user wrote it), what is wanted and what was
given, and a did-you-mean for a misspelt name."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

from pydantic_core import ErrorDetails

from lstmflow.config.data import DATA_KINDS


def user_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """An error location as the user wrote it: without validator names and the data union's tag."""
    kept: list[Any] = []
    for part in loc:
        if isinstance(part, str) and (part.startswith("function-") or (kept[-1:] == ["data"] and part in DATA_KINDS)):
            continue
        kept.append(part)
    return tuple(kept)


def location_text(loc: tuple[Any, ...]) -> str:
    """An error location as a YAML path: ``model.layers[1].lstm.units``."""
    text = ""
    for part in user_loc(loc):
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def describe_error(error: ErrorDetails) -> str:
    """Turn one pydantic error into lstmflow's wording: what is wanted, and what was given."""
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    got = f", got {value!r}" if not isinstance(value, (dict, list)) else ""
    bounds = {
        "greater_than": "> {gt}",
        "greater_than_equal": ">= {ge}",
        "less_than": "< {lt}",
        "less_than_equal": "<= {le}",
    }
    if kind in bounds:
        limits = {name: f"{limit:g}" if isinstance(limit, float) else limit for name, limit in ctx.items()}
        return f"must be {bounds[kind].format(**limits)}{got}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}{got}{_closest(value, ctx['expected'])}"
    if kind == "union_tag_invalid":
        hint = _closest(ctx["tag"], ctx["expected_tags"])
        return f"kind must be one of {ctx['expected_tags']}, got {ctx['tag']!r}{hint}"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind in {"int_parsing", "int_type", "int_from_float"}:
        return f"must be a whole number{got}"
    if kind in {"float_parsing", "float_type"}:
        return f"must be a number{got}"
    if kind in {"bool_parsing", "bool_type"}:
        return f"must be true or false{got}"
    if kind in {"string_type"}:
        return f"must be text{got}"
    if kind in {"list_type"}:
        return f"must be a list{got}"
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return f"must be a mapping{got}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg'][0].lower()}{error['msg'][1:]}{got}"


def _closest(value: Any, expected: str) -> str:
    """A did-you-mean among the quoted choices of a pydantic message (``'a', 'b' or 'c'``) for a text value."""
    return did_you_mean(value, re.findall(r"'([^']*)'", expected)) if isinstance(value, str) else ""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` naming the known name closest to a misspelt one, or nothing when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
