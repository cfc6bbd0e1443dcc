"""Checkpoints and resume: what a run's progress is, how it is written so that a crash never corrupts it, and how a
later call picks it up.

Everything needed to continue lives in ``run_dir/checkpoints``:

- ``last.pt`` and ``prev.pt``: written after every epoch and every ``train.checkpoint_every`` batches, atomically
  (temp file in the same folder, fsync, ``os.replace``). ``prev.pt`` is the one before, so a corrupt ``last.pt``
  costs one checkpoint interval, not the run. Besides the model, optimizer, lr schedule and gradient scaler, the
  seconds of training used so far (a resumed run continues its ``train.budget``) and why the run stopped, a
  checkpoint holds each rank's RNG states, running loss sums and the objective's carried state (a stateful LSTM's),
  gathered to rank 0: one file, whatever the number of ranks.

A checkpoint belongs to one spec: one of another spec is refused (:func:`load_checkpoint`), because a run directory
is one run (and one MLflow run).
"""

from __future__ import annotations

import math
import os
import random
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor, nn

from lstmflow.config import PipelineSpec
from lstmflow.errors import CheckpointError, writing
from lstmflow.training.distributed import World
from lstmflow.training.objectives import Objective
from lstmflow.training.schedules import Schedule

CHECKPOINT_DIR = "checkpoints"
LAST, PREVIOUS = "last.pt", "prev.pt"

#: What a checkpoint must hold to resume; anything missing makes it unusable.
CHECKPOINT_KEYS = (
    "epoch", "batches_done", "step", "epoch_lr", "elapsed", "model", "optimizer", "scheduler", "scaler", "ranks",
    "best_val_loss", "best_score", "best_epoch", "best_model", "epochs_without_improvement", "stopped_by", "history",
    "spec", "spec_hash",
)  # fmt: skip


@dataclass
class TrainingState:
    """Everything about a run's progress that is not inside the model, optimizer or scheduler."""

    epoch: int = 0  # epochs completed
    batches_done: int = 0  # batches of epoch ``epoch + 1`` trained: non-zero only within an epoch
    step: int = 0  # batches trained in all, the clock of ``train.checkpoint_every``
    epoch_lr: float = math.nan  # the lr at the start of the epoch under way, logged as that epoch's
    elapsed: float = 0.0  # seconds of training used, as of the last checkpoint (train.budget counts them)
    best_val_loss: float = math.inf  # the kept epoch's
    best_score: float = math.nan  # the kept epoch's train.select value; NaN until an epoch is kept
    best_epoch: int = 0
    best_model: dict[str, torch.Tensor] | None = None
    epochs_without_improvement: int = 0
    stopped_by: str | None = None  # "budget", "early_stopping" or "epochs" once the run has ended
    history: list[dict[str, float]] = field(default_factory=list)
    # This rank's own: its (rows, data loss sum, penalty sum) in the epoch under way, and after a mid-epoch resume
    # the objective's carried state to put back at the first batch.
    sums: Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))
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
        return {"rng": _rng_state(), "sums": self.sums.tolist(), "carried": cpu_copy(objective.carried_state())}

    def to_checkpoint(
        self,
        spec: PipelineSpec,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Schedule,
        scaler: torch.amp.GradScaler,
        ranks: list[dict[str, Any]],
    ) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "step": self.step,
            "epoch_lr": self.epoch_lr,
            "elapsed": self.elapsed,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "ranks": ranks,
            "best_val_loss": self.best_val_loss,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_model": self.best_model,
            "epochs_without_improvement": self.epochs_without_improvement,
            "stopped_by": self.stopped_by,
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
        scheduler: Schedule,
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
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        mine = ranks[world.rank]
        _set_rng_state(mine["rng"])
        return cls(
            epoch=checkpoint["epoch"],
            batches_done=checkpoint["batches_done"],
            step=checkpoint["step"],
            epoch_lr=checkpoint["epoch_lr"],
            elapsed=checkpoint["elapsed"],
            best_val_loss=checkpoint["best_val_loss"],
            best_score=checkpoint["best_score"],
            best_epoch=checkpoint["best_epoch"],
            best_model=checkpoint["best_model"],
            epochs_without_improvement=checkpoint["epochs_without_improvement"],
            stopped_by=checkpoint["stopped_by"],
            history=checkpoint["history"],
            sums=torch.tensor(mine["sums"], dtype=torch.float64, device=world.device),
            carried=mine["carried"],
        )


def cpu_copy(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors copied to the CPU, detached: a snapshot that later training steps do not change."""
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in state_dict.items()}


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


def checkpoint_or_error(checkpoint_dir: Path, spec: PipelineSpec) -> dict[str, Any] | CheckpointError | None:
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
        checkpoint = _read_checkpoint(path, mmap, problems)
        if checkpoint is None:
            continue
        _check_same_spec(checkpoint, path, spec, checkpoint_dir)
        if problems:
            warnings.warn(f"{'; '.join(problems)}; resuming from {path} (epoch {checkpoint['epoch']})", stacklevel=2)
        return checkpoint
    if problems:
        raise CheckpointError(f"no usable checkpoint in {checkpoint_dir}: {'; '.join(problems)}")
    return None


def _read_checkpoint(path: Path, mmap: bool, problems: list[str]) -> dict[str, Any] | None:
    """The checkpoint in ``path``, or None with the reason appended to ``problems`` when it cannot be used."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - whatever makes a file unreadable, the remedy is the same
        first_line = next(iter(str(exc).strip().splitlines()), "")
        problems.append(f"{path} is unreadable ({type(exc).__name__}: {first_line})")
        return None
    if not isinstance(checkpoint, dict):
        problems.append(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint")
        return None
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        problems.append(f"{path} lacks {', '.join(missing)}")
        return None
    return checkpoint


def _check_same_spec(checkpoint: dict[str, Any], path: Path, spec: PipelineSpec, checkpoint_dir: Path) -> None:
    if checkpoint["spec_hash"] != spec.spec_hash():
        theirs = checkpoint["spec"].get("name") if isinstance(checkpoint["spec"], dict) else None
        raise CheckpointError(
            f"{path} holds a checkpoint of pipeline {theirs!r} (spec {checkpoint['spec_hash']}), but pipeline "
            f"{spec.name!r} now resolves to spec {spec.spec_hash()}; train into a new run directory or delete "
            f"{checkpoint_dir}"
        )


def atomic_torch_save(obj: Any, path: Path, previous: Path | None = None) -> None:
    """``torch.save`` so that readers see the old file or the new one, never half of one."""
    with _atomic_target(path, previous) as file:
        torch.save(obj, file)


def atomic_write_bytes(data: bytes, path: Path) -> None:
    with _atomic_target(path) as file:
        file.write(data)


@contextmanager
def _atomic_target(path: Path, previous: Path | None = None) -> Iterator[BinaryIO]:
    """Yield a temp file beside ``path``; on success fsync it and rename it over ``path``, else delete it (a full or
    unwritable folder is a :class:`~lstmflow.errors.StorageError` naming ``path``).

    Same folder, so same filesystem, so ``os.replace`` is atomic. With ``previous``, the old ``path``
    is first renamed to that name (a reader in between finds only ``previous``, which it falls back to).
    """
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with writing(path), open(tmp, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk gets its space back
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
