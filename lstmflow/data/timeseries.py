"""Time series: read a table, check it, fit the preprocessing, and cut windows without look-ahead.

The series is split by time into train | val | test at row counts from ``data.split``, or at the boundaries of
given files (``split.files``: the validation file continues the training series and the test file continues the
validation file; the three are read as one series). Everything fitted
(the ``auto`` transform choice, the scaler) sees the training rows only, so no statistic of the future leaks
into the model. A window belongs to the part that holds all of its forecast steps; its inputs may reach back
into earlier parts, which is past data and legitimate. Training windows use ``data.stride``; validation and
test windows use stride 1, so every step is forecast at every lead time and the scores do not depend on where
the first origin happens to fall.

Transforms apply to the targets only; features (covariates) are scaled but otherwise fed as given. When any
target is differenced, the first row has no difference: it is stored as zeros in ``series.npy`` and no window
reads it (windows start one row later), which keeps row ``t`` of ``series.npy`` aligned with row ``t`` of
``raw.npy`` and of the time index.

Windows are strided views of the series (nothing is copied until a batch is gathered), and the shuffled order
of an epoch is a keyed pseudo-random permutation computed piece by piece, so memory stays near the size of the
series itself however many windows there are.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import Dataset

from lstmflow.config import PipelineSpec, SplitSpec, TimeSeriesDataSpec
from lstmflow.data.sequences import split_files
from lstmflow.data.tables import listing, numeric_values, read_table, row_namer
from lstmflow.errors import DataError

Split = Literal["train", "val", "test"]

#: Bumped when the layout of the feature directory changes.
FEATURES_FORMAT = 1
#: Per-row timestamps are written to meta.json (for plots) up to this many rows.
MAX_TIME_LABELS = 100_000

#: (shortest, longest) median spacing of the time index → season, as in `evaluate.season`'s description.
_SEASON_BY_SPACING = (
    (pd.Timedelta(hours=1), pd.Timedelta(hours=1), 24),
    (pd.Timedelta(days=1), pd.Timedelta(days=1), 7),
    (pd.Timedelta(days=7), pd.Timedelta(days=7), 52),
    (pd.Timedelta(days=28), pd.Timedelta(days=31), 12),
    (pd.Timedelta(days=89), pd.Timedelta(days=92), 4),
)


# ------------------------------------------------------------------------------------------ reading


def read_series(spec: TimeSeriesDataSpec, where: str = "data") -> pd.DataFrame:
    """Read and check the table; return targets then features as float64, indexed by time (or row order).

    ``where`` is the YAML path of ``spec`` (e.g. ``pipelines.sunspots.data``), used in error messages.
    Interior gaps are interpolated linearly (``gaps: interpolate``) and counted in ``attrs["gaps_filled"]``;
    empty cells before the first or after the last observation of a column are an error, because filling them
    would invent data rather than interpolate it.

    With ``split.files`` the three files are each read so (gaps are filled within a file), checked to continue one
    another in time, and joined; ``attrs["part_ends"]`` holds (train_end, val_end), the file boundaries.
    """
    if spec.split.files is None:
        return _read_series_file(spec, where)
    frames: list[tuple[Split, Path, pd.DataFrame]] = [
        (part, path, _read_series_file(spec.model_copy(update={"path": path}), where))
        for part, path in split_files(spec, where)
    ]
    if spec.time_column is not None:
        for (_, before_path, before), (part, path, after) in zip(frames, frames[1:]):
            _check_continues(before, before_path, after, path, f"{where}.split.files.{part}", spec.time_column)
    joined = pd.concat([frame for _, _, frame in frames], ignore_index=spec.time_column is None)
    train_rows, val_rows = len(frames[0][2]), len(frames[1][2])
    joined.attrs = {
        "gaps_filled": sum(frame.attrs["gaps_filled"] for _, _, frame in frames),
        "part_ends": (train_rows, train_rows + val_rows),
    }
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
    if spec.time_column is not None:
        values.index = _time_index(table[spec.time_column], path, row_label, where)
    filled, count = _fill_gaps(values, spec.gaps, path, row_label, where)
    filled.attrs["gaps_filled"] = count
    return filled


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


def _time_index(cells: pd.Series, path: Path, row_label: Callable[[int], str], where: str) -> pd.Index:
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
    values: pd.DataFrame, gaps: str, path: Path, row_label: Callable[[int], str], where: str
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
    """The seasonal period implied by the time index: 24 hourly, 7 daily, 52 weekly, 12 monthly, 4 quarterly, else 1.

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


