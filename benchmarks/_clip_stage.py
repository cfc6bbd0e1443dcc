"""The four runs a clip stage (audio features, video frames) is timed by, and their table: one worker, two workers,
a re-run with nothing changed, and a run after adding 10% more clips, the last three on one cache."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

#: A stage run: ``run(workers, cache_name)`` prepares the clips with that many workers and that cache, returning the
#: stage's summary.
Run = Callable[[int, str], dict[str, Any]]


class Timed(NamedTuple):
    name: str
    seconds: float
    summary: dict[str, Any]
    throughput: str
    result: str


def timed(run: Callable[[], dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    summary = run()
    return time.perf_counter() - start, summary


def time_clip_stage(
    run: Run, add_tenth: Callable[[], None], rate: Callable[[dict[str, Any], float], str]
) -> list[Timed]:
    """The four runs, with the targets the audio stage set: two workers at least 1.7x faster than one, an unchanged
    re-run at least 50x faster than a full run, 10% more clips at most 20% of a full run. ``rate(summary, seconds)``
    words a full run's throughput."""
    one_worker, first = timed(lambda: run(1, "cache-1"))
    two_workers, second = timed(lambda: run(2, "cache-2"))
    rerun, unchanged = timed(lambda: run(2, "cache-2"))
    add_tenth()
    added_time, added = timed(lambda: run(2, "cache-2"))
    speedup = f"{one_worker / two_workers:.2f}x vs 1 worker (target >= 1.7x)"
    return [
        Timed("full, 1 worker", one_worker, first, rate(first, one_worker), ""),
        Timed("full, 2 workers", two_workers, second, rate(second, two_workers), speedup),
        Timed(
            "re-run, nothing changed",
            rerun,
            unchanged,
            "",
            f"{two_workers / rerun:.0f}x faster than full (target >= 50x)",
        ),
        Timed(
            f"+{added['computed']} clips (10%)",
            added_time,
            added,
            "",
            f"{added_time / two_workers:.0%} of full (target <= 20%)",
        ),
    ]


def print_runs(runs: list[Timed]) -> None:
    print(f"{'run':<26}{'seconds':>9}{'computed':>10}{'cached':>8}  {'throughput':<16}result")
    for name, seconds, summary, throughput, result in runs:
        print(f"{name:<26}{seconds:>9.2f}{summary['computed']:>10}{summary['cached']:>8}  {throughput:<16}{result}")
