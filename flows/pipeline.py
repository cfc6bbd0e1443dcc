"""The ``run_pipeline`` flow: prepare → train → evaluate → register, for one pipeline of ``pipelines.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from lstmflow.steps import project_root
from tasks.data import prepare
from tasks.evaluate import evaluate
from tasks.registry import register
from tasks.train import train


def overrides_from(
    epochs: int | None, learning_rate: float | None, batch_size: int | None, overrides: dict[str, Any] | None
) -> list[str]:
    """The typed shortcuts and the free mapping, as ``key=value`` assignments (shortcuts win)."""
    assignments = [f"{key}={value}" for key, value in (overrides or {}).items()]
    shortcuts = {"train.epochs": epochs, "train.optimizer.lr": learning_rate, "train.batch_size": batch_size}
    assignments += [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    return assignments


@flow(name="run_pipeline", log_prints=True, validate_parameters=True)
def run_pipeline(
    pipeline: Annotated[str, Field(description="Name of a pipeline in pipelines.yaml.")],
    epochs: Annotated[int | None, Field(gt=0, description="Override train.epochs.")] = None,
    learning_rate: Annotated[float | None, Field(gt=0, description="Override train.optimizer.lr.")] = None,
    batch_size: Annotated[int | None, Field(gt=0, description="Override train.batch_size.")] = None,
    overrides: Annotated[dict[str, Any] | None, Field(description="Any other key=value overrides, e.g. {'data.window': 24}.")] = None,
    force: Annotated[bool, Field(description="Train again even when spec, data and code are unchanged.")] = False,
    config: Annotated[str, Field(description="Path to pipelines.yaml.")] = "pipelines.yaml",
) -> dict[str, Any]:
    """Train, evaluate and register one pipeline; a re-run with nothing changed reuses the last run."""
    logger = get_run_logger()
    root = str(project_root(config))
    config_path = str(Path(config).expanduser().resolve())
    prepared = prepare(config_path, pipeline, overrides_from(epochs, learning_rate, batch_size, overrides))
    train_state = train.with_options(refresh_cache=force or None)(prepared, root, return_state=True)
    trained = train_state.result()
    cached = train_state.name == "Cached"
    if cached:
        logger.info("Nothing changed (spec, data, code): reusing MLflow run %s, no training started.", trained["run_id"])
    metrics = evaluate.with_options(refresh_cache=force or None)(prepared, trained, root)
    registered = register.with_options(refresh_cache=force or None)(prepared, trained, root)
    return {
        "pipeline": pipeline,
        "mlflow_run_id": trained["run_id"],
        "model_uri": registered["model_uri"],
        "model_version": registered["version"],
        "data_version": prepared["features_md5"],
        "flow_run_id": flow_run.get_id(),
        "data_md5": prepared["data_md5"],
        "cached": cached,
        "epochs_run": trained["epochs_run"],
        "best_epoch": trained["best_epoch"],
        "metrics": metrics,
    }
