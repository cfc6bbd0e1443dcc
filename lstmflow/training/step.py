"""One optimizer step and what it needs: seeds, the device, mixed precision, the optimizer and gradient clipping.

:mod:`lstmflow.training.fit` runs these in its epoch loop; a benchmark can run them without the loop.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from contextlib import nullcontext

import numpy as np
import torch
from torch import Tensor, nn

from lstmflow.config import GradClipSpec, PipelineSpec
from lstmflow.errors import ConfigError
from lstmflow.models.lstm import Network
from lstmflow.training.distributed import (
    DataParallelNet,
    Shard,
    device_problems,
    device_type,
    excluded_from_batch_statistics,
)
from lstmflow.training.objectives import Objective


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


def training_device(spec: PipelineSpec) -> torch.device:
    """``train.device`` on this machine; a ConfigError when it (or ``train.precision``) cannot run here."""
    problems = device_problems(spec)
    if problems:
        raise ConfigError(problems)
    return torch.device(device_type(spec))


def train_step(
    objective: Objective,
    trained: Network | DataParallelNet,
    model: Network,
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


def zero_sums(device: torch.device) -> Tensor:
    """A rank's running (rows, data loss sum, penalty sum) for an epoch: float64 on the device, read once per epoch."""
    return torch.zeros(3, dtype=torch.float64, device=device)


def make_optimizer(spec: PipelineSpec, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    opt = spec.train.optimizer
    if opt.name == "adam":
        return torch.optim.Adam(parameters, lr=opt.lr, weight_decay=opt.weight_decay)
    if opt.name == "adamw":
        return torch.optim.AdamW(parameters, lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.SGD(parameters, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)


def clip_gradients(parameters: Iterable[nn.Parameter], clip: GradClipSpec) -> None:
    """Clip in place: the global norm to ``clip.norm`` or every element to ``±clip.value``."""
    if clip.norm is not None:
        nn.utils.clip_grad_norm_(parameters, clip.norm)
    elif clip.value is not None:
        nn.utils.clip_grad_value_(parameters, clip.value)