# ---------------------------------------------------------------------------------- split and defaults


def split_boundaries(rows: int, split: SplitSpec) -> tuple[int, int]:
    """``(train_end, val_end)``: rows ``[0, train_end)`` train, ``[train_end, val_end)`` val, the rest test."""
    n_val, n_test = int(rows * split.val), int(rows * split.test)
    return rows - n_val - n_test, rows - n_test


def part_ends(frame: pd.DataFrame, split: SplitSpec) -> tuple[int, int]:
    """``(train_end, val_end)`` of a series from :func:`read_series`: its file boundaries, else by the fractions."""
    return frame.attrs.get("part_ends") or split_boundaries(len(frame), split)


def _choose_transforms(frame: pd.DataFrame, spec: TimeSeriesDataSpec, train_end: int, where: str) -> tuple[str, ...]:
    """One transform per target: the declared one, or the `auto` rule applied to the training rows only."""
    chosen = []
    for name in spec.target:
        values = frame[name].to_numpy(np.float64)
        transform = spec.transform if spec.transform != "auto" else auto_transform(values[:train_end])
        if transform == "log":
            nonpositive = np.flatnonzero(values <= 0)
            if nonpositive.size:
                cells = [f"{values[i]} at {frame.index[i]}" for i in nonpositive]
                origin = "chosen by transform: auto from the training part" if spec.transform == "auto" else "requested"
                raise DataError(
                    f"{where}.transform: log ({origin}) needs values > 0, but column {name!r} has "
                    f"{len(cells)} value(s) <= 0: {listing(cells)}; set transform: none or difference"
                )
        chosen.append(transform)
    return tuple(chosen)


def auto_transform(train: np.ndarray) -> str:
    """`difference` when a straight line explains > 80% of the variance, else `log` when all > 0 and max/min > 10."""
    if train.size > 2 and np.ptp(train) > 0:
        explained = np.corrcoef(np.arange(train.size), train)[0, 1] ** 2
        if explained > 0.8:
            return "difference"
    if train.min() > 0 and train.max() / train.min() > 10:
        return "log"
    return "none"


def _default_window(season: int, horizon: int, train_end: int, stride: int, lost: int, where: str) -> int:
    """max(2 × season, 4 × horizon, 8), capped so the training part holds at least 8 windows."""
    largest = train_end - horizon - lost - 7 * stride
    if largest < 1:
        raise DataError(
            f"{where}: the training part has {train_end} rows but 8 training windows of horizon {horizon} with "
            f"stride {stride} need at least {horizon + lost + 7 * stride + 1}"
            + (" (one row is lost to differencing)" if lost else "")
            + "; use a longer series or set data.window explicitly"
        )
    return min(max(2 * season, 4 * horizon, 8), largest)


def _check_lengths(
    rows: int, ends: tuple[int, int], split: SplitSpec, window: int, horizon: int, lost: int, season: int, where: str
) -> None:
    """Every part must hold at least one window (a given file always; a fraction when > 0); name the lengths."""
    train_end, val_end = ends
    if split.files is None:
        advice = (
            f"the series has {rows} rows; use a longer series, a smaller window or horizon, or smaller split fractions"
        )
    else:
        advice = f"the three files hold {rows} rows; use longer files, or a smaller window or horizon"
    if train_end < window + horizon + lost:
        raise DataError(
            f"{where}: the training part has {train_end} rows but window {window} + horizon {horizon} "
            f"needs at least {window + horizon + lost}"
            + (" (one row is lost to differencing)" if lost else "")
            + f"; {advice}"
        )
    held_out = (("validation", split.val, val_end - train_end), ("test", split.test, rows - val_end))
    for part, fraction, length in held_out:
        if (fraction > 0 or split.files is not None) and length < horizon:
            raise DataError(
                f"{where}: the {part} part has {length} rows but horizon {horizon} needs at least {horizon}; {advice}"
            )
    if train_end <= season:
        raise DataError(
            f"{where}: the training part has {train_end} rows but season {season} needs at least {season + 1} "
            f"for the seasonal-naive baseline; {advice}"
        )


