"""Reading a time series: the table (or the three given files), checked cell by cell, and its season.

Interior gaps are interpolated linearly or refused (``gaps``); a time column must increase strictly. The season
implied by the time index (hourly 24, daily 7, ...) is the default for ``evaluate.season``; where the calendar
implies none, the data's own cycle may (:mod:`~lstmflow.data.timeseries.seasonality`).
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd

from lstmflow.config import TimeSeriesDataSpec
from lstmflow.data.parts import Part, split_files
from lstmflow.data.tables import RowLabel, listing, numeric_values, read_table, row_namer
from lstmflow.errors import DataError

#: (shortest, longest) median spacing of the time index → season, as in `evaluate.season`'s description.
_SEASON_BY_SPACING = (
    (pd.Timedelta(hours=1), pd.Timedelta(hours=1), 24),
    (pd.Timedelta(days=1), pd.Timedelta(days=1), 7),
    (pd.Timedelta(days=7), pd.Timedelta(days=7), 52),
    (pd.Timedelta(days=28), pd.Timedelta(days=31), 12),
    (pd.Timedelta(days=89), pd.Timedelta(days=92), 4),
)


def read_series(spec: TimeSeriesDataSpec, where: str = "data") -> pd.DataFrame:
    """Read and check the table; return targets then features as float64, indexed by time (or row order).

    ``where`` is the YAML path of ``spec`` (e.g. ``pipelines.sunspots.data``), used in error messages.
    Interior gaps are interpolated linearly (``gaps: interpolate``) and counted in ``attrs["gaps_filled"]``;
    empty cells before the first or after the last observation of a column are an error, because filling them
    would invent data rather than interpolate it.

    With ``split.files`` the files are each read so (gaps are filled within a file), checked to continue one
    another in time, and joined; ``attrs["part_ends"]`` holds (train_end, val_end), the file boundaries (without a
    validation file, train_end cuts the last ``split.val`` of the training file off for validation).
    """
    if spec.split.files is None:
        return _read_series_file(spec, where)
    frames: list[tuple[Part, Path, pd.DataFrame]] = [
        (part, path, _read_series_file(spec.model_copy(update={"path": path}), where))
        for part, path in split_files(spec, where)
    ]
    if spec.time_column is not None:
        for (_, before_path, before), (part, path, after) in pairwise(frames):
            _check_continues(before, before_path, after, path, f"{where}.split.files.{part}", spec.time_column)
    joined = pd.concat([frame for _, _, frame in frames], ignore_index=spec.time_column is None)
    train_rows = len(frames[0][2])
    if spec.split.files is not None and spec.split.files.val is None:
        # No validation file: the last `split.val` of the training file validates, as fractions would cut it.
        ends = (train_rows - int(train_rows * spec.split.val), train_rows)
    else:
        ends = (train_rows, train_rows + len(frames[1][2]))
    joined.attrs = {"gaps_filled": sum(frame.attrs["gaps_filled"] for _, _, frame in frames), "part_ends": ends}
    return joined


def _check_continues(
    before: pd.DataFrame, before_path: Path, after: pd.DataFrame, path: Path, where: str, column: str
) -> None:
    """The first time of ``after`` must come after the last time of ``before``, and be of the same kind."""
    dates = [isinstance(frame.index, pd.DatetimeIndex) for frame in (before, after)]
    if dates[0] != dates[1]:
        kinds = ["dates" if is_date else "numbers" for is_date in dates]
        raise DataError(
            f"{where}: {path} has {kinds[1]} in {column!r} but {before_path} has {kinds[0]}; "
            "the files must continue one series"
        )
    first, last = after.index[0], before.index[-1]
    if first <= last:
        raise DataError(
            f"{where}: {path} {row_namer(path)(0)} is at {first}, not after {last}, the last time of {before_path}; "
            "each file must continue the one before it in time"
        )


def _read_series_file(spec: TimeSeriesDataSpec, where: str) -> pd.DataFrame:
    path = Path(spec.path)
    table = read_table(path, where)
    row_label = row_namer(path)
    _check_columns(spec, table, path, where)
    if table.empty:
        raise DataError(f"{where}.path: {path} has a header but no data rows")
    values = numeric_values(table, [*spec.target, *spec.features], path, row_label, where)
    _check_magnitude(values, spec.max_abs_value, row_label, path, where)
    if spec.time_column is not None:
        values.index = _time_index(table[spec.time_column], path, row_label, where)
    filled, count = _fill_gaps(values, spec.gaps, path, row_label, where)
    filled.attrs["gaps_filled"] = count
    return filled


def _check_magnitude(values: pd.DataFrame, bound: float, row_label: RowLabel, path: Path, where: str) -> None:
    """Refuse cells beyond ``max_abs_value``: numbers that large are a unit or parsing error more often than data."""
    rows, columns = np.nonzero(np.abs(values.to_numpy()) > bound)
    if rows.size:
        cells = [f"{row_label(i)} column {values.columns[j]!r}: {values.iat[i, j]:g}" for i, j in zip(rows, columns)]
        raise DataError(
            f"{where}.max_abs_value: {path} has {len(cells)} value(s) beyond ±{bound:g}: {listing(cells)}; fix them, "
            f"or raise {where}.max_abs_value if they are real"
        )


def _check_columns(spec: TimeSeriesDataSpec, table: pd.DataFrame, path: Path, where: str) -> None:
    both = [name for name in spec.features if name in spec.target]
    if both:
        raise DataError(
            f"{where}.features: {both} also listed in {where}.target; a column is forecast or a feature, not both"
        )
    if spec.time_column is not None and spec.time_column in [*spec.target, *spec.features]:
        raise DataError(f"{where}.time_column: {spec.time_column!r} is also a target or feature")
    wanted = ([spec.time_column] if spec.time_column is not None else []) + [*spec.target, *spec.features]
    missing = [name for name in wanted if name not in table.columns]
    if missing:
        raise DataError(f"{where}: {path} has no column(s) {missing}; available: {list(table.columns)}")


def _time_index(cells: pd.Series, path: Path, row_label: RowLabel, where: str) -> pd.Index:
    """Parse timestamps (dates, or numbers such as years) and require them to increase strictly."""
    name = cells.name
    empty = np.flatnonzero(cells.isna().to_numpy())
    if empty.size:
        rows = [row_label(i) for i in empty]
        raise DataError(f"{where}.time_column: {path} has {len(rows)} empty timestamp(s) in {name!r}: {listing(rows)}")
    if pd.api.types.is_datetime64_any_dtype(cells) or pd.api.types.is_numeric_dtype(cells):
        times = cells
    else:
        numbers = pd.to_numeric(cells, errors="coerce")
        infinite = np.flatnonzero(np.isinf(numbers.to_numpy(np.float64)))
        if infinite.size:
            rows = [f"{row_label(i)}: {cells.iloc[i]!r}" for i in infinite]
            raise DataError(
                f"{where}.time_column: {path} has {len(rows)} infinite time(s) in {name!r}: {listing(rows)}"
            )
        if numbers.notna().all():
            times = numbers.astype(np.int64) if (numbers == numbers.round()).all() else numbers
        else:
            times = pd.to_datetime(cells, errors="coerce")
            unparsed = np.flatnonzero(times.isna().to_numpy())
            if unparsed.size:
                rows = [f"{row_label(i)}: {cells.iloc[i]!r}" for i in unparsed]
                raise DataError(
                    f"{where}.time_column: {path} has {len(rows)} timestamp(s) in {name!r} that are neither numbers "
                    f"nor dates in the format of the first one: {listing(rows)}"
                )
    stamps = times.to_numpy()
    repeated = np.flatnonzero(stamps[1:] == stamps[:-1])
    if repeated.size:
        rows = [f"{cells.iloc[i]} at {row_label(i)} and {row_label(i + 1)}" for i in repeated]
        raise DataError(
            f"{where}.time_column: {path} has {len(rows)} duplicate timestamp(s) in {name!r}: {listing(rows)}"
        )
    backwards = np.flatnonzero(stamps[1:] < stamps[:-1])
    if backwards.size:
        rows = [f"{cells.iloc[i + 1]} at {row_label(i + 1)} comes after {cells.iloc[i]}" for i in backwards]
        raise DataError(
            f"{where}.time_column: {path} must be sorted by {name!r} (strictly increasing); "
            f"{len(rows)} step(s) go back: {listing(rows)}"
        )
    return pd.Index(times.to_numpy(), name=name)


def _fill_gaps(
    values: pd.DataFrame, gaps: str, path: Path, row_label: RowLabel, where: str
) -> tuple[pd.DataFrame, int]:
    """Interpolate interior empty cells linearly in row order, or refuse them; return the frame and the count."""
    missing = values.isna().to_numpy()
    rows = len(values)
    for column, name in enumerate(values.columns):
        present = np.flatnonzero(~missing[:, column])
        if present.size == 0:
            raise DataError(f"{where}: column {name!r} of {path} has no values")
        first, last = int(present[0]), int(present[-1])
        if first > 0:
            raise DataError(
                f"{where}: column {name!r} of {path} starts with {first} empty cell(s) ({row_label(0)} to "
                f"{row_label(first - 1)}); only gaps inside the series are interpolated: drop those rows"
            )
        if last < rows - 1:
            raise DataError(
                f"{where}: column {name!r} of {path} ends with {rows - 1 - last} empty cell(s) ({row_label(last + 1)} "
                f"to {row_label(rows - 1)}); only gaps inside the series are interpolated: drop those rows"
            )
    count = int(missing.sum())
    if count and gaps == "error":
        cells = [f"{row_label(i)} column {values.columns[j]!r}" for i, j in zip(*np.nonzero(missing), strict=True)]
        raise DataError(
            f"{where}.gaps is 'error' but {path} has {count} empty cell(s) inside the series: {listing(cells)}; "
            f"fill them or set gaps: interpolate"
        )
    return (values.interpolate(method="linear") if count else values), count


def infer_season(frame: pd.DataFrame) -> int:
    """The seasonal period the calendar implies: 24 hourly, 7 daily, 52 weekly, 12 monthly, 4 quarterly, else 1.

    The median spacing is used rather than ``pd.infer_freq`` so that a few missing rows do not hide a monthly
    series; numeric or row-order indexes carry no calendar and give 1.
    """
    index = frame.index
    if not isinstance(index, pd.DatetimeIndex) or len(index) < 3:
        return 1
    spacing = index.to_series().diff().median()
    for shortest, longest, season in _SEASON_BY_SPACING:
        if shortest <= spacing <= longest:
            return season
    return 1
