"""The local stack: a Prefect server, a worker of the local work pool and an MLflow tracking server, on 127.0.0.1.

``lstmflow up`` starts them in the background with their data inside the project (Prefect's database in
``.prefect/``, MLflow's in ``mlflow.db`` and ``mlruns/``: the very stores the embedded default uses, so earlier runs
stay visible) and returns once each answers its health check. What is running is recorded in
``.lstmflow/stack.json``; while the stack is up, :func:`environment` points every lstmflow command at its servers.
``lstmflow down`` stops them all. Each service logs to ``.lstmflow/stack/<service>.log``.

A recorded PID alone does not say the process is still the service: after a reboot, or long after the service
stopped, another process may hold it, and ``down`` would signal that process's group. So each service records its
process's start time and command line at ``up``, and is taken as running only while both still match.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from lstmflow.errors import ConfigError, LstmflowError

STATE_FILE = Path(".lstmflow") / "stack.json"
LOG_DIR = Path(".lstmflow") / "stack"
HOST = "127.0.0.1"
#: The work pool the stack's worker serves: flows deployed there run on this machine.
LOCAL_POOL = "local"
#: Seconds a process's start time may differ between two readings and still be the same process: psutil derives it
#: from the boot time, which Linux reports in whole seconds and which moves when the clock is adjusted.
START_TIME_SLACK = 1.0


@dataclass(frozen=True)
class Service:
    """One background process of the stack, and what tells it from a later process that gets the same PID."""

    name: str
    pid: int
    url: str  # what a client points at; the health check is derived from it
    log: str
    started: float = 0.0  # the process's start time (psutil's create_time); 0 where a state file lacks it
    command: tuple[str, ...] = ()  # its command line as started

    def running(self) -> bool:
        """Whether the PID still runs this service: alive, with the recorded start time and command line.

        Another user's process, a zombie (our exited child not collected yet) and an entry recorded without its
        identity (by an older lstmflow) are not this service running.
        """
        try:
            process = psutil.Process(self.pid)
            same_start = abs(process.create_time() - self.started) <= START_TIME_SLACK
            return same_start and tuple(process.cmdline()) == self.command
        except psutil.Error:  # gone, a zombie, or not ours to read
            return False


def up(root: Path, prefect_port: int = 4200, mlflow_port: int = 5000, timeout: float = 120.0) -> list[Service]:
    """Start the Prefect server, the MLflow server and a worker of the local pool; return once all are healthy.

    A busy port is a :class:`ConfigError` naming it, before anything starts. If a service does not come up in
    ``timeout`` seconds, everything already started is stopped again and the error quotes its log.
    """
    root = Path(root).resolve()
    running = [service for service in _read_state(root) if service.running()]
    if running:
        raise ConfigError(
            f"the stack of {root} is already up ({', '.join(s.name for s in running)}); `lstmflow down` first"
        )
    for name, port in (("Prefect", prefect_port), ("MLflow", mlflow_port)):
        if not _port_free(port):
            flag = "--prefect-port" if name == "Prefect" else "--mlflow-port"
            raise ConfigError(f"port {port} on {HOST} is busy (another {name} server?); choose another with {flag}")
    (root / LOG_DIR).mkdir(parents=True, exist_ok=True)
    prefect_url = f"http://{HOST}:{prefect_port}/api"
    mlflow_url = f"http://{HOST}:{mlflow_port}"
    environment = {**os.environ, "PREFECT_HOME": str(root / ".prefect"), "PREFECT_API_URL": prefect_url}
    commands = {
        "prefect": [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(prefect_port)],
        "mlflow": [
            sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(mlflow_port),
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root", str(root / "mlruns"),
        ],
        "worker": [sys.executable, "-m", "prefect", "worker", "start", "--pool", LOCAL_POOL, "--type", "process"],
    }  # fmt: skip
    urls = {"prefect": prefect_url, "mlflow": mlflow_url, "worker": prefect_url}
    started: list[Service] = []
    try:
        for name in ("prefect", "mlflow", "worker"):  # the worker needs the Prefect server up
            started.append(_start(root, name, commands[name], urls[name], environment))
            _write_state(root, started)
            if name != "worker":
                _wait_healthy(started[-1], timeout)
        _wait_for_worker(prefect_url, started[-1], timeout)
    except BaseException:
        _stop(started)
        (root / STATE_FILE).unlink(missing_ok=True)
        raise
    return started


def down(root: Path, timeout: float = 30.0) -> list[Service]:
    """Stop every service of the stack (SIGTERM, then SIGKILL after ``timeout``); return those that were running."""
    root = Path(root).resolve()
    services = [service for service in _read_state(root) if service.running()]
    _stop(services, timeout)
    (root / STATE_FILE).unlink(missing_ok=True)
    return services


def status(root: Path) -> list[tuple[Service, bool]]:
    """Each recorded service with whether it is healthy now (running, and its server answering)."""
    return [(service, service.running() and _healthy(service)) for service in _read_state(Path(root).resolve())]


def environment(root: Path) -> dict[str, str]:
    """``PREFECT_API_URL`` and ``MLFLOW_TRACKING_URI`` of the stack while its servers run, else nothing."""
    services = {service.name: service for service in _read_state(Path(root).resolve()) if service.running()}
    if "prefect" not in services or "mlflow" not in services:
        return {}
    return {"PREFECT_API_URL": services["prefect"].url, "MLFLOW_TRACKING_URI": services["mlflow"].url}


# ---------------------------------------------------------------------------------------------- internals


def _port_free(port: int) -> bool:
    """Nothing listens on ``port`` (connections closing in TIME_WAIT do not count, as for the servers themselves)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _start(root: Path, name: str, command: list[str], url: str, environment: dict[str, str]) -> Service:
    """Start ``command`` in its own session (so ``down`` stops its children too), logging to its file."""
    log = root / LOG_DIR / f"{name}.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command, cwd=root, env=environment, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return Service(name, process.pid, url, str(log), _settled(process.pid), tuple(command))


