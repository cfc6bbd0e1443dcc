"""Preparing labelled sequences: fit the preprocessing on the training part and write the ragged store that
:func:`load_sequences` reads back (memory-mapped, so only a batch is ever gathered).

The prepared folder holds every sequence end to end in one array, so nothing is padded on disk:

- ``values.npy`` (sum of lengths, F) float32, already truncated and scaled;
- ``offsets.npy`` (N + 1,) int64: sequence ``i`` is ``values[offsets[i]:offsets[i + 1]]``;
- ``labels.npy`` (N,) int64, an index into ``meta["classes"]``;
- ``parts.npy`` (N,) int8: 0 train, 1 val, 2 test;
- ``meta.json``: the classes, counts per part and class, lengths, the fitted preprocessing and the caller's extras.

Every data kind that classifies sequences (tables, texts, images, audio) writes this store.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lstmflow.config import ClassSplitSpec, SequenceTableSpec
from lstmflow.data.parts import PARTS, TRAIN_AND_VAL, Parts, assign_parts, split_record
from lstmflow.data.sequences.preprocessing import SequencePreprocessing
from lstmflow.data.sequences.read import read_sequence_table
from lstmflow.data.tables import listing
from lstmflow.errors import DataError

if TYPE_CHECKING:
    from lstmflow.data.sequences.batches import SequenceSet

#: Bumped when the layout of the prepared folder changes.
SEQUENCES_FORMAT = 1


# ------------------------------------------------------------------------------------------ writing


def prepare_sequence_features(spec: SequenceTableSpec, out_dir: Path, where: str) -> dict[str, Any]:
    """The data stage of a `sequences` pipeline: read, divide into parts, write the store; return its summary."""
    table = read_sequence_table(spec, where)
    parts = assign_parts(table.labels, spec.split, table.given_parts, where, names=table.names)
    extra = {"format": spec.format, "features": table.features}
    return write_sequences(
        out_dir,
        table.sequences,
        table.labels,
        parts,
        spec.scale,
        spec.max_length,
        where,
        extra,
        names=table.names,
        split=spec.split,
        given=table.given_parts,
    )


def _class_order(label: str) -> tuple[int, float, str]:
    """Sort integer-like labels by value ("2" before "10"), the rest as text after them."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def write_sequences(
    out_dir: Path,
    sequences: Sequence[np.ndarray],
    labels: Sequence[str],
    parts: np.ndarray,
    scale: str,
    max_length: int | None,
    where: str,
    extra_meta: dict[str, Any],
    names: Sequence[str] | None = None,
    split: ClassSplitSpec | None = None,
    given: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Check, fit the preprocessing on the training part, and write the ragged store; return a summary for logging.

    ``sequences`` are raw (T, F) arrays; ``names`` say how messages name them (ids, file names), by default
    ``sequence <i>``. ``extra_meta`` is stored under ``meta["extra_meta"]`` (e.g. the source's column names or
    an image shape, for serving). ``split`` is the spec the parts came from and ``given`` the given parts they were
    assigned from (:func:`~lstmflow.data.parts.assign_parts`): the summary says how the parts were given, and so
    does ``meta["split"]`` for given files or list files, with the validation samples drawn from the training
    samples when those were drawn (absent for fractions and a split column, so that folders prepared before given
    files existed keep their bytes). Output bytes depend only on the inputs.
    """
    if not len(sequences) == len(labels) == len(parts):
        raise ValueError(f"{len(sequences)} sequences, {len(labels)} labels and {len(parts)} parts must match")
    names = list(names) if names is not None else [f"sequence {i}" for i in range(len(sequences))]
    if not len(sequences):
        raise DataError(f"{where}: no sequences found")
    _check_sequences(sequences, names, where)
    parts = np.asarray(parts, dtype=np.int8)
    classes = sorted(set(labels), key=_class_order)
    check_classes(classes, labels, parts, where)

    train = [steps for steps, part in zip(sequences, parts) if part == 0]
    preprocessing = SequencePreprocessing.fit(train, scale, max_length)
    raw_lengths = np.array([len(steps) for steps in sequences], dtype=np.int64)
    lengths = np.minimum(raw_lengths, max_length) if max_length else raw_lengths
    values, offsets = _end_to_end(sequences, lengths, preprocessing)
    index = {label: code for code, label in enumerate(classes)}
    label_codes = np.array([index[label] for label in labels], dtype=np.int64)
    meta = _store_meta(classes, label_codes, parts, raw_lengths, lengths, preprocessing, extra_meta)
    record = split_record(split, given, parts, names) if split is not None else None
    if record is not None and record["by"] not in ("fractions", "column"):
        meta["split"] = record

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "values.npy", values)
    np.save(out_dir / "offsets.npy", offsets)
    np.save(out_dir / "labels.npy", label_codes)
    np.save(out_dir / "parts.npy", parts)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return _store_summary(meta, max_length, scale, record)


def _end_to_end(
    sequences: Sequence[np.ndarray], lengths: np.ndarray, preprocessing: SequencePreprocessing
) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (sum of lengths, F) float32, every sequence encoded and laid end to end, and ``offsets`` (N + 1,)."""
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.empty((int(offsets[-1]), preprocessing.n_features), dtype=np.float32)
    for i, steps in enumerate(sequences):
        values[offsets[i] : offsets[i + 1]] = preprocessing.encode(steps)
    return values, offsets


