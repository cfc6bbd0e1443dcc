"""Everything lstmflow says to MLflow: runs, params, batched metrics, artifacts, the registry.

MLflow is imported in this package only (here, the served model in :mod:`lstmflow.tracking.serving`, and the
file MLflow logs as its code). The default store is
SQLite inside the project (``<project>/mlflow.db``, artifacts in ``<project>/mlruns``);
``MLFLOW_TRACKING_URI`` overrides it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sqlite3
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lstmflow.errors import LstmflowError, writing
from lstmflow.training.loggers import SpooledRow, SpoolLogger, read_spool

#: Tags that tie a run to the exact code, data and orchestration that made it.
LINEAGE_TAGS = ("lstmflow.git_commit", "lstmflow.data_md5", "lstmflow.features_md5", "lstmflow.prefect_flow_run_id")


class TrackingUnavailable(LstmflowError):
    """MLflow's server did not answer (down, restarting, out of reach) or kept failing (its database or artifact
    store down) after the MLflow client's own retries: what the step made (a trained checkpoint, scores) is kept,
    and a retry once the server is back redoes its MLflow part."""


def unreachable(exc: BaseException) -> str | None:
    """Why MLflow's server cannot do its part now, when ``exc`` or an exception it came from is a refused, dropped or
    timed-out connection, or server errors (5xx) past the client's retries (its database or artifact store is down);
    None for anything else (a refusal of a bad value, a missing run)."""
    import requests

    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(isinstance(e, requests.exceptions.RetryError) for e in chain):
        failing = next((str(e) for e in reversed(chain) if "error responses" in str(e)), "server errors")
        return f"answers with errors ({failing}: its database or artifact store may be down)"
    if not any(isinstance(e, requests.exceptions.ConnectionError | requests.exceptions.Timeout) for e in chain):
        return None
    reason = next((e.strerror for e in reversed(chain) if isinstance(e, OSError) and e.strerror), "no connection")
    return f"does not answer ({reason})"


@contextlib.contextmanager
def answering(uri: str, doing: str, kept: str) -> Iterator[None]:
    """Raise a failure to reach the MLflow server at ``uri`` as :class:`TrackingUnavailable`, saying what was being
    done and what is ``kept``, for the tasks' retry policy; any other error as it is."""
    try:
        yield
    except TrackingUnavailable:
        raise
    except Exception as exc:
        if (reason := unreachable(exc)) is None:
            raise
        shown = re.sub(r"//[^/@]*@", "//", uri)  # no credentials in the message
        raise TrackingUnavailable(f"{doing}: the MLflow server at {shown} {reason}; {kept}") from exc


