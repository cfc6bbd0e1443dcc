"""The metric-logger protocol that training writes to.

Tracking is injected (torchtune's metric loggers): ``fit`` takes any object with ``log_metrics``.
:class:`SpoolLogger` is what a training child gets: it appends to a file that the parent relays to the MLflow run
(:func:`lstmflow.tracking.relayed_metrics`); :class:`ListLogger` keeps them for tests.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Protocol


class MetricLogger(Protocol):
    """Receives one step's metrics at a time; must be picklable to reach a training child."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class ListLogger:
    """Keeps every logged metric in memory: ``records[i] == (step, {name: value})``."""

    def __init__(self) -> None:
        self.records: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.records.append((step, dict(metrics)))


#: One logged call in a spool: ``(step, time in ms since the epoch, {name: value})``.
SpooledRow = tuple[int, int, dict[str, float]]


class SpoolLogger:
    """Appends each call as one JSON line to ``path``, for the parent process to relay.

    A training child that logged to MLflow itself paid for MLflow's import and a store of its own (seconds of every
    run's fixed cost) and waited for the store at every epoch; the parent has both already.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        row = {"step": step, "time": int(time.time() * 1000), "metrics": {k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as spool:
            spool.write(json.dumps(row) + "\n")  # one write: a reader sees whole lines, or a tail without "\n"


def read_spool(path: Path, offset: int) -> tuple[list[SpooledRow], int]:
    """The whole lines of a spool from byte ``offset`` on, and the offset after the last of them."""
    if not path.exists():
        return [], offset
    with path.open("rb") as spool:
        spool.seek(offset)
        text = spool.read()
    complete = text[: text.rfind(b"\n") + 1]
    rows = [json.loads(line) for line in complete.splitlines()]
    return [(row["step"], row["time"], row["metrics"]) for row in rows], offset + len(complete)
