"""The prepare task: DVC builds (or skips) the raw data and the pipeline's features."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from lstmflow.ops import steps
from tasks.policy import retry_unless_user_error


@task(
    name="prepare", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, retry_condition_fn=retry_unless_user_error
)
def prepare(config_path: str, pipeline: str, overrides: list[str]) -> dict[str, Any]:
    """Always runs: DVC itself decides, by content hash, whether anything needs rebuilding."""
    return asdict(steps.prepare(config_path, pipeline, overrides))
