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

    name: Literal["auto", "none", "cosine", "step", "plateau", "onecycle"] = Field(
        "auto",
        description=(
            "`auto` (default) warms up linearly over the first `warmup` of the run's steps (at most one epoch), then, "
            "while early stopping watches the run, multiplies the lr by `gamma` after half the early-stopping "
            "patience without a better `train.select` (so it anneals whenever the run stops), or, without early "
            "stopping, follows a cosine to `min_lr` at the last step the run may take (`epochs` or `budget.steps`). "
            "`none` keeps the lr; `cosine` anneals to `min_lr` over the epochs; `step` multiplies by `gamma` every "
            "`step_size` epochs; `plateau` multiplies by `gamma` after `patience` epochs without a better "
            "`train.select`; `onecycle` warms up then anneals per batch."
        ),
    )
    min_lr: float = Field(0.0, ge=0.0, description="Lowest learning rate for `auto`, `cosine` and `plateau`.")
    step_size: int = Field(10, gt=0, description="Epochs between decays for `step`.")
    gamma: float = Field(0.5, gt=0.0, lt=1.0, description="Decay factor for `auto`, `step` and `plateau`.")
    patience: int = Field(3, ge=0, description="Epochs without improvement before `plateau` decays.")
    warmup: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description=(
            "`auto` only: the share of the run's most steps spent warming the lr up from a tenth of "
            "`optimizer.lr`, at most one epoch; 0 turns the warm-up off."
        ),
    )


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


#: `early_stopping.min_val_samples: auto`: validation samples a classifier needs to stop early on, and those of one
#: served blended with its baseline (whose validation part is held out to choose the blend's weight anyway).
MIN_VAL_SAMPLES = 100
MIN_VAL_SAMPLES_BLENDED = 30


