"""Fitting a model to prepared features: the epoch loop, checkpoints, resume, early stopping.

The loop is the same for every task: an :class:`~lstmflow.objectives.Objective` supplies the batches, the loss
and the task's extra metrics (``val_accuracy`` and ``train_padding_fraction`` when classifying).

``fit`` is meant to run in the training child that :mod:`lstmflow.launch` starts; it
sets process-wide state (torch threads, RNG seeds) that a caller's process should not
inherit. Everything needed to continue lives in ``run_dir``:

- ``checkpoints/last.pt`` and ``checkpoints/prev.pt``: written after every epoch, atomically
  (temp file in the same folder, fsync, ``os.replace``). ``prev.pt`` is the one before, so a
  corrupt ``last.pt`` costs one epoch, not the run.
- ``model.pt``: the best epoch's state dict, restored at the end.
- ``fit_result.json``: the :class:`FitResult`, which is also how the launcher's parent reads it.

Calling ``fit`` again on the same ``run_dir`` and spec continues from the last good
checkpoint and gives the same metrics and weights as a run that was never interrupted.
Metrics go to the logger before the epoch's checkpoint is written, so an interrupted run
may log the last epoch twice (same step, same values) but never skips one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from lstmflow.config import GradClipSpec, PipelineSpec
from lstmflow.errors import CheckpointError, ConfigError, TrainingError
from lstmflow.loggers import MetricLogger
from lstmflow.models.lstm import build_model
from lstmflow.objectives import make_objective, to_device

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST, PREVIOUS = "last.pt", "prev.pt"
MODEL_FILE = "model.pt"
RESULT_FILE = "fit_result.json"

#: What a checkpoint must hold to resume; anything missing makes it unusable.
CHECKPOINT_KEYS = (
    "epoch", "model", "optimizer", "scheduler", "rng", "best_val_loss", "best_epoch", "best_model",
    "epochs_without_improvement", "stopped_early", "history", "spec", "spec_hash",
)  # fmt: skip


@dataclass
class FitResult:
    """What a fit produced; plain JSON types only, so it crosses process and task boundaries."""

    best_epoch: int  # 1-based, as logged
    epochs_run: int  # in all, counting those before a resume
    best_val_loss: float
    stopped_early: bool
    resumed_from_epoch: int | None  # the checkpoint's epoch, None for a fresh start
    history: list[dict[str, float]]  # one dict per epoch: epoch, train_loss, val_loss, penalty, lr, task metrics
    model_path: str  # the best epoch's state dict
    checkpoint_path: str
    seconds: float  # wall time of this call only
    device: str
    threads: int  # torch.get_num_threads() in the process that trained

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
    spec: PipelineSpec, features_dir: Path, run_dir: Path, logger: MetricLogger, progress: bool = True
) -> FitResult:
    """Train ``spec.model`` on the features in ``features_dir``; resumes from ``run_dir`` when it holds a checkpoint."""
    started = time.perf_counter()
    train_spec = spec.train
    torch.set_num_threads(train_threads(spec))
    device = _device(spec)
    seed_everything(train_spec.seed)

    objective = make_objective(spec, Path(features_dir))
    where = f"pipelines.{spec.name}.model"
    model = build_model(spec.model, objective.n_features, objective.n_outputs, where=where, needs=objective.needs)
    model.to(device)
    optimizer = make_optimizer(spec, model.parameters())
    batches_per_epoch = objective.batch_count("train", train_spec.batch_size)
    scheduler = make_scheduler(spec, optimizer, batches_per_epoch)

    run_dir = Path(run_dir)
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    state = TrainingState()
    checkpoint = load_checkpoint(checkpoint_dir, spec)
    if checkpoint is not None:
        state = TrainingState.resume(checkpoint, model, optimizer, scheduler)
        log.info("resuming %s from epoch %d (%s)", spec.name, state.epoch, checkpoint_dir)
    resumed_from = state.epoch if checkpoint is not None else None
    log.info("training %s on %s with %d thread(s)", spec.name, device, torch.get_num_threads())

    patience, min_delta = train_spec.early_stopping.patience, train_spec.early_stopping.min_delta
    with _progress_bar(progress) as bar:
        while state.epoch < train_spec.epochs and not state.stopped_early:
            epoch = state.epoch + 1
            epoch_started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            task = bar.add_task(
                f"epoch {epoch}/{train_spec.epochs}", total=batches_per_epoch, loss=math.nan, val="", lr=lr
            )
            model.train()
            seen, loss_sum, penalty_sum = 0, 0.0, 0.0
            order = {"shuffle": True, "seed": train_spec.seed, "epoch": epoch}
            for inputs, target in objective.batches("train", train_spec.batch_size, **order):
                inputs, target = to_device(inputs, device), target.to(device)
                data_loss = objective.loss(model, inputs, target)
                penalty = model.regularization_penalty()
                optimizer.zero_grad(set_to_none=True)
                (data_loss + penalty).backward()
                clip_gradients(model.parameters(), train_spec.grad_clip)
                optimizer.step()
                if train_spec.lr_schedule.name == "onecycle":
                    scheduler.step()
                seen += len(target)
                loss_sum += data_loss.item() * len(target)
                penalty_sum += penalty.item() * len(target)
                bar.update(task, advance=1, loss=loss_sum / seen, lr=optimizer.param_groups[0]["lr"])

            val_metrics = objective.evaluate(model, "val", train_spec.batch_size, device)
            val_loss = val_metrics.pop("loss")
            batch_stats = objective.batch_stats("train", train_spec.batch_size, **order)
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
                "lr": lr,
                "epoch_seconds": time.perf_counter() - epoch_started,
                **{f"val_{name}": value for name, value in val_metrics.items()},
                **{f"train_{name}": value for name, value in batch_stats.items()},
            }
            state.history.append(metrics)
            state.epoch = epoch
            logger.log_metrics({k: float(v) for k, v in metrics.items() if k != "epoch"}, step=epoch)
            log.info(
                "epoch %d/%d train_loss=%.5f val_loss=%.5f lr=%.3g%s",
                epoch, train_spec.epochs, metrics["train_loss"], val_loss, lr,
                " (stopping early)" if state.stopped_early else "",
            )  # fmt: skip
            save_checkpoint(state.to_checkpoint(spec, model, optimizer, scheduler), checkpoint_dir)

    model.load_state_dict(state.best_model)  # set by epoch 1 at the latest: any finite loss beats inf
    model_path = run_dir / MODEL_FILE
    atomic_torch_save(state.best_model, model_path)
    result = FitResult(
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        best_val_loss=state.best_val_loss,
        stopped_early=state.stopped_early,
        resumed_from_epoch=resumed_from,
        history=state.history,
        model_path=str(model_path),
        checkpoint_path=str(checkpoint_dir / LAST),
        seconds=time.perf_counter() - started,
        device=str(device),
        threads=torch.get_num_threads(),
    )
    result.write(run_dir / RESULT_FILE)
    return result


# ----------------------------------------------------------------------------- pieces of the loop


def seed_everything(seed: int) -> None:
    """Seed every generator a run can touch; batch order is seeded separately, from (seed, epoch)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _device(spec: PipelineSpec) -> torch.device:
    wanted = spec.train.device
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"pipelines.{spec.name}.train.device: cuda requested but no CUDA device is usable "
            f"(torch {torch.__version__}); use auto or cpu"
        )
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(wanted)


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

    epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    best_model: dict[str, torch.Tensor] | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    def to_checkpoint(
        self, spec: PipelineSpec, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
    ) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "rng": _rng_state(),
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
        cls, checkpoint: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
    ) -> TrainingState:
        """Load a checkpoint into the live objects and return the loop's state."""
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
        _set_rng_state(checkpoint["rng"])
        return cls(
            epoch=checkpoint["epoch"],
            best_val_loss=checkpoint["best_val_loss"],
            best_epoch=checkpoint["best_epoch"],
            best_model=checkpoint["best_model"],
            epochs_without_improvement=checkpoint["epochs_without_improvement"],
            stopped_early=checkpoint["stopped_early"],
            history=checkpoint["history"],
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


def save_checkpoint(checkpoint: dict[str, Any], checkpoint_dir: Path) -> None:
    """Write ``last.pt`` atomically; the checkpoint it replaces becomes ``prev.pt``."""
    atomic_torch_save(checkpoint, checkpoint_dir / LAST, previous=checkpoint_dir / PREVIOUS)


def load_checkpoint(checkpoint_dir: Path, spec: PipelineSpec) -> dict[str, Any] | None:
    """The newest usable checkpoint of this spec, or None when there is none to resume.

    A corrupt or incomplete ``last.pt`` falls back to ``prev.pt`` with a warning; a checkpoint of a
    different spec is an error rather than a silent restart, because a run directory belongs to one
    run (and one MLflow run): starting over there would mix two runs' metrics and files.
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
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
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
            raise CheckpointError(
                f"{path} holds a checkpoint of spec {checkpoint['spec_hash']}, but pipeline {spec.name!r} "
                f"now resolves to spec {spec.spec_hash()}; train into a new run directory or delete {checkpoint_dir}"
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
