"""Plain text for language modelling: read the corpus, split it, fit a tokenizer on the training part, store ids.

The corpus is one stream of text per part. Fractions take contiguous stretches (train first, then validation, then
test at the end), cut at line breaks so that no line is shared by two parts; or ``split.files`` names the
test text and optionally the validation text (else the end of the training text validates). The tokenizer
(:mod:`lstmflow.data.text`) is fitted on the training text only and saved as ``tokenizer.json`` in the feature
folder, beside ``train.npy``, ``val.npy`` and ``test.npy`` (token ids, int32) and ``meta.json``.

:class:`TokenStream` lays a part out the way truncated back-propagation through time wants it (the classic
"batchify"): the ids are cut into ``rows`` equal streams side by side, and batch ``k`` holds steps
``[k·T, (k+1)·T)`` of every stream, so row ``r`` of batch ``k + 1`` continues row ``r`` of batch ``k``. A
stateful lstm carries its state across that boundary.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lstmflow.config import CorpusSpec
from lstmflow.data.parts import PARTS, TRAIN_AND_VAL, Part, Parts
from lstmflow.data.text import LARGEST_EXACT_ID, TOKENIZER_FILE, UNK_ID, Tokenizer, _decoded, fit_tokenizer
from lstmflow.errors import DataError

if TYPE_CHECKING:
    from torch import Tensor

#: Bumped when the feature folder's layout changes.
CORPUS_FORMAT = 1


# ------------------------------------------------------------------------------------------------ reading


def read_text(path: Path, where: str) -> str:
    """A text file, or a folder's ``*.txt`` files in name order, each ending in one line break; must hold text."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise DataError(f"{where}: {path} is a folder without .txt files")
        text = "".join(_decoded(file, where).rstrip("\n") + "\n" for file in files)
    elif path.is_file():
        text = _decoded(path, where)
    else:
        raise DataError(f"{where}: no such file or folder: {path}")
    if not text.strip():
        raise DataError(f"{where}: {path} holds no text (only whitespace)")
    return text


def split_corpus(spec: CorpusSpec, where: str) -> dict[Part, str]:
    """The training, validation and test text: given files (the validation part, when no file gives it, the last
    ``split.val`` of the training text), or contiguous fractions cut at line breaks."""
    files = spec.split.files
    if files is not None:
        train = read_text(spec.path, f"{where}.path")
        test = read_text(files.test, f"{where}.split.files.test")
        if files.val is not None:
            return {"train": train, "val": read_text(files.val, f"{where}.split.files.val"), "test": test}
        # No validation file: the end of the training text validates, as the end of a whole corpus tests.
        val_start = _line_start_near(train, round(len(train) * (1 - spec.split.val)))
        return {"train": train[:val_start], "val": train[val_start:], "test": test}
    text = read_text(spec.path, f"{where}.path")
    size = len(text)
    val_start = _line_start_near(text, round(size * (1 - spec.split.val - spec.split.test)))
    test_start = _line_start_near(text, round(size * (1 - spec.split.test)))
    return {"train": text[:val_start], "val": text[val_start:test_start], "test": text[test_start:]}


def _line_start_near(text: str, position: int) -> int:
    """The start of the line holding ``position`` (or of the next one, whichever is nearer); ``position`` itself
    when the text has no line break near it (one long line is cut where asked)."""
    if position >= len(text):
        return len(text)
    before = text.rfind("\n", 0, position)
    after = text.find("\n", position)
    candidates = [i + 1 for i in (before, after) if i != -1]
    if not candidates:
        return position
    return min(candidates, key=lambda start: abs(start - position))


# ------------------------------------------------------------------------------------------------ features


