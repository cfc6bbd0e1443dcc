"""The modules of the spec's non-recurrent layers, each initialised and shaped as its Keras namesake.

The ``lstm`` layer's module, :class:`~lstmflow.models.lstm_block.LSTMBlock`, has a module of its own because it
also chooses what runs its recurrence.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

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
    """

    def __init__(self, vocab_size: int, dim: int, frozen: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        nn.init.uniform_(self.embedding.weight, -0.05, 0.05)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.embedding.weight.requires_grad_(not frozen)
        self.out_features = dim

    def forward(self, x: Tensor) -> Tensor:  # x (B, T, 1) float token ids, exact integers
        return self.embedding(x.squeeze(-1).long())  # (B, T, 1) → (B, T) → (B, T, dim)


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