def resolve_data(spec: PipelineSpec) -> PipelineSpec:
    """Fill ``data.window``, ``data.horizon`` and ``evaluate.season`` from the data; explicit values are kept."""
    where = f"pipelines.{spec.name}.data"
    data = spec.data
    frame = read_series(data, where)
    season = spec.evaluate.season or infer_season(frame)
    horizon = data.horizon or (max(1, season))
    ends = part_ends(frame, data.split)
    lost = int("difference" in _choose_transforms(frame, data, ends[0], where))
    window = data.window or _default_window(season, horizon, ends[0], data.stride, lost, where)
    _check_lengths(len(frame), ends, data.split, window, horizon, lost, season, where)
    return spec.model_copy(
        update={
            "data": data.model_copy(update={"window": window, "horizon": horizon}),
            "evaluate": spec.evaluate.model_copy(update={"season": season}),
        }
    )


# ------------------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """The fitted transform and scaler: model space = (transform(raw) - offset) / factor, per column.

    Columns are targets first (``transforms`` holds one entry per target), then features (scaled only).
    """

    columns: tuple[str, ...]
    transforms: tuple[str, ...]
    scale: str
    offset: tuple[float, ...]
    factor: tuple[float, ...]

    @property
    def n_targets(self) -> int:
        return len(self.transforms)

    @property
    def differencing(self) -> bool:
        return "difference" in self.transforms

    @classmethod
    def fit(
        cls, train_raw: np.ndarray, columns: tuple[str, ...], transforms: tuple[str, ...], scale: str
    ) -> Preprocessing:
        """Fit the scaler on the transformed training rows; a constant column keeps factor 1 (no division by 0)."""
        transformed = _apply_transforms(train_raw, transforms)
        if scale == "standard":
            offset, factor = transformed.mean(axis=0), transformed.std(axis=0)
        elif scale == "minmax":
            offset, factor = transformed.min(axis=0), np.ptp(transformed, axis=0)
        else:
            offset, factor = np.zeros(len(columns)), np.ones(len(columns))
        factor = np.where(factor > 1e-12 * np.maximum(1.0, np.abs(offset)), factor, 1.0)
        return cls(tuple(columns), tuple(transforms), scale, tuple(map(float, offset)), tuple(map(float, factor)))

    def context_rows(self, window: int) -> int:
        """Raw rows needed to encode one input window (one more when differencing)."""
        return window + int(self.differencing)

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """(R, F) raw rows, columns in order → (R', F) float32 model space; R' = R - 1 when differencing."""
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != len(self.columns):
            raise ValueError(
                f"encode expects (rows, {len(self.columns)}) for columns {list(self.columns)}, got {raw.shape}"
            )
        if raw.shape[0] < 1 + int(self.differencing):
            raise ValueError(f"encode needs at least {1 + int(self.differencing)} rows, got {raw.shape[0]}")
        return ((_apply_transforms(raw, self.transforms) - self.offset) / self.factor).astype(np.float32)

    def decode(self, pred: np.ndarray, last_raw: np.ndarray) -> np.ndarray:
        """(N, horizon, n_targets) model space → original units; ``last_raw`` (N, n_targets) anchors differences."""
        values = np.asarray(pred, dtype=np.float64)
        k = self.n_targets
        if values.ndim != 3 or values.shape[2] != k:
            raise ValueError(f"decode expects (N, horizon, {k}), got {values.shape}")
        values = values * np.asarray(self.factor[:k]) + np.asarray(self.offset[:k])
        anchor = np.asarray(last_raw, dtype=np.float64).reshape(values.shape[0], k)
        for j, transform in enumerate(self.transforms):
            if transform == "log":
                values[:, :, j] = np.exp(values[:, :, j])
            elif transform == "difference":
                values[:, :, j] = anchor[:, None, j] + np.cumsum(values[:, :, j], axis=1)
        return values

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "transforms": list(self.transforms),
            "scale": self.scale,
            "offset": list(self.offset),
            "factor": list(self.factor),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(tuple(d["columns"]), tuple(d["transforms"]), d["scale"], tuple(d["offset"]), tuple(d["factor"]))


def _apply_transforms(raw: np.ndarray, transforms: tuple[str, ...]) -> np.ndarray:
    """Log or difference the target columns (the first ``len(transforms)``); differencing drops the first row."""
    out = np.array(raw, dtype=np.float64)
    logged = [j for j, t in enumerate(transforms) if t == "log"]
    differenced = [j for j, t in enumerate(transforms) if t == "difference"]
    out[:, logged] = np.log(out[:, logged])
    if differenced:
        out[1:, differenced] = np.diff(out[:, differenced], axis=0)
        out = out[1:]
    return out


# --------------------------------------------------------------------------------------- features


def _origins(
    split: Split, rows: int, train_end: int, val_end: int, window: int, horizon: int, stride: int, lost: int
) -> range:
    """First forecast step of every window of ``split``: all of its forecast steps lie inside that part."""
    first = window + lost
    parts = {"train": (first, train_end, stride), "val": (train_end, val_end, 1), "test": (val_end, rows, 1)}
    begin, end, step = parts[split]
    return range(max(begin, first), end - horizon + 1, step)


def _time_labels(index: pd.Index) -> list[str]:
    if isinstance(index, pd.DatetimeIndex):
        dates_only = bool((index == index.normalize()).all())  # no time of day: "2001-10-01", not "...T00:00:00"
        return [stamp.date().isoformat() if dates_only else stamp.isoformat() for stamp in index]
    return [str(value) for value in index]


def prepare_features(
    data: TimeSeriesDataSpec, season: int | None, out_dir: Path, where: str = "data"
) -> dict[str, Any]:
    """Write series.npy, raw.npy and meta.json for a resolved data spec; return a small summary for logging.

    Takes the data spec and season alone (not the whole pipeline) because that is all the DVC
    stage depends on: a change to the model must not rebuild the features.

    ``series.npy`` (T, F) float32 is the model space (transformed, scaled; targets then features), ``raw.npy``
    (T, n_targets) float64 the targets in original units after gap filling. Output bytes are deterministic.
    """
    if data.window is None or data.horizon is None or season is None:
        raise ValueError("prepare_features needs a resolved spec: call resolve_data(spec) first")
    frame = read_series(data, where)
    rows, k = len(frame), len(data.target)
    train_end, val_end = part_ends(frame, data.split)
    transforms = _choose_transforms(frame, data, train_end, where)
    lost = int("difference" in transforms)
    _check_lengths(rows, (train_end, val_end), data.split, data.window, data.horizon, lost, season, where)

    raw = frame.to_numpy(np.float64)
    preprocessing = Preprocessing.fit(raw[:train_end], tuple(frame.columns), transforms, data.scale)
    series = np.zeros(raw.shape, dtype=np.float32)
    series[lost:] = preprocessing.encode(raw)
    counts = {
        split: len(_origins(split, rows, train_end, val_end, data.window, data.horizon, data.stride, lost))
        for split in ("train", "val", "test")
    }
    labels = _time_labels(frame.index)
    ends = {"train_end": train_end, "val_end": val_end}
    meta = {
        "format": FEATURES_FORMAT,
        "columns": list(frame.columns),
        "targets": list(data.target),
        "features": list(data.features),
        "rows": rows,
        "gaps_filled": frame.attrs["gaps_filled"],
        "window": data.window,
        "horizon": data.horizon,
        "stride": data.stride,
        "season": season,
        "first_usable_row": lost,
        "split": {**ends, "by": "files"} if data.split.files is not None else ends,
        "windows": counts,
        "preprocessing": preprocessing.to_dict(),
        "time": {
            "column": data.time_column,
            "first": labels[0],
            "last": labels[-1],
            "values": labels if rows <= MAX_TIME_LABELS else None,
        },
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "series.npy", series)
    np.save(out_dir / "raw.npy", raw[:, :k])
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return {
        "rows": rows,
        "gaps_filled": meta["gaps_filled"],
        "transform": ",".join(transforms),
        "scale": data.scale,
        "window": data.window,
        "horizon": data.horizon,
        "season": season,
        "n_targets": k,
        "n_features": len(frame.columns),
        "split": "files" if data.split.files is not None else "fractions",
        "train_rows": train_end,
        "val_rows": val_end - train_end,
        "test_rows": rows - val_end,
        "n_train": counts["train"],
        "n_val": counts["val"],
        "n_test": counts["test"],
    }


@dataclass(frozen=True, eq=False)
class Features:
    """A prepared feature directory, loaded: the arrays, the metadata, and the fitted preprocessing."""

    series: np.ndarray
    raw: np.ndarray
    meta: dict[str, Any]
    preprocessing: Preprocessing

    @property
    def window(self) -> int:
        return self.meta["window"]

    @property
    def horizon(self) -> int:
        return self.meta["horizon"]

    @property
    def season(self) -> int:
        return self.meta["season"]

    @property
    def columns(self) -> list[str]:
        return self.meta["columns"]

    @property
    def targets(self) -> list[str]:
        return self.meta["targets"]

    @property
    def n_features(self) -> int:
        return self.series.shape[1]

    @property
    def n_targets(self) -> int:
        return self.raw.shape[1]

    def windows(self, split: Split) -> WindowSet:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {split!r}")
        meta = self.meta
        origins = _origins(
            split,
            meta["rows"],
            meta["split"]["train_end"],
            meta["split"]["val_end"],
            self.window,
            self.horizon,
            meta["stride"],
            meta["first_usable_row"],
        )
        return WindowSet(self.series, self.raw, self.window, self.horizon, origins)


def load_features(path: Path) -> Features:
    """Load what :func:`prepare_features` wrote into ``path``."""
    path = Path(path)
    missing = [name for name in ("series.npy", "raw.npy", "meta.json") if not (path / name).is_file()]
    if missing:
        raise DataError(f"no prepared features in {path}: missing {missing} (run the data stage first)")
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != FEATURES_FORMAT:
        raise DataError(
            f"{path / 'meta.json'} has format {meta.get('format')}, expected {FEATURES_FORMAT}: prepare the data again"
        )
    return Features(
        series=np.load(path / "series.npy"),
        raw=np.load(path / "raw.npy"),
        meta=meta,
        preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
    )


# ----------------------------------------------------------------------------------------- windows


class WindowSet(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The windows of one split, as strided views of the series; a batch is the only thing ever copied.

    ``origins[i]`` is the first forecast step of window ``i``: its input is ``series[t0 - window : t0]`` (all
    columns) and its target ``series[t0 : t0 + horizon, :n_targets]``.
    """

    def __init__(self, series: np.ndarray, raw: np.ndarray, window: int, horizon: int, origins: range) -> None:
        if len(origins) and (origins[0] < window or origins[-1] + horizon > len(series)):
            raise ValueError(
                f"origins {origins} need window {window} rows before and horizon {horizon} after, in {len(series)} rows"
            )
        self.window, self.horizon, self.n_targets = window, horizon, raw.shape[1]
        self._origins = origins
        k = self.n_targets
        every_input = sliding_window_view(series, (window, series.shape[1]))[:, 0]  # (T - window + 1, window, F)
        every_target = sliding_window_view(series[:, :k], (horizon, k))[:, 0]  # (T - horizon + 1, horizon, k)
        every_raw = sliding_window_view(raw, (horizon, k))[:, 0]  # (T - horizon + 1, horizon, k)
        self._raw = raw
        self.inputs = every_input[_rows_of(origins, shift=-window)]  # (N, window, F) view
        self.targets = every_target[_rows_of(origins)]  # (N, horizon, k) view
        self._raw_targets = every_raw[_rows_of(origins)]  # (N, horizon, k) view

    @property
    def origins(self) -> np.ndarray:
        return np.arange(self._origins.start, self._origins.stop, self._origins.step)

    def __len__(self) -> int:
        return len(self._origins)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.array(self.inputs[i])), torch.from_numpy(np.array(self.targets[i]))

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield x (B, window, F) and y (B, horizon, k); the shuffled order is a pure function of (seed, epoch)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        total = len(self)
        order = EpochOrder(total, seed, epoch) if shuffle else None
        piece = batch_size * max(1, EpochOrder.PIECE // batch_size)
        for piece_start in range(0, total, piece):
            piece_stop = min(piece_start + piece, total)
            chosen = order.indices(piece_start, piece_stop) if order is not None else None
            for begin in range(piece_start, piece_stop, batch_size):
                end = min(begin + batch_size, piece_stop)
                if chosen is None:
                    x, y = self.inputs[begin:end].copy(), self.targets[begin:end].copy()  # owned, writable
                else:
                    picked = chosen[begin - piece_start : end - piece_start]
                    x, y = self.inputs[picked], self.targets[picked]
                yield torch.from_numpy(x), torch.from_numpy(y)

    def targets_original(self) -> np.ndarray:
        """(N, horizon, n_targets) true future values in original units."""
        return np.array(self._raw_targets, dtype=np.float64)

    def last_raw(self) -> np.ndarray:
        """(N, n_targets) raw value just before each window's first forecast step (anchors differencing)."""
        return np.array(self._raw[self.origins - 1], dtype=np.float64)


def _rows_of(origins: range, shift: int = 0) -> slice:
    """The basic slice that picks ``origins + shift`` (a slice keeps the result a view; a fancy index would copy)."""
    if not origins:
        return slice(0, 0)
    start = origins.start + shift
    return slice(start, start + (len(origins) - 1) * origins.step + 1, origins.step)


class EpochOrder:
    """A seeded pseudo-random permutation of ``range(n)``, evaluated piece by piece.

    ``rng.permutation(n)`` would hold 8 bytes per window, more than the float32 series the windows view. This
    is a keyed Feistel network over the smallest power of 4 >= n, walked back into ``range(n)``
    (cycle walking; the construction behind TensorFlow's ``index_shuffle``): a bijection, so every window
    comes exactly once per epoch, computed only for the positions in hand, and a pure function of
    (seed, epoch), so a resumed run replays the same order.
    """

    ROUNDS = 6
    #: Positions computed at once: large enough to amortise numpy's per-call cost, small enough to stay in cache.
    PIECE = 16_384

    def __init__(self, n: int, seed: int, epoch: int) -> None:
        bits = max(2, (n - 1).bit_length())
        half = (bits + 1) // 2
        self.n = n
        self._half, self._mask, self._shift = np.uint64(half), np.uint64((1 << half) - 1), np.uint64(64 - half)
        keys = np.random.default_rng([seed, epoch]).integers(
            0, np.iinfo(np.uint64).max, size=(self.ROUNDS, 2), dtype=np.uint64, endpoint=True
        )
        self._keys = [(add, multiply | np.uint64(1)) for add, multiply in keys]

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self._half, x & self._mask
        for add, multiply in self._keys:
            # Round function: the top bits of a 64-bit multiply-shift hash (wrapping uint64 arithmetic).
            left, right = right, left ^ (((right + add) * multiply) >> self._shift)
        return (left << self._half) | right

    def indices(self, start: int, stop: int) -> np.ndarray:
        """The windows at positions ``[start, stop)`` of this epoch's order."""
        out = self._encrypt(np.arange(start, stop, dtype=np.uint64))
        pending = np.flatnonzero(out >= self.n)
        while pending.size:
            out[pending] = self._encrypt(out[pending])
            pending = pending[out[pending] >= self.n]
        return out.astype(np.intp)
