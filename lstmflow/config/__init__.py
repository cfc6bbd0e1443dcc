"""The typed pipeline spec: ``pipelines.yaml`` validated once, at the edge.

A file holds optional ``defaults`` that are deep-merged into every entry of
``pipelines`` (mappings merge key by key, lists and scalars replace). Overrides
given as ``key=value`` (``--set``) apply after the merge, before validation, so
their errors carry the same YAML paths. Every problem is collected into one
:class:`~lstmflow.errors.ConfigError` whose lines read
``pipelines.sunspots.model.layers[1].lstm.units: must be > 0, got -4``.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from lstmflow.errors import ConfigError


class Strict(BaseModel):
    """Base of every spec model: unknown keys are errors and specs are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- data


class SplitFilesSpec(Strict):
    """A given split as files: `data.path` then holds the training part only."""

    val: Path = Field(
        description="File (or folder) of the same form as `data.path` holding the validation part, relative to the YAML file."
    )
    test: Path = Field(
        description="File (or folder) of the same form as `data.path` holding the test part, relative to the YAML file."
    )


class SplitSpec(Strict):
    """Chronological fractions of the series held out for validation and test, or given files that continue it."""

    val: float = Field(
        0.15,
        ge=0.0,
        lt=1.0,
        description="Fraction of the series (by time) used for validation, after the training part (ignored when `files` is given).",
    )
    test: float = Field(
        0.15,
        ge=0.0,
        lt=1.0,
        description="Fraction of the series (by time) used for the final test, at the end (ignored when `files` is given).",
    )
    files: SplitFilesSpec | None = Field(
        None,
        description="Given split: `path` holds the training series, the `val` file continues it in time and the `test` file continues the `val` file, with the same columns. The three are read as one series and split at the file boundaries (windows may reach back into the previous part, as with fractions); the fractions are then ignored.",
    )

    @model_validator(mode="after")
    def _leave_training_data(self) -> SplitSpec:
        if self.files is None and self.val + self.test >= 0.9:
            raise ValueError(f"val + test must leave at least 10% for training, got {self.val} + {self.test}")
        return self


class TimeSeriesDataSpec(Strict):
    """A table of one or more numeric series indexed by time (CSV or Parquet)."""

    kind: Literal["timeseries"] = Field(
        "timeseries",
        description="Kind of data: `timeseries` (forecasting; the default), `sequences`, `images`, `text` and `audio` (classification) or `corpus` (language modelling): each kind's keys are in its own table.",
    )
    path: Path = Field(description="CSV or Parquet file, relative to the YAML file that declares it.")
    time_column: str | None = Field(
        None,
        description="Column holding the timestamps (dates or numbers); rows must be strictly increasing. Omit to use row order.",
    )
    target: list[str] = Field(min_length=1, description="Column(s) to forecast; a single name is accepted too.")
    features: list[str] = Field(
        default_factory=list,
        description="Extra input columns (covariates) fed to the model beside the targets; not forecast.",
    )
    window: int | None = Field(
        None,
        gt=0,
        description="Past steps the model sees. Default: max(2 × season, 4 × horizon, 8), capped so the training part holds at least 8 windows.",
    )
    horizon: int | None = Field(
        None, gt=0, description="Future steps forecast at once. Default: the season when it is > 1, else 1."
    )
    stride: int = Field(1, gt=0, description="Steps between the starts of consecutive training windows.")
    split: SplitSpec = Field(default_factory=SplitSpec, description="Chronological train/validation/test split.")
    scale: Literal["standard", "minmax", "none"] = Field(
        "standard",
        description="Per-column scaling fitted on the training part only: `standard` (zero mean, unit variance), `minmax` (to [0, 1]) or `none`.",
    )
    transform: Literal["auto", "none", "log", "difference"] = Field(
        "auto",
        description="Transform of the targets before scaling, inverted for reporting. `auto` looks at the training part only: `difference` when a straight line explains more than 80% of its variance (a trend), else `log` when every value is > 0 and max/min exceeds 10, else `none`.",
    )
    gaps: Literal["interpolate", "error"] = Field(
        "interpolate",
        description="Missing values inside the series: `interpolate` linearly (and count them in the run) or `error`.",
    )

    @field_validator("target", "features", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ClassSplitSpec(Strict):
    """How samples are divided for classification: given by a column or by files, or stratified seeded fractions."""

    val: float = Field(
        0.15,
        ge=0.0,
        lt=1.0,
        description="Fraction of each class held out for validation (ignored when `column` or `files` is given).",
    )
    test: float = Field(
        0.15,
        ge=0.0,
        lt=1.0,
        description="Fraction of each class held out for the final test (ignored when `column` or `files` is given).",
    )
    column: str | None = Field(
        None,
        description="A column that names each sample's part: `train`, `val` or `test` (a given split). Tables only; not with `files`.",
    )
    files: SplitFilesSpec | None = Field(
        None,
        description="Given split: files (or folders of label folders) of the same form as `path` holding the validation and test samples; `path` then holds the training samples only, and the fractions are ignored. Not with `column`.",
    )
    seed: int = Field(0, ge=0, description="Seed of the stratified shuffle that draws the fractions.")

    @model_validator(mode="after")
    def _leave_training_data(self) -> ClassSplitSpec:
        if self.column is not None and self.files is not None:
            raise ValueError(f"give the split as column or as files, not both; got column {self.column!r} and files")
        if self.column is None and self.files is None and self.val + self.test >= 0.9:
            raise ValueError(f"val + test must leave at least 10% for training, got {self.val} + {self.test}")
        return self


class SequenceTableSpec(Strict):
    """Labelled sequences in a table (CSV or Parquet), one sequence per label: time-series classification."""

    kind: Literal["sequences"] = Field(description="Kind of data; `sequences` for time-series classification.")
    path: Path = Field(description="CSV or Parquet file, relative to the YAML file that declares it.")
    format: Literal["long", "wide"] = Field(
        "long",
        description="`long`: one row per time step, with `id_column` naming the sequence; `wide`: one row per sequence, one column per step (univariate).",
    )
    label_column: str = Field(
        "label", description="Column holding each sequence's class (constant within a sequence in long format)."
    )
    id_column: str | None = Field(
        None, description="Long format: column naming the sequence each row belongs to (required there)."
    )
    time_column: str | None = Field(
        None, description="Long format: column ordering the steps within a sequence. Default: row order."
    )
    value_columns: list[str] = Field(
        default_factory=list,
        description="Long format: the numeric columns, one feature each (required there). Wide format: the step columns, in order; default: every column but the label, id and split columns.",
    )
    max_length: int | None = Field(
        None,
        gt=0,
        description="Keep only the last `max_length` steps of longer sequences (explicit truncation); default: keep all.",
    )
    scale: Literal["standard", "none"] = Field(
        "standard", description="Per-feature standardisation fitted on the training sequences only."
    )
    split: ClassSplitSpec = Field(default_factory=ClassSplitSpec, description="Train/validation/test division.")

    @field_validator("value_columns", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _long_format_needs_ids_and_values(self) -> SequenceTableSpec:
        if self.format == "long" and (self.id_column is None or not self.value_columns):
            raise ValueError("format: long needs id_column and value_columns")
        return self


class ImagesSpec(Strict):
    """Labelled images read as sequences of pixel rows: each row is one time step."""

    kind: Literal["images"] = Field(description="Kind of data; `images` for image classification by rows.")
    path: Path = Field(
        description="A folder with one subfolder of image files per label, or a CSV/Parquet table of pixels (one row per image)."
    )
    label_column: str = Field("label", description="Table only: the column holding each image's class.")
    shape: list[int] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="Table only: `[height, width]` of the images; the pixel columns are read row by row.",
    )
    grayscale: bool = Field(
        True, description="Convert images to one channel; otherwise each step has width × 3 features (RGB)."
    )
    scale: Literal["standard", "none"] = Field(
        "standard", description="Per-feature standardisation fitted on the training images only."
    )
    split: ClassSplitSpec = Field(default_factory=ClassSplitSpec, description="Train/validation/test division.")


class TokenizerSpec(Strict):
    """How text becomes token ids; fitted on the training texts only and saved beside the model."""

    kind: Literal["word", "char", "bpe"] = Field(
        "word",
        description="`word`: runs of letters/digits and single punctuation marks; `char`: characters; `bpe`: subword byte-pair encoding (the `tokenizers` library).",
    )
    vocab_size: int = Field(
        20000,
        gt=2,
        description="Largest vocabulary, padding and unknown tokens included; the most frequent tokens are kept.",
    )
    min_frequency: int = Field(
        1, ge=1, description="Tokens seen fewer times in the training texts become the unknown token."
    )
    lowercase: bool = Field(True, description="Lowercase the text before tokenizing.")
    unknown_token: str = Field("<unk>", min_length=1, description="The token for anything outside the vocabulary.")
    padding_token: str = Field("<pad>", min_length=1, description="The token (id 0) that pads batches.")


class TextSpec(Strict):
    """Labelled texts in a table (CSV, Parquet or JSONL): text classification."""

    kind: Literal["text"] = Field(description="Kind of data; `text` for text classification.")
    path: Path = Field(description="CSV, Parquet or JSON Lines file, relative to the YAML file that declares it.")
    text_column: str = Field("text", description="Column holding each text.")
    label_column: str = Field("label", description="Column holding each text's class.")
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec, description="Tokenization.")
    max_length: int | None = Field(
        256,
        gt=0,
        description="Keep only the first `max_length` tokens of longer texts (explicit truncation; counted); null keeps all.",
    )
    split: ClassSplitSpec = Field(default_factory=ClassSplitSpec, description="Train/validation/test division.")


class AudioSpec(Strict):
    """Labelled audio clips: audio classification on log-mel or MFCC frames, computed with librosa."""

    kind: Literal["audio"] = Field(description="Kind of data; `audio` for audio classification.")
    path: Path = Field(
        description="A folder with one subfolder of clips per label, or a manifest CSV with `path` and `label` columns (and optionally the split column); paths in a manifest are relative to it."
    )
    sample_rate: int = Field(
        16000, gt=0, description="Clips are resampled to this rate (Hz) before features are computed."
    )
    features: Literal["logmel", "mfcc"] = Field("logmel", description="Per-frame features: log-mel energies or MFCCs.")
    n_mels: int = Field(40, gt=0, description="Mel bands (for both kinds of features).")
    n_mfcc: int = Field(13, gt=0, description="MFCC coefficients, for `features: mfcc`.")
    deltas: bool = Field(False, description="Append first and second time derivatives of the features.")
    n_fft: int = Field(400, gt=0, description="FFT window in samples (400 = 25 ms at 16 kHz).")
    hop_length: int = Field(
        160, gt=0, description="Samples between frames (160 = 10 ms at 16 kHz): one frame is one time step."
    )
    max_seconds: float | None = Field(
        None, gt=0, description="Keep only the first `max_seconds` of longer clips; null keeps all."
    )
    bad_files: Literal["skip", "fail"] = Field(
        "skip",
        description="An unreadable, empty, silent or too-short clip: `skip` it (named and counted in the run) or `fail`.",
    )
    workers: int | None = Field(
        None,
        ge=1,
        description="Most processes computing features; one more starts per ~100 MB of clips to compute, since a process costs seconds to start. Default: the CPU count.",
    )
    scale: Literal["standard", "none"] = Field(
        "standard", description="Per-feature standardisation fitted on the training clips only."
    )
    split: ClassSplitSpec = Field(default_factory=ClassSplitSpec, description="Train/validation/test division.")


class CorpusSplitSpec(Strict):
    """How a corpus is divided for language modelling: contiguous stretches at its end, or given files."""

    val: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Fraction of the text (by characters, cut at a line break) after the training part, for validation.",
    )
    test: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Fraction of the text (by characters, cut at a line break) at the end, for the final test.",
    )
    files: SplitFilesSpec | None = Field(
        None,
        description="Given split: text files (or folders) holding the validation and test parts; `path` is then the training part and the fractions are ignored.",
    )

    @model_validator(mode="after")
    def _leave_training_data(self) -> CorpusSplitSpec:
        if self.files is None and self.val + self.test >= 0.9:
            raise ValueError(f"val + test must leave at least 10% for training, got {self.val} + {self.test}")
        return self


class CorpusSpec(Strict):
    """Plain UTF-8 text for language modelling: the model learns to predict each next token."""

    kind: Literal["corpus"] = Field(description="Kind of data; `corpus` for language modelling.")
    path: Path = Field(
        description="A UTF-8 text file, or a folder whose `*.txt` files are read in name order and joined by line breaks; relative to the YAML file."
    )
    tokenizer: TokenizerSpec = Field(
        default_factory=lambda: TokenizerSpec(kind="char", lowercase=False),
        description="Tokenization, fitted on the training part. For a corpus `kind` defaults to `char` and `lowercase` to false (a character model also reports bits per character).",
    )
    sequence_length: int = Field(
        100,
        ge=2,
        description="Tokens per training sequence: the span of truncated back-propagation through time. A `stateful` lstm carries its state from one such span to the next.",
    )
    split: CorpusSplitSpec = Field(default_factory=CorpusSplitSpec, description="Train/validation/test division.")

    @field_validator("tokenizer", mode="before")
    @classmethod
    def _character_defaults(cls, value: Any) -> Any:
        """Unset tokenizer keys take the corpus defaults (characters, case kept), not the classifier's."""
        return {"kind": "char", "lowercase": False, **value} if isinstance(value, dict) else value


