"""The transform and scaler of a series: chosen and fitted on the training rows only, applied alike in serving.

A target's transform is a chain of up to three steps, always in this order: ``log``, ``seasonal_difference``
(``x[t] - x[t - season]``) or ``seasonal_mean_difference`` (``x[t]`` minus the mean of ``x[t - k * season]`` for
k = 1 to :data:`SEASONS_AVERAGED`: a seasonal profile averaged over past years, so one year's noise is not carried
into the next), and ``difference`` (``x[t] - x[t - 1]``), written joined by ``+``
(``log+seasonal_difference``) or ``none``. Transforms apply to the targets only; features (covariates) are scaled
but otherwise fed as given.
Each difference costs rows at the start (1, ``season``, or ``SEASONS_AVERAGED * season``): every column loses the
most any target loses, so that row ``t`` of the model space stays row ``t + lost_rows`` of the raw series.

Every step is undone exactly in :meth:`Preprocessing.decode`, from the raw rows just before a forecast's first
step (:attr:`Preprocessing.anchor_rows` of them), so evaluation and serving report original units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lstmflow.config import TimeSeriesDataSpec
from lstmflow.data.tables import listing
from lstmflow.data.timeseries.seasonality import (
    SEASONAL_STRENGTH,
    amplitude_grows_with_level,
    level_is_stationary,
    seasonal_strength,
)
from lstmflow.errors import DataError

#: The steps a transform chains, in the order they apply.
STEPS = ("log", "seasonal_difference", "seasonal_mean_difference", "difference")
#: The steps that leave changes rather than levels.
DIFFERENCE_STEPS = frozenset(STEPS) - {"log"}
#: Past seasons a ``seasonal_mean_difference`` averages.
SEASONS_AVERAGED = 3
#: A straight line must explain more than this share of the (transformed) training variance for `difference`.
TREND_R2 = 0.8


def steps_of(transform: str) -> tuple[str, ...]:
    """``log+difference`` → ``("log", "difference")``; ``none`` → ``()``."""
    return tuple(step for step in transform.split("+") if step != "none")


def differenced(transform: str) -> str:
    """``transform`` with a first difference added at its end, unless it already takes a difference of some kind."""
    steps = steps_of(transform)
    return transform if set(steps) & DIFFERENCE_STEPS else "+".join([*steps, "difference"])


def choose_transforms(
    frame: pd.DataFrame, spec: TimeSeriesDataSpec, train_end: int, season: int, where: str
) -> tuple[str, ...]:
    """One transform per target: the declared one, or the `auto` rule applied to the training rows only.

    ``season`` is the resolved season. The `auto` rule considers seasonal differencing only when it is the
    calendar's season: a cycle inferred from the data or set for the scores (sunspots' 11 years) is too irregular to
    subtract. A declared `seasonal_difference` uses ``season`` whatever its origin.
    """
    from lstmflow.data.timeseries.read import infer_season

    auto_season = season if season > 1 and infer_season(frame) == season else 1
    chosen = []
    for name in spec.target:
        values = frame[name].to_numpy(np.float64)
        transform = spec.transform if spec.transform != "auto" else auto_transform(values[:train_end], auto_season)
        if "log" in steps_of(transform):
            nonpositive = np.flatnonzero(values <= 0)
            if nonpositive.size:
                cells = [f"{values[i]} at {frame.index[i]}" for i in nonpositive]
                origin = "chosen by transform: auto from the training part" if spec.transform == "auto" else "requested"
                raise DataError(
                    f"{where}.transform: log ({origin}) needs values > 0, but column {name!r} has "
                    f"{len(cells)} value(s) <= 0: {listing(cells)}; set transform: none or difference"
                )
        if {"seasonal_difference", "seasonal_mean_difference"} & set(steps_of(transform)) and season < 2:
            raise DataError(
                f"{where}.transform: {transform!r} needs a season of 2 or more, but the season is {season}; "
                "set evaluate.season, or use a time column whose calendar gives one"
            )
        chosen.append(transform)
    return tuple(chosen)


def auto_transform(train: np.ndarray, season: int = 1) -> str:
    """The `auto` rule on a target's training values; each test sees the result of the steps before it.

    - ``log`` when every value is > 0 and the spread grows with the level
      (:func:`~lstmflow.data.timeseries.seasonality.amplitude_grows_with_level`), or, for a series without a trend,
      max/min exceeds 10;
    - ``seasonal_difference`` when ``season`` >= 2, STL's seasonal strength exceeds 0.64 (R's ``nsdiffs`` rule)
      and the level moves (a trend, or a level that KPSS and ADF do not both find stationary): the network then
      learns what seasonal naive misses. A stationary level keeps its season, which the network learns better from
      the levels;
    - ``difference`` when a straight line still explains more than 80% of the variance (a trend), or, with no
      seasonal difference taken, when the level wanders (unless KPSS keeps a stationary level and the ADF test
      rejects a unit root, :func:`~lstmflow.data.timeseries.seasonality.level_is_stationary`), which the network
      could not extrapolate. After a seasonal difference only a straight trend counts: a further difference
      doubles the noise.
    """
    values = np.asarray(train, dtype=np.float64)
    chosen = []
    if values.size and values.min() > 0:
        spans_decades = values.max() / values.min() > 10 and not _trends(values)
        if spans_decades or amplitude_grows_with_level(values, season):
            chosen.append("log")
            values = np.log(values)
    moves = _trends(values) or not level_is_stationary(values)
    if moves and season >= 2 and seasonal_strength(values, season) > SEASONAL_STRENGTH:
        chosen.append("seasonal_difference")
        values = values[season:] - values[:-season]
        moves = _trends(values)
    if moves:
        chosen.append("difference")
    return "+".join(chosen) or "none"


def _trends(values: np.ndarray) -> bool:
    """Whether a straight line explains more than :data:`TREND_R2` of the variance."""
    if values.size <= 2 or np.ptp(values) == 0:
        return False
    return bool(np.corrcoef(np.arange(values.size), values)[0, 1] ** 2 > TREND_R2)


def _lag(transform: str, season: int) -> int:
    """Rows a transform loses at the start: 1 per difference, ``season`` per seasonal difference."""
    return sum(_step_lag(step, season) for step in steps_of(transform))


def _step_lag(step: str, season: int) -> int:
    """Rows one step loses at the start."""
    return {"log": 0, "difference": 1, "seasonal_difference": season}.get(step, SEASONS_AVERAGED * season)


@dataclass(frozen=True)
class Preprocessing:
    """The fitted transform and scaler: model space = (transform(raw) - offset) / factor, per column.

    Columns are targets first (``transforms`` holds one entry per target), then features (scaled only).
    ``season`` is the lag of a ``seasonal_difference`` step.
    """

    columns: tuple[str, ...]
    transforms: tuple[str, ...]
    scale: str
    offset: tuple[float, ...]
    factor: tuple[float, ...]
    season: int = 1

    @property
    def n_targets(self) -> int:
        return len(self.transforms)

    @property
    def targets_are_changes(self) -> bool:
        """Whether every target is differenced: a model answering 0 then forecasts the last value (or season's
        values) moved by the training part's mean change, the naive forecast a network should start from."""
        return bool(self.transforms) and all(DIFFERENCE_STEPS & set(steps_of(t)) for t in self.transforms)

    @property
    def lost_rows(self) -> int:
        """Raw rows at the start that have no transformed value (the longest chain of differences)."""
        return max((_lag(transform, self.season) for transform in self.transforms), default=0)

    @property
    def anchor_rows(self) -> int:
        """Raw rows before a forecast's first step that :meth:`decode` needs to undo the differences (at least 1)."""
        return max(1, self.lost_rows)

    @classmethod
    def fit(
        cls, train_raw: np.ndarray, columns: tuple[str, ...], transforms: tuple[str, ...], scale: str, season: int = 1
    ) -> Preprocessing:
        """Fit the scaler on the transformed training rows; a constant column keeps factor 1 (no division by 0)."""
        transformed = _apply_transforms(train_raw, transforms, season)
        if scale == "standard":
            offset, factor = transformed.mean(axis=0), transformed.std(axis=0)
        elif scale == "minmax":
            offset, factor = transformed.min(axis=0), np.ptp(transformed, axis=0)
        else:
            offset, factor = np.zeros(len(columns)), np.ones(len(columns))
        factor = np.where(factor > 1e-12 * np.maximum(1.0, np.abs(offset)), factor, 1.0)
        return cls(
            tuple(columns), tuple(transforms), scale, tuple(map(float, offset)), tuple(map(float, factor)), season
        )

    def context_rows(self, window: int) -> int:
        """Raw rows needed to encode one input window (more when differencing)."""
        return window + self.lost_rows

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """(R, F) raw rows, columns in order → (R - lost_rows, F) float32 model space."""
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != len(self.columns):
            raise ValueError(
                f"encode expects (rows, {len(self.columns)}) for columns {list(self.columns)}, got {raw.shape}"
            )
        if raw.shape[0] < 1 + self.lost_rows:
            raise ValueError(f"encode needs at least {1 + self.lost_rows} rows, got {raw.shape[0]}")
        transformed = _apply_transforms(raw, self.transforms, self.season)
        return ((transformed - self.offset) / self.factor).astype(np.float32)

    def decode(self, pred: np.ndarray, history: np.ndarray) -> np.ndarray:
        """(N, horizon, n_targets) model space → original units.

        ``history`` holds the raw target rows just before each forecast's first step: (N, L, n_targets) with
        L >= :attr:`anchor_rows`, or (N, n_targets) for the last row alone (enough when ``anchor_rows`` is 1).
        """
        values = np.asarray(pred, dtype=np.float64)
        k = self.n_targets
        if values.ndim != 3 or values.shape[2] != k:
            raise ValueError(f"decode expects (N, horizon, {k}), got {values.shape}")
        values = values * np.asarray(self.factor[:k]) + np.asarray(self.offset[:k])
        before = np.asarray(history, dtype=np.float64)
        before = before.reshape(values.shape[0], 1, k) if before.ndim == 2 else before
        if before.ndim != 3 or before.shape[0] != values.shape[0] or before.shape[1] < self.anchor_rows:
            raise ValueError(
                f"decode needs the last {self.anchor_rows} raw row(s) before each forecast, "
                f"(N, {self.anchor_rows}, {k}); got {np.shape(history)}"
            )
        for j, transform in enumerate(self.transforms):
            values[:, :, j] = _undo(steps_of(transform), values[:, :, j], before[:, :, j], self.season)
        return values

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "transforms": list(self.transforms),
            "scale": self.scale,
            "offset": list(self.offset),
            "factor": list(self.factor),
            "season": self.season,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            tuple(d["columns"]),
            tuple(d["transforms"]),
            d["scale"],
            tuple(d["offset"]),
            tuple(d["factor"]),
            d.get("season", 1),  # saved before seasonal differencing existed
        )


