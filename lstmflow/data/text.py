"""Labelled texts as sequences of token ids: read a table, fit a tokenizer on the training texts, store the ids.

A text becomes a (T, 1) sequence of token ids (id 0 pads, id 1 is the unknown token) and is written with the
sequences code, so text classification trains, evaluates and serves like any other sequence classification; the
model's ``embedding`` layer turns the ids into vectors. The fitted tokenizer is saved as ``tokenizer.json`` inside
the feature folder, so it is versioned with the ids it produced and a served model encodes requests with the very
same vocabulary (:func:`load_tokenizer`, :func:`text_steps`).

Three tokenizers, all fitted on the training part only (a word seen only in validation or test is unknown):

- ``word``: runs of letters/digits and single punctuation marks (``\\w+|[^\\w\\s]``), looked up in a plain dict
  (measured 2-4x faster than the ``tokenizers`` library's WordLevel model for this);
- ``char``: every character, spaces included;
- ``bpe``: subword byte-pair encoding trained with the ``tokenizers`` library.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import pandas as pd

from lstmflow.config import TextSpec, TokenizerSpec
from lstmflow.data.parts import assign_parts, read_parts
from lstmflow.data.sequences import write_sequences
from lstmflow.data.tables import cell_text, listing
from lstmflow.errors import DataError

#: The ids every tokenizer reserves: padding (what pads a batch, and the embedding's zero vector) and unknown.
PAD_ID, UNK_ID = 0, 1
#: Where the fitted tokenizer is saved inside the feature folder.
TOKENIZER_FILE = "tokenizer.json"
#: Bumped when the saved tokenizer's layout changes.
TOKENIZER_FORMAT = 1
#: A word token: a run of letters, digits and underscores, or one punctuation mark.
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")
#: Token ids are stored as float32 with the other sequence values; float32 holds every integer below 2**24 exactly.
LARGEST_EXACT_ID = 2**24


# ------------------------------------------------------------------------------------------------ reading


class TextTable(NamedTuple):
    """What :func:`read_texts` found, in file order."""

    texts: list[str]
    labels: list[str]
    #: How messages name each text: its line in a CSV or JSONL file, its row in a Parquet file.
    names: list[str]
    #: The given part per text: the split column's cell, or its file's part (``split.files``); else None.
    given_parts: list[str | None] | None


def read_texts(spec: TextSpec, where: str) -> TextTable:
    """Read the labelled texts of a CSV, Parquet or JSON Lines file (chosen by suffix), or of three with
    ``split.files``; every bad cell is named."""
    return read_parts(spec, where, _read_text_file)


def _read_text_file(spec: TextSpec, where: str) -> TextTable:
    path = Path(spec.path)
    columns, rows, names = read_rows(path, where)
    wanted = [spec.text_column, spec.label_column, spec.split.column]
    missing = [name for name in wanted if name is not None and name not in columns]
    if missing:
        raise DataError(f"{where}: {path} has no column(s) {missing}; available: {columns}")
    if not rows:
        raise DataError(f"{where}.path: {path} has no texts")

    texts = [cell_text(row.get(spec.text_column)) for row in rows]
    empty = [names[i] for i, text in enumerate(texts) if text is None or not text.strip()]
    if empty:
        raise DataError(
            f"{where}.text_column: {path} has {len(empty)} empty text(s) in {spec.text_column!r}: {listing(empty)}"
        )
    labels = [cell_text(row.get(spec.label_column)) for row in rows]
    no_label = [names[i] for i, label in enumerate(labels) if label is None or label == ""]
    if no_label:
        raise DataError(
            f"{where}.label_column: {path} has {len(no_label)} empty label cell(s) in {spec.label_column!r}: "
            f"{listing(no_label)}"
        )
    given = None
    if spec.split.column is not None:
        given = [cell_text(row.get(spec.split.column)) or None for row in rows]
    return TextTable(cast(list[str], texts), cast(list[str], labels), names, given)  # no None left: checked above


def read_rows(path: Path, where: str) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """(columns, rows as dicts, how messages name each row) of a CSV, JSON Lines or Parquet file, chosen by suffix:
    shared by every kind that reads texts from a table."""
    if not path.is_file():
        raise DataError(f"{where}.path: no file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, where)
    if suffix in {".jsonl", ".ndjson"}:
        return _read_jsonl(path, where)
    if suffix in {".parquet", ".pq"}:
        return _read_parquet(path)
    raise DataError(f"{where}.path: {path} must be a .csv, .jsonl or .parquet file, got suffix {path.suffix!r}")


def _decoded(path: Path, where: str, key: str = "path") -> str:
    """The file as text; bytes that are not UTF-8 are named by offset and line (a leading BOM is dropped), under
    the spec's ``key`` that names the file."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{where}.{key}: {path} is not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line}) "
            "cannot be decoded; save the file as UTF-8"
        ) from None


