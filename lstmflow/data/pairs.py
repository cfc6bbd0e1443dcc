"""Paired texts for translation: read the pairs, divide them into parts, fit a tokenizer per side on the training
pairs, store the ids and the texts, and batch them for an encoder-decoder.

The pairs come from one table (CSV, Parquet or JSON Lines, the readers of :mod:`lstmflow.data.text`) or from two
aligned text files, line n of one translated by line n of the other. The parts are drawn as for classification
(:mod:`lstmflow.data.parts`) with every pair under one label, so the fractions are seeded but not stratified.

The prepared folder:

- ``source_tokenizer.json`` and ``target_tokenizer.json``: the fitted tokenizers
  (:class:`~lstmflow.data.text.Tokenizer`);
- ``source_ids.npy`` / ``target_ids.npy`` (sum of lengths,) int32 and ``source_offsets.npy`` / ``target_offsets.npy``
  (N + 1,) int64: pair ``i``'s ids are ``ids[offsets[i]:offsets[i + 1]]``, no start or end token;
- ``parts.npy`` (N,) int8: 0 train, 1 val, 2 test;
- ``pairs.parquet``: the ``source``, ``target`` and ``part`` texts of the same N pairs, for what evaluation compares
  with words rather than ids (BLEU's references, the copy and dictionary baselines);
- ``meta.json``: counts per part, vocabulary sizes, the special ids, what was left out.

Target ids: 0 pads, 1 is the unknown token, then the tokenizer's vocabulary; the decoder also writes a start token
(BOS, the tokenizer's vocabulary size) and an end token (EOS, one more), so its output size is the vocabulary + 2.
Separate .npy files rather than one .npz, because an .npz holds the time it was written and DVC hashes bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np
import pandas as pd

from lstmflow.config import PairsSpec
from lstmflow.data.parts import PARTS, TRAIN_AND_VAL, Parts, assign_parts, read_parts, split_record
from lstmflow.data.tables import cell_text, listing
from lstmflow.data.text import UNK_ID, Tokenizer, _decoded, fit_tokenizer, read_rows
from lstmflow.errors import DataError

if TYPE_CHECKING:
    import torch

#: Bumped when the layout of the prepared folder changes.
PAIRS_FORMAT = 1
SOURCE_TOKENIZER_FILE, TARGET_TOKENIZER_FILE = "source_tokenizer.json", "target_tokenizer.json"
TEXTS_FILE = "pairs.parquet"
#: The one label every pair is drawn under: the parts are seeded fractions of all pairs, not per class.
_ONE_LABEL = "pair"


# ------------------------------------------------------------------------------------------------ reading


class PairTable(NamedTuple):
    """What :func:`read_pairs` found, in file order; a side may be None or blank (a bad pair)."""

    sources: list[str | None]
    targets: list[str | None]
    #: How messages name each pair: its line in a CSV, JSONL or aligned text file, its row in a Parquet file.
    names: list[str]
    #: The given part per pair: the split column's cell, or its file's part (``split.files``); else None.
    given_parts: list[str | None] | None


def read_pairs(spec: PairsSpec, where: str) -> PairTable:
    """The pairs of a table (or of three with ``split.files``) or of two aligned text files."""
    if spec.target_path is not None:
        return _read_aligned(spec, where)
    return read_parts(spec, where, _read_pair_table)


def _read_pair_table(spec: PairsSpec, where: str) -> PairTable:
    path = spec.path
    columns, rows, names = read_rows(path, where)
    wanted = [spec.source_column, spec.target_column, spec.split.column]
    missing = [name for name in wanted if name is not None and name not in columns]
    if missing:
        raise DataError(f"{where}: {path} has no column(s) {missing}; available: {columns}")
    if not rows:
        raise DataError(f"{where}.path: {path} has no pairs")
    given = None
    if spec.split.column is not None:
        given = [cell_text(row.get(spec.split.column)) or None for row in rows]
    sources = [cell_text(row.get(spec.source_column)) for row in rows]
    return PairTable(sources, [cell_text(row.get(spec.target_column)) for row in rows], names, given)


def _read_aligned(spec: PairsSpec, where: str) -> PairTable:
    """Line n of ``path`` and line n of ``target_path`` as pair n; the files must have as many lines."""
    source_path, target_path = spec.path, cast(Path, spec.target_path)  # read_pairs calls this with one
    sources = _lines(source_path, where, "path")
    targets = _lines(target_path, where, "target_path")
    if len(sources) != len(targets):
        raise DataError(
            f"{where}: path {source_path} has {len(sources)} line(s) but target_path {target_path} has "
            f"{len(targets)}; line n of each must be the same pair"
        )
    names = [f"line {number}" for number in range(1, len(sources) + 1)]
    return PairTable(cast(list[str | None], sources), cast(list[str | None], targets), names, None)


def _lines(path: Path, where: str, key: str) -> list[str]:
    """The file's lines, split at line feeds only (a sentence may hold other Unicode breaks), without their ends."""
    if not path.is_file():
        raise DataError(f"{where}.{key}: no file at {path}")
    lines = _decoded(path, where, key).split("\n")
    if lines[-1] == "":
        lines.pop()  # the file's last line break ends a line; it does not start an empty one
    if not lines:
        raise DataError(f"{where}.{key}: {path} is empty; it needs one sentence per line")
    return [line.removesuffix("\r") for line in lines]


