"""The shape rules of a layer list: how layers may follow each other, and how the network's end fits the task.

Keras reports these mistakes only when fitting (an lstm fed one vector per sample, an output of the wrong size);
here each is one line naming the YAML path of the layer to change, collected by
:func:`~lstmflow.models.lstm.build_model` into one :class:`~lstmflow.errors.ConfigError`.
"""

from __future__ import annotations

from lstmflow.config import LayerSpec, ModelSpec

#: The layer kinds that set the width of what follows them (norms, dropout, activations and pools keep it).
SIZING_KINDS = frozenset({"lstm", "dense", "conv1d", "branches", "time_distributed"})
#: What the first layer (after an embedding) may be: the layers that read a (batch, time, features) input.
SEQUENCE_READERS = ("lstm", "conv1d", "branches")
#: Layers that read a frame as an image: only inside a ``time_distributed`` layer (see lstmflow.models.frames).
FRAME_ONLY = frozenset({"conv2d", "max_pool2d", "average_pool2d", "flatten"})
#: Layers that read a sequence and emit one, possibly of fewer steps.
OVER_TIME = frozenset({"conv1d", "max_pool1d", "average_pool1d"})
#: Layers that turn a sequence into one vector per sample.
TIME_POOLS = frozenset({"global_max_pool", "global_average_pool", "attention_pool"})
#: The kinds that decide whether the network still has a time axis.
TIME_KINDS = frozenset({"lstm", "branches"}) | OVER_TIME | TIME_POOLS
#: The kinds a language model may use: it predicts at every step and generates one token at a time, carrying
#: only the lstm layers' state from token to token.
PER_STEP_KINDS = frozenset({"embedding", "lstm", "dense", "dropout", "batchnorm", "layernorm", "activation"})

#: Where the time axis was turned into one vector per sample: (the layer's path under the model, its kind).
Collapse = tuple[str, str]


def output_layer(spec: ModelSpec) -> int:
    """The index of the layer that sets the output size: the last lstm, dense, conv1d or branches."""
    return max(index for index, layer in enumerate(spec.layers) if layer.kind in SIZING_KINDS)


def shape_problems(layers: list[LayerSpec], where: str) -> list[str]:
    """The rules on how layers may follow each other."""
    problems: list[str] = []
    reader = 1 if layers[0].embedding is not None else 0  # the layer that reads the input sequence
    reads_frames = layers[0].time_distributed is not None  # a video's frames, as the network's first layer
    if not reads_frames and (reader == len(layers) or layers[reader].kind not in SEQUENCE_READERS):
        got = layers[reader].kind if reader < len(layers) else "nothing"
        what = "the first layer after an embedding" if reader else "the first layer"
        problems.append(
            f"{where}.layers[{reader}]: {what} must be {_either(SEQUENCE_READERS)} (it reads the (batch, time, "
            f"features) input), got {got}"
        )
    _walk(layers, where, "layers", None, problems, reads_input=False)
    return problems


def _walk(
    layers: list[LayerSpec], where: str, prefix: str, collapsed: Collapse | None, problems: list[str], reads_input: bool
) -> Collapse | None:
    """Check ``layers`` (at ``prefix``), fed a sequence (``collapsed`` None) or one vector per sample; appends to
    ``problems`` and returns where the time axis is gone at their end (None: still a sequence).

    ``reads_input``: these layers are a branch that reads the network's input, so the first must read a sequence.
    """
    top = prefix == "layers"
    kinds = [layer.kind for layer in layers]
    for index, layer in enumerate(layers):
        path, kind = f"{prefix}[{index}]", layer.kind
        if kind == "embedding" and (index > 0 or not top):
            problems.append(
                f"{where}.{path}.embedding: an embedding reads token ids, so it can only be the first layer"
            )
        if index == 0 and reads_input and kind not in SEQUENCE_READERS:
            problems.append(
                f"{where}.{path}: a branch that reads the input must start with {_either(SEQUENCE_READERS)}, got {kind}"
            )
        if kind in FRAME_ONLY:
            problems.append(
                f"{where}.{path}.{kind}: reads each frame as an image; put it in a `time_distributed` layer's layers"
            )
        if kind == "time_distributed" and (index > 0 or not top):
            problems.append(
                f"{where}.{path}.time_distributed: reads the input's frames, so it can only be the first layer"
            )
        if kind in TIME_KINDS - {"branches"} and collapsed is not None:
            problems.append(_needs_a_sequence(where, path, kind, collapsed))
        if layer.lstm is not None:
            collapsed = None if layer.lstm.return_sequences else (path, kind)
            if layer.lstm.stateful and not top:
                problems.append(
                    f"{where}.{path}.lstm.stateful: a stateful lstm must be a layer of the model, not of a branch"
                )
        elif kind in TIME_POOLS:
            collapsed = (path, kind)
        elif layer.branches is not None:
            reads = (reads_input and index == 0) or (top and all(earlier == "embedding" for earlier in kinds[:index]))
            collapsed = _walk_branches(layer.branches, where, path, collapsed, problems, reads)
        if layer.dense is not None and layer.dense.units is None and (index < len(layers) - 1 or not top):
            problems.append(
                f"{where}.{path}.dense.units: is required on every dense layer but the last "
                "(only the last one's is inferred from the task)"
            )
    return collapsed


