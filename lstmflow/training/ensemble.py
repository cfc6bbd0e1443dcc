"""``train.ensemble``: N networks of one spec trained one after another, registered and served as one model.

Member ``m`` (1 to N) is the pipeline's model trained by the ordinary loop (:func:`~lstmflow.training.fit.fit_member`)
with seed ``train.seed + m - 1`` and an equal share of ``train.budget``, in ``run_dir/members/<m>``: its own
checkpoints, early stopping and kept epoch. A member whose ``fit_result.json`` is there is done, so a resumed run
trains only the members after it (and resumes the one that was cut). Each member's epochs go to the logger one after
another (member 2's first epoch is logged at the step after member 1's last), and its kept scores as
``member_<metric>`` at step ``m``. Then the members make an :class:`~lstmflow.models.lstm.EnsembleNet`, scored on the
validation part: its scores are the run's (``best_val_loss``, ``best_score``; logged as ``ensemble_<metric>``), and
its one state dict is the run's ``model.pt``, which everything downstream rebuilds from the spec.

With several training processes (DDP) every member is trained by all of them, as one model would be; rank 0 decides
which members are done and scores the ensemble, and sends what it found to the others.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from lstmflow.config import PipelineSpec
from lstmflow.models.lstm import EnsembleNet, build_model
from lstmflow.training.budget import progress_log
from lstmflow.training.checkpoint import atomic_torch_save, cpu_copy
from lstmflow.training.distributed import World
from lstmflow.training.fit import MODEL_FILE, RESULT_FILE, FitResult, fit_member
from lstmflow.training.loggers import MetricLogger
from lstmflow.training.objectives import make_objective
from lstmflow.training.step import Precision

log = logging.getLogger(__name__)

MEMBERS_DIR = "members"
#: What stopped the ensemble, from what stopped its members: the first of these that stopped any of them.
_STOP_ORDER = ("budget", "early_stopping", "epochs")


class OffsetLogger:
    """A member's epochs logged after the members before it: step ``offset + epoch``."""

    def __init__(self, inner: MetricLogger, offset: int) -> None:
        self.inner, self.offset = inner, offset

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.inner.log_metrics(metrics, step + self.offset)


