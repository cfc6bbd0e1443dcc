"""The Prefect API of an embedded run (no Prefect server configured): a temporary server of lstmflow's own.

Prefect starts its temporary server at the first flow call, after its client has imported the whole server package
(seconds of CPU) just to launch it, and the run waits for it doing nothing. :func:`prefect_api` starts the same
server (Prefect's ASGI app in its ephemeral mode, under uvicorn, as Prefect launches it) as soon as a command knows
its project, so the server's start-up (its imports, and a new database's migrations) runs on its own core while the
command imports, validates its pipelines and creates the stores it will write (:func:`open_stores`). A project's
new database starts as a copy of a migrated, empty one kept per machine and Prefect version (Prefect's schema
migrations take seconds of CPU and disk writes). The server stops when the command ends, as Prefect's own does;
nothing is left running.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.metadata
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from lstmflow.errors import LstmflowError
from lstmflow.tracking import copy_sqlite

#: Where the temporary server's own output goes (it logs errors only).
LOG_FILE = Path(".lstmflow") / "prefect-server.log"
#: What Prefect sets for its temporary server: no UI, the ephemeral set of services, the app's final form.
EPHEMERAL = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


class TemporaryServer:
    """A Prefect API server process on a free loopback port, with its data in ``PREFECT_HOME`` (the project's)."""

    def __init__(self, root: Path) -> None:
        self.log = root / LOG_FILE
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/api"
        spec = importlib.util.find_spec("prefect")  # where Prefect is, without importing it
        app_dir = str(Path(next(iter(spec.submodule_search_locations or []))).parent) if spec else "."
        command = [sys.executable, "-m", "uvicorn", "--app-dir", app_dir, "--factory"]
        command += ["prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--log-level", "error", "--lifespan", "on"]
        database, self.template = _database(), _template()
        self.new_database = database if database is not None and not database.exists() else None
        if self.new_database and self.template.exists():  # a new database without its migrations' seconds
            copy_sqlite(self.template, self.new_database)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, env={**os.environ, **EPHEMERAL}, stdout=log, stderr=log)

    def wait_ready(self, timeout: float) -> None:
        """Return once the server answers its health check; a server that exits or stays silent is an error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/health", timeout=5) as answer:
                if answer.status == 200:
                    if self.new_database and not self.template.exists():  # migrated; nothing has run on it yet
                        copy_sqlite(self.new_database, self.template)
                    return
            time.sleep(0.1)
        self.stop()
        tail = self.log.read_text(errors="replace")[-2000:]
        raise LstmflowError(
            f"the temporary Prefect server did not start in {timeout:.0f} s; its log {self.log}:\n{tail}"
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s, as Prefect stops its own."""
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _database() -> Path | None:
    """The server's SQLite file: Prefect's default one in ``PREFECT_HOME`` (None for a configured database)."""
    if "PREFECT_API_DATABASE_CONNECTION_URL" in os.environ:
        return None
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect") / "prefect.db"


def _template() -> Path:
    """A new database as this Prefect version leaves it once migrated (schema, block types; nothing of a project),
    kept per machine the first time a temporary server starts on a new database."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "lstmflow" / "prefect-database" / f"prefect-{importlib.metadata.version('prefect')}.db"


def prefect_api(root: Path) -> Callable[[], AbstractContextManager[None]]:
    """Point this process's flows at the configured Prefect server, else at a temporary one started now; returns
    the context to call the flows in, whose entry waits for that server to answer.

    The server stops when the process exits, after Prefect has sent its last logs and events (as Prefect's own
    temporary server does). Where Prefect is imported already, or a project file may configure it (``prefect.toml``,
    ``.env``, ``[tool.prefect]`` in ``pyproject.toml``), Prefect's own settings decide, as before.
    """
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules or _configured_in_files(Path.cwd()):
        return contextlib.nullcontext
    server = TemporaryServer(root)
    os.environ["PREFECT_API_URL"] = server.url  # read by Prefect when it is imported, in every thread
    atexit.register(server.stop)
    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
    return lambda: flows_on_temporary_server(server, timeout)


@contextlib.contextmanager
def flows_on_temporary_server(server: TemporaryServer, timeout: float) -> Iterator[None]:
    """Flows on the temporary server, once it answers, and without heartbeats: a heartbeat lets a server mark the
    flow run of a process that died as crashed, and this server dies with the process; the heartbeat thread's
    one-second sleeps also held up every flow's end by up to a second."""
    server.wait_ready(timeout)
    from prefect.settings import temporary_settings

    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        yield


def _configured_in_files(folder: Path) -> bool:
    pyproject = folder / "pyproject.toml"
    in_pyproject = pyproject.exists() and "[tool.prefect" in pyproject.read_text(errors="replace")
    return in_pyproject or any((folder / name).exists() for name in ("prefect.toml", ".env"))


def open_stores(root: Path) -> None:
    """Create what the first run writes to and would otherwise create inside its steps (the DVC repository, the MLflow
    store: a new SQLite file's schema migrations): called while the temporary server starts, it costs no wait."""
    from lstmflow import tracking
    from lstmflow.ops import versioning

    versioning.ensure_repo(root)
    tracking.open_store(tracking.tracking_uri(root))
