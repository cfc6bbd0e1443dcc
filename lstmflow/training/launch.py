"""The one way training processes start: one, or one per worker for data-parallel training.

Training runs in child processes made with the ``spawn`` start method, so that a crash, an out-of-memory kill or a
``kill -9`` ends the children only: the caller (a Prefect task, the CLI) sees a
:class:`~lstmflow.errors.TrainingError` and can retry, which resumes from the last checkpoint. With
``train.workers`` (or ``train.nodes``) above one, the children form a DDP group (:mod:`lstmflow.training.distributed`);
when one of them fails, the launcher stops the others (they would wait for it forever) and reports the first failure.

Nothing comes back through a pipe. The children write, in ``run_dir`` (rank 0's names; rank ``r`` > 0 writes
``train.rank<r>.log`` and ``train_error.rank<r>.json``):

- ``fit_result.json`` on success (see :func:`lstmflow.training.fit.fit`);
- ``train_error.json`` when it raises: the exception's class, message and state, so that a
  ``DataError`` or ``ConfigError`` is raised again in the parent as the same class with the
  same message (the CLI exits 2 on those), anything else as a ``TrainingError``. Only a class of lstmflow's own
  modules is looked up: a module named in the file is never imported otherwise (the file is data, not code);
- ``train.log``: its log lines, warnings, tracebacks and, through :mod:`faulthandler`, the
  Python stack of a hard crash. Its tail goes into every ``TrainingError``.

``lstmflow run`` starts its first pipeline's child early (:func:`warm_child`): the child imports torch and the
training code while the flow prepares the data, and :func:`train_in_child` sends it the job through a pipe.

A child's warnings and errors, and its progress lines (at most one per 30 s, and the line saying that
``train.budget`` ended the run), also reach the parent's stderr: the console of ``lstmflow run``.
"""

from __future__ import annotations

import errno
import faulthandler
import importlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, NamedTuple

from lstmflow.config import PipelineSpec
from lstmflow.errors import LstmflowError, TrainingError, storage_error
from lstmflow.training.budget import PROGRESS_LOGGER
from lstmflow.training.checkpoint import CHECKPOINT_DIR, atomic_write_bytes, load_checkpoint
from lstmflow.training.distributed import RENDEZVOUS_FILE, Plan, join, plan, socket_environment
from lstmflow.training.fit import RESULT_FILE, FitResult, fit, train_threads
from lstmflow.training.loggers import MetricLogger

LOG_FILE = "train.log"
ERROR_FILE = "train_error.json"
LOG_TAIL_LINES = 30
#: A child's exit code when its disk is too full even for its error file.
STORAGE_EXIT = 28
#: Seconds the other workers get to end on their own after one failed, before they are killed.
STOP_GRACE_SECONDS = 10