def member_spec(spec: PipelineSpec, number: int) -> PipelineSpec:
    """Member ``number`` (0-based) as a pipeline of one model: its seed, its share of the budget."""
    train, count = spec.train, spec.train.ensemble
    budget = train.budget.model_copy(
        update={
            "seconds": None if train.budget.seconds is None else train.budget.seconds / count,
            "steps": None if train.budget.steps is None else max(1, train.budget.steps // count),
        }
    )
    member_train = train.model_copy(update={"seed": train.seed + number, "budget": budget, "ensemble": 1})
    return spec.model_copy(update={"train": member_train})


def fit_ensemble(
    spec: PipelineSpec, features_dir: Path, run_dir: Path, logger: MetricLogger, progress: bool, world: World
) -> FitResult:
    """Train the members not trained yet, score their ensemble on the validation part, and write its weights and
    result to ``run_dir`` as :func:`~lstmflow.training.fit.fit` does for one model."""
    started = time.perf_counter()
    count = spec.train.ensemble
    results: list[FitResult] = []
    skipped: list[bool] = []
    for number in range(count):
        member_dir = run_dir / MEMBERS_DIR / str(number + 1)
        done = world.broadcast(_finished(member_dir) if world.is_main else None)
        skipped.append(done is not None)
        if done is None:
            if world.is_main:
                progress_log.info(
                    "%s: training member %d/%d (seed %d)", spec.name, number + 1, count, spec.train.seed + number
                )
            offset = sum(result.epochs_run for result in results)
            done = fit_member(
                member_spec(spec, number), features_dir, member_dir, OffsetLogger(logger, offset), progress, world,
                member=f"member {number + 1}/{count}",
            )  # fmt: skip
        else:
            log.info("%s member %d/%d: trained already (%s), kept", spec.name, number + 1, count, member_dir)
        results.append(done)
    scores = _score(spec, features_dir, run_dir, results, world)
    result = _result(spec, run_dir, results, skipped, scores, started)
    if world.is_main:
        _log_scores(logger, results, scores)
        progress_log.info(
            "%s: the ensemble of %d members scores %s %.4f on the validation part (members: %s)", spec.name, count,
            result.select, result.best_score, ", ".join(f"{member['best_score']:.4f}" for member in result.members),
        )  # fmt: skip
    if world.local_rank == 0:
        result.write(run_dir / RESULT_FILE)
    return result


def _finished(member_dir: Path) -> FitResult | None:
    """A member's result when it finished training (its result is written after its weights), else None."""
    path = member_dir / RESULT_FILE
    return FitResult.read(path) if path.exists() and (member_dir / MODEL_FILE).exists() else None


def _score(
    spec: PipelineSpec, features_dir: Path, run_dir: Path, results: list[FitResult], world: World
) -> dict[str, float]:
    """The ensemble's validation scores (``val_loss`` and the task's ``val_*``), by rank 0; its weights to
    ``run_dir/model.pt`` by each machine's first process, the one that wrote the members' weights there."""
    metrics = None
    if world.local_rank == 0:
        objective = make_objective(spec, features_dir)
        model = build_model(
            spec.model, objective.n_features, objective.n_outputs, where=f"pipelines.{spec.name}.model",
            needs=objective.needs, per_step=objective.per_step, ensemble=spec.train.ensemble,
        ).to(world.device)  # fmt: skip
        assert isinstance(model, EnsembleNet)  # train.ensemble > 1
        for number, member in enumerate(model.networks()):
            path = run_dir / MEMBERS_DIR / str(number + 1) / MODEL_FILE
            member.load_state_dict(torch.load(path, map_location=world.device, weights_only=True))
        atomic_torch_save(cpu_copy(model.state_dict()), run_dir / MODEL_FILE)
        if world.is_main:
            with Precision(spec.train.precision, world.device).autocast():
                metrics = objective.evaluate(model.eval(), "val", results[-1].batch_size, world.device)
    metrics = world.broadcast(metrics)
    return {"val_loss": metrics.pop("loss"), **{f"val_{name}": value for name, value in metrics.items()}}


def _kept_scores(result: FitResult, names: list[str]) -> dict[str, float]:
    """A member's scores at its kept epoch."""
    row = result.history[result.best_epoch - 1]
    return {name: float(row[name]) for name in names if name in row}


def _log_scores(logger: MetricLogger, results: list[FitResult], scores: dict[str, float]) -> None:
    for number, result in enumerate(results, start=1):
        logger.log_metrics({f"member_{k}": v for k, v in _kept_scores(result, list(scores)).items()}, step=number)
    logger.log_metrics({f"ensemble_{name}": value for name, value in scores.items()}, step=0)


def _result(
    spec: PipelineSpec,
    run_dir: Path,
    results: list[FitResult],
    skipped: list[bool],
    scores: dict[str, float],
    started: float,
) -> FitResult:
    """The ensemble's :class:`FitResult`: its scores as the kept ones, the members' epochs one after another in
    ``history`` (``epoch`` counted across members, ``member`` numbered from 1), totals of steps and time."""
    last = results[-1]
    history: list[dict[str, float]] = []
    offsets: list[int] = []
    for number, result in enumerate(results, start=1):
        offset = len(history)
        offsets.append(offset)
        history += [{**row, "epoch": offset + row["epoch"], "member": number} for row in result.history]
    resumed = _resumed_from(results, skipped, offsets)
    stopped = {result.stopped_by for result in results}
    stopped_by = next(reason for reason in _STOP_ORDER if reason in stopped)
    return FitResult(
        best_epoch=offsets[-1] + last.best_epoch,
        epochs_run=len(history),
        best_val_loss=scores["val_loss"],
        stopped_early=stopped_by == "early_stopping",
        resumed_from_epoch=resumed[0],
        resumed_from_batch=resumed[1],
        history=history,
        model_path=str(run_dir / MODEL_FILE),
        checkpoint_path=last.checkpoint_path,
        seconds=time.perf_counter() - started,
        device=last.device,
        threads=last.threads,
        workers=last.workers,
        precision=last.precision,
        deterministic=last.deterministic,
        lstm_kernels=sorted({kernel for result in results for kernel in result.lstm_kernels}),
        stopped_by=stopped_by,
        batch_size=last.batch_size,
        steps=sum(result.steps for result in results),
        train_seconds=sum(result.train_seconds for result in results),
        select=last.select,
        best_score=scores[last.select],
        kept=last.kept,
        lr_schedule=last.lr_schedule,
        class_weights=last.class_weights,
        members=[_member_record(spec, number, result) for number, result in enumerate(results)],
    )


def _resumed_from(results: list[FitResult], skipped: list[bool], offsets: list[int]) -> tuple[int | None, int | None]:
    """The epochs (across members) and batches this call resumed from: None, None for a fresh start."""
    for result, was_skipped, offset in zip(results, skipped, offsets, strict=True):
        if result.resumed_from_epoch is not None:
            return offset + result.resumed_from_epoch, result.resumed_from_batch
        if not was_skipped:
            return (offset, 0) if offset else (None, None)
    return offsets[-1] + results[-1].epochs_run, 0  # every member was done: only the ensemble was scored again


def _member_record(spec: PipelineSpec, number: int, result: FitResult) -> dict[str, Any]:
    return {
        "member": number + 1,
        "seed": spec.train.seed + number,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "best_val_loss": result.best_val_loss,
        "best_score": result.best_score,
        "stopped_by": result.stopped_by,
        "steps": result.steps,
        "train_seconds": result.train_seconds,
    }
