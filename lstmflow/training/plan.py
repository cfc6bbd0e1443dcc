"""What a run will do, decided once from the spec and the data's size before the first step.

``train.batch_size: auto``, the steps an epoch takes, the most steps the run may take, the metric that picks the kept
epoch (``train.select``), the patience in epochs that ``early_stopping.patience_steps`` makes of it, whether the
validation part is large enough to decide on at all, and the lr schedule that follows from all of these. The plan is
a function of the spec and the prepared features only, so a resumed run makes the same one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from lstmflow.config import PipelineSpec
from lstmflow.config.train import (
    AUTO_EPOCH_STEPS,
    AUTO_MAX_EPOCHS,
    AUTO_MIN_EPOCHS,
    MIN_VAL_SAMPLES,
    MIN_VAL_SAMPLES_BLENDED,
)
from lstmflow.data.parts import TRAIN_AND_VAL
from lstmflow.errors import ConfigError
from lstmflow.training.objectives import Objective, Part, resolve_batch_size

#: The metrics ``train.select`` may name, with the way each improves.
SELECTABLE: dict[str, Literal["min", "max"]] = {"val_loss": "min", "val_accuracy": "max", "val_macro_f1": "max"}
#: Warm-up of the ``auto`` schedule starts from this fraction of ``optimizer.lr`` (LinearLR's start_factor).
WARMUP_START = 0.1


@dataclass(frozen=True)
class Selection:
    """``train.select`` resolved: the history key it reads and how it improves. Accuracy and macro F1 move in steps
    of one validation sample, so ties are common; a tie with a lower ``val_loss`` counts as a gain."""

    metric: str
    mode: Literal["min", "max"]

    def better(self, value: float, val_loss: float, best: float, best_val_loss: float, min_delta: float) -> bool:
        """Whether an epoch scoring ``value`` (and ``val_loss``) beats the best so far by more than ``min_delta``."""
        if math.isnan(best):  # nothing kept yet
            return True
        gain = value - best if self.mode == "max" else best - value
        tied = value == best and self.metric != "val_loss"
        return gain > min_delta or (tied and val_loss < best_val_loss)


@dataclass(frozen=True)
class TrainingPlan:
    """The run's resolved settings; recorded in ``fit_result.json`` and the run's log."""

    batch_size: int
    epochs: int  # train.epochs, `auto` resolved
    steps_per_epoch: int
    max_steps: int  # epochs × steps per epoch, or budget.steps when fewer
    selection: Selection
    patience: int | None  # epochs without a gain before stopping; None: no early stopping
    min_steps: int  # steps before early stopping may act
    keep_last: bool  # keep the last epoch's weights, not the best one's (validation too small to decide on)
    lr_schedule: str  # the schedule that runs: a spec name, or auto-plateau / auto-cosine
    warmup_steps: int  # auto only
    note: str | None  # why early stopping is off, when the data decided it
    part: Part = "train"  # what it trains on: train+val for a refit, or when validation is too small to decide on


def plan_training(spec: PipelineSpec, objective: Objective, world_size: int = 1, part: Part = "train") -> TrainingPlan:
    """The plan of a run of ``spec`` on ``objective``'s ``part`` with ``world_size`` training processes."""
    train = spec.train
    # A refit trains on its validation part: nothing to decide on, its last epoch is the one kept.
    note = None if part == TRAIN_AND_VAL else _too_small_to_decide(spec, objective)
    if note is not None and spec.weighs_blend_on_val:
        note += "; the validation samples stay apart: they choose the blend's weight (train.blend_baseline)"
    elif note is not None and spec.train.early_stopping.small_val_trains:
        part = TRAIN_AND_VAL
        note += "; the validation samples join the training part, so its validation scores are on seen samples"
    batch_size = resolve_batch_size(spec, objective, world_size)
    steps_per_epoch = max(1, objective.batch_count(part, batch_size))
    epochs = resolve_epochs(train.epochs, steps_per_epoch)
    max_steps = epochs * steps_per_epoch
    if train.budget.steps is not None:
        max_steps = min(max_steps, train.budget.steps)
    patience = train.early_stopping.patience
    if note is not None or patience is None:
        patience = None
    else:  # patience in steps as well as in epochs: a small set takes few steps per epoch
        patience = max(patience, math.ceil(train.early_stopping.patience_steps / steps_per_epoch))
    schedule: str = train.lr_schedule.name
    if schedule == "auto":
        schedule = "auto-plateau" if patience is not None else "auto-cosine"
    warmup = min(round(train.lr_schedule.warmup * max_steps), steps_per_epoch) if schedule.startswith("auto") else 0
    return TrainingPlan(
        batch_size=batch_size,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        max_steps=max_steps,
        selection=resolve_selection(spec),
        patience=patience,
        min_steps=train.early_stopping.min_steps,
        keep_last=note is not None or part == TRAIN_AND_VAL,
        lr_schedule=schedule,
        warmup_steps=warmup,
        note=note,
        part=part,
    )


def resolve_epochs(epochs: int | str, steps_per_epoch: int) -> int:
    """``train.epochs``: ``auto`` is :data:`AUTO_MIN_EPOCHS` epochs, or as many as :data:`AUTO_EPOCH_STEPS` steps
    take (at most :data:`AUTO_MAX_EPOCHS`)."""
    if isinstance(epochs, int):
        return epochs
    return min(max(AUTO_MIN_EPOCHS, math.ceil(AUTO_EPOCH_STEPS / steps_per_epoch)), AUTO_MAX_EPOCHS)


def resolve_selection(spec: PipelineSpec) -> Selection:
    """``train.select``: ``auto`` is accuracy for classify, the loss otherwise; accuracy and F1 need classify."""
    select = spec.train.select
    if select == "auto":
        select = "val_accuracy" if spec.task == "classify" else "val_loss"
    if select != "val_loss" and spec.task != "classify":
        raise ConfigError(
            f"pipelines.{spec.name}.train.select: {select} is for task classify only; task {spec.task!r} selects "
            "by val_loss (or auto)"
        )
    return Selection(select, SELECTABLE[select])


def min_val_samples(spec: PipelineSpec) -> int:
    """``early_stopping.min_val_samples``, its ``auto`` resolved: fewer for a classifier whose validation part
    is held out to choose its blend's weight anyway."""
    value = spec.train.early_stopping.min_val_samples
    if value != "auto":
        return value
    return MIN_VAL_SAMPLES_BLENDED if spec.weighs_blend_on_val else MIN_VAL_SAMPLES


def _too_small_to_decide(spec: PipelineSpec, objective: Objective) -> str | None:
    """Why early stopping is off for this data, or None: a classifier's validation part below
    ``early_stopping.min_val_samples``. Forecasts and language models are scored on every value and token of the
    part, which averages far more than one number per sample; they always decide."""
    threshold = min_val_samples(spec)
    samples = objective.samples("val")
    if spec.task != "classify" or samples >= threshold:
        return None
    return (
        f"pipelines.{spec.name}: {samples} validation samples are fewer than train.early_stopping.min_val_samples "
        f"({threshold}), too few to decide on: early stopping is off, the lr warms up and anneals to the run's end "
        "(train.lr_schedule auto), and the last epoch's weights are kept"
    )