def _without_bad_pairs(table: PairTable, spec: PairsSpec, where: str) -> tuple[PairTable, int]:
    """The pairs whose sides both hold text, and how many were left out; under ``bad_pairs: fail``, an error naming
    the others."""
    bad = []
    for i, (source, target) in enumerate(zip(table.sources, table.targets)):
        empty = [side for side, text in (("source", source), ("target", target)) if text is None or not text.strip()]
        if empty:
            bad.append((i, f"{table.names[i]} ({' and '.join(empty)})"))
    if bad and spec.bad_pairs == "fail":
        raise DataError(
            f"{where}.bad_pairs: {len(bad)} pair(s) with an empty side (set bad_pairs: skip to leave them out): "
            f"{listing([shown for _, shown in bad])}"
        )
    dropped = {i for i, _ in bad}
    kept = [i for i in range(len(table.names)) if i not in dropped]
    given = table.given_parts
    return (
        PairTable(
            [table.sources[i] for i in kept],
            [table.targets[i] for i in kept],
            [table.names[i] for i in kept],
            [given[i] for i in kept] if given is not None else None,
        ),
        len(bad),
    )


# ------------------------------------------------------------------------------------------------ encoding


@dataclass(frozen=True)
class _EncodedPairs:
    """The usable pairs of a spec, encoded: every list and ``parts`` hold one item per pair, in file order."""

    sources: list[str]
    targets: list[str]
    parts: np.ndarray
    source_ids: list[np.ndarray]
    target_ids: list[np.ndarray]
    source_tokenizer: Tokenizer
    target_tokenizer: Tokenizer
    #: Pairs left out: with an empty side (``bad_pairs: skip``), and with more than ``max_length`` tokens on a side.
    skipped: int
    too_long: int
    split: dict[str, Any]


