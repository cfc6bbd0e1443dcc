"""Fitting a model to prepared features: the epoch loop, checkpoints, resume, early stopping, data parallelism.

The loop is the same for every task: an :class:`~lstmflow.training.objectives.Objective` supplies the batches, the loss
and the task's extra metrics (``val_accuracy`` and ``train_padding_fraction`` when classifying).

``fit`` is meant to run in the training process(es) that :mod:`lstmflow.training.launch` starts; it sets process-wide
state (torch threads, RNG seeds, the deterministic-algorithms switch) that a caller's process should not inherit.
With several processes (a :class:`~lstmflow.training.distributed.World` larger than one) each trains on its rows of every
batch under DDP; rank 0 alone evaluates, logs and writes checkpoints, and sends what it found to the others, so that
every rank takes the same schedule and early-stopping decisions. Everything needed to continue lives in ``run_dir``:

- ``checkpoints/last.pt`` and ``checkpoints/prev.pt``: written after every epoch and every
  ``train.checkpoint_every`` batches, atomically (temp file in the same folder, fsync, ``os.replace``). ``prev.pt``
  is the one before, so a corrupt ``last.pt`` costs one checkpoint interval, not the run. Besides the model,
  optimizer, scheduler and gradient scaler, a checkpoint holds each rank's RNG states, running loss sums and the
  objective's carried state (a stateful LSTM's), gathered to rank 0: one file, whatever the number of ranks.
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
import os
import random
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn

from lstmflow.config import GradClipSpec, PipelineSpec
from lstmflow.errors import CheckpointError, ConfigError, TrainingError
from lstmflow.models.lstm import LSTMNet, build_model
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

CHECKPOINT_DIR = "checkpoints"
LAST, PREVIOUS = "last.pt", "prev.pt"
MODEL_FILE = "model.pt"
RESULT_FILE = "fit_result.json"

#: What a checkpoint must hold to resume; anything missing makes it unusable.
CHECKPOINT_KEYS = (
    "epoch", "batches_done", "step", "epoch_lr", "model", "optimizer", "scheduler", "scaler", "ranks",
    "best_val_loss", "best_epoch", "best_model", "epochs_without_improvement", "stopped_early", "history", "spec",
    "spec_hash",
)  # fmt: skip


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
    """CPU threads for training. One by default: on a shared machine PyTorch's small LSTM matmuls
    ran 1.8× to 22× slower with two busy-waiting OpenMP threads than with one (STACK.md)."""
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

    ``world`` is this process's place among several training processes (see :func:`lstmflow.training.distributed.join`);
    None trains alone.
    """
    started = time.perf_counter()
    train_spec = spec.train
    torch.set_num_threads(train_threads(spec))
    world = world or World(_device(spec))
    device = world.device
    set_deterministic(train_spec.deterministic)
    seed_everything(train_spec.seed)

    objective = make_objective(spec, Path(features_dir))
    where = f"pipelines.{spec.name}.model"
    model = build_model(
        spec.model,
        objective.n_features,
        objective.n_outputs,
        where=where,
        needs=objective.needs,
        per_step=objective.per_step,
        lstm_kernel=train_spec.lstm_kernel,
    ).to(device)
    trained = world.parallel(model)  # what the loss calls: the model, or the model under DDP
    if world.rank:
        seed_everything(train_spec.seed + world.rank)  # common weights above; each rank's own dropout masks below
    optimizer = make_optimizer(spec, model.parameters())
    batches_per_epoch = objective.batch_count("train", train_spec.batch_size)
    scheduler = make_scheduler(spec, optimizer, batches_per_epoch)
    precision = Precision(train_spec.precision, device)

    run_dir = Path(run_dir)
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    checkpoint = world.broadcast(_checkpoint_or_error(checkpoint_dir, spec) if world.is_main else None)
    if isinstance(checkpoint, CheckpointError):  # raised on every rank, so that they all stop
        raise checkpoint
    state = TrainingState()
    if checkpoint is not None:
        state = TrainingState.resume(checkpoint, model, optimizer, scheduler, precision.scaler, world)
        log.info("resuming %s from epoch %d, batch %d (%s)", spec.name, state.epoch, state.batches_done, checkpoint_dir)
    resumed_from = (state.epoch, state.batches_done) if checkpoint is not None else (None, None)
    log.info(
        "training %s on %s with %d thread(s), rank %d of %d", spec.name, device, torch.get_num_threads(),
        world.rank, world.size,
    )  # fmt: skip

    def save() -> None:
        """Every rank sends its own part to rank 0, which writes the one checkpoint."""
        ranks = world.gather(state.rank_snapshot(objective))
        if world.is_main:
            save_checkpoint(
                state.to_checkpoint(spec, model, optimizer, scheduler, precision.scaler, ranks), checkpoint_dir
            )

    patience, min_delta = train_spec.early_stopping.patience, train_spec.early_stopping.min_delta
    with _progress_bar(progress and world.is_main) as bar:
        while state.epoch < train_spec.epochs and not state.stopped_early:
            epoch = state.epoch + 1
            epoch_started = time.perf_counter()
            skip = state.batches_done  # trained before this call: non-zero right after a mid-epoch resume
            if not skip:
                state.epoch_lr, state.sums = optimizer.param_groups[0]["lr"], _zero_sums(device)
            task = bar.add_task(
                f"epoch {epoch}/{train_spec.epochs}", total=batches_per_epoch, completed=skip, loss=math.nan, val="",
                lr=state.epoch_lr,
            )  # fmt: skip
            model.train()
            order = {"shuffle": True, "seed": train_spec.seed, "epoch": epoch}
            batches = itertools.islice(objective.batches("train", train_spec.batch_size, **order), skip, None)
            for index, (inputs, target) in enumerate(batches, start=skip):
                if index == skip and skip:
                    # Only now that the pass has begun: batches() resets the carried state when it starts.
                    objective.restore_carried_state({k: v.to(device) for k, v in state.carried.items()})
                shard = world.shard(inputs, target)
                data_loss, penalty = train_step(
                    objective, trained, model, shard, optimizer, precision, train_spec.grad_clip
                )
                if train_spec.lr_schedule.name == "onecycle":
                    scheduler.step()
                state.add(shard.rows, data_loss, penalty)
                state.batches_done, state.step = index + 1, state.step + 1
                if not bar.disable:
                    bar.update(task, advance=1, loss=state.train_loss(), lr=optimizer.param_groups[0]["lr"])
                every = train_spec.checkpoint_every
                if every and state.step % every == 0 and state.batches_done < batches_per_epoch:
                    save()

            seen, loss_sum, penalty_sum = world.sum(state.sums).tolist()
            evaluated = world.broadcast(
                _evaluate(objective, model, spec, precision, device, order) if world.is_main else None
            )
            val_metrics, batch_stats = evaluated
            val_loss = val_metrics.pop("loss")
            bar.update(task, val=f"  val_loss {val_loss:.4f}")
            if not (math.isfinite(val_loss) and math.isfinite(loss_sum)):
                # Raised before this epoch is checkpointed: a retry resumes from the last sound state.
                raise TrainingError(
                    f"pipelines.{spec.name}: training diverged in epoch {epoch} (train loss {loss_sum / seen}, "
                    f"val loss {val_loss}); lower train.optimizer.lr or set train.grad_clip"
                )
            if val_loss < state.best_val_loss - min_delta:
                state.best_val_loss, state.best_epoch, state.epochs_without_improvement = val_loss, epoch, 0
                state.best_model = _cpu_copy(model.state_dict())
            else:
                state.epochs_without_improvement += 1
            state.stopped_early = patience is not None and state.epochs_without_improvement >= patience
            if train_spec.lr_schedule.name == "plateau":
                scheduler.step(val_loss)
            elif scheduler is not None and train_spec.lr_schedule.name != "onecycle":
                scheduler.step()

            metrics = {
                "epoch": epoch,
                "train_loss": loss_sum / seen,
                "val_loss": val_loss,
                "penalty": penalty_sum / seen,
                "best_val_loss": state.best_val_loss,
                "lr": state.epoch_lr,
                "epoch_seconds": time.perf_counter() - epoch_started,
                **{f"val_{name}": value for name, value in val_metrics.items()},
                **{f"train_{name}": value for name, value in batch_stats.items()},
            }
            state.history.append(metrics)
            state.epoch, state.batches_done = epoch, 0
            if world.is_main:
                logger.log_metrics({k: float(v) for k, v in metrics.items() if k != "epoch"}, step=epoch)
            log.info(
                "epoch %d/%d train_loss=%.5f val_loss=%.5f lr=%.3g%s",
                epoch, train_spec.epochs, metrics["train_loss"], val_loss, state.epoch_lr,
                " (stopping early)" if state.stopped_early else "",
            )  # fmt: skip
            save()

    model.load_state_dict(state.best_model)  # set by epoch 1 at the latest: any finite loss beats inf
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
        checkpoint_path=str(checkpoint_dir / LAST),
        seconds=time.perf_counter() - started,
        device=str(device),
        threads=torch.get_num_threads(),
        workers=world.size,
        precision=train_spec.precision,
        deterministic=train_spec.deterministic,
        lstm_kernels=model.lstm_kernels_trained(),
    )
    kernels = ", ".join(result.lstm_kernels) or "no training step"
    log.info("%s: the LSTM recurrence ran in %s (train.lstm_kernel: %s)", spec.name, kernels, train_spec.lstm_kernel)
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
    if torch.are_deterministic_algorithms_enabled() != enabled:  # the first call imports torch._inductor: ~1.4 s
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


