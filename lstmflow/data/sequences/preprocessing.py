"""The truncation and per-feature scaling of sequences: fitted on the training part, applied alike in serving."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstmflow.errors import DataError


@dataclass(frozen=True)
class SequencePreprocessing:
    """Truncation and per-feature scaling, fitted on the training sequences: model space = (x - offset) / factor."""

    scale: str
    max_length: int | None
    offset: tuple[float, ...]
    factor: tuple[float, ...]

    @property
    def n_features(self) -> int:
        return len(self.offset)

    @classmethod
    def fit(cls, train: Sequence[np.ndarray], scale: str, max_length: int | None) -> SequencePreprocessing:
        """Fit on the training steps the model will see (after truncation); a constant feature keeps factor 1."""
        kept = [np.asarray(steps, dtype=np.float64)[-max_length:] if max_length else steps for steps in train]
        n_features = kept[0].shape[1]
        if scale == "standard":
            # Two passes over the list: exact, and no concatenated copy of the training set.
            count = sum(len(steps) for steps in kept)
            offset = np.asarray(sum(np.sum(steps, axis=0, dtype=np.float64) for steps in kept) / count)
            factor = np.sqrt(sum(np.sum((steps - offset) ** 2, axis=0) for steps in kept) / count)
            factor = np.where(factor > 1e-12 * np.maximum(1.0, np.abs(offset)), factor, 1.0)
        else:
            offset, factor = np.zeros(n_features), np.ones(n_features)
        return cls(scale, max_length, tuple(map(float, offset)), tuple(map(float, factor)))

    def encode(self, steps: np.ndarray) -> np.ndarray:
        """(T, F) raw steps → (T', F) float32 model space: the last ``max_length`` steps, scaled."""
        steps = np.asarray(steps, dtype=np.float64)
        if steps.ndim != 2 or steps.shape[1] != self.n_features or len(steps) == 0:
            raise DataError(f"a sequence must have shape (steps >= 1, {self.n_features} features), got {steps.shape}")
        if self.max_length is not None:
            steps = steps[-self.max_length :]
        return ((steps - np.asarray(self.offset)) / np.asarray(self.factor)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "max_length": self.max_length,
            "offset": list(self.offset),
            "factor": list(self.factor),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SequencePreprocessing:
        return cls(d["scale"], d["max_length"], tuple(d["offset"]), tuple(d["factor"]))
