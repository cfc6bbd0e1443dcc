"""The `model` section: the network as a Keras-style list of layers, one spec per layer kind."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_serializer, model_validator
from typing_extensions import TypeAliasType

from lstmflow.config.base import Strict

#: The activations a dense layer accepts, by their Keras names.
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
        description=(
            "Refused when > 0: it would force a per-step Python loop instead of the fused LSTM kernel. Use `dropout`."
        ),
    )
    stateful: bool = Field(
        False,
        description=(
            "Language models: carry (h, c) from one batch to the next along the text, detached (truncated "
            "back-propagation through time); it starts at zero at each pass over a part. Not with `bidirectional`."
        ),
    )

    @model_validator(mode="after")
    def _stateful_reads_forwards(self) -> LSTMLayer:
        if self.stateful and self.bidirectional:
            raise ValueError(
                "stateful carries the state forwards along the text; a bidirectional layer also reads backwards, "
                "so it cannot be stateful"
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
        0.9,
        gt=0.0,
        lt=1.0,
        description=(
            "Keras meaning: weight of the old running statistics (PyTorch's momentum is 1 minus this). Default 0.9, "
            "PyTorch's own default, not Keras' 0.99: a run of a few hundred steps on small data moves its weights "
            "faster than a 0.99 average follows, and evaluation would use statistics of weights long gone."
        ),
    )
    epsilon: float = Field(1e-3, gt=0.0, description="Added to the variance for numerical stability.")


class LayerNormLayer(Strict):
    """Keras `LayerNormalization()` over the feature axis."""

    epsilon: float = Field(1e-3, gt=0.0, description="Added to the variance for numerical stability.")


class EmbeddingLayer(Strict):
    """Keras `Embedding(vocabulary, dim)`: token ids to vectors; only as the first layer, for text."""

    dim: int = Field(gt=0, description="Size of each token's vector.")
    frozen: bool = Field(False, description="Keep the vectors at their initial values (no training).")
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "Fraction of token occurrences whose whole vector is zeroed during training (the rest scaled up), as "
            "Keras `Dropout(rate, noise_shape=(None, None, 1))` after the embedding: the model cannot lean on any "
            "single word. Default 0 (none)."
        ),
    )


class ActivationLayer(Strict):
    """Keras `Activation(activation)`: a function applied to every value, e.g. after a batchnorm."""

    activation: Activation = Field(
        description="The function, by its Keras name; `- activation: relu` is short for `{activation: relu}`."
    )


class Conv1DLayer(Strict):
    """Keras `Conv1D(filters, kernel_size, strides, padding, activation)`: a convolution over time."""

    filters: int = Field(gt=0, description="Output features per step (the number of kernels).")
    kernel_size: int = Field(gt=0, description="Steps each kernel reads.")
    strides: int = Field(1, gt=0, description="Steps between kernel positions; above 1 the sequence shortens.")
    padding: Literal["same", "valid"] = Field(
        "same",
        description=(
            "`same` (the default, unlike Keras' `valid`): zeros around each sample, so it keeps ceil(steps / "
            "strides) steps and no short sample vanishes; `valid`: kernels only where they fit, (steps − "
            "kernel_size) // strides + 1 steps."
        ),
    )
    activation: Activation = Field("linear", description="Activation applied after the convolution.")


class Pool1DLayer(Strict):
    """Keras `MaxPooling1D` / `AveragePooling1D(pool_size, strides, padding)` over time."""

    pool_size: int = Field(2, gt=0, description="Steps in each window.")
    strides: int | None = Field(None, gt=0, description="Steps between windows; null: `pool_size`.")
    padding: Literal["valid", "same"] = Field(
        "valid",
        description=(
            "`valid` (Keras' default): whole windows only; `same`: also the last partial windows, ceil(steps / "
            "strides) steps (a partial window covers only the sample's own steps)."
        ),
    )


class GlobalPoolLayer(Strict):
    """Keras `GlobalMaxPooling1D()` / `GlobalAveragePooling1D()`: one vector per sample from a sequence, over each
    sample's own steps only (padding never wins a max or counts in a mean)."""


class AttentionPoolLayer(Strict):
    """Learned attention over time (Yang et al. 2016): a weighted mean of the steps, weights from a small tanh layer,
    padded steps weighted 0. Not a Keras built-in."""

    units: int | None = Field(
        None, gt=0, description="Size of the scoring layer's hidden tanh layer; null: the input's width."
    )


