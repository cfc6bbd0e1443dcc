"""Audio clips with their transcripts, for speech recognition with CTC over characters: list the clips, compute
their frames as audio classification does, fit the alphabet on the training transcripts, and batch frames with
label ids.

Two sources, chosen by ``data.path``: a manifest CSV with ``path`` and ``text`` columns (paths relative to it, and
optionally the split column), or a folder where each clip ``x.wav`` has its transcript in ``x.txt`` beside it
(subfolders walked in name order). Listing, features, their per-clip cache, the parallel workers and the bad-file
rules are :mod:`lstmflow.data.audio`'s, so a clip has the same frames whichever task reads it.

A transcript is trimmed, each run of white space made one space and, with ``lowercase``, lowercased; an empty one
makes its clip bad. The alphabet is the sorted characters of the training transcripts: CTC's blank is label 0 and
character ``alphabet[i]`` is label ``i + 1``. A clip the model cannot learn or be scored on is left out, named and
counted (or, under ``bad_files: fail``, makes the stage fail naming it): a validation or test transcript holding a
character no training transcript holds (``outside_alphabet``), and a clip with fewer frames than CTC needs to
emit its transcript (``too_short_for_text``: one frame per character, and a blank between two equal neighbours).

The prepared folder:

- ``values.npy``, ``offsets.npy``, ``parts.npy``: the frames in the sequence store's layout
  (:mod:`lstmflow.data.sequences.prepare`), scaled by its preprocessing fitted on the training clips;
- ``transcripts.parquet``: ``name``, ``text`` (normalised) and ``part`` of each clip, in store order;
- ``meta.json``: the alphabet, counts per part, the clips left out by reason, the preprocessing, and under
  ``extra_meta`` the feature parameters and the number of clips left out (as audio classification writes them);
- ``skipped.json``: each clip left out and why.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from lstmflow.config import SpeechSpec
from lstmflow.data.audio import AUDIO_FILES, check_feature_spec, feature_params, n_features, unreadable_clips
from lstmflow.data.audio_cache import compute_features
from lstmflow.data.clips import BadClip, Clip, ClipListing, manifest_clips, refuse_bad_clips, wrong_extension
from lstmflow.data.pairs import length_stats, padded_ids
from lstmflow.data.parts import PARTS, Parts, assign_parts, read_parts, split_record
from lstmflow.data.sequences import SequenceFeatures, SequencePreprocessing
from lstmflow.data.sequences.prepare import _end_to_end
from lstmflow.errors import DataError

if TYPE_CHECKING:
    import torch

    from lstmflow.data.sequences import SequenceSet

#: Bumped when the layout of the prepared folder changes.
SPEECH_FORMAT = 1
TEXTS_FILE = "transcripts.parquet"
#: The CTC blank's label; the characters are 1..K.
BLANK_ID = 0
#: The one label every clip is drawn under: the parts are seeded fractions of all clips, not per class.
_ONE_LABEL = "clip"


# ------------------------------------------------------------------------------------------------ text


def normalise_transcript(text: str, lowercase: bool) -> str:
    """Trimmed, each run of white space one space, lowercased when asked: spacing and case that the speech does
    not carry must not become characters the model has to guess."""
    text = " ".join(text.split())
    return text.lower() if lowercase else text


def fit_alphabet(texts: Iterable[str]) -> list[str]:
    """The sorted characters of ``texts`` (the training transcripts): character ``i`` is CTC label ``i + 1``."""
    return sorted({char for text in texts for char in text})


def encode_text(alphabet: Sequence[str], text: str) -> list[int]:
    """A transcript's label ids, 1..K; a character outside the alphabet raises DataError naming it."""
    index = {char: i + 1 for i, char in enumerate(alphabet)}
    outside = sorted(set(text) - index.keys())
    if outside:
        raise DataError(f"characters {outside} of {text!r} are not in the alphabet {''.join(alphabet)!r}")
    return [index[char] for char in text]


