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

Where each part lives: the shape rules in :mod:`~lstmflow.models.shapes`, the network in
:mod:`~lstmflow.models.network`, the lstm layer and its kernel choice in :mod:`~lstmflow.models.lstm_block`, the
other layers in :mod:`~lstmflow.models.layers`, the summary table in :mod:`~lstmflow.models.summary`. This module,
the one the rest of lstmflow imports, holds :func:`build_model` and re-exports the names they use.
"""

from __future__ import annotations

from lstmflow.config import ModelSpec
from lstmflow.errors import ConfigError
from lstmflow.models.frames import frame_problems
from lstmflow.models.layers import FeatureBatchNorm
from lstmflow.models.lstm_block import LSTMBlock, LSTMKernel
from lstmflow.models.network import EnsembleNet, LSTMNet, LSTMState
from lstmflow.models.seq2seq import Seq2Seq
from lstmflow.models.shapes import output_layer, resolve_outputs, shape_problems
from lstmflow.models.summary import summary

__all__ = [
    "EnsembleNet",
    "FeatureBatchNorm",
    "LSTMBlock",
    "LSTMKernel",
    "LSTMNet",
    "LSTMState",
    "Network",
    "Seq2Seq",
    "build_model",
    "output_layer",
    "summary",
]

#: What training runs: a layer-list network, or a translator's encoder–decoder (both give ``forward``, ``parameters``,
#: ``regularization_penalty`` and ``lstm_kernels_trained``).
Network = LSTMNet | Seq2Seq


def build_model(
    spec: ModelSpec,
    n_features: int,
    n_outputs: int | None,
    where: str = "model",
    needs: str | None = None,
    per_step: bool = False,
    lstm_kernel: LSTMKernel = "auto",
    ensemble: int = 1,
    generates: bool = True,
) -> LSTMNet:
    """Compile ``spec`` for inputs of ``n_features`` per step and a task that needs ``n_outputs`` per sample.

    When the first layer is an ``embedding``, the input is one token id per step and ``n_features`` is the
    vocabulary size (the number of ids, padding and unknown included).

    ``n_outputs`` is what the task needs (horizon × targets when forecasting): the last dense's units are inferred
    from it when omitted and must equal it when given. ``None`` keeps what the spec says and lets the network end
    in a sequence. ``where`` is the spec's YAML path and ``needs`` says where ``n_outputs`` comes from (e.g.
    ``"horizon 12 × 1 target"``); both go into the error messages. ``per_step`` asks for ``n_outputs`` at every
    time step (a language model's next-token scores, a transcriber's per-frame scores) instead of once per sample;
    ``generates`` (with ``per_step``) says the model writes one token at a time carrying only the lstm layers'
    state, so only layers that can do that are allowed (a language model; not a transcriber, which may convolve).
    ``lstm_kernel`` is ``train.lstm_kernel``: what runs the lstm layers' recurrence on a CPU (:class:`LSTMBlock`).
    ``ensemble`` is ``train.ensemble``: above 1, an :class:`EnsembleNet` of that many networks. Every broken rule is
    reported in one ConfigError.
    """
    if n_features < 1:
        raise ValueError(f"n_features must be >= 1, got {n_features}")
    problems = shape_problems(spec.layers, where) + frame_problems(spec.layers, where, n_features)
    resolved, output_problems = resolve_outputs(spec, n_outputs, where, needs, per_step, generates)
    problems += output_problems
    if problems:
        raise ConfigError(problems)
    if ensemble > 1:
        return EnsembleNet([LSTMNet(resolved, n_features, lstm_kernel, where) for _ in range(ensemble)])
    return LSTMNet(resolved, n_features, lstm_kernel, where)
