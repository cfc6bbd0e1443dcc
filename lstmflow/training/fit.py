"""Fitting a model to prepared features: the epoch loop, its end-of-epoch decisions, data parallelism.

The loop is the same for every task: an :class:`~lstmflow.training.objectives.Objective` supplies the batches, the loss
and the task's extra metrics (``val_accuracy`` and ``train_padding_fraction`` when classifying). After each epoch the
loop validates, then decides: is this the best epoch so far (its weights are kept), is it time to stop early, and
what the lr schedule does next; then it logs the epoch and writes a checkpoint.

``fit`` is meant to run in the training process(es) that :mod:`lstmflow.training.launch` starts; it sets process-wide
state (torch threads, RNG seeds, the deterministic-algorithms switch) that a caller's process should not inherit.
With several processes (a :class:`~lstmflow.training.distributed.World` larger than one) each trains on its rows of
every batch under DDP; rank 0 alone evaluates, logs and writes checkpoints, and sends what it found to the others, so
that every rank takes the same schedule and early-stopping decisions. What a run leaves lives in ``run_dir``:

- ``checkpoints/``: ``last.pt`` and ``prev.pt``, everything needed to continue (see
  :mod:`lstmflow.training.checkpoint`).
- ``model.pt``: the best epoch's state dict, restored at the end.
- ``fit_result.json``: the :class:`FitResult`, which is also how the launcher's parent reads it.

Calling ``fit`` again on the same ``run_dir`` and spec continues from the last good checkpoint. Within an epoch it
skips exactly the batches already trained (the shuffled order is a function of seed and epoch), so the run ends
with the same metrics and weights as one that was never interrupted: bit for bit on CPU, and on GPU with
``train.deterministic``. Metrics go to the logger before the epoch's checkpoint is written, so an interrupted run
may log the last epoch twice (same step, same values) but never skips one.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from torch import Tensor, nn

from lstmflow.config import GradClipSpec, PipelineSpec
from lstmflow.errors import CheckpointError, ConfigError, TrainingError
from lstmflow.models.lstm import LSTMNet, build_model
from lstmflow.training.checkpoint import (
    CHECKPOINT_DIR,
    LAST,
    TrainingState,
    atomic_torch_save,
    atomic_write_bytes,
    checkpoint_or_error,
    cpu_copy,
    save_checkpoint,
)
from lstmflow.training.distributed import (
    DataParallelNet,
    Shard,
    World,
    device_problems,
    device_type,
    excluded_from_batch_statistics,
)
from lstmflow.training.loggers import MetricLogger
from lstmflow.training.objectives import Objective, make_objective

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
RESULT_FILE = "fit_result.json"


@dataclass
class FitResult:
    """What a fit produced; plain JSON types only, so it crosses process and task boundaries."""

    best_epoch: int  # 1-based, as logged
    epochs_run: int  # in all, counting those before a resume
    best_val_loss: float
    stopped_early: bool
    resumed_from_epoch: int | None  # epochs the resumed checkpoint had completed, None for a fresh start
    resumed_from_batch: int | None  # batches of the next epoch it had trained (0 at an epoch's end)
    history: list[dict[str, float]]  # one dict per epoch: epoch, train_loss, val_loss, penalty, lr, task metrics
    model_path: str  # the best epoch's state dict
    checkpoint_path: str
    seconds: float  # wall time of this call only
    device: str
    threads: int  # torch.get_num_threads() in the process that trained
    workers: int  # training processes in all (DDP's world size)
    precision: str
    deterministic: bool
    #: What ran the LSTM recurrence in this call's training steps (``train.lstm_kernel``, resolved per pass):
    #: "lstmflow" (the compiled CPU kernel), "lstmflow-loop" (its PyTorch fallback), "torch" (nn.LSTM, cuDNN on GPU).
    lstm_kernels: list[str] = field(default_factory=list)

    def write(self, path: Path) -> None:
        atomic_write_bytes(json.dumps(asdict(self), indent=2).encode(), path)

    @classmethod
    def read(cls, path: Path) -> FitResult:
        return cls(**json.loads(path.read_text()))


def train_threads(spec: PipelineSpec) -> int:
    """CPU threads for training. One by default: on a shared machine, PyTorch's small LSTM matmuls run several times
    slower with two busy-waiting OpenMP threads than with one."""
    return spec.train.threads or 1


def fit(
    spec: PipelineSpec,
    features_dir: Path,
    run_dir: Path,
    logger: MetricLogger,
    progress: bool = True,
    world: World | None = None,
) -> FitResult:
    """Train ``spec.model`` on the features in ``features_dir``; resumes from ``run_dir`` when it holds a checkpoint.

    ``world`` is this process's place among several training processes (see
    :func:`lstmflow.training.distributed.join`); None trains alone.
    """
    started = time.perf_counter()
    torch.set_num_threads(train_threads(spec))
    world = world or World(_device(spec))
    set_deterministic(spec.train.deterministic)
    seed_everything(spec.train.seed)
    loop = EpochLoop.build(spec, Path(features_dir), Path(run_dir) / CHECKPOINT_DIR, world)
    resumed_from = loop.resume()
    log.info(
        "training %s on %s with %d thread(s), rank %d of %d", spec.name, world.device, torch.get_num_threads(),
        world.rank, world.size,
    )  # fmt: skip
    with _progress_bar(progress and world.is_main) as bar:
        while loop.state.epoch < spec.train.epochs and not loop.state.stopped_early:
            loop.run_epoch(bar, logger)
    return _finish(loop, Path(run_dir), resumed_from, started)


@dataclass
class EpochLoop:
    """The live objects of one :func:`fit` call, and the steps of its loop: train an epoch, then decide."""

    spec: PipelineSpec
    world: World
    objective: Objective
    model: LSTMNet
    trained: LSTMNet | DataParallelNet  # what the loss calls: the model, or the model under DDP
    optimizer: torch.optim.Optimizer
    scheduler: Any
    precision: Precision
    batches_per_epoch: int
    checkpoint_dir: Path
    state: TrainingState = field(default_factory=TrainingState)

    @classmethod
    def build(cls, spec: PipelineSpec, features_dir: Path, checkpoint_dir: Path, world: World) -> EpochLoop:
        """The objective, model, optimizer, schedule and precision for a fresh start (see :meth:`resume`)."""
        train_spec = spec.train
        objective = make_objective(spec, features_dir)
        model = build_model(
            spec.model,
            objective.n_features,
            objective.n_outputs,
            where=f"pipelines.{spec.name}.model",
            needs=objective.needs,
            per_step=objective.per_step,
            lstm_kernel=train_spec.lstm_kernel,
        ).to(world.device)
        trained = world.parallel(model)
        if world.rank:
            seed_everything(train_spec.seed + world.rank)  # common weights above; each rank's own dropout masks below
        optimizer = make_optimizer(spec, model.parameters())
        batches_per_epoch = objective.batch_count("train", train_spec.batch_size)
        scheduler = make_scheduler(spec, optimizer, batches_per_epoch)
        precision = Precision(train_spec.precision, world.device)
        return cls(
            spec, world, objective, model, trained, optimizer, scheduler, precision, batches_per_epoch, checkpoint_dir
        )

    def resume(self) -> tuple[int | None, int | None]:
        """Continue from the run's checkpoint when it has one; returns the epochs and batches it had trained, or
        (None, None) for a fresh start."""
        world = self.world
        checkpoint = world.broadcast(checkpoint_or_error(self.checkpoint_dir, self.spec) if world.is_main else None)
        if isinstance(checkpoint, CheckpointError):  # raised on every rank, so that they all stop
            raise checkpoint
        if checkpoint is None:
            return None, None
        self.state = TrainingState.resume(
            checkpoint, self.model, self.optimizer, self.scheduler, self.precision.scaler, world
        )
        state = self.state
        where = self.checkpoint_dir
        log.info("resuming %s from epoch %d, batch %d (%s)", self.spec.name, state.epoch, state.batches_done, where)
        return state.epoch, state.batches_done

    def run_epoch(self, bar: Progress, logger: MetricLogger) -> None:
        """Train the next epoch (or the rest of it, after a mid-epoch resume), then take the end-of-epoch decisions."""
        epoch = self.state.epoch + 1
        started = time.perf_counter()
        task = self._train_batches(epoch, bar)
        self._end_epoch(epoch, started, bar, task, logger)

    def _order(self, epoch: int) -> dict[str, Any]:
        """The epoch's shuffled batch order: a function of the seed and the epoch, so that a resume replays it."""
        return {"shuffle": True, "seed": self.spec.train.seed, "epoch": epoch}

    def _train_batches(self, epoch: int, bar: Progress) -> TaskID:
        """The epoch's training steps, with a checkpoint every ``train.checkpoint_every`` batches; returns its bar."""
        train_spec, state, optimizer = self.spec.train, self.state, self.optimizer
        skip = state.batches_done  # trained before this call: non-zero right after a mid-epoch resume
        if not skip:
            state.epoch_lr, state.sums = optimizer.param_groups[0]["lr"], _zero_sums(self.world.device)
        task = bar.add_task(
            f"epoch {epoch}/{train_spec.epochs}", total=self.batches_per_epoch, completed=skip, loss=math.nan, val="",
            lr=state.epoch_lr,
        )  # fmt: skip
        self.model.train()
        batches = self.objective.batches("train", train_spec.batch_size, **self._order(epoch))
        for index, (inputs, target) in enumerate(itertools.islice(batches, skip, None), start=skip):
            if index == skip and skip:
                # Only now that the pass has begun: batches() resets the carried state when it starts.
                self.objective.restore_carried_state({k: v.to(self.world.device) for k, v in state.carried.items()})
            shard = self.world.shard(inputs, target)
            data_loss, penalty = train_step(
                self.objective, self.trained, self.model, shard, optimizer, self.precision, train_spec.grad_clip
            )
            if train_spec.lr_schedule.name == "onecycle":
                self.scheduler.step()
            state.add(shard.rows, data_loss, penalty)
            state.batches_done, state.step = index + 1, state.step + 1
            if not bar.disable:
                bar.update(task, advance=1, loss=state.train_loss(), lr=optimizer.param_groups[0]["lr"])
            every = train_spec.checkpoint_every
            if every and state.step % every == 0 and state.batches_done < self.batches_per_epoch:
                self.save()
        return task

    def _end_epoch(self, epoch: int, started: float, bar: Progress, task: TaskID, logger: MetricLogger) -> None:
        """Validate, decide (best weights, early stopping, the schedule's step), log the epoch and checkpoint it."""
        seen, loss_sum, penalty_sum = self.world.sum(self.state.sums).tolist()
        evaluated = self.world.broadcast(self._evaluate(epoch) if self.world.is_main else None)
        val_metrics, batch_stats = evaluated
        val_loss = val_metrics.pop("loss")
        bar.update(task, val=f"  val_loss {val_loss:.4f}")
        if not (math.isfinite(val_loss) and math.isfinite(loss_sum)):
            # Raised before this epoch is checkpointed: a retry resumes from the last sound state.
            raise TrainingError(
                f"pipelines.{self.spec.name}: training diverged in epoch {epoch} (train loss {loss_sum / seen}, "
                f"val loss {val_loss}); lower train.optimizer.lr or set train.grad_clip"
            )
        self._keep_if_best(epoch, val_loss)
        self._step_schedule(val_loss)
        metrics = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "val_loss": val_loss,
            "penalty": penalty_sum / seen,
            "best_val_loss": self.state.best_val_loss,
            "lr": self.state.epoch_lr,
            "epoch_seconds": time.perf_counter() - started,
            **{f"val_{name}": value for name, value in val_metrics.items()},
            **{f"train_{name}": value for name, value in batch_stats.items()},
        }
        self._record(epoch, metrics, logger)
        self.save()

    def _evaluate(self, epoch: int) -> tuple[dict[str, float], dict[str, float]]:
        """The epoch's validation metrics (``loss`` among them) and facts about its training batches."""
        batch_size = self.spec.train.batch_size
        with self.precision.autocast():
            val_metrics = self.objective.evaluate(self.model, "val", batch_size, self.world.device)
        return val_metrics, self.objective.batch_stats("train", batch_size, **self._order(epoch))

    def _keep_if_best(self, epoch: int, val_loss: float) -> None:
        """Keep the weights of an epoch that beat the best by more than ``min_delta``; stop after ``patience``
        epochs that did not."""
        state, early_stopping = self.state, self.spec.train.early_stopping
        if val_loss < state.best_val_loss - early_stopping.min_delta:
            state.best_val_loss, state.best_epoch, state.epochs_without_improvement = val_loss, epoch, 0
            state.best_model = cpu_copy(self.model.state_dict())
        else:
            state.epochs_without_improvement += 1
        patience = early_stopping.patience
        state.stopped_early = patience is not None and state.epochs_without_improvement >= patience

    def _step_schedule(self, val_loss: float) -> None:
        """The epoch's lr step: ``plateau`` on the validation loss, the per-epoch schedules plainly (``onecycle``
        steps per batch instead)."""
        name = self.spec.train.lr_schedule.name
        if name == "plateau":
            self.scheduler.step(val_loss)
        elif self.scheduler is not None and name != "onecycle":
            self.scheduler.step()

    def _record(self, epoch: int, metrics: dict[str, float], logger: MetricLogger) -> None:
        """Close the epoch in the state, and log its metrics (rank 0 only) and its line."""
        state = self.state
        state.history.append(metrics)
        state.epoch, state.batches_done = epoch, 0
        if self.world.is_main:
            logger.log_metrics({k: float(v) for k, v in metrics.items() if k != "epoch"}, step=epoch)
        log.info(
            "epoch %d/%d train_loss=%.5f val_loss=%.5f lr=%.3g%s",
            epoch, self.spec.train.epochs, metrics["train_loss"], metrics["val_loss"], state.epoch_lr,
            " (stopping early)" if state.stopped_early else "",
        )  # fmt: skip

    def save(self) -> None:
        """Every rank sends its own part to rank 0, which writes the one checkpoint."""
        ranks = self.world.gather(self.state.rank_snapshot(self.objective))
        if self.world.is_main:
            checkpoint = self.state.to_checkpoint(
                self.spec, self.model, self.optimizer, self.scheduler, self.precision.scaler, ranks
            )
            save_checkpoint(checkpoint, self.checkpoint_dir)


