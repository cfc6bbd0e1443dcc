"""``train.budget`` and the progress lines: how long training has run (across resumes), whether it must stop, and
a line at most every ``PROGRESS_EVERY`` seconds for the run's log and console.

Lines logged to ``PROGRESS_LOGGER`` reach the console of ``lstmflow run`` as well as the training child's log (the
launcher lets that logger's INFO lines through to stderr): the periodic progress line, and the line saying that the
budget ended a run. A run shorter than ``PROGRESS_EVERY`` prints no progress line at all.
"""

from __future__ import annotations

import logging
import time

import torch

from lstmflow.config import PipelineSpec
from lstmflow.training.distributed import World

PROGRESS_LOGGER = "lstmflow.training.progress"
#: Seconds between two progress lines.
PROGRESS_EVERY = 30.0

progress_log = logging.getLogger(PROGRESS_LOGGER)


class Clock:
    """Seconds of training in all: those a checkpoint had used before this call, plus this call's."""

    def __init__(self, used_before: float = 0.0) -> None:
        self.started = time.monotonic() - used_before

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Budget:
    """``train.budget``: spent when the seconds or the steps are used up. Every rank takes the same decision (a
    time limit is read on each rank's own clock, so the ranks agree through one small all-reduce per check)."""

    def __init__(self, spec: PipelineSpec, world: World) -> None:
        self.seconds, self.steps, self.world = spec.train.budget.seconds, spec.train.budget.steps, world

    def spent(self, clock: Clock, step: int) -> bool:
        if self.steps is not None and step >= self.steps:
            return True  # the same on every rank: no need to agree
        if self.seconds is None:
            return False
        over = clock.elapsed() >= self.seconds
        if self.world.size == 1:
            return over
        return bool(self.world.sum(torch.tensor([float(over)], device=self.world.device)).item() > 0)

    def describe(self) -> str:
        """The limits as the progress lines name them, e.g. ``10m00s`` or ``10m00s, 5000 steps``."""
        limits = [] if self.seconds is None else [minutes(self.seconds)]
        limits += [] if self.steps is None else [f"{self.steps} steps"]
        return ", ".join(limits) or "none"


class ProgressLines:
    """Emits ``line()`` when ``PROGRESS_EVERY`` seconds have passed since the last one (or the start)."""

    def __init__(self, enabled: bool, every: float | None = None) -> None:
        self.enabled, self.last = enabled, time.monotonic()
        self.every = PROGRESS_EVERY if every is None else every

    def due(self) -> bool:
        return self.enabled and time.monotonic() - self.last >= self.every

    def emit(self, line: str) -> None:
        self.last = time.monotonic()
        progress_log.info(line)


def minutes(seconds: float) -> str:
    """``754.2`` as ``12m34s``: how the progress lines write a duration."""
    whole = int(seconds)
    return f"{whole // 60}m{whole % 60:02d}s"