class AttentionLayer(Strict):
    """Attention of a translation decoder over every encoder step (Luong et al. 2015, global attention): each
    decoder output scores the source steps, their weighted mean (padding weighted 0) joins the output, and a tanh
    layer of the lstm's units mixes the two. `model.decoder` only, after its last lstm."""

    score: Literal["luong", "bahdanau"] = Field(
        "luong",
        description=(
            "How a decoder output scores an encoder step: `luong`, a bilinear product (Keras `Attention` with a "
            "learned kernel); `bahdanau`, a small tanh layer over both (Keras `AdditiveAttention`)."
        ),
    )


class Conv2DLayer(Strict):
    """Keras `Conv2D(filters, kernel_size, strides, padding, activation)` over a frame's height and width; only inside
    `time_distributed`, which applies it to every frame."""

    filters: int = Field(gt=0, description="Output channels (the number of kernels).")
    kernel_size: int = Field(gt=0, description="Height and width of each kernel, in pixels.")
    strides: int = Field(1, gt=0, description="Pixels between kernel positions, both ways; above 1 the frame shrinks.")
    padding: Literal["same", "valid"] = Field(
        "same",
        description=(
            "`same` (the default, unlike Keras' `valid`): zeros around the frame, ceil(size / strides) positions "
            "each way; `valid`: kernels only where they fit."
        ),
    )
    activation: Activation = Field("linear", description="Activation applied after the convolution.")


class Pool2DLayer(Strict):
    """Keras `MaxPooling2D` / `AveragePooling2D(pool_size, strides, padding)` over a frame; only inside
    `time_distributed`."""

    pool_size: int = Field(2, gt=0, description="Height and width of each window, in pixels.")
    strides: int | None = Field(None, gt=0, description="Pixels between windows; null: `pool_size`.")
    padding: Literal["valid", "same"] = Field(
        "valid",
        description=(
            "`valid` (Keras' default): whole windows only; `same`: also the partial windows at the edges, ceil(size "
            "/ strides) each way (a partial window covers only the frame's own pixels)."
        ),
    )


class FlattenLayer(Strict):
    """Keras `Flatten()`: a frame's (height, width, channels) values as one vector, channels last; only inside
    `time_distributed`."""


class TimeDistributedLayer(Strict):
    """Keras `TimeDistributed(...)` around a per-frame network: its layers read each frame of a video as an image
    (height, width, channels) and must end in one vector per frame (`flatten` or a global pool); the frames' vectors
    then form the sequence the next layers (an lstm) read. Only as the first layer."""

    layers: list[LayerSpec] = Field(
        min_length=1,
        description=(
            "The per-frame layers, in order: `conv2d`, `max_pool2d`, `average_pool2d`, `batchnorm`, `activation` and "
            "`dropout` on the image, then `flatten`, `global_average_pool` or `global_max_pool` (over the frame's "
            "pixels), then optionally `dense`, `dropout`, `batchnorm`, `layernorm` and `activation` on the vector."
        ),
    )
    input_shape: list[int] | None = Field(
        None,
        min_length=3,
        max_length=3,
        description=(
            "`[height, width, channels]` of each frame. Filled in from the data for `data.kind: video`; give it only "
            "to read another kind's steps as frames (height × width × channels must equal the features per step)."
        ),
    )


class LayerSpec(Strict):
    """One layer: a mapping with exactly one key naming its kind, e.g. `{lstm: {units: 64}}`."""

    embedding: EmbeddingLayer | None = Field(None, description="Token embedding (text only; first layer).")
    lstm: LSTMLayer | None = Field(None, description="A recurrent LSTM layer.")
    dense: DenseLayer | None = Field(None, description="A fully connected layer.")
    dropout: DropoutLayer | None = Field(None, description="A dropout layer.")
    batchnorm: BatchNormLayer | None = Field(None, description="Batch normalization over features.")
    layernorm: LayerNormLayer | None = Field(None, description="Layer normalization over features.")
    activation: ActivationLayer | None = Field(None, description="An activation function as a layer of its own.")
    conv1d: Conv1DLayer | None = Field(None, description="A convolution over time.")
    max_pool1d: Pool1DLayer | None = Field(None, description="Max pooling over windows of steps.")
    average_pool1d: Pool1DLayer | None = Field(None, description="Average pooling over windows of steps.")
    global_max_pool: GlobalPoolLayer | None = Field(None, description="Each feature's maximum over all steps.")
    global_average_pool: GlobalPoolLayer | None = Field(None, description="Each feature's mean over all steps.")
    attention_pool: AttentionPoolLayer | None = Field(
        None, description="A learned attention-weighted mean over all steps."
    )
    attention: AttentionLayer | None = Field(
        None, description="Encoder–decoder attention (task translate; in `model.decoder`, after its last lstm)."
    )
    conv2d: Conv2DLayer | None = Field(None, description="A convolution over each frame (in `time_distributed`).")
    max_pool2d: Pool2DLayer | None = Field(None, description="Max pooling over a frame (in `time_distributed`).")
    average_pool2d: Pool2DLayer | None = Field(
        None, description="Average pooling over a frame (in `time_distributed`)."
    )
    flatten: FlattenLayer | None = Field(None, description="A frame as one vector (in `time_distributed`).")
    time_distributed: TimeDistributedLayer | None = Field(
        None, description="A per-frame network applied to every frame of a video (first layer only)."
    )
    branches: list[Branch] | None = Field(
        None,
        min_length=2,
        description=(
            "Two or more lists of layers (each layer with the keys of `model.layers[]`) that each read this point's "
            "input; their outputs are concatenated on the feature axis (Keras functional API's `Concatenate`), e.g. "
            "an lstm beside convolutions (LSTM-FCN). "
            "Every branch must end alike: one vector per sample (e.g. a global pool), or sequences of the same steps."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_kind_means_defaults(cls, value: Any) -> Any:
        """`- dense:` in YAML (a null value) means a dense layer with default arguments; `- activation: relu` is
        short for `{activation: {activation: relu}}`."""
        if isinstance(value, dict):
            value = {key: {} if arg is None and key in cls.model_fields else arg for key, arg in value.items()}
            if isinstance(value.get("activation"), str):
                value["activation"] = {"activation": value["activation"]}
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
    def args(self) -> Strict | list[list[LayerSpec]]:
        return getattr(self, self.kind)


#: One branch of a `branches` layer: a list of layers (a named alias, so that a layer may hold layers).
Branch = TypeAliasType("Branch", Annotated[list[LayerSpec], Field(min_length=1)])
LayerSpec.model_rebuild()
TimeDistributedLayer.model_rebuild()


def _conv_block(filters: int, kernel_size: int) -> list[dict[str, Any]]:
    return [{"conv1d": {"filters": filters, "kernel_size": kernel_size}}, {"batchnorm": {}}, {"activation": "relu"}]


#: The default classifier of values over time (data kinds sequences, images read by rows, audio features): LSTM-FCN
#: (Karim et al. 2017), an lstm beside a fully convolutional network (the paper's conv 128-8, 256-5, 128-3 at half
#: their widths, each with batchnorm and relu, then global average pooling). The paper's lstm reads the series as one
#: step of T values ("dimension shuffle") with 8-128 cells; here it reads the steps in time order, as every lstmflow
#: input arrives, with 64 cells.
SEQUENCE_CLASSIFIER_LAYERS: list[dict[str, Any]] = [
    {
        "branches": [
            [{"lstm": {"units": 64}}, {"dropout": {"rate": 0.8}}],
            [*_conv_block(64, 8), *_conv_block(128, 5), *_conv_block(64, 3), {"global_average_pool": {}}],
        ]
    },
    {"dense": {"activation": "softmax"}},
]


def autoregressive_forecaster_layers(window: int) -> list[dict[str, Any]]:
    """The default forecaster of a differenced series one step ahead, when it has windows enough: the lstm of 64
    beside a linear autoregression of the whole window (LSTNet's "highway", Lai et al. 2018), in the Keras
    vocabulary a ``conv1d`` of 16 filters spanning the window with ``padding: valid`` (each filter a linear model of
    the window's values, at one position that global pooling then takes), concatenated before the output ``dense``.
    The lstm learns a level and a season slowly from a few dozen windows; the linear part learns the short-term
    dependence the differences keep at once."""
    linear = {"conv1d": {"filters": 16, "kernel_size": window, "padding": "valid"}}
    autoregression = [linear, {"global_average_pool": {}}]
    return [{"branches": [[{"lstm": {"units": 64}}], autoregression]}, {"dense": {}}]


#: The default text classifier: token vectors with whole-token dropout, 128 detectors of three-token phrases (a
#: convolution), each detector's maximum over the text, dropout, then the class scores (Kim 2014, one kernel size).
#: Over subword tokens (the text default) it beat a bidirectional lstm with max pooling on every text set of the
#: quality suite (benchmarks/RESULTS.md), and its steps do not wait on each other as an lstm's do.
TEXT_CLASSIFIER_LAYERS: list[dict[str, Any]] = [
    {"embedding": {"dim": 64, "dropout": 0.25}},
    {"conv1d": {"filters": 128, "kernel_size": 3, "activation": "relu"}},
    {"global_max_pool": {}},
    {"dropout": {"rate": 0.5}},
    {"dense": {"activation": "softmax"}},
]


def _frame_conv_block(filters: int) -> list[dict[str, Any]]:
    return [
        {"conv2d": {"filters": filters, "kernel_size": 3}},
        {"batchnorm": {}},
        {"activation": "relu"},
        {"max_pool2d": {"pool_size": 2}},
    ]


#: The default video classifier: a small convolutional network on every frame (three blocks of conv 3x3, batchnorm,
#: relu and 2x2 max pooling), flattened, so that where things are in the frame reaches the lstm, and a dense layer,
#: then an lstm over the frames' vectors (Donahue et al. 2015's LRCN, smaller).
VIDEO_CLASSIFIER_LAYERS: list[dict[str, Any]] = [
    {
        "time_distributed": {
            "layers": [
                *[block for filters in (16, 32, 64) for block in _frame_conv_block(filters)],
                {"flatten": {}},
                {"dense": {"units": 128, "activation": "relu"}},
            ]
        }
    },
    {"lstm": {"units": 64}},
    {"dropout": {"rate": 0.25}},
    {"dense": {"activation": "softmax"}},
]

#: The default translator (task translate): an encoder of token vectors and one lstm, and a decoder started from its
#: final state that attends over every source step (Luong et al. 2015) before the next-token scores.
TRANSLATOR_ENCODER_LAYERS: list[dict[str, Any]] = [
    {"embedding": {"dim": 64}},
    {"lstm": {"units": 256, "return_sequences": True}},
]
TRANSLATOR_DECODER_LAYERS: list[dict[str, Any]] = [
    {"embedding": {"dim": 64}},
    {"lstm": {"units": 256, "return_sequences": True}},
    {"attention": {"score": "luong"}},
    {"dense": {"activation": "softmax"}},
]

#: The default transcriber (task transcribe): two bidirectional lstm layers over the frames, then the scores of every
#: character and the CTC blank at every frame (Graves et al. 2013, smaller).
TRANSCRIBER_LAYERS: list[dict[str, Any]] = [
    {"lstm": {"units": 128, "return_sequences": True, "bidirectional": True}},
    {"lstm": {"units": 128, "return_sequences": True, "bidirectional": True}},
    {"dense": {"activation": "softmax"}},
]


def _default_layers() -> list[LayerSpec]:
    return [LayerSpec(lstm=LSTMLayer(units=64)), LayerSpec(dense=DenseLayer())]


class ModelSpec(Strict):
    """The network, as a list of layers in the Keras vocabulary; the input size comes from the data."""

    layers: list[LayerSpec] = Field(
        default_factory=_default_layers,
        min_length=1,
        description=(
            "Layers in order; the first (after an `embedding`) must read the sequence (`lstm`, `conv1d` or "
            "`branches`), the last should be `dense`. Default: `[{lstm: {units: 64}}, {dense: {}}]`, unless the "
            "pipeline's data kind gives another (see `model`). For task translate: the encoder (an `embedding`, "
            "then `lstm` layers that return sequences, `dropout` between)."
        ),
    )
    decoder: list[LayerSpec] | None = Field(
        None,
        min_length=1,
        description=(
            "Task translate only: the decoder, fed the target so far and started from the encoder's final states "
            "(Keras `return_state`; its k-th lstm from the encoder's k-th, so both have as many lstm layers, of the "
            "same units): an `embedding`, `lstm` layers, optionally one `attention`, then `dense` layers, the last "
            "giving the next-token scores (units inferred from the target vocabulary)."
        ),
    )
    l1: float = Field(0.0, ge=0.0, description="L1 penalty on all weights (not biases or norms), added to the loss.")
    l2: float = Field(
        0.0,
        ge=0.0,
        description=(
            "L2 penalty on all weights (not biases or norms), added to the loss (Keras `kernel_regularizer` meaning: "
            "l2 × sum of squares)."
        ),
    )