def _walk_branches(
    branches: list[list[LayerSpec]], where: str, path: str, collapsed: Collapse | None, problems: list[str],
    reads_input: bool,
) -> Collapse | None:  # fmt: skip
    """Check each branch, then that their ends can be concatenated: all one vector per sample, or all sequences
    whose steps are the input's (no layer that changes the number of steps)."""
    prefix = f"{path}.branches"
    ends = [
        _walk(branch, where, f"{prefix}[{number}]", collapsed, problems, reads_input)
        for number, branch in enumerate(branches)
    ]
    sequences = [number for number, end in enumerate(ends) if end is None]
    if sequences and len(sequences) < len(ends):
        vectors = [number for number in range(len(ends)) if number not in sequences]
        problems.append(
            f"{where}.{prefix}: branches {vectors} end in one vector per sample but branches {sequences} in a "
            "sequence; concatenation needs them alike: end each with a global pool (e.g. `- global_average_pool: "
            "{}`) or keep each a sequence"
        )
    elif sequences:
        for number, branch in enumerate(branches):
            for position, layer in enumerate(branch):
                if _changes_steps(layer):
                    problems.append(
                        f"{where}.{prefix}[{number}][{position}].{layer.kind}: changes the number of steps, so this "
                        "branch's sequence cannot be joined step by step with the others; use strides 1 and padding "
                        "same here, or end every branch with a global pool"
                    )
        return None
    return (path, "branches")


def _changes_steps(layer: LayerSpec) -> bool:
    """Whether a layer's output has fewer steps than its input (for some length)."""
    if layer.conv1d is not None:
        return layer.conv1d.strides > 1 or (layer.conv1d.padding == "valid" and layer.conv1d.kernel_size > 1)
    pool = layer.max_pool1d or layer.average_pool1d
    if pool is not None:
        return (pool.strides or pool.pool_size) > 1 or (pool.padding == "valid" and pool.pool_size > 1)
    if layer.branches is not None:
        return any(_changes_steps(inner) for branch in layer.branches for inner in branch)
    return False


def _needs_a_sequence(where: str, path: str, kind: str, collapsed: Collapse) -> str:
    """The problem of a layer that reads a sequence placed after the one that turned it into vectors."""
    at, what = collapsed
    fixes = {
        "lstm": f"set return_sequences: true on {where}.{at}.lstm",
        "branches": f"end every branch of {where}.{at}.branches in a sequence",
    }
    fix = fixes.get(what, f"put {where}.{at}.{what} after this layer")
    return f"{where}.{path}.{kind}: needs a sequence, but {at} emits one vector per sample; {fix}"


def _either(kinds: tuple[str, ...]) -> str:
    return ", ".join(kinds[:-1]) + f" or {kinds[-1]}"


def shortest_input(layers: list[LayerSpec], need: int = 1) -> int:
    """The fewest input steps that leave ``need`` steps after ``layers`` (``valid`` padding and strides shorten a
    sequence): what a probing forward pass, such as the summary's, must feed."""
    for layer in reversed(layers):
        need = _steps_needed(layer, need)
    return need


