"""The learning-rate schedule as the epoch loop drives it: one call after every optimizer step, one after every
epoch's validation, and a state dict for the checkpoint.

Every schedule is PyTorch's own (``torch.optim.lr_scheduler``). ``auto`` with early stopping is a LinearLR warm-up
stepped per batch followed by ReduceLROnPlateau on ``train.select`` stepped per epoch: SequentialLR cannot chain
ReduceLROnPlateau (its ``step`` needs the metric), so :class:`Schedule` holds the two side by side. LinearLR leaves
the lr alone once its ``total_iters`` are done, and it is not stepped after them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import lr_scheduler

from lstmflow.config import PipelineSpec
from lstmflow.training.plan import WARMUP_START, TrainingPlan


class Schedule:
    """A per-step scheduler (stepped for the first ``step_until`` steps, or always when None) and a per-epoch one
    (given the epoch's ``train.select`` value when ``on_metric``); either may be None."""

    def __init__(
        self, per_step: Any = None, per_epoch: Any = None, on_metric: bool = False, step_until: int | None = None
    ) -> None:
        self.per_step, self.per_epoch, self.on_metric, self.step_until = per_step, per_epoch, on_metric, step_until

    def after_step(self, step: int) -> None:
        """After optimizer step number ``step`` (1-based, counted over the whole run)."""
        if self.per_step is not None and (self.step_until is None or step <= self.step_until):
            self.per_step.step()

    def after_epoch(self, selected: float) -> None:
        if self.per_epoch is None:
            return
        if self.on_metric:
            self.per_epoch.step(selected)
        else:
            self.per_epoch.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": None if self.per_step is None else self.per_step.state_dict(),
            "epoch": None if self.per_epoch is None else self.per_epoch.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for scheduler, part in ((self.per_step, state["step"]), (self.per_epoch, state["epoch"])):
            if scheduler is not None:
                scheduler.load_state_dict(part)


def make_schedule(spec: PipelineSpec, optimizer: torch.optim.Optimizer, plan: TrainingPlan) -> Schedule:
    """``train.lr_schedule`` as ``plan`` resolved it: ``auto-plateau``, ``auto-cosine`` or a schedule by name."""
    schedule, name = spec.train.lr_schedule, plan.lr_schedule
    if name == "auto-plateau":
        return Schedule(_warmup(optimizer, plan), _plateau(spec, optimizer, plan), True, plan.warmup_steps)
    if name == "auto-cosine":
        annealing = lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(plan.max_steps - plan.warmup_steps, 1), eta_min=schedule.min_lr
        )
        warmup = _warmup(optimizer, plan)
        if warmup is None:
            return Schedule(per_step=annealing)
        chained = lr_scheduler.SequentialLR(optimizer, [warmup, annealing], milestones=[plan.warmup_steps])
        return Schedule(per_step=chained)
    if name == "cosine":
        return Schedule(per_epoch=lr_scheduler.CosineAnnealingLR(optimizer, plan.epochs, schedule.min_lr))
    if name == "step":
        return Schedule(per_epoch=lr_scheduler.StepLR(optimizer, step_size=schedule.step_size, gamma=schedule.gamma))
    if name == "plateau":
        return Schedule(per_epoch=_plateau(spec, optimizer, plan, schedule.patience), on_metric=True)
    if name == "onecycle":
        total = plan.epochs * plan.steps_per_epoch
        return Schedule(per_step=lr_scheduler.OneCycleLR(optimizer, max_lr=spec.train.optimizer.lr, total_steps=total))
    return Schedule()


def _warmup(optimizer: torch.optim.Optimizer, plan: TrainingPlan) -> lr_scheduler.LinearLR | None:
    if plan.warmup_steps < 1:
        return None
    return lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_START, total_iters=plan.warmup_steps)


def _plateau(
    spec: PipelineSpec, optimizer: torch.optim.Optimizer, plan: TrainingPlan, patience: int | None = None
) -> lr_scheduler.ReduceLROnPlateau:
    """Decay by ``gamma`` when ``train.select`` has not gained more than ``min_delta`` (what early stopping counts
    as a gain) for more than ``patience`` epochs (ReduceLROnPlateau's rule). By default after half of the run's
    early-stopping patience, so the lr anneals before the run stops."""
    if patience is None:
        patience = max(1, (plan.patience or 2) // 2) - 1
    schedule = spec.train.lr_schedule
    return lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=plan.selection.mode, factor=schedule.gamma, patience=patience, min_lr=schedule.min_lr,
        threshold=spec.train.early_stopping.min_delta, threshold_mode="abs",
    )  # fmt: skip
