"""What every predictor does with a request it cannot answer.

A request the model cannot answer (a missing column, too few rows, a value of the wrong type, a file that does not
decode) raises :class:`BadRequest` naming the problem; served, that is MLflow's invalid-parameter error, an HTTP 400
with the message, and the server goes on serving.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from lstmflow.errors import LstmflowError


class BadRequest(ValueError):
    """A request that the model cannot answer as sent: the caller's to fix, not the server's."""


def require_columns(frame: pd.DataFrame, columns: list[str]) -> None:
    """A BadRequest naming the columns of ``columns`` that ``frame`` lacks, if any."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise BadRequest(f"the request lacks column(s) {missing}; it has {[str(c) for c in frame.columns]}")


def decoded(key: Any, decode: Callable[..., Any]) -> Any:
    """``decode()`` of one sample of a request; what goes wrong there is named by the sample's key."""
    try:
        return decode()
    except (ValueError, TypeError, OSError, LstmflowError) as exc:
        raise BadRequest(f"sample {key!r}: {exc}") from None