def _steps_needed(layer: LayerSpec, need: int) -> int:
    """The input steps one layer needs to emit ``need`` steps."""
    if layer.branches is not None:
        return max(shortest_input(branch, need) for branch in layer.branches)
    if layer.conv1d is not None:
        size, strides, padding = layer.conv1d.kernel_size, layer.conv1d.strides, layer.conv1d.padding
    else:
        pool = layer.max_pool1d or layer.average_pool1d
        if pool is None:
            return need
        size, strides, padding = pool.pool_size, pool.strides or pool.pool_size, pool.padding
    return (need - 1) * strides + (1 if padding == "same" else size)


def resolve_outputs(
    spec: ModelSpec, n_outputs: int | None, where: str, needs: str | None, per_step: bool, generates: bool = True
) -> tuple[ModelSpec, list[str]]:
    """The spec with the last dense's units filled in, and what stops the output from fitting the task; with
    ``per_step`` and ``generates`` (a language model) only the layers that can carry state token by token."""
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
    problems = _per_step_problems(layers, where) if per_step and generates else []
    problems += _sequence_end_problems(layers, where, per_step)
    if not any(layer.kind in SIZING_KINDS for layer in layers):
        return spec, problems
    index = output_layer(spec)
    head = layers[index]
    dense = head.dense
    width = {
        "lstm": head.lstm.units * (2 if head.lstm.bidirectional else 1) if head.lstm else None,
        "conv1d": head.conv1d.filters if head.conv1d else None,
    }.get(head.kind)
    if head.kind in ("lstm", "conv1d", "branches", "time_distributed") and width != n_outputs:
        ends = {"branches": "the concatenated branches", "time_distributed": "a vector per frame"}.get(
            head.kind, f"this layer's {width} values per sample"
        )
        problems.append(
            f"{where}.layers[{index}].{head.kind}: the network ends with {ends}, but {wanted}; end it with "
            "`- dense: {}` (its units are inferred)"
        )
    elif dense is not None and dense.units is None and index == last:
        filled = LayerSpec(dense=dense.model_copy(update={"units": n_outputs}))
        spec = spec.model_copy(update={"layers": [*layers[:last], filled]})
    elif dense is not None and dense.units is not None and dense.units != n_outputs:
        problems.append(f"{where}.layers[{index}].dense.units: {wanted}, got {dense.units}")
    return spec, problems


def _per_step_problems(layers: list[LayerSpec], where: str) -> list[str]:
    """The layers a language model cannot use (see :data:`PER_STEP_KINDS`)."""
    return [
        f"{where}.layers[{index}].{layer.kind}: a language model predicts a token at every step and generates one "
        f"at a time, carrying only the lstm layers' state; it takes {_either(tuple(sorted(PER_STEP_KINDS)))} layers"
        for index, layer in enumerate(layers)
        if layer.kind not in PER_STEP_KINDS
    ]


def _sequence_end_problems(layers: list[LayerSpec], where: str, per_step: bool) -> list[str]:
    """Whether the network emits what the task reads: a sequence for a language model, one vector otherwise."""
    collapsed = _walk(layers, where, "layers", None, [], reads_input=False)
    deciders = [(index, layer) for index, layer in enumerate(layers) if layer.kind in TIME_KINDS]
    if not deciders or (collapsed is None) == per_step:
        return []
    index, layer = deciders[-1]
    if layer.lstm is not None and per_step:
        return [
            (
                f"{where}.layers[{index}].lstm.return_sequences: a language model predicts the next token at every "
                "step, but this last lstm emits one vector per sample; set return_sequences: true"
            )
        ]
    if layer.lstm is not None:
        return [
            (
                f"{where}.layers[{index}].lstm.return_sequences: a forecast needs one vector per sample at the end, "
                "but this last lstm emits a sequence; set return_sequences: false (or leave it out)"
            )
        ]
    if per_step:
        return []  # a sequence out, as a per-step task reads
    return [
        (
            f"{where}.layers[{index}].{layer.kind}: the task needs one vector per sample at the end, but the network "
            "still emits a sequence after this layer; follow it with a global pool (e.g. `- global_average_pool: {}`)"
        )
    ]
