"""Reading labelled sequences from a table, long (one row per step) or wide (one row per sequence), every bad cell
named; with ``split.files``, three tables read as one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from lstmflow.config import SequenceTableSpec
from lstmflow.data.parts import read_parts
from lstmflow.data.tables import RowLabel, cell_text, listing, numeric_values, read_table, row_namer
from lstmflow.errors import DataError


class SequenceTable(NamedTuple):
    """Sequences read from a table: raw (T, F) float64 steps, labels as text, how messages name each sequence,
    the given part per sequence (split column or file; None when there is none), and the feature names."""

    sequences: list[np.ndarray]
    labels: list[str]
    names: list[str]
    given_parts: Sequence[str | None] | None
    features: tuple[str, ...]


def read_sequence_table(spec: SequenceTableSpec, where: str) -> SequenceTable:
    """Read a long or wide table of labelled sequences (CSV or Parquet), or three with ``split.files``; every bad
    cell is a named DataError."""
    return read_parts(spec, where, _read_sequence_file)


def _read_sequence_file(spec: SequenceTableSpec, where: str) -> SequenceTable:
    path = Path(spec.path)
    table = read_table(path, where)
    if spec.format == "long":
        wanted = [spec.id_column, *spec.value_columns, spec.label_column, spec.time_column, spec.split.column]
    else:
        wanted = [spec.id_column, *spec.value_columns, spec.label_column, spec.split.column]
    missing = [name for name in wanted if name is not None and name not in table.columns]
    if missing:
        raise DataError(f"{where}: {path} has no column(s) {missing}; available: {list(table.columns)}")
    if table.empty:
        raise DataError(f"{where}.path: {path} has a header but no data rows")
    return _read_long(spec, table, path, where) if spec.format == "long" else _read_wide(spec, table, path, where)


def _empty_cells(table: pd.DataFrame, column: str, row_label: RowLabel, path: Path, where: str, field: str) -> None:
    empty = np.flatnonzero(table[column].isna().to_numpy())
    if empty.size:
        rows = [row_label(i) for i in empty]
        raise DataError(f"{where}.{field}: {path} has {len(rows)} empty cell(s) in {column!r}: {listing(rows)}")


def _read_long(spec: SequenceTableSpec, table: pd.DataFrame, path: Path, where: str) -> SequenceTable:
    """One row per step: group by id (in order of first appearance), order by time, one label per series."""
    row_label = row_namer(path)
    id_column = spec.id_column
    assert id_column is not None, "SequenceTableSpec requires id_column for format: long"
    _empty_cells(table, id_column, row_label, path, where, "id_column")
    ids = table[id_column].astype(str).to_numpy()
    codes, unique_ids = pd.factorize(ids, sort=False)
    values = numeric_values(table, spec.value_columns, path, row_label, where)
    empty = [
        f"{row_label(i)} column {name!r} (series {ids[i]!r})"
        for name in spec.value_columns
        for i in np.flatnonzero(values[name].isna().to_numpy())
    ]
    if empty:
        raise DataError(f"{where}.value_columns: {path} has {len(empty)} empty value cell(s): {listing(empty)}")

    if spec.time_column is None:
        order = np.argsort(codes, kind="stable")
    else:
        times = _times(table[spec.time_column], row_label, path, where)
        order = np.lexsort((times, codes))
        sorted_codes, sorted_times = codes[order], times[order]
        repeated = np.flatnonzero((sorted_codes[1:] == sorted_codes[:-1]) & (sorted_times[1:] == sorted_times[:-1]))
        if repeated.size:
            shown = [
                f"series {unique_ids[sorted_codes[i]]!r} at {table[spec.time_column].iloc[order[i]]!r}"
                for i in repeated
            ]
            raise DataError(f"{where}.time_column: {len(shown)} repeated time(s) within a series: {listing(shown)}")
    counts = np.bincount(codes, minlength=len(unique_ids))
    steps = values.to_numpy(np.float64)[order]
    sequences = np.split(steps, np.cumsum(counts)[:-1])

    first_rows = np.unique(codes, return_index=True)[1]  # codes number the ids in order of first appearance
    names = [f"series {series_id!r} ({row_label(row)})" for series_id, row in zip(unique_ids, first_rows)]
    labels = _one_per_series(table[spec.label_column], codes, unique_ids, where, "label_column")
    given = None
    if spec.split.column is not None:
        given = _one_per_series(table[spec.split.column], codes, unique_ids, where, "split.column")
    return SequenceTable(list(sequences), labels, names, given, tuple(spec.value_columns))


def _times(cells: pd.Series, row_label: RowLabel, path: Path, where: str) -> np.ndarray:
    """Numbers or dates as sortable numbers; an empty or unreadable cell is named."""
    empty = np.flatnonzero(cells.isna().to_numpy())
    if empty.size:
        rows = [row_label(i) for i in empty]
        raise DataError(
            f"{where}.time_column: {path} has {len(rows)} empty time cell(s) in {cells.name!r}: {listing(rows)}"
        )
    if pd.api.types.is_numeric_dtype(cells) or pd.api.types.is_datetime64_any_dtype(cells):
        parsed = cells
    else:
        # Numbers when any cell is one (so a stray word is reported against the numbers), else dates.
        parsed = pd.to_numeric(cells, errors="coerce")
        if parsed.isna().all():
            parsed = pd.to_datetime(cells, errors="coerce", format="mixed")
    bad = np.flatnonzero(pd.isna(parsed).to_numpy())
    if bad.size:
        rows = [f"{row_label(i)}: {cells.iloc[i]!r}" for i in bad]
        raise DataError(
            f"{where}.time_column: {path} has {len(rows)} time(s) in {cells.name!r} "
            f"that are neither numbers nor dates: {listing(rows)}"
        )
    if pd.api.types.is_datetime64_any_dtype(parsed):
        return parsed.to_numpy().astype("datetime64[ns]").astype(np.int64)
    return parsed.to_numpy(np.float64)


def _one_per_series(cells: pd.Series, codes: np.ndarray, unique_ids: np.ndarray, where: str, field: str) -> list[str]:
    """The one value a column holds for each series; an empty cell or two different values name the series."""
    frame = pd.DataFrame({"series": codes, "value": cells.map(cell_text).to_numpy()})
    grouped = frame.groupby("series", sort=True)["value"]
    has_empty = np.bincount(codes, weights=frame["value"].isna().to_numpy(), minlength=len(unique_ids)) > 0
    distinct = grouped.nunique().to_numpy()
    no_value = [repr(unique_ids[s]) for s in np.flatnonzero(distinct == 0)]
    if no_value:
        raise DataError(f"{where}.{field}: {len(no_value)} series with no {cells.name!r} at all: {listing(no_value)}")
    partly = [repr(unique_ids[s]) for s in np.flatnonzero(has_empty)]
    if partly:
        raise DataError(f"{where}.{field}: {len(partly)} series with an empty {cells.name!r} cell: {listing(partly)}")
    several = np.flatnonzero(distinct > 1)
    if several.size:
        shown = [
            f"{unique_ids[s]!r} ({', '.join(map(repr, sorted(frame['value'][codes == s].unique())))})" for s in several
        ]
        raise DataError(f"{where}.{field}: {len(shown)} series with more than one {cells.name!r}: {listing(shown)}")
    return grouped.first().tolist()


def _read_wide(spec: SequenceTableSpec, table: pd.DataFrame, path: Path, where: str) -> SequenceTable:
    """One row per sequence, one column per step; empty trailing cells make a sequence shorter."""
    row_label = row_namer(path)
    others = {spec.label_column, spec.id_column, spec.split.column}
    steps_columns = list(spec.value_columns) or [name for name in table.columns if name not in others]
    if not steps_columns:
        named = sorted(name for name in others if name is not None)
        raise DataError(f"{where}.value_columns: {path} has no step columns besides {named}")
    _empty_cells(table, spec.label_column, row_label, path, where, "label_column")
    steps = numeric_values(table, steps_columns, path, row_label, where).to_numpy(np.float64)  # (N, S)
    present = ~np.isnan(steps)
    lengths = np.where(present.any(axis=1), steps.shape[1] - np.argmax(present[:, ::-1], axis=1), 0)
    holes = [
        f"{row_label(row)} column {steps_columns[col]!r}"
        for row, col in zip(*np.nonzero(~present & (np.arange(steps.shape[1]) < lengths[:, None])))
    ]
    if holes:
        raise DataError(
            f"{where}.value_columns: {path} has {len(holes)} empty cell(s) before the last value of their row "
            f"(only trailing cells may be empty): {listing(holes)}"
        )
    if spec.id_column is not None:
        names = [
            f"{row_label(i)} (id {series_id!r})" for i, series_id in enumerate(table[spec.id_column].map(cell_text))
        ]
    else:
        names = [row_label(i) for i in range(len(table))]
    sequences = [steps[i, :length, None] for i, length in enumerate(lengths)]  # each (T, 1)
    given = table[spec.split.column].map(cell_text).tolist() if spec.split.column is not None else None
    labels = table[spec.label_column].map(cell_text).tolist()
    return SequenceTable(sequences, labels, names, given, ("value",))
