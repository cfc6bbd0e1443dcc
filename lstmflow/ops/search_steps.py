"""The search step: a study of trials, each a training child with its own MLflow run under one parent run.

It starts its runs with :func:`lstmflow.ops.steps.start_tracked_run`, as the train step does; ``tasks/search.py``
wraps these functions for Prefect, and :func:`run_search` runs the whole search without it.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from lstmflow import tracking
from lstmflow.config import PipelineSpec, dotted_key
from lstmflow.errors import TrainingError
from lstmflow.ops import team
from lstmflow.ops.steps import METRICS_SPOOL, Prepared, start_tracked_run

#: The study's user attribute naming its MLflow parent run.
PARENT_RUN_ATTR = "lstmflow.mlflow_parent_run_id"
#: Seconds a process that found a study just made by another waits for that one's parent run.
PARENT_WAIT_SECONDS = 60
#: The trial's user attribute naming its MLflow run.
TRIAL_RUN_ATTR = "lstmflow.mlflow_run_id"
#: Where a completed trial's weights go in its MLflow run, for machines that did not train it.
TRIAL_MODEL_ARTIFACT = "trial"


def open_search(prepared: Prepared, root: Path, flow_run_id: str | None) -> dict[str, str]:
    """Create or continue the pipeline's study and its MLflow parent run; returns the reference every trial needs.

    The process that creates the study makes the parent run; the others (a later call, another worker) reopen it.
    """
    from lstmflow.training import search

    spec = prepared.pipeline
    settings = search.search_settings(spec)
    ref = search.StudyRef(_storage_location(spec, root), search.study_name(spec, prepared.features_md5))
    study, created = search.open_study(ref, spec, create=True)
    uri = tracking.tracking_uri(root)
    deadline = time.monotonic() + (0 if created else PARENT_WAIT_SECONDS)
    while (parent := study.user_attrs.get(PARENT_RUN_ATTR)) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    if parent is None or not tracking.reopen_run(uri, parent, finished_too=True):
        space = {
            f"search.space.{dotted_key(key)}": json.dumps(param.model_dump(exclude_defaults=True))
            for key, param in settings.space.items()
        }
        parent = start_tracked_run(prepared, root, flow_run_id, run_name=f"{spec.name}-search", extra_params=space)
        study.set_user_attr(PARENT_RUN_ATTR, parent)
    tracking.set_tags(uri, parent, {
        "lstmflow.search.study": ref.name,
        "lstmflow.search.storage": re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", ref.storage),  # no password in MLflow
        "lstmflow.search.trials": str(search.budget(settings)),
        "lstmflow.search.sampler": settings.sampler,
        "lstmflow.search.pruner": settings.pruner,
        "lstmflow.search.metric": settings.metric,
        "lstmflow.search.direction": settings.resolved_direction(),
    })  # fmt: skip
    trials_dir = root / "runs" / spec.name / ref.name
    return {"storage": ref.storage, "study": ref.name, "parent_run_id": parent, "trials_dir": str(trials_dir)}


def drive_trials(
    prepared: Prepared,
    root: Path,
    study_ref: dict[str, str],
    start: Callable[[int], Any],
    as_completed: Callable[[list[Any]], Iterable[Any]],
) -> list[dict[str, Any]]:
    """Keep ``search.parallel`` trials running until the study's budget is spent or ``search.timeout`` has passed;
    returns the outcomes of the trials this call ran.

    ``start(number)`` runs :func:`run_trial` in the background and returns its future, and ``as_completed`` yields
    such futures as they end: ``concurrent.futures`` or Prefect's, so that the plain and the Prefect search share
    this loop. Before each new trial, the trials of processes that died (here or elsewhere) are queued again. When
    this loop is stopped (Ctrl-C), its running trials are flagged first: they too are queued again for the next call
    instead of counting as failed.
    """
    from lstmflow.training import search

    spec = prepared.pipeline
    settings = search.search_settings(spec)
    study, _ = search.open_study(search.StudyRef(study_ref["storage"], study_ref["study"]), spec)
    uri = tracking.tracking_uri(root)
    deadline = time.monotonic() + settings.timeout if settings.timeout else math.inf
    running: dict[Any, int] = {}
    outcomes: list[dict[str, Any]] = []
    try:
        while True:
            while len(running) < settings.parallel and time.monotonic() < deadline:
                _requeue_interrupted(study, uri)
                if (number := search.ask(study, spec)) is None:
                    break
                running[start(number)] = number
            if not running:
                return outcomes
            done = next(iter(as_completed(list(running))))
            del running[done]
            outcomes.append(done.result())
    except BaseException:
        search.mark_interrupted(study, list(running.values()))
        raise


def _requeue_interrupted(study: Any, uri: str) -> None:
    """Queue again the trials whose process died, and end their MLflow runs as killed (nobody else will)."""
    from lstmflow.training import search

    for trial in search.requeue_interrupted(study):
        if run_id := trial.user_attrs.get(TRIAL_RUN_ATTR):
            tracking.set_tags(uri, run_id, {"lstmflow.search.state": "interrupted"})
            tracking.end_run(uri, run_id, "KILLED")


def run_trial(
    prepared: Prepared,
    root: Path,
    study_ref: dict[str, str],
    number: int,
    flow_run_id: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train trial ``number`` in a child process, as a child run of the search's MLflow run, and record its outcome.

    The outcome is ``complete`` (with the metric at the best epoch), ``pruned`` or ``failed``; a failing trial is
    recorded, not raised, so that the study goes on. A trial whose training lost the study's database for longer than
    the storage waits is ``interrupted``: queued again, not counted, as the database was at fault and not its values.
    Its MLflow run gets the trial's full params, its per-epoch curve, its state as the tag ``lstmflow.search.state``
    and, when complete, its weights.
    """
    from lstmflow.training import search
    from lstmflow.training.study_storage import StudyStorageError

    ref = search.StudyRef(study_ref["storage"], study_ref["study"])
    study, _ = search.open_study(ref, prepared.pipeline)
    trial = search.running_trial(study, number)
    params = dict(trial.params)
    uri = tracking.tracking_uri(root)
    run_id: str | None = None
    value: float | None = None
    with search.heartbeat(trial):
        try:
            spec, run_id = _start_trial_run(prepared, root, study_ref, number, params, flow_run_id)
            trial.set_user_attr(TRIAL_RUN_ATTR, run_id)
            value, attrs = _train_trial(prepared, spec, uri, run_id, study_ref, number, progress)
            state = "complete"
        except search.TrialPruned as pruned:
            state, attrs = "pruned", {"lstmflow.epochs_run": pruned.epoch}
        except StudyStorageError as exc:
            state, attrs = "interrupted", {"lstmflow.error": f"{type(exc).__name__}: {exc}"[:2000]}
        except Exception as exc:  # noqa: BLE001 - a failing trial is recorded as failed; the study goes on
            state, attrs = "failed", {"lstmflow.error": f"{type(exc).__name__}: {exc}"[:2000]}
        except BaseException:
            search.record(study, number, "interrupted")
            if run_id is not None:
                tracking.end_run(uri, run_id, "KILLED")
            raise
    state = search.record(study, number, state, value, attrs)
    outcome: dict[str, Any] = {"number": number, "state": state, "value": value, "params": params, "run_id": run_id}
    outcome.update({key.removeprefix("lstmflow."): attr for key, attr in attrs.items()})
    if run_id is not None:
        tags = {"lstmflow.search.state": state}
        if "error" in outcome:
            tags["lstmflow.search.error"] = outcome["error"]
        tracking.set_tags(uri, run_id, tags)
        tracking.end_run(uri, run_id, {"complete": "FINISHED", "failed": "FAILED"}.get(state, "KILLED"))
    return outcome


