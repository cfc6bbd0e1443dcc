"""The `train` and `evaluate` sections: optimizer, learning-rate schedule, clipping, early stopping, processes and
machines, precision; and how the test part is scored."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lstmflow.config.base import Strict


class OptimizerSpec(Strict):
    """The optimizer; Keras' `compile(optimizer=...)`."""

    name: Literal["adam", "adamw", "sgd"] = Field("adam", description="Optimizer.")
    lr: float = Field(1e-3, gt=0.0, description="Learning rate.")
    weight_decay: float = Field(
        0.0, ge=0.0, description="Decoupled weight decay (adamw) or L2 in the update (adam, sgd)."
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="Momentum, for `sgd` only.")


class LRScheduleSpec(Strict):
    """How the learning rate changes over training."""

    name: Literal["none", "cosine", "step", "plateau", "onecycle"] = Field(
        "none",
        description=(
            "`cosine` anneals to `min_lr` over the epochs; `step` multiplies by `gamma` every `step_size` epochs; "
            "`plateau` multiplies by `gamma` after `patience` epochs without improvement; `onecycle` warms up then "
            "anneals per batch."
        ),
    )
    min_lr: float = Field(0.0, ge=0.0, description="Lowest learning rate for `cosine` and `plateau`.")
    step_size: int = Field(10, gt=0, description="Epochs between decays for `step`.")
    gamma: float = Field(0.5, gt=0.0, lt=1.0, description="Decay factor for `step` and `plateau`.")
    patience: int = Field(3, ge=0, description="Epochs without improvement before `plateau` decays.")


class GradClipSpec(Strict):
    """Gradient clipping; at most one of `norm` and `value` (giving `value` turns the default `norm` off)."""

    norm: float | None = Field(
        1.0,
        gt=0.0,
        description=(
            "Clip the global gradient norm to this value (null: no clipping). On by default: it keeps LSTM training "
            "stable at no cost."
        ),
    )
    value: float | None = Field(None, gt=0.0, description="Clip every gradient element to [-value, value] instead.")

    @model_validator(mode="after")
    def _one_way(self) -> GradClipSpec:
        if self.value is not None and "norm" not in self.model_fields_set:
            object.__setattr__(self, "norm", None)  # frozen model: the default norm yields to an explicit value
        if self.norm is not None and self.value is not None:
            raise ValueError(f"give one of norm and value, got norm={self.norm:g} and value={self.value:g}")
        return self


class EarlyStoppingSpec(Strict):
    """Stop when the validation loss stops improving and restore the best weights."""

    patience: int | None = Field(
        10, ge=1, description="Epochs without improvement before stopping; null disables early stopping."
    )
    min_delta: float = Field(
        0.0, ge=0.0, description="Smallest decrease of the validation loss that counts as improvement."
    )


class NodesSpec(Strict):
    """Several machines training one model: each starts training with the same spec and its own `rank`."""

    count: int = Field(ge=1, description="Machines taking part; each runs `workers` processes.")
    rank: int = Field(
        0,
        ge=0,
        description=(
            "This machine's number, 0 to count - 1, usually given per machine with `--set train.nodes.rank=1`. Machine "
            "0 hosts the rendezvous, logs metrics and writes checkpoints."
        ),
    )
    endpoint: str = Field(
        description=(
            "`host:port` where machine 0 listens for the others (on that address only); every machine must reach it."
        )
    )
    timeout: float = Field(
        300.0, gt=0, description="Seconds to wait for every machine to join before failing with a rendezvous error."
    )

    @field_validator("endpoint")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"must be host:port with a port from 1 to 65535, got {value!r}")
        return value

    @model_validator(mode="after")
    def _rank_below_count(self) -> NodesSpec:
        if self.rank >= self.count:
            raise ValueError(f"rank must be below count ({self.count}), got {self.rank}")
        return self