#: The longest CSV cell read: a text of any length that fits in memory (Python's csv module refuses cells over 128 KB).
LONGEST_FIELD = 2**31 - 1


def _read_csv(path: Path, where: str) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """Rows as dicts and each row's first line: quoted texts may span lines, so lines are counted, not assumed."""
    csv.field_size_limit(LONGEST_FIELD)  # the default, 128 KB, would refuse a long but valid text
    reader = csv.reader(io.StringIO(_decoded(path, where), newline=""))
    try:
        columns = next(reader, [])
        if not columns:
            raise DataError(f"{where}.path: {path} is empty; it needs a header line and one row per text")
        rows, names = [], []
        end_line = reader.line_num
        for cells in reader:
            start_line, end_line = end_line + 1, reader.line_num
            if not cells:
                continue  # a blank line
            if len(cells) != len(columns):
                raise DataError(
                    f"{where}.path: {path} line {start_line} has {len(cells)} cell(s) but the header has "
                    f"{len(columns)}; quote texts that hold commas"
                )
            rows.append(dict(zip(columns, cells)))
            names.append(f"line {start_line}")
    except csv.Error as exc:
        raise DataError(f"{where}.path: {path} line {reader.line_num} is not valid CSV ({exc})") from None
    return columns, rows, names


def _read_jsonl(path: Path, where: str) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """One JSON object per line; blank lines are skipped; the columns are every key any object has."""
    rows, names = [], []
    columns: dict[str, None] = {}  # keys in order of first appearance
    for number, line in enumerate(_decoded(path, where).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}.path: {path} line {number} is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}.path: {path} line {number} is a JSON {type(row).__name__}, not an object")
        columns.update(dict.fromkeys(row))
        rows.append(row)
        names.append(f"line {number}")
    return list(columns), rows, names


def _read_parquet(path: Path) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    table = pd.read_parquet(path)
    columns = [str(name) for name in table.columns]
    table.columns = columns
    return columns, table.to_dict("records"), [f"row {i + 1}" for i in range(len(table))]


# ------------------------------------------------------------------------------------------------ tokenizer