def decode_ids(alphabet: Sequence[str], ids: Iterable[int]) -> str:
    """Label ids back to text: 1..K to characters, the blank (0) dropped. Repeats are kept: collapsing them is the
    CTC decoder's step, before the blanks go."""
    chars = []
    for i in map(int, ids):
        if not 0 <= i <= len(alphabet):
            raise ValueError(f"label id {i} is outside 0..{len(alphabet)} (the blank and the alphabet)")
        if i != BLANK_ID:
            chars.append(alphabet[i - 1])
    return "".join(chars)


def ctc_frames(text: str) -> int:
    """The fewest frames CTC can emit ``text`` in: one per character, plus a blank between equal neighbours."""
    return len(text) + sum(a == b for a, b in pairwise(text))


# ------------------------------------------------------------------------------------------------ listing


def read_speech(spec: SpeechSpec, where: str) -> ClipListing:
    """The clips of ``spec.path`` (and of ``split.files``), each clip's ``label`` its transcript as written ("" when
    empty), with the files that cannot be clips and the given parts."""
    # SourceSpec in lstmflow.data.parts does not list SpeechSpec yet; the ignore goes once it does.
    return read_parts(spec, where, _list_source)


def _list_source(spec: SpeechSpec, where: str) -> ClipListing:
    path = Path(spec.path)
    if not path.exists():
        raise DataError(f"{where}.path: no folder or file at {path}")
    if path.is_dir():
        return _list_folder(spec, path, where)
    if path.suffix.lower() != ".csv":
        raise DataError(f"{where}.path: {path} must be a folder of clips with transcripts or a .csv manifest")
    return manifest_clips(path, spec.text_column, spec.split.column, where, AUDIO_FILES)


def _list_folder(spec: SpeechSpec, root: Path, where: str) -> ClipListing:
    """Every audio file under ``root`` in path order, its transcript the ``.txt`` file of the same name beside it.

    Hidden entries are ignored, and so are files that are neither audio nor transcripts (a README); an audio file
    without a transcript, or a file of another type that has one (``x.mp3`` beside ``x.txt``), is a bad clip.
    """
    if spec.split.column is not None:
        raise DataError(
            f"{where}.split.column: {spec.split.column!r} needs a manifest CSV; a folder of clips has no columns "
            f"(use split fractions or split.files, or a manifest with path, text and {spec.split.column} columns)"
        )
    clips, bad = [], []
    for file in _files(root):
        name, transcript = file.relative_to(root).as_posix(), file.with_suffix(".txt")
        if file.suffix.lower() == ".txt":
            continue
        if file.suffix.lower() not in AUDIO_FILES.suffixes:
            if transcript.is_file():
                bad.append(BadClip(name, wrong_extension(file, AUDIO_FILES)))
        elif not transcript.is_file():
            bad.append(BadClip(name, f"no transcript {transcript.name} beside it"))
        else:
            try:
                clips.append(Clip(file, transcript.read_text(encoding="utf-8-sig"), name))
            except UnicodeDecodeError as exc:
                bad.append(BadClip(name, f"transcript {transcript.name} is not UTF-8 text ({exc.reason})"))
    if not clips and not bad:
        raise DataError(f"{where}.path: {root} holds no audio clips with a transcript beside them (x.wav and x.txt)")
    return ClipListing(clips, bad, None)


def _files(root: Path) -> list[Path]:
    """The files under ``root``, subfolders included, in path order; hidden files and folders left out."""
    found = (path for path in root.rglob("*") if not any(part.startswith(".") for part in path.relative_to(root).parts))
    return sorted(path for path in found if path.is_file())


class _Listed(NamedTuple):
    """The listed clips that have a transcript (normalised, in ``label``), their given parts, and the bad clips."""

    clips: list[Clip]
    given: list[Any] | None
    bad: list[BadClip]


def _listed(spec: SpeechSpec, where: str) -> _Listed:
    found = read_speech(spec, where)
    texts = [normalise_transcript(clip.label, spec.lowercase) for clip in found.clips]
    kept = [i for i, text in enumerate(texts) if text]
    empty = [BadClip(found.clips[i].name, "empty transcript") for i, text in enumerate(texts) if not text]
    given = [found.given_parts[i] for i in kept] if found.given_parts is not None else None
    return _Listed([found.clips[i]._replace(label=texts[i]) for i in kept], given, found.bad + empty)


