"""What every predictor does with a request it cannot answer.

A request the model cannot answer (a missing column, too few rows, a value of the wrong type, a missing or
infinite number, a file that does not decode or may not be read) raises :class:`BadRequest` naming the problem,
the column and the row; served, that is MLflow's invalid-parameter error, an HTTP 400 with the message, and the
server goes on serving.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from lstmflow.errors import LstmflowError


class BadRequest(ValueError):
    """A request that the model cannot answer as sent: the caller's to fix, not the server's."""


def require_columns(frame: pd.DataFrame, columns: list[str]) -> None:
    """A BadRequest naming the columns of ``columns`` that ``frame`` lacks, if any."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        shown = [str(c) for c in frame.columns]
        more = f" and {len(shown) - 20} more" if len(shown) > 20 else ""
        raise BadRequest(f"the request lacks column(s) {missing[:20]}; it has {shown[:20]}{more}")


def decoded(key: Any, decode: Callable[..., Any]) -> Any:
    """``decode()`` of one sample of a request; what goes wrong there is named by the sample's key."""
    try:
        return decode()
    except (ValueError, TypeError, OSError, LstmflowError) as exc:
        raise BadRequest(f"sample {key!r}: {exc}") from None


def describe(value: Any) -> str:
    """A request cell as a message names it: a missing value, or its type."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "a missing value"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def numbers(frame: pd.DataFrame, columns: list[str], allow_missing: bool = False) -> np.ndarray:
    """``frame[columns]`` as float64 (rows, columns), refused with a BadRequest naming the column and row of the
    first cell that is not a finite number: text, true/false, a list, infinity or (unless ``allow_missing``) a
    missing value. Wide sequences allow missing cells: they end a shorter sequence."""
    for column in columns:
        cells = frame[column]
        if pd.api.types.is_bool_dtype(cells.dtype):
            raise BadRequest(f"column {column!r}, row {cells.index[0]!r}: true/false values are not numbers")
        if not pd.api.types.is_numeric_dtype(cells.dtype):
            for row, value in cells.items():
                if isinstance(value, (bool, np.bool_)) or not _is_number(value):
                    if allow_missing and describe(value) == "a missing value":
                        continue
                    shown = repr(value) if isinstance(value, (str, bool, np.bool_)) else describe(value)
                    raise BadRequest(f"column {column!r}, row {row!r}: {shown[:80]} is not a number")
    values = frame[columns].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) & (~np.isnan(values) if allow_missing else True)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        what = "a missing value (NaN)" if np.isnan(values[i, j]) else f"{values[i, j]} (not finite)"
        raise BadRequest(f"column {columns[j]!r}, row {frame.index[i]!r}: {what}; this model takes finite numbers")
    return values


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) or value is None