def _evaluate(
    objective: Objective,
    model: LSTMNet,
    spec: PipelineSpec,
    precision: Precision,
    device: torch.device,
    order: dict[str, Any],
) -> tuple[dict[str, float], dict[str, float]]:
    """The epoch's validation metrics (``loss`` among them) and facts about its training batches."""
    batch_size = spec.train.batch_size
    with precision.autocast():
        val_metrics = objective.evaluate(model, "val", batch_size, device)
    return val_metrics, objective.batch_stats("train", batch_size, **order)


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


def _cpu_copy(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in state_dict.items()}


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


# ----------------------------------------------------------------------------- state and checkpoints


@dataclass
class TrainingState:
    """Everything about a run's progress that is not inside the model, optimizer or scheduler."""

    epoch: int = 0  # epochs completed
    batches_done: int = 0  # batches of epoch ``epoch + 1`` trained: non-zero only within an epoch
    step: int = 0  # batches trained in all, the clock of ``train.checkpoint_every``
    epoch_lr: float = math.nan  # the lr at the start of the epoch under way, logged as that epoch's
    best_val_loss: float = math.inf
    best_epoch: int = 0
    best_model: dict[str, torch.Tensor] | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    # This rank's own: its (rows, data loss sum, penalty sum) in the epoch under way, and after a mid-epoch resume
    # the objective's carried state to put back at the first batch.
    sums: Tensor | None = None
    carried: dict[str, Tensor] = field(default_factory=dict)

    def add(self, rows: int, data_loss: Tensor, penalty: Tensor) -> None:
        """Count a batch of this rank's ``rows`` into the epoch's sums, on the device (no sync with a GPU)."""
        self.sums[0] += rows
        self.sums[1:] += torch.stack([data_loss, penalty]).double() * rows

    def train_loss(self) -> float:
        """This rank's mean training loss so far in the epoch (for the progress bar)."""
        return (self.sums[1] / self.sums[0]).item()

    def rank_snapshot(self, objective: Objective) -> dict[str, Any]:
        """This rank's part of a checkpoint: what differs between the training processes."""
        return {"rng": _rng_state(), "sums": self.sums.tolist(), "carried": _cpu_copy(objective.carried_state())}

    def to_checkpoint(
        self,
        spec: PipelineSpec,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
        ranks: list[dict[str, Any]],
    ) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "step": self.step,
            "epoch_lr": self.epoch_lr,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "ranks": ranks,
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "best_model": self.best_model,
            "epochs_without_improvement": self.epochs_without_improvement,
            "stopped_early": self.stopped_early,
            "history": self.history,
            "spec": spec.model_dump(mode="json"),
            "spec_hash": spec.spec_hash(),
            "torch_version": str(torch.__version__),
        }

    @classmethod
    def resume(
        cls,
        checkpoint: dict[str, Any],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
        world: World,
    ) -> TrainingState:
        """Load a checkpoint into the live objects and return the loop's state, with this rank's own part."""
        ranks = checkpoint["ranks"]
        if len(ranks) != world.size:
            raise CheckpointError(
                f"the checkpoint to resume was written by {len(ranks)} training process(es), but this run has "
                f"{world.size}; resume with the same train.workers and train.nodes, or train into a new run directory"
            )
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        mine = ranks[world.rank]
        _set_rng_state(mine["rng"])
        return cls(
            epoch=checkpoint["epoch"],
            batches_done=checkpoint["batches_done"],
            step=checkpoint["step"],
            epoch_lr=checkpoint["epoch_lr"],
            best_val_loss=checkpoint["best_val_loss"],
            best_epoch=checkpoint["best_epoch"],
            best_model=checkpoint["best_model"],
            epochs_without_improvement=checkpoint["epochs_without_improvement"],
            stopped_early=checkpoint["stopped_early"],
            history=checkpoint["history"],
            sums=torch.tensor(mine["sums"], dtype=torch.float64, device=world.device),
            carried=mine["carried"],
        )


