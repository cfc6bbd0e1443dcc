"""Labelled clips, audio or video files: which files a source lists, which of them are bad, and why.

Shared by every kind whose samples are media files decoded one by one (`audio`, `speech`, `video`), so that a folder
or a manifest is read, and a bad file named, the same way whatever decodes it. A kind describes its files by a
:class:`ClipFiles` (what they are called in messages, the file endings read as clips) and a probe that opens a
file's header.

Two sources, chosen by ``data.path``: a folder with one subfolder of clips per label, or a manifest CSV with
``path`` and ``label`` columns (paths relative to the manifest) and optionally the split column. A folder may use the
keyword-spotting layout (Speech Commands): subfolders whose name starts with ``_`` (``_background_noise_``) are
never a class and are ignored, and ``testing_list.txt`` (with ``validation_list.txt``, optionally) at the root name
the test (and validation) clips, so that the published split, which keeps each speaker in one part, is the one used.

Worker processes import the kinds' modules, and they this one, so its top level stays light: pandas and the parts
helpers are imported inside the functions that use them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from lstmflow.config import AudioSpec, VideoSpec
from lstmflow.errors import DataError

#: Files at the root of a folder of label folders that name the clips of a part, one path per line relative to the
#: root (the Speech Commands layout); every other clip trains.
LIST_FILES = {"test": "testing_list.txt", "val": "validation_list.txt"}
#: How many clips the probe opens to check that they decode, with ``bad_files: fail``: their headers only.
PROBED_CLIPS = 256

#: A kind whose clips come in label folders or a manifest of labels.
LabelledSpec = TypeVar("LabelledSpec", AudioSpec, VideoSpec)


class ClipFiles(NamedTuple):
    """What a kind's clips are: the word messages use (``audio``, ``video``) and the endings read as clips
    (lower-case; any other file is a bad file, "wrong extension")."""

    kind: str
    suffixes: frozenset[str]


class Clip(NamedTuple):
    """One listed clip: where it is, its label (for `speech`: its transcript as written), and how messages name
    it."""

    path: Path
    label: str
    name: str


class BadClip(NamedTuple):
    name: str
    reason: str


class ClipListing(NamedTuple):
    """What a source lists: the clips, the files that are not clips by their ending, and the given part per clip
    (the manifest's split column, or the source's part with ``split.files``; else None)."""

    clips: list[Clip]
    bad: list[BadClip]
    given_parts: list[Any] | None


def wrong_extension(path: Path, files: ClipFiles) -> str:
    """Why a file is not read as a clip: its ending."""
    return f"wrong extension {path.suffix or '(none)'!r}; {files.kind} files end in {', '.join(sorted(files.suffixes))}"


# ---------------------------------------------------------------------------------------- listing clips


def read_clips(spec: LabelledSpec, where: str, files: ClipFiles) -> ClipListing:
    """The clips ``spec.path`` names (and those of ``split.files``) in a deterministic order, with their given parts."""
    from lstmflow.data.parts import read_parts

    lists = [name for name in LIST_FILES.values() if (Path(spec.path) / name).is_file()]
    if lists and spec.split.files is not None:
        raise DataError(
            f"{where}.split.files: {spec.path} holds {' and '.join(lists)}, which give the split already; "
            "remove split.files or those list files"
        )
    return read_parts(spec, where, lambda alone, at: _list_source(alone, at, files))


def _list_source(spec: LabelledSpec, where: str, files: ClipFiles) -> ClipListing:
    path = Path(spec.path)
    if not path.exists():
        raise DataError(f"{where}.path: no folder or file at {path}")
    if path.is_dir():
        return _list_folder(spec, path, where, files)
    if path.suffix.lower() != ".csv":
        raise DataError(f"{where}.path: {path} must be a folder of label folders or a .csv manifest")
    found = manifest_clips(path, "label", spec.split.column, where, files)
    _refuse_unlabelled(found, path, where)
    return found


def _list_folder(spec: LabelledSpec, root: Path, where: str, files: ClipFiles) -> ClipListing:
    """One subfolder per label, files in name order; hidden entries and folders starting with ``_`` are ignored, and
    so are loose files that are not clips (a README, the list files); a loose clip is a bad file."""
    if spec.split.column is not None:
        raise DataError(
            f"{where}.split.column: {spec.split.column!r} needs a manifest CSV; clips in label folders have no "
            f"columns (use split fractions, or a manifest with path, label and {spec.split.column} columns)"
        )
    entries = sorted((entry for entry in root.iterdir() if not entry.name.startswith(".")), key=lambda e: e.name)
    folders = [entry for entry in entries if entry.is_dir() and not entry.name.startswith("_")]
    if not folders:
        raise DataError(
            f"{where}.path: {root} has no label folders; put each class's clips in a subfolder named after it"
        )
    loose = [entry for entry in entries if not entry.is_dir() and entry.suffix.lower() in files.suffixes]
    bad = [BadClip(entry.name, "not inside a label folder") for entry in loose]
    clips = []
    for folder in folders:
        for file in sorted((f for f in folder.iterdir() if not f.name.startswith(".")), key=lambda f: f.name):
            name = file.relative_to(root).as_posix()
            if not file.is_file():
                bad.append(BadClip(name, "not a file"))
            elif file.suffix.lower() not in files.suffixes:
                bad.append(BadClip(name, wrong_extension(file, files)))
            else:
                clips.append(Clip(file, folder.name, name))
    return ClipListing(clips, bad, _listed_parts(root, [clip.name for clip in clips], where))


def _listed_parts(root: Path, names: list[str], where: str) -> list[str] | None:
    """Each clip's part from the root's list files (None without them): listed test or val clips there, the rest
    train; without ``validation_list.txt`` the rest is :data:`~lstmflow.data.parts.TRAIN_OR_VAL` (``split.val`` of it
    validates). Listed paths that name no clip here (a trimmed copy of a data set) are ignored."""
    from lstmflow.data.parts import TRAIN_OR_VAL
    from lstmflow.data.tables import listing

    present = {part: root / name for part, name in LIST_FILES.items() if (root / name).is_file()}
    if not present:
        return None
    if "test" not in present:
        raise DataError(
            f"{where}.path: {present['val']} names the validation clips but {root / LIST_FILES['test']} is missing; "
            "give both list files, or neither (the split fractions then apply)"
        )
    listed = {
        part: {line.strip().replace("\\", "/") for line in path.read_text().splitlines() if line.strip()}
        for part, path in present.items()
    }
    both = sorted(listed["test"] & listed.get("val", set()))
    if both:
        raise DataError(f"{where}.path: {len(both)} clip(s) in both list files, {listing(both)}; a clip has one part")
    rest = "train" if "val" in listed else TRAIN_OR_VAL
    return [next((part for part, chosen in listed.items() if name in chosen), rest) for name in names]


def _refuse_unlabelled(found: ClipListing, manifest: Path, where: str) -> None:
    """An empty label cell is an error naming its line: a clip without a class can neither train nor be scored."""
    from lstmflow.data.tables import listing

    unlabelled = [clip.name for clip in found.clips if not clip.label]
    if unlabelled:
        raise DataError(f"{where}.path: {manifest} has {len(unlabelled)} empty label cell(s): {listing(unlabelled)}")


def manifest_clips(manifest: Path, column: str, split_column: str | None, where: str, files: ClipFiles) -> ClipListing:
    """A manifest CSV's clips in row order, each clip's ``label`` the cell of ``column`` (a class, a transcript;
    "" when empty, for the caller to judge) and its given part the split column's cell.

    Cells are read as written, so a label or transcript such as "NA" or "none" stays text. An empty path cell,
    or a path to no file, is an error naming its line; a file that is not a clip by its ending is a bad clip.
    """
    import pandas as pd

    from lstmflow.data.tables import listing, row_namer

    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    wanted = ["path", column] + ([split_column] if split_column is not None else [])
    missing = [name for name in wanted if name not in table.columns]
    if missing:
        raise DataError(
            f"{where}.path: {manifest} has no column(s) {missing}; available: {listing(list(table.columns))}"
        )
    if table.empty:
        raise DataError(f"{where}.path: {manifest} has a header but no data rows")
    line = row_namer(manifest)
    clips, bad, absent, given = [], [], [], []
    for i, (cell, value) in enumerate(zip(table["path"], table[column])):
        if not cell.strip():
            raise DataError(f"{where}.path: {manifest} {line(i)} has an empty path cell")
        file = manifest.parent / cell
        name = f"{cell} ({line(i)})"
        if not file.is_file():
            absent.append(f"{line(i)}: {cell!r}")
        elif file.suffix.lower() not in files.suffixes:
            bad.append(BadClip(name, wrong_extension(file, files)))
        else:
            clips.append(Clip(file, value, name))
            given.append((table[split_column].iloc[i] or None) if split_column is not None else None)
    if absent:
        raise DataError(
            f"{where}.path: {manifest} lists {len(absent)} file(s) that do not exist "
            f"(paths are relative to {manifest.parent}): {listing(absent)}"
        )
    return ClipListing(clips, bad, given if split_column is not None else None)


# ---------------------------------------------------------------------------------------- bad clips


def unreadable_clips(clips: Sequence[Clip], probe: Callable[[Path], object]) -> list[BadClip]:
    """Those of the first :data:`PROBED_CLIPS` clips whose header ``probe`` refuses (it raises DataError with the
    reason): what ``bad_files: fail`` can refuse before anything is decoded (a model's summary before the data
    stage)."""
    bad = []
    for clip in clips[:PROBED_CLIPS]:
        try:
            probe(clip.path)
        except DataError as exc:
            bad.append(BadClip(clip.name, str(exc)))
    return bad


def refuse_bad_clips(bad: Sequence[BadClip], where: str) -> None:
    """Under ``bad_files: fail``: an error naming the clips that cannot be used and why (no error without any)."""
    from lstmflow.data.tables import listing

    if bad:
        raise DataError(
            f"{where}.bad_files: {len(bad)} file(s) that cannot be used (set bad_files: skip to leave them out): "
            f"{listing([f'{clip.name}: {clip.reason}' for clip in bad])}"
        )


def store_clips(
    spec: LabelledSpec, listing: ClipListing, results: Sequence[Any], out_dir: Path, where: str, extra: dict[str, Any]
) -> dict[str, Any]:
    """Write the sequences store of a kind's decoded clips: each result a clip's (T, F) steps, or the reason the clip
    is bad. Bad clips are refused (``bad_files: fail``) or left out and listed in ``skipped.json``; the good ones are
    divided into parts and written by write_sequences with ``extra`` (and the count left out) in their meta.

    Returns write_sequences' summary plus ``skipped`` and ``skipped_files``, the clips left out.
    """
    from lstmflow.data.parts import assign_parts
    from lstmflow.data.sequences import write_sequences

    clips = listing.clips
    bad = listing.bad + [BadClip(clip.name, result) for clip, result in zip(clips, results) if isinstance(result, str)]
    if spec.bad_files == "fail":
        refuse_bad_clips(bad, where)
    good = [i for i, result in enumerate(results) if not isinstance(result, str)]
    if not good:
        raise DataError(f"{where}.path: no usable clips in {spec.path} ({len(bad)} bad file(s))")
    labels = [clips[i].label for i in good]
    names = [clips[i].name for i in good]
    given = [listing.given_parts[i] for i in good] if listing.given_parts is not None else None
    parts = assign_parts(labels, spec.split, given, where, names=names)
    summary = write_sequences(
        out_dir,
        [results[i] for i in good],
        labels,
        parts,
        spec.scale,
        None,
        where,
        {**extra, "skipped": len(bad)},
        names=names,
        split=spec.split,
        given=given,
    )
    skipped = [{"file": clip.name, "reason": clip.reason} for clip in bad]
    (Path(out_dir) / "skipped.json").write_text(json.dumps(skipped, indent=1) + "\n")
    return {**summary, "skipped": len(bad), "skipped_files": [clip.name for clip in bad]}