def _start_trial_run(
    prepared: Prepared,
    root: Path,
    study_ref: dict[str, str],
    number: int,
    params: dict[str, Any],
    flow_run_id: str | None,
) -> tuple[PipelineSpec, str]:
    """The trial's spec (the pipeline's with the trial's values) and its MLflow run, a child of the search's."""
    from lstmflow.training import search

    base = prepared.pipeline
    spec = search.trial_spec(base, params)
    tags = {
        "mlflow.parentRunId": study_ref["parent_run_id"],
        "lstmflow.search.study": study_ref["study"],
        "lstmflow.search.trial": str(number),
    }
    trial_prepared = replace(prepared, spec=spec.model_dump(mode="json"))
    run_name = f"{base.name}-trial-{number}"
    return spec, start_tracked_run(trial_prepared, root, flow_run_id, run_name=run_name, extra_tags=tags)


def _train_trial(
    prepared: Prepared,
    spec: PipelineSpec,
    uri: str,
    run_id: str,
    study_ref: dict[str, str],
    number: int,
    progress: bool,
) -> tuple[float, dict[str, Any]]:
    """Train a trial in a child process that reports to the pruner; returns its value and the attributes to record,
    which also go to its MLflow run with its weights."""
    from lstmflow.training import search
    from lstmflow.training.launch import train_in_child

    base = prepared.pipeline
    ref = search.StudyRef(study_ref["storage"], study_ref["study"])
    run_dir = Path(study_ref["trials_dir"]) / f"trial-{number:04d}"
    with tracking.relayed_metrics(uri, run_id, run_dir / METRICS_SPOOL) as spool:
        logger = search.PruningLogger(spool, ref, base, number)
        result = train_in_child(spec, Path(prepared.features_dir), run_dir, logger, progress=progress)
    value = search.trial_value(result.history, result.best_epoch, search.search_settings(base).metric)
    attrs = {
        "lstmflow.best_epoch": result.best_epoch,
        "lstmflow.epochs_run": result.epochs_run,
        "lstmflow.stopped_early": int(result.stopped_early),
        "lstmflow.train_seconds": result.seconds,
    }
    tracking.log_summary_metrics(uri, run_id, {key.removeprefix("lstmflow."): float(v) for key, v in attrs.items()})
    tracking.log_artifacts(uri, run_id, [Path(result.model_path)], TRIAL_MODEL_ARTIFACT)
    return value, attrs


