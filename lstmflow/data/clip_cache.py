"""Clips decoded once: a cache outside the stage's output folder and the worker processes that fill it, shared by
every kind of clip (audio features in :mod:`lstmflow.data.audio_cache`, video frames in :mod:`lstmflow.data.video`).

The cache is ``<cache_dir>/<sha256 of file bytes + the kind's settings>.npy`` (or a ``.bad`` file holding why the
clip cannot be used), so adding clips decodes only the new ones and changing a setting changes every key. A kind
gives a ``decode(path)`` that returns the clip's array or raises DataError with the reason; it must pickle (a
module-level function, or a ``functools.partial`` of one), since worker processes run it.
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
from typing import Any, BinaryIO, NamedTuple, cast

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lstmflow.errors import DataError

#: Most clips sent to a worker at once: fewer round trips, yet a progress bar that still moves.
CHUNK_CLIPS = 16
#: A clip's decoded array, or the reason it cannot be used.
Decoded = np.ndarray | str


class Decoding(NamedTuple):
    """How a kind decodes its clips: the function (picklable), every setting that changes its result (the cache
    key), the most processes, the bytes of files to decode that pay for one more process's start-up, and the
    progress bar's words."""

    decode: Callable[[Path], np.ndarray]
    params: dict[str, Any]
    workers: int | None
    bytes_per_process: int
    description: str


def cache_key(path: Path, params: dict[str, Any]) -> str:
    """sha256 over the parameters (as canonical JSON) and the file's bytes: a new file or setting, a new key."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
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


def _cached(cache_dir: Path, key: str) -> Decoded | None:
    """A clip's cached array, or its cached reason for being bad, or None when it was never decoded."""
    array = cache_dir / f"{key}.npy"
    if array.exists():
        try:
            return np.load(array)
        except (OSError, ValueError):
            return None  # unreadable cache entry (e.g. a full disk): decode again
    bad = cache_dir / f"{key}.bad"
    return bad.read_text() if bad.exists() else None


def _decode_chunk(jobs: list[tuple[Path, str]], decode: Callable[[Path], np.ndarray], cache_dir: Path) -> list[Decoded]:
    """:func:`_decode` for several clips: one round trip to a worker per chunk instead of per clip."""
    return [_decode(path, key, decode, cache_dir) for path, key in jobs]


def _decode(path: Path, key: str, decode: Callable[[Path], np.ndarray], cache_dir: Path) -> Decoded:
    """Decode one clip and cache the result (its array, or why the clip is bad), in any process."""
    try:
        result: Decoded = decode(path)
    except DataError as exc:
        result = str(exc)
    if isinstance(result, str):
        _write_atomic(cache_dir / f"{key}.bad", lambda handle: handle.write(result.encode()))
    else:
        _write_atomic(cache_dir / f"{key}.npy", lambda handle: np.save(handle, result))
    return result


def decode_cached(paths: Sequence[Path], decoding: Decoding, cache_dir: Path) -> tuple[list[Decoded], int]:
    """Each clip's array (or the reason it is bad), in the clips' order, and how many were decoded (not cached).

    Keys are hashed here, so a run with nothing new starts no process at all. This process always decodes; up to
    ``decoding.workers - 1`` more join it, one per ``decoding.bytes_per_process`` of files to decode. The clips are
    cut into chunks queued to the workers front to back while this process takes chunks back to front (those no
    worker has started), so no one waits for a worker's start-up and both meet in the middle.

    Workers are started with ``spawn``: the parent may already hold threads (PyTorch's pool, Prefect's event loop)
    and forking a threaded process can deadlock the child; spawn costs each worker its imports, about 2 s.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    keys = [cache_key(path, decoding.params) for path in paths]
    results: list[Decoded | None] = [_cached(cache_dir, key) for key in keys]
    todo = [i for i, result in enumerate(results) if result is None]
    todo_bytes = sum(paths[i].stat().st_size for i in todo)
    helpers = min((decoding.workers or os.cpu_count() or 1) - 1, todo_bytes // decoding.bytes_per_process)
    size = min(CHUNK_CLIPS, max(1, len(todo) // (4 * (helpers + 1))))  # >= 4 chunks per process evens out the load
    chunks = [todo[begin : begin + size] for begin in range(0, len(todo), size)]

    def decode_here(chunk: list[int]) -> None:
        for i in chunk:
            results[i] = _decode(paths[i], keys[i], decoding.decode, cache_dir)
            progress.advance(task)

    def advance_when_done(done: Future[list[Decoded]], clips_in_chunk: int) -> None:
        if not done.cancelled():
            progress.advance(task, clips_in_chunk)

    with _progress_bar() as progress:
        task = progress.add_task(decoding.description, total=len(todo))
        if helpers == 0:
            for chunk in chunks:
                decode_here(chunk)
        else:
            with ProcessPoolExecutor(helpers, mp_context=get_context("spawn")) as pool:
                futures = [
                    pool.submit(_decode_chunk, [(paths[i], keys[i]) for i in chunk], decoding.decode, cache_dir)
                    for chunk in chunks
                ]
                for chunk, future in zip(chunks, futures):
                    future.add_done_callback(partial(advance_when_done, clips_in_chunk=len(chunk)))
                for chunk, future in zip(reversed(chunks), reversed(futures)):
                    if future.cancel():  # no worker has it yet
                        decode_here(chunk)
                for chunk, future in zip(chunks, futures):
                    if not future.cancelled():
                        for i, result in zip(chunk, future.result()):
                            results[i] = result
    return cast(list[Decoded], results), len(todo)  # every None was decoded above


def _progress_bar() -> Progress:
    """Clips decoded so far, on stderr; silent when stderr is not a terminal (logs, CI)."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )
