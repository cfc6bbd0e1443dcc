"""The compiled network, :class:`LSTMNet`: one submodule per spec layer, in order, run with the variable-length
masking and the carried lstm state that the model's overview (:mod:`lstmflow.models.lstm`) describes."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TypeAlias, cast

import torch
from torch import Tensor, nn

from lstmflow.config import (
    BatchNormLayer,
    DenseLayer,
    DropoutLayer,
    EmbeddingLayer,
    LayerNormLayer,
    LayerSpec,
    LSTMLayer,
    ModelSpec,
)
from lstmflow.config.model import (
    ActivationLayer,
    AttentionPoolLayer,
    Conv1DLayer,
    GlobalPoolLayer,
    Pool1DLayer,
    TimeDistributedLayer,
)
from lstmflow.models.frames import TimeDistributed
from lstmflow.models.layers import (
    ACTIVATIONS,
    AttentionPool,
    Conv1D,
    Dense,
    FeatureBatchNorm,
    GlobalPool,
    Pool1D,
    TimeWindows,
    TokenEmbedding,
    valid_steps,
)
from lstmflow.models.lstm_block import LSTMBlock, LSTMKernel
from lstmflow.models.shapes import output_layer

#: An lstm layer's (h, c), each (D, B, H), keyed by the layer's index in ``model.layers``.
LSTMState: TypeAlias = dict[int, tuple[Tensor, Tensor]]


class LSTMNet(nn.Module):
    """The compiled network: ``layers[i]`` is the spec's ``layers[i]``.

    Build it with :func:`~lstmflow.models.lstm.build_model`, which checks the shape rules and fills in the last
    dense's units; this constructor takes a spec that has passed them (``model.spec`` is one, for rebuilding from a
    checkpoint). ``lstm_kernel`` is every lstm layer's :attr:`LSTMBlock.kernel`; it changes no parameter. ``where``
    is the spec's YAML path, named by the error a too short sample raises in a layer that shortens sequences.
    """

    def __init__(
        self, spec: ModelSpec, n_features: int, lstm_kernel: LSTMKernel = "auto", where: str = "model"
    ) -> None:
        super().__init__()
        self.spec = spec
        self.n_features = n_features  # the vocabulary size when the first layer is an embedding
        width = n_features
        layers: list[nn.Module] = []
        for index, layer in enumerate(spec.layers):
            block, width = layer_module(layer, f"{where}.layers[{index}]", width, n_features, lstm_kernel)
            layers.append(block)
        self.layers = nn.ModuleList(layers)
        self.out_features = width
        head = output_layer(spec)
        head_dense = spec.layers[head].dense
        #: The output dense whose softmax :meth:`logits` leaves out (classification folds it into the loss).
        self.softmax_head = head if head_dense is not None and head_dense.activation == "softmax" else None

    def zero_output(self) -> None:
        """Zero the last layer's weights and bias when it is a linear dense, so that training starts from a network
        that answers 0 and moves away only as far as the data lead it. For differenced forecast targets 0 is the
        naive forecast (no change beyond the mean), which a short series often cannot beat by much: a random start
        there cost accuracy that early stopping never won back (benchmarks/RESULTS.md). Keras:
        ``Dense(kernel_initializer="zeros")``."""
        last = self.spec.layers[-1].dense
        if last is not None and last.activation == "linear":
            head = cast(Dense, self.layers[-1])
            nn.init.zeros_(head.linear.weight)
            nn.init.zeros_(head.linear.bias)

    def lstm_kernels_trained(self) -> list[str]:
        """The implementations that ran this model's lstm layers in gradient-recording passes so far, sorted:
        ``"lstmflow"`` (compiled), ``"lstmflow-loop"``, ``"torch"`` (see :class:`LSTMBlock`)."""
        return sorted({name for layer in self.modules() if isinstance(layer, LSTMBlock) for name in layer.trained_with})

    @property
    def input_width(self) -> int:
        """Values per input step: 1 (a token id) for an embedding-first model, else ``n_features``."""
        return 1 if self.spec.layers[0].embedding is not None else self.n_features

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x (B, T, F) → (B, n_outputs), or (B, T, n) when the network ends in a sequence.

        ``lengths`` (B,) gives each sample's valid steps (the rest of x is padding): each sample's result is then
        what it would be alone, and an output that is a sequence is zero at the padded steps.
        """
        return self._run(x, lengths, softmax=True)

    def logits(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """:meth:`forward` without the output dense's softmax (if it has one): the input of a cross-entropy loss.

        When that dense is the last layer, ``forward(x) == softmax(logits(x))``.
        """
        return self._run(x, lengths, softmax=False)

    def logits_carrying(self, x: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """:meth:`logits` of a full-length batch (no padding) with each lstm starting from ``state[i]`` (zeros where
        missing), and every lstm's final (h, c): the state to start the continuation of the same streams from.

        The returned state is part of the autograd graph; detach it to truncate back-propagation there.
        """
        final: LSTMState = {}
        return self._run(x, None, softmax=False, state=state or {}, final=final), final

    def _run(
        self,
        x: Tensor,
        lengths: Tensor | None,
        softmax: bool,
        state: LSTMState | None = None,
        final: LSTMState | None = None,
    ) -> Tensor:
        """The layers in order; with ``final`` (a dict to fill) each lstm starts from ``state`` and reports its end."""
        if lengths is not None:
            lengths = lengths.to(x.device)
            x = x.masked_fill(~valid_steps(lengths, x.shape[1]).unsqueeze(-1), 0.0)  # padding reads as zeros
        for index, layer in enumerate(self.layers):
            if isinstance(layer, LSTMBlock) and final is not None:
                x, final[index] = layer.carrying(x, (state or {}).get(index))
                if not layer.return_sequences:  # each direction's final h, as forward() gives it
                    x = final[index][0].transpose(0, 1).reshape(x.shape[0], layer.out_features)  # (D, B, H) → (B, D·H)
            elif isinstance(layer, Dense) and index == self.softmax_head and not softmax:
                x, lengths = masked(layer.linear(x), lengths)
            else:
                x, lengths = run_layer(layer, x, lengths)
        return x

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Each sample's steps in an output that is a sequence: what the layers that shorten sequences (strided
        convolutions, pooling) leave of its ``lengths`` (B,) input steps. CTC needs them."""
        return _steps_through(list(self.layers), lengths)

    def regularization_penalty(self) -> Tensor:
        """``l1·Σ|w| + l2·Σw²`` over the weight matrices (dense kernels, LSTM input and recurrent kernels).

        Biases, normalisation scales and embeddings are left out, as Keras' kernel and recurrent regularizers do
        (Keras regularizes embeddings only through their own ``embeddings_regularizer``); the trainer adds this to
        the loss.
        """
        return weight_penalty(self.spec, self.layers)


def weight_penalty(spec: ModelSpec, layers: Iterable[nn.Module]) -> Tensor:
    """``spec.l1·Σ|w| + spec.l2·Σw²`` over the weight matrices of ``layers``, embeddings left out."""
    matrices = [
        param
        for layer in layers
        if not isinstance(layer, TokenEmbedding)
        for param in layer.parameters()
        if param.dim() >= 2
    ]
    penalty = torch.zeros((), device=matrices[0].device)
    if spec.l1:
        penalty = penalty + spec.l1 * sum(param.abs().sum() for param in matrices)
    if spec.l2:
        penalty = penalty + spec.l2 * sum(param.square().sum() for param in matrices)
    return penalty


class EnsembleNet(LSTMNet):
    """``train.ensemble``: ``members[i]`` is a whole :class:`LSTMNet` of one spec, trained from its own seed; the
    ensemble answers with their average in the space the task predicts in, so that one model is registered and served.

    :meth:`forward` averages the members' outputs: forecast values as the network emits them (scaled, before the
    data's transform is undone, so a `log` series gets the geometric mean), probabilities when the spec ends in a
    softmax.
    :meth:`logits` and :meth:`logits_carrying` return the log of the members' averaged softmax: a softmax or a
    cross-entropy on them sees the averaged probabilities, which an average of logits would not give. The state dict
    holds every member's (``members.1.layers.0.lstm.weight_ih_l0``); the members are trained one by one as plain
    networks (:mod:`lstmflow.training.fit`), so nothing here trains.
    """

    def __init__(self, members: list[LSTMNet]) -> None:
        nn.Module.__init__(self)  # no layers of its own: each member has them
        first = members[0]
        self.spec, self.n_features, self.out_features = first.spec, first.n_features, first.out_features
        self.softmax_head = first.softmax_head
        self.members = nn.ModuleList(members)

    def networks(self) -> list[LSTMNet]:
        return [cast(LSTMNet, member) for member in self.members]

    def lstm_kernels_trained(self) -> list[str]:
        return sorted({name for member in self.networks() for name in member.lstm_kernels_trained()})

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        return torch.stack([member(x, lengths) for member in self.networks()]).mean(dim=0)

    def logits(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        return _log_mean_softmax([member.logits(x, lengths) for member in self.networks()])

    def logits_carrying(self, x: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """Each member carries its own lstm states: member ``m``'s layer ``i`` under key ``m * len(layers) + i``."""
        state, width = state or {}, len(self.spec.layers)
        final: LSTMState = {}
        logits: list[Tensor] = []
        for number, member in enumerate(self.networks()):
            mine = {key - number * width: value for key, value in state.items() if key // width == number}
            member_logits, member_final = member.logits_carrying(x, mine)
            logits.append(member_logits)
            final |= {number * width + key: value for key, value in member_final.items()}
        return _log_mean_softmax(logits), final

    def regularization_penalty(self) -> Tensor:
        return torch.stack([member.regularization_penalty() for member in self.networks()]).sum()


def _log_mean_softmax(logits: list[Tensor]) -> Tensor:
    """log(mean_m softmax(logits[m])) over the last axis, computed stably: (…, C) each → (…, C)."""
    log_probabilities = torch.stack([torch.log_softmax(scores, dim=-1) for scores in logits])  # (M, …, C)
    return torch.logsumexp(log_probabilities, dim=0) - math.log(len(logits))


class Branches(nn.Module):
    """Keras' functional ``Concatenate`` of branches that all read this layer's input: ``branches[j][k]`` is the
    spec's ``branches[j][k]``, and the branches' outputs are joined on the feature axis. The shape rules make every
    branch end alike (one vector per sample, or sequences of the input's steps), so any branch's lengths are all's."""

    def __init__(self, branches: list[list[nn.Module]]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.ModuleList(branch) for branch in branches)

    def layers_of(self) -> list[list[nn.Module]]:
        """Each branch's modules, in order."""
        return [list(cast(nn.ModuleList, branch)) for branch in self.branches]

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        outputs: list[Tensor] = []
        out_lengths = lengths
        for branch in self.layers_of():
            out, out_lengths = x, lengths
            for module in branch:
                out, out_lengths = run_layer(module, out, out_lengths)
            outputs.append(out)
        return torch.cat(outputs, dim=-1), out_lengths  # (B, ΣF) or (B, T, ΣF)


def _steps_through(layers: list[nn.Module], lengths: Tensor) -> Tensor:
    for layer in layers:
        if isinstance(layer, TimeWindows):
            lengths = layer.steps_out(lengths)
        elif isinstance(layer, Branches):  # every branch ends in sequences of the same steps
            lengths = _steps_through(layer.layers_of()[0], lengths)
    return lengths


def masked(x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``x`` with its padded steps zeroed (a bias or a norm's shift would fill them) and the lengths that still
    apply: none once the time axis is gone."""
    if x.dim() != 3:
        return x, None
    if lengths is not None:
        x = x.masked_fill(~valid_steps(lengths, x.shape[1]).unsqueeze(-1), 0.0)
    return x, lengths


def run_layer(layer: nn.Module, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """One layer's module on ``x`` with each sample's valid ``lengths`` (None: every step is valid), and the
    lengths of what it emits."""
    if isinstance(layer, LSTMBlock):
        x = layer(x, lengths)
    elif isinstance(layer, FeatureBatchNorm):
        x = layer(x, valid_steps(lengths, x.shape[1]) if lengths is not None and x.dim() == 3 else None)
    elif isinstance(layer, (TimeWindows, Branches)):
        x, lengths = layer(x, lengths)
    elif isinstance(layer, (GlobalPool, AttentionPool, TimeDistributed)):
        x = layer(x, lengths)
    else:
        x = layer(x)
    return masked(x, lengths)


def layer_module(
    layer: LayerSpec, path: str, width: int, n_features: int, lstm_kernel: LSTMKernel
) -> tuple[nn.Module, int]:
    """The module of the spec layer at YAML ``path``, which reads ``width`` values per step, and the width it
    emits."""
    args = layer.args
    name = f"{path}.{layer.kind}"
    match args:
        case EmbeddingLayer():
            embedding = TokenEmbedding(n_features, args.dim, args.frozen, args.dropout)
            return embedding, embedding.out_features
        case LSTMLayer():
            lstm = LSTMBlock(width, args.units, args.return_sequences, args.bidirectional, args.dropout, lstm_kernel)
            return lstm, lstm.out_features
        case DenseLayer():
            if args.units is None:
                raise ValueError(f"{name}.units is unset: build the model with build_model")
            return Dense(width, args.units, args.activation), args.units
        case DropoutLayer():
            return nn.Dropout(args.rate), width
        case BatchNormLayer():
            # Keras: running = m·running + (1 − m)·batch; PyTorch weighs the batch by its momentum
            return FeatureBatchNorm(width, eps=args.epsilon, momentum=1.0 - args.momentum), width
        case LayerNormLayer():
            return nn.LayerNorm(width, eps=args.epsilon), width  # normalises the last axis of (B, H) or (B, T, H)
        case ActivationLayer():
            return ACTIVATIONS[args.activation](), width
        case Conv1DLayer():
            conv = Conv1D(width, args.filters, args.kernel_size, args.strides, args.padding, args.activation, name)
            return conv, args.filters
        case Pool1DLayer():
            mode = "max" if layer.kind == "max_pool1d" else "average"
            return Pool1D(mode, args.pool_size, args.strides, args.padding, name), width
        case GlobalPoolLayer():
            return GlobalPool("max" if layer.kind == "global_max_pool" else "average"), width
        case AttentionPoolLayer():
            return AttentionPool(width, args.units), width
        case TimeDistributedLayer():
            frames = TimeDistributed(args, name)
            return frames, frames.out_features
        case list():
            return _branches_module(args, name, width, n_features, lstm_kernel)
        case _:
            raise TypeError(f"{path}: no module for layer kind {layer.kind!r}")


def _branches_module(
    branches: list[list[LayerSpec]], name: str, width: int, n_features: int, lstm_kernel: LSTMKernel
) -> tuple[Branches, int]:
    """The modules of every branch, each reading ``width`` values per step, and the concatenated width."""
    modules: list[list[nn.Module]] = []
    total = 0
    for number, branch in enumerate(branches):
        branch_width, branch_modules = width, []
        for position, layer in enumerate(branch):
            module, branch_width = layer_module(
                layer, f"{name}[{number}][{position}]", branch_width, n_features, lstm_kernel
            )
            branch_modules.append(module)
        modules.append(branch_modules)
        total += branch_width
    return Branches(modules), total
