"""The one exception tree of lstmflow.

Everything a user can cause through ``pipelines.yaml`` or their data is a
:class:`ConfigError` or a :class:`DataError`: the CLI prints the message and
exits with code 2, never a traceback. Anything else is a bug or an environment
failure and exits with code 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class LstmflowError(Exception):
    """Base of every error lstmflow raises on purpose."""

    exit_code = 1
    #: True for a planned stop rather than a failure (a pruned trial): logged as information, without a traceback.
    planned = False


class ConfigError(LstmflowError):
    """A bad ``pipelines.yaml`` or override; holds every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        header = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = header + self.problems[0]
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{header}{len(self.problems)} problems\n{lines}"
        super().__init__(message)


class DataError(LstmflowError):
    """Data that cannot be used as declared: a missing file, a bad cell, a series too short."""

    exit_code = 2


class CheckpointError(LstmflowError):
    """A checkpoint that is missing, corrupt or from a different configuration."""


class TrainingError(LstmflowError):
    """The training child process failed or was killed."""


class StorageError(LstmflowError):
    """A folder lstmflow must write to that is full (disk or quota) or not writable: the user's to free or fix."""

    exit_code = 2


#: The errno values of a write that fails because of where it writes, not what: full, over quota, not writable.
STORAGE_ERRNOS = {"ENOSPC": "no space left", "EDQUOT": "disk quota exceeded", "EROFS": "read-only filesystem",
                  "EACCES": "permission denied", "EPERM": "operation not permitted"}  # fmt: skip


def storage_error(exc: BaseException | None, path: object) -> StorageError | None:
    """``exc`` as a :class:`StorageError` naming ``path`` (the file or folder being written) and what to do; None
    when it is not such a failure."""
    import errno
    import shutil
    from pathlib import Path

    if isinstance(exc, StorageError):
        return exc
    while exc is not None and not isinstance(exc, OSError):  # a library's error around the OSError
        exc = exc.__cause__ or exc.__context__
    name = errno.errorcode.get(exc.errno or 0, "") if isinstance(exc, OSError) else ""
    if name not in STORAGE_ERRNOS:
        return None
    where = Path(getattr(exc, "filename", None) or str(path))
    if name in ("ENOSPC", "EDQUOT"):
        folder = next((p for p in (where, *where.parents) if p.exists()), Path("/"))
        free = shutil.disk_usage(folder).free / 2**20
        advice = (
            f"{free:.1f} MiB free there; free space on that filesystem (old folders under runs/, mlruns/, "
            ".dvc/cache, .prefect/storage) and run the same command again"
        )
    else:
        advice = "make it writable (or point lstmflow elsewhere) and run the same command again"
    return StorageError(f"cannot write {where}: {STORAGE_ERRNOS[name]}; {advice}")


@contextlib.contextmanager
def writing(path: object) -> Iterator[None]:
    """Writes to ``path`` inside the block: a full or unwritable folder is a :class:`StorageError` naming it."""
    try:
        yield
    except Exception as exc:
        if (error := storage_error(exc, path)) is None:
            raise
        raise error from None
