"""Which files a served model may read: audio clips and images named in a request are opened only inside allowed
folders.

A request names files by path, and the served model runs with the server's rights, so a path is checked before
anything opens it: symlinks and ``..`` are resolved first, and a path outside every allowed folder is refused with
one message that does not say whether it exists. The allowed folders are, in order of precedence:

- the ``LSTMFLOW_SERVE_ROOTS`` environment variable (folders separated by ``os.pathsep``) when it is set, in the
  process that serves or loads the model; set and empty, no file is read;
- otherwise the folders the pipeline's data came from (``data.path`` and any ``split.files``), recorded in the
  bundle at registration (:func:`recorded_roots`); bundles registered before that record nothing, so a path sent
  to them is refused with a message naming the variable;
- plus whatever the caller adds: ``lstmflow predict`` adds the current directory.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from lstmflow.serving.request_checks import BadRequest, describe

ROOTS_VARIABLE = "LSTMFLOW_SERVE_ROOTS"
#: The key of ``features.json`` that holds the folders recorded at registration.
ROOTS_KEY = "file_roots"


def recorded_roots(data: Any) -> list[str]:
    """The folders the pipeline's files came from: ``data.path`` (a folder of label folders, or the folder of a
    manifest table) and those of ``split.files``; resolved, for the bundle."""
    split_files = getattr(getattr(data, "split", None), "files", None)
    sources = [data.path, *([split_files.val, split_files.test] if split_files is not None else [])]
    roots: list[str] = []
    for source in sources:
        if source is None:
            continue
        path = Path(os.path.realpath(source))
        folder = str(path if path.is_dir() else path.parent)
        if folder not in roots:
            roots.append(folder)
    return roots


def configured_roots(recorded: Iterable[str] | None) -> tuple[list[Path], str]:
    """(the allowed folders, where they came from): the environment variable when set, else the recorded ones."""
    if ROOTS_VARIABLE in os.environ:
        value = os.environ[ROOTS_VARIABLE]
        return [Path(os.path.realpath(part)) for part in value.split(os.pathsep) if part.strip()], ROOTS_VARIABLE
    if recorded is None:
        return [], "none recorded (a model registered before lstmflow recorded its data folder)"
    return [Path(os.path.realpath(root)) for root in recorded], "the pipeline's data folder"


class FileGate:
    """Checks that a path from a request lies inside the allowed folders before anything opens it."""

    def __init__(self, recorded: Iterable[str] | None) -> None:
        self.roots, self.source = configured_roots(recorded)

    def allow(self, *folders: Path | str) -> None:
        """Allow files under ``folders`` too (``lstmflow predict`` adds the current directory)."""
        for folder in folders:
            resolved = Path(os.path.realpath(folder))
            if resolved not in self.roots:
                self.roots.append(resolved)

    def open_path(self, raw: Any, row: Any) -> Path:
        """The resolved path of request row ``row``'s file, if it lies inside an allowed folder and is a regular
        file; a :class:`BadRequest` otherwise. Outside the folders, nothing is opened or looked up beyond resolving
        symlinks, and the message is the same whether the path exists or not."""
        if not isinstance(raw, str) or not raw.strip():
            raise BadRequest(f"column 'path', row {row!r}: {describe(raw)} is not a file path")
        if "\x00" in raw:
            raise BadRequest(f"column 'path', row {row!r}: a path cannot hold a NUL character")
        resolved = Path(os.path.realpath(raw))
        if not any(resolved.is_relative_to(root) for root in self.roots):
            raise BadRequest(
                f"column 'path', row {row!r}: {raw!r} is not a file this model may read; files are read only inside "
                f"the allowed folders ({self._how_to_allow()})"
            )
        try:
            mode = resolved.stat().st_mode
        except OSError:
            raise BadRequest(f"column 'path', row {row!r}: {raw!r}: no such file") from None
        if not stat.S_ISREG(mode):
            raise BadRequest(f"column 'path', row {row!r}: {raw!r} is not a regular file")
        return resolved

    def _how_to_allow(self) -> str:
        if self.source == ROOTS_VARIABLE:
            return f"set by {ROOTS_VARIABLE}"
        if not self.roots:
            return (
                f"this model recorded none: set {ROOTS_VARIABLE} to the folders it may read, separated by "
                f"{os.pathsep!r}, where it is served"
            )
        return f"the pipeline's data folder; {ROOTS_VARIABLE} sets others, separated by {os.pathsep!r}"


def clip_source(files: FileGate, row: Any, cells: Any, bytes_column: str) -> tuple[str, Path | BinaryIO]:
    """A request row's clip (audio or video): its bytes, base64-encoded in ``bytes_column``, or else the file its
    ``path`` names (checked by ``files``); with how messages name it. A row with neither is a BadRequest."""
    encoded = cells.get(bytes_column)
    if isinstance(encoded, str) and encoded:
        try:
            return f"row {row!r}", io.BytesIO(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest(f"column {bytes_column!r}, row {row!r}: not base64") from None
    if "path" not in cells.index or describe(cells["path"]) == "a missing value":
        raise BadRequest(f"row {row!r}: give the clip's path or its bytes in {bytes_column}")
    path = files.open_path(cells["path"], row)
    return str(path), path


def require_clip_columns(frame: Any, bytes_column: str) -> None:
    """A request of clips names each by ``path`` or carries it in ``bytes_column``, and holds at least one."""
    if "path" not in frame.columns and bytes_column not in frame.columns:
        raise BadRequest(f"a request needs a 'path' column or a {bytes_column!r} one, one clip per row")
    if frame.empty:
        raise BadRequest("the request holds no clip")
