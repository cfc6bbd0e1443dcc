"""Batches of one part of the prepared sequences: padded to their own longest sequence, built from sequences of
similar length (bucketing) so that the padding stays a small fraction of the work, and gathered one at a time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

#: A shuffled epoch sorts by length within pools of this many batches: enough neighbours to find similar lengths,
#: few enough that the batches of an epoch still mix sequences from all over the set.
POOL_BATCHES = 50


class SequenceBatch(NamedTuple):
    x: torch.Tensor  # (B, T_max, F) float32, zero after each sequence's end
    lengths: torch.Tensor  # (B,) int64, on the CPU (pack_padded_sequence wants them there)
    y: torch.Tensor  # (B,) int64 class index


class SequenceSet:
    """One part (train, val or test) of the prepared sequences; ``positions`` index into the whole store."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray, labels: np.ndarray, positions: np.ndarray) -> None:
        self._values = values
        self._starts = offsets[positions]
        self.positions = positions
        self.lengths = offsets[positions + 1] - self._starts
        self.labels = labels[positions]

    def sequence(self, i: int) -> np.ndarray:
        """Sample ``i``'s steps (T, F) as stored (scaled), a view."""
        return self._values[self._starts[i] : self._starts[i] + self.lengths[i]]

    def __len__(self) -> int:
        return len(self.positions)

    def batch_indices(self, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0) -> list[np.ndarray]:
        """The samples (indices into this part) of each batch, in the order :meth:`batches` yields them.

        Without shuffle: sorted by length (stable), cut into consecutive batches. With shuffle: a seeded permutation
        of (seed, epoch) is cut into pools of ``POOL_BATCHES`` batches, each pool sorted by length and cut into
        batches, and the order of all batches is shuffled; every sample comes exactly once per epoch.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not shuffle:
            order = np.argsort(self.lengths, kind="stable")
            return [order[begin : begin + batch_size] for begin in range(0, len(order), batch_size)]
        rng = np.random.default_rng([seed, epoch])
        permuted = rng.permutation(len(self))
        pool = batch_size * POOL_BATCHES
        batches = []
        for pool_start in range(0, len(permuted), pool):
            members = permuted[pool_start : pool_start + pool]
            members = members[np.argsort(self.lengths[members], kind="stable")]
            batches += [members[begin : begin + batch_size] for begin in range(0, len(members), batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0) -> Iterator[SequenceBatch]:
        """Yield zero-padded batches in the order of :meth:`batch_indices`; only the batch in hand is gathered."""
        for chosen in self.batch_indices(batch_size, shuffle, seed, epoch):
            lengths = self.lengths[chosen]
            x = np.zeros((len(chosen), int(lengths.max()), self._values.shape[1]), dtype=np.float32)  # (B, T_max, F)
            for row, (start, length) in enumerate(zip(self._starts[chosen], lengths)):
                x[row, :length] = self._values[start : start + length]
            y = self.labels[chosen].astype(np.int64)
            yield SequenceBatch(torch.from_numpy(x), torch.from_numpy(lengths.astype(np.int64)), torch.from_numpy(y))

    def padding_fraction(self, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0) -> float:
        """Padded cells / all cells of the epoch's batches (0 when the part is empty); for logging."""
        real = padded = 0
        for chosen in self.batch_indices(batch_size, shuffle, seed, epoch):
            lengths = self.lengths[chosen]
            real += int(lengths.sum())
            padded += len(chosen) * int(lengths.max())
        return 1.0 - real / padded if padded else 0.0