def _rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain Python values, so ``torch.load(weights_only=True)`` reads it."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
    }


def _set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(rng["python"])
    numpy_state = rng["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )


def _checkpoint_or_error(checkpoint_dir: Path, spec: PipelineSpec) -> dict[str, Any] | CheckpointError | None:
    """Rank 0's :func:`load_checkpoint`, with its error as a value to send to every rank, so that all of them stop."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    try:
        return load_checkpoint(checkpoint_dir, spec)
    except CheckpointError as error:
        return error


def save_checkpoint(checkpoint: dict[str, Any], checkpoint_dir: Path) -> None:
    """Write ``last.pt`` atomically; the checkpoint it replaces becomes ``prev.pt``."""
    atomic_torch_save(checkpoint, checkpoint_dir / LAST, previous=checkpoint_dir / PREVIOUS)


def load_checkpoint(checkpoint_dir: Path, spec: PipelineSpec, mmap: bool = False) -> dict[str, Any] | None:
    """The newest usable checkpoint of this spec, or None when there is none to resume.

    A corrupt or incomplete ``last.pt`` falls back to ``prev.pt`` with a warning; a checkpoint of a
    different spec is an error rather than a silent restart, because a run directory belongs to one
    run (and one MLflow run): starting over there would mix two runs' metrics and files. ``mmap`` maps
    the tensors instead of reading them, for a cheap look (the launcher checks the spec before it starts).
    """
    for stale in checkpoint_dir.glob(".*.tmp"):  # left by a write that was killed midway
        stale.unlink()
    problems: list[str] = []
    for name in (LAST, PREVIOUS):
        path = checkpoint_dir / name
        if not path.exists():
            if name == LAST and (checkpoint_dir / PREVIOUS).exists():
                problems.append(f"{path} is missing")
            continue
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as exc:  # noqa: BLE001 - whatever makes a file unreadable, the remedy is the same
            first_line = next(iter(str(exc).strip().splitlines()), "")
            problems.append(f"{path} is unreadable ({type(exc).__name__}: {first_line})")
            continue
        if not isinstance(checkpoint, dict):
            problems.append(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint")
            continue
        missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
        if missing:
            problems.append(f"{path} lacks {', '.join(missing)}")
            continue
        if checkpoint["spec_hash"] != spec.spec_hash():
            theirs = checkpoint["spec"].get("name") if isinstance(checkpoint["spec"], dict) else None
            raise CheckpointError(
                f"{path} holds a checkpoint of pipeline {theirs!r} (spec {checkpoint['spec_hash']}), but pipeline "
                f"{spec.name!r} now resolves to spec {spec.spec_hash()}; train into a new run directory or delete "
                f"{checkpoint_dir}"
            )
        if problems:
            warnings.warn(f"{'; '.join(problems)}; resuming from {path} (epoch {checkpoint['epoch']})", stacklevel=2)
        return checkpoint
    if problems:
        raise CheckpointError(f"no usable checkpoint in {checkpoint_dir}: {'; '.join(problems)}")
    return None


def atomic_torch_save(obj: Any, path: Path, previous: Path | None = None) -> None:
    """``torch.save`` so that readers see the old file or the new one, never half of one."""
    with _atomic_target(path, previous) as file:
        torch.save(obj, file)


def atomic_write_bytes(data: bytes, path: Path) -> None:
    with _atomic_target(path) as file:
        file.write(data)


@contextmanager
def _atomic_target(path: Path, previous: Path | None = None) -> Iterator[BinaryIO]:
    """Yield a temp file beside ``path``; on success fsync it and rename it over ``path``, else delete it.

    Same folder, so same filesystem, so ``os.replace`` is atomic. With ``previous``, the old ``path``
    is first renamed to that name (a reader in between finds only ``previous``, which it falls back to).
    """
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the renames themselves durable (POSIX only: Windows cannot open a folder)."""
    if sys.platform == "win32":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