def _parts(clips: list[Clip], given: list[Any] | None, spec: SpeechSpec, where: str) -> np.ndarray:
    """Each clip's part (0 train, 1 val, 2 test): given, or seeded fractions of all clips (not stratified)."""
    if not clips:
        raise DataError(f"{where}.path: no usable clips in {spec.path}")
    names = [clip.name for clip in clips]
    return assign_parts([_ONE_LABEL] * len(clips), spec.split, given, where, names=names)


def _check_parts(parts: np.ndarray, skipped: dict[str, list[BadClip]], where: str) -> None:
    """Training, validation and test each need a clip: a model is fitted, chosen and measured on them."""
    counts = {part: int((parts == code).sum()) for code, part in enumerate(PARTS)}
    empty = [part for part, count in counts.items() if count == 0]
    if empty:
        shown = ", ".join(f"{part} {count}" for part, count in counts.items())
        left_out = "".join(f"; {len(clips)} left out as {reason}" for reason, clips in skipped.items() if clips)
        raise DataError(
            f"{where}.split: no clips in the {' and '.join(empty)} part(s) ({shown}{left_out}); give more clips or "
            "other split fractions"
        )


def speech_model_io(spec: SpeechSpec, where: str) -> tuple[int, int]:
    """(features per frame, CTC outputs: the training transcripts' alphabet + the blank), from the listing and the
    transcripts alone (no features computed): for a summary of the model before the data stage has run."""
    check_feature_spec(spec, where)
    listed = _listed(spec, where)
    if spec.bad_files == "fail":
        refuse_bad_clips(listed.bad + unreadable_clips(listed.clips), where)
    parts = _parts(listed.clips, listed.given, spec, where)
    _check_parts(parts, {}, where)
    alphabet = fit_alphabet(clip.label for clip, part in zip(listed.clips, parts) if part == 0)
    return n_features(spec), len(alphabet) + 1


# ------------------------------------------------------------------------------------------------ preparing


@dataclass(frozen=True)
class _Transcribed:
    """The clips kept, in listing order: their frames, transcripts and parts, and the alphabet."""

    clips: list[Clip]
    frames: list[np.ndarray]
    parts: np.ndarray
    alphabet: list[str]
    #: The clips left out, by reason: ``bad_files``, ``outside_alphabet``, ``too_short_for_text``.
    skipped: dict[str, list[BadClip]]
    split: dict[str, Any]
    #: Clips whose frames were computed in this run, and taken from the cache.
    computed: int
    cached: int


def _transcribed(spec: SpeechSpec, where: str, cache_dir: Path) -> _Transcribed:
    """List, compute the frames (cached), divide into parts, fit the alphabet on the training clips that CTC can
    emit, and leave out the clips that cannot be learned or scored."""
    check_feature_spec(spec, where)
    listed = _listed(spec, where)
    results, computed = compute_features(listed.clips, spec, cache_dir)
    bad = listed.bad + [BadClip(clip.name, r) for clip, r in zip(listed.clips, results) if isinstance(r, str)]
    if spec.bad_files == "fail":
        refuse_bad_clips(bad, where)
    good = [i for i, result in enumerate(results) if not isinstance(result, str)]
    clips, frames = [listed.clips[i] for i in good], [np.asarray(results[i]) for i in good]
    given = [listed.given[i] for i in good] if listed.given is not None else None
    parts = _parts(clips, given, spec, where)
    fits = np.array([len(steps) >= ctc_frames(clip.label) for clip, steps in zip(clips, frames)])
    alphabet = fit_alphabet(clips[i].label for i in np.flatnonzero(fits & (parts == 0)))
    known = np.array([set(clip.label) <= set(alphabet) for clip in clips])
    skipped = {
        "bad_files": bad,
        "outside_alphabet": [_outside_alphabet(clips[i], alphabet) for i in np.flatnonzero(fits & ~known)],
        "too_short_for_text": [_too_short(clips[i], len(frames[i])) for i in np.flatnonzero(~fits)],
    }
    if spec.bad_files == "fail":
        refuse_bad_clips(skipped["outside_alphabet"] + skipped["too_short_for_text"], where)
    kept = np.flatnonzero(fits & known)
    _check_parts(parts[kept], skipped, where)
    names = [clips[i].name for i in kept]
    return _Transcribed(
        clips=[clips[i] for i in kept],
        frames=[frames[i] for i in kept],
        parts=parts[kept],
        alphabet=alphabet,
        skipped=skipped,
        split=split_record(spec.split, [given[i] for i in kept] if given is not None else None, parts[kept], names),
        computed=computed,
        cached=len(listed.clips) - computed,
    )