def _finish(loop: EpochLoop, run_dir: Path, resumed_from: tuple[int | None, int | None], started: float) -> FitResult:
    """Restore the best epoch's weights, and write them and the result where the launcher reads them."""
    state, spec, world = loop.state, loop.spec, loop.world
    assert state.best_model is not None  # set by epoch 1 at the latest: any finite loss beats inf
    loop.model.load_state_dict(state.best_model)
    model_path = run_dir / MODEL_FILE
    result = FitResult(
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        best_val_loss=state.best_val_loss,
        stopped_early=state.stopped_early,
        resumed_from_epoch=resumed_from[0],
        resumed_from_batch=resumed_from[1],
        history=state.history,
        model_path=str(model_path),
        checkpoint_path=str(loop.checkpoint_dir / LAST),
        seconds=time.perf_counter() - started,
        device=str(world.device),
        threads=torch.get_num_threads(),
        workers=world.size,
        precision=spec.train.precision,
        deterministic=spec.train.deterministic,
        lstm_kernels=loop.model.lstm_kernels_trained(),
    )
    kernels = ", ".join(result.lstm_kernels) or "no training step"
    log.info("%s: the LSTM recurrence ran in %s (train.lstm_kernel: %s)", spec.name, kernels, spec.train.lstm_kernel)
    if world.local_rank == 0:  # one copy on each machine, where that machine's launcher reads it
        atomic_torch_save(state.best_model, model_path)
        result.write(run_dir / RESULT_FILE)
    return result


