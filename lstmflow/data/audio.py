"""Audio clips as sequences: each frame of log-mel energies or MFCCs is one time step, computed with librosa.

Two sources, chosen by ``data.path``: a folder with one subfolder of clips per label, or a manifest CSV with
``path`` and ``label`` columns, listed as video clips are (:mod:`lstmflow.data.clips`, which also reads the
keyword-spotting layout of Speech Commands: its list files, and the ``_background_noise_`` folder ignored). The
background-noise recordings are not used for augmentation: ignoring them is cheap and never hurts a split.

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

from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile

from lstmflow.config import AudioFeaturesSpec, AudioSpec
from lstmflow.data import clips as labelled_clips
from lstmflow.data.clips import BadClip, Clip, ClipFiles, ClipListing, store_clips
from lstmflow.errors import ConfigError, DataError

#: File name endings read as audio (compared lower-case); any other file is a bad file ("wrong extension").
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg"})
AUDIO_FILES = ClipFiles("audio", AUDIO_SUFFIXES)
#: A clip whose peak amplitude (full scale 1.0) stays below this, -80 dBFS, is silent: its log-mel frames
#: would all sit on the dB floor and teach the model nothing.
SILENCE_PEAK = 1e-4
#: Window of librosa.feature.delta (its default); edges use the nearest frame so that any clip length works.
DELTA_WIDTH = 9


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
    return labelled_clips.read_clips(spec, where, AUDIO_FILES)


def list_clips(spec: AudioSpec, where: str) -> tuple[list[Clip], list[BadClip]]:
    """The clips and the files that are not audio by their ending, for callers that need no parts."""
    found = read_clips(spec, where)
    return found.clips, found.bad


def probe_clip(path: Path) -> None:
    """Open a clip's header only: DataError with the reason when it is not audio."""
    try:
        soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
        raise DataError(f"not readable as audio ({getattr(exc, 'error_string', None) or exc})") from None


def unreadable_clips(clips: Sequence[Clip]) -> list[BadClip]:
    """Those of the first clips whose header does not open as audio (:func:`lstmflow.data.clips.unreadable_clips`)."""
    return labelled_clips.unreadable_clips(clips, probe_clip)


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
    check_feature_spec(spec, where)
    from lstmflow.data.audio_cache import compute_features  # it imports this module (clip_features)

    found = read_clips(spec, where)
    results, computed = compute_features(found.clips, spec, cache_dir)
    summary = store_clips(spec, found, results, out_dir, where, feature_params(spec))
    return {**summary, "computed": computed, "cached": len(found.clips) - computed}
