"""DVC, driven from this one module: the params file, ``dvc repro``, the lock, the local remote.

DVC commands never run concurrently in one workspace (two would lock each other
out), so every call here holds an exclusive file lock on ``.lstmflow/dvc.lock`` (beside
the project's other lstmflow state; not DVC's own ``dvc.lock``, which holds the stages' hashes).

Stage params come from ``params.yaml``, which lstmflow writes from ``pipelines.yaml``
with ``defaults`` merged, ``--set`` overrides applied and data defaults (window,
horizon) resolved, so ``dvc repro`` sees exactly what a run uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from lstmflow.errors import ConfigError, DataError, LstmflowError, StorageError
from lstmflow.ops.locks import exclusive_lock

PARAMS_FILE = "params.yaml"
LOCAL_REMOTE = ".dvc-storage"
#: The file lock that keeps lstmflow's DVC commands in one workspace one at a time.
LOCK_FILE = Path(".lstmflow") / "dvc.lock"
#: Where a failed stage command leaves its config or data error (see :func:`record_stage_error`).
STAGE_ERRORS = Path(".lstmflow") / "stage-errors"
#: The error classes a stage's record may name: the user's mistakes, which no retry fixes.
USER_ERRORS: dict[str, type[LstmflowError]] = {
    "ConfigError": ConfigError, "DataError": DataError, "StorageError": StorageError
}  # fmt: skip
PARAMS_HEADER = (
    "# Written by lstmflow from pipelines.yaml (defaults merged, overrides applied, data defaults resolved).\n"
    "# DVC stages read their params from here; edit pipelines.yaml instead.\n"
)


class DvcError(LstmflowError):
    """A DVC command failed; the message holds its output."""


def _env() -> dict[str, str]:
    """DVC's environment: quiet, offline, and the current interpreter's scripts first on PATH."""
    env = dict(os.environ)
    env.update(DVC_NO_ANALYTICS="1", DVC_NO_UPDATER="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def workspace_lock(root: Path) -> contextlib.AbstractContextManager[None]:
    """Hold the workspace's DVC lock, :data:`LOCK_FILE`; blocks while another lstmflow process runs DVC here."""
    return exclusive_lock(root / LOCK_FILE)


def dvc(root: Path, *args: str) -> str:
    """Run one DVC command in ``root`` under the workspace lock; returns its output."""
    with workspace_lock(root):
        done = subprocess.run(
            [sys.executable, "-m", "dvc", *args], cwd=root, env=_env(), capture_output=True, text=True, check=False
        )
    if done.returncode != 0:
        raise DvcError(
            f"`dvc {' '.join(args)}` failed in {root} (exit {done.returncode}):\n{done.stdout}{done.stderr}".rstrip()
        )
    return done.stdout


def ensure_repo(root: Path) -> None:
    """Initialise DVC in ``root`` when needed, with the local remote as default (created on first push).

    Through DVC's Python API, in this process, under the workspace lock: as four ``dvc`` commands (each a Python
    start-up and DVC's import) it took two seconds of a new project's first run.
    """
    if (root / ".dvc").is_dir() and _project_has_remote(root):
        return
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with workspace_lock(root), _quiet_dvc():
        try:
            if (root / ".dvc").is_dir():
                repo = Repo(str(root))
            else:
                repo = Repo.init(str(root), no_scm=not (root / ".git").exists())
                with repo.config.edit("repo") as config:
                    config["core"]["analytics"] = False
            with contextlib.closing(repo):
                if not repo.config["remote"]:  # a user's or the system's remotes count too
                    with repo.config.edit("local") as config:  # relative to here, saved relative to .dvc/
                        config["remote"]["local"] = {"url": os.path.relpath(root / LOCAL_REMOTE)}
                        config["core"]["remote"] = "local"
        except DvcException as exc:
            raise DvcError(f"setting up DVC in {root} failed: {exc}") from exc


@contextlib.contextmanager
def _quiet_dvc() -> Iterator[None]:
    """DVC's loggers at warnings only (``Repo.init`` logs "Initialized DVC repository." and a git hint)."""
    dvc_logger = logging.getLogger("dvc")
    level = dvc_logger.level
    dvc_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        dvc_logger.setLevel(level)


def _project_has_remote(root: Path) -> bool:
    """Whether the project's own DVC config (``.dvc/config`` or ``.dvc/config.local``) declares a remote."""
    return any(
        "['remote \"" in path.read_text()
        for path in (root / ".dvc" / "config", root / ".dvc" / "config.local")
        if path.exists()
    )


def write_params(root: Path, entries: dict[str, dict[str, Any]], versions: dict[str, str]) -> Path:
    """Write ``params.yaml``: one entry per pipeline, and lstmflow's code versions; unchanged content is not
    rewritten."""
    path = root / PARAMS_FILE
    text = PARAMS_HEADER + yaml.safe_dump({"lstmflow": versions, "pipelines": entries}, sort_keys=True)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def read_params(root: Path) -> dict[str, dict[str, Any]]:
    path = root / PARAMS_FILE
    if not path.exists():
        return {}
    return (yaml.safe_load(path.read_text()) or {}).get("pipelines", {})


