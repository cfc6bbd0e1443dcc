"""The transform and scaler of a series: chosen and fitted on the training rows only, applied alike in serving.

Transforms apply to the targets only; features (covariates) are scaled but otherwise fed as given. A differenced
series loses its first row, which has no difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lstmflow.config import TimeSeriesDataSpec
from lstmflow.data.tables import listing
from lstmflow.errors import DataError


def choose_transforms(frame: pd.DataFrame, spec: TimeSeriesDataSpec, train_end: int, where: str) -> tuple[str, ...]:
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