def close_search(
    prepared: Prepared, root: Path, study_ref: dict[str, str], outcomes: list[dict[str, Any]], need_best: bool = True
) -> dict[str, Any]:
    """Plot the study and record its best trial on the parent run; hand on the best trial as evaluate and register
    take it (``prepared`` with the trial's spec, ``trained`` with its run) and a summary.

    Without a completed trial that is a TrainingError, or, when ``need_best`` is false (a worker that only runs
    trials), ``prepared`` and ``trained`` are None.

    The best trial's run is reused, not trained again: it trained fully (a pruned trial is never best) on the same
    data, with the same code and seed, so a retraining would cost a whole run for the same weights.
    """
    from lstmflow.training import search

    spec = prepared.pipeline
    settings = search.search_settings(spec)
    study, _ = search.open_study(search.StudyRef(study_ref["storage"], study_ref["study"]), spec)
    uri = tracking.tracking_uri(root)
    parent = study_ref["parent_run_id"]
    found = search.counts(study)
    trials_dir = Path(study_ref["trials_dir"])
    tracking.log_artifacts(uri, parent, search.plot_study(study, settings.metric, trials_dir / "plots"), "plots")
    ended = ("complete", "pruned", "failed", "interrupted")
    tracking.log_summary_metrics(uri, parent, {f"trials_{state}": float(found[state]) for state in ended})
    summary = {
        "study": study_ref["study"],
        "parent_run_id": parent,
        "metric": settings.metric,
        "direction": settings.resolved_direction(),
        "counts": dict(found),
        "ran": dict(Counter(outcome["state"] for outcome in outcomes)),
        "best": None,
        "trials": _ranked_rows(study),
    }
    best = search.best_trial(study)
    if best is None and not need_best:
        tracking.end_run(uri, parent)
        return {"prepared": None, "trained": None, "summary": summary}
    if best is None:
        tracking.end_run(uri, parent, "FAILED")
        states = ", ".join(f"{count} {state}" for state, count in sorted(found.items()))
        raise TrainingError(
            f"pipelines.{spec.name}.search: no trial of study {study_ref['study']} completed ({states or 'none ran'}); "
            f"the failed trials' errors are in their MLflow runs (experiment {spec.name!r}, tag lstmflow.search.error)"
        )
    _record_best(uri, parent, settings.metric, best)
    tracking.end_run(uri, parent)
    trained = _best_trained(uri, trials_dir, best)
    summary["best"] = {"number": best.number, "value": best.value, "params": best.params, "run_id": trained["run_id"]}
    best_prepared = replace(prepared, spec=search.trial_spec(spec, best.params).model_dump(mode="json"))
    return {"prepared": asdict(best_prepared), "trained": trained, "summary": summary}


