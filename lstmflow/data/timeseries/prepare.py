"""Preparing a series for training: resolve the window, horizon and season, split it by time, and write the
feature folder (``series.npy``, ``raw.npy``, ``meta.json``) that :func:`load_features` reads back.

The series is split by time into train | val | test at row counts from ``data.split`` (fractions, a test start or
a number of test points), or at the boundaries of given files (``split.files``: the validation file continues the
training series and the test file continues the validation file; they are read as one series). Everything fitted
(the season found in the data, the ``auto`` transform choice, the scaler) sees the training rows only, so no
statistic of the future leaks into the model.

When any target is differenced, the first rows have no difference (one, or a season for a seasonal difference):
they are stored as zeros in ``series.npy`` and no window reads them (``first_usable_row``), which keeps row ``t``
of ``series.npy`` aligned with row ``t`` of ``raw.npy`` and of the time index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lstmflow.config import ModelSpec, PipelineSpec, SplitSpec, TimeSeriesDataSpec
from lstmflow.config.model import autoregressive_forecaster_layers
from lstmflow.data.parts import PARTS, TRAIN_AND_VAL, Part, Parts
from lstmflow.data.timeseries.preprocessing import Preprocessing, choose_transforms, differenced
from lstmflow.data.timeseries.read import infer_season, read_series
from lstmflow.data.timeseries.seasonality import season_from_autocorrelation
from lstmflow.data.timeseries.windows import WindowSet, window_origins
from lstmflow.errors import DataError

#: Bumped when the layout of the feature directory changes.
FEATURES_FORMAT = 1
#: Per-row timestamps are written to meta.json (for plots) up to this many rows.
MAX_TIME_LABELS = 100_000
#: `transform: auto` smooths a seasonal difference over three seasons only when this many training windows remain.
SMOOTHED_MIN_WINDOWS = 30
#: The default forecaster adds its autoregressive branch when the training part has this many windows per window step.
AUTOREGRESSION_WINDOWS_PER_STEP = 2


# ---------------------------------------------------------------------------------- split and defaults


def split_boundaries(rows: int, split: SplitSpec, test_begins: int | None = None) -> tuple[int, int]:
    """``(train_end, val_end)``: rows ``[0, train_end)`` train, ``[train_end, val_end)`` val, the rest test.

    By the fractions of the whole series; or, when ``test_begins`` gives the first test row, ``split.val`` of the
    rows before it validates.
    """
    if test_begins is not None:
        return test_begins - int(test_begins * split.val), test_begins
    n_val, n_test = int(rows * split.val), int(rows * split.test_fraction)
    return rows - n_val - n_test, rows - n_test


def part_ends(frame: pd.DataFrame, split: SplitSpec, where: str = "data") -> tuple[int, int]:
    """``(train_end, val_end)`` of a series from :func:`read_series`: its file boundaries, else by ``split``."""
    if frame.attrs.get("part_ends"):
        return frame.attrs["part_ends"]
    return split_boundaries(len(frame), split, _test_begins(frame, split, where))


def _test_begins(frame: pd.DataFrame, split: SplitSpec, where: str) -> int | None:
    """The first test row that ``split.test_points`` or ``split.test_start`` gives; None for the fraction."""
    rows = len(frame)
    if split.test_points is not None:
        if split.test_points >= rows:
            raise DataError(
                f"{where}.split.test_points: {split.test_points} test points leave no training rows; "
                f"the series has {rows} rows"
            )
        return rows - split.test_points
    if split.test_start is None:
        return None
    begins = _row_at(frame.index, split.test_start, f"{where}.split.test_start")
    if not 0 < begins < rows:
        raise DataError(
            f"{where}.split.test_start: {split.test_start!r} leaves "
            + ("no training rows" if begins <= 0 else "no test rows")
            + f"; the series runs from {frame.index[0]} to {frame.index[-1]} ({rows} rows)"
        )
    return begins


def _row_at(index: pd.Index, start: object, where: str) -> int:
    """The first row at or after ``start``: a time of the index's type, or a row number without a time column."""
    if isinstance(index, pd.RangeIndex) and index.name is None:  # no time column: rows are numbered from 0
        if not isinstance(start, int):
            raise DataError(f"{where}: {start!r} is not a row number, and the series has no time column")
        return start
    if isinstance(index, pd.DatetimeIndex):
        if isinstance(start, int):
            return start  # a row number, since a date column holds no numbers
        try:
            moment = pd.Timestamp(str(start))
        except ValueError:
            raise DataError(f"{where}: {start!r} is neither a date nor a row number") from None
        return int(index.searchsorted(moment))
    try:
        value = float(str(start))
    except ValueError:
        raise DataError(f"{where}: {start!r} is not a number like the time column {index.name!r}") from None
    return int(index.searchsorted(value))