def _encoded_pairs(spec: PairsSpec, where: str) -> _EncodedPairs:
    """Read, divide into parts, fit both tokenizers on the training pairs, encode, and leave out the pairs too long
    to keep whole; every part must still hold a pair."""
    table, skipped = _without_bad_pairs(read_pairs(spec, where), spec, where)
    sources, targets = cast(list[str], table.sources), cast(list[str], table.targets)  # no None left: checked above
    parts = assign_parts([_ONE_LABEL] * len(sources), spec.split, table.given_parts, where, names=table.names)
    train = np.flatnonzero(parts == 0)
    source_tokenizer = fit_tokenizer(spec.source_tokenizer, (sources[i] for i in train))
    target_tokenizer = fit_tokenizer(spec.target_tokenizer, (targets[i] for i in train))
    source_ids = [np.asarray(source_tokenizer.encode(text), dtype=np.int32) for text in sources]
    target_ids = [np.asarray(target_tokenizer.encode(text), dtype=np.int32) for text in targets]
    fits = [len(s) <= spec.max_length and len(t) <= spec.max_length for s, t in zip(source_ids, target_ids)]
    kept = np.flatnonzero(fits)
    _check_parts(parts[kept], len(sources) - len(kept), where)
    return _EncodedPairs(
        sources=[sources[i] for i in kept],
        targets=[targets[i] for i in kept],
        parts=parts[kept],
        source_ids=[source_ids[i] for i in kept],
        target_ids=[target_ids[i] for i in kept],
        source_tokenizer=source_tokenizer,
        target_tokenizer=target_tokenizer,
        skipped=skipped,
        too_long=len(sources) - len(kept),
        split=split_record(spec.split, table.given_parts, parts, table.names),
    )


def _check_parts(parts: np.ndarray, too_long: int, where: str) -> None:
    """Training, validation and test each need a pair (a translation is chosen on val and measured on test)."""
    counts = {part: int((parts == code).sum()) for code, part in enumerate(PARTS)}
    empty = [part for part, count in counts.items() if count == 0]
    if empty:
        shown = ", ".join(f"{part} {count}" for part, count in counts.items())
        left_out = f"; {too_long} longer than max_length left out" if too_long else ""
        raise DataError(
            f"{where}.split: no pairs in the {' and '.join(empty)} part(s) ({shown}{left_out}); give more pairs, "
            "other split fractions or a larger max_length"
        )


def special_ids(target_tokenizer: Tokenizer) -> tuple[int, int]:
    """(BOS, EOS): the decoder's start and end tokens, just after the target tokenizer's vocabulary."""
    return target_tokenizer.vocab_size, target_tokenizer.vocab_size + 1


