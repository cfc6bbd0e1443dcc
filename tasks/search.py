"""The search tasks: open the study, run one trial, close the study; the flow asks for trials in between."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from lstmflow.ops import search_steps, steps
from tasks.policy import retry_unless_user_error


@task(
    name="open-search",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_user_error,
)
def open_search(prepared: dict[str, Any], root: str) -> dict[str, str]:
    """The study (created or continued) and its MLflow parent run: a reference for the trials."""
    return search_steps.open_search(steps.Prepared(**prepared), Path(root), flow_run.get_id())


@task(name="trial", task_run_name="trial-{number}", cache_policy=NO_CACHE)
def run_trial(
    prepared: dict[str, Any], root: str, study: dict[str, str], number: int, progress: bool
) -> dict[str, Any]:
    """One trial, training in its own child process. No retries: a failing trial is recorded failed, not raised."""
    return search_steps.run_trial(steps.Prepared(**prepared), Path(root), study, number, flow_run.get_id(), progress)


@task(name="close-search", cache_policy=NO_CACHE)
def close_search(
    prepared: dict[str, Any], root: str, study: dict[str, str], outcomes: list[dict[str, Any]], need_best: bool
) -> dict[str, Any]:
    """Plots and the best trial on the parent run; the best trial's spec and run for evaluate and register."""
    return search_steps.close_search(steps.Prepared(**prepared), Path(root), study, outcomes, need_best)
