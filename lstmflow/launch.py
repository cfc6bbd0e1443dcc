"""The one way training processes start.

Training runs in a child process made with the ``spawn`` start method, so that a crash, an
out-of-memory kill or a ``kill -9`` ends the child only: the caller (a Prefect task, the CLI)
sees a :class:`~lstmflow.errors.TrainingError` and can retry, which resumes from the child's
last checkpoint. (A later version starts N workers here for DDP.)

Nothing comes back through a pipe. The child writes, in ``run_dir``:

- ``fit_result.json`` on success (see :func:`lstmflow.train.fit`);
- ``train_error.json`` when it raises: the exception's class, message and state, so that a
  ``DataError`` or ``ConfigError`` is raised again in the parent as the same class with the
  same message (the CLI exits 2 on those), anything else as a ``TrainingError``;
- ``train.log``: its log lines, warnings, tracebacks and, through :mod:`faulthandler`, the
  Python stack of a hard crash. Its tail goes into every ``TrainingError``.
"""

from __future__ import annotations

import faulthandler
import importlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from lstmflow.config import PipelineSpec
from lstmflow.errors import LstmflowError, TrainingError
from lstmflow.loggers import MetricLogger
from lstmflow.train import RESULT_FILE, FitResult, atomic_write_bytes, fit, train_threads

LOG_FILE = "train.log"
ERROR_FILE = "train_error.json"
LOG_TAIL_LINES = 30

#: Serialises the moment of process creation, the only time the parent's environment is changed.
_START_LOCK = threading.Lock()


def train_in_child(
    spec: PipelineSpec,
    features_dir: Path,
    run_dir: Path,
    logger: MetricLogger,
    progress: bool = True,
    on_start: Callable[[BaseProcess], None] | None = None,
) -> FitResult:
    """Run :func:`lstmflow.train.fit` in a spawned child and return its ``FitResult``.

    ``logger`` is pickled into the child. Calling this again on the same ``run_dir`` after a
    failure resumes from the last checkpoint. ``on_start`` is called with the started process
    before waiting for it (tests kill the child from there; a supervisor could record its pid).
    Raises the child's ``LstmflowError`` as itself, and ``TrainingError`` for anything else.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (run_dir / RESULT_FILE, run_dir / ERROR_FILE):
        stale.unlink(missing_ok=True)

    context = multiprocessing.get_context("spawn")
    process = context.Process(
        target=_child_main,
        args=(spec, Path(features_dir), run_dir, logger, progress),
        name=f"lstmflow-train-{spec.name}",
    )
    with _START_LOCK, _environment(child_environment(spec)):
        process.start()
    try:
        if on_start is not None:
            on_start(process)
        process.join()
    finally:
        if process.is_alive():  # the parent was interrupted (Ctrl-C, a cancelled task): do not leave it running
            process.terminate()
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()

    pid, exitcode = process.pid, process.exitcode
    process.close()
    if exitcode == 0 and (run_dir / RESULT_FILE).exists():
        return FitResult.read(run_dir / RESULT_FILE)
    raise _child_error(run_dir, pid, exitcode)


def child_environment(spec: PipelineSpec) -> dict[str, str]:
    """Thread settings the child must have before it imports torch (OpenMP reads them once, at load).

    ``OMP_WAIT_POLICY=PASSIVE`` makes idle OpenMP threads sleep instead of spinning: on a shared
    machine the spinning is what made two threads up to 22× slower than one (STACK.md).
    """
    threads = str(train_threads(spec))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE"}


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then put the old values back.

    A spawned child inherits the environment at the moment it is created, before it imports
    anything; setting them inside the child would be too late whenever the parent's main module
    (re-imported there by ``spawn``) imports torch. Callers hold ``_START_LOCK``; other threads
    of the parent may see these values for the few milliseconds of a process start.
    """
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _child_main(spec: PipelineSpec, features_dir: Path, run_dir: Path, logger: MetricLogger, progress: bool) -> None:
    """The child's entry point: log to ``train.log``, run ``fit``, and leave a record of any failure."""
    log_stream = open(run_dir / LOG_FILE, "a", buffering=1)  # noqa: SIM115 - open for the life of the process
    faulthandler.enable(file=log_stream)  # a segfault's Python stack lands in train.log
    file_handler = logging.StreamHandler(log_stream)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console_handler = logging.StreamHandler(sys.stderr)
    console_handler.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.INFO, handlers=[file_handler, console_handler], force=True)
    logging.captureWarnings(True)
    log = logging.getLogger("lstmflow.launch")
    inherited = " ".join(f"{name}={os.environ.get(name)}" for name in child_environment(spec))
    log.info("training child pid %d started: %s", os.getpid(), inherited)
    try:
        fit(spec, features_dir, run_dir, logger, progress=progress)
    except BaseException as exc:
        log.error("training failed\n%s", traceback.format_exc())
        _write_error(run_dir, exc)
        sys.exit(1)


def _write_error(run_dir: Path, exc: BaseException) -> None:
    """Record the exception so the parent can raise it again; its state is what pickle would keep."""
    record = {
        "type": f"{type(exc).__module__}:{type(exc).__qualname__}",
        "message": str(exc),
        "args": list(exc.args),
        "state": vars(exc),
        "traceback": traceback.format_exc(),
    }
    atomic_write_bytes(json.dumps(record, indent=2, default=str).encode(), run_dir / ERROR_FILE)


def _child_error(run_dir: Path, pid: int | None, exitcode: int | None) -> Exception:
    """Why the child gave no result: lstmflow's own errors as themselves, anything else as a TrainingError."""
    path = run_dir / ERROR_FILE
    if not path.exists():
        if exitcode is not None and exitcode < 0:
            name = signal.Signals(-exitcode).name
            hint = " (the kernel's out-of-memory killer sends this too)" if name == "SIGKILL" else ""
            how = f"was killed by {name}{hint}"
        elif exitcode == 0:
            how = f"exited cleanly without writing {run_dir / RESULT_FILE}"
        else:
            how = f"exited with code {exitcode}"
        return TrainingError(
            f"training child (pid {pid}) {how}; running it again on {run_dir} resumes from its last checkpoint"
            f"{_log_tail(run_dir)}"
        )
    record = json.loads(path.read_text())
    module_name, _, qualname = record["type"].partition(":")
    try:
        cls: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError):
        cls = None
    if isinstance(cls, type) and issubclass(cls, LstmflowError):
        # Rebuilt the way pickle rebuilds an exception (args, then state), without calling a constructor
        # whose signature may differ from Exception's.
        error = cls.__new__(cls, *record["args"])
        error.args = tuple(record["args"])
        error.__dict__.update(record["state"])
        error.add_note(f"raised in the training child (pid {pid}); its traceback is in {run_dir / LOG_FILE}")
        return error
    return TrainingError(
        f"training child (pid {pid}) failed with {qualname}: {record['message']} (exit code {exitcode})\n"
        f"{record['traceback'].rstrip()}"
    )


def _log_tail(run_dir: Path) -> str:
    path = run_dir / LOG_FILE
    if not path.exists():
        return f"\n(no {path}: the child died before it could log; its stderr says why)"
    lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return f"\nlast lines of {path}:\n" + "\n".join(lines)