# ----------------------------------------------------------------------------- pieces of the loop


def seed_everything(seed: int) -> None:
    """Seed every generator a run can touch; batch order is seeded separately, from (seed, epoch)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def set_deterministic(enabled: bool) -> None:
    """``train.deterministic``: deterministic kernels only (an op without one raises) and deterministic cuDNN.

    cuBLAS also needs ``CUBLAS_WORKSPACE_CONFIG`` before CUDA starts, which the launcher puts in the child's
    environment. On CPU the kernels lstmflow uses are deterministic anyway; the switch makes it a guarantee.
    """
    if torch.are_deterministic_algorithms_enabled() != enabled:  # the first call imports torch._inductor (slow)
        torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled


def _device(spec: PipelineSpec) -> torch.device:
    problems = device_problems(spec)
    if problems:
        raise ConfigError(problems)
    return torch.device(device_type(spec))


def train_step(
    objective: Objective,
    trained: LSTMNet | DataParallelNet,
    model: LSTMNet,
    shard: Shard,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    clip: GradClipSpec,
) -> tuple[Tensor, Tensor]:
    """One optimizer step on this rank's shard; returns the shard's mean data loss and the penalty, detached.

    The shard's loss is weighted by its share of the global batch, so that DDP's average of the ranks' gradients
    is the gradient of the global batch's mean loss (the weight is 1 for a single process).
    """
    *inputs, target = _to_training_device((*shard.inputs, shard.target), next(model.parameters()).device)
    borrowed = excluded_from_batch_statistics(model) if shard.rows == 0 else nullcontext()
    with precision.autocast(), borrowed:
        data_loss = objective.loss(trained, tuple(inputs), target)
    penalty = model.regularization_penalty()
    optimizer.zero_grad(set_to_none=True)
    precision.backward(data_loss * shard.weight + penalty)
    precision.step(optimizer, model.parameters(), clip)
    return data_loss.detach(), penalty.detach()


def _to_training_device(tensors: tuple[Tensor, ...], device: torch.device) -> tuple[Tensor, ...]:
    """A batch on the training device; to a GPU through pinned memory, so that the copy does not block the host."""
    if device.type != "cuda":
        return tensors
    return tuple(tensor.pin_memory().to(device, non_blocking=True) for tensor in tensors)


class Precision:
    """``train.precision``: autocast for the forward passes and, for fp16, a gradient scaler, so that small
    gradients do not underflow to zero. With fp32 both are no-ops and the steps are plain ones."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def backward(self, loss: Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, parameters: Iterable[nn.Parameter], clip: GradClipSpec) -> None:
        """Clip the true (unscaled) gradients, then step; under fp16 a step whose gradients overflowed is skipped."""
        self.scaler.unscale_(optimizer)
        clip_gradients(parameters, clip)
        self.scaler.step(optimizer)
        self.scaler.update()