class Tokenizer:
    """Text → token ids with a vocabulary fitted on training texts; id 0 is padding, id 1 the unknown token.

    ``word`` and ``char`` keep their vocabulary as a list (the position is the id); ``bpe`` wraps a trained
    ``tokenizers.Tokenizer``, whose normalizer does the lowercasing.
    """

    def __init__(self, kind: str, lowercase: bool, tokens: list[str] | None = None, bpe: Any = None) -> None:
        self.kind = kind
        self.lowercase = lowercase
        self.tokens = tokens
        self.bpe = bpe
        self._ids = {token: index for index, token in enumerate(tokens)} if tokens is not None else None

    @property
    def vocab_size(self) -> int:
        """Ids in use, padding and unknown included: the embedding's number of rows."""
        if self.bpe is not None:
            return self.bpe.get_vocab_size()
        assert self.tokens is not None, "a word or char tokenizer keeps its vocabulary"
        return len(self.tokens)

    def pieces(self, text: str) -> list[str]:
        """The text cut into tokens before the vocabulary lookup (word and char)."""
        if self.lowercase:
            text = text.lower()
        return WORD_PATTERN.findall(text) if self.kind == "word" else list(text)

    def encode(self, text: str) -> list[int]:
        """The text's token ids; a token outside the vocabulary is id 1. Empty only for a text without tokens."""
        if self.bpe is not None:
            return self.bpe.encode(text).ids
        ids = self._ids
        assert ids is not None, "a word or char tokenizer keeps its vocabulary"
        return [ids.get(piece, UNK_ID) for piece in self.pieces(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids, for reading a model's output: padding is dropped, the unknown id reads as the
        unknown token. Lowercasing is not undone, and the word tokenizer's spacing is guessed (:func:`join_words`)."""
        kept = [int(i) for i in ids if i != PAD_ID]
        if self.bpe is not None:  # subwords (no continuation marks: the pre-tokenizer split on spaces) as words
            return join_words([self.bpe.id_to_token(i) for i in kept])
        assert self.tokens is not None, "a word or char tokenizer keeps its vocabulary"
        outside = [i for i in kept if not 0 <= i < len(self.tokens)]
        if outside:
            raise ValueError(f"ids outside the vocabulary of {len(self.tokens)}: {outside[:5]}")
        pieces = [self.tokens[i] for i in kept]
        return "".join(pieces) if self.kind == "char" else join_words(pieces)

    def save(self, path: Path) -> None:
        """One JSON file; a bpe tokenizer embeds the ``tokenizers`` library's own JSON."""
        saved: dict[str, Any] = {"format": TOKENIZER_FORMAT, "kind": self.kind, "lowercase": self.lowercase}
        if self.bpe is not None:
            saved["bpe"] = json.loads(self.bpe.to_str())
        else:
            saved["tokens"] = self.tokens
        Path(path).write_text(json.dumps(saved, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"no tokenizer at {path} (run the data stage first)")
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("format") != TOKENIZER_FORMAT:
            raise DataError(f"{path} is not a tokenizer of format {TOKENIZER_FORMAT}: prepare the data again")
        if saved["kind"] == "bpe":
            from tokenizers import Tokenizer as BPETokenizer

            return cls("bpe", saved["lowercase"], bpe=BPETokenizer.from_str(json.dumps(saved["bpe"])))
        return cls(saved["kind"], saved["lowercase"], tokens=saved["tokens"])


#: Marks written without a space before them, and after them.
_CLOSING, _OPENING = set(".,;:!?)]}%"), set("([{")
#: Marks that join the words on both sides (quarante-deux, l'homme) when they stand between two words.
_JOINERS = set("-'’")


def join_words(pieces: list[str]) -> str:
    """Word pieces as text: spaces between words, none before closing or after opening punctuation, none around a
    hyphen or apostrophe between two words. Hand-written because no library detokenizes this tokenizer's pieces
    (``\\w+|[^\\w\\s]`` drops the spacing; Moses-style detokenizers expect their own tokenization)."""
    words = [len(piece) > 1 or re.match(r"\w", piece) is not None for piece in pieces]  # not one punctuation mark
    text, glue_next = "", True
    for i, piece in enumerate(pieces):
        joining = piece in _JOINERS and 0 < i < len(pieces) - 1 and words[i - 1] and words[i + 1]
        text += piece if glue_next or joining or piece in _CLOSING else " " + piece
        glue_next = joining or piece in _OPENING
    return text


def fit_tokenizer(spec: TokenizerSpec, texts: Iterable[str]) -> Tokenizer:
    """Fit a tokenizer of ``spec.kind`` on ``texts`` (the training part only)."""
    if spec.kind == "bpe":
        return _fit_bpe(spec, texts)
    cutter = Tokenizer(spec.kind, spec.lowercase, tokens=[])
    counts = Counter(piece for text in texts for piece in cutter.pieces(text))
    specials = {spec.padding_token, spec.unknown_token}
    kept = sorted(
        (token for token, count in counts.items() if count >= spec.min_frequency and token not in specials),
        key=lambda token: (-counts[token], token),  # most frequent first; ties by the token, so the output is stable
    )
    tokens = [spec.padding_token, spec.unknown_token, *kept][: spec.vocab_size]
    return Tokenizer(spec.kind, spec.lowercase, tokens=tokens)


def _fit_bpe(spec: TokenizerSpec, texts: Iterable[str]) -> Tokenizer:
    """Byte-pair encoding on words split like the word tokenizer's; ``min_frequency`` is the fewest times a pair
    must occur to be merged (the library's meaning), and the alphabet is capped so the vocabulary cap holds."""
    from tokenizers import Tokenizer as BPETokenizer
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    bpe = BPETokenizer(models.BPE(unk_token=spec.unknown_token))
    if spec.lowercase:
        bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+|[^\w\s]+
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=[spec.padding_token, spec.unknown_token],  # ids 0 and 1, in this order
        limit_alphabet=spec.vocab_size - 2,
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return Tokenizer("bpe", spec.lowercase, bpe=bpe)


def load_tokenizer(features_dir: Path) -> Tokenizer:
    """The tokenizer :func:`prepare_text_features` fitted and saved in ``features_dir``."""
    return Tokenizer.load(Path(features_dir) / TOKENIZER_FILE)


def text_steps(tokenizer: Tokenizer, text: str, max_length: int | None) -> np.ndarray:
    """A text as the model reads it: its first ``max_length`` token ids as a (T, 1) float32 sequence.

    Shared by the data stage and serving, so a request is encoded exactly as the training texts were.
    """
    ids = tokenizer.encode(text)[:max_length]
    return np.asarray(ids, dtype=np.float32).reshape(-1, 1)  # (T,) → (T, 1); exact: every id < 2**24


# ------------------------------------------------------------------------------------------------ features


def prepare_text_features(spec: TextSpec, out_dir: Path, where: str) -> dict[str, Any]:
    """The data stage of a `text` pipeline: read, divide into parts, fit the tokenizer on the training texts,
    encode (truncating to ``max_length``, counted) and write the sequence store with ``tokenizer.json`` in it."""
    table = read_texts(spec, where)
    parts = assign_parts(table.labels, spec.split, table.given_parts, where, names=table.names)
    tokenizer = fit_tokenizer(spec.tokenizer, (text for text, part in zip(table.texts, parts) if part == 0))
    if tokenizer.vocab_size > LARGEST_EXACT_ID:
        raise DataError(f"{where}.tokenizer.vocab_size: at most {LARGEST_EXACT_ID} ids fit, got {tokenizer.vocab_size}")

    # Every text has a non-space character (read_texts checks), so every tokenizer gives it a token, unknown or not.
    sequences, full_lengths = [], []
    for text in table.texts:
        steps = text_steps(tokenizer, text, None)
        full_lengths.append(len(steps))
        sequences.append(steps[: spec.max_length])
    full = np.asarray(full_lengths)
    kept = np.minimum(full, spec.max_length) if spec.max_length is not None else full
    truncated = {"texts": int((full > kept).sum()), "tokens_dropped": int((full - kept).sum())}

    extra = {
        "vocab_size": tokenizer.vocab_size,
        "tokenizer": TOKENIZER_FILE,
        "tokenizer_kind": tokenizer.kind,
        "max_length": spec.max_length,
        "truncated": truncated,
    }
    # Ids are stored unscaled (scale "none") and already cut to their first max_length tokens: the sequence
    # writer's own max_length would keep the last steps, which is right for a series but not for a text.
    summary = write_sequences(
        out_dir,
        sequences,
        table.labels,
        parts,
        "none",
        None,
        where,
        extra,
        names=table.names,
        split=spec.split,
        given=table.given_parts,
    )
    tokenizer.save(Path(out_dir) / TOKENIZER_FILE)
    unknown = sum(int((seq == UNK_ID).sum()) for seq, part in zip(sequences, parts) if part != 0)
    return {
        **summary,
        "vocab_size": tokenizer.vocab_size,
        "truncated_sequences": truncated["texts"],
        "truncated_steps": truncated["tokens_dropped"],
        "max_length": spec.max_length,
        "unknown_tokens_val_test": unknown,
    }


def text_model_io(spec: TextSpec, where: str) -> tuple[int, int]:
    """(vocabulary size, classes) of the raw data, fitting the tokenizer as the data stage would: for a summary
    of the model before the data stage has run."""
    table = read_texts(spec, where)
    parts = assign_parts(table.labels, spec.split, table.given_parts, where, names=table.names)
    tokenizer = fit_tokenizer(spec.tokenizer, (text for text, part in zip(table.texts, parts) if part == 0))
    return tokenizer.vocab_size, len(set(table.labels))