def _step(step: str, values: np.ndarray, season: int) -> np.ndarray:
    """One step along the last axis of ``values``; a difference of lag k drops the first k entries."""
    if step == "log":
        return np.log(values)
    if step == "seasonal_mean_difference":
        lag, n = SEASONS_AVERAGED * season, values.shape[-1]
        past = [values[..., lag - j * season : n - j * season] for j in range(1, SEASONS_AVERAGED + 1)]
        return values[..., lag:] - np.mean(past, axis=0)
    lag = season if step == "seasonal_difference" else 1
    return values[..., lag:] - values[..., :-lag]


def _apply_transforms(raw: np.ndarray, transforms: tuple[str, ...], season: int) -> np.ndarray:
    """Each target column (the first ``len(transforms)``) through its steps; every column then loses the most rows
    any target lost, so the rows stay aligned."""
    out = np.array(raw, dtype=np.float64)
    lost = max((_lag(transform, season) for transform in transforms), default=0)
    columns = [out[lost:, j] for j in range(out.shape[1])]
    for j, transform in enumerate(transforms):
        column = out[:, j]
        for step in steps_of(transform):
            column = _step(step, column, season)
        columns[j] = column[len(column) - (len(out) - lost) :]
    return np.column_stack(columns) if columns else out[lost:]


def _undo(steps: tuple[str, ...], values: np.ndarray, before: np.ndarray, season: int) -> np.ndarray:
    """(N, H) forecasts after ``steps`` → (N, H) raw values, given (N, L) raw values before each forecast.

    The history goes through the steps too, so each difference is undone from its own level: a forecast of a lag-k
    difference at step h adds the level k steps earlier, from the history or from the forecast already undone.
    """
    levels = [before]
    for step in steps:
        levels.append(_step(step, levels[-1], season))
    for step, level in zip(reversed(steps), reversed(levels[:-1])):
        if step == "log":
            values = np.exp(values)
            continue
        lag = _step_lag(step, season)
        undone = np.concatenate([level[:, -lag:], np.empty_like(values)], axis=1)  # (N, lag + H)
        for h in range(values.shape[1]):
            if step == "seasonal_mean_difference":
                past = [undone[:, lag + h - j * season] for j in range(1, SEASONS_AVERAGED + 1)]
                undone[:, lag + h] = np.mean(past, axis=0) + values[:, h]
            else:
                undone[:, lag + h] = undone[:, h] + values[:, h]
        values = undone[:, lag:]
    return values