def _ranked_rows(study: Any) -> list[dict[str, Any]]:
    """The study's trials, best first, as the summary lists them."""
    from lstmflow.training import search

    return [
        {
            "number": trial.number,
            "state": search.trial_state(trial),
            "value": trial.value,
            "epochs_run": trial.user_attrs.get("lstmflow.epochs_run"),
            "params": trial.params,
        }
        for trial in search.ranked_trials(study)
    ]


def _record_best(uri: str, parent: str, metric: str, best: Any) -> None:
    """The best trial's value, number, run and values on the search's parent run."""
    tracking.log_summary_metrics(uri, parent, {f"best_{metric}": float(best.value)})
    tracking.set_tags(uri, parent, {
        "lstmflow.search.best_trial": str(best.number),
        "lstmflow.search.best_run_id": best.user_attrs[TRIAL_RUN_ATTR],
        **{f"lstmflow.search.best.{dotted_key(key)}": json.dumps(value) for key, value in best.params.items()},
    })  # fmt: skip


def _best_trained(uri: str, trials_dir: Path, best: Any) -> dict[str, Any]:
    """The best trial as the train step hands a run on: its run, folder and weights (fetched from MLflow when
    another machine trained it), and its summary."""
    run_id = best.user_attrs[TRIAL_RUN_ATTR]
    run_dir = trials_dir / f"trial-{best.number:04d}"
    model_path = run_dir / "model.pt"
    if not model_path.exists():  # trained by a worker on another machine
        model_path = tracking.download_artifact(uri, run_id, f"{TRIAL_MODEL_ARTIFACT}/model.pt", run_dir)
    summary_keys = ("best_epoch", "epochs_run", "stopped_early", "train_seconds")
    return {
        "run_id": run_id,
        "run_dir": str(run_dir),
        "model_path": str(model_path),
        **{key: best.user_attrs[f"lstmflow.{key}"] for key in summary_keys},
    }


def run_search(
    prepared: Prepared, root: Path, flow_run_id: str | None = None, progress: bool = True, need_best: bool = True
) -> dict[str, Any]:
    """The whole search without Prefect (a worker process, tests, benchmarks): trials on ``search.parallel`` threads,
    each training in its own child process; returns what :func:`close_search` returns."""
    from lstmflow.training import search

    study_ref = open_search(prepared, root, flow_run_id)
    parallel = search.search_settings(prepared.pipeline).parallel
    with concurrent.futures.ThreadPoolExecutor(parallel, thread_name_prefix="trial") as pool:
        outcomes = drive_trials(
            prepared,
            root,
            study_ref,
            lambda number: pool.submit(
                run_trial, prepared, root, study_ref, number, flow_run_id, progress and parallel == 1
            ),
            concurrent.futures.as_completed,
        )
    return close_search(prepared, root, study_ref, outcomes, need_best)


def _storage_location(spec: PipelineSpec, root: Path) -> str:
    """Where the study lives; ``search.storage: team`` is the team stack's Optuna database (its URL, password
    included, comes from the checkout's connection file, not from pipelines.yaml)."""
    from lstmflow.training import search

    if search.search_settings(spec).storage == team.TEAM_STORAGE:
        return team.optuna_url(root, f"pipelines.{spec.name}.search.storage")
    return search.storage_location(spec, root)
