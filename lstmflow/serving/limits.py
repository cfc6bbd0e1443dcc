"""The bounds a served model puts on a request, each set by an environment variable where the model is served.

MLflow's scoring server reads the whole body and parses its JSON before any lstmflow code runs; lstmflow checks
the raw body first (:func:`check_body`: its size, then how deeply its JSON nests, so that a body of 100,000 ``[``
is a 400 rather than a crash of the parser) and then what reaches the predictors (rows, generated tokens). Every
refusal names the bound and the variable that sets it.

=============================  =========  ===================================================================
variable                       default    bounds
=============================  =========  ===================================================================
``LSTMFLOW_SERVE_MAX_BYTES``   16777216   the request body (16 MiB), else HTTP 413
``LSTMFLOW_SERVE_MAX_DEPTH``   16         how deeply the body's JSON nests (``{"dataframe_split": {"data":
                                          [[...]]}}`` is 4), else 400
``LSTMFLOW_SERVE_MAX_ROWS``    100000     rows of one request, else 400
``LSTMFLOW_SERVE_MAX_TOKENS``  10000      tokens a language model generates for one prompt, else 400
=============================  =========  ===================================================================
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstmflow.errors import ConfigError
from lstmflow.serving.request_checks import BadRequest

DEFAULTS = {
    "LSTMFLOW_SERVE_MAX_BYTES": 16 * 1024 * 1024,
    "LSTMFLOW_SERVE_MAX_DEPTH": 16,
    "LSTMFLOW_SERVE_MAX_ROWS": 100_000,
    "LSTMFLOW_SERVE_MAX_TOKENS": 10_000,
}


class TooLarge(BadRequest):
    """A request body over the size bound: HTTP 413, not 400."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_depth: int
    max_rows: int
    max_tokens: int


def limits() -> Limits:
    """The bounds in force: each variable of :data:`DEFAULTS` if set (a positive whole number), else its default."""
    values = {}
    for name, default in DEFAULTS.items():
        text = os.environ.get(name, "").strip()
        if not text:
            values[name] = default
            continue
        try:
            values[name] = int(text.replace("_", ""))
        except ValueError:
            values[name] = 0
        if values[name] < 1:
            raise ConfigError(f"environment variable {name}={text!r}: give a positive whole number (default {default})")
    return Limits(*values.values())


#: A JSON string (escapes included), or one bracket: what :func:`json_depth` reads.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def json_depth(body: bytes) -> int:
    """How deeply the JSON in ``body`` nests (``[]`` is 1), read without parsing it: brackets outside strings."""
    stripped = np.frombuffer(_STRING.sub(b"", body), dtype=np.uint8)
    steps = np.isin(stripped, (ord("["), ord("{"))).astype(np.int64) - np.isin(stripped, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def check_body(body: bytes, bounds: Limits | None = None) -> None:
    """A :class:`TooLarge` (413) for a body over the size bound, a :class:`BadRequest` for JSON nested deeper than
    the depth bound; checked on the raw bytes, before anything parses them."""
    bounds = bounds or limits()
    if len(body) > bounds.max_bytes:
        raise TooLarge(
            f"the request body is {len(body)} bytes; this server takes at most {bounds.max_bytes} "
            f"(LSTMFLOW_SERVE_MAX_BYTES)"
        )
    depth = json_depth(body)
    if depth > bounds.max_depth:
        raise BadRequest(
            f"the request's JSON nests {depth} levels deep; this server takes at most {bounds.max_depth} "
            f'(LSTMFLOW_SERVE_MAX_DEPTH); a request is a table: {{"dataframe_records": [{{...}}, ...]}}'
        )


def check_rows(rows: int, bounds: Limits | None = None) -> None:
    """A :class:`BadRequest` for a request of more rows than the row bound."""
    bounds = bounds or limits()
    if rows > bounds.max_rows:
        raise BadRequest(
            f"the request has {rows} rows; this model takes at most {bounds.max_rows} at a time "
            f"(LSTMFLOW_SERVE_MAX_ROWS); split it"
        )


_TRUE_FALSE = re.compile(rb"\b(?:true|false)\b")


def check_no_booleans(body: bytes) -> None:
    """A :class:`BadRequest` naming the column and row of the first true/false value in a JSON request: no lstmflow
    model takes one, and MLflow's parser would silently turn it into 1.0 or 0.0 before the model sees it."""
    if not _TRUE_FALSE.search(_STRING.sub(b"", body)):
        return
    import json

    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return  # not JSON: MLflow's parser says so
    found = _first_boolean(payload)
    if found is not None:
        column, row, value = found
        raise BadRequest(
            f"column {column!r}, row {row!r}: {json.dumps(value)} is not a value this model takes (numbers, text, "
            f"file paths)"
        )


def _first_boolean(payload: object) -> tuple[str, object, bool] | None:
    """(column, row, value) of the first true/false cell of a dataframe_records or dataframe_split request."""
    if not isinstance(payload, dict):
        return None
    records = payload.get("dataframe_records")
    if isinstance(records, list):
        for row, record in enumerate(records):
            for column, value in record.items() if isinstance(record, dict) else []:
                if (found := _boolean_in(value)) is not None:
                    return str(column), row, found
    split = payload.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("data"), list):
        columns: list[Any] = split["columns"] if isinstance(split.get("columns"), list) else []
        index: list[Any] = split["index"] if isinstance(split.get("index"), list) else []
        for position, cells in enumerate(split["data"]):
            for j, value in enumerate(cells if isinstance(cells, list) else [cells]):
                if (found := _boolean_in(value)) is not None:
                    column = columns[j] if j < len(columns) else j
                    return str(column), index[position] if position < len(index) else position, found
    for key in ("inputs", "instances"):
        if (found := _boolean_in(payload.get(key))) is not None:
            return key, 0, found
    return None


def _boolean_in(value: object) -> bool | None:
    """The first true/false inside ``value`` (itself, or in a list or mapping it holds), else None."""
    if isinstance(value, bool):
        return value
    items = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else []
    for item in items:
        if (found := _boolean_in(item)) is not None:
            return found
    return None