def prepare_corpus_features(spec: CorpusSpec, out_dir: Path, where: str) -> dict[str, Any]:
    """The data stage of a `corpus` pipeline: split, fit the tokenizer on the training text, write the ids."""
    parts = split_corpus(spec, where)
    tokenizer = fit_tokenizer(spec.tokenizer, [parts["train"]])
    if tokenizer.vocab_size > LARGEST_EXACT_ID:
        raise DataError(f"{where}.tokenizer.vocab_size: at most {LARGEST_EXACT_ID} ids fit, got {tokenizer.vocab_size}")
    ids = {part: np.asarray(tokenizer.encode(text), dtype=np.int32) for part, text in parts.items()}
    needed = {"train": spec.sequence_length + 1, "val": 2, "test": 2}
    short = [
        f"{part} has {len(ids[part])} token(s), needs {needed[part]}" for part in PARTS if len(ids[part]) < needed[part]
    ]
    if short:
        fix = "split.files" if spec.split.files is not None else "split.val / split.test, or a longer text"
        raise DataError(
            f"{where}: the corpus is too short to train on: {'; '.join(short)} (change {fix}, or sequence_length)"
        )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for part in PARTS:
        np.save(out_dir / f"{part}.npy", ids[part])
    tokenizer.save(out_dir / TOKENIZER_FILE)
    meta = {
        "format": CORPUS_FORMAT,
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_kind": tokenizer.kind,
        "tokens": {part: len(ids[part]) for part in PARTS},
        "characters": {part: len(parts[part]) for part in PARTS},
        "unknown_tokens": {part: int((ids[part] == UNK_ID).sum()) for part in PARTS},
        "unigram_counts": np.bincount(ids["train"], minlength=tokenizer.vocab_size).tolist(),
        "split": "files" if spec.split.files is not None else "fractions",
    }
    (out_dir / "meta.json").write_text(json.dumps(meta) + "\n")
    return {
        "vocab_size": tokenizer.vocab_size,
        **{f"{part}_tokens": meta["tokens"][part] for part in PARTS},
        **{f"{part}_characters": meta["characters"][part] for part in PARTS},
        "unknown_tokens_val_test": meta["unknown_tokens"]["val"] + meta["unknown_tokens"]["test"],
    }


def corpus_model_io(spec: CorpusSpec, where: str) -> tuple[int, int]:
    """(vocabulary size, outputs per step) of the raw corpus, fitting the tokenizer as the data stage would."""
    vocab = fit_tokenizer(spec.tokenizer, [split_corpus(spec, where)["train"]]).vocab_size
    return vocab, vocab


@dataclass(frozen=True)
class CorpusFeatures:
    """A prepared corpus folder: token ids per part, the tokenizer and what the data stage counted."""

    ids: dict[Part, np.ndarray]
    tokenizer: Tokenizer
    meta: dict[str, Any]

    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    def stream(self, part: Parts) -> TokenStream:
        if part == TRAIN_AND_VAL:  # train.refit refuses language models: their corpus is never refitted
            raise ValueError(f"a corpus has no {TRAIN_AND_VAL} part: its parts are separate streams")
        return TokenStream(self.ids[part])


def load_corpus(path: Path) -> CorpusFeatures:
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise DataError(f"no prepared corpus in {path} (run the data stage first)")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != CORPUS_FORMAT:
        raise DataError(
            f"{path} holds corpus features of format {meta.get('format')}, not {CORPUS_FORMAT}: prepare the data again"
        )
    ids = {part: np.load(path / f"{part}.npy") for part in PARTS}
    return CorpusFeatures(ids, Tokenizer.load(path / TOKENIZER_FILE), meta)


# ------------------------------------------------------------------------------------------------ batches


class TokenStream:
    """One part's token ids as ``rows`` parallel streams, cut into spans of ``steps`` tokens."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def rows_for(self, batch_size: int, steps: int) -> int:
        """Streams side by side: ``batch_size``, fewer when the part is too short for that many of ``steps + 1``."""
        return max(1, min(batch_size, (len(self.ids) - 1) // (steps + 1)))

    def layout(self, rows: int) -> np.ndarray:
        """(rows, L) ids: stream r is ``ids[r·L:(r+1)·L]``; the last ``len % rows`` ids are left out."""
        length = len(self.ids) // rows
        return self.ids[: rows * length].reshape(rows, length)  # (N,) → (rows, L)

    def batch_count(self, rows: int, steps: int) -> int:
        return math.ceil((len(self.ids) // rows - 1) / steps)

    def scored_tokens(self, rows: int) -> int:
        """Tokens that get a prediction: all of each stream but its first."""
        return rows * (len(self.ids) // rows - 1)

    def batches(self, rows: int, steps: int, order: np.ndarray | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """(x (rows, T, 1) float32 ids, y (rows, T) int64 next ids) per span, in stream order or ``order``'s."""
        import torch

        streams = torch.from_numpy(self.layout(rows).astype(np.int64))  # (rows, L)
        starts = range(0, streams.shape[1] - 1, steps)
        for index in order if order is not None else range(len(starts)):
            start = starts[index]
            end = min(start + steps, streams.shape[1] - 1)
            x = streams[:, start:end].unsqueeze(-1).float()  # (rows, T) → (rows, T, 1): the embedding's input
            yield x, streams[:, start + 1 : end + 1]  # targets: the next id of every step, (rows, T)
