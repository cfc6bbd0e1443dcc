"""The windows of a prepared series: which windows each part holds, cut as strided views, batched in a seeded order.

A window belongs to the part that holds all of its forecast steps; its inputs may reach back into earlier parts,
which is past data and legitimate. Training windows use ``data.stride``; validation and test windows use stride 1,
so every step is forecast at every lead time and the scores do not depend on where the first origin happens to
fall. Windows are views of the series (nothing is copied until a batch is gathered), and the shuffled order of an
epoch is computed piece by piece, so memory stays near the size of the series however many windows there are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from lstmflow.data.parts import TRAIN_AND_VAL, Parts

if TYPE_CHECKING:
    import torch


def window_origins(
    split: Parts, rows: int, train_end: int, val_end: int, window: int, horizon: int, stride: int, lost: int
) -> range:
    """First forecast step of every window of ``split``: all of its forecast steps lie inside that part (training and
    validation together: the training windows' stride carried on to the end of the validation part)."""
    first = window + lost
    parts = {
        "train": (first, train_end, stride),
        "val": (train_end, val_end, 1),
        "test": (val_end, rows, 1),
        TRAIN_AND_VAL: (first, val_end, stride),
    }
    begin, end, step = parts[split]
    return range(max(begin, first), end - horizon + 1, step)


class WindowSet:
    """The windows of one split, as strided views of the series; a batch is the only thing ever copied. Indexed and
    sized as a torch ``Dataset`` is, without importing torch until a window is taken (a process that only writes
    features never does).

    ``origins[i]`` is the first forecast step of window ``i``: its input is ``series[t0 - window : t0]`` (all
    columns) and its target ``series[t0 : t0 + horizon, :n_targets]``.
    """

    def __init__(
        self, series: np.ndarray, raw: np.ndarray, window: int, horizon: int, origins: range, anchor_rows: int = 1
    ) -> None:
        if len(origins) and (origins[0] < window or origins[-1] + horizon > len(series)):
            raise ValueError(
                f"origins {origins} need window {window} rows before and horizon {horizon} after, in {len(series)} rows"
            )
        self.window, self.horizon, self.n_targets = window, horizon, raw.shape[1]
        self.anchor_rows = anchor_rows
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
        import torch

        return torch.from_numpy(np.array(self.inputs[i])), torch.from_numpy(np.array(self.targets[i]))

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield x (B, window, F) and y (B, horizon, k); the shuffled order is a pure function of (seed, epoch)."""
        import torch

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
        """(N, n_targets) raw value just before each window's first forecast step (anchors a difference)."""
        return np.array(self._raw[self.origins - 1], dtype=np.float64)

    def history(self) -> np.ndarray:
        """(N, anchor_rows, n_targets) raw values just before each window's first forecast step: what
        ``Preprocessing.decode`` needs to undo the transform (a season of them for a seasonal difference)."""
        steps = np.arange(-self.anchor_rows, 0)
        return np.array(self._raw[self.origins[:, None] + steps], dtype=np.float64)


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