def _store_meta(
    classes: list[str],
    label_codes: np.ndarray,
    parts: np.ndarray,
    raw_lengths: np.ndarray,
    lengths: np.ndarray,
    preprocessing: SequencePreprocessing,
    extra_meta: dict[str, Any],
) -> dict[str, Any]:
    """``meta.json``: the classes, counts per part and class, lengths and truncation, and the preprocessing."""
    truncated = {"sequences": int((raw_lengths > lengths).sum()), "steps_dropped": int((raw_lengths - lengths).sum())}
    counts = {
        part: {
            label: int(((parts == code) & (label_codes == label_code)).sum())
            for label_code, label in enumerate(classes)
        }
        for code, part in enumerate(PARTS)
    }
    return {
        "format": SEQUENCES_FORMAT,
        "kind": "sequences",
        "classes": classes,
        "n_features": preprocessing.n_features,
        "n_sequences": len(label_codes),
        "counts": counts,
        "length": {"min": int(lengths.min()), "median": float(np.median(lengths)), "max": int(lengths.max())},
        "truncated": truncated,
        "preprocessing": preprocessing.to_dict(),
        "extra_meta": extra_meta,
    }


def _store_summary(
    meta: dict[str, Any], max_length: int | None, scale: str, record: dict[str, Any] | None
) -> dict[str, Any]:
    """The few numbers the data stage logs about the store it wrote."""
    return {
        "n_sequences": meta["n_sequences"],
        **{f"n_{part}": sum(meta["counts"][part].values()) for part in PARTS},
        "n_classes": len(meta["classes"]),
        "n_features": meta["n_features"],
        **{f"length_{stat}": value for stat, value in meta["length"].items()},
        "truncated_sequences": meta["truncated"]["sequences"],
        "truncated_steps": meta["truncated"]["steps_dropped"],
        "max_length": max_length,
        "scale": scale,
        **({"split": record["by"]} if record is not None else {}),
    }


def _check_sequences(sequences: Sequence[np.ndarray], names: list[str], where: str) -> None:
    """Every sequence: (T >= 1, F) with the first one's F, and finite."""
    n_features = np.shape(sequences[0])[1] if np.ndim(sequences[0]) == 2 else None
    for name, steps in zip(names, sequences):
        shape = np.shape(steps)
        if len(shape) != 2 or shape[1] != n_features:
            raise DataError(f"{where}: {name} has shape {shape}; expected (steps, {n_features}) like the first")
        if shape[0] == 0:
            raise DataError(f"{where}: {name} is an empty sequence (no steps)")
        if not np.isfinite(steps).all():
            raise DataError(f"{where}: {name} has empty, NaN or infinite values")


def check_classes(classes: list[str], labels: Sequence[str], parts: np.ndarray, where: str) -> None:
    """At least two classes, a training part, and no class that the training part never shows."""
    if len(classes) < 2:
        raise DataError(
            f"{where}.label_column: every sequence has the label {classes[0]!r}; "
            "classification needs two classes or more"
        )
    if not (parts == 0).any():
        raise DataError(
            f"{where}.split: no training sequences (val {int((parts == 1).sum())}, test {int((parts == 2).sum())})"
        )
    label_array = np.asarray(labels, dtype=object)
    unseen = []
    for label in classes:
        held = [PARTS[code] for code in (1, 2) if ((label_array == label) & (parts == code)).any()]
        if held and not ((label_array == label) & (parts == 0)).any():
            unseen.append(f"{label!r} (only in {' and '.join(held)})")
    if unseen:
        raise DataError(
            f"{where}.split: label(s) never seen in the train part, so the model cannot learn them: {listing(unseen)}"
        )


# ------------------------------------------------------------------------------------------ loading


@dataclass(frozen=True, eq=False)
class SequenceFeatures:
    """A prepared sequence folder, loaded; ``values`` is memory-mapped."""

    values: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    parts: np.ndarray
    meta: dict[str, Any]
    preprocessing: SequencePreprocessing

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_features(self) -> int:
        return self.meta["n_features"]

    def part(self, name: Parts) -> SequenceSet:
        from lstmflow.data.sequences.batches import SequenceSet  # torch: not for a process that only writes features

        if name == TRAIN_AND_VAL:
            positions = np.flatnonzero(np.isin(self.parts, [PARTS.index("train"), PARTS.index("val")]))
            return SequenceSet(self.values, self.offsets, self.labels, positions)
        if name not in PARTS:
            raise ValueError(f"part must be train, val, test or {TRAIN_AND_VAL}, got {name!r}")
        positions = np.flatnonzero(self.parts == PARTS.index(name))
        return SequenceSet(self.values, self.offsets, self.labels, positions)


def load_sequences(path: Path) -> SequenceFeatures:
    """Load what :func:`write_sequences` wrote into ``path``."""
    path = Path(path)
    files = ("values.npy", "offsets.npy", "labels.npy", "parts.npy", "meta.json")
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        raise DataError(f"no prepared sequences in {path}: missing {missing} (run the data stage first)")
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != SEQUENCES_FORMAT or meta.get("kind") != "sequences":
        raise DataError(
            f"{path / 'meta.json'} is not a sequence store of format {SEQUENCES_FORMAT}: prepare the data again"
        )
    return SequenceFeatures(
        values=np.load(path / "values.npy", mmap_mode="r"),
        offsets=np.load(path / "offsets.npy"),
        labels=np.load(path / "labels.npy"),
        parts=np.load(path / "parts.npy"),
        meta=meta,
        preprocessing=SequencePreprocessing.from_dict(meta["preprocessing"]),
    )
