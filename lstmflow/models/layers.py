"""The modules of the spec's non-recurrent layers, each initialised and shaped as its Keras namesake.

The ``lstm`` layer's module, :class:`~lstmflow.models.lstm_block.LSTMBlock`, has a module of its own because it
also chooses what runs its recurrence.

Layers over time take each sample's valid steps (``lengths``, None for a full batch) and see the padding as zeros
(the network zeroes it after every layer): a convolution with ``same`` padding then reads exactly what it reads
alone, pools leave padded steps out, and the layers that change the number of steps return the new lengths.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lstmflow.errors import DataError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softmax": lambda: nn.Softmax(dim=-1),
    "gelu": nn.GELU,  # exact erf form, as Keras' default (approximate=False)
    "elu": nn.ELU,
    "selu": nn.SELU,
    "softplus": nn.Softplus,
}


class InputDropout(nn.Dropout1d):
    """Keras' LSTM ``dropout``: one mask per (sample, feature), reused at every time step of the sample."""

    def forward(self, x: Tensor) -> Tensor:  # x (B, T, F)
        # Dropout1d zeroes whole channels of (B, C, L): with the features as channels, a dropped feature stays
        # dropped for the whole sequence
        return super().forward(x.transpose(1, 2)).transpose(1, 2)  # (B, F, T) → (B, T, F)


class TokenEmbedding(nn.Module):
    """Keras ``Embedding(vocab_size, dim)``: token ids → vectors, initialised uniform in ±0.05 like Keras.

    Id 0 (padding) is the zero vector and gets no gradient; ``frozen`` vectors keep their initial values.
    ``dropout`` zeroes whole token vectors in training (one draw per sample and step, Keras'
    ``Dropout(rate, noise_shape=(None, None, 1))``), so no single word can carry a prediction.
    """

    def __init__(self, vocab_size: int, dim: int, frozen: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        nn.init.uniform_(self.embedding.weight, -0.05, 0.05)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.embedding.weight.requires_grad_(not frozen)
        self.out_features = dim
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:  # x (B, T, 1) float token ids, exact integers
        vectors = self.embedding(x.squeeze(-1).long())  # (B, T, 1) → (B, T) → (B, T, dim)
        if not (self.training and self.dropout > 0):
            return vectors
        keep = F.dropout(vectors.new_ones(vectors.shape[:2] + (1,)), self.dropout, training=True)  # (B, T, 1)
        return vectors * keep


def valid_steps(lengths: Tensor, steps: int) -> Tensor:
    """(B, T) bool, True at each sample's first ``lengths[b]`` steps."""
    return torch.arange(steps, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)  # (1, T) < (B, 1)


class TimeWindows(nn.Module):
    """What a convolution and a pool share: windows of ``size`` steps every ``strides`` steps, over ``same``
    (ceil(steps / strides) windows, none starting past a sample's end) or ``valid`` (whole windows only) padding.

    ``name`` is the layer's YAML path, for the error when a sample is too short to give any step."""

    def __init__(self, size: int, strides: int, padding: str, name: str) -> None:
        super().__init__()
        self.size, self.strides, self.padding, self.name = size, strides, padding, name

    def steps_out(self, lengths: Tensor) -> Tensor:
        """Each sample's output steps from its ``lengths`` (B,) valid input steps."""
        if self.padding == "same":
            return torch.div(lengths - 1, self.strides, rounding_mode="floor") + 1
        return torch.div(lengths - self.size, self.strides, rounding_mode="floor") + 1

    def checked_lengths(self, x: Tensor, lengths: Tensor | None) -> Tensor | None:
        """The output lengths, or a DataError naming the layer when a sample would have none."""
        given = lengths if lengths is not None else torch.tensor([x.shape[1]])
        shortest = int(given.min())
        if int(self.steps_out(given.new_tensor([shortest]))[0]) < 1:
            raise DataError(
                f"{self.name}: a sample of length {shortest} gives no output step (window {self.size}, padding "
                f"{self.padding}); use padding: same or a smaller window"
            )
        return None if lengths is None else self.steps_out(lengths)


class Conv1D(TimeWindows):
    """Keras ``Conv1D`` on (B, T, F): glorot_uniform kernel (fan-in and fan-out both kernel_size × channels, as
    Keras counts them), zero bias. ``same`` puts (kernel_size − 1) // 2 zeros before each sample and the rest after,
    whatever the batch's longest sample, so a sample's result does not depend on its batch; with strides 1 that is
    Keras' ``same``, with larger strides the windows may sit up to strides − 1 steps earlier than Keras'."""

    def __init__(
        self, in_features: int, filters: int, kernel_size: int, strides: int, padding: str, activation: str, name: str
    ) -> None:
        super().__init__(kernel_size, strides, padding, name)
        self.conv = nn.Conv1d(in_features, filters, kernel_size, stride=strides)
        self.activation = ACTIVATIONS[activation]()
        self.out_features = filters
        nn.init.xavier_uniform_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)  # type: ignore[arg-type]  # set: Conv1d's bias=True

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        out_lengths = self.checked_lengths(x, lengths)
        channels = x.transpose(1, 2)  # (B, T, F) → (B, F, T)
        if self.padding == "same":
            before = (self.size - 1) // 2
            channels = F.pad(channels, (before, self.size - 1 - before))
        return self.activation(self.conv(channels).transpose(1, 2)), out_lengths  # (B, T', filters)


