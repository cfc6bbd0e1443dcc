"""A Keras-style ``model.summary()`` of a compiled network, with each layer's Keras parameter count beside
PyTorch's (which counts one more bias vector per lstm direction). Branches list their layers in order, branch by
branch, then a ``Concatenate`` row, as Keras' functional models do."""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor, nn

from lstmflow.config import LayerSpec
from lstmflow.models.frames import TimeDistributed
from lstmflow.models.network import Branches, EnsembleNet, LSTMNet
from lstmflow.models.seq2seq import Seq2Seq
from lstmflow.models.shapes import shortest_input

_KERAS_NAMES = {
    "embedding": ("embedding", "Embedding"),
    "lstm": ("lstm", "LSTM"),
    "dense": ("dense", "Dense"),
    "dropout": ("dropout", "Dropout"),
    "batchnorm": ("batch_normalization", "BatchNormalization"),
    "layernorm": ("layer_normalization", "LayerNormalization"),
    "activation": ("activation", "Activation"),
    "conv1d": ("conv1d", "Conv1D"),
    "max_pool1d": ("max_pooling1d", "MaxPooling1D"),
    "average_pool1d": ("average_pooling1d", "AveragePooling1D"),
    "global_max_pool": ("global_max_pooling1d", "GlobalMaxPooling1D"),
    "global_average_pool": ("global_average_pooling1d", "GlobalAveragePooling1D"),
    "attention_pool": ("attention_pool", "AttentionPool"),  # not a Keras built-in: lstmflow's name
    "attention": ("attention", "Attention"),
    "branches": ("concatenate", "Concatenate"),
}
#: Keras' classes of the per-frame layers inside ``time_distributed`` (the rest keep their names above).
_KERAS_FRAME_CLASSES = {
    "conv2d": "Conv2D",
    "max_pool2d": "MaxPooling2D",
    "average_pool2d": "AveragePooling2D",
    "flatten": "Flatten",
    "global_max_pool": "GlobalMaxPooling2D",
    "global_average_pool": "GlobalAveragePooling2D",
}


def summary(model: LSTMNet | Seq2Seq, n_features: int) -> str:
    """A Keras-like ``model.summary()`` table, with each layer's Keras parameter count beside PyTorch's.

    Output shapes are read from a forward pass of two samples of three steps, or as many as the layers need (in eval
    mode, without gradients); batch and time print as ``None``. Param # counts, like Keras, the batchnorm running
    statistics (non-trainable). An embedding-first model's input is a sequence of token ids, ``Input(shape=(None,))``
    as in Keras. An ensemble (``train.ensemble``) shows one member's table and its totals for all the members.
    """
    if isinstance(model, Seq2Seq):
        return _translator_summary(model)
    if isinstance(model, EnsembleNet):
        return _ensemble_summary(model, n_features)
    rows = [("Layer (type)", "Output Shape", "Param #", "Keras Param #")]
    seen: Counter[str] = Counter()
    trainable = non_trainable = keras_total = 0
    leaves = _leaves(model.spec.layers, list(model.layers))
    framed = {block for layer, block in _frame_leaves(model.spec.layers, list(model.layers))}
    leaves = [leaf for layer, block in leaves for leaf in (_frame_leaves([layer], [block]) or [(layer, block)])]
    for (layer, block), shape in zip(leaves, _output_shapes(model, [block for _, block in leaves]), strict=True):
        name, kind = _keras_name(layer, block in framed)
        label = f"{name}_{seen[name]}" if seen[name] else name
        seen[name] += 1
        learned, fixed, second_bias = _parameter_counts(block)
        trainable, non_trainable = trainable + learned, non_trainable + fixed
        keras_total += learned + fixed - second_bias
        rows.append((f"{label} ({kind})", shape, f"{learned + fixed:,}", f"{learned + fixed - second_bias:,}"))

    lines = _aligned(rows)
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
            _input_line(model.spec.layers[0], n_features),
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


def _input_line(first: LayerSpec, n_features: int) -> str:
    """Keras' ``Input``: token ids for an embedding-first model, frames for a time-distributed one, else steps."""
    if first.embedding is not None:
        return f"Input(shape=(None,)) of token ids, vocabulary {n_features:,}"
    if first.time_distributed is not None and first.time_distributed.input_shape is not None:
        return f"Input(shape=(None, {', '.join(map(str, first.time_distributed.input_shape))})) of frames"
    return f"Input(shape=(None, {n_features}))"


def _aligned(rows: list[tuple[str, str, str, str]]) -> list[str]:
    """The table's rows as lines: names and shapes to the left, counts to the right."""
    widths = [max(len(row[column]) for row in rows) + 3 for column in range(4)]
    return [
        " " + row[0].ljust(widths[0]) + row[1].ljust(widths[1]) + row[2].rjust(widths[2]) + row[3].rjust(widths[3])
        for row in rows
    ]


