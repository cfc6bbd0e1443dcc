"""Which part, train, val or test, each sample belongs to: shared by every data kind.

Three ways to give the parts: files or folders (``split.files``: :func:`split_files` checks them and
:func:`read_parts` reads and joins them), a split column holding each sample's part, or seeded fractions drawn per
class (:func:`assign_parts`). Given files may leave the validation part out (public benchmarks ship train and test
only): the training samples are then :data:`TRAIN_OR_VAL` and a stratified seeded ``split.val`` of them validates.
A time series is divided by time instead, but reads its given files here too.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

from lstmflow.config import (
    AudioSpec,
    ClassSplitSpec,
    ImagesSpec,
    PairsSpec,
    SequenceTableSpec,
    SpeechSpec,
    TextSpec,
    TimeSeriesDataSpec,
    VideoSpec,
)
from lstmflow.data.tables import cell_text, listing
from lstmflow.errors import DataError

Part = Literal["train", "val", "test"]
PARTS: tuple[Part, ...] = ("train", "val", "test")
#: The training and validation samples as one part: what ``train.refit`` trains on once validation chose the epochs.
TRAIN_AND_VAL: Literal["train+val"] = "train+val"
#: A part, or training and validation together.
Parts = Literal["train", "val", "test", "train+val"]
#: The given part of training samples when the split gives no validation part: ``split.val`` of them is drawn.
TRAIN_OR_VAL = "train or val"


class _Reading(Protocol):
    """What a kind's reader returns for one source: a NamedTuple whose first field holds one item per sample."""

    @property
    def _fields(self) -> tuple[str, ...]: ...

    def __getitem__(self, index: int, /) -> Any: ...


#: A kind's data spec (with ``path`` and ``split``) and what its reader returns for one source.
SourceSpec = TypeVar(
    "SourceSpec",
    TimeSeriesDataSpec,
    SequenceTableSpec,
    ImagesSpec,
    TextSpec,
    AudioSpec,
    PairsSpec,
    SpeechSpec,
    VideoSpec,
)
Reading = TypeVar("Reading", bound=_Reading)


# ------------------------------------------------------------------------------------------- assigning


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
    test parts must each hold a sample. Samples given as :data:`TRAIN_OR_VAL` (the training file of a split that
    names no validation file) are divided by the fraction rule below with ``split.val`` and no test.

    The fraction rule, per class: a class with fewer than 3 samples goes to train whole (it cannot be divided
    usefully). Otherwise ``round(n × test)`` samples go to test and ``round(n × val)`` to val, each at least 1 when
    its fraction is > 0, and fewer when needed to leave at least one in train. Which samples is a permutation
    seeded by (``split.seed``, the class name), so adding a class does not reshuffle the others.
    """
    names = list(names) if names is not None else [f"sample {i}" for i in range(len(labels))]
    if given is None:
        return _drawn_parts(labels, split.val, split.test, split.seed)
    parts = _given_parts(given, split, names, where)
    undivided = np.flatnonzero(parts == _UNDIVIDED)
    if undivided.size:
        label_array = np.asarray(labels, dtype=object)
        parts[undivided] = _drawn_parts(list(label_array[undivided]), split.val, 0.0, split.seed)
    return parts


#: Other names a split column may give a part (case and surrounding spaces do not matter either).
PART_SYNONYMS = {"training": "train", "validation": "val", "valid": "val", "testing": "test"}


def _part_name(value: Any) -> str | None:
    """A split cell as a part's name: lowercased and stripped, a reader's own marker kept as it is."""
    text = cell_text(value)
    return text if text is None or text == TRAIN_OR_VAL else text.strip().lower()


#: The code of :data:`TRAIN_OR_VAL` until :func:`assign_parts` divides those samples.
_UNDIVIDED = 3


def _given_parts(given: Sequence[Any], split: ClassSplitSpec, names: list[str], where: str) -> np.ndarray:
    """The parts a split column (or each sample's file) names; anything but train, val or test is an error."""
    codes: dict[str | None, int] = {part: code for code, part in enumerate(PARTS)}
    codes.update({synonym: codes[part] for synonym, part in PART_SYNONYMS.items()})
    if split.column is None:
        codes[TRAIN_OR_VAL] = _UNDIVIDED  # only readers give it, never a user's column
    cells = [_part_name(value) for value in given]
    bad = [f"{names[i]}: {cell_text(value)!r}" for i, value in enumerate(given) if cells[i] not in codes]
    if bad:
        raise DataError(
            f"{where}.split.column: {len(bad)} value(s) that are not train, val or test (or "
            f"{', '.join(PART_SYNONYMS)}): {listing(bad)}"
        )
    parts = np.array([codes[cell] for cell in cells], dtype=np.int8)
    if split.files is not None:
        # Readers refuse an empty file; this catches a part left empty after dropping bad files (audio).
        wanted = ("val", "test") if split.files.val is not None else ("test",)
        empty = [part for part in wanted if not (parts == codes[part]).any()]
        if empty:
            raise DataError(f"{where}.split.files.{empty[0]}: no usable samples in {getattr(split.files, empty[0])}")
    return parts


def _drawn_parts(labels: Sequence[str], val: float, test: float, seed: int) -> np.ndarray:
    """Stratified seeded fractions, class by class (the rule in :func:`assign_parts`)."""
    label_array = np.asarray(labels, dtype=object)
    parts = np.zeros(len(label_array), dtype=np.int8)
    for label in sorted(set(labels)):
        members = np.flatnonzero(label_array == label)
        n = len(members)
        if n < 3:
            continue
        n_test = _share(n, test)
        n_val = min(_share(n, val), n - 1 - n_test)
        if n_val < 0:
            n_test, n_val = n - 1, 0
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        shuffled = members[rng.permutation(n)]
        parts[shuffled[:n_test]] = 2
        parts[shuffled[n_test : n_test + n_val]] = 1
    return parts


def split_record(
    split: ClassSplitSpec, given: Sequence[Any] | None, parts: np.ndarray, names: Sequence[str]
) -> dict[str, Any]:
    """How the parts were given, for the features' meta.json: ``by`` (files, column, lists or fractions) and, when
    validation samples were drawn from the given training samples, which (by name), with the fraction and seed, so
    the division can be checked and repeated."""
    if given is None:
        return {"by": "fractions"}
    by = "files" if split.files is not None else "column" if split.column is not None else "lists"
    drawn = [i for i, value in enumerate(given) if value == TRAIN_OR_VAL]
    if not drawn:
        return {"by": by}
    chosen = [names[i] for i in drawn if parts[i] == 1]
    return {"by": by, "val_drawn_from_train": {"fraction": split.val, "seed": split.seed, "samples": chosen}}


def _share(n: int, fraction: float) -> int:
    """round(n × fraction), halves up, and at least 1 for a positive fraction."""
    return max(int(n * fraction + 0.5), 1) if fraction > 0 else 0


# ------------------------------------------------------------------------------------------ given files


def split_files(spec: SourceSpec, where: str) -> list[tuple[Part, Path]]:
    """The sources of a given split, ``path`` (train), ``split.files.val`` when given and ``split.files.test``.

    Each must exist, be distinct, and have the form of ``path``: a folder, or a file with the same ending (so one
    reader reads them all).
    """
    files = spec.split.files
    assert files is not None, "split_files is for a spec with split.files"
    train = Path(spec.path)
    sources: list[tuple[Part, Path, str]] = [("train", train, "path")]
    if files.val is not None:
        sources.append(("val", Path(files.val), "split.files.val"))
    sources.append(("test", Path(files.test), "split.files.test"))
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
                "give the parts in the same form"
            )
    return [(part, path) for part, path, _ in sources]