class Pool1D(TimeWindows):
    """Keras ``MaxPooling1D`` / ``AveragePooling1D`` on (B, T, F) over each sample's own steps: a window's max
    never picks padding and its mean counts only valid steps (a ``same`` window at a sample's end is partial)."""

    def __init__(self, mode: str, pool_size: int, strides: int | None, padding: str, name: str) -> None:
        super().__init__(pool_size, strides or pool_size, padding, name)
        self.mode = mode  # "max" or "average"

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        out_lengths = self.checked_lengths(x, lengths)
        steps = x.shape[1]
        if lengths is None:
            valid = torch.ones_like(x[..., :1], dtype=torch.bool)  # (B, T, 1)
        else:
            valid = valid_steps(lengths, steps).unsqueeze(-1)  # (B, T, 1)
        after = self.size - 1 if self.padding == "same" else 0  # room for the last partial windows
        if self.mode == "max":
            values = F.pad(x.masked_fill(~valid, float("-inf")).transpose(1, 2), (0, after), value=float("-inf"))
            pooled = F.max_pool1d(values, self.size, self.strides)  # (B, F, T')
        else:
            sums = F.avg_pool1d(F.pad((x * valid).transpose(1, 2), (0, after)), self.size, self.strides)
            counts = F.avg_pool1d(F.pad(valid.to(x.dtype).transpose(1, 2), (0, after)), self.size, self.strides)
            pooled = sums / counts.clamp_min(torch.finfo(x.dtype).tiny)  # windows of padding only: 0, masked later
        return pooled.transpose(1, 2), out_lengths  # (B, T', F)


class GlobalPool(nn.Module):
    """Keras ``GlobalMaxPooling1D`` / ``GlobalAveragePooling1D``: (B, T, F) → (B, F) over each sample's steps."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if lengths is None:
            return x.amax(dim=1) if self.mode == "max" else x.mean(dim=1)
        valid = valid_steps(lengths.to(x.device), x.shape[1]).unsqueeze(-1)  # (B, T, 1)
        if self.mode == "max":
            return x.masked_fill(~valid, float("-inf")).amax(dim=1)
        return (x * valid).sum(dim=1) / lengths.to(x.device, x.dtype).unsqueeze(1)


class AttentionPool(nn.Module):
    """(B, T, F) → (B, F): a weighted mean of the steps, weight ∝ exp(vᵀ tanh(W·h_t + b)) (Yang et al. 2016's
    attention pooling; hand-written because neither PyTorch nor Keras has it as a layer), padded steps weight 0."""

    def __init__(self, in_features: int, units: int | None) -> None:
        super().__init__()
        hidden = units or in_features
        self.hidden = nn.Linear(in_features, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)
        self.out_features = in_features
        nn.init.xavier_uniform_(self.hidden.weight)
        nn.init.zeros_(self.hidden.bias)
        nn.init.xavier_uniform_(self.score.weight)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        scores = self.score(torch.tanh(self.hidden(x))).squeeze(-1)  # (B, T)
        if lengths is not None:
            scores = scores.masked_fill(~valid_steps(lengths.to(x.device), x.shape[1]), float("-inf"))
        weights = torch.softmax(scores, dim=1)  # (B, T)
        return (weights.unsqueeze(-1) * x).sum(dim=1)  # (B, F)


class Dense(nn.Module):
    """Keras ``Dense(units, activation)`` on the last axis: glorot_uniform kernel, zero bias."""

    def __init__(self, in_features: int, units: int, activation: str) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, units)
        self.activation = ACTIVATIONS[activation]()
        self.out_features = units
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, H) → (B, units) or (B, T, H) → (B, T, units)
        return self.activation(self.linear(x))


class FeatureBatchNorm(nn.BatchNorm1d):
    """Keras ``BatchNormalization()``: one mean and variance per feature (the last axis), over the batch and,
    for sequences, over time too; with a ``mask`` over the valid steps only (Keras with masking)."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # mask (B, T) bool, True at valid steps
        if x.dim() == 2:  # x (B, H)
            return super().forward(x)
        if mask is None:  # x (B, T, H): BatchNorm1d wants the features on axis 1
            return super().forward(x.transpose(1, 2)).transpose(1, 2)  # (B, H, T) → (B, T, H)
        # Normalise the valid steps as one (N, H) batch: the statistics, and the running ones, see no padding.
        normalised = super().forward(x[mask])  # (B, T, H)[mask] → (N, H)
        return x.new_zeros(x.shape).masked_scatter(mask.unsqueeze(-1), normalised)  # (N, H) → (B, T, H)
