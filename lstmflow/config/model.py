"""The `model` section: the network as a Keras-style list of layers, one spec per layer kind."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_serializer, model_validator

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
        description=(
            "Layers in order; the first must be `lstm`, the last should be `dense`. Default: `[{lstm: {units: 64}}, "
            "{dense: {}}]`."
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