def _settled(pid: int, timeout: float = 2.0) -> float:
    """The start time of the process just started as ``pid``, once its command line reads as what it runs.

    For a moment after exec, Linux shows a process's command line empty; :meth:`Service.running` must not see that.
    A process that exited at once keeps its start time readable (nothing collected it) and is found not running.
    """
    process = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    try:
        while not process.cmdline() and time.monotonic() < deadline:
            time.sleep(0.01)
    except psutil.Error:  # exited already
        pass
    return process.create_time()


def _health_url(service: Service) -> str:
    return f"{service.url}/health"  # Prefect: /api/health; MLflow: /health


def _healthy(service: Service) -> bool:
    if service.name == "worker":
        return True  # no endpoint of its own: alive is all it can say
    try:
        with urllib.request.urlopen(_health_url(service), timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait_healthy(service: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.running():
            raise LstmflowError(f"the {service.name} server exited while starting{_log_tail(service)}")
        if _healthy(service):
            return
        time.sleep(0.5)
    raise LstmflowError(
        f"the {service.name} server did not answer {_health_url(service)} within {timeout:.0f} s{_log_tail(service)}"
    )


def _wait_for_worker(prefect_url: str, worker: Service, timeout: float) -> None:
    """Wait until the worker has registered with the server (its pool then lists it)."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(
        f"{prefect_url}/work_pools/{LOCAL_POOL}/workers/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
    )
    while time.monotonic() < deadline:
        if not worker.running():
            raise LstmflowError(f"the worker exited while starting{_log_tail(worker)}")
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                if json.loads(answer.read()):
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise LstmflowError(
        f"the worker did not register with the work pool {LOCAL_POOL!r} within {timeout:.0f} s{_log_tail(worker)}"
    )


def _stop(services: list[Service], timeout: float = 30.0) -> None:
    """SIGTERM each service's process group, then SIGKILL what is left after ``timeout``."""
    for service in reversed(services):  # the worker first, the servers after
        try:
            os.killpg(service.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout
    for service in services:
        while _reap(service.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if service.running():
            try:
                os.killpg(service.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            while _reap(service.pid):
                time.sleep(0.1)


def _reap(pid: int) -> bool:
    """Whether ``pid`` still runs; collects it if it is our exited child (else it would linger as a zombie)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:  # not our child: started by another lstmflow command
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _log_tail(service: Service, lines: int = 20) -> str:
    path = Path(service.log)
    if not path.exists():
        return ""
    tail = path.read_text(errors="replace").splitlines()[-lines:]
    return f"; last lines of {path}:\n" + "\n".join(tail)


def _read_state(root: Path) -> list[Service]:
    path = root / STATE_FILE
    if not path.exists():
        return []
    return [Service(**{**entry, "command": tuple(entry.get("command", ()))}) for entry in json.loads(path.read_text())]


def _write_state(root: Path, services: list[Service]) -> None:
    path = root / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(service) for service in services], indent=2))
    os.replace(tmp, path)
