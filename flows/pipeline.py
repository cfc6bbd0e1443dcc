"""The flows: ``run_pipeline`` (prepare → train or search → evaluate → register → gate) and ``search_pipeline``
(prepare → search trials), the one GPU workers of a shared study run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.utilities.annotations import NotSet
from pydantic import Field

from lstmflow.errors import ConfigError
from lstmflow.evaluation.baselines import read_record
from lstmflow.ops import gate as judging
from lstmflow.ops.search_steps import drive_trials
from lstmflow.ops.steps import Prepared, project_root
from tasks.data import prepare
from tasks.evaluate import evaluate
from tasks.gate import gate
from tasks.recovery import recover
from tasks.registry import register
from tasks.search import close_search, open_search, run_trial
from tasks.train import train


def overrides_from(
    epochs: int | None,
    learning_rate: float | None,
    batch_size: int | None,
    overrides: dict[str, Any] | None,
    trials: int | None = None,
) -> list[str]:
    """The typed shortcuts and the free mapping, as ``key=value`` assignments (shortcuts win)."""
    assignments = [f"{key}={value}" for key, value in (overrides or {}).items()]
    shortcuts = {
        "train.epochs": epochs,
        "train.optimizer.lr": learning_rate,
        "train.batch_size": batch_size,
        "search.trials": trials,
    }
    assignments += [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    return assignments


def search_trials(prepared: dict[str, Any], root: str, need_best: bool = True) -> dict[str, Any]:
    """The pipeline's search: ``search.parallel`` trials at once, each a ``trial`` task training in its own child
    process, asked for here until the study's budget is spent; then the study is closed (plots, best trial)."""
    study = open_search(prepared, root)
    progress = prepared["spec"]["search"]["parallel"] == 1  # parallel trials' progress bars would interleave
    outcomes = drive_trials(
        Prepared(**prepared),
        Path(root),
        study,
        lambda number: run_trial.submit(prepared, root, study, number, progress),
        as_completed,
    )
    return close_search(prepared, root, study, outcomes, need_best)


@flow(name="run_pipeline", log_prints=True, validate_parameters=True)
def run_pipeline(
    pipeline: Annotated[str, Field(description="Name of a pipeline in pipelines.yaml.")],
    epochs: Annotated[int | None, Field(gt=0, description="Override train.epochs.")] = None,
    learning_rate: Annotated[float | None, Field(gt=0, description="Override train.optimizer.lr.")] = None,
    batch_size: Annotated[int | None, Field(gt=0, description="Override train.batch_size.")] = None,
    overrides: Annotated[
        dict[str, Any] | None, Field(description="Any other key=value overrides, e.g. {'data.window': 24}.")
    ] = None,
    force: Annotated[bool, Field(description="Train again even when spec, data and code are unchanged.")] = False,
    config: Annotated[str, Field(description="Path to pipelines.yaml.")] = "pipelines.yaml",
    trials: Annotated[int | None, Field(gt=0, description="Override search.trials (pipelines with a search).")] = None,
) -> dict[str, Any]:
    """Train (or search), evaluate and register one pipeline, then let the gate decide whether the new model version
    becomes the champion; a re-run with nothing changed reuses the last run (and its recorded decision).

    A pipeline with a ``search`` runs its trials instead of one training and registers the best trial's model; its
    study continues where it stopped, so a re-run with nothing changed starts no trial. The gate scores the new
    version and the current champion on the same test data by the pipeline's ``promote`` rule.
    """
    root = str(project_root(config))
    recover(root)  # runs that killed processes left RUNNING are marked ended
    config_path = str(Path(config).expanduser().resolve())
    refresh = True if force else NotSet  # NotSet: each task's own setting (Prefect's default: use the cache)
    prepared = prepare(config_path, pipeline, overrides_from(epochs, learning_rate, batch_size, overrides, trials))
    searched = search_best(prepared, root) if prepared["spec"]["search"] is not None else None
    if searched:
        prepared, trained, cached = searched["prepared"], searched["trained"], not searched["summary"]["ran"]
    else:
        trained, cached = train_or_reuse(prepared, root, refresh)
    metrics = evaluate.with_options(refresh_cache=refresh)(prepared, trained, root)
    registered = register.with_options(refresh_cache=refresh)(prepared, trained, root)
    decision = gate(prepared, trained, registered, root)
    logger = get_run_logger()
    logger.info(
        "Gate: version %s %s (%s); %s.",
        registered["version"], decision["decision"], decision["alias"], decision["reason"],
    )  # fmt: skip
    if refused := judging.warning(pipeline, decision):  # the run worked; its model is not worth deploying
        logger.info(refused)  # in the flow run's log (the UI); the command line prints it as its last line
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
        "data_skipped_files": trained.get("data_skipped_files", 0),  # left out by the features stage
        "metrics": metrics,
        "baseline": (read_record(Path(trained["run_dir"]) / "plots") or {}).get("method"),
        "gate": decision,
        **({"search": searched["summary"]} if searched else {}),
    }


def train_or_reuse(prepared: dict[str, Any], root: str, refresh: bool | type[NotSet]) -> tuple[dict[str, Any], bool]:
    """The train task's run, trained now or reused from the cache when spec, data and code are unchanged; and which."""
    state = train.with_options(refresh_cache=refresh)(prepared, root, return_state=True)
    trained = state.result()
    cached = state.name == "Cached"
    if cached:
        get_run_logger().info(
            "Nothing changed (spec, data, code): reusing MLflow run %s, no training started.", trained["run_id"]
        )
    return trained, cached


def search_best(prepared: dict[str, Any], root: str) -> dict[str, Any]:
    """The pipeline's search, run to its budget; its best trial's run goes on to evaluate and register as is."""
    searched = search_trials(prepared, root)
    best = searched["summary"]["best"]
    get_run_logger().info(
        "Best trial %d (%s %.6g): reusing its MLflow run %s, no retraining.",
        best["number"], searched["summary"]["metric"], best["value"], searched["trained"]["run_id"],
    )  # fmt: skip
    return searched


@flow(name="search_pipeline", log_prints=True, validate_parameters=True)
def search_pipeline(
    pipeline: Annotated[str, Field(description="Name of a pipeline in pipelines.yaml that has a search.")],
    trials: Annotated[int | None, Field(gt=0, description="Override search.trials: the study's total.")] = None,
    overrides: Annotated[
        dict[str, Any] | None, Field(description="Any other key=value overrides, e.g. {'search.parallel': 2}.")
    ] = None,
    config: Annotated[str, Field(description="Path to pipelines.yaml.")] = "pipelines.yaml",
) -> dict[str, Any]:
    """Run trials of a pipeline's search until its study holds ``search.trials``; returns the study's summary.

    Several runs of this flow (workers on several machines, each running ``search.parallel`` trials) share one study
    through ``search.storage``. Evaluating and registering the best is left to ``run_pipeline`` (``lstmflow run``
    or ``lstmflow search``), once: it starts no trial when the study is complete.
    """
    root = str(project_root(config))
    recover(root)  # runs that killed processes left RUNNING are marked ended
    config_path = str(Path(config).expanduser().resolve())
    prepared = prepare(config_path, pipeline, overrides_from(None, None, None, overrides, trials))
    if prepared["spec"]["search"] is None:
        raise ConfigError(
            f"pipelines.{pipeline}.search: not set; search_pipeline needs a pipeline with a search section"
        )
    return search_trials(prepared, root, need_best=False)["summary"]
