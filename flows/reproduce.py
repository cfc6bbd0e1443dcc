"""The ``reproduce_run`` flow: train again, in a new MLflow run, exactly what an earlier run recorded.

It takes the run's recorded spec (``spec.json``), not today's pipelines.yaml; builds its features with DVC and refuses
to go on when the data (or features) differ from the run's by md5; then trains from scratch, evaluates on the same
test part, and returns the recorded and the new test metrics side by side.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import Field

from lstmflow import tracking
from lstmflow.config import Config, validate_pipeline
from lstmflow.ops import steps
from lstmflow.tracking import runs
from tasks.evaluate import evaluate
from tasks.policy import retry_unless_user_error
from tasks.train import train


@task(
    name="prepare-recorded",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_user_error,
)
def prepare_recorded(spec: dict[str, Any], root: str, names: list[str]) -> dict[str, Any]:
    """DVC builds (or finds) the features of the recorded spec; its data paths are relative to the project."""
    pipeline = validate_pipeline(spec["name"], spec, Path(root))
    return asdict(steps.prepare_spec(pipeline, Path(root), names))


def never_cached(context: Any, parameters: dict[str, Any]) -> None:
    """No cache key: a reproduction trains afresh although its spec, data and code match the cached run's."""
    return


@flow(name="reproduce_run", log_prints=True, validate_parameters=True)
def reproduce_run(
    run_id: Annotated[str, Field(description="The MLflow run to reproduce (its id, as `lstmflow compare` lists).")],
    config: Annotated[
        str, Field(description="Path to pipelines.yaml: the project whose data and stores to use.")
    ] = "pipelines.yaml",
) -> dict[str, Any]:
    """Retrain the run's recorded spec on the same data version in a new run tagged ``lstmflow.reproduces``."""
    logger = get_run_logger()
    root = steps.project_root(config)
    uri = tracking.tracking_uri(root)
    recorded = runs.recorded_run(uri, run_id)
    names = Config.load(config).names
    prepared = prepare_recorded(recorded.spec, str(root), names)
    recorded.check_same_data(prepared["data_md5"], prepared["features_md5"])
    logger.info("Same data as run %s (md5 %s); training its spec afresh.", run_id, prepared["data_md5"])
    trained = train.with_options(cache_key_fn=never_cached)(prepared, str(root))
    tracking.set_tags(uri, trained["run_id"], {runs.REPRODUCES_TAG: run_id})
    try:
        metrics = evaluate(prepared, trained, str(root))
    except BaseException:
        tracking.end_run(uri, trained["run_id"], "FAILED")
        raise
    tracking.end_run(uri, trained["run_id"])
    return {
        "pipeline": recorded.spec["name"],
        "recorded_run_id": run_id,
        "mlflow_run_id": trained["run_id"],
        "flow_run_id": flow_run.get_id(),
        "git_commit": recorded.tags.get("lstmflow.git_commit"),
        "data_md5": prepared["data_md5"],
        "epochs_run": trained["epochs_run"],
        "recorded": recorded.test_metrics,
        "metrics": metrics,
    }
