"""Audio clips as sequences: each frame of log-mel energies or MFCCs is one time step, computed with librosa.

Two sources, chosen by ``data.path``: a folder with one subfolder of clips per label, or a manifest CSV with
``path`` and ``label`` columns (paths relative to the manifest) and optionally the split column. A folder may use the
keyword-spotting layout (Speech Commands): subfolders whose name starts with ``_`` (``_background_noise_``) are
never a class and are ignored, and ``testing_list.txt`` (with ``validation_list.txt``, optionally) at the root name
the test (and validation) clips, so that the published split, which keeps each speaker in one part, is the one used.
The background-noise recordings are not used for augmentation: ignoring them is cheap and never hurts a split.

A clip is read with soundfile, mixed down to mono, cut to ``max_seconds``, resampled to ``sample_rate`` and turned
into (frames, F) float32 features by :func:`clip_features`; a served model calls the same function on uploaded
audio, so training and serving compute identical features.

Features are the expensive part, so they are computed in worker processes and cached per clip outside the output
folder (DVC deletes a stage's outputs before re-running it), by :mod:`lstmflow.data.audio_cache`. Clips
that cannot be used (unreadable, empty, silent, too short, wrong file type) are named with the reason and either
skipped (listed in ``skipped.json``) or make the stage fail, after every usable clip has been computed and cached.

Every worker process imports this module, so its top level stays light: the sequences and table helpers (which
import torch and pandas, about 2 s per process) are imported inside the parent-only functions that use them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import soundfile

from lstmflow.config import AudioFeaturesSpec, AudioSpec
from lstmflow.errors import ConfigError, DataError

#: File name endings read as audio (compared lower-case); any other file is a bad file ("wrong extension").
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg"})
#: A clip whose peak amplitude (full scale 1.0) stays below this, -80 dBFS, is silent: its log-mel frames
#: would all sit on the dB floor and teach the model nothing.
SILENCE_PEAK = 1e-4
#: Files at the root of a folder of label folders that name the clips of a part, one path per line relative to the
#: root (the Speech Commands layout); every other clip trains.
LIST_FILES = {"test": "testing_list.txt", "val": "validation_list.txt"}
#: Window of librosa.feature.delta (its default); edges use the nearest frame so that any clip length works.
DELTA_WIDTH = 9


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
    """What a source lists: the clips, the files that are not audio by their ending, and the given part per clip
    (the manifest's split column, or the source's part with ``split.files``; else None)."""

    clips: list[Clip]
    bad: list[BadClip]
    given_parts: list[Any] | None


# ------------------------------------------------------------------------------------------ features


def feature_params(spec: AudioFeaturesSpec) -> dict[str, Any]:
    """Every setting that changes a clip's features: the cache key and the meta a served model needs."""
    return {
        "sample_rate": spec.sample_rate,
        "features": spec.features,
        "n_mels": spec.n_mels,
        "n_mfcc": spec.n_mfcc,
        "deltas": spec.deltas,
        "n_fft": spec.n_fft,
        "hop_length": spec.hop_length,
        "max_seconds": spec.max_seconds,
    }


def n_features(spec: AudioFeaturesSpec) -> int:
    """F of the (frames, F) features: mel bands or MFCCs, times three with deltas."""
    base = spec.n_mfcc if spec.features == "mfcc" else spec.n_mels
    return base * (3 if spec.deltas else 1)


def clip_features(samples: np.ndarray, source_rate: int, spec: AudioFeaturesSpec) -> np.ndarray:
    """Raw samples (n,) or (n, channels) at ``source_rate`` → (frames, F) float32 features, one frame per step.

    Mono mixdown, cut to the first ``max_seconds``, resample to ``spec.sample_rate``, then log-mel (dB re 1.0,
    floored 80 dB below the clip's loudest cell) or MFCCs from the log-mel, with first and second deltas appended
    when asked. An empty, silent or shorter-than-one-frame clip raises DataError with the reason (the caller adds
    which file).
    """
    import librosa  # imported here: ~2 s, and only the data stage and serving need it

    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)  # (n, C) → (n,)
    if samples.ndim != 1:
        raise DataError(f"audio samples must be (n,) or (n, channels), got shape {samples.shape}")
    if spec.max_seconds is not None:
        samples = samples[: round(spec.max_seconds * source_rate)]
    if len(samples) == 0:
        raise DataError("no samples (empty clip)")
    if not np.isfinite(samples).all():
        raise DataError("NaN or infinite samples")
    peak = float(np.abs(samples).max())
    if peak < SILENCE_PEAK:
        raise DataError(f"silent (peak amplitude {peak:.1e} < {SILENCE_PEAK:.0e}, i.e. below -80 dBFS)")
    if source_rate != spec.sample_rate:
        samples = librosa.resample(samples, orig_sr=source_rate, target_sr=spec.sample_rate)
    if len(samples) < spec.n_fft:
        raise DataError(
            f"too short: {len(samples)} samples at {spec.sample_rate} Hz ({len(samples) / spec.sample_rate:.3f} s); "
            f"one frame needs n_fft = {spec.n_fft} samples ({spec.n_fft / spec.sample_rate:.3f} s)"
        )
    mel = librosa.feature.melspectrogram(
        y=samples, sr=spec.sample_rate, n_fft=spec.n_fft, hop_length=spec.hop_length, n_mels=spec.n_mels
    )  # (n_mels, frames)
    features = librosa.power_to_db(mel, ref=1.0)
    if spec.features == "mfcc":
        features = librosa.feature.mfcc(S=features, n_mfcc=spec.n_mfcc)  # (n_mfcc, frames)
    if spec.deltas:
        features = np.concatenate(
            [features]
            + [librosa.feature.delta(features, width=DELTA_WIDTH, order=order, mode="nearest") for order in (1, 2)]
        )  # (3 × base, frames)
    return np.ascontiguousarray(features.T, dtype=np.float32)  # (frames, F)