def _data_kind(value: Any) -> str:
    """The data spec's `kind`; `timeseries` when omitted (forecasting is the original task)."""
    return value.get("kind", "timeseries") if isinstance(value, dict) else getattr(value, "kind", "timeseries")


#: The data spec model of each `data.kind`.
DATA_SPECS: dict[str, type[BaseModel]] = {
    "timeseries": TimeSeriesDataSpec,
    "sequences": SequenceTableSpec,
    "images": ImagesSpec,
    "text": TextSpec,
    "audio": AudioSpec,
    "corpus": CorpusSpec,
}
DATA_KINDS = tuple(DATA_SPECS)
DataSpec = Annotated[
    Annotated[TimeSeriesDataSpec, Tag("timeseries")]
    | Annotated[SequenceTableSpec, Tag("sequences")]
    | Annotated[ImagesSpec, Tag("images")]
    | Annotated[TextSpec, Tag("text")]
    | Annotated[AudioSpec, Tag("audio")]
    | Annotated[CorpusSpec, Tag("corpus")],
    Discriminator(_data_kind),
]


# -------------------------------------------------------------------------- model

Activation = Literal["linear", "relu", "tanh", "sigmoid", "softmax", "gelu", "elu", "selu", "softplus"]


class LSTMLayer(Strict):
    """Keras `LSTM(units, return_sequences, ...)`."""

    units: int = Field(gt=0, description="Size of the hidden state.")
    return_sequences: bool = Field(
        False, description="Emit the output of every step (needed before another `lstm`); else only the last step's."
    )
    bidirectional: bool = Field(
        False, description="Also read the sequence backwards (Keras `Bidirectional`); the output size doubles."
    )
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Keras meaning: dropout on this layer's inputs during training."
    )
    recurrent_dropout: float = Field(
        0.0,
        ge=0.0,
        le=0.0,
        description="Refused when > 0: it would force a per-step Python loop instead of the fused LSTM kernel. Use `dropout`.",
    )
    stateful: bool = Field(
        False,
        description="Language models: carry (h, c) from one batch to the next along the text, detached (truncated back-propagation through time); it starts at zero at each pass over a part. Not with `bidirectional`.",
    )

    @model_validator(mode="after")
    def _stateful_reads_forwards(self) -> LSTMLayer:
        if self.stateful and self.bidirectional:
            raise ValueError(
                "stateful carries the state forwards along the text; a bidirectional layer also reads backwards, so it cannot be stateful"
            )
        return self


class DenseLayer(Strict):
    """Keras `Dense(units, activation)`; applied to the last axis."""

    units: int | None = Field(
        None, gt=0, description="Output size. On the last layer it may be omitted and is inferred (horizon × targets)."
    )
    activation: Activation = Field("linear", description="Activation applied after the affine map.")


class DropoutLayer(Strict):
    """Keras `Dropout(rate)`."""

    rate: float = Field(ge=0.0, lt=1.0, description="Fraction of inputs zeroed during training.")


class BatchNormLayer(Strict):
    """Keras `BatchNormalization()` over the feature axis."""

    momentum: float = Field(
        0.99,
        gt=0.0,
        lt=1.0,
        description="Keras meaning: weight of the old running statistics (PyTorch's momentum is 1 minus this).",
    )
    epsilon: float = Field(1e-3, gt=0.0, description="Added to the variance for numerical stability.")


class LayerNormLayer(Strict):
    """Keras `LayerNormalization()` over the feature axis."""

    epsilon: float = Field(1e-3, gt=0.0, description="Added to the variance for numerical stability.")


class EmbeddingLayer(Strict):
    """Keras `Embedding(vocabulary, dim)`: token ids to vectors; only as the first layer, for text."""

    dim: int = Field(gt=0, description="Size of each token's vector.")
    frozen: bool = Field(False, description="Keep the vectors at their initial values (no training).")


class LayerSpec(Strict):
    """One layer: a mapping with exactly one key naming its kind, e.g. `{lstm: {units: 64}}`."""

    embedding: EmbeddingLayer | None = Field(None, description="Token embedding (text only; first layer).")
    lstm: LSTMLayer | None = Field(None, description="A recurrent LSTM layer.")
    dense: DenseLayer | None = Field(None, description="A fully connected layer.")
    dropout: DropoutLayer | None = Field(None, description="A dropout layer.")
    batchnorm: BatchNormLayer | None = Field(None, description="Batch normalization over features.")
    layernorm: LayerNormLayer | None = Field(None, description="Layer normalization over features.")

    @model_validator(mode="before")
    @classmethod
    def _bare_kind_means_defaults(cls, value: Any) -> Any:
        """`- dense:` in YAML (a null value) means a dense layer with default arguments."""
        if isinstance(value, dict):
            return {key: {} if arg is None and key in cls.model_fields else arg for key, arg in value.items()}
        return value

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> LayerSpec:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            kinds = ", ".join(type(self).model_fields)
            raise ValueError(f"a layer must have exactly one of {kinds}, got {given or 'none'}")
        return self

    @model_serializer(mode="wrap")
    def _only_the_kind(self, handler: Any) -> dict[str, Any]:
        """Dump as written, `{lstm: {...}}`, so a dumped spec validates again."""
        return {key: value for key, value in handler(self).items() if value is not None}

    @property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)

    @property
    def args(self) -> Strict:
        return getattr(self, self.kind)


def _default_layers() -> list[LayerSpec]:
    return [LayerSpec(lstm=LSTMLayer(units=64)), LayerSpec(dense=DenseLayer())]


class ModelSpec(Strict):
    """The network, as a list of layers in the Keras vocabulary; the input size comes from the data."""

    layers: list[LayerSpec] = Field(
        default_factory=_default_layers,
        min_length=1,
        description="Layers in order; the first must be `lstm`, the last should be `dense`. Default: `[{lstm: {units: 64}}, {dense: {}}]`.",
    )
    l1: float = Field(0.0, ge=0.0, description="L1 penalty on all weights (not biases or norms), added to the loss.")
    l2: float = Field(
        0.0,
        ge=0.0,
        description="L2 penalty on all weights (not biases or norms), added to the loss (Keras `kernel_regularizer` meaning: l2 × sum of squares).",
    )


