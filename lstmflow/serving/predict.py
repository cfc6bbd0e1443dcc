"""`lstmflow predict`: raw command-line inputs made into the request table that the served model takes.

The rule, by the data kind of the registered model's own spec (not today's pipelines.yaml):

- INPUTs that name ``.csv`` or ``.parquet`` files are tables already in the request layout (the columns that
  ``lstmflow serve`` takes); several are stacked. Every pipeline accepts them; sequences need them.
- ``text``: each INPUT is one text.  ``audio``, ``images``, ``speech``, ``video``: each INPUT is a file.  ``corpus``:
  each INPUT is a prompt.  ``pairs`` (a translator): each INPUT is a text to translate.
- ``timeseries``: the INPUTs are the last values of its one input column, oldest first (a series with several input
  columns needs a table of its recent rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from lstmflow.errors import DataError

TABLE_SUFFIXES = (".csv", ".parquet")


def request_table(spec: Any, inputs: list[str], series_columns: list[str] | None = None) -> pd.DataFrame:
    """The request for ``inputs`` under the rule above; ``series_columns`` are a forecaster's input columns."""
    if not inputs:
        raise DataError("give at least one INPUT (see `lstmflow predict --help`)")
    tables = [text for text in inputs if is_table(text)]
    if tables:
        if len(tables) != len(inputs):
            others = [text for text in inputs if text not in tables]
            raise DataError(
                f"INPUTs mix tables ({', '.join(tables)}) with other values ({', '.join(others[:3])}); "
                "give one or the other"
            )
        return pd.concat([_read_table(Path(path)) for path in tables], ignore_index=True)
    kind = spec.data.kind
    if kind == "text":
        return pd.DataFrame({spec.data.text_column: inputs})
    if kind in ("audio", "images", "speech", "video"):
        missing = [text for text in inputs if not Path(text).is_file()]
        if missing:
            raise DataError(f"INPUT {missing[0]!r}: no such file (a {kind} pipeline takes one file per INPUT)")
        return pd.DataFrame({"path": [str(Path(text).resolve()) for text in inputs]})
    if kind == "corpus":
        return pd.DataFrame({"prompt": inputs})
    if kind == "pairs":
        return pd.DataFrame({"text": inputs})
    if kind == "timeseries" and series_columns is not None and len(series_columns) == 1:
        return pd.DataFrame({series_columns[0]: [_number(text) for text in inputs]})
    needs = "its recent rows" if kind == "timeseries" else "its sequences, in the layout of its data"
    raise DataError(
        f"pipeline {spec.name} (data kind {kind}) takes a .csv or .parquet table of {needs}, got {inputs[0]!r}"
    )


def is_table(text: str) -> bool:
    """Whether an INPUT names a table file (read as a request) rather than being a raw value."""
    return Path(text).suffix.lower() in TABLE_SUFFIXES and Path(text).is_file()


def answer_by_input(answer: pd.DataFrame, inputs: list[str]) -> pd.DataFrame:
    """A classifier's answer with each row's ``key`` (its row number in the request) replaced by the raw INPUT it
    answers, so that the printed table says which text or file got which label; tables keep their keys."""
    if "key" not in answer.columns or any(is_table(text) for text in inputs):
        return answer
    return answer.assign(key=[inputs[int(key)] for key in answer["key"]]).rename(columns={"key": "input"})


def _read_table(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    except (ValueError, OSError) as exc:
        raise DataError(f"INPUT {str(path)!r}: cannot read the table: {exc}") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataError(
            f"INPUT {text!r}: not a number (a forecast takes the series' last values, or a table)"
        ) from None
