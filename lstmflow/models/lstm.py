"""The model compiler: a Keras-style layer list (:class:`~lstmflow.config.ModelSpec`) → one PyTorch module.

Every spec layer becomes one explicit submodule, in order, so each per-layer option is honoured and the
state-dict keys follow the YAML (``layers.0.lstm.weight_ih_l0`` is ``model.layers[0]``). Each ``lstm`` is its own
single-layer ``nn.LSTM``; on a CPU its recurrence may run in lstmflow's compiled CPU LSTM
(:mod:`lstmflow.models.fast_lstm`) on those same parameters instead (``train.lstm_kernel``; by default for
variable-length batches in training, see :class:`LSTMBlock`), so checkpoints and served models are the same either
way. Shape mistakes that Keras would only report when fitting (an lstm fed one vector per sample, an output of the
wrong size) are :class:`ConfigError`\\ s at build time, naming the YAML path of the layer to change.

Variable-length batches: ``forward(x, lengths)`` lets every lstm read each sample's valid steps only (``nn.LSTM``
through ``pack_padded_sequence``; lstmflow's kernel reads the padded batch, whose later steps cannot change earlier
ones, and zeroes what it computed past each length), keeps padded steps at zero after every layer that keeps time,
and leaves them out of batchnorm's statistics, so what a sample gets does not depend on the other samples in its
batch (up to float rounding of the batched kernels).

Text: an ``embedding`` first layer reads token ids carried as a (B, T, 1) float input (the sequence store's one
value per step) and turns them into vectors; ``n_features`` is then the vocabulary size, the embedding's rows.

Carried state (language models): :meth:`LSTMNet.logits_carrying` starts each lstm from a given (h, c) and returns
every lstm's final (h, c), so the next batch of the same text streams (a ``stateful`` layer in training) or the next
token (generation) continues where this one stopped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

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
from lstmflow.errors import ConfigError
from lstmflow.models.fast_lstm import LSTMFunction, PythonKernels, compiled_kernels, recurrence_kernels

#: An lstm layer's (h, c), each (D, B, H), keyed by the layer's index in ``model.layers``.
LSTMState: TypeAlias = dict[int, tuple[Tensor, Tensor]]
#: ``train.lstm_kernel``: which implementation runs an lstm layer's recurrence on a CPU (see :class:`LSTMBlock`).
LSTMKernel: TypeAlias = Literal["auto", "lstmflow", "torch"]
#: ``auto`` runs a padded batch in nn.LSTM's packed path (which skips the padding) instead of lstmflow's kernel
#: (which computes it) when more than this fraction of the batch's steps, up to its longest sample, is padding.
#: Measured (2026-11-25, one thread, batch 64 of up to 100 steps, a training step, the training child's malloc
#: settings): packed nn.LSTM costs 3-4× its unpadded self per valid step, so lstmflow was 4.1× faster at 5%
#: padding (1 feature → 128 units) and 2.5× (40 → 2×256 units); 2.2× and 1.4× at 52%; 1.6× and 1.07× at 61%.
#: Bucketed batches (lstmflow's sequence batches) hold about 5% padding.
AUTO_MAX_PADDING = 0.5

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


class LSTMBlock(nn.Module):
    """Keras ``LSTM`` (or ``Bidirectional(LSTM(...))``): dropout on the inputs, then one fused LSTM layer.

    Initialised like Keras' defaults: glorot_uniform input kernels, orthogonal recurrent kernels, zero biases with
    the forget gate's set to 1 (``unit_forget_bias``). PyTorch keeps two bias vectors whose sum plays Keras' one
    bias: ``b_ih`` carries the 1s, ``b_hh`` starts at zero. Both frameworks order the gates i, f, g (c), o.

    The parameters always live in ``self.lstm``, an ``nn.LSTM`` (its state-dict keys, whichever kernel runs).
    ``kernel`` picks what runs the recurrence on a CPU, in fp32 or fp64 without autocast:

    - ``lstmflow``: :class:`~lstmflow.models.fast_lstm.LSTMFunction` on those parameters, one direction at a time;
    - ``torch``: ``nn.LSTM`` itself, as on a GPU (cuDNN), under autocast (bf16) and for other dtypes, always;
    - ``auto``: ``lstmflow`` with its compiled recurrence for a variable-length batch (``lengths`` given, at
      most ``AUTO_MAX_PADDING`` of it padding) in a pass that records gradients (training); ``torch`` for the
      rest. Why: packed ``nn.LSTM`` is 1.4-4× slower there (``AUTO_MAX_PADDING``). On full-length batches
      benchmarks/RESULTS.md shows lstmflow 1.04-1.32× ``nn.LSTM`` (one thread; the 0.97× at 500 steps there is
      against Keras), but those runs page-faulted on every batch: with the malloc settings that
      :func:`lstmflow.training.launch.child_environment` now gives training children (``nn.LSTM`` 1.5-1.8× faster with
      them, lstmflow 1.1-1.5×), ``nn.LSTM`` was the faster by 3-10% (2026-11-25, one thread, training steps of
      1 → 128 units: 37 vs 41 ms at batch 64 and 100 steps, 145 vs 150 ms at batch 256, 188 vs 199 ms at 500
      steps; at 16-32 rows lstmflow was 10-20% slower even without them). Inference was not measured, and its
      first use would build the C++ recurrence (30-40 s once per machine) inside an evaluation or a model server,
      so it stays with ``nn.LSTM``; so does everything without a C++ compiler, where lstmflow's fallback is a
      Python loop.

    ``compiled`` is for tests and debugging, as in :class:`~lstmflow.models.fast_lstm.FastLSTM`: False makes
    ``lstmflow`` run the PyTorch loop (and ``auto`` keep ``nn.LSTM``). ``trained_with`` collects the
    implementations that ran gradient-recording passes: ``"lstmflow"`` (compiled), ``"lstmflow-loop"``, ``"torch"``.
    """

    def __init__(
        self, in_features: int, units: int, return_sequences: bool, bidirectional: bool, dropout: float,
        kernel: LSTMKernel = "auto",
    ) -> None:  # fmt: skip
        super().__init__()
        self.input_dropout = InputDropout(dropout) if dropout > 0 else nn.Identity()
        self.lstm = nn.LSTM(in_features, units, num_layers=1, batch_first=True, bidirectional=bidirectional)
        self.return_sequences = return_sequences
        self.out_features = units * (2 if bidirectional else 1)
        self.kernel = kernel
        self.compiled: bool | None = None
        self.trained_with: set[str] = set()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        units = self.lstm.hidden_size
        for name, param in self.lstm.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(param)  # (4H, F): same fan-in/fan-out as Keras' (F, 4H) kernel
            elif name.startswith("weight_hh"):
                nn.init.orthogonal_(param)  # (4H, H): orthonormal columns, Keras' (H, 4H) transposed
            else:
                nn.init.zeros_(param)
            if name.startswith("bias_ih"):
                with torch.no_grad():
                    param[units : 2 * units].fill_(1.0)  # the forget gate's slice

    def carrying(self, x: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Every step's output (B, T, D·H) from the initial ``state`` (zeros when None), and the final (h, c)."""
        x = self.input_dropout(x)
        kernels = self._recorded(self.recurrence(x, None))
        if kernels is None:
            return self.lstm(x, state)  # (B, T, D·H); h, c (D, B, H)
        return self._fast(x, state, kernels)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:  # x (B, T, F), lengths (B,)
        """Every step's output (B, T, D·H) or each sample's final state (B, D·H).

        With ``lengths`` the LSTM reads only each sample's first ``lengths[i]`` steps (a packed sequence): the
        final state is the forward direction's after the sample's own last step and the backward direction's after
        reading back to its first step (Keras' masking), and the outputs at padded steps are zero.
        """
        batch, steps = x.shape[0], x.shape[1]
        x = self.input_dropout(x)
        kernels = self._recorded(self.recurrence(x, lengths))
        if kernels is not None:
            return self._fast_forward(x, lengths, kernels)
        if lengths is None:
            outputs, (h_n, _) = self.lstm(x)  # outputs (B, T, D·H), h_n (D, B, H)
        else:
            # pack_padded_sequence wants the lengths on the CPU; enforce_sorted=False sorts and unsorts for us
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed_outputs, (h_n, _) = self.lstm(packed)  # h_n (D, B, H), back in the batch's order
            if self.return_sequences:
                outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=steps)  # (B, T, D·H)
        if self.return_sequences:
            return outputs
        # each direction's final state: forward after the last step, backward after step 0 (Keras' Bidirectional)
        return h_n.transpose(0, 1).reshape(batch, self.out_features)  # (D, B, H) → (B, D, H) → (B, D·H)

    def recurrence(self, x: Tensor, lengths: Tensor | None = None) -> Any:
        """lstmflow's recurrence kernels for a pass over ``x`` (the lstm's input) in the current autograd and
        autocast mode (see the class's docstring), or None for ``nn.LSTM``."""
        kernels = None
        applies = (
            self.kernel != "torch" and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
            and x.dtype in (torch.float32, torch.float64) and self.lstm.weight_hh_l0.dtype == x.dtype
            and x.shape[0] > 0 and x.shape[1] > 0
        )  # fmt: skip
        if applies and lengths is not None:
            shortest, longest = int(lengths.min()), int(lengths.max())
            # out-of-range lengths go to pack_padded_sequence, which reports them
            applies = 1 <= shortest and longest <= x.shape[1]
            if applies and self.kernel == "auto":
                applies = 1 - int(lengths.sum()) / (len(lengths) * longest) <= AUTO_MAX_PADDING
        elif self.kernel == "auto":
            applies = False  # full-length batches: nn.LSTM (see the class's docstring)
        if applies and self.kernel == "lstmflow":
            kernels = recurrence_kernels(x.device, self.compiled)
        elif applies and torch.is_grad_enabled() and self.compiled is not False:  # auto
            kernels = compiled_kernels()
        return kernels

    def _recorded(self, kernels: Any) -> Any:
        """``kernels``, noted in :attr:`trained_with` when this pass records gradients."""
        if torch.is_grad_enabled():
            self.trained_with.add(
                "torch" if kernels is None else "lstmflow-loop" if kernels is PythonKernels else "lstmflow"
            )
        return kernels

    def _fast_forward(self, x: Tensor, lengths: Tensor | None, kernels: Any) -> Tensor:
        """:meth:`forward` with lstmflow's recurrence on the padded batch: one direction never looks ahead, so a
        sample's outputs up to its last step are exact; the steps after it are set to zero, as packing leaves them."""
        steps, hidden = x.shape[1], self.lstm.hidden_size
        if lengths is None:
            outputs, _ = self._fast(x, None, kernels)  # (B, T, D·H)
            final = outputs[:, -1, :hidden]  # (B, H)
        else:
            lengths = lengths.to(device=x.device, dtype=torch.long)
            longest = int(lengths.max())
            outputs, _ = self._fast(x[:, :longest], None, kernels, lengths)  # only up to the longest sample
            valid = torch.arange(longest, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T')
            outputs = outputs.masked_fill(~valid.unsqueeze(-1), 0.0)  # (B, T', D·H)
            final = outputs[torch.arange(len(lengths), device=x.device), lengths - 1, :hidden]  # (B, H)
        if self.return_sequences:
            return F.pad(outputs, (0, 0, 0, steps - outputs.shape[1]))  # (B, T', D·H) → (B, T, D·H), zeros after
        # forward after each sample's last step, backward after reading back to step 0 (Keras' Bidirectional)
        return torch.cat([final, outputs[:, 0, hidden:]], dim=1) if self.lstm.bidirectional else final  # (B, D·H)

    def _fast(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None, kernels: Any, lengths: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``self.lstm(x, state)`` by :class:`LSTMFunction` on the same parameters, one direction at a time.

        The backward direction reads the time-reversed input: with ``lengths``, each sample's own steps reversed in
        place (the padding stays after them), so it starts at the sample's last step; its outputs are put back the
        same way. With ``lengths`` the outputs at padded steps and the final (h, c) are not nn.LSTM's: the caller
        masks the former and takes the final h from the outputs.
        """
        batch, steps = x.shape[0], x.shape[1]
        zeros = x.new_zeros(batch, self.lstm.hidden_size)  # (B, H)
        outputs, finals_h, finals_c = [], [], []
        kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        for direction, suffix in enumerate(["", "_reverse"][: 2 if self.lstm.bidirectional else 1]):
            if direction == 0:
                reader = x
            elif lengths is None:
                reader = x.flip(1)  # (B, T, F), time reversed
            else:
                order = self._reversal(lengths, steps)  # (B, T)
                reader = x.gather(1, order.unsqueeze(-1).expand_as(x))
            h0, c0 = (zeros, zeros) if state is None else (state[0][direction], state[1][direction])  # (B, H)
            # this direction's nn.LSTM parameters: weight_ih (4H, F), weight_hh (4H, H), bias_ih, bias_hh (4H,)
            weights = [getattr(self.lstm, f"{kind}_l0{suffix}") for kind in kinds]
            out, h_n, c_n = LSTMFunction.apply(reader, h0, c0, *weights, kernels)  # out (B, T, H); h_n, c_n (B, H)
            if direction == 1:
                out = out.flip(1) if lengths is None else out.gather(1, order.unsqueeze(-1).expand_as(out))
            outputs.append(out)
            finals_h.append(h_n)
            finals_c.append(c_n)
        # (B, T, D·H); h, c (D, B, H)
        return torch.cat(outputs, dim=2), (torch.stack(finals_h), torch.stack(finals_c))

    @staticmethod
    def _reversal(lengths: Tensor, steps: int) -> Tensor:
        """(B, T) step indices that reverse each sample's first ``lengths[b]`` steps and keep the rest in place."""
        positions = torch.arange(steps, device=lengths.device).unsqueeze(0)  # (1, T)
        reversed_positions = lengths.unsqueeze(1) - 1 - positions  # (B, T)
        return torch.where(reversed_positions >= 0, reversed_positions, positions)


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


class LSTMNet(nn.Module):
    """The compiled network: ``layers[i]`` is the spec's ``layers[i]``.

    Build it with :func:`build_model`, which checks the shape rules and fills in the last dense's units; this
    constructor takes a spec that has passed them (``model.spec`` is one, for rebuilding from a checkpoint).
    ``lstm_kernel`` is every lstm layer's :attr:`LSTMBlock.kernel`; it changes no parameter.
    """

    def __init__(self, spec: ModelSpec, n_features: int, lstm_kernel: LSTMKernel = "auto") -> None:
        super().__init__()
        self.spec = spec
        self.n_features = n_features  # the vocabulary size when the first layer is an embedding
        width = n_features
        layers: list[nn.Module] = []
        for index, layer in enumerate(spec.layers):
            args = layer.args
            match args:
                case EmbeddingLayer():
                    block = TokenEmbedding(n_features, args.dim, args.frozen)
                    width = block.out_features
                case LSTMLayer():
                    block = LSTMBlock(
                        width, args.units, args.return_sequences, args.bidirectional, args.dropout, lstm_kernel
                    )
                    width = block.out_features
                case DenseLayer():
                    if args.units is None:
                        raise ValueError(f"layers[{index}].dense.units is unset: build the model with build_model")
                    block = Dense(width, args.units, args.activation)
                    width = block.out_features
                case DropoutLayer():
                    block = nn.Dropout(args.rate)
                case BatchNormLayer():
                    # Keras: running = m·running + (1 − m)·batch; PyTorch weighs the batch by its momentum
                    block = FeatureBatchNorm(width, eps=args.epsilon, momentum=1.0 - args.momentum)
                case LayerNormLayer():
                    block = nn.LayerNorm(width, eps=args.epsilon)  # normalises the last axis of (B, H) or (B, T, H)
                case _:
                    raise TypeError(f"layers[{index}]: no module for layer kind {layer.kind!r}")
            layers.append(block)
        self.layers = nn.ModuleList(layers)
        self.out_features = width
        head = output_layer(spec)
        softmax_head = spec.layers[head].dense is not None and spec.layers[head].dense.activation == "softmax"
        #: The output dense whose softmax :meth:`logits` leaves out (classification folds it into the loss).
        self.softmax_head = head if softmax_head else None

    def lstm_kernels_trained(self) -> list[str]:
        """The implementations that ran this model's lstm layers in gradient-recording passes so far, sorted:
        ``"lstmflow"`` (compiled), ``"lstmflow-loop"``, ``"torch"`` (see :class:`LSTMBlock`)."""
        return sorted({name for layer in self.layers if isinstance(layer, LSTMBlock) for name in layer.trained_with})

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
        mask = None  # (B, T) bool, True at the valid steps
        if lengths is not None:
            steps = torch.arange(x.shape[1], device=x.device)
            mask = steps.unsqueeze(0) < lengths.to(x.device).unsqueeze(1)  # (1, T) < (B, 1) → (B, T)
        for index, layer in enumerate(self.layers):
            if isinstance(layer, LSTMBlock) and final is not None:
                x, final[index] = layer.carrying(x, (state or {}).get(index))
                if not layer.return_sequences:  # each direction's final h, as forward() gives it
                    x = final[index][0].transpose(0, 1).reshape(x.shape[0], layer.out_features)  # (D, B, H) → (B, D·H)
            elif isinstance(layer, LSTMBlock):
                x = layer(x, lengths)
            elif isinstance(layer, FeatureBatchNorm):
                x = layer(x, mask if x.dim() == 3 else None)
            elif index == self.softmax_head and not softmax:
                x = layer.linear(x)
            else:
                x = layer(x)
            if mask is not None and x.dim() == 3:
                x = x.masked_fill(~mask.unsqueeze(-1), 0.0)  # a dense bias or a norm's shift would fill the padding
        return x

    def regularization_penalty(self) -> Tensor:
        """``l1·Σ|w| + l2·Σw²`` over the weight matrices (dense kernels, LSTM input and recurrent kernels).

        Biases, normalisation scales and embeddings are left out, as Keras' kernel and recurrent regularizers do
        (Keras regularizes embeddings only through their own ``embeddings_regularizer``); the trainer adds this to
        the loss.
        """
        matrices = [
            param
            for layer in self.layers
            if not isinstance(layer, TokenEmbedding)
            for param in layer.parameters()
            if param.dim() >= 2
        ]
        penalty = torch.zeros((), device=matrices[0].device)
        if self.spec.l1:
            penalty = penalty + self.spec.l1 * sum(param.abs().sum() for param in matrices)
        if self.spec.l2:
            penalty = penalty + self.spec.l2 * sum(param.square().sum() for param in matrices)
        return penalty


def build_model(
    spec: ModelSpec,
    n_features: int,
    n_outputs: int | None,
    where: str = "model",
    needs: str | None = None,
    per_step: bool = False,
    lstm_kernel: LSTMKernel = "auto",
) -> LSTMNet:
    """Compile ``spec`` for inputs of ``n_features`` per step and a task that needs ``n_outputs`` per sample.

    When the first layer is an ``embedding``, the input is one token id per step and ``n_features`` is the
    vocabulary size (the number of ids, padding and unknown included).

    ``n_outputs`` is what the task needs (horizon × targets when forecasting): the last dense's units are inferred
    from it when omitted and must equal it when given. ``None`` keeps what the spec says and lets the network end
    in a sequence. ``where`` is the spec's YAML path and ``needs`` says where ``n_outputs`` comes from (e.g.
    ``"horizon 12 × 1 target"``); both go into the error messages. ``per_step`` asks for ``n_outputs`` at every
    time step (a language model's next-token scores) instead of once per sample. ``lstm_kernel`` is
    ``train.lstm_kernel``: what runs the lstm layers' recurrence on a CPU (:class:`LSTMBlock`). Every broken rule
    is reported in one ConfigError.
    """
    if n_features < 1:
        raise ValueError(f"n_features must be >= 1, got {n_features}")
    problems = _shape_problems(spec.layers, where)
    resolved, output_problems = _resolve_outputs(spec, n_outputs, where, needs, per_step)
    problems += output_problems
    if problems:
        raise ConfigError(problems)
    return LSTMNet(resolved, n_features, lstm_kernel)


def output_layer(spec: ModelSpec) -> int:
    """The index of the layer that sets the output size: the last lstm or dense (norms and dropout keep it)."""
    return max(index for index, layer in enumerate(spec.layers) if layer.kind in {"lstm", "dense"})


def _shape_problems(layers: list[LayerSpec], where: str) -> list[str]:
    """The rules on how layers may follow each other."""
    problems = []
    reader = 1 if layers[0].embedding is not None else 0  # the layer that reads the input sequence
    if reader == len(layers) or layers[reader].kind != "lstm":
        got = layers[reader].kind if reader < len(layers) else "nothing"
        what = "the first layer after an embedding" if reader else "the first layer"
        problems.append(
            f"{where}.layers[{reader}]: {what} must be lstm (it reads the (batch, time, features) input), got {got}"
        )
    collapsed_at: int | None = None  # the lstm that turned the sequence into one vector per sample
    for index, layer in enumerate(layers):
        if layer.embedding is not None and index > 0:
            problems.append(
                f"{where}.layers[{index}].embedding: an embedding reads token ids, so it can only be the first layer"
            )
        if layer.lstm is not None:
            if collapsed_at is not None:
                problems.append(
                    f"{where}.layers[{index}].lstm: needs a sequence, but layers[{collapsed_at}] emits one vector "
                    f"per sample; set return_sequences: true on {where}.layers[{collapsed_at}].lstm"
                )
            collapsed_at = None if layer.lstm.return_sequences else index
        if layer.dense is not None and layer.dense.units is None and index < len(layers) - 1:
            problems.append(
                f"{where}.layers[{index}].dense.units: is required on every dense layer but the last "
                "(only the last one's is inferred from the task)"
            )
    return problems


def _resolve_outputs(
    spec: ModelSpec, n_outputs: int | None, where: str, needs: str | None, per_step: bool
) -> tuple[ModelSpec, list[str]]:
    """The spec with the last dense's units filled in, and what stops the output from fitting the task."""
    layers = spec.layers
    last = len(layers) - 1
    lstms = [index for index, layer in enumerate(layers) if layer.lstm is not None]
    last_dense = layers[last].dense
    if n_outputs is None:
        if last_dense is not None and last_dense.units is None:
            return spec, [f"{where}.layers[{last}].dense.units: is required when no task gives the number of outputs"]
        return spec, []
    if n_outputs < 1:
        raise ValueError(f"n_outputs must be >= 1, got {n_outputs}")

    problems = []
    wanted = f"the task needs {n_outputs} outputs" + (f" ({needs})" if needs else "")
    if per_step and lstms and not layers[lstms[-1]].lstm.return_sequences:
        problems.append(
            f"{where}.layers[{lstms[-1]}].lstm.return_sequences: a language model predicts the next token at every "
            "step, but this last lstm emits one vector per sample; set return_sequences: true"
        )
    if not per_step and lstms and layers[lstms[-1]].lstm.return_sequences:
        problems.append(
            f"{where}.layers[{lstms[-1]}].lstm.return_sequences: a forecast needs one vector per sample at the end, "
            "but this last lstm emits a sequence; set return_sequences: false (or leave it out)"
        )
    sizing = [index for index, layer in enumerate(layers) if layer.kind in {"lstm", "dense"}]
    if not sizing:
        return spec, problems
    index = sizing[-1]
    dense = layers[index].dense
    if dense is None:
        lstm = layers[index].lstm
        width = lstm.units * (2 if lstm.bidirectional else 1)
        if width != n_outputs:
            problems.append(
                f"{where}.layers[{index}].lstm: the network ends with this layer's {width} values per sample, but "
                f"{wanted}; end it with `- dense: {{}}` (its units are inferred)"
            )
    elif dense.units is None and index == last:
        filled = LayerSpec(dense=dense.model_copy(update={"units": n_outputs}))
        spec = spec.model_copy(update={"layers": [*layers[:last], filled]})
    elif dense.units is not None and dense.units != n_outputs:
        problems.append(f"{where}.layers[{index}].dense.units: {wanted}, got {dense.units}")
    return spec, problems


# ---------------------------------------------------------------------------------------------------- summary

_KERAS_NAMES = {
    "embedding": ("embedding", "Embedding"),
    "lstm": ("lstm", "LSTM"),
    "dense": ("dense", "Dense"),
    "dropout": ("dropout", "Dropout"),
    "batchnorm": ("batch_normalization", "BatchNormalization"),
    "layernorm": ("layer_normalization", "LayerNormalization"),
}


def summary(model: LSTMNet, n_features: int) -> str:
    """A Keras-like ``model.summary()`` table, with each layer's Keras parameter count beside PyTorch's.

    Output shapes are read from a forward pass of two samples of three steps (in eval mode, without gradients);
    batch and time print as ``None``. Param # counts, like Keras, the batchnorm running statistics (non-trainable).
    An embedding-first model's input is a sequence of token ids, ``Input(shape=(None,))`` as in Keras.
    """
    rows = [("Layer (type)", "Output Shape", "Param #", "Keras Param #")]
    seen: Counter[str] = Counter()
    trainable = non_trainable = keras_total = 0
    for layer, block, shape in zip(model.spec.layers, model.layers, _output_shapes(model), strict=True):
        name, kind = _KERAS_NAMES[layer.kind]
        if layer.lstm is not None and layer.lstm.bidirectional:
            name, kind = "bidirectional", "Bidirectional"
        label = f"{name}_{seen[name]}" if seen[name] else name
        seen[name] += 1
        learned = sum(param.numel() for param in block.parameters() if param.requires_grad)
        fixed = sum(param.numel() for param in block.parameters() if not param.requires_grad)
        fixed += sum(buffer.numel() for buffer in block.buffers() if buffer.is_floating_point())  # running stats
        second_bias = sum(param.numel() for pname, param in block.named_parameters() if "bias_hh" in pname)
        trainable, non_trainable = trainable + learned, non_trainable + fixed
        keras_total += learned + fixed - second_bias
        rows.append((f"{label} ({kind})", shape, f"{learned + fixed:,}", f"{learned + fixed - second_bias:,}"))

    widths = [max(len(row[column]) for row in rows) + 3 for column in range(4)]
    lines = [
        " " + row[0].ljust(widths[0]) + row[1].ljust(widths[1]) + row[2].rjust(widths[2]) + row[3].rjust(widths[3])
        for row in rows
    ]
    rule = len(lines[0])
    note = (
        "PyTorch's LSTM keeps two bias vectors (b_ih, b_hh): each lstm layer has 4 × units more parameters "
        f"than Keras' count (Keras: {keras_total:,})."
    )
    if any(layer.lstm is not None and layer.lstm.bidirectional for layer in model.spec.layers):
        note += " A bidirectional layer has them once per direction."
    return "\n".join(
        [
            f'Model: "{type(model).__name__}"',
            f"Input(shape=(None,)) of token ids, vocabulary {n_features:,}"
            if model.spec.layers[0].embedding is not None
            else f"Input(shape=(None, {n_features}))",
            "_" * rule,
            lines[0],
            "=" * rule,
            *lines[1:],
            "=" * rule,
            f"Total params: {trainable + non_trainable:,} (Keras: {keras_total:,})",
            f"Trainable params: {trainable:,}",
            f"Non-trainable params: {non_trainable:,}",
            "_" * rule,
            note,
        ]
    )


def _output_shapes(model: LSTMNet) -> list[str]:
    """Each layer's output shape, Keras style: ``(None, None, 64)`` for a sequence, ``(None, 12)`` for vectors."""
    shapes: list[torch.Size] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: shapes.append(out.shape)) for layer in model.layers]
    reference = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(2, 3, model.input_width, dtype=reference.dtype, device=reference.device))  # (B, T, F)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return ["(" + ", ".join(["None"] * (len(shape) - 1) + [str(shape[-1])]) + ")" for shape in shapes]
