"""The evaluate task: test metrics beside the seasonal-naive baseline, and plots, logged to the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from lstmflow.ops import steps
from tasks.policy import tracking_retry_options


@task(
    name="evaluate",
    cache_policy=TASK_SOURCE + INPUTS,
    persist_result=True,
    **tracking_retry_options(others=0),
)
def evaluate(prepared: dict[str, Any], trained: dict[str, Any], root: str) -> dict[str, float]:
    """Cached by its inputs: the same trained run is scored once. Retried only while MLflow's server does not
    answer."""
    return steps.evaluate(steps.Prepared(**prepared), trained, Path(root))
