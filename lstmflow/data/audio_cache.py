"""Audio features computed once per clip: a cache outside the stage's output folder and the worker processes that
fill it (see :mod:`lstmflow.data.audio`, whose :func:`~lstmflow.data.audio.clip_features` they run).

The cache is ``<cache_dir>/<sha256 of file bytes + feature params>.npy`` (or a ``.bad`` file holding why the clip
cannot be used), so adding clips computes only the new ones and changing a feature parameter changes every key.
Every worker process imports this module, so its top level stays light.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lstmflow.config import AudioFeaturesSpec
from lstmflow.data.audio import Clip, clip_features, feature_params, read_clip
from lstmflow.errors import DataError

#: Bumped when the feature computation changes in a way the parameters do not show; part of every cache key.
FEATURES_VERSION = 1
#: A worker process costs about 2.5 s to start (Python, numpy, librosa's imports), while log-mel features take about
#: 1 ms per second of audio here: a worker is started per this many bytes of files to compute (about 3000 s of
#: 16 kHz 16-bit mono, 3 s of work), so ``workers`` is an upper bound. Compressed files hold more audio per byte
#: and so get workers sooner.
BYTES_PER_PROCESS = 100_000_000
#: Most clips sent to a worker at once: fewer round trips, yet a progress bar that still moves.
CHUNK_CLIPS = 16


def cache_key(path: Path, params: dict[str, Any]) -> str:
    """sha256 over the parameters (as canonical JSON) and the file's bytes: a new file or setting, a new key."""
    digest = hashlib.sha256(json.dumps({**params, "version": FEATURES_VERSION}, sort_keys=True).encode())
    digest.update(b"\0")
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write to a temporary file beside ``path`` and rename it, so a killed run never leaves half a file."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        write(handle)
    os.replace(temporary, path)


def _cached(cache_dir: Path, key: str) -> np.ndarray | str | None:
    """A clip's cached features, or its cached reason for being bad, or None when it was never computed."""
    features = cache_dir / f"{key}.npy"
    if features.exists():
        try:
            return np.load(features)
        except (OSError, ValueError):
            return None  # unreadable cache entry (e.g. a full disk): compute again
    bad = cache_dir / f"{key}.bad"
    return bad.read_text() if bad.exists() else None


def _compute_chunk(jobs: list[tuple[Path, str]], spec: AudioFeaturesSpec, cache_dir: Path) -> list[np.ndarray | str]:
    """:func:`_compute` for several clips: one round trip to a worker per chunk instead of per clip."""
    return [_compute(path, key, spec, cache_dir) for path, key in jobs]


def _compute(path: Path, key: str, spec: AudioFeaturesSpec, cache_dir: Path) -> np.ndarray | str:
    """Read and compute one clip and cache the result (features, or why the clip is bad), in any process."""
    try:
        samples, rate = read_clip(path)
        result: np.ndarray | str = clip_features(samples, rate, spec)
    except DataError as exc:
        result = str(exc)
    if isinstance(result, str):
        _write_atomic(cache_dir / f"{key}.bad", lambda handle: handle.write(result.encode()))
    else:
        _write_atomic(cache_dir / f"{key}.npy", lambda handle: np.save(handle, result))
    return result


def compute_features(
    clips: Sequence[Clip], spec: AudioFeaturesSpec, cache_dir: Path
) -> tuple[list[np.ndarray | str], int]:
    """Each clip's features (or the reason it is bad), in the clips' order, and how many were computed (not cached).

    Keys are hashed here, so a run with nothing new starts no process at all. This process always computes; up to
    ``spec.workers - 1`` more join it, one per ``BYTES_PER_PROCESS`` of files to compute. The clips are cut into
    chunks queued to the workers front to back while this process takes chunks back to front (those no worker
    has started), so no one waits for a worker's start-up and both meet in the middle.

    Workers are started with ``spawn``: the parent may already hold threads (PyTorch's pool, Prefect's event loop)
    and forking a threaded process can deadlock the child; spawn costs each worker its imports, about 2 s.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    params = feature_params(spec)
    keys = [cache_key(clip.path, params) for clip in clips]
    results: list[np.ndarray | str | None] = [_cached(cache_dir, key) for key in keys]
    todo = [i for i, result in enumerate(results) if result is None]
    todo_bytes = sum(clips[i].path.stat().st_size for i in todo)
    helpers = min((spec.workers or os.cpu_count() or 1) - 1, todo_bytes // BYTES_PER_PROCESS)
    size = min(CHUNK_CLIPS, max(1, len(todo) // (4 * (helpers + 1))))  # >= 4 chunks per process evens out the load
    chunks = [todo[begin : begin + size] for begin in range(0, len(todo), size)]

    def compute_here(chunk: list[int]) -> None:
        for i in chunk:
            results[i] = _compute(clips[i].path, keys[i], spec, cache_dir)
            progress.advance(task)

    def advance_when_done(done: Future[list[np.ndarray | str]], clips_in_chunk: int) -> None:
        if not done.cancelled():
            progress.advance(task, clips_in_chunk)

    with _progress_bar() as progress:
        task = progress.add_task("audio features", total=len(todo))
        if helpers == 0:
            for chunk in chunks:
                compute_here(chunk)
        else:
            with ProcessPoolExecutor(helpers, mp_context=get_context("spawn")) as pool:
                futures = [
                    pool.submit(_compute_chunk, [(clips[i].path, keys[i]) for i in chunk], spec, cache_dir)
                    for chunk in chunks
                ]
                for chunk, future in zip(chunks, futures):
                    future.add_done_callback(partial(advance_when_done, clips_in_chunk=len(chunk)))
                for chunk, future in zip(reversed(chunks), reversed(futures)):
                    if future.cancel():  # no worker has it yet
                        compute_here(chunk)
                for chunk, future in zip(chunks, futures):
                    if not future.cancelled():
                        for i, result in zip(chunk, future.result()):
                            results[i] = result
    return cast(list[np.ndarray | str], results), len(todo)  # every None was computed above


def _progress_bar() -> Progress:
    """Clips computed so far, on stderr; silent when stderr is not a terminal (logs, CI)."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )
