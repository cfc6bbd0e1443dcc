"""The train task: a training child process logging to its own MLflow run; cached by spec, data and code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.runtime import flow_run

from lstmflow.ops import steps
from tasks.policy import step_cache_key, tracking_retry_options


@task(
    name="train",
    cache_key_fn=step_cache_key,
    persist_result=True,
    **tracking_retry_options(others=1),
)
def train(prepared: dict[str, Any], root: str) -> dict[str, Any]:
    """A retry of this task resumes from the run's last checkpoint and continues the same MLflow run: a crash is
    retried once, an MLflow server that does not answer at each retry (a finished training is not run again)."""
    return steps.train(steps.Prepared(**prepared), Path(root), flow_run.get_id())