def _outside_alphabet(clip: Clip, alphabet: list[str]) -> BadClip:
    outside = sorted(set(clip.label) - set(alphabet))
    return BadClip(clip.name, f"character(s) {outside} in no training transcript")


def _too_short(clip: Clip, frames: int) -> BadClip:
    needed = ctc_frames(clip.label)
    return BadClip(clip.name, f"{frames} frame(s), fewer than the {needed} its {len(clip.label)}-character text needs")


def prepare_speech_features(spec: SpeechSpec, out_dir: Path, where: str, cache_dir: Path) -> dict[str, Any]:
    """The data stage of a `speech` pipeline: the clips kept (:func:`_transcribed`) written as the folder described
    above; return the few numbers the stage logs (as audio classification: ``skipped``, ``computed``, ``cached``)."""
    done = _transcribed(spec, where, cache_dir)
    train = [steps for steps, part in zip(done.frames, done.parts) if part == 0]
    preprocessing = SequencePreprocessing.fit(train, spec.scale, None)
    lengths = np.array([len(steps) for steps in done.frames], dtype=np.int64)
    values, offsets = _end_to_end(done.frames, lengths, preprocessing)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "values.npy", values)
    np.save(out_dir / "offsets.npy", offsets)
    np.save(out_dir / "parts.npy", done.parts.astype(np.int8))
    texts = {
        "name": [clip.name for clip in done.clips],
        "text": [clip.label for clip in done.clips],
        "part": [PARTS[code] for code in done.parts],
    }
    pd.DataFrame(texts).to_parquet(out_dir / TEXTS_FILE, index=False)
    meta = _meta(spec, done, preprocessing, lengths)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    skipped = [{"file": clip.name, "reason": clip.reason} for clips in done.skipped.values() for clip in clips]
    (out_dir / "skipped.json").write_text(json.dumps(skipped, indent=1) + "\n")
    return {
        "n_clips": len(done.clips),
        **{f"n_{part}": count for part, count in meta["counts"].items()},
        "n_features": preprocessing.n_features,
        "n_outputs": meta["n_outputs"],
        **{f"frames_{stat}": value for stat, value in meta["frames"].items()},
        **{f"skipped_{reason}": count for reason, count in meta["skipped"].items()},
        "skipped": len(skipped),
        "skipped_files": [entry["file"] for entry in skipped],
        "computed": done.computed,
        "cached": done.cached,
        "split": done.split["by"],
    }


def _meta(
    spec: SpeechSpec, done: _Transcribed, preprocessing: SequencePreprocessing, lengths: np.ndarray
) -> dict[str, Any]:
    """``meta.json``: what a model is built and served from (alphabet, features, scaling) and what was left out."""
    return {
        "format": SPEECH_FORMAT,
        "kind": "speech",
        "alphabet": done.alphabet,
        "blank_id": BLANK_ID,
        "n_outputs": len(done.alphabet) + 1,
        "n_features": preprocessing.n_features,
        "n_clips": len(done.clips),
        "counts": {part: int((done.parts == code).sum()) for code, part in enumerate(PARTS)},
        "frames": length_stats(lengths.tolist()),
        "text_length": length_stats([len(clip.label) for clip in done.clips]),
        "lowercase": spec.lowercase,
        "skipped": {reason: len(clips) for reason, clips in done.skipped.items()},
        "skipped_clips": {reason: [clip.name for clip in clips] for reason, clips in done.skipped.items()},
        "preprocessing": preprocessing.to_dict(),
        "extra_meta": {**feature_params(spec), "skipped": sum(len(clips) for clips in done.skipped.values())},
        "split": done.split,
    }


# ------------------------------------------------------------------------------------------------ loading