def tracking_uri(project: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the project's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(project / 'mlflow.db').resolve()}"


def _client(uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


#: How often a training child's spooled metrics are relayed to its MLflow run while it trains.
RELAY_SECONDS = 1.0


@contextlib.contextmanager
def relayed_metrics(uri: str, run_id: str, spool: Path) -> Iterator[SpoolLogger]:
    """A :class:`~lstmflow.training.loggers.SpoolLogger` for training children, whose lines a thread of this process
    logs to the MLflow run every :data:`RELAY_SECONDS`, and the rest when the block ends.

    What was relayed is recorded beside the spool, so a retry on the same run folder relays only what is new. A
    failure to log (the server gone) ends the relaying, not the training; it is raised when the block ends, unless
    the block raised first, and the lines it left are relayed by the next attempt.
    """
    relay = _Relay(uri, run_id, spool)
    relay.start()
    try:
        yield SpoolLogger(spool)
    finally:
        failure = relay.finish()
    if failure is not None:
        raise failure


class _Relay(threading.Thread):
    def __init__(self, uri: str, run_id: str, spool: Path) -> None:
        super().__init__(name=f"lstmflow-metrics-{run_id}", daemon=True)
        self.uri, self.run_id, self.spool = uri, run_id, spool
        self.relayed = spool.with_name(spool.name + ".relayed")  # the spool's byte offset logged so far
        self.offset = int(self.relayed.read_text()) if self.relayed.exists() else 0  # a retry's starting point
        self.stopping = threading.Event()
        self.failure: Exception | None = None

    def run(self) -> None:
        while not self.stopping.wait(RELAY_SECONDS) and self.failure is None:
            self._relay()

    def finish(self) -> Exception | None:
        """Stop the thread, relay what is left, and return the failure that stopped relaying, if any."""
        self.stopping.set()
        self.join()
        if self.failure is None:
            self._relay()
        return self.failure

    def _relay(self) -> None:
        rows, after = read_spool(self.spool, self.offset)
        if not rows:
            return
        try:
            _log_rows(self.uri, self.run_id, rows)
        except Exception as exc:  # noqa: BLE001 - raised by finish(), in the thread that can handle it
            self.failure = exc
            return
        self.offset = after
        self.relayed.write_text(str(after))


def _log_rows(uri: str, run_id: str, rows: list[SpooledRow]) -> None:
    """Log ``(step, time in ms, {name: value})`` rows to the run, in batches of MLflow's largest size."""
    from mlflow.entities import Metric

    batch = [Metric(key, float(value), at, step) for step, at, metrics in rows for key, value in metrics.items()]
    client = _client(uri)
    for chunk in _chunks(batch, 1000):
        client.log_batch(run_id, metrics=chunk)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def start_run(
    uri: str, experiment: str, artifact_root: Path, params: dict[str, str], tags: dict[str, str], run_name: str
) -> str:
    """Create a run in the experiment named ``experiment`` (made on first use); returns its id."""
    from mlflow.entities import Param, RunTag

    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        location = None if uri.startswith("http") else (artifact_root / experiment).resolve().as_uri()
        experiment_id = client.create_experiment(experiment, artifact_location=location)
    else:
        experiment_id = found.experiment_id
    run = client.create_run(experiment_id, tags=tags, run_name=run_name)
    run_id = run.info.run_id
    batch = [Param(key, value[:6000]) for key, value in params.items()]
    for chunk in _chunks(batch, 100):
        client.log_batch(run_id, params=chunk)
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    return run_id


def reopen_run(uri: str, run_id: str, finished_too: bool = False) -> bool:
    """Mark an unfinished run (running, failed or killed) as running again; False if it is finished or gone.

    A retried training task continues its own run instead of starting a second one. ``finished_too`` reopens a
    finished run as well: a search's parent run, when a later call continues its study.
    """
    client = _client(uri)
    try:
        status = client.get_run(run_id).info.status
    except Exception as exc:
        if unreachable(exc):  # not "missing": a new run now would leave the trained one behind
            raise
        return False
    if status == "FINISHED" and not finished_too:
        return False
    client.update_run(run_id, status="RUNNING")
    return True


def run_status(uri: str, run_id: str) -> str | None:
    """The run's status (``RUNNING``, ``FINISHED``, ``FAILED``, ``KILLED``), or None for a run that is not there."""
    try:
        return str(_client(uri).get_run(run_id).info.status)
    except Exception:  # noqa: BLE001 - a missing run or a new store reads as "no such run"
        return None


def open_store(uri: str) -> None:
    """Create the tracking store now if it is new, e.g. while a server starts, rather than inside the first run's
    training step.

    A new SQLite store starts as a copy of an empty one kept per machine and MLflow version: MLflow's schema
    migrations take a second or two of every new project's first run. The first new store on a machine is made by
    MLflow and kept as that template before anything is written to it.
    """
    path = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    template = _store_template()
    new = path is not None and not path.exists()
    if path is not None and new and template.exists():
        copy_sqlite(template, path)
        default_folder = str(path.parent / "mlruns" / "0")  # the template's Default experiment's is elsewhere
        with contextlib.closing(sqlite3.connect(path)) as store, store:
            store.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (default_folder,))
    _client(uri).search_experiments(max_results=1)
    if path is not None and new and not template.exists():
        copy_sqlite(path, template)


def _store_template() -> Path:
    from importlib.metadata import version

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "lstmflow" / "mlflow-database" / f"mlflow-{version('mlflow')}.db"


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database (SQLite's backup, so a server may have it open), put in place whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(partial)) as dst:
        src.backup(dst)
    os.replace(partial, target)


def log_summary_metrics(uri: str, run_id: str, metrics: dict[str, float]) -> None:
    _log_rows(uri, run_id, [(0, int(time.time() * 1000), metrics)])


def log_artifacts(uri: str, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
    client = _client(uri)
    with writing(_artifact_location(uri, run_id)):
        for path in paths:
            client.log_artifact(run_id, str(path), artifact_path)


def _artifact_location(uri: str, run_id: str) -> str:
    """Where the run's artifacts go, for an error that names it: a local folder, or the server's URI."""
    location = str(_client(uri).get_run(run_id).info.artifact_uri)
    return location.removeprefix("file://")


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(uri).set_terminated(run_id, status)


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Set (or overwrite) tags in one batch; unlike params, tags may change, e.g. a search's best trial so far."""
    from mlflow.entities import RunTag

    _client(uri).log_batch(run_id, tags=[RunTag(key, value[:5000]) for key, value in tags.items()])


def download_artifact(uri: str, run_id: str, path: str, dst_dir: Path) -> Path:
    """Copy one artifact of a run under ``dst_dir`` (keeping its artifact path: ``dst_dir/<path>``); returns it."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    return Path(_client(uri).download_artifacts(run_id, path, str(dst_dir)))


@contextlib.contextmanager
def _fluent_uri(uri: str) -> Iterator[Any]:
    """MLflow's module-level API pointed at ``uri`` for a moment, then restored.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``; left set, it would
    redirect every later project in the same process (a worker, a test session) to this store.
    """
    import mlflow

    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) if any(saved.values()) else (None, None)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield mlflow
    finally:
        # None puts back "not set" (MLflow's default store), though MLflow annotates these as taking a str only
        mlflow.set_tracking_uri(previous[0])  # type: ignore[arg-type]
        mlflow.set_registry_uri(previous[1])  # type: ignore[arg-type]
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def preload_model_logging() -> None:
    """Import what :func:`register_model` uses, and build the map of installed packages that MLflow makes on every
    ``log_model`` to check a model's requirements against (most of a second, once a process): called while a
    training child runs, the registration after it costs that much less."""
    import mlflow.pyfunc  # noqa: F401 - imported for its import time
    from mlflow.models import infer_signature  # noqa: F401
    from mlflow.utils import requirements_utils

    build_map = getattr(requirements_utils, "_init_packages_to_modules_map", None)  # private: MLflow may drop it
    if build_map is not None:
        build_map()


def register_model(
    uri: str, run_id: str, name: str, bundle_dir: Path, input_example: Any, output_example: Any
) -> dict[str, str]:
    """Log the pyfunc forecaster to the run and register it under ``name``; returns its URIs and version."""
    import mlflow
    import torch
    from mlflow.models import infer_signature

    import lstmflow

    requirements = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        *_installed(["numpy", "pandas", "pydantic", "pyyaml"]),
    ]
    package = Path(lstmflow.__file__).parent
    with (
        writing(_artifact_location(uri, run_id)),
        _fluent_uri(uri),
        mlflow.start_run(run_id=run_id),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        with _without_registry_chatter():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(package / "tracking" / "pyfunc_model.py"),
                artifacts={"bundle": str(bundle_dir)},
                code_paths=[str(package)],
                signature=infer_signature(input_example, output_example),
                input_example=input_example,
                pip_requirements=requirements,
                registered_model_name=name,
            )
    version = str(info.registered_model_version)
    return {"model_uri": f"models:/{name}/{version}", "logged_model_uri": info.model_uri, "version": version}


#: What MLflow prints to stderr, whatever its log level, when ``log_model`` registers a version: the run's own
#: result names the version already.
REGISTRY_CHATTER = re.compile(r"Successfully registered model |Registered model .* already exists\.|Created version ")


@contextlib.contextmanager
def _without_registry_chatter() -> Iterator[None]:
    """Hold back what the block writes to ``sys.stderr`` and write it out afterwards, less :data:`REGISTRY_CHATTER`
    (warnings included, nothing else is dropped)."""
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            yield
    finally:
        sys.stderr.write("".join(line for line in held.getvalue().splitlines(True) if not REGISTRY_CHATTER.match(line)))


def _installed(names: list[str]) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            raise LstmflowError(f"{name} is not installed; the served model needs it") from None
    return pins


def load_model(uri: str, model_uri: str):
    """Load a logged or registered model of the store at ``uri``; one that is not there is a named error."""
    with _fluent_uri(uri) as mlflow:
        try:
            return mlflow.pyfunc.load_model(model_uri)
        except mlflow.exceptions.MlflowException as exc:
            first_line = next(iter(str(exc).strip().splitlines()), "")
            raise LstmflowError(
                f"cannot load {model_uri} from {uri}: {first_line} (run the pipeline first to register a model)"
            ) from None