class TrainSpec(Strict):
    """How the model is fitted."""

    epochs: int = Field(100, gt=0, description="Maximum number of passes over the training windows.")
    batch_size: int = Field(64, gt=0, description="Windows per batch.")
    loss: Literal["mse", "mae", "huber", "cross_entropy"] | None = Field(
        None,
        description=(
            "Training loss. Forecasting: `mse` (default; the guide compiles with MSE), `mae` or `huber`, on scaled "
            "values. Classification and language models: `cross_entropy` (the default and only choice; the output "
            "softmax is folded into it)."
        ),
    )
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="Optimizer and learning rate.")
    lr_schedule: LRScheduleSpec = Field(default_factory=LRScheduleSpec, description="Learning-rate schedule.")
    grad_clip: GradClipSpec = Field(default_factory=GradClipSpec, description="Gradient clipping.")
    early_stopping: EarlyStoppingSpec = Field(
        default_factory=EarlyStoppingSpec, description="Early stopping on the validation loss."
    )
    seed: int = Field(
        0,
        ge=0,
        description="Seed for weights, shuffling and dropout; same seed on the same machine gives the same metrics.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="`auto` uses a GPU when one is present.")
    threads: int | None = Field(
        None,
        ge=1,
        description=(
            "CPU threads for the training process. Default 1: small LSTM steps run faster and steadier on one thread "
            "when anything else shares the machine."
        ),
    )
    workers: int | Literal["auto"] = Field(
        1,
        description=(
            "Data-parallel training processes on this machine (PyTorch DDP): `auto` is one per GPU, or 1 without CUDA. "
            "`batch_size` stays the global batch: each worker takes its share of the rows, gradients are averaged, and "
            "worker 0 alone logs metrics and writes checkpoints. On CPU each worker uses `threads` cores."
        ),
    )
    nodes: NodesSpec | None = Field(
        None, description="Machines taking part in one training run; null trains on this machine only."
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="How workers exchange gradients: `auto` is nccl on CUDA and gloo on CPU; nccl needs CUDA."
    )
    deterministic: bool = Field(
        False,
        description=(
            "Deterministic algorithms (`torch.use_deterministic_algorithms`, deterministic cuDNN, "
            "`CUBLAS_WORKSPACE_CONFIG`): the same seed, machine and workers give bit-identical weights, also across a "
            "kill and resume. Can be slower on GPU."
        ),
    )
    checkpoint_every: int | None = Field(
        None,
        ge=1,
        description=(
            "Also checkpoint every this many batches (steps) within an epoch, so that a killed run loses at most that "
            "many; every epoch is checkpointed regardless."
        ),
    )
    lstm_kernel: Literal["auto", "lstmflow", "torch"] = Field(
        "auto",
        description=(
            "Which LSTM implementation trains on a CPU: `lstmflow` is lstmflow's compiled CPU LSTM on the same "
            "`nn.LSTM` weights (same results up to float rounding; both directions, padded batches, carried state); "
            "`torch` is PyTorch's `nn.LSTM`; `auto` trains variable-length batches (up to half padding) in `lstmflow`, "
            "where packed `nn.LSTM` is 1.4-4× slower, and the rest in `nn.LSTM`, which was 3-10% faster on full-length "
            "batches in the training process; evaluation and prediction use `nn.LSTM`. Under bf16 autocast and on a "
            "GPU it is always `nn.LSTM` (cuDNN); `fit_result.json` records what ran (`lstm_kernels`)."
        ),
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description=(
            "Mixed precision through `torch.autocast`: `bf16` (CUDA or CPU) or `fp16` (CUDA only, with a gradient "
            "scaler). Weights and optimizer state stay fp32."
        ),
    )

    @field_validator("workers", mode="before")
    @classmethod
    def _count_or_auto(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"must be a whole number >= 1 or 'auto', got {value!r}")


class EvaluateSpec(Strict):
    """How the test part is scored."""

    season: int | None = Field(
        None,
        gt=0,
        description=(
            "Seasonal period for MASE and the seasonal-naive baseline. Default: inferred from the time column's "
            "frequency (12 monthly, 4 quarterly, 52 weekly, 7 daily, 24 hourly), else 1."
        ),
    )