def read_clip(source: Path | BinaryIO) -> tuple[np.ndarray, int]:
    """A clip's samples (n, channels) float32 and its rate, from a file or its bytes (a served request's); what
    cannot be read raises DataError with the reason."""
    if isinstance(source, Path) and source.stat().st_size == 0:
        raise DataError("empty file (0 bytes)")
    try:
        samples, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
        detail = getattr(exc, "error_string", None) or str(exc)
        raise DataError(f"not readable as audio ({detail})") from None
    return samples, rate


# ---------------------------------------------------------------------------------------- listing clips


def read_clips(spec: AudioSpec, where: str) -> ClipListing:
    """The clips ``spec.path`` names (and those of ``split.files``) in a deterministic order, with their given parts."""
    from lstmflow.data.parts import read_parts

    lists = [name for name in LIST_FILES.values() if (Path(spec.path) / name).is_file()]
    if lists and spec.split.files is not None:
        raise DataError(
            f"{where}.split.files: {spec.path} holds {' and '.join(lists)}, which give the split already; "
            "remove split.files or those list files"
        )
    return read_parts(spec, where, _list_source)


def list_clips(spec: AudioSpec, where: str) -> tuple[list[Clip], list[BadClip]]:
    """The clips and the files that are not audio by their ending, for callers that need no parts."""
    listing = read_clips(spec, where)
    return listing.clips, listing.bad


def _list_source(spec: AudioSpec, where: str) -> ClipListing:
    path = Path(spec.path)
    if not path.exists():
        raise DataError(f"{where}.path: no folder or file at {path}")
    if path.is_dir():
        return _list_folder(spec, path, where)
    return _list_manifest(spec, path, where)


def _list_folder(spec: AudioSpec, root: Path, where: str) -> ClipListing:
    """One subfolder per label, files in name order; hidden entries and folders starting with ``_`` are ignored, and
    so are loose files that are not audio (a README, the list files); a loose audio file is a bad file."""
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
    loose = [entry for entry in entries if not entry.is_dir() and entry.suffix.lower() in AUDIO_SUFFIXES]
    bad = [BadClip(entry.name, "not inside a label folder") for entry in loose]
    clips = []
    for folder in folders:
        for file in sorted((f for f in folder.iterdir() if not f.name.startswith(".")), key=lambda f: f.name):
            name = file.relative_to(root).as_posix()
            if not file.is_file():
                bad.append(BadClip(name, "not a file"))
            elif file.suffix.lower() not in AUDIO_SUFFIXES:
                bad.append(BadClip(name, wrong_extension(file)))
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


def wrong_extension(path: Path) -> str:
    """Why a file is not read as a clip: its ending."""
    return f"wrong extension {path.suffix or '(none)'!r}; audio files end in {', '.join(sorted(AUDIO_SUFFIXES))}"


def _list_manifest(spec: AudioSpec, manifest: Path, where: str) -> ClipListing:
    """Rows of path, label (and the split column); an empty label cell is an error naming its line."""
    from lstmflow.data.tables import listing

    if manifest.suffix.lower() != ".csv":
        raise DataError(f"{where}.path: {manifest} must be a folder of label folders or a .csv manifest")
    found = manifest_clips(manifest, "label", spec.split.column, where)
    unlabelled = [clip.name for clip in found.clips if not clip.label]
    if unlabelled:
        raise DataError(f"{where}.path: {manifest} has {len(unlabelled)} empty label cell(s): {listing(unlabelled)}")
    return found