# -------------------------------------------------------------------------- train


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
        description="`cosine` anneals to `min_lr` over the epochs; `step` multiplies by `gamma` every `step_size` epochs; `plateau` multiplies by `gamma` after `patience` epochs without improvement; `onecycle` warms up then anneals per batch.",
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
        description="Clip the global gradient norm to this value (null: no clipping). On by default: it keeps LSTM training stable at no cost.",
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
        description="This machine's number, 0 to count - 1, usually given per machine with `--set train.nodes.rank=1`. Machine 0 hosts the rendezvous, logs metrics and writes checkpoints.",
    )
    endpoint: str = Field(
        description="`host:port` where machine 0 listens for the others (on that address only); every machine must reach it."
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
        description="Training loss. Forecasting: `mse` (default; the guide compiles with MSE), `mae` or `huber`, on scaled values. Classification and language models: `cross_entropy` (the default and only choice; the output softmax is folded into it).",
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
        description="CPU threads for the training process. Default 1: small LSTM steps run faster and steadier on one thread when anything else shares the machine.",
    )
    workers: int | Literal["auto"] = Field(
        1,
        description="Data-parallel training processes on this machine (PyTorch DDP): `auto` is one per GPU, or 1 without CUDA. `batch_size` stays the global batch: each worker takes its share of the rows, gradients are averaged, and worker 0 alone logs metrics and writes checkpoints. On CPU each worker uses `threads` cores.",
    )
    nodes: NodesSpec | None = Field(
        None, description="Machines taking part in one training run; null trains on this machine only."
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="How workers exchange gradients: `auto` is nccl on CUDA and gloo on CPU; nccl needs CUDA."
    )
    deterministic: bool = Field(
        False,
        description="Deterministic algorithms (`torch.use_deterministic_algorithms`, deterministic cuDNN, `CUBLAS_WORKSPACE_CONFIG`): the same seed, machine and workers give bit-identical weights, also across a kill and resume. Can be slower on GPU.",
    )
    checkpoint_every: int | None = Field(
        None,
        ge=1,
        description="Also checkpoint every this many batches (steps) within an epoch, so that a killed run loses at most that many; every epoch is checkpointed regardless.",
    )
    lstm_kernel: Literal["auto", "lstmflow", "torch"] = Field(
        "auto",
        description="Which LSTM implementation trains on a CPU: `lstmflow` is lstmflow's compiled CPU LSTM on the same `nn.LSTM` weights (same results up to float rounding; both directions, padded batches, carried state); `torch` is PyTorch's `nn.LSTM`; `auto` trains variable-length batches (up to half padding) in `lstmflow`, where packed `nn.LSTM` is 1.4-4× slower, and the rest in `nn.LSTM`, which was 3-10% faster on full-length batches in the training process; evaluation and prediction use `nn.LSTM`. Under bf16 autocast and on a GPU it is always `nn.LSTM` (cuDNN); `fit_result.json` records what ran (`lstm_kernels`).",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="Mixed precision through `torch.autocast`: `bf16` (CUDA or CPU) or `fp16` (CUDA only, with a gradient scaler). Weights and optimizer state stay fp32.",
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
        description="Seasonal period for MASE and the seasonal-naive baseline. Default: inferred from the time column's frequency (12 monthly, 4 quarterly, 52 weekly, 7 daily, 24 hourly), else 1.",
    )


#: Which data kinds each task can learn from.
TASK_DATA_KINDS = {
    "forecast": ("timeseries",),
    "classify": ("sequences", "images", "text", "audio"),
    "language_model": ("corpus",),
}
#: The losses each task can train on; the first is its default.
TASK_LOSSES = {
    "forecast": ("mse", "mae", "huber"),
    "classify": ("cross_entropy",),
    "language_model": ("cross_entropy",),
}


# ------------------------------------------------------------------------- search

#: The per-epoch validation metrics each task logs, which a search can optimise, and the way each improves.
SEARCH_METRICS = {
    "forecast": {"val_loss": "minimize"},
    "classify": {"val_loss": "minimize", "val_accuracy": "maximize"},
    "language_model": {"val_loss": "minimize", "val_perplexity": "minimize"},
}
#: The top-level sections a search may vary: the data are prepared once per search, the rest does not train.
SEARCHABLE_SECTIONS = ("model", "train")

# Aliases defined out of the class: a field named `int` or `float` shadows the builtin inside its class body.
Whole, Number = int, float


