"""The served translator: source texts in, their translations out; and the decoding shared with evaluation.

No MLflow needed: :mod:`lstmflow.tracking.serving` wraps it as a pyfunc. A text longer than the pipeline's
``data.max_length`` tokens is refused (400), never cut: a cut source would be translated as if it ended there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from lstmflow.serving.request_checks import BadRequest, describe, require_columns

if TYPE_CHECKING:
    from lstmflow.data.text import Tokenizer
    from lstmflow.models.seq2seq import Seq2Seq

#: Sources decoded together: bounds the padded batch (and the beams, ``beam_width`` times as many rows) in memory.
DECODE_BATCH = 64


def encoded_sources(tokenizer: Tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Each text's source token ids; a text with no token, or more than ``max_length``, is a BadRequest naming
    its row."""
    encoded = []
    for row, text in enumerate(texts):
        ids = tokenizer.encode(text)
        if not ids:
            raise BadRequest(f"row {row}: {text[:40]!r} holds no token for this {tokenizer.kind} tokenizer")
        if len(ids) > max_length:
            raise BadRequest(
                f"row {row}: {len(ids)} source tokens, above the model's limit of {max_length} (data.max_length); "
                "split the text into sentences"
            )
        encoded.append(ids)
    return encoded


@torch.no_grad()
def translate_ids(
    model: Seq2Seq, sources: list[list[int]], bos: int, eos: int, max_steps: int, beam_width: int
) -> list[list[int]]:
    """The target ids the model writes for each source (greedy when ``beam_width`` is 1), in the given order;
    sources are decoded in batches of similar length."""
    model.eval()
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    written: list[list[int]] = [[] for _ in sources]
    for start in range(0, len(order), DECODE_BATCH):
        rows = order[start : start + DECODE_BATCH]
        lengths = torch.tensor([len(sources[i]) for i in rows])
        batch = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)  # (B, S), padded with id 0
        for slot, i in enumerate(rows):
            batch[slot, : len(sources[i])] = torch.tensor(sources[i])
        if beam_width > 1:
            outputs, _ = model.beam_search(batch, lengths, bos, eos, max_steps, beam_width)
        else:
            outputs, _, _ = model.greedy(batch, lengths, bos, eos, max_steps)
        for slot, i in enumerate(rows):
            written[i] = outputs[slot]
    return written


class Translator:
    """Texts in a ``text`` column in; a ``translation`` column out (beam search of ``evaluate.beam_width``)."""

    def __init__(self, bundle_dir: Path, spec: Any, info: dict[str, Any]) -> None:
        from lstmflow.data.pairs import SOURCE_TOKENIZER_FILE, TARGET_TOKENIZER_FILE, special_ids
        from lstmflow.data.text import Tokenizer
        from lstmflow.models.seq2seq import Seq2Seq

        self.spec = spec
        self.source_tokenizer = Tokenizer.load(bundle_dir / SOURCE_TOKENIZER_FILE)
        self.target_tokenizer = Tokenizer.load(bundle_dir / TARGET_TOKENIZER_FILE)
        self.bos, self.eos = special_ids(self.target_tokenizer)
        self.model = Seq2Seq(spec.model, info["source_vocab"], info["target_vocab"], f"pipelines.{spec.name}.model")
        self.model.load_state_dict(torch.load(bundle_dir / "model.pt", map_location="cpu", weights_only=True))
        self.model.eval()

    @staticmethod
    def bundle_info(features_dir: Path) -> dict[str, Any]:
        meta = json.loads((features_dir / "meta.json").read_text())
        return {"source_vocab": meta["source_vocab"], "target_vocab": meta["target_vocab"]}

    def example(self, info: dict[str, Any]) -> pd.DataFrame:
        """The first training source as a request."""
        from lstmflow.data.pairs import read_pairs

        sources = read_pairs(self.spec.data, f"pipelines.{self.spec.name}.data").sources
        return pd.DataFrame({"text": [next(text for text in sources if text and text.strip())]})

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One row per text: the text and its translation."""
        require_columns(frame, ["text"])
        texts = list(frame["text"])
        for index, text in zip(frame.index, texts):
            if not isinstance(text, str):
                raise BadRequest(f"column 'text', row {index!r}: {describe(text)} is not text")
        return pd.DataFrame({"text": texts, "translation": self.translate(texts)})

    def translate(self, texts: list[str], beam_width: int | None = None) -> list[str]:
        """The translations of ``texts`` (BadRequest for an empty or too long one)."""
        from lstmflow.data.pairs import target_text

        max_length = self.spec.data.max_length
        sources = encoded_sources(self.source_tokenizer, texts, max_length)
        width = self.spec.evaluate.beam_width if beam_width is None else beam_width
        written = translate_ids(self.model, sources, self.bos, self.eos, max_length + 1, width)
        return [target_text(self.target_tokenizer, ids) for ids in written]
