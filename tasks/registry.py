"""The register task: the pyfunc model logged to the run and registered under the pipeline's name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from lstmflow.ops import steps
from tasks.policy import tracking_retry_options


@task(
    name="register",
    cache_policy=TASK_SOURCE + INPUTS,
    persist_result=True,
    **tracking_retry_options(others=1),
)
def register(prepared: dict[str, Any], trained: dict[str, Any], root: str) -> dict[str, str]:
    """Cached by its inputs: a reused training run is not registered twice. Retried while MLflow's server does not
    answer (a retry finds a version the failed try made, and adds none), once for any other failure."""
    return steps.register(steps.Prepared(**prepared), trained, Path(root))
