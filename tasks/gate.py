"""The gate task: the newly registered version against the champion on the same test data; the alias moves if it
wins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from lstmflow.ops import gate as judging
from lstmflow.ops import steps
from tasks.policy import tracking_retry_options


@task(name="gate", cache_policy=NO_CACHE, **tracking_retry_options(others=1))
def gate(prepared: dict[str, Any], trained: dict[str, Any], registered: dict[str, str], root: str) -> dict[str, Any]:
    """Never cached: the champion may have moved (a newer version, a rollback) since the last run. Idempotent all the
    same: a version the gate has judged keeps its recorded decision, so a re-run or a retry judges nothing twice; it
    retries while MLflow's server does not answer, as the steps before it do."""
    data = steps.Prepared(**prepared)
    return judging.gate(data.pipeline, Path(data.features_dir), trained, registered, Path(root))
