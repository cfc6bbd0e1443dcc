"""Reading user tables (CSV or Parquet) so that every bad cell can be named: shared by every tabular data kind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lstmflow.errors import DataError

#: How many offending rows or cells an error message lists before "and N more".
SHOWN = 5

#: Names a data row, given its position (a Python or numpy integer), as the user finds it: ``line 7``, ``row 6``.
RowLabel = Callable[[int | np.integer[Any]], str]


def read_table(path: Path, where: str) -> pd.DataFrame:
    """CSV cells are read as text so that a bad cell can be reported with its value, not silently coerced; a file
    that is empty, not valid CSV or not Parquet is a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{where}.path: no file at {path}")
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".parquet", ".pq"}:
        raise DataError(f"{where}.path: {path} must be a .csv or .parquet file, got suffix {path.suffix!r}")
    if path.stat().st_size == 0:
        raise DataError(f"{where}.path: {path} is empty (0 bytes); it needs a header line and data rows")
    if suffix == ".csv":
        return _read_csv(path, where)
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{where}.path: {path} is not a readable Parquet file ({_first_line(exc)})") from None
    # A frame saved with its time as the index comes back with it there; make it a column again.
    return table if isinstance(table.index, pd.RangeIndex) else table.reset_index()


def _read_csv(path: Path, where: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str)
    except pd.errors.EmptyDataError:
        raise DataError(f"{where}.path: {path} has no header line (only blank lines)") from None
    except pd.errors.ParserError as exc:
        raise DataError(
            f"{where}.path: {path} is not valid CSV ({_first_line(exc)}); quote cells that hold commas"
        ) from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{where}.path: {path} is not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start} "
            "cannot be decoded; save the file as UTF-8 CSV"
        ) from None


def _first_line(exc: Exception) -> str:
    """The first line of a library's error, without its "Error tokenizing data. C error:" preamble."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.replace("Error tokenizing data. C error: ", "")


def row_namer(path: Path) -> RowLabel:
    """Name a data row as the user finds it: the line in a CSV (header is line 1, one line per row), else the row."""
    if path.suffix.lower() == ".csv":
        return lambda position: f"line {position + 2}"
    return lambda position: f"row {position + 1}"


def cell_text(value: Any) -> str | None:
    """A table cell as text; an empty cell (None or NaN) as None."""
    return None if pd.api.types.is_scalar(value) and pd.isna(value) else str(value)


def listing(items: list[str]) -> str:
    """The first few offending rows or cells for an error message, then "and N more"."""
    shown = ", ".join(items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def numeric_values(
    table: pd.DataFrame, columns: list[str], path: Path, row_label: RowLabel, where: str
) -> pd.DataFrame:
    """Convert the value columns to float64; every non-numeric or infinite cell is reported, not coerced."""
    converted: dict[str, pd.Series] = {}
    bad: list[str] = []
    for name in columns:
        cells = table[name]
        numbers = pd.to_numeric(cells, errors="coerce").astype(np.float64)
        wrong = (numbers.isna() & cells.notna()) | np.isinf(numbers)
        bad += [f"{row_label(i)} column {name!r}: {cells.iloc[i]!r}" for i in np.flatnonzero(wrong.to_numpy())]
        converted[name] = numbers
    if bad:
        raise DataError(f"{where}: {path} has {len(bad)} non-numeric or infinite cell(s): {listing(bad)}")
    return pd.DataFrame(converted)
