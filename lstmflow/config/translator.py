"""The shape rules of a translator's layers (task translate): ``model.layers`` is the encoder, ``model.decoder``
the decoder (:mod:`lstmflow.models.seq2seq` builds them). Checked when the spec is validated, so a search space
whose values break them is refused before any trial trains."""

from __future__ import annotations

from lstmflow.config.model import LayerSpec, ModelSpec

#: Layer kinds each side accepts (in the order given by :func:`translator_problems`).
ENCODER_KINDS = ("embedding", "lstm", "dropout")
DECODER_KINDS = ("embedding", "lstm", "dropout", "attention", "dense")
#: A classifier's output activations that leave logits once the softmax is folded into the loss.
HEAD_ACTIVATIONS = ("softmax", "linear")


def translator_problems(spec: ModelSpec, where: str) -> list[str]:
    """What in ``model.layers`` (the encoder) and ``model.decoder`` cannot make a translator, each naming its
    YAML path; empty when the spec compiles."""
    problems = []
    encoder, decoder = spec.layers, spec.decoder or []
    for side, layers, kinds in (("layers", encoder, ENCODER_KINDS), ("decoder", decoder, DECODER_KINDS)):
        if not layers or layers[0].embedding is None:
            problems.append(f"{where}.{side}[0]: a translator reads token ids, so it must start with an embedding")
        problems += [
            f"{where}.{side}[{i}]: a translator's {side} takes {', '.join(kinds)} layers, got {layer.kind}"
            for i, layer in enumerate(layers)
            if layer.kind not in kinds or (i > 0 and layer.embedding is not None)
        ]
    problems += _state_problems(encoder, decoder, where)
    problems += _decoder_order_problems(decoder, where)
    return problems


def _lstms(layers: list[LayerSpec]) -> list[tuple[int, LayerSpec]]:
    return [(i, layer) for i, layer in enumerate(layers) if layer.lstm is not None]


def _state_problems(encoder: list[LayerSpec], decoder: list[LayerSpec], where: str) -> list[str]:
    """The decoder's k-th lstm starts from the encoder's k-th final state: as many lstm layers, the same units."""
    ours, theirs = _lstms(encoder), _lstms(decoder)
    if not ours or len(ours) != len(theirs):
        return [
            (
                f"{where}.decoder: each decoder lstm starts from the final state of the encoder's lstm at the same "
                f"depth, so both need the same number of lstm layers (at least one); the encoder has {len(ours)}, the "
                f"decoder {len(theirs)}"
            )
        ]
    problems = []
    for (i, enc), (j, dec) in zip(ours, theirs):
        assert enc.lstm is not None and dec.lstm is not None  # _lstms keeps lstm layers only
        if enc.lstm.units != dec.lstm.units:
            problems.append(
                f"{where}.decoder[{j}].lstm.units: starts from the state of {where}.layers[{i}] and needs its "
                f"size, {enc.lstm.units}, got {dec.lstm.units}"
            )
    for side, layers in (("layers", encoder), ("decoder", decoder)):
        for i, layer in _lstms(layers):
            assert layer.lstm is not None
            if layer.lstm.bidirectional:
                problems.append(f"{where}.{side}[{i}].lstm.bidirectional: not supported in a translator")
            if not layer.lstm.return_sequences:
                problems.append(
                    f"{where}.{side}[{i}].lstm.return_sequences: a translator's lstm layers give every step "
                    "(the next layer, the attention or the next-token scores read them): set it to true"
                )
    return problems


def _decoder_order_problems(decoder: list[LayerSpec], where: str) -> list[str]:
    """The decoder's shape: lstm layers, then at most one attention after the last of them, then dense layers, the
    last of them the next-token scores."""
    kinds = [layer.kind for layer in decoder]
    last_lstm = max((i for i, kind in enumerate(kinds) if kind == "lstm"), default=-1)
    problems = [
        f"{where}.decoder[{i}]: {kind} must come after the decoder's last lstm (decoder[{last_lstm}])"
        for i, kind in enumerate(kinds)
        if kind in ("attention", "dense") and i < last_lstm
    ]
    attentions = [i for i, kind in enumerate(kinds) if kind == "attention"]
    if len(attentions) > 1:
        problems.append(f"{where}.decoder[{attentions[1]}]: one attention layer at most, got {len(attentions)}")
    if kinds and kinds[-1] != "dense":
        problems.append(f"{where}.decoder[{len(kinds) - 1}]: the decoder must end in a dense layer (the scores)")
    elif kinds:
        head = decoder[-1].dense
        assert head is not None
        if head.activation not in HEAD_ACTIVATIONS:
            problems.append(
                f"{where}.decoder[{len(kinds) - 1}].dense.activation: gives the next-token scores, so softmax (folded "
                f"into the loss) or linear, got {head.activation!r}"
            )
    return problems