class SearchParam(Strict):
    """One searched key: exactly one of `int`, `float` or `categorical`, e.g. `{int: [16, 128], log: true}`."""

    int: list[Whole] | None = Field(None, description="`[low, high]`: whole numbers from low to high, both included.")
    float: list[Number] | None = Field(None, description="`[low, high]`: numbers from low to high.")
    categorical: list[Any] | None = Field(
        None, min_length=1, description="The values to choose from: numbers, text, true/false or null."
    )
    log: bool = Field(
        False,
        description="`int` and `float`: sample evenly on a log scale (low must be > 0), as for learning rates and layer sizes.",
    )
    step: Number | None = Field(
        None,
        gt=0,
        description="`int` and `float`: only low, low + step, low + 2 × step, … (a whole number for `int`; default 1 for `int`, any number for `float`). Not with `log`.",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> SearchParam:
        given = [kind for kind in ("int", "float", "categorical") if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of int, float and categorical, got {given or 'none'}")
        if self.categorical is not None:
            if self.log or self.step is not None:
                raise ValueError("log and step apply to int and float ranges, not to categorical")
            bad = [choice for choice in self.categorical if not isinstance(choice, (bool, int, float, str, type(None)))]
            if bad:
                raise ValueError(f"categorical choices must be numbers, text, true/false or null, got {bad[0]!r}")
            return self
        if len(getattr(self, given[0])) != 2:
            raise ValueError(f"{given[0]}: give [low, high], got {getattr(self, given[0])}")
        low, high = self.bounds
        if low >= high:
            raise ValueError(f"{given[0]}: low must be below high, got [{low}, {high}]")
        if self.log and low <= 0:
            raise ValueError(f"log needs low > 0, got {low}")
        if self.log and self.step is not None:
            raise ValueError("give log or step, not both")
        if self.int is not None and self.step is not None and self.step != round(self.step):
            raise ValueError(f"step of an int range must be a whole number, got {self.step}")
        return self

    @property
    def bounds(self) -> tuple[Any, Any]:
        """``(low, high)`` of a range."""
        low, high = self.int if self.int is not None else self.float
        return low, high

    def probe_values(self) -> list[Any]:
        """Values that stand for the whole entry when checking it against the pipeline: both ends, or every choice."""
        return list(self.categorical) if self.categorical is not None else list(self.bounds)

    def grid_values(self) -> list[Any] | None:
        """Every value of the entry, for `sampler: grid`; None for a range that has no finite grid."""
        if self.categorical is not None:
            return list(self.categorical)
        if self.log or (self.float is not None and self.step is None):
            return None
        low, high = self.bounds
        step = self.step or 1
        count = int((high - low) / step + 1e-9) + 1  # the tolerance keeps high when float division falls just short
        return [type(low)(low + index * step) for index in range(count)]


class SearchSpec(Strict):
    """A hyperparameter search (Optuna): trials train the pipeline with sampled values of `space`, the best is registered."""

    trials: int = Field(
        20,
        gt=0,
        description="Trials the study runs in all, over every call: completed, pruned and failed trials count (an interrupted one is run again and counts once). Raise it to continue a finished search.",
    )
    timeout: float | None = Field(
        None,
        gt=0,
        description="Seconds for this call: no trial starts after it and running ones finish; the next call continues the study.",
    )
    sampler: Literal["tpe", "random", "grid", "cmaes"] = Field(
        "tpe",
        description="How values are chosen: `tpe` (Bayesian, Optuna's default), `random`, `grid` (every combination, in random order; needs `categorical`, `int` or stepped `float` entries; `trials` is capped at the grid's size) or `cmaes` (CMA-ES, for numeric entries). Seeded from `train.seed` and each trial's number: the same search draws the same values.",
    )
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median",
        description="Stops unpromising trials from the per-epoch `metric`: `median` (worse than the median of completed trials at the same epoch), `hyperband` or `none`.",
    )
    startup_trials: int = Field(5, ge=0, description="`median`: trials that must complete before any is pruned.")
    min_epochs: int = Field(
        1, ge=1, description="Epochs every trial trains before it may be pruned (`hyperband`: its smallest budget)."
    )
    metric: str = Field(
        "val_loss",
        description="The per-epoch validation metric to optimise: `val_loss` for every task, `val_accuracy` (classify) or `val_perplexity` (language_model). A trial's value is the metric at its best epoch (lowest val_loss: the weights it keeps).",
    )
    direction: Literal["minimize", "maximize"] | None = Field(
        None, description="Whether `metric` should go down or up. Default: up for accuracy, down for the rest."
    )
    parallel: int = Field(
        1,
        ge=1,
        description="Trials training at once on this machine, each in its own process (each uses `train.threads` cores).",
    )
    storage: str | None = Field(
        None,
        description="Where the study lives: null for a journal file in the project (`runs/NAME/optuna.journal`, safe for several local processes), or an SQLAlchemy URL (e.g. `postgresql://user:pass@host/db`) that workers on several machines share.",
    )
    space: dict[str, SearchParam] = Field(
        min_length=1,
        description="The searched keys, each a key of the pipeline as `--set` writes it (`model.layers[0].lstm.units`, `train.optimizer.lr`; `model.` and `train.` keys only) mapped to `{int: [low, high]}`, `{float: [low, high]}` or `{categorical: [a, b, …]}`, with `log: true` or `step:` for ranges.",
    )

    @field_validator("storage")
    @classmethod
    def _a_url(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError(
                f"must be an SQLAlchemy URL such as postgresql://user:pass@host/db or sqlite:///path, got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _grid_is_finite(self) -> SearchSpec:
        if self.sampler == "grid":
            endless = [key for key, param in self.space.items() if param.grid_values() is None]
            if endless:
                raise ValueError(
                    f"sampler grid needs a finite set of values for every key; give {endless[0]} choices, an int range or a float step (and no log)"
                )
        return self

    def resolved_direction(self) -> Literal["minimize", "maximize"]:
        """The given direction, else the one the metric improves in."""
        return self.direction or ("maximize" if self.metric.endswith("accuracy") else "minimize")

    def grid(self) -> dict[str, list[Any]]:
        """Every value of every key, for `sampler: grid`."""
        return {key: param.grid_values() or [] for key, param in self.space.items()}


# ------------------------------------------------------------------ operations

#: Per task: the test metrics a champion can be chosen by (each as evaluation logs it, without `test_`), and the way
#: each improves; the first is the default.
PROMOTE_METRICS = {
    "forecast": {"mae": "minimize", "rmse": "minimize", "smape": "minimize", "mase": "minimize"},
    "classify": {"accuracy": "maximize", "macro_f1": "maximize", "log_loss": "minimize"},
    "language_model": {"cross_entropy": "minimize", "perplexity": "minimize", "bits_per_character": "minimize"},
}
#: The significance test each task's gate uses under `test: auto`.
PROMOTE_TESTS = {"forecast": "diebold_mariano", "classify": "mcnemar", "language_model": "none"}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(value: Any) -> float:
    """Seconds in ``3600``, ``"90m"``, ``"6h"``, ``"1d"`` or ``"1w"``; a ValueError naming the value otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match.group(1)) * _DURATION_SECONDS[match.group(2)]
    else:
        raise ValueError(f"must be seconds or a number with a unit s, m, h, d or w (e.g. '6h', '1d'), got {value!r}")
    if seconds < 60:
        raise ValueError(f"must be at least one minute, got {value!r}")
    return seconds


#: Sections that say when a pipeline runs and what happens to its model afterwards, not what it trains.
OPERATIONS = {"schedule", "promote"}


class ScheduleSpec(Strict):
    """Keras users schedule nothing; a production pipeline retrains as new data arrive: a Prefect deployment."""

    cron: str | None = Field(
        None,
        description="Cron expression of the retraining times, e.g. `0 3 * * 1` (Mondays at 03:00), read in `timezone`. Give `cron` or `interval`.",
    )
    interval: float | None = Field(
        None,
        description="Time between retrainings: seconds, or a number with a unit, e.g. `6h`, `1d`, `1w` (at least a minute). Give `cron` or `interval`.",
    )
    timezone: str = Field(
        "UTC",
        description="IANA time zone of the schedule, e.g. `Europe/Berlin` (cron times follow its daylight-saving changes).",
    )
    active: bool = Field(True, description="False deploys the schedule paused (resume it in the Prefect UI).")
    pool: str = Field(
        "local",
        description="The Prefect work pool whose worker runs the retraining: `local` is the one `lstmflow up` starts; `gpu` for GPU machines.",
    )

    @field_validator("interval", mode="before")
    @classmethod
    def _interval_seconds(cls, value: Any) -> Any:
        return None if value is None else duration_seconds(value)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from cronsim import CronSim, CronSimError

        try:
            CronSim(value, datetime.datetime(2026, 1, 1))
        except CronSimError as exc:
            raise ValueError(f"not a valid cron expression {value!r}: {exc}") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as 'UTC' or 'Europe/Berlin'"
            ) from None
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduleSpec:
        if (self.cron is None) == (self.interval is None):
            raise ValueError("give exactly one of cron (e.g. '0 3 * * 1') or interval (e.g. '1d')")
        return self


class PromoteSpec(Strict):
    """The retraining gate: a new model version replaces the champion only when it is better on the same test data."""

    alias: str = Field(
        "champion", description="The MLflow model alias the gate moves; `lstmflow serve NAME` serves it."
    )
    metric: str | None = Field(
        None,
        description="Test metric that decides. Default per task: `mae` (forecast; also `rmse`, `smape`, `mase`), `accuracy` (classify; also `macro_f1`, `log_loss`), `cross_entropy` (language_model; also `perplexity`, `bits_per_character`).",
    )
    min_gain: float = Field(
        0.0,
        ge=0.0,
        description="Smallest relative improvement over the champion's value that promotes, e.g. 0.02 for 2%.",
    )
    test: Literal["auto", "mcnemar", "diebold_mariano", "none"] = Field(
        "auto",
        description="Significance test on the paired test predictions: `auto` is McNemar's for classification and Diebold–Mariano's for forecasts; language models have none. `none` decides on the metric alone.",
    )
    alpha: float = Field(
        0.05, gt=0.0, lt=1.0, description="Significance level: the new version must be better with p below it."
    )

    def resolved_metric(self, task: str) -> str:
        return self.metric or next(iter(PROMOTE_METRICS[task]))

    def resolved_direction(self, task: str) -> Literal["minimize", "maximize"]:
        return PROMOTE_METRICS[task][self.resolved_metric(task)]  # type: ignore[return-value]

    def resolved_test(self, task: str) -> str:
        return PROMOTE_TESTS[task] if self.test == "auto" else self.test


class PipelineSpec(Strict):
    """One named pipeline: data, model, training and evaluation."""

    name: str = Field(
        description="The pipeline's name (its key under `pipelines`); also the MLflow experiment and registered model name."
    )
    task: Literal["forecast", "classify", "language_model"] = Field(
        "forecast",
        description="What the model learns: `forecast` (data kind `timeseries`), `classify` (kinds `sequences`, `images`, `text`, `audio`) or `language_model` (kind `corpus`: the next token at every step).",
    )
    description: str = Field("", description="Free text shown by `lstmflow list`.")
    data: DataSpec = Field(description="Where the data are and how they become model inputs.")
    model: ModelSpec = Field(
        default_factory=ModelSpec,
        description="The network. Default: one `lstm` of 64 units and a `dense` output layer; for token ids (kinds `text` and `corpus`) an `embedding` of 64 first; for a language model a stateful `lstm` of 256 units that returns sequences.",
    )
    train: TrainSpec = Field(default_factory=TrainSpec, description="Training settings.")
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec, description="Evaluation settings.")
    search: SearchSpec | None = Field(
        None,
        description="Hyperparameter search with Optuna: `lstmflow run` (and `lstmflow search`) runs its trials, then evaluates and registers the best trial's model. Null: train once.",
    )
    schedule: ScheduleSpec | None = Field(
        None,
        description="Retrain on a schedule: `lstmflow deploy` makes it a Prefect deployment of this pipeline, run by a worker of `pool`. Null: no schedule (runs start by hand, from the CLI or the Prefect UI).",
    )
    promote: PromoteSpec = Field(
        default_factory=PromoteSpec,
        description="When a newly registered model version becomes the champion (the model alias that `lstmflow serve NAME` and `predict` use): compared with the current champion on the same test data.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_model_for_the_data(cls, value: Any) -> Any:
        """Without a `model`, token ids get an embedding first, and a language model a stateful sequence lstm."""
        if not isinstance(value, dict) or "model" in value or not isinstance(value.get("data"), dict):
            return value
        kind, task = value["data"].get("kind"), value.get("task")
        if task == "language_model":
            layers = [
                {"embedding": {"dim": 64}},
                {"lstm": {"units": 256, "return_sequences": True, "stateful": True}},
                {"dense": {"activation": "softmax"}},
            ]
        elif kind == "text":
            layers = [{"embedding": {"dim": 64}}, {"lstm": {"units": 64}}, {"dense": {"activation": "softmax"}}]
        else:
            return value
        return {**value, "model": {"layers": layers}}

    @model_validator(mode="after")
    def _task_fits_the_data(self) -> PipelineSpec:
        wanted = TASK_DATA_KINDS[self.task]
        if self.data.kind not in wanted:
            raise ValueError(
                f"task {self.task!r} needs data.kind {', '.join(map(repr, wanted))}, got {self.data.kind!r}"
            )
        lstms = {i: layer.lstm for i, layer in enumerate(self.model.layers) if layer.lstm is not None}
        backwards = [i for i, lstm in lstms.items() if lstm.bidirectional]
        if backwards and self.task == "language_model":
            raise ValueError(
                f"model.layers[{backwards[0]}].lstm.bidirectional: a language model predicts each next token from "
                "the ones before it; a backward reading would see the very token it must predict"
            )
        stateful = [i for i, lstm in lstms.items() if lstm.stateful]
        if stateful and self.task != "language_model":
            raise ValueError(
                f"model.layers[{stateful[0]}].lstm.stateful: carries the state across consecutive batches of one text, "
                f"which only task 'language_model' has; task {self.task!r} has independent samples"
            )
        losses = TASK_LOSSES[self.task]
        if self.train.loss is not None and self.train.loss not in losses:
            raise ValueError(
                f"train.loss for task {self.task!r} must be one of {', '.join(map(repr, losses))}, got {self.train.loss!r}"
            )
        return self

    @field_validator("search")
    @classmethod
    def _search_fits_the_pipeline(cls, search: SearchSpec | None, info: ValidationInfo) -> SearchSpec | None:
        """The metric is one the task logs, and every space key is a key of this pipeline that takes its values.

        Each key is checked by setting each of its probe values (both ends of a range, every choice) on the
        pipeline without its search and validating that, so a trial can never fail on its spec.
        """
        if search is None or not {"name", "task", "data", "model", "train", "evaluate"} <= info.data.keys():
            return search  # an earlier section is invalid and reported; the space cannot be checked against it
        metrics = SEARCH_METRICS[info.data["task"]]
        if search.metric not in metrics:
            raise ValueError(
                f"metric for task {info.data['task']!r} must be one of {', '.join(map(repr, metrics))}, got {search.metric!r}"
            )
        base = {
            key: value.model_dump(mode="json") if isinstance(value, BaseModel) else value
            for key, value in info.data.items()
        }
        problems = [problem for key, param in search.space.items() if (problem := _space_key_problem(key, param, base))]
        if problems:
            raise ValueError("; ".join(problems))
        return search

    @field_validator("promote")
    @classmethod
    def _promote_fits_task(cls, promote: PromoteSpec, info: ValidationInfo) -> PromoteSpec:
        task = info.data.get("task")
        if task not in PROMOTE_METRICS:
            return promote
        metrics = PROMOTE_METRICS[task]
        if promote.metric is not None and promote.metric not in metrics:
            raise ValueError(
                f"metric for task {task!r} must be one of {', '.join(map(repr, metrics))}, got {promote.metric!r}"
            )
        fitting = {"forecast": "diebold_mariano", "classify": "mcnemar"}.get(task)
        if promote.test not in ("auto", "none", fitting):
            raise ValueError(
                f"test {promote.test!r} does not fit task {task!r}: use {fitting or 'none'!r}, 'auto' or 'none'"
            )
        return promote

    @property
    def loss(self) -> str:
        """The training loss, with the task's default filled in."""
        return self.train.loss or TASK_LOSSES[self.task][0]

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", value):
            raise ValueError(f"must start with a letter and hold only letters, digits, '_' and '-', got {value!r}")
        return value

    def spec_hash(self) -> str:
        """A stable hash of what the resolved spec trains (not its schedule or promotion rule); a cache key ingredient."""
        return hashlib.sha256(self.model_dump_json(exclude=OPERATIONS).encode()).hexdigest()[:16]

    def flat_params(self) -> dict[str, str]:
        """The resolved spec flattened to dotted keys as logged to MLflow, which allows no brackets: ``model.layers.0.lstm.units``."""
        flat = flatten(
            self.model_dump(mode="json", exclude={"search", *OPERATIONS})
        )  # unset keys too: every run logs the same keys
        return {dotted_key(key): value for key, value in flat.items()}


def _space_key_problem(key: str, param: SearchParam, base: dict[str, Any]) -> str | None:
    """Why ``key`` cannot be searched with ``param`` on the pipeline ``base`` (a dump without `search`), if it cannot."""
    section = key.split(".")[0].split("[")[0]
    if section not in SEARCHABLE_SECTIONS:
        why = {
            "data": "the data are prepared once per search (give each data variant its own pipeline)",
            "search": "it configures the search itself",
        }.get(section, "only model.* and train.* keys change what a trial trains")
        return f"space key {key!r}: cannot be searched: {why}"
    try:
        parts = parse_key(key)
    except ConfigError as exc:
        return f"space key {key!r}: {exc.problems[0]}"
    node: Any = base
    for part in parts:
        found = (
            part < len(node)
            if isinstance(part, int) and isinstance(node, list)
            else isinstance(node, dict) and part in node
        )
        if not found:
            close = difflib.get_close_matches(key, list(flatten(base)), n=1)
            return f"space key {key!r}: no such key in the pipeline" + (
                f" (did you mean {close[0]!r}?)" if close else ""
            )
        node = node[part]
    for value in param.probe_values():
        try:
            PipelineSpec.model_validate(set_key(base, key, value, f"search.space.{key}"))
        except ConfigError as exc:
            return f"space key {key!r}: {exc.problems[0]}"
        except ValidationError as exc:
            error = exc.errors()[0]
            return f"space key {key!r}: the value {value!r} is refused at {_location(error['loc'])}: {_describe(error)}"
    return None


class ConfigFile(Strict):
    """The whole `pipelines.yaml`."""

    defaults: dict[str, Any] = Field(
        default_factory=dict, description="Keys merged into every pipeline (mappings merge, lists and values replace)."
    )
    pipelines: dict[str, dict[str, Any]] = Field(min_length=1, description="Named pipelines; each is a pipeline spec.")


# ------------------------------------------------------------------- loading


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings and lists to ``{"a.b[0].c": "value"}``."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(tree, list) and tree and any(isinstance(item, (dict, list)) for item in tree):
        out = {}
        for index, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}[{index}]"))
        return out
    return {prefix: json.dumps(tree) if isinstance(tree, (list, type(None))) else str(tree)}


def dotted_key(key: str) -> str:
    """A key as MLflow names allow it, without brackets: ``model.layers[0].lstm.units`` → ``model.layers.0.lstm.units``."""
    return re.sub(r"\[(\d+)\]", r".\1", key)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``: mappings merge, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_key(key: str) -> list[str | int]:
    """``model.layers[0].lstm.units`` → ``["model", "layers", 0, "lstm", "units"]``."""
    parts: list[str | int] = []
    for match in _PATH_PART.finditer(key):
        parts.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
    if not parts or "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in parts).lstrip(".") != key:
        raise ConfigError(f"bad key {key!r}: use dotted names with [index] for lists, e.g. model.layers[0].lstm.units")
    return parts


def apply_override(tree: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one ``key=value`` (value parsed as YAML) to a copy of ``tree``."""
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise ConfigError(f"bad override {assignment!r}: expected key=value, e.g. train.epochs=5")
    return set_key(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None, f"--set {assignment}")


def set_key(tree: dict[str, Any], key: str, value: Any, origin: str) -> dict[str, Any]:
    """A copy of ``tree`` with ``key`` (``model.layers[0].lstm.units``) set to ``value``; errors name ``origin``."""
    parts = parse_key(key)
    tree = copy.deepcopy(tree)
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        nxt = parts[depth + 1]
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise ConfigError(f"{origin}: {key.split('[')[0]} has no item [{part}]")
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"{origin}: cannot index into a {type(node).__name__}")
            node = node.setdefault(part, [] if isinstance(nxt, int) else {})
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise ConfigError(f"{origin}: no item [{last}] to set")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"{origin}: cannot set a key on a {type(node).__name__}")
    return tree


def _user_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """An error location as the user wrote it: without validator names and the data union's tag."""
    kept: list[Any] = []
    for part in loc:
        if isinstance(part, str) and (part.startswith("function-") or (kept[-1:] == ["data"] and part in DATA_KINDS)):
            continue
        kept.append(part)
    return tuple(kept)


def _location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in _user_loc(loc):
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _describe(error: dict[str, Any]) -> str:
    """Turn one pydantic error into lstmflow's wording: what is wanted, and what was given."""
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    got = f", got {value!r}" if not isinstance(value, (dict, list)) else ""
    bounds = {
        "greater_than": "> {gt}",
        "greater_than_equal": ">= {ge}",
        "less_than": "< {lt}",
        "less_than_equal": "<= {le}",
    }
    if kind in bounds:
        return f"must be {bounds[kind].format(**{k: f'{v:g}' if isinstance(v, float) else v for k, v in ctx.items()})}{got}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}{got}"
    if kind == "union_tag_invalid":
        return f"kind must be one of {ctx['expected_tags']}, got {ctx['tag']!r}"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind in {"int_parsing", "int_type", "int_from_float"}:
        return f"must be a whole number{got}"
    if kind in {"float_parsing", "float_type"}:
        return f"must be a number{got}"
    if kind in {"bool_parsing", "bool_type"}:
        return f"must be true or false{got}"
    if kind in {"string_type"}:
        return f"must be text{got}"
    if kind in {"list_type"}:
        return f"must be a list{got}"
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return f"must be a mapping{got}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg'][0].lower()}{error['msg'][1:]}{got}"


def _suggest(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    """For an unknown key, name the closest allowed key when there is one."""
    data = raw.get("data")
    model = _model_at(loc[:-1], data.get("kind", "timeseries") if isinstance(data, dict) else "timeseries")
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1) if model else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The spec model inside a type annotation (``X | None``, ``list[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for arg in getattr(annotation, "__args__", ()) if (m := _model_in(arg))), None)


def _model_at(loc: tuple[Any, ...], data_kind: str) -> type[BaseModel] | None:
    """The spec model that sits at a location inside a pipeline, if any."""
    model: type[BaseModel] | None = PipelineSpec
    for part in (p for p in loc if not isinstance(p, int)):
        field = model.model_fields.get(str(part)) if model else None
        model = (
            DATA_SPECS.get(data_kind)
            if model is PipelineSpec and part == "data"
            else _model_in(field.annotation)
            if field
            else None
        )
    return model


def _related(where: str, key: str) -> bool:
    """Whether an error at ``where`` concerns the override of ``key`` (same key, inside it or around it)."""
    shorter, longer = sorted((where, key), key=len)
    return longer == shorter or longer.startswith((shorter + ".", shorter + "["))


def _paths_resolved(mapping: dict[str, Any], key: str, base_dir: Path) -> dict[str, Any]:
    """``mapping`` with its path at ``key`` made absolute against ``base_dir`` (the YAML file's folder)."""
    if not isinstance(mapping.get(key), str):
        return mapping
    path = Path(mapping[key]).expanduser()
    return {**mapping, key: str(path if path.is_absolute() else (base_dir / path).resolve())}


def validate_pipeline(
    name: str, raw: dict[str, Any], base_dir: Path, origin: dict[str, str] | None = None
) -> PipelineSpec:
    """Validate one merged pipeline mapping; data paths resolve against ``base_dir``."""
    origin = origin or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"pipelines.{name}: must be a mapping, got {raw!r}")
    raw = {**raw, "name": name}
    data = raw.get("data")
    if isinstance(data, dict):
        data = raw["data"] = _paths_resolved(data, "path", base_dir)
        split = data.get("split")
        if isinstance(split, dict) and isinstance(split.get("files"), dict):
            files = _paths_resolved(_paths_resolved(split["files"], "val", base_dir), "test", base_dir)
            data["split"] = {**split, "files": files}
    try:
        return PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = _user_loc(error["loc"])
            where = _location(loc)
            message = _describe(error)
            if error["type"] == "extra_forbidden":
                message += _suggest(loc, raw)
            note = next((f" (from --set {a})" for k, a in origin.items() if _related(where, k)), "")
            problems.append(
                f"pipelines.{name}.{where}: {message}{note}" if where else f"pipelines.{name}: {message}{note}"
            )
        raise ConfigError(problems) from None


class Config:
    """A loaded ``pipelines.yaml``: raw mappings merged with defaults, validated on demand."""

    def __init__(self, path: Path, raw: ConfigFile) -> None:
        self.path = path
        self.raw = raw

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"no pipelines file at {path} (pass --config FILE or run from the project folder)")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}", source=str(path)) from None
        if not isinstance(tree, dict):
            raise ConfigError(
                f"the top level must be a mapping with `pipelines`, got {type(tree).__name__}", source=str(path)
            )
        try:
            raw = ConfigFile.model_validate(tree)
        except ValidationError as exc:
            problems = [f"{_location(tuple(e['loc']))}: {_describe(e)}" for e in exc.errors()]
            raise ConfigError(problems, source=str(path)) from None
        return cls(path, raw)

    @property
    def names(self) -> list[str]:
        return list(self.raw.pipelines)

    def merged(self, name: str, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, str]]:
        """The pipeline's mapping with defaults and overrides applied, and where each override came from."""
        if name not in self.raw.pipelines:
            close = difflib.get_close_matches(name, self.names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"no pipeline named {name!r} in {self.path}{hint}; known: {', '.join(self.names)}")
        tree = deep_merge(self.raw.defaults, self.raw.pipelines[name] or {})
        origin: dict[str, str] = {}
        for assignment in overrides:
            tree = apply_override(tree, assignment)
            origin[assignment.partition("=")[0].strip()] = assignment
        return tree, origin

    def pipeline(self, name: str, overrides: list[str] | tuple[str, ...] = ()) -> PipelineSpec:
        tree, origin = self.merged(name, overrides)
        try:
            return validate_pipeline(name, tree, self.path.parent, origin)
        except ConfigError as exc:
            raise ConfigError(exc.problems, source=str(self.path)) from None

    def all(self) -> dict[str, PipelineSpec]:
        """Every pipeline validated; all problems of all pipelines in one error."""
        specs: dict[str, PipelineSpec] = {}
        problems: list[str] = []
        for name in self.names:
            try:
                tree, origin = self.merged(name)
                specs[name] = validate_pipeline(name, tree, self.path.parent, origin)
            except ConfigError as exc:
                problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems, source=str(self.path))
        return specs
