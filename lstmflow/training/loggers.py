"""The metric-logger protocol that training writes to.

Tracking is injected (torchtune's metric loggers): ``fit`` takes any object with
``log_metrics``; :class:`~lstmflow.tracking.MlflowMetricLogger` sends them to an
MLflow run in one batch per call, :class:`ListLogger` keeps them for tests.
"""

from __future__ import annotations

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
