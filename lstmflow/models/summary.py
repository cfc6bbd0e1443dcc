"""A Keras-style ``model.summary()`` of a compiled network, with each layer's Keras parameter count beside
PyTorch's (which counts one more bias vector per lstm direction)."""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from lstmflow.config import LayerSpec
from lstmflow.models.network import LSTMNet

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
        name, kind = _keras_name(layer)
        label = f"{name}_{seen[name]}" if seen[name] else name
        seen[name] += 1
        learned, fixed, second_bias = _parameter_counts(block)
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


def _keras_name(layer: LayerSpec) -> tuple[str, str]:
    """Keras' default layer name and class for a spec layer; a bidirectional lstm is Keras' ``Bidirectional``."""
    if layer.lstm is not None and layer.lstm.bidirectional:
        return "bidirectional", "Bidirectional"
    return _KERAS_NAMES[layer.kind]


def _parameter_counts(block: nn.Module) -> tuple[int, int, int]:
    """The module's trainable and non-trainable values (frozen weights and the running statistics, as Keras counts
    them), and how many of them are PyTorch's second lstm bias, which Keras does not have."""
    learned = sum(param.numel() for param in block.parameters() if param.requires_grad)
    fixed = sum(param.numel() for param in block.parameters() if not param.requires_grad)
    fixed += sum(buffer.numel() for buffer in block.buffers() if buffer.is_floating_point())  # running stats
    second_bias = sum(param.numel() for name, param in block.named_parameters() if "bias_hh" in name)
    return learned, fixed, second_bias


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