def _form(path: Path) -> str:
    return "a folder" if path.is_dir() else f"a {path.suffix.lower() or 'suffix-less'} file"


def read_parts(spec: SourceSpec, where: str, read: Callable[[SourceSpec, str], Reading]) -> Reading:
    """``read(spec, where)``: a kind's reader of one source. With ``split.files``, the reader reads each source (as a
    spec of its own: that ``path``, no split files) and the readings are joined, train, val (when given), test.

    A reading is a NamedTuple whose first field holds one item per sample. The join goes by field: ``given_parts``
    becomes each sample's part (its source's; :data:`TRAIN_OR_VAL` for the training source when no validation
    source is given), which ``assign_parts`` then takes as a split column's; how
    messages name a sample or file (the ``names`` field, or the ``name`` of each item) gets its source in front
    (``val.csv line 3``, ``val/cat/1.png``) so that names stay apart; other lists are concatenated, counts added,
    and anything else (e.g. the feature names) must be the same in every source.
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
    joined = {field: _join_field(field, readings, where) for field in first._fields}
    return type(first)(**joined)


def _join_field(field: str, readings: list[tuple[Part, str, Reading]], where: str) -> Any:
    """One field of the joined reading (the rules in :func:`read_parts`)."""
    values = [getattr(reading, field) for _, _, reading in readings]
    if field == "given_parts":
        divided = any(part == "val" for part, _, _ in readings)
        return [
            part if part != "train" or divided else TRAIN_OR_VAL for part, _, reading in readings for _ in reading[0]
        ]
    if field == "names":
        return [prefix + name for (_, prefix, _), names in zip(readings, values) for name in names]
    if isinstance(values[0], list):
        return [
            item._replace(name=prefix + item.name) if hasattr(item, "_replace") and "name" in item._fields else item
            for (_, prefix, _), items in zip(readings, values)
            for item in items
        ]
    if isinstance(values[0], int):
        return sum(values)
    if all(value == values[0] for value in values):
        return values[0]
    shown = ", ".join(f"{prefix.strip()}: {value!r}" for (_, prefix, _), value in zip(readings, values))
    raise DataError(f"{where}.split.files: the parts differ in their {field} ({shown})")