class EarlyStoppingSpec(Strict):
    """Stop when `train.select` stops improving; the best epoch's weights are the ones kept."""

    patience: int | None = Field(
        10,
        ge=1,
        description=(
            "Epochs without improvement before stopping (at least `patience_steps` optimizer steps' worth); null "
            "disables early stopping."
        ),
    )
    min_delta: float = Field(
        0.0, ge=0.0, description="Smallest gain of `train.select` (in its own units) that counts as improvement."
    )
    patience_steps: int = Field(
        200,
        ge=0,
        description=(
            "Patience in optimizer steps as well: the run waits max(patience, ceil(patience_steps / steps per "
            "epoch)) epochs, so that a small set with few steps per epoch is not stopped by noise. Default 200."
        ),
    )
    min_steps: int = Field(
        300,
        ge=0,
        description=(
            "Optimizer steps before early stopping may act (`epochs` and `budget` still end the run). Default 300: "
            "a few epochs of a small set are too few to tell a plateau from the start of learning."
        ),
    )
    min_val_samples: int | Literal["auto"] = Field(
        "auto",
        description=(
            "Classification: with fewer validation samples than this, early stopping is off, the lr follows "
            "`auto`'s warm-up and cosine to the run's end, and the last epoch's weights are kept (the run's log says "
            f"so). `auto` (default): {MIN_VAL_SAMPLES}, or {MIN_VAL_SAMPLES_BLENDED} for a classifier served blended "
            "with its baseline (text, video). Below 100 one sample moves the accuracy by over a point, and early "
            "stopping and the plateau schedule act on noise: on the quality suite's OSULeaf (40 validation leaves) "
            "they stopped an underfitted run at epoch 50 (0.831 test accuracy; 0.975 trained to the end). Text "
            "networks overfit within a few epochs instead, and their validation part is held out anyway to "
            "choose the blend's weight: on 400 training fortunes with 80 validation ones early stopping scored as "
            "well or better than training to the end (0.893 against 0.874 in German)."
        ),
    )

    @field_validator("min_val_samples")
    @classmethod
    def _not_negative(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError(f"must be 0 or more, or auto, got {value}")
        return value

    small_val_trains: bool = Field(
        True,
        description=(
            "When `min_val_samples` turns early stopping off, the validation samples join the training part, since "
            "they decide nothing and a set that small needs every sample (the run's validation scores are then on "
            "seen samples, and its log says so). false: hold them out all the same. Search trials always hold them "
            "out: they are ranked on them; so does a text or video classifier served blended with its "
            "baseline (`blend_baseline`), whose weight they choose."
        ),
    )


class BudgetSpec(Strict):
    """When training stops at the latest, whatever `epochs` says; every task honours it, checked at every step."""

    seconds: float | None = Field(
        600.0,
        gt=0.0,
        description=(
            "Wall-clock seconds of training (validation included); the epoch under way is cut there, validated, and "
            "the best weights are kept. A resumed run continues the time its checkpoint had used. Default 600: a "
            "multi-MB corpus stops within minutes, small sets end well before. null: no time limit."
        ),
    )
    steps: int | None = Field(
        None, gt=0, description="Optimizer steps of training at most; null (default): `epochs` alone limits them."
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


#: `train.epochs: auto`: at least AUTO_MIN_EPOCHS passes and at least AUTO_EPOCH_STEPS optimizer steps, in at most
#: AUTO_MAX_EPOCHS epochs.
AUTO_MIN_EPOCHS = 200
AUTO_EPOCH_STEPS = 2000
AUTO_MAX_EPOCHS = 1000


class TrainSpec(Strict):
    """How the model is fitted."""

    epochs: int | Literal["auto"] = Field(
        "auto",
        description=(
            "Maximum number of passes over the training data (`budget` may end the run sooner). `auto` (default): "
            f"{AUTO_MIN_EPOCHS}, or more when epochs are short, enough for {AUTO_EPOCH_STEPS:,} optimizer steps (at "
            f"most {AUTO_MAX_EPOCHS:,} epochs): a set of tens of samples needs thousands of steps, not a hundred "
            "epochs of a few, and a few hundred samples need a few hundred passes (when early stopping is on, it "
            "usually ends the run sooner)."
        ),
    )
    batch_size: int | Literal["auto"] = Field(
        "auto",
        description=(
            "Samples (windows, sequences, text streams) per batch. `auto` (default): the largest power of two up to "
            "a sixteenth of the training samples, from 8 to 64, so a small set still gets 16 or more optimizer "
            "steps per epoch and a large one the usual 64; `fit_result.json` records the number used (`batch_size`)."
        ),
    )
    budget: BudgetSpec = Field(default_factory=BudgetSpec, description="The most time and steps training may take.")
    select: Literal["auto", "val_loss", "val_accuracy", "val_macro_f1"] = Field(
        "auto",
        description=(
            "The validation metric that picks the kept epoch and drives early stopping and the `auto` and `plateau` "
            "schedules. `auto` (default): `val_accuracy` for classify, `val_loss` otherwise. `val_accuracy` and "
            "`val_macro_f1` are for classify only, and an epoch that ties the best on them wins with a lower "
            "`val_loss`."
        ),
    )
    class_weight: Literal["auto", "none", "balanced"] = Field(
        "auto",
        description=(
            "Classify: weights of the classes in the training loss. `balanced` weighs each class by the inverse of "
            "its training frequency; `auto` (default) uses the square root of those weights, and only when the most "
            "frequent training class has 3 or more times the samples of the rarest; `none` weighs all alike."
        ),
    )
    loss: Literal["mse", "mae", "huber", "cross_entropy", "ctc"] | None = Field(
        None,
        description=(
            "Training loss. Forecasting: `mse` (default; the guide compiles with MSE), `mae` or `huber`, on scaled "
            "values. Classification, language models and translation: `cross_entropy` (the default and only choice; "
            "the output softmax is folded into it). Speech recognition: `ctc` (connectionist temporal "
            "classification, the default and only choice)."
        ),
    )
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="Optimizer and learning rate.")
    lr_schedule: LRScheduleSpec = Field(default_factory=LRScheduleSpec, description="Learning-rate schedule.")
    grad_clip: GradClipSpec = Field(default_factory=GradClipSpec, description="Gradient clipping.")
    early_stopping: EarlyStoppingSpec = Field(
        default_factory=EarlyStoppingSpec, description="Early stopping on `select`."
    )
    seed: int = Field(
        0,
        ge=0,
        description="Seed for weights, shuffling and dropout; same seed on the same machine gives the same metrics.",
    )
    ensemble: int = Field(
        1,
        ge=1,
        # left out of the spec's hash and dump at 1, so a spec without it keeps its cache key and its checkpoints
        exclude_if=lambda members: members == 1,
        description=(
            "Train this many copies of the model with seeds `seed` to `seed + ensemble - 1`, one after another (each "
            "with its own early stopping and kept epoch, and an equal share of `budget`: seconds and steps / "
            "ensemble), and register and serve them as one model that averages their predictions: forecast values, "
            "class probabilities, next-token probabilities. Default 1: one model. Small data makes a single seed's "
            "result noisy; an ensemble of 5 costs 5 times the training and prediction time. Not with `search`."
        ),
    )
    refit: bool | Literal["auto"] = Field(
        False,
        # left out of the spec's hash and dump when off, so a spec without it keeps its cache key and its checkpoints
        exclude_if=lambda refit: refit is False,
        description=(
            "Once the validation part has chosen the epoch, train the model again from the same start on the "
            "training and validation parts together for that many epochs (warm-up, then a cosine to `min_lr` unless "
            "another schedule is given), and keep that model; validation scores stay those of the first run. "
            "`false` (default) keeps the first run's model: on the quality suite a refit helped some sets and hurt "
            "others (see benchmarks/RESULTS.md). `auto`: for classify and forecast, when the first run kept its best "
            "epoch (the validation part could decide), was not stopped by `budget`, and the refit fits in what is "
            "left of it. `true` refits whatever the first run did. Never for a search's trials, an `ensemble` or "
            "the `plateau` schedule."
        ),
    )
    blend_baseline: bool | Literal["auto"] = Field(
        "auto",
        # left out of the spec's hash and dump at auto, so a spec without it keeps its cache key and its checkpoints
        exclude_if=lambda blend: blend == "auto",
        description=(
            "Serve the network blended with the run's strong baseline, registered and served as one model. "
            "Forecasts: the average of the network's forecast and AutoETS's (its parameters fitted on the training "
            "part, its state following the series up to each origin; a served request runs it over all its rows, "
            "so send the series from its start). Equal weights: weights chosen on a few dozen validation windows "
            "did worse. On the quality suite's 13 series the average beat the network alone on 11, by up to 22 %. "
            "Texts: the weighted geometric mean of the class probabilities of the network and the run's TF-IDF + "
            "logistic regression, the network's weight chosen on the validation part from 0 to 1 in steps of 0.05; "
            "on the suite's text sets 1 to 8 points ahead of the network alone, and ahead of the regression on "
            "three of four (within 0.2 points on the fourth). Video: the same with logistic regression on each "
            "pixel's mean and spread over the clip. Sequences and audio features: the same with logistic regression "
            "on MiniRocket features, at equal weights (a UCR set's validation part is too small to choose one on); "
            "on the suite's ArrowHead 0.880 blended, 0.823 alone, on ACSF1 0.910 and 0.830, on the `chirps` demo "
            "1.000 and 0.778. Language models: the network's next-token "
            "probabilities mixed linearly with the run's Kneser-Ney n-gram's, the network's weight chosen on the "
            "validation part; on the suite's corpus "
            "2.56 bits per character against 2.91 alone and 2.69 for the n-gram. The run logs the network alone as "
            "`network_<metric>` and the weight as `blend_weight`. `auto` (default): blend forecasts, language models "
            "and sequence, text and audio classifiers; `true`: video classifiers too (text and video only with a "
            "validation part). `false`: the network alone."
        ),
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
            "Mixed precision through `torch.autocast`: `bf16` (CUDA, or a CPU with AVX-512) or `fp16` (CUDA only, "
            "with a gradient scaler). Weights and optimizer state stay fp32."
        ),
    )

    @field_validator("batch_size", "epochs", mode="before")
    @classmethod
    def _size_or_auto(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        whole = isinstance(value, int) and not isinstance(value, bool)
        raise ValueError(
            f"must be > 0, got {value}" if whole else f"must be a whole number > 0 or 'auto', got {value!r}"
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
            "frequency (12 monthly, 4 quarterly, 52 weekly, 7 daily, 24 hourly); when the calendar gives none or 1, "
            "the data's own cycle if its autocorrelation shows one clearly (e.g. 11 for yearly sunspots), else 1."
        ),
    )
    beam_width: int = Field(
        4,
        ge=1,
        le=64,
        description=(
            "Translation and speech recognition: candidates beam search keeps at each step (each token; each frame "
            "for CTC), when evaluating and serving; 1 is greedy decoding (the likeliest token each time). The run "
            "logs greedy decoding's scores too (`greedy_*`)."
        ),
    )
