"""Audio features computed once per clip: what :mod:`lstmflow.data.clip_cache` (the cache outside the stage's output
folder and the worker processes that fill it, shared with video) needs to know of audio.

A clip's key is the sha256 of its bytes and :func:`~lstmflow.data.audio.feature_params`, so adding clips computes only
the new ones and changing a feature parameter changes every key. Every worker process imports this module, so its
top level stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from lstmflow.config import AudioFeaturesSpec
from lstmflow.data.audio import clip_features, feature_params, read_clip
from lstmflow.data.clip_cache import Decoded, Decoding, decode_cached
from lstmflow.data.clips import Clip

#: Bumped when the feature computation changes in a way the parameters do not show; part of every cache key.
FEATURES_VERSION = 1
#: A worker process costs about 2.5 s to start (Python, numpy, librosa's imports), while log-mel features take about
#: 1 ms per second of audio here: a worker is started per this many bytes of files to compute (about 3000 s of
#: 16 kHz 16-bit mono, 3 s of work), so ``workers`` is an upper bound. Compressed files hold more audio per byte
#: and so get workers sooner.
BYTES_PER_PROCESS = 100_000_000


def file_features(path: Path, spec: AudioFeaturesSpec) -> np.ndarray:
    """A clip file's (frames, F) features; DataError with the reason for a clip that cannot be used."""
    return clip_features(*read_clip(path), spec)


def compute_features(clips: Sequence[Clip], spec: AudioFeaturesSpec, cache_dir: Path) -> tuple[list[Decoded], int]:
    """Each clip's features (or the reason it is bad), in the clips' order, and how many were computed (not cached):
    :func:`~lstmflow.data.clip_cache.decode_cached` with audio's settings."""
    decoding = Decoding(
        decode=partial(file_features, spec=spec),
        params={**feature_params(spec), "version": FEATURES_VERSION},
        workers=spec.workers,
        bytes_per_process=BYTES_PER_PROCESS,
        description="audio features",
    )
    return decode_cached([clip.path for clip in clips], decoding, cache_dir)