def _zero_sums(device: torch.device) -> Tensor:
    """A rank's running (rows, data loss sum, penalty sum) for an epoch: float64 on the device, read once per epoch."""
    return torch.zeros(3, dtype=torch.float64, device=device)


def make_optimizer(spec: PipelineSpec, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    opt = spec.train.optimizer
    if opt.name == "adam":
        return torch.optim.Adam(parameters, lr=opt.lr, weight_decay=opt.weight_decay)
    if opt.name == "adamw":
        return torch.optim.AdamW(parameters, lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.SGD(parameters, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)


def make_scheduler(spec: PipelineSpec, optimizer: torch.optim.Optimizer, batches_per_epoch: int) -> Any:
    """The schedule; ``onecycle`` steps per batch, ``plateau`` on the validation loss, the rest per epoch."""
    schedule, epochs = spec.train.lr_schedule, spec.train.epochs
    sched = torch.optim.lr_scheduler
    if schedule.name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=schedule.min_lr)
    if schedule.name == "step":
        return sched.StepLR(optimizer, step_size=schedule.step_size, gamma=schedule.gamma)
    if schedule.name == "plateau":
        # Improvement means what it means for early stopping: a drop of more than min_delta.
        return sched.ReduceLROnPlateau(
            optimizer, mode="min", factor=schedule.gamma, patience=schedule.patience, min_lr=schedule.min_lr,
            threshold=spec.train.early_stopping.min_delta, threshold_mode="abs",
        )  # fmt: skip
    if schedule.name == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=spec.train.optimizer.lr, total_steps=epochs * batches_per_epoch)
    return None


def clip_gradients(parameters: Iterable[nn.Parameter], clip: GradClipSpec) -> None:
    """Clip in place: the global norm to ``clip.norm`` or every element to ``±clip.value``."""
    if clip.norm is not None:
        nn.utils.clip_grad_norm_(parameters, clip.norm)
    elif clip.value is not None:
        nn.utils.clip_grad_value_(parameters, clip.value)


def _progress_bar(enabled: bool) -> Progress:
    """One bar per epoch with its batches, running loss and lr; silent when stderr is not a terminal."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}{task.fields[val]}  lr {task.fields[lr]:.2e}"),
        TimeElapsedColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
    )