def manifest_clips(manifest: Path, column: str, split_column: str | None, where: str) -> ClipListing:
    """A manifest CSV's clips in row order, each clip's ``label`` the cell of ``column`` (a class, a transcript;
    "" when empty, for the caller to judge) and its given part the split column's cell.

    Cells are read as written, so a label or transcript such as "NA" or "none" stays text. An empty path cell,
    or a path to no file, is an error naming its line; a file that is not audio by its ending is a bad clip.
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
        elif file.suffix.lower() not in AUDIO_SUFFIXES:
            bad.append(BadClip(name, wrong_extension(file)))
        else:
            clips.append(Clip(file, value, name))
            given.append((table[split_column].iloc[i] or None) if split_column is not None else None)
    if absent:
        raise DataError(
            f"{where}.path: {manifest} lists {len(absent)} file(s) that do not exist "
            f"(paths are relative to {manifest.parent}): {listing(absent)}"
        )
    return ClipListing(clips, bad, given if split_column is not None else None)


#: How many clips the probe opens to check that they are audio, with ``bad_files: fail``: their headers only.
PROBED_CLIPS = 256


def unreadable_clips(clips: Sequence[Clip]) -> list[BadClip]:
    """Those of the first :data:`PROBED_CLIPS` clips whose header does not open as audio: what ``bad_files: fail``
    can refuse before any features are computed (a model's summary before the data stage)."""
    bad = []
    for clip in clips[:PROBED_CLIPS]:
        try:
            soundfile.info(str(clip.path))
        except (soundfile.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
            bad.append(BadClip(clip.name, f"not readable as audio ({getattr(exc, 'error_string', None) or exc})"))
    return bad


def refuse_bad_clips(bad: Sequence[BadClip], where: str) -> None:
    """Under ``bad_files: fail``: an error naming the clips that cannot be used and why (no error without any)."""
    from lstmflow.data.tables import listing

    if bad:
        raise DataError(
            f"{where}.bad_files: {len(bad)} file(s) that cannot be used (set bad_files: skip to leave them out): "
            f"{listing([f'{clip.name}: {clip.reason}' for clip in bad])}"
        )


def check_feature_spec(spec: AudioFeaturesSpec, where: str) -> None:
    """Feature keys each valid alone but not together: MFCCs are taken from the mel bands."""
    if spec.features == "mfcc" and spec.n_mfcc > spec.n_mels:
        raise ConfigError(
            f"{where}.n_mfcc: {spec.n_mfcc} MFCCs need at least as many mel bands, got n_mels {spec.n_mels}"
        )


# ---------------------------------------------------------------------------------------- the stage


def prepare_audio_features(spec: AudioSpec, out_dir: Path, where: str, cache_dir: Path) -> dict[str, Any]:
    """The data stage of an `audio` pipeline: list, compute (cached, parallel), divide into parts, write the store.

    Returns write_sequences' summary plus ``skipped`` and ``skipped_files`` (bad files left out), ``computed`` and
    ``cached`` (clips computed this run vs taken from ``cache_dir``). ``skipped.json`` in ``out_dir`` lists each
    skipped file and why.
    """
    from lstmflow.data.parts import assign_parts
    from lstmflow.data.sequences import write_sequences

    check_feature_spec(spec, where)
    from lstmflow.data.audio_cache import compute_features  # it imports this module (clip_features)

    clips, bad, given_parts = read_clips(spec, where)
    results, computed = compute_features(clips, spec, cache_dir)
    bad = bad + [BadClip(clip.name, result) for clip, result in zip(clips, results) if isinstance(result, str)]
    if spec.bad_files == "fail":
        refuse_bad_clips(bad, where)
    good = [i for i, result in enumerate(results) if not isinstance(result, str)]
    if not good:
        raise DataError(f"{where}.path: no usable clips in {spec.path} ({len(bad)} bad file(s))")
    labels = [clips[i].label for i in good]
    names = [clips[i].name for i in good]
    given = [given_parts[i] for i in good] if given_parts is not None else None
    parts = assign_parts(labels, spec.split, given, where, names=names)
    extra = {**feature_params(spec), "skipped": len(bad)}
    summary = write_sequences(
        out_dir,
        [result for result in results if not isinstance(result, str)],  # the good clips' features
        labels,
        parts,
        spec.scale,
        None,
        where,
        extra,
        names=names,
        split=spec.split,
        given=given,
    )
    skipped = [{"file": clip.name, "reason": clip.reason} for clip in bad]
    (Path(out_dir) / "skipped.json").write_text(json.dumps(skipped, indent=1) + "\n")
    return {
        **summary,
        "skipped": len(bad),
        "skipped_files": [clip.name for clip in bad],
        "computed": computed,
        "cached": len(clips) - computed,
    }
