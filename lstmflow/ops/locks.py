"""An advisory file lock that two lstmflow processes on one machine take before touching shared project state."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive_lock(lock: Path) -> Iterator[None]:
    """Hold ``lock`` (created with its folder if missing) exclusively; blocks while another process holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
