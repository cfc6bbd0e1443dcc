"""Windowing benchmark: WindowSet (views + gathered batches) against pre-materialised windows.

    python benchmarks/windowing.py [--points 10000000] [--window 100] [--batch 256] [--baseline-windows 1000000]

(a) Memory: extra bytes allocated (tracemalloc peak; numpy reports its buffers to it) while building the
    WindowSet of a float32 series and iterating one shuffled epoch, against the bytes of the series itself
    (target <= 0.5x). The RSS growth over the same work is shown beside it.
(b) Speed: batches per second over one epoch, WindowSet.batches against a contiguous (N, window, 1) array
    built beforehand. Shuffled: a permutation drawn per epoch, then rows gathered (as Keras-style training
    does). Sequential: plain slices, which for the baseline are views of its array while WindowSet hands out
    batches the caller owns; the copying baseline row shows the cost of that copy alone. The baseline runs
    on a subset so that it fits in memory (window x 4 bytes per window); target ratio >= 0.9x. Best of
    ``--repeats`` epochs each.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import psutil
import torch

from lstmflow.data.timeseries import WindowSet

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def window_set(series: np.ndarray, window: int) -> WindowSet:
    """Every window of the series, horizon 1, the target being the series itself."""
    return WindowSet(series, series, window=window, horizon=1, origins=range(window, len(series)))


def materialised_batches(inputs: np.ndarray, targets: np.ndarray, batch: int, mode: str, epoch: int) -> Batches:
    """The baseline: windows already copied into contiguous arrays, cut into batches."""
    order = np.random.default_rng(epoch).permutation(len(inputs)) if mode == "shuffled" else None
    for begin in range(0, len(inputs), batch):
        if order is not None:
            picked = order[begin : begin + batch]
            x, y = inputs[picked], targets[picked]
        elif mode == "sequential, copied":
            x, y = inputs[begin : begin + batch].copy(), targets[begin : begin + batch].copy()
        else:
            x, y = inputs[begin : begin + batch], targets[begin : begin + batch]
        yield torch.from_numpy(x), torch.from_numpy(y)


def batches_per_second(make_epoch: Callable[[int], Batches], repeats: int) -> float:
    """Best rate over ``repeats`` full epochs (epoch number passed on, so each shuffles differently)."""
    best = 0.0
    for epoch in range(repeats):
        started = time.perf_counter()
        count = sum(1 for _ in make_epoch(epoch))
        best = max(best, count / (time.perf_counter() - started))
    return best


def measure_memory(series: np.ndarray, window: int, batch: int) -> tuple[int, int]:
    """(tracemalloc peak, RSS growth) in bytes for building the WindowSet and one shuffled epoch."""
    gc.collect()
    process = psutil.Process()
    rss_before = process.memory_info().rss
    tracemalloc.start()
    windows = window_set(series, window)
    for _ in windows.batches(batch, shuffle=True, seed=0, epoch=0):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, process.memory_info().rss - rss_before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=10_000_000, help="length of the float32 series")
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--baseline-windows", type=int, default=1_000_000, help="windows materialised for the baseline")
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed per row; the best counts")
    args = parser.parse_args()
    torch.set_num_threads(1)

    series = np.random.default_rng(0).standard_normal((args.points, 1), dtype=np.float32)  # (T, 1)
    windows = window_set(series, args.window)
    subset = min(args.baseline_windows, len(windows))
    inputs = windows.inputs[:subset].copy()  # (subset, window, 1), contiguous
    targets = windows.targets[:subset].copy()  # (subset, 1, 1), contiguous

    peak, rss = measure_memory(series, args.window, args.batch)
    mib = 2**20
    fraction = peak / series.nbytes
    rows = [
        ("(a) extra memory, tracemalloc peak", f"{peak / mib:.2f} MiB", "", None),
        ("    as a fraction of the series", f"{fraction:.3f}x", "<= 0.5x", fraction <= 0.5),
        ("    RSS growth over the same work", f"{rss / mib:.2f} MiB", "", None),
    ]
    for shuffle, label in ((True, "shuffled"), (False, "sequential")):
        ours = batches_per_second(partial(windows.batches, args.batch, shuffle, 0), args.repeats)
        rows.append((f"(b) {label}: WindowSet.batches", f"{ours:,.0f}/s", "", None))
        modes = [label] if shuffle else [label, "sequential, copied"]
        for mode in modes:
            base = batches_per_second(partial(materialised_batches, inputs, targets, args.batch, mode), args.repeats)
            rows.append((f"    {mode}: materialised baseline", f"{base:,.0f}/s", "", None))
            rows.append(("    ratio to it", f"{ours / base:.2f}x", ">= 0.9x", ours / base >= 0.9))

    materialised = len(windows) * args.window * 4 / mib
    print(
        f"series: {args.points:,} float32 points ({series.nbytes / mib:.1f} MiB), window {args.window}, horizon 1, "
        f"batch {args.batch}; {len(windows):,} windows ({materialised:,.0f} MiB if materialised); "
        f"baseline on {subset:,} windows"
    )
    print()
    print(f"{'measure':<48} {'value':>14} {'target':>9} {'met':>4}")
    print("-" * 78)
    for name, value, target, met in rows:
        print(f"{name:<48} {value:>14} {target:>9} {'' if met is None else 'yes' if met else 'NO':>4}")


if __name__ == "__main__":
    main()
