"""What a killed run leaves behind, and how the next start picks it up.

A SIGKILL of the whole ``lstmflow run`` tree (or of a worker) ends every process at once: nothing gets to mark the
MLflow run or the Prefect flow run as ended, both stay RUNNING. So each flow run records its process (an *owner*:
host, pid and start time, which a reused pid does not match) in ``.lstmflow/owners/FLOW_RUN_ID.json``, and each
training run directory records, in ``resume.json``, its MLflow run, what it trains (spec, features, code) and its
owner. The next start finds the records whose process is gone: their MLflow runs are marked FAILED and their flow
runs CRASHED, with a line saying so, and a training of the same spec, features and code continues the dead run's
directory (its checkpoint) and MLflow run instead of starting over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import psutil

from lstmflow.ops.locks import exclusive_lock

OWNERS = Path(".lstmflow") / "owners"
RESUME_FILE = "resume.json"
#: The key of ``resume.json`` noting the owner under which the directory's MLflow run was last found ended.
ENDED_UNDER = "ended_under"


def this_process() -> dict[str, Any]:
    """The owner record of the current process."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def is_alive(owner: dict[str, Any]) -> bool:
    """Whether the process of an owner record still runs; one on another host counts as alive (we cannot tell)."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        return bool(psutil.Process(owner["pid"]).create_time() == owner["started"])
    except (psutil.NoSuchProcess, KeyError, TypeError):
        return False


def _write_json(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def record_flow_run(root: Path, flow_run_id: str) -> None:
    """Note that this process runs ``flow_run_id`` (the record stays after the run: its end is Prefect's to say)."""
    folder = root / OWNERS
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / f"{flow_run_id}.json", this_process())


def dead_flow_runs(root: Path) -> list[str]:
    """Flow runs recorded here whose process is gone; their records are removed (each is reported once)."""
    dead = []
    for path in sorted((root / OWNERS).glob("*.json")):
        owner = _read_json(path)
        if owner is None or not is_alive(owner):
            dead.append(path.stem)
            path.unlink(missing_ok=True)
    return dead


def _claim_lock(runs_dir: Path) -> contextlib.AbstractContextManager[None]:
    """Two starts of one pipeline must not both claim the same dead run directory."""
    return exclusive_lock(runs_dir.parents[1] / ".lstmflow" / f"claim-{runs_dir.name}.lock")  # runs/ holds runs only


def abandoned_runs(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every training run directory of the project whose owner died, with its ``resume.json``."""
    found = []
    for path in sorted((root / "runs").glob(f"*/*/{RESUME_FILE}")):
        record = _read_json(path)
        if record is not None and not is_alive(record.get("owner", {})):
            found.append((path.parent, record))
    return found


def claim_abandoned(runs_dir: Path, key: dict[str, str], resumable: Any, run_dir: Path) -> Path:
    """The run directory to train in: a dead run's of the same ``key`` that ``resumable(mlflow_run_id)`` accepts
    (its MLflow run unfinished), else ``run_dir``; claimed for this process either way."""
    with _claim_lock(runs_dir):
        for path in sorted(runs_dir.glob(f"*/{RESUME_FILE}")):
            record = _read_json(path)
            if (
                record is not None
                and record.get("key") == key
                and not is_alive(record.get("owner", {}))
                and resumable(record.get("mlflow_run_id"))
            ):
                run_dir = path.parent
                break
        run_dir.mkdir(parents=True, exist_ok=True)
        record = _read_json(run_dir / RESUME_FILE) or {}
        _write_json(run_dir / RESUME_FILE, {**record, "key": key, "owner": this_process()})
    return run_dir


def record_run(run_dir: Path, mlflow_run_id: str) -> None:
    """Add the MLflow run to the directory's ``resume.json``, so that a later start can continue it."""
    record = _read_json(run_dir / RESUME_FILE) or {}
    _write_json(run_dir / RESUME_FILE, {**record, "mlflow_run_id": mlflow_run_id})


def mark_abandoned(root: Path) -> list[str]:
    """Mark FAILED every MLflow run of the project left RUNNING by a process that died; a line for each.

    A run directory whose MLflow run was found ended is noted so (``ended_under``: its owner then), so each start
    asks MLflow about new run directories only, not about every run the project ever had; a later claim of the
    directory by another process makes the note stale.
    """
    from lstmflow import tracking

    uri = tracking.tracking_uri(root)
    lines = []
    for run_dir, record in abandoned_runs(root):
        run_id, owner = record.get("mlflow_run_id"), record.get("owner", {})
        if not run_id or record.get(ENDED_UNDER) == owner:
            continue
        if tracking.run_status(uri, run_id) == "RUNNING":
            tracking.end_run(uri, run_id, "FAILED")
            lines.append(
                f"MLflow run {run_id} was left RUNNING by process {owner.get('pid')}, which died: marked FAILED "
                f"(a run of the same spec, data and code continues it from its checkpoint in {run_dir})"
            )
        _note_ended(run_dir, owner)
    return lines


def _note_ended(run_dir: Path, owner: dict[str, Any]) -> None:
    """Note in ``resume.json`` that the MLflow run ended under ``owner``, unless another process claimed it since."""
    with _claim_lock(run_dir.parent):
        record = _read_json(run_dir / RESUME_FILE)
        if record is not None and record.get("owner") == owner:
            _write_json(run_dir / RESUME_FILE, {**record, ENDED_UNDER: owner})