def stage_producing(root: Path, output: Path) -> str | None:
    """The plain (non-foreach) stage of ``dvc.yaml`` that declares ``output`` among its outs, if any."""
    path = root / "dvc.yaml"
    if not path.exists():
        return None
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {})
    wanted = output.resolve()
    for name, stage in stages.items():
        for out in stage.get("outs", []) if isinstance(stage, dict) else []:
            out_path = (root / (next(iter(out)) if isinstance(out, dict) else out)).resolve()
            if wanted == out_path or out_path in wanted.parents:
                return name
    return None


def stage_error_file(root: Path, stage: str) -> Path:
    """Where a stage command leaves the user's error for :func:`repro` (see :func:`record_stage_error`)."""
    return root / STAGE_ERRORS / f"{stage}.json"


def record_stage_error(root: Path, stage: str, error: LstmflowError) -> None:
    """Called by a failing stage command: its config or data error, for :func:`repro` to raise once, as itself."""
    if not isinstance(error, ConfigError | DataError | StorageError):
        return
    path = stage_error_file(root, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"type": type(error).__name__, "message": str(error)}))
    os.replace(tmp, path)


def repro(root: Path, *stages: str) -> None:
    """``dvc repro`` of the given stages (and whatever they depend on); unchanged stages are skipped.

    DVC deletes a stage's outputs before running it: when the stage fails, the outputs of its last successful run
    are checked out again from the cache, so a failed rebuild leaves the previous features in place. A stage that
    failed on the user's config or data raises that error alone (not wrapped in DVC's output, and not retried).
    """
    if _up_to_date(root, stages):
        return
    for stage in stages:
        stage_error_file(root, stage).unlink(missing_ok=True)
    try:
        dvc(root, "repro", *stages)
    except DvcError:
        _restore_outputs(root, stages)
        for stage in stages:
            if (path := stage_error_file(root, stage)).exists():
                record = json.loads(path.read_text())
                path.unlink()
                kept = " (the features of its last successful run are kept)" if _locked(root, stage) else ""
                raise USER_ERRORS[record["type"]](record["message"] + kept) from None
        raise


def _up_to_date(root: Path, stages: tuple[str, ...]) -> bool:
    """Whether ``dvc repro`` would skip every stage and what they depend on (DVC's status, asked in this process: a
    fraction of a ``dvc repro`` process's start-up). Anything DVC cannot tell is left to ``dvc repro`` to report."""
    from dvc.exceptions import DvcException

    try:
        with _open_repo(root) as repo:
            return not repo.status(targets=_targets(root, stages), with_deps=True)
    except DvcException:
        return False


def _locked(root: Path, stage: str) -> bool:
    try:
        lock_entry(root, stage)
    except DataError:
        return False
    return True


def _restore_outputs(root: Path, stages: tuple[str, ...]) -> None:
    """Check out the outputs that ``dvc.lock`` records for ``stages`` (those that ever succeeded) from the cache."""
    done = [stage for stage in stages if _locked(root, stage)]
    if done:
        dvc(root, "checkout", "--quiet", *done)


def lock_entry(root: Path, stage: str) -> dict[str, Any]:
    """The stage's entry in ``dvc.lock``: its deps and outs with their hashes."""
    path = root / "dvc.lock"
    entry = (yaml.safe_load(path.read_text()) or {}).get("stages", {}).get(stage) if path.exists() else None
    if entry is None:
        raise DataError(f"stage {stage!r} has no entry in {path}; run `dvc repro {stage}`")
    return entry


def stage_hashes(root: Path, stage: str) -> dict[str, str]:
    """``{"data_md5": ..., "features_md5": <first out's md5>}`` from ``dvc.lock``: the data's md5 is its one file's,
    or for several files (a given split) the md5 of theirs in order."""
    entry = lock_entry(root, stage)
    md5s = list(dict.fromkeys(dep["md5"] for dep in entry["deps"]))
    data_md5 = md5s[0] if len(md5s) == 1 else hashlib.md5(",".join(md5s).encode()).hexdigest()
    return {"data_md5": data_md5, "features_md5": entry["outs"][0]["md5"]}


def push(root: Path, *stages: str) -> None:
    """Send the stages' outputs to the default remote (the local one unless configured otherwise); in this process
    (a ``dvc push`` process's start-up cost more than the push of outputs the remote mostly has)."""
    from dvc.exceptions import DvcException

    try:
        with _open_repo(root) as repo:
            repo.push(targets=_targets(root, stages))
    except DvcException as exc:
        raise DvcError(f"`dvc push {' '.join(stages)}` failed in {root}: {exc}") from exc


@contextlib.contextmanager
def _open_repo(root: Path) -> Iterator[Any]:
    """DVC's repository in ``root``, in this process, under the workspace lock and with DVC's loggers quiet."""
    from dvc.repo import Repo

    with workspace_lock(root), _quiet_dvc(), contextlib.closing(Repo(str(root))) as repo:
        yield repo


def _targets(root: Path, stages: tuple[str, ...]) -> list[str]:
    """The stages as DVC's API takes them from any working directory (it reads a bare name in the current one)."""
    return [f"{root / 'dvc.yaml'}:{stage}" for stage in stages]


def git_commit(root: Path) -> str:
    """The project's git commit, suffixed ``-dirty`` when tracked files changed; ``unknown`` outside git."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")