#: What ``child_environment`` may set, as each child logs it at its start.
CHILD_VARIABLES = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
    "CUBLAS_WORKSPACE_CONFIG", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME",
)  # fmt: skip
#: glibc malloc settings for the children (see ``child_environment``): blocks up to 256 MiB come from the heap and
#: are reused, and up to 256 MiB of free memory at the heap's top is kept for the next batch.
MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": str(256 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20)}

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
    """Run :func:`lstmflow.training.fit.fit` in spawned children, one per worker on this machine, and return the result.

    ``logger`` is pickled into every child; rank 0 alone calls it. Calling this again on the same ``run_dir``
    after a failure resumes from the last checkpoint. Bad settings (more GPU workers than GPUs, nccl without CUDA)
    raise a ConfigError, and a checkpoint in ``run_dir`` of another spec a CheckpointError, before any child starts.
    ``on_start`` is called with the first child (rank 0 on machine 0, the one that logs and checkpoints) once all
    have started (tests kill it from there; a supervisor could record its pid). Raises the failed child's
    ``LstmflowError`` as itself, and ``TrainingError`` for anything else.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for pattern in (RESULT_FILE, "train_error*.json", RENDEZVOUS_FILE.format(token="*")):
        for stale in run_dir.glob(pattern):
            stale.unlink(missing_ok=True)
    rendezvous_file = run_dir / RENDEZVOUS_FILE.format(token=uuid.uuid4().hex)
    workers = plan(spec, rendezvous_file)
    with warnings.catch_warnings():  # a fallback to prev.pt is for the child to report, in its log
        warnings.simplefilter("ignore")
        load_checkpoint(run_dir / CHECKPOINT_DIR, spec, mmap=True)  # another spec's checkpoint: refused now

    jobs = [_Job(spec, Path(features_dir), run_dir, logger, progress, workers, rank) for rank in range(workers.workers)]
    processes: list[BaseProcess] = []
    try:
        _start_children(spec, jobs, processes)
        if on_start is not None:
            on_start(processes[0])
        failed = _first_failure(processes)
    finally:
        _stop(processes)  # the parent was interrupted (Ctrl-C, a cancelled task), or a worker failed
        rendezvous_file.unlink(missing_ok=True)

    outcome = [(workers.rank(index), process.pid, process.exitcode) for index, process in enumerate(processes)]
    for process in processes:
        process.close()
    if failed is None and (run_dir / RESULT_FILE).exists():
        return FitResult.read(run_dir / RESULT_FILE)
    rank, pid, exitcode = outcome[failed if failed is not None else 0]
    raise _child_error(run_dir, rank, pid, exitcode)


class _Job(NamedTuple):
    """One child's work: ``_child_main``'s arguments."""

    spec: PipelineSpec
    features_dir: Path
    run_dir: Path
    logger: MetricLogger
    progress: bool
    workers: Plan
    local_rank: int


def _start_children(spec: PipelineSpec, jobs: list[_Job], started: list[BaseProcess]) -> None:
    """Start a child per job, appending each to ``started`` as it starts; the warm child takes the job of a
    one-process run started in its environment."""
    environment = child_environment(spec)
    if jobs[0].workers.world_size == 1 and (warm := _take_warm_child(environment)) is not None:
        try:
            with warm.connection:
                warm.connection.send(jobs[0])
            started.append(warm.process)
            return
        except OSError:  # it ended since: a child of its own, as if there had been no warm one
            _stop([warm.process])
    context = multiprocessing.get_context("spawn")
    with _START_LOCK, _environment(environment):
        for job in jobs:
            name = f"lstmflow-train-{spec.name}-{job.workers.rank(job.local_rank)}"
            started.append(context.Process(target=_child_main, args=job, name=name))
            started[-1].start()


@dataclass
class _WarmChild:
    """A training child started ahead of its job, the parent's end of the pipe the job goes through, and the
    environment it started with (which a job's must equal: OpenMP and glibc read it at the child's start)."""

    process: BaseProcess
    connection: multiprocessing.connection.Connection
    environment: dict[str, str]


_warm_child: _WarmChild | None = None


@contextmanager
def warm_child(spec: PipelineSpec) -> Iterator[None]:
    """Start the training child of a one-process run before its job is known: it imports torch and lstmflow's
    training code (seconds of a run on small data) while the block prepares the data, then waits for the job that
    :func:`train_in_child` sends it. A job needing another environment, or several workers, starts children of its
    own; the warm child is stopped at the block's end if no job came. A search, a multi-machine run or one of
    several workers gets none (their children start otherwise)."""
    global _warm_child
    if spec.search is not None or spec.train.nodes is not None or spec.train.workers not in (1, "auto"):
        yield
        return
    environment = child_environment(spec)
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_warm_child_main, args=(theirs,), name=f"lstmflow-train-{spec.name}-0")
    _stop_warm_child()
    with _START_LOCK, _environment(environment):
        process.start()
    theirs.close()
    _warm_child = _WarmChild(process, ours, environment)
    try:
        yield
    finally:
        _stop_warm_child()


def _stop_warm_child() -> None:
    global _warm_child
    warm, _warm_child = _warm_child, None
    if warm is not None:
        warm.connection.close()
        _stop([warm.process])


def _take_warm_child(environment: dict[str, str]) -> _WarmChild | None:
    """The warm child, for a job of ``environment``, if it was started with that environment and still runs."""
    global _warm_child
    warm = _warm_child
    if warm is None or warm.environment != environment or not warm.process.is_alive():
        return None
    _warm_child = None
    return warm


def _warm_child_main(connection: multiprocessing.connection.Connection) -> None:
    """Import what training needs, and what the first optimizer imports (``torch._dynamo``, a second), then run the
    job the parent sends; the pipe's closing (the parent had no job for it, or ended) or a Ctrl-C before the job
    ends this process quietly instead."""
    try:
        import torch

        torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
        job = connection.recv()
    except (EOFError, KeyboardInterrupt):
        return
    connection.close()
    _child_main(*job)


def _first_failure(processes: Sequence[BaseProcess]) -> int | None:
    """Wait until every process has ended or one has failed; the index of the first to fail, else None.

    Of several that ended together, the lowest rank counts as first: a worker whose peer died fails soon after it.
    """
    running = {process.sentinel: index for index, process in enumerate(processes)}
    while running:
        ready = multiprocessing.connection.wait(list(running))
        ended = sorted(running.pop(sentinel) for sentinel in ready if isinstance(sentinel, int))  # all are ints
        for index in ended:
            processes[index].join()
        failed = [index for index in ended if processes[index].exitcode != 0]
        if failed:
            return failed[0]
    return None


def _stop(processes: Sequence[BaseProcess]) -> None:
    """End whatever still runs: SIGTERM, and SIGKILL for any still alive after the grace period."""
    alive = [process for process in processes if process.is_alive()]
    for process in alive:
        process.terminate()
    for process in alive:
        process.join(STOP_GRACE_SECONDS)
        if process.is_alive():
            process.kill()
            process.join()


def child_environment(spec: PipelineSpec) -> dict[str, str]:
    """Settings the children must have before they import torch (OpenMP, cuBLAS and gloo read them once, at load).

    ``OMP_WAIT_POLICY=PASSIVE`` makes idle OpenMP threads sleep instead of spinning: on a shared machine the
    spinning is what makes two threads many times slower than one.
    ``CUBLAS_WORKSPACE_CONFIG`` makes cuBLAS deterministic under ``train.deterministic``; the socket interfaces keep
    gloo and NCCL on loopback when every worker is on this machine.

    ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` (glibc; other C libraries ignore them), each unless
    the caller set it: an LSTM's training step allocates and frees tensors of all time steps every batch, which
    glibc by default maps fresh from the kernel (zeroing every page on first touch: thousands of page faults a
    step) and gives back when freed. Kept in the heap instead, those faults are gone and a training step is
    markedly faster, in nn.LSTM and in lstmflow's kernel alike (the figures are in benchmarks/RESULTS.md). Both
    settings are needed: the threshold alone leaves half the faults, as freed blocks at the heap's top are still
    trimmed. The cost: a training child keeps up to 256 MiB of freed memory for reuse, and blocks of up to 256 MiB
    come from its heap (larger ones are mapped as before); it is a process of its own that ends with the run.
    """
    threads = str(train_threads(spec))
    environment = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE"}
    environment.update({name: os.environ.get(name, value) for name, value in MALLOC_SETTINGS.items()})
    if spec.train.deterministic:
        environment["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    return {**environment, **socket_environment(spec, dict(os.environ))}


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


def _child_main(
    spec: PipelineSpec,
    features_dir: Path,
    run_dir: Path,
    logger: MetricLogger,
    progress: bool,
    workers: Plan,
    local_rank: int,
) -> None:
    """A child's entry point: log to its log file, join the other workers if any, run ``fit``, and leave a record
    of any failure."""
    rank = workers.rank(local_rank)
    log_stream = open(run_dir / rank_file(LOG_FILE, rank), "a", buffering=1)  # noqa: SIM115 - for the process's life
    faulthandler.enable(file=log_stream)  # a segfault's Python stack lands in the log
    file_handler = logging.StreamHandler(log_stream)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console_handler = logging.StreamHandler(_CurrentStderr())
    console_handler.addFilter(_for_the_console)
    console_handler.setFormatter(_ConsoleFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[file_handler, console_handler], force=True)
    logging.raiseExceptions = False  # a log file on a full disk must not print a traceback per line
    logging.captureWarnings(True)
    log = logging.getLogger("lstmflow.training.launch")
    inherited = " ".join(f"{name}={os.environ.get(name)}" for name in CHILD_VARIABLES)
    log.info("training child pid %d (rank %d of %d) started: %s", os.getpid(), rank, workers.world_size, inherited)
    try:
        with join(spec, workers, local_rank) if workers.world_size > 1 else nullcontext() as world:
            fit(spec, features_dir, run_dir, logger, progress=progress, world=world)
    except BaseException as exc:  # noqa: BLE001 - recorded for the parent whatever it is, then the child exits
        full = storage_error(exc, run_dir)
        if (isinstance(exc, LstmflowError) and exc.planned) or full is not None:
            log.info("training stopped: %s", full or exc)
        else:
            log.error("training failed\n%s", traceback.format_exc())
        try:
            _write_error(run_dir / rank_file(ERROR_FILE, rank), full or exc)
        except OSError:  # the disk is full: the exit code tells the parent
            sys.exit(STORAGE_EXIT)
        sys.exit(1)


class _CurrentStderr:
    """Whatever ``sys.stderr`` is at the moment of writing: while the rich progress bar is live it is rich's proxy,
    which prints a line above the bar instead of through it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _ConsoleFormatter(logging.Formatter):
    """Progress lines as they are written; warnings and errors with their level and logger."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == PROGRESS_LOGGER:
            return record.getMessage()
        return f"{record.levelname}:{record.name}:{super().format(record)}"


def _for_the_console(record: logging.LogRecord) -> bool:
    """What a child prints on the console (the parent's stderr, the terminal of ``lstmflow run``): warnings, errors,
    and the progress lines of :mod:`lstmflow.training.budget`; everything else goes to its log file only."""
    return record.levelno >= logging.WARNING or record.name == PROGRESS_LOGGER


def rank_file(name: str, rank: int) -> str:
    """Rank 0's file keeps the plain name; rank 2's ``train.log`` is ``train.rank2.log``."""
    stem, dot, suffix = name.partition(".")
    return name if rank == 0 else f"{stem}.rank{rank}{dot}{suffix}"


def _write_error(path: Path, exc: BaseException) -> None:
    """Record the exception so the parent can raise it again; its state is what pickle would keep."""
    record = {
        "type": f"{type(exc).__module__}:{type(exc).__qualname__}",
        "message": str(exc),
        "args": list(exc.args),
        "state": vars(exc),
        "traceback": traceback.format_exc(),
    }
    atomic_write_bytes(json.dumps(record, indent=2, default=str).encode(), path)


def _child_error(run_dir: Path, rank: int, pid: int | None, exitcode: int | None) -> Exception:
    """Why a child gave no result: lstmflow's own errors as themselves, anything else as a TrainingError."""
    path = run_dir / rank_file(ERROR_FILE, rank)
    log_path = run_dir / rank_file(LOG_FILE, rank)
    child = f"training child (rank {rank}, pid {pid})" if rank else f"training child (pid {pid})"
    if not path.exists():
        if exitcode == STORAGE_EXIT:
            return storage_error(OSError(errno.ENOSPC, "no space left"), run_dir) or TrainingError(f"{child} failed")
        if exitcode is not None and exitcode < 0:
            name = signal.Signals(-exitcode).name
            hint = " (the kernel's out-of-memory killer sends this too)" if name == "SIGKILL" else ""
            how = f"was killed by {name}{hint}"
        elif exitcode == 0:
            how = f"exited cleanly without writing {run_dir / RESULT_FILE}"
        else:
            how = f"exited with code {exitcode}"
        return TrainingError(
            f"{child} {how}; running it again on {run_dir} resumes from its last checkpoint{_log_tail(log_path)}"
        )
    record = json.loads(path.read_text())
    module_name, _, qualname = record["type"].partition(":")
    cls: Any = None
    if module_name == "lstmflow" or module_name.startswith("lstmflow."):  # never import what a file names
        try:
            cls = importlib.import_module(module_name)
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
        error.add_note(f"raised in the {child}; its traceback is in {log_path}")
        return error
    return TrainingError(
        f"{child} failed with {qualname}: {record['message']} (exit code {exitcode})\n{record['traceback'].rstrip()}"
    )


def _log_tail(path: Path) -> str:
    if not path.exists():
        return f"\n(no {path}: the child died before it could log; its stderr says why)"
    lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return f"\nlast lines of {path}:\n" + "\n".join(lines)
