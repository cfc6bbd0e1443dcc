"""Padding with length bucketing vs without, on sequences whose lengths spread over 10-500 steps.

Builds a SequenceSet of N sequences with lengths drawn log-uniformly from 10 to 500 (the spread of tokenised
sentences to paragraphs), and compares the padded fraction of one shuffled epoch of batches as lstmflow makes
them (sorted by length within pools of batches) with plain random batches of the same size.

    python benchmarks/padding.py [--sequences 5000] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lstmflow.data.sequences import SequenceSet


def padded_fraction(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    real = sum(int(lengths[b].sum()) for b in batches)
    cells = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1 - real / cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    lengths = np.exp(rng.uniform(np.log(10), np.log(500), args.sequences)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = np.zeros((offsets[-1], 1), dtype=np.float32)
    sequences = SequenceSet(values, offsets, np.zeros(args.sequences, np.int64), np.arange(args.sequences))

    start = time.perf_counter()
    bucketed = sequences.padding_fraction(args.batch_size, shuffle=True, seed=0, epoch=0)
    seconds = time.perf_counter() - start
    random_batches = np.array_split(rng.permutation(args.sequences), int(np.ceil(args.sequences / args.batch_size)))
    plain = padded_fraction(lengths, random_batches)

    print(
        f"\n{args.sequences} sequences, lengths 10-500 (log-uniform, mean {lengths.mean():.0f}), "
        f"batch {args.batch_size}"
    )
    print(f"{'batching':<32}{'padded fraction':>16}")
    print(f"{'random batches':<32}{plain:>16.3f}")
    print(f"{'lstmflow (bucketed by length)':<32}{bucketed:>16.3f}")
    print(f"ratio {plain / bucketed:.1f}x less padding; planning the epoch took {seconds * 1000:.1f} ms")


if __name__ == "__main__":
    main()