@dataclass(frozen=True, eq=False)
class SpeechFeatures:
    """A prepared speech folder, loaded: the frames (memory-mapped, in the sequence store), transcripts and meta."""

    store: SequenceFeatures
    texts: pd.DataFrame
    meta: dict[str, Any]

    @property
    def n_features(self) -> int:
        return self.meta["n_features"]

    @property
    def alphabet(self) -> list[str]:
        """The characters; ``alphabet[i]`` is CTC label ``i + 1`` (0 is the blank)."""
        return self.meta["alphabet"]

    @property
    def n_outputs(self) -> int:
        """CTC outputs per frame: the blank and each character."""
        return len(self.alphabet) + 1

    @property
    def preprocessing(self) -> SequencePreprocessing:
        """The scaling fitted on the training frames: what a served model applies to new clips' frames."""
        return self.store.preprocessing

    def part(self, name: Parts) -> SpeechSet:
        """The clips of one part, or of training and validation together (``train+val``), in store order."""
        return SpeechSet(self, self.store.part(name))


def load_speech(features_dir: Path) -> SpeechFeatures:
    """Load what :func:`prepare_speech_features` wrote into ``features_dir``."""
    path = Path(features_dir)
    files = ("values.npy", "offsets.npy", "parts.npy", TEXTS_FILE, "meta.json")
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        raise DataError(f"no prepared speech in {path}: missing {missing} (run the data stage first)")
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != SPEECH_FORMAT or meta.get("kind") != "speech":
        raise DataError(
            f"{path / 'meta.json'} is not a speech folder of format {SPEECH_FORMAT}: prepare the data again"
        )
    parts = np.load(path / "parts.npy")
    store = SequenceFeatures(
        values=np.load(path / "values.npy", mmap_mode="r"),
        offsets=np.load(path / "offsets.npy"),
        labels=np.zeros(len(parts), dtype=np.int64),  # no classes: the transcripts are the targets
        parts=parts,
        meta=meta,
        preprocessing=SequencePreprocessing.from_dict(meta["preprocessing"]),
    )
    return SpeechFeatures(store, pd.read_parquet(path / TEXTS_FILE), meta)


# ------------------------------------------------------------------------------------------------ batches


class SpeechBatch(NamedTuple):
    features: torch.Tensor  # (B, T, F) float32, scaled, zero after each clip's last frame
    lengths: torch.Tensor  # (B,) int64 frames, on the CPU (pack_padded_sequence and CTC want them there)
    targets: torch.Tensor  # (B, L) int64 label ids 1..K, 0 after each transcript's end; L = longest transcript
    target_lengths: torch.Tensor  # (B,) int64 characters
    positions: torch.Tensor  # (B,) int64: each clip's position in the part, to line outputs up with the texts


class SpeechSet:
    """The clips of one part: frames by the sequence store's :class:`SequenceSet`, transcripts and names by
    position in the part."""

    def __init__(self, features: SpeechFeatures, frames: SequenceSet) -> None:
        self._frames = frames
        self.texts: list[str] = features.texts["text"].iloc[frames.positions].tolist()
        self.names: list[str] = features.texts["name"].iloc[frames.positions].tolist()
        self._targets = [np.asarray(encode_text(features.alphabet, text), dtype=np.int64) for text in self.texts]

    def __len__(self) -> int:
        return len(self.texts)

    def batch_count(self, batch_size: int) -> int:
        """Batches of an epoch, shuffled or not."""
        return len(self._frames.batch_indices(batch_size))

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0) -> Iterator[SpeechBatch]:
        """Zero-padded batches of clips of similar length (:meth:`SequenceSet.batch_indices`): sorted by length
        without shuffle, else an order that depends only on (``seed``, ``epoch``)."""
        import torch

        chosen_batches = self._frames.batch_indices(batch_size, shuffle, seed, epoch)
        for chosen, frames in zip(chosen_batches, self._frames.batches(batch_size, shuffle, seed, epoch)):
            targets = [self._targets[i] for i in chosen]
            target_lengths = torch.tensor([len(one) for one in targets], dtype=torch.int64)
            padded = padded_ids(targets, int(target_lengths.max()))  # (B, L)
            positions = torch.from_numpy(chosen.astype(np.int64))
            yield SpeechBatch(frames.x, frames.lengths, padded, target_lengths, positions)