def _translator_summary(model: Seq2Seq) -> str:
    """The encoder's layers, then the decoder's, each named with its side; every output is a sequence of the
    layer's width. Keras counts a luong attention's mixing layer as a Dense after it; here it is one row."""
    rows = [("Layer (type)", "Output Shape", "Param #", "Keras Param #")]
    total = keras_total = 0
    decoder = model.spec.decoder or []
    for side, layers, blocks in (("encoder", model.spec.layers, model.encoder), ("decoder", decoder, model.decoder)):
        seen: Counter[str] = Counter()
        width = 0
        for layer, block in zip(layers, blocks, strict=True):
            name, kind = _keras_name(layer)
            if layer.attention is not None and layer.attention.score == "bahdanau":
                name, kind = "additive_attention", "AdditiveAttention"
            label = f"{side}_{name}_{seen[name]}" if seen[name] else f"{side}_{name}"
            seen[name] += 1
            learned, fixed, second_bias = _parameter_counts(block)
            width = getattr(block, "out_features", width)  # a dropout keeps its input's width
            shape = f"(None, None, {width})"
            total, keras_total = total + learned + fixed, keras_total + learned + fixed - second_bias
            rows.append((f"{label} ({kind})", shape, f"{learned + fixed:,}", f"{learned + fixed - second_bias:,}"))
    lines = _aligned(rows)
    rule = len(lines[0])
    return "\n".join(
        [
            'Model: "Seq2Seq" (encoder-decoder; the decoder starts from the encoder\'s final states)',
            (
                f"Inputs: source token ids, vocabulary {model.source_vocab:,}; target token ids so far, vocabulary "
                f"{model.target_vocab:,} (begin and end marks included)"
            ),
            "_" * rule, lines[0], "=" * rule, *lines[1:], "=" * rule,
            f"Total params: {total:,} (Keras: {keras_total:,})",
            "_" * rule,
            (
                "PyTorch's LSTM keeps two bias vectors (b_ih, b_hh): each lstm layer has 4 × units more parameters "
                f"than Keras' count (Keras: {keras_total:,})."
            ),
        ]
    )  # fmt: skip


def _ensemble_summary(model: EnsembleNet, n_features: int) -> str:
    """Each member's table once (they share the spec), then the parameters of all of them."""
    members = model.networks()
    total = sum(param.numel() for param in model.parameters())
    total += sum(buffer.numel() for buffer in model.buffers() if buffer.is_floating_point())
    return "\n".join(
        [
            f'Model: "{type(model).__name__}" of {len(members)} members (train.ensemble), each:',
            summary(members[0], n_features),
            f"Ensemble total params: {total:,} ({len(members)} × {total // len(members):,})",
        ]
    )


def _keras_name(layer: LayerSpec, framed: bool = False) -> tuple[str, str]:
    """Keras' default layer name and class for a spec layer; a bidirectional lstm is Keras' ``Bidirectional``, and a
    per-frame layer (``framed``) is wrapped in Keras' ``TimeDistributed``."""
    if framed:
        return (
            "time_distributed",
            f"TimeDistributed({_KERAS_FRAME_CLASSES.get(layer.kind) or _KERAS_NAMES[layer.kind][1]})",
        )
    if layer.lstm is not None and layer.lstm.bidirectional:
        return "bidirectional", "Bidirectional"
    return _KERAS_NAMES[layer.kind]


def _leaves(layers: list[LayerSpec], blocks: list[nn.Module]) -> list[tuple[LayerSpec, nn.Module]]:
    """The summary's rows in order: each layer with its module, a branches layer as its branches' rows, branch by
    branch, then itself (the concatenation)."""
    rows: list[tuple[LayerSpec, nn.Module]] = []
    for layer, block in zip(layers, blocks, strict=True):
        if layer.branches is not None and isinstance(block, Branches):
            for branch, modules in zip(layer.branches, block.layers_of(), strict=True):
                rows += _leaves(branch, modules)
        rows.append((layer, block))
    return rows


def _frame_leaves(layers: list[LayerSpec], blocks: list[nn.Module]) -> list[tuple[LayerSpec, nn.Module]]:
    """The per-frame layers of the ``time_distributed`` layers among ``layers``, with their modules: one Keras
    ``TimeDistributed`` row each."""
    return [
        (inner, module)
        for layer, block in zip(layers, blocks, strict=True)
        if layer.time_distributed is not None and isinstance(block, TimeDistributed)
        for inner, module in zip(layer.time_distributed.layers, block.layers, strict=True)
    ]


def _parameter_counts(block: nn.Module) -> tuple[int, int, int]:
    """The module's trainable and non-trainable values (frozen weights and the running statistics, as Keras counts
    them), and how many of them are PyTorch's second lstm bias, which Keras does not have. A concatenation has none
    of its own (its branches' rows count them)."""
    if isinstance(block, Branches):
        return 0, 0, 0
    learned = sum(param.numel() for param in block.parameters() if param.requires_grad)
    fixed = sum(param.numel() for param in block.parameters() if not param.requires_grad)
    fixed += sum(buffer.numel() for buffer in block.buffers() if buffer.is_floating_point())  # running stats
    second_bias = sum(param.numel() for name, param in block.named_parameters() if "bias_hh" in name)
    return learned, fixed, second_bias


def _output_shapes(model: LSTMNet, blocks: list[nn.Module]) -> list[str]:
    """Each block's output shape, Keras style: ``(None, None, 64)`` for a sequence, ``(None, 12)`` for vectors."""
    shapes: dict[nn.Module, torch.Size] = {}

    def record(module: nn.Module, _inputs: object, out: Tensor | tuple[Tensor, Tensor | None]) -> None:
        shapes[module] = (out[0] if isinstance(out, tuple) else out).shape  # layers over time also return lengths

    framed = {block for _, block in _frame_leaves(model.spec.layers, list(model.layers))}
    hooks = [block.register_forward_hook(record) for block in blocks]
    reference = next(model.parameters())
    steps = max(3, shortest_input(model.spec.layers))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(2, steps, model.input_width, dtype=reference.dtype, device=reference.device))  # (B, T, F)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return [_keras_shape(shapes[block], block in framed) for block in blocks]


def _keras_shape(shape: torch.Size, framed: bool) -> str:
    """Keras' output shape: batch and time as None; a per-frame layer's image (N, C, H, W) channels last."""
    if framed:
        sizes = [shape[2], shape[3], shape[1]] if len(shape) == 4 else [shape[-1]]
        return "(" + ", ".join(["None", "None", *map(str, sizes)]) + ")"
    return "(" + ", ".join(["None"] * (len(shape) - 1) + [str(shape[-1])]) + ")"
