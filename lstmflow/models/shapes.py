"""The shape rules of a layer list: how layers may follow each other, and how the network's end fits the task.

Keras reports these mistakes only when fitting (an lstm fed one vector per sample, an output of the wrong size);
here each is one line naming the YAML path of the layer to change, collected by
:func:`~lstmflow.models.lstm.build_model` into one :class:`~lstmflow.errors.ConfigError`.
"""

from __future__ import annotations

from lstmflow.config import LayerSpec, LSTMLayer, ModelSpec

#: The layer kinds that set the width of what follows them (norms and dropout keep it).
SIZING_KINDS = frozenset({"lstm", "dense"})


def output_layer(spec: ModelSpec) -> int:
    """The index of the layer that sets the output size: the last lstm or dense (norms and dropout keep it)."""
    return max(index for index, layer in enumerate(spec.layers) if layer.kind in SIZING_KINDS)


def shape_problems(layers: list[LayerSpec], where: str) -> list[str]:
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


def resolve_outputs(
    spec: ModelSpec, n_outputs: int | None, where: str, needs: str | None, per_step: bool
) -> tuple[ModelSpec, list[str]]:
    """The spec with the last dense's units filled in, and what stops the output from fitting the task."""
    layers = spec.layers
    last = len(layers) - 1
    last_dense = layers[last].dense
    if n_outputs is None:
        if last_dense is not None and last_dense.units is None:
            return spec, [f"{where}.layers[{last}].dense.units: is required when no task gives the number of outputs"]
        return spec, []
    if n_outputs < 1:
        raise ValueError(f"n_outputs must be >= 1, got {n_outputs}")

    wanted = f"the task needs {n_outputs} outputs" + (f" ({needs})" if needs else "")
    problems = _sequence_end_problems(layers, where, per_step)
    if not any(layer.kind in SIZING_KINDS for layer in layers):
        return spec, problems
    index = output_layer(spec)
    dense, lstm = layers[index].dense, layers[index].lstm
    if lstm is not None:
        width = lstm.units * (2 if lstm.bidirectional else 1)
        if width != n_outputs:
            problems.append(
                f"{where}.layers[{index}].lstm: the network ends with this layer's {width} values per sample, but "
                f"{wanted}; end it with `- dense: {{}}` (its units are inferred)"
            )
    elif dense is not None and dense.units is None and index == last:
        filled = LayerSpec(dense=dense.model_copy(update={"units": n_outputs}))
        spec = spec.model_copy(update={"layers": [*layers[:last], filled]})
    elif dense is not None and dense.units is not None and dense.units != n_outputs:
        problems.append(f"{where}.layers[{index}].dense.units: {wanted}, got {dense.units}")
    return spec, problems


def _sequence_end_problems(layers: list[LayerSpec], where: str, per_step: bool) -> list[str]:
    """Whether the last lstm emits what the task reads: a sequence for a language model, one vector otherwise."""
    lstms: list[tuple[int, LSTMLayer]] = [
        (index, layer.lstm) for index, layer in enumerate(layers) if layer.lstm is not None
    ]
    if not lstms:
        return []
    index, last_lstm = lstms[-1]
    if per_step and not last_lstm.return_sequences:
        return [
            (
                f"{where}.layers[{index}].lstm.return_sequences: a language model predicts the next token at every "
                "step, but this last lstm emits one vector per sample; set return_sequences: true"
            )
        ]
    if not per_step and last_lstm.return_sequences:
        return [
            (
                f"{where}.layers[{index}].lstm.return_sequences: a forecast needs one vector per sample at the end, "
                "but this last lstm emits a sequence; set return_sequences: false (or leave it out)"
            )
        ]
    return []