def target_text(target_tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """The text of a decoder's output: the ids before the first EOS, without BOS and padding, decoded."""
    bos, eos = special_ids(target_tokenizer)
    kept = []
    for i in ids:
        if i == eos:
            break
        if i != bos:
            kept.append(int(i))
    return target_tokenizer.decode(kept)


# ------------------------------------------------------------------------------------------------ writing


def prepare_pairs_features(spec: PairsSpec, out_dir: Path, where: str) -> dict[str, Any]:
    """The data stage of a `pairs` pipeline: encode the pairs (:func:`_encoded_pairs`) and write the folder
    described above; return the few numbers the stage logs."""
    pairs = _encoded_pairs(spec, where)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for side, ids in (("source", pairs.source_ids), ("target", pairs.target_ids)):
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum([len(one) for one in ids], out=offsets[1:])
        np.save(out_dir / f"{side}_ids.npy", np.concatenate(ids).astype(np.int32))
        np.save(out_dir / f"{side}_offsets.npy", offsets)
    np.save(out_dir / "parts.npy", pairs.parts.astype(np.int8))
    pairs.source_tokenizer.save(out_dir / SOURCE_TOKENIZER_FILE)
    pairs.target_tokenizer.save(out_dir / TARGET_TOKENIZER_FILE)
    texts = {"source": pairs.sources, "target": pairs.targets, "part": [PARTS[code] for code in pairs.parts]}
    pd.DataFrame(texts).to_parquet(out_dir / TEXTS_FILE, index=False)
    meta = _meta(spec, pairs)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return {
        "n_pairs": len(pairs.parts),
        **{f"n_{part}": count for part, count in meta["counts"].items()},
        "source_vocab": meta["source_vocab"],
        "target_vocab": meta["target_vocab"],
        "max_length": spec.max_length,
        "too_long": pairs.too_long,
        "skipped_pairs": pairs.skipped,
        **{f"unknown_{side}_tokens_val_test": count for side, count in meta["unknown_tokens_val_test"].items()},
        "split": pairs.split["by"],
    }


def _meta(spec: PairsSpec, pairs: _EncodedPairs) -> dict[str, Any]:
    """``meta.json``: counts, vocabularies and special ids, lengths, and what was left out."""
    bos, eos = special_ids(pairs.target_tokenizer)
    held_out = pairs.parts != 0
    sides = {"source": pairs.source_ids, "target": pairs.target_ids}
    return {
        "format": PAIRS_FORMAT,
        "kind": "pairs",
        "counts": {part: int((pairs.parts == code).sum()) for code, part in enumerate(PARTS)},
        "source_vocab": pairs.source_tokenizer.vocab_size,
        "target_vocab": eos + 1,
        "bos_id": bos,
        "eos_id": eos,
        "tokenizer_kinds": {"source": pairs.source_tokenizer.kind, "target": pairs.target_tokenizer.kind},
        "length": {side: length_stats([len(one) for one in ids]) for side, ids in sides.items()},
        "unknown_tokens_val_test": {
            side: sum(int((one == UNK_ID).sum()) for one, out in zip(ids, held_out) if out)
            for side, ids in sides.items()
        },
        "max_length": spec.max_length,
        "too_long": pairs.too_long,
        "skipped_pairs": pairs.skipped,
        "split": pairs.split,
    }


def length_stats(lengths: list[int]) -> dict[str, float]:
    return {"min": int(min(lengths)), "median": float(np.median(lengths)), "max": int(max(lengths))}


def pairs_model_io(spec: PairsSpec, where: str) -> tuple[int, int]:
    """(source vocabulary size, decoder outputs: target vocabulary + BOS + EOS) of the raw pairs, prepared in memory
    as the data stage would (its errors raised here): for a summary of the model before the data stage has run."""
    pairs = _encoded_pairs(spec, where)
    return pairs.source_tokenizer.vocab_size, special_ids(pairs.target_tokenizer)[1] + 1


# ------------------------------------------------------------------------------------------------ loading

#: The arrays of the prepared folder, each in ``<name>.npy``.
_ARRAYS = ("source_ids", "source_offsets", "target_ids", "target_offsets", "parts")


@dataclass(frozen=True, eq=False)
class PairFeatures:
    """A prepared pairs folder, loaded: both tokenizers, the ids and texts of every pair, and its part."""

    source_tokenizer: Tokenizer
    target_tokenizer: Tokenizer
    arrays: dict[str, np.ndarray]
    texts: pd.DataFrame
    meta: dict[str, Any]

    @property
    def source_vocab(self) -> int:
        """The encoder's embedding rows: the source tokenizer's vocabulary, padding and unknown included."""
        return self.meta["source_vocab"]

    @property
    def target_vocab(self) -> int:
        """The decoder's embedding rows and outputs: the target tokenizer's vocabulary, BOS and EOS."""
        return self.meta["target_vocab"]

    @property
    def bos_id(self) -> int:
        return self.meta["bos_id"]

    @property
    def eos_id(self) -> int:
        return self.meta["eos_id"]

    def part(self, name: Parts) -> PairSet:
        """The pairs of one part, or of training and validation together (``train+val``), in file order."""
        if name == TRAIN_AND_VAL:
            positions = np.flatnonzero(np.isin(self.arrays["parts"], [PARTS.index("train"), PARTS.index("val")]))
        elif name in PARTS:
            positions = np.flatnonzero(self.arrays["parts"] == PARTS.index(name))
        else:
            raise ValueError(f"part must be train, val, test or {TRAIN_AND_VAL}, got {name!r}")
        return PairSet(self, positions)


def load_pairs(features_dir: Path) -> PairFeatures:
    """Load what :func:`prepare_pairs_features` wrote into ``features_dir``."""
    path = Path(features_dir)
    files = [f"{name}.npy" for name in _ARRAYS] + [
        SOURCE_TOKENIZER_FILE,
        TARGET_TOKENIZER_FILE,
        TEXTS_FILE,
        "meta.json",
    ]
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        raise DataError(f"no prepared pairs in {path}: missing {missing} (run the data stage first)")
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != PAIRS_FORMAT or meta.get("kind") != "pairs":
        raise DataError(f"{path / 'meta.json'} is not a pairs folder of format {PAIRS_FORMAT}: prepare the data again")
    return PairFeatures(
        source_tokenizer=Tokenizer.load(path / SOURCE_TOKENIZER_FILE),
        target_tokenizer=Tokenizer.load(path / TARGET_TOKENIZER_FILE),
        arrays={name: np.load(path / f"{name}.npy") for name in _ARRAYS},
        texts=pd.read_parquet(path / TEXTS_FILE),
        meta=meta,
    )


# ------------------------------------------------------------------------------------------------ batches


class PairBatch(NamedTuple):
    source: torch.Tensor  # (B, S) int64 source ids, 0 after each source's end
    source_lengths: torch.Tensor  # (B,) int64, on the CPU (pack_padded_sequence wants them there)
    decoder_input: torch.Tensor  # (B, T) int64: BOS, then the target ids, then 0; T = longest target + 1
    decoder_target: torch.Tensor  # (B, T) int64: the target ids, then EOS, then 0 (the loss ignores 0)
    positions: torch.Tensor  # (B,) int64: each pair's position in the part, to line outputs up with the texts
    # (not `index`: a NamedTuple field of that name would hide tuple.index)


class PairSet:
    """The pairs of one part: ids without BOS or EOS (int64) and texts, by position in the part."""

    def __init__(self, features: PairFeatures, positions: np.ndarray) -> None:
        arrays = features.arrays
        self.bos_id, self.eos_id = features.bos_id, features.eos_id
        self.sources = [_ids(arrays["source_ids"], arrays["source_offsets"], p) for p in positions]
        self.targets = [_ids(arrays["target_ids"], arrays["target_offsets"], p) for p in positions]
        self.source_texts: list[str] = features.texts["source"].iloc[positions].tolist()
        self.target_texts: list[str] = features.texts["target"].iloc[positions].tolist()
        # Bucketing by source length is the sequence store's: its part of a ragged store of the source ids.
        from lstmflow.data.sequences import SequenceSet  # torch: not for a process that only writes features

        no_labels = np.zeros(len(arrays["parts"]), dtype=np.int64)
        self._buckets = SequenceSet(arrays["source_ids"], arrays["source_offsets"], no_labels, positions)

    def __len__(self) -> int:
        return len(self.sources)

    def batch_count(self, batch_size: int) -> int:
        """Batches of an epoch, shuffled or not: every pool of batches but the last is full."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return math.ceil(len(self) / batch_size)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0) -> Iterator[PairBatch]:
        """Zero-padded batches of pairs of similar source length (:meth:`SequenceSet.batch_indices`): sorted by
        length without shuffle, else an order that depends only on (``seed``, ``epoch``)."""
        import torch

        for chosen in self._buckets.batch_indices(batch_size, shuffle, seed, epoch):
            sources = [self.sources[i] for i in chosen]
            targets = [self.targets[i] for i in chosen]
            source = padded_ids(sources, max(len(one) for one in sources))  # (B, S)
            steps = max(len(one) for one in targets) + 1
            decoder_input = padded_ids([np.concatenate(([self.bos_id], one)) for one in targets], steps)  # (B, T)
            decoder_target = padded_ids([np.concatenate((one, [self.eos_id])) for one in targets], steps)  # (B, T)
            lengths = torch.tensor([len(one) for one in sources], dtype=torch.int64)
            yield PairBatch(source, lengths, decoder_input, decoder_target, torch.from_numpy(chosen.astype(np.int64)))


def _ids(ids: np.ndarray, offsets: np.ndarray, position: int) -> np.ndarray:
    return ids[offsets[position] : offsets[position + 1]].astype(np.int64)


def padded_ids(rows: list[np.ndarray], width: int) -> torch.Tensor:
    """(len(rows), width) int64, each row's ids then zeros."""
    import torch

    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return torch.from_numpy(out)
