"""``train.refit`` (off by default): once validation has chosen the epoch, the model trained again on training and
validation data.

Small data gains most from every labelled sample, and the classical baselines beside each run are refitted on both
parts once validation has chosen their settings; a model that never sees the validation part gives them that
advantage. The first run (:func:`~lstmflow.training.fit.fit_member`) chooses the epoch as always; the refit starts
from the same seed, trains on ``train+val`` for that many epochs with the first run's batch size, no early stopping
and the ``auto`` schedule's warm-up and cosine to the end, and keeps its last epoch. Its weights become the run's
``model.pt``; the run's validation scores, history and kept epoch stay the first run's (the refit has seen the
validation part, so its scores there mean nothing). Its epochs are logged after the first run's, as ``refit_*``.

The refit lives in ``run_dir/refit`` with its own checkpoints, so a run cut during the refit resumes there: the first
run's checkpoint already holds its end, which gives the same refit spec again.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

from lstmflow.config import PipelineSpec
from lstmflow.config.tasks import REFIT_TASKS
from lstmflow.data.parts import TRAIN_AND_VAL
from lstmflow.training.budget import minutes, progress_log
from lstmflow.training.checkpoint import CHECKPOINT_DIR
from lstmflow.training.distributed import World
from lstmflow.training.fit import MODEL_FILE, RESULT_FILE, EpochLoop, FitResult, fit_member, run_loop
from lstmflow.training.loggers import MetricLogger

log = logging.getLogger(__name__)

REFIT_DIR = "refit"
#: The refit's per-epoch metrics that mean something (validation ones do not: it trains on that part).
LOGGED = ("train_loss", "penalty", "lr", "epoch_seconds")


class RefitLogger:
    """The refit's epochs after the first run's: ``refit_train_loss`` and co. at step ``first epochs + epoch``."""

    def __init__(self, inner: MetricLogger, offset: int) -> None:
        self.inner, self.offset = inner, offset

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        kept = {f"refit_{name}": value for name, value in metrics.items() if name in LOGGED}
        self.inner.log_metrics(kept, step + self.offset)


def fit_and_refit(
    spec: PipelineSpec, features_dir: Path, run_dir: Path, logger: MetricLogger, progress: bool, world: World
) -> FitResult:
    """:func:`~lstmflow.training.fit.fit_member`, then the refit when ``train.refit`` asks for one and it fits."""
    first = fit_member(spec, features_dir, run_dir, logger, progress, world)
    if not world.broadcast(wanted(spec, first) if world.is_main else None):
        return first
    refit = refit_spec(spec, first)
    loop = EpochLoop.build(refit, features_dir, run_dir / REFIT_DIR / CHECKPOINT_DIR, world, part=TRAIN_AND_VAL)
    reason = world.broadcast(_will_not_fit(spec, first, loop) if world.is_main else None)
    if reason is not None:
        log.info("%s: no refit on training and validation data: %s", spec.name, reason)
        return first
    if world.is_main:
        progress_log.info(
            "%s: refitting on training and validation data (%d samples) for the %d epochs validation chose",
            spec.name, loop.objective.samples(TRAIN_AND_VAL), first.best_epoch,
        )  # fmt: skip
    second = run_loop(loop, run_dir / REFIT_DIR, RefitLogger(logger, first.epochs_run), progress)
    if second.stopped_by == "budget":
        log.info("%s: the budget cut the refit short; keeping the first run's model", spec.name)
        return first
    result = replace(
        first,
        seconds=first.seconds + second.seconds,
        steps=first.steps + second.steps,
        train_seconds=first.train_seconds + second.train_seconds,
        refit={"epochs": second.epochs_run, "steps": second.steps, "samples": loop.objective.samples(TRAIN_AND_VAL)},
    )
    if world.local_rank == 0:
        shutil.copyfile(second.model_path, run_dir / MODEL_FILE)
        result.write(run_dir / RESULT_FILE)
    return result


def wanted(spec: PipelineSpec, first: FitResult) -> bool:
    """Whether ``train.refit`` asks for a refit after ``first``: ``true`` always, ``auto`` where validation chose an
    epoch that the budget did not end (see the key's description)."""
    refit = spec.train.refit
    if refit != "auto":
        return bool(refit)
    train = spec.train
    suits = spec.task in REFIT_TASKS and train.ensemble == 1 and train.lr_schedule.name != "plateau"
    return suits and first.kept == "best" and first.stopped_by != "budget"


def refit_spec(spec: PipelineSpec, first: FitResult) -> PipelineSpec:
    """The spec the refit trains by: the first run's epochs and batch size, no early stopping, and what is left of
    the budget."""
    train = spec.train
    seconds, steps = train.budget.seconds, train.budget.steps
    budget = train.budget.model_copy(
        update={
            "seconds": None if seconds is None else max(seconds - first.train_seconds, 1.0),
            "steps": None if steps is None else max(steps - first.steps, 1),
        }
    )
    update = {
        "epochs": first.best_epoch,
        "batch_size": first.batch_size,
        "early_stopping": train.early_stopping.model_copy(update={"patience": None}),
        "budget": budget,
        "refit": False,
    }
    return spec.model_copy(update={"train": train.model_copy(update=update)})


def _will_not_fit(spec: PipelineSpec, first: FitResult, loop: EpochLoop) -> str | None:
    """Why ``auto`` skips a refit that the rest of the budget could not hold (estimated from the first run's time
    per step), or None. A given ``true`` refits anyway: its budget still cuts it, and then the first model stays."""
    if spec.train.refit is True:
        return None
    budget = loop.spec.train.budget
    needed = loop.plan.max_steps
    if budget.steps is not None and needed > budget.steps:
        return f"{needed} steps needed, {budget.steps} left of train.budget.steps"
    estimate = first.train_seconds / max(first.steps, 1) * needed
    if budget.seconds is not None and estimate > budget.seconds:
        return f"about {minutes(estimate)} needed, {minutes(budget.seconds)} left of train.budget.seconds"
    return None
