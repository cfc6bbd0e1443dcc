"""Labelled sequences of different lengths: read a table, divide it into parts, scale, store ragged, batch by length.

The prepared folder holds every sequence end to end in one array, so nothing is padded on disk:

- ``values.npy`` (sum of lengths, F) float32, already truncated and scaled;
- ``offsets.npy`` (N + 1,) int64: sequence ``i`` is ``values[offsets[i]:offsets[i + 1]]``;
- ``labels.npy`` (N,) int64, an index into ``meta["classes"]``;
- ``parts.npy`` (N,) int8: 0 train, 1 val, 2 test;
- ``meta.json``: the classes, counts per part and class, lengths, the fitted preprocessing and the caller's extras.

Batches are padded to their own longest sequence only, and built from sequences of similar length (bucketing), so
the padding stays a small fraction of the work. Values are memory-mapped on load and only a batch is ever gathered.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel

from lstmflow.config import ClassSplitSpec, SequenceTableSpec
from lstmflow.data.tables import listing, numeric_values, read_table, row_namer
from lstmflow.errors import DataError

Part = Literal["train", "val", "test"]
PARTS: tuple[Part, ...] = ("train", "val", "test")

#: Bumped when the layout of the prepared folder changes.
SEQUENCES_FORMAT = 1
#: A shuffled epoch sorts by length within pools of this many batches: enough neighbours to find similar lengths,
#: few enough that the batches of an epoch still mix sequences from all over the set.
POOL_BATCHES = 50


# ------------------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class SequencePreprocessing:
    """Truncation and per-feature scaling, fitted on the training sequences: model space = (x - offset) / factor."""

    scale: str
    max_length: int | None
    offset: tuple[float, ...]
    factor: tuple[float, ...]

    @property
    def n_features(self) -> int:
        return len(self.offset)

    @classmethod
    def fit(cls, train: Sequence[np.ndarray], scale: str, max_length: int | None) -> SequencePreprocessing:
        """Fit on the training steps the model will see (after truncation); a constant feature keeps factor 1."""
        kept = [np.asarray(steps, dtype=np.float64)[-max_length:] if max_length else steps for steps in train]
        n_features = kept[0].shape[1]
        if scale == "standard":
            # Two passes over the list: exact, and no concatenated copy of the training set.
            count = sum(len(steps) for steps in kept)
            offset = sum(np.sum(steps, axis=0, dtype=np.float64) for steps in kept) / count
            factor = np.sqrt(sum(np.sum((steps - offset) ** 2, axis=0) for steps in kept) / count)
            factor = np.where(factor > 1e-12 * np.maximum(1.0, np.abs(offset)), factor, 1.0)
        else:
            offset, factor = np.zeros(n_features), np.ones(n_features)
        return cls(scale, max_length, tuple(map(float, offset)), tuple(map(float, factor)))

    def encode(self, steps: np.ndarray) -> np.ndarray:
        """(T, F) raw steps → (T', F) float32 model space: the last ``max_length`` steps, scaled."""
        steps = np.asarray(steps, dtype=np.float64)
        if steps.ndim != 2 or steps.shape[1] != self.n_features or len(steps) == 0:
            raise DataError(f"a sequence must have shape (steps >= 1, {self.n_features} features), got {steps.shape}")
        if self.max_length is not None:
            steps = steps[-self.max_length :]
        return ((steps - np.asarray(self.offset)) / np.asarray(self.factor)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "max_length": self.max_length,
            "offset": list(self.offset),
            "factor": list(self.factor),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SequencePreprocessing:
        return cls(d["scale"], d["max_length"], tuple(d["offset"]), tuple(d["factor"]))


# ------------------------------------------------------------------------------------------- parts


def assign_parts(
    labels: Sequence[str],
    split: ClassSplitSpec,
    given: Sequence[Any] | None,
    where: str,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Each sample's part as int8 (0 train, 1 val, 2 test): from ``given`` values, else stratified seeded fractions.

    ``given`` holds one value per sample (``train``, ``val`` or ``test``); ``names`` says how messages name a
    sample (e.g. ``line 7``), by default ``sample <i>``.

    With ``split.files`` the values come from :func:`read_parts` (each sample's file), and the validation and
    test parts must each hold a sample.

    The fraction rule, per class: a class with fewer than 3 samples goes to train whole (it cannot be divided
    usefully). Otherwise ``round(n × test)`` samples go to test and ``round(n × val)`` to val, each at least 1 when
    its fraction is > 0, and fewer when needed to leave at least one in train. Which samples is a permutation
    seeded by (``split.seed``, the class name), so adding a class does not reshuffle the others.
    """
    names = list(names) if names is not None else [f"sample {i}" for i in range(len(labels))]
    if given is not None:
        codes = {part: code for code, part in enumerate(PARTS)}
        bad = [f"{names[i]}: {_cell(value)!r}" for i, value in enumerate(given) if _cell(value) not in codes]
        if bad:
            raise DataError(
                f"{where}.split.column: {len(bad)} value(s) that are not train, val or test: {listing(bad)}"
            )
        parts = np.array([codes[_cell(value)] for value in given], dtype=np.int8)
        if split.files is not None:
            # Readers refuse an empty file; this catches a part left empty after dropping bad files (audio).
            empty = [part for part in ("val", "test") if not (parts == codes[part]).any()]
            if empty:
                raise DataError(
                    f"{where}.split.files.{empty[0]}: no usable samples in {getattr(split.files, empty[0])}"
                )
        return parts

    label_array = np.asarray(labels, dtype=object)
    parts = np.zeros(len(label_array), dtype=np.int8)
    for label in sorted(set(labels)):
        members = np.flatnonzero(label_array == label)
        n = len(members)
        if n < 3:
            continue
        n_test = _share(n, split.test)
        n_val = min(_share(n, split.val), n - 1 - n_test)
        if n_val < 0:
            n_test, n_val = n - 1, 0
        rng = np.random.default_rng([split.seed, zlib.crc32(label.encode())])
        shuffled = members[rng.permutation(n)]
        parts[shuffled[:n_test]] = 2
        parts[shuffled[n_test : n_test + n_val]] = 1
    return parts


def _share(n: int, fraction: float) -> int:
    """round(n × fraction), halves up, and at least 1 for a positive fraction."""
    return max(int(n * fraction + 0.5), 1) if fraction > 0 else 0


def _cell(value: Any) -> str | None:
    """A table cell as text; an empty cell (None or NaN) as None."""
    return None if pd.api.types.is_scalar(value) and pd.isna(value) else str(value)


# ------------------------------------------------------------------------------------------ given split

#: A kind's data spec (with ``path`` and ``split``) and what its reader returns for one source (a NamedTuple).
SourceSpec = TypeVar("SourceSpec", bound=BaseModel)
Reading = TypeVar("Reading", bound=tuple)


def split_files(spec: Any, where: str) -> list[tuple[Part, Path]]:
    """The sources of a given split, ``path`` (train), ``split.files.val`` and ``split.files.test``, in that order.

    Each must exist, be distinct, and have the form of ``path``: a folder, or a file with the same ending (so one
    reader reads all three).
    """
    train = Path(spec.path)
    sources: list[tuple[Part, Path, str]] = [
        ("train", train, "path"),
        ("val", Path(spec.split.files.val), "split.files.val"),
        ("test", Path(spec.split.files.test), "split.files.test"),
    ]
    seen: dict[Path, str] = {}
    for _, path, key in sources:
        if not path.exists():
            raise DataError(f"{where}.{key}: no such file or folder: {path}")
        if path.resolve() in seen:
            raise DataError(f"{where}.{key}: {path} is also {where}.{seen[path.resolve()]}; each part needs its own")
        seen[path.resolve()] = key
        if _form(path) != _form(train):
            raise DataError(
                f"{where}.{key}: {path} is {_form(path)} but {where}.path is {_form(train)}; "
                "give the three parts in the same form"
            )
    return [(part, path) for part, path, _ in sources]


def _form(path: Path) -> str:
    return "a folder" if path.is_dir() else f"a {path.suffix.lower() or 'suffix-less'} file"


def read_parts(spec: SourceSpec, where: str, read: Callable[[SourceSpec, str], Reading]) -> Reading:
    """``read(spec, where)``: a kind's reader of one source. With ``split.files``, the reader reads each of the three
    sources (as a spec of its own: that ``path``, no split files) and the readings are joined, train, val, test.

    A reading is a NamedTuple whose first field holds one item per sample. The join goes by field: ``given_parts``
    becomes each sample's part (its source's), which ``assign_parts`` then takes as a split column's; how
    messages name a sample or file (the ``names`` field, or the ``name`` of each item) gets its source in front
    (``val.csv line 3``, ``val/cat/1.png``) so that names stay apart; other lists are concatenated, counts added,
    and anything else (e.g. the feature names) must be the same in the three.
    """
    if spec.split.files is None:
        return read(spec, where)
    sources = split_files(spec, where)
    common = Path(os.path.commonpath([path.resolve() for _, path in sources]))
    readings: list[tuple[Part, str, Reading]] = []
    for part, path in sources:
        alone = spec.model_copy(update={"path": path, "split": spec.split.model_copy(update={"files": None})})
        source = path.resolve().relative_to(common).as_posix()
        readings.append((part, source + ("/" if path.is_dir() else " "), read(alone, where)))
    first = readings[0][2]
    joined: dict[str, Any] = {}
    for field in first._fields:
        values = [getattr(reading, field) for _, _, reading in readings]
        if field == "given_parts":
            joined[field] = [part for part, _, reading in readings for _ in reading[0]]
        elif field == "names":
            joined[field] = [prefix + name for (_, prefix, _), names in zip(readings, values) for name in names]
        elif isinstance(values[0], list):
            joined[field] = [
                item._replace(name=prefix + item.name) if hasattr(item, "_replace") and "name" in item._fields else item
                for (_, prefix, _), items in zip(readings, values)
                for item in items
            ]
        elif isinstance(values[0], int):
            joined[field] = sum(values)
        elif all(value == values[0] for value in values):
            joined[field] = values[0]
        else:
            shown = ", ".join(f"{prefix.strip()}: {value!r}" for (_, prefix, _), value in zip(readings, values))
            raise DataError(f"{where}.split.files: the parts differ in their {field} ({shown})")
    return type(first)(**joined)


# ------------------------------------------------------------------------------------------ writing


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
) -> dict[str, Any]:
    """Check, fit the preprocessing on the training part, and write the ragged store; return a summary for logging.

    ``sequences`` are raw (T, F) arrays; ``names`` say how messages name them (ids, file names), by default
    ``sequence <i>``. ``extra_meta`` is stored under ``meta["extra_meta"]`` (e.g. the source's column names or
    an image shape, for serving). ``split`` is the spec the parts came from: the summary says how they were given,
    and so does ``meta["split"]`` for given files (absent otherwise, so that folders prepared before given files
    existed keep their bytes). Output bytes depend only on the inputs.
    """
    if not len(sequences) == len(labels) == len(parts):
        raise ValueError(f"{len(sequences)} sequences, {len(labels)} labels and {len(parts)} parts must match")
    names = list(names) if names is not None else [f"sequence {i}" for i in range(len(sequences))]
    if not len(sequences):
        raise DataError(f"{where}: no sequences found")
    _check_sequences(sequences, names, where)
    parts = np.asarray(parts, dtype=np.int8)
    classes = sorted(set(labels), key=_class_order)
    _check_classes(classes, labels, parts, where)

    train = [steps for steps, part in zip(sequences, parts) if part == 0]
    preprocessing = SequencePreprocessing.fit(train, scale, max_length)
    raw_lengths = np.array([len(steps) for steps in sequences], dtype=np.int64)
    lengths = np.minimum(raw_lengths, max_length) if max_length else raw_lengths
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.empty((int(offsets[-1]), preprocessing.n_features), dtype=np.float32)
    for i, steps in enumerate(sequences):
        values[offsets[i] : offsets[i + 1]] = preprocessing.encode(steps)
    index = {label: code for code, label in enumerate(classes)}
    label_codes = np.array([index[label] for label in labels], dtype=np.int64)

    truncated = {"sequences": int((raw_lengths > lengths).sum()), "steps_dropped": int((raw_lengths - lengths).sum())}
    counts = {
        part: {label: int(((parts == code) & (label_codes == index[label])).sum()) for label in classes}
        for code, part in enumerate(PARTS)
    }
    length_stats = {"min": int(lengths.min()), "median": float(np.median(lengths)), "max": int(lengths.max())}
    meta = {
        "format": SEQUENCES_FORMAT,
        "kind": "sequences",
        "classes": classes,
        "n_features": preprocessing.n_features,
        "n_sequences": len(sequences),
        "counts": counts,
        "length": length_stats,
        "truncated": truncated,
        "preprocessing": preprocessing.to_dict(),
        "extra_meta": extra_meta,
    }
    if split is not None and split.files is not None:
        meta["split"] = {"by": "files"}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "values.npy", values)
    np.save(out_dir / "offsets.npy", offsets)
    np.save(out_dir / "labels.npy", label_codes)
    np.save(out_dir / "parts.npy", parts)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return {
        "n_sequences": len(sequences),
        **{f"n_{part}": sum(counts[part].values()) for part in PARTS},
        "n_classes": len(classes),
        "n_features": preprocessing.n_features,
        **{f"length_{stat}": value for stat, value in length_stats.items()},
        "truncated_sequences": truncated["sequences"],
        "truncated_steps": truncated["steps_dropped"],
        "max_length": max_length,
        "scale": scale,
        **({"split": split_by(split)} if split is not None else {}),
    }


def split_by(split: ClassSplitSpec) -> str:
    """How the parts are given: ``files``, ``column`` or (drawn) ``fractions``."""
    return "files" if split.files is not None else "column" if split.column is not None else "fractions"


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


def _check_classes(classes: list[str], labels: Sequence[str], parts: np.ndarray, where: str) -> None:
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


class SequenceBatch(NamedTuple):
    x: torch.Tensor  # (B, T_max, F) float32, zero after each sequence's end
    lengths: torch.Tensor  # (B,) int64, on the CPU (pack_padded_sequence wants them there)
    y: torch.Tensor  # (B,) int64 class index


class SequenceSet:
    """One part (train, val or test) of the prepared sequences; ``positions`` index into the whole store."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray, labels: np.ndarray, positions: np.ndarray) -> None:
        self._values = values
        self._starts = offsets[positions]
        self.positions = positions
        self.lengths = offsets[positions + 1] - self._starts
        self.labels = labels[positions]

    def sequence(self, i: int) -> np.ndarray:
        """Sample ``i``'s steps (T, F) as stored (scaled), a view."""
        return self._values[self._starts[i] : self._starts[i] + self.lengths[i]]

    def __len__(self) -> int:
        return len(self.positions)

    def batch_indices(self, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0) -> list[np.ndarray]:
        """The samples (indices into this part) of each batch, in the order :meth:`batches` yields them.

        Without shuffle: sorted by length (stable), cut into consecutive batches. With shuffle: a seeded permutation
        of (seed, epoch) is cut into pools of ``POOL_BATCHES`` batches, each pool sorted by length and cut into
        batches, and the order of all batches is shuffled; every sample comes exactly once per epoch.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not shuffle:
            order = np.argsort(self.lengths, kind="stable")
            return [order[begin : begin + batch_size] for begin in range(0, len(order), batch_size)]
        rng = np.random.default_rng([seed, epoch])
        permuted = rng.permutation(len(self))
        pool = batch_size * POOL_BATCHES
        batches = []
        for pool_start in range(0, len(permuted), pool):
            members = permuted[pool_start : pool_start + pool]
            members = members[np.argsort(self.lengths[members], kind="stable")]
            batches += [members[begin : begin + batch_size] for begin in range(0, len(members), batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0) -> Iterator[SequenceBatch]:
        """Yield zero-padded batches in the order of :meth:`batch_indices`; only the batch in hand is gathered."""
        for chosen in self.batch_indices(batch_size, shuffle, seed, epoch):
            lengths = self.lengths[chosen]
            x = np.zeros((len(chosen), int(lengths.max()), self._values.shape[1]), dtype=np.float32)  # (B, T_max, F)
            for row, (start, length) in enumerate(zip(self._starts[chosen], lengths)):
                x[row, :length] = self._values[start : start + length]
            y = self.labels[chosen].astype(np.int64)
            yield SequenceBatch(torch.from_numpy(x), torch.from_numpy(lengths.astype(np.int64)), torch.from_numpy(y))

    def padding_fraction(self, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0) -> float:
        """Padded cells / all cells of the epoch's batches (0 when the part is empty); for logging."""
        real = padded = 0
        for chosen in self.batch_indices(batch_size, shuffle, seed, epoch):
            lengths = self.lengths[chosen]
            real += int(lengths.sum())
            padded += len(chosen) * int(lengths.max())
        return 1.0 - real / padded if padded else 0.0


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

    def part(self, name: Part) -> SequenceSet:
        if name not in PARTS:
            raise ValueError(f"part must be train, val or test, got {name!r}")
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


# ------------------------------------------------------------------------------------------ reading


class SequenceTable(NamedTuple):
    """Sequences read from a table: raw (T, F) float64 steps, labels as text, how messages name each sequence,
    the given part per sequence (split column or file; None when there is none), and the feature names."""

    sequences: list[np.ndarray]
    labels: list[str]
    names: list[str]
    given_parts: list[str | None] | None
    features: tuple[str, ...]


def read_sequence_table(spec: SequenceTableSpec, where: str) -> SequenceTable:
    """Read a long or wide table of labelled sequences (CSV or Parquet), or three with ``split.files``; every bad
    cell is a named DataError."""
    return read_parts(spec, where, _read_sequence_file)


def _read_sequence_file(spec: SequenceTableSpec, where: str) -> SequenceTable:
    path = Path(spec.path)
    table = read_table(path, where)
    if spec.format == "long":
        wanted = [spec.id_column, *spec.value_columns, spec.label_column, spec.time_column, spec.split.column]
    else:
        wanted = [spec.id_column, *spec.value_columns, spec.label_column, spec.split.column]
    missing = [name for name in wanted if name is not None and name not in table.columns]
    if missing:
        raise DataError(f"{where}: {path} has no column(s) {missing}; available: {list(table.columns)}")
    if table.empty:
        raise DataError(f"{where}.path: {path} has a header but no data rows")
    return _read_long(spec, table, path, where) if spec.format == "long" else _read_wide(spec, table, path, where)


def _empty_cells(
    table: pd.DataFrame, column: str, row_label: Callable[[int], str], path: Path, where: str, field: str
) -> None:
    empty = np.flatnonzero(table[column].isna().to_numpy())
    if empty.size:
        rows = [row_label(i) for i in empty]
        raise DataError(f"{where}.{field}: {path} has {len(rows)} empty cell(s) in {column!r}: {listing(rows)}")


def _read_long(spec: SequenceTableSpec, table: pd.DataFrame, path: Path, where: str) -> SequenceTable:
    """One row per step: group by id (in order of first appearance), order by time, one label per series."""
    row_label = row_namer(path)
    _empty_cells(table, spec.id_column, row_label, path, where, "id_column")
    ids = table[spec.id_column].astype(str).to_numpy()
    codes, unique_ids = pd.factorize(ids, sort=False)
    values = numeric_values(table, spec.value_columns, path, row_label, where)
    empty = [
        f"{row_label(i)} column {name!r} (series {ids[i]!r})"
        for name in spec.value_columns
        for i in np.flatnonzero(values[name].isna().to_numpy())
    ]
    if empty:
        raise DataError(f"{where}.value_columns: {path} has {len(empty)} empty value cell(s): {listing(empty)}")

    if spec.time_column is None:
        order = np.argsort(codes, kind="stable")
    else:
        times = _times(table[spec.time_column], row_label, path, where)
        order = np.lexsort((times, codes))
        sorted_codes, sorted_times = codes[order], times[order]
        repeated = np.flatnonzero((sorted_codes[1:] == sorted_codes[:-1]) & (sorted_times[1:] == sorted_times[:-1]))
        if repeated.size:
            shown = [
                f"series {unique_ids[sorted_codes[i]]!r} at {table[spec.time_column].iloc[order[i]]!r}"
                for i in repeated
            ]
            raise DataError(f"{where}.time_column: {len(shown)} repeated time(s) within a series: {listing(shown)}")
    counts = np.bincount(codes, minlength=len(unique_ids))
    steps = values.to_numpy(np.float64)[order]
    sequences = np.split(steps, np.cumsum(counts)[:-1])

    first_rows = np.unique(codes, return_index=True)[1]  # codes number the ids in order of first appearance
    names = [f"series {series_id!r} ({row_label(row)})" for series_id, row in zip(unique_ids, first_rows)]
    labels = _one_per_series(table[spec.label_column], codes, unique_ids, where, "label_column")
    given = None
    if spec.split.column is not None:
        given = _one_per_series(table[spec.split.column], codes, unique_ids, where, "split.column")
    return SequenceTable(list(sequences), labels, names, given, tuple(spec.value_columns))


def _times(cells: pd.Series, row_label: Callable[[int], str], path: Path, where: str) -> np.ndarray:
    """Numbers or dates as sortable numbers; an empty or unreadable cell is named."""
    empty = np.flatnonzero(cells.isna().to_numpy())
    if empty.size:
        rows = [row_label(i) for i in empty]
        raise DataError(
            f"{where}.time_column: {path} has {len(rows)} empty time cell(s) in {cells.name!r}: {listing(rows)}"
        )
    if pd.api.types.is_numeric_dtype(cells) or pd.api.types.is_datetime64_any_dtype(cells):
        parsed = cells
    else:
        # Numbers when any cell is one (so a stray word is reported against the numbers), else dates.
        parsed = pd.to_numeric(cells, errors="coerce")
        if parsed.isna().all():
            parsed = pd.to_datetime(cells, errors="coerce", format="mixed")
    bad = np.flatnonzero(pd.isna(parsed).to_numpy())
    if bad.size:
        rows = [f"{row_label(i)}: {cells.iloc[i]!r}" for i in bad]
        raise DataError(
            f"{where}.time_column: {path} has {len(rows)} time(s) in {cells.name!r} "
            f"that are neither numbers nor dates: {listing(rows)}"
        )
    if pd.api.types.is_datetime64_any_dtype(parsed):
        return parsed.to_numpy().astype("datetime64[ns]").astype(np.int64)
    return parsed.to_numpy(np.float64)


def _one_per_series(cells: pd.Series, codes: np.ndarray, unique_ids: np.ndarray, where: str, field: str) -> list[str]:
    """The one value a column holds for each series; an empty cell or two different values name the series."""
    frame = pd.DataFrame({"series": codes, "value": cells.map(_cell).to_numpy()})
    grouped = frame.groupby("series", sort=True)["value"]
    has_empty = np.bincount(codes, weights=frame["value"].isna().to_numpy(), minlength=len(unique_ids)) > 0
    distinct = grouped.nunique().to_numpy()
    no_value = [repr(unique_ids[s]) for s in np.flatnonzero(distinct == 0)]
    if no_value:
        raise DataError(f"{where}.{field}: {len(no_value)} series with no {cells.name!r} at all: {listing(no_value)}")
    partly = [repr(unique_ids[s]) for s in np.flatnonzero(has_empty)]
    if partly:
        raise DataError(f"{where}.{field}: {len(partly)} series with an empty {cells.name!r} cell: {listing(partly)}")
    several = np.flatnonzero(distinct > 1)
    if several.size:
        shown = [
            f"{unique_ids[s]!r} ({', '.join(map(repr, sorted(frame['value'][codes == s].unique())))})" for s in several
        ]
        raise DataError(f"{where}.{field}: {len(shown)} series with more than one {cells.name!r}: {listing(shown)}")
    return grouped.first().tolist()


def _read_wide(spec: SequenceTableSpec, table: pd.DataFrame, path: Path, where: str) -> SequenceTable:
    """One row per sequence, one column per step; empty trailing cells make a sequence shorter."""
    row_label = row_namer(path)
    others = {spec.label_column, spec.id_column, spec.split.column}
    steps_columns = list(spec.value_columns) or [name for name in table.columns if name not in others]
    if not steps_columns:
        named = sorted(name for name in others if name is not None)
        raise DataError(f"{where}.value_columns: {path} has no step columns besides {named}")
    _empty_cells(table, spec.label_column, row_label, path, where, "label_column")
    steps = numeric_values(table, steps_columns, path, row_label, where).to_numpy(np.float64)  # (N, S)
    present = ~np.isnan(steps)
    lengths = np.where(present.any(axis=1), steps.shape[1] - np.argmax(present[:, ::-1], axis=1), 0)
    holes = [
        f"{row_label(row)} column {steps_columns[col]!r}"
        for row, col in zip(*np.nonzero(~present & (np.arange(steps.shape[1]) < lengths[:, None])))
    ]
    if holes:
        raise DataError(
            f"{where}.value_columns: {path} has {len(holes)} empty cell(s) before the last value of their row "
            f"(only trailing cells may be empty): {listing(holes)}"
        )
    if spec.id_column is not None:
        names = [f"{row_label(i)} (id {series_id!r})" for i, series_id in enumerate(table[spec.id_column].map(_cell))]
    else:
        names = [row_label(i) for i in range(len(table))]
    sequences = [steps[i, :length, None] for i, length in enumerate(lengths)]  # each (T, 1)
    given = table[spec.split.column].map(_cell).tolist() if spec.split.column is not None else None
    labels = table[spec.label_column].map(_cell).tolist()
    return SequenceTable(sequences, labels, names, given, ("value",))


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
    )