def _default_window(season: int, horizon: int, train_end: int, stride: int, lost: int, where: str) -> int:
    """max(2 × season, 4 × horizon, 8), capped so the training part holds at least 8 windows; the 2 × season term is
    at most a third of the training rows, so that a long season does not leave too few windows to learn from."""
    largest = train_end - horizon - lost - 7 * stride
    if largest < 1:
        raise DataError(
            f"{where}: the training part has {train_end} rows but 8 training windows of horizon {horizon} with "
            f"stride {stride} need at least {horizon + lost + 7 * stride + 1}"
            + (f" ({lost} row(s) are lost to differencing)" if lost else "")
            + "; use a longer series or set data.window explicitly"
        )
    return min(max(min(2 * season, train_end // 3), 4 * horizon, 8), largest)


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
        advice = f"the files hold {rows} rows; use longer files, or a smaller window or horizon"
    if train_end < window + horizon + lost:
        raise DataError(
            f"{where}: the training part has {train_end} rows but window {window} + horizon {horizon} "
            f"needs at least {window + horizon + lost}"
            + (f" ({lost} row(s) are lost to differencing)" if lost else "")
            + f"; {advice}"
        )
    held_out = (("validation", split.val, val_end - train_end), ("test", split.test_fraction, rows - val_end))
    for part, fraction, length in held_out:
        given = split.files is not None or (part == "test" and not split.test_by_fraction)
        if (fraction > 0 or given) and length < horizon:
            raise DataError(
                f"{where}: the {part} part has {length} rows but horizon {horizon} needs at least {horizon}; {advice}"
            )
    if train_end <= season:
        raise DataError(
            f"{where}: the training part has {train_end} rows but season {season} needs at least {season + 1} "
            f"for the seasonal-naive baseline; {advice}"
        )


def resolve_data(spec: PipelineSpec) -> PipelineSpec:
    """Fill ``data.window``, ``data.horizon`` and ``evaluate.season`` from the data, and the default ``model`` where
    it depends on them (:func:`_default_model_autoregresses`); explicit values are kept.

    The season: ``evaluate.season``, else the calendar's (monthly 12, ...), else, when the calendar gives none or
    1, the data's own cycle (:func:`~lstmflow.data.timeseries.seasonality.season_from_autocorrelation` on the
    first target's training part). A cycle found so sets the window and the scores' season, but not the horizon
    (which defaults to the calendar's or the declared season) and not seasonal differencing.
    """
    where = f"pipelines.{spec.name}.data"
    data = spec.data
    if not isinstance(data, TimeSeriesDataSpec):
        raise TypeError(f"resolve_data is for a time series; {where}.kind is {data.kind!r}")
    frame = read_series(data, where)
    ends = part_ends(frame, data.split, where)
    declared = spec.evaluate.season or infer_season(frame)
    season = declared
    if declared == 1:
        season = season_from_autocorrelation(frame[data.target[0]].to_numpy(np.float64)[: ends[0]])
    horizon = data.horizon or declared
    preprocessing = _bare_preprocessing(_transforms(frame, data, ends[0], season, horizon, where), season)
    lost = preprocessing.lost_rows
    window = data.window or _default_window(season, horizon, ends[0], data.stride, lost, where)
    _check_lengths(len(frame), ends, data.split, window, horizon, lost, season, where)
    update: dict[str, Any] = {
        "data": data.model_copy(update={"window": window, "horizon": horizon}),
        "evaluate": spec.evaluate.model_copy(update={"season": season}),
    }
    windows = len(window_origins("train", ends[0], ends[0], ends[0], window, horizon, data.stride, lost))
    if _default_model_autoregresses(spec, preprocessing.targets_are_changes, horizon, window, windows):
        update["model"] = ModelSpec(layers=autoregressive_forecaster_layers(window))
    return spec.model_copy(update=update)


def _default_model_autoregresses(
    spec: PipelineSpec, targets_are_changes: bool, horizon: int, window: int, windows: int
) -> bool:
    """Whether the default forecaster gets its linear autoregressive branch (:func:`autoregressive_forecaster_layers`):
    only for the default model outside a search (whose space names the default's keys), one step ahead of targets
    that are all differenced (the branch's zero is then "no change"), with at least
    :data:`AUTOREGRESSION_WINDOWS_PER_STEP` training windows per step of the window (its 16 × window weights per
    feature are fitted from them). On the quality suite this cut the one-step error of the short quarterly and
    monthly series it applies to and doubled it on undifferenced series and on one with too few windows
    (benchmarks/RESULTS.md)."""
    return (
        "model" not in spec.model_fields_set
        and spec.search is None
        and horizon == 1
        and targets_are_changes
        and windows >= AUTOREGRESSION_WINDOWS_PER_STEP * window
    )


def _transforms(
    frame: pd.DataFrame, data: TimeSeriesDataSpec, train_end: int, season: int, horizon: int, where: str
) -> tuple[str, ...]:
    """Each target's transform (:func:`choose_transforms`). Under `auto`, one step ahead, a target that the tests
    leave undifferenced is differenced too: a stationary level is then learnt as the pull back from the last value,
    which the autoregressive branch of the default forecaster takes at once; on the quality suite's stationary series
    this cut the one-step error or left it as it was (benchmarks/RESULTS.md). And a seasonal difference becomes a
    ``seasonal_mean_difference`` when the training part keeps :data:`SMOOTHED_MIN_WINDOWS` windows after the three
    seasons it consumes: the mean of three past seasons carries less of one year's noise into the next, which won
    on the quality suite's longer seasonal series and lost where it left a dozen windows (benchmarks/RESULTS.md).

    The rule gives the same answer in :func:`resolve_data` (default window not yet set) and in
    :func:`prepare_features` (window resolved): a window resolved for the plain difference is never shorter.
    """
    chosen = choose_transforms(frame, data, train_end, season, where)
    if data.transform == "auto" and horizon == 1:
        chosen = tuple(map(differenced, chosen))
    smoothed = tuple(t.replace("seasonal_difference", "seasonal_mean_difference") for t in chosen)
    if data.transform != "auto" or smoothed == chosen:
        return chosen
    lost = _lost_rows(smoothed, season)
    try:
        window = data.window or _default_window(season, horizon, train_end, data.stride, lost, where)
    except DataError:  # the three seasons leave too few rows for even the default window's 8 windows
        return chosen
    windows = window_origins("train", train_end, train_end, train_end, window, horizon, data.stride, lost)
    return smoothed if len(windows) >= SMOOTHED_MIN_WINDOWS else chosen


def _lost_rows(transforms: tuple[str, ...], season: int) -> int:
    """Rows at the start of the series that the transforms leave without a value."""
    return _bare_preprocessing(transforms, season).lost_rows


def _bare_preprocessing(transforms: tuple[str, ...], season: int) -> Preprocessing:
    """The transforms' steps alone (nameless columns, no scaler): what they cost in rows and whether they difference."""
    return Preprocessing(("",) * len(transforms), transforms, "none", (), (), season)


# --------------------------------------------------------------------------------------- features


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
    rows = len(frame)
    train_end, val_end = part_ends(frame, data.split, where)
    transforms = _transforms(frame, data, train_end, season, data.horizon, where)
    lost = _lost_rows(transforms, season)
    _check_lengths(rows, (train_end, val_end), data.split, data.window, data.horizon, lost, season, where)

    raw = frame.to_numpy(np.float64)
    preprocessing = Preprocessing.fit(raw[:train_end], tuple(frame.columns), transforms, data.scale, season)
    series = np.zeros(raw.shape, dtype=np.float32)
    series[lost:] = preprocessing.encode(raw)
    counts = {
        split: len(window_origins(split, rows, train_end, val_end, data.window, data.horizon, data.stride, lost))
        for split in PARTS
    }
    meta = _features_meta(data, season, frame, (train_end, val_end), lost, counts, preprocessing)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "series.npy", series)
    np.save(out_dir / "raw.npy", raw[:, : len(data.target)])
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return _features_summary(data, meta, transforms)


def _features_meta(
    data: TimeSeriesDataSpec,
    season: int,
    frame: pd.DataFrame,
    ends: tuple[int, int],
    lost: int,
    counts: dict[Part, int],
    preprocessing: Preprocessing,
) -> dict[str, Any]:
    """``meta.json``: what :class:`Features` needs to cut the windows again, and the time labels for plots."""
    labels = _time_labels(frame.index)
    split = {"train_end": ends[0], "val_end": ends[1]}
    return {
        "format": FEATURES_FORMAT,
        "columns": list(frame.columns),
        "targets": list(data.target),
        "features": list(data.features),
        "rows": len(frame),
        "gaps_filled": frame.attrs["gaps_filled"],
        "window": data.window,
        "horizon": data.horizon,
        "stride": data.stride,
        "season": season,
        "first_usable_row": lost,
        "split": _split_meta(data, split),
        "windows": counts,
        "preprocessing": preprocessing.to_dict(),
        "time": {
            "column": data.time_column,
            "first": labels[0],
            "last": labels[-1],
            "values": labels if len(frame) <= MAX_TIME_LABELS else None,
        },
    }


def _split_meta(data: TimeSeriesDataSpec, ends: dict[str, int]) -> dict[str, Any]:
    """The part boundaries, and how they were given when not by the fractions alone."""
    split = data.split
    if split.files is not None:
        return {**ends, "by": "files"} if split.files.val is not None else {**ends, "by": "files", "val": "train tail"}
    if split.test_points is not None:
        return {**ends, "by": "test_points"}
    if split.test_start is not None:
        return {**ends, "by": "test_start", "test_start": str(split.test_start)}
    return ends


def _features_summary(data: TimeSeriesDataSpec, meta: dict[str, Any], transforms: tuple[str, ...]) -> dict[str, Any]:
    """The few numbers the data stage logs about the features it wrote."""
    rows, counts = meta["rows"], meta["windows"]
    train_end, val_end = meta["split"]["train_end"], meta["split"]["val_end"]
    return {
        "rows": rows,
        "gaps_filled": meta["gaps_filled"],
        "transform": ",".join(transforms),
        "scale": data.scale,
        "window": data.window,
        "horizon": data.horizon,
        "season": meta["season"],
        "n_targets": len(data.target),
        "n_features": len(meta["columns"]),
        "split": meta["split"].get("by", "fractions"),
        "train_rows": train_end,
        "val_rows": val_end - train_end,
        "test_rows": rows - val_end,
        "n_train": counts["train"],
        "n_val": counts["val"],
        "n_test": counts["test"],
    }


# ------------------------------------------------------------------------------------------ loading


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

    def windows(self, split: Parts) -> WindowSet:
        if split not in (*PARTS, TRAIN_AND_VAL):
            raise ValueError(f"split must be train, val, test or {TRAIN_AND_VAL}, got {split!r}")
        meta = self.meta
        origins = window_origins(
            split,
            meta["rows"],
            meta["split"]["train_end"],
            meta["split"]["val_end"],
            self.window,
            self.horizon,
            meta["stride"],
            meta["first_usable_row"],
        )
        return WindowSet(self.series, self.raw, self.window, self.horizon, origins, self.preprocessing.anchor_rows)


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
