"""The local stack: a Prefect server, a worker of the local work pool and an MLflow tracking server, on 127.0.0.1.

``lstmflow up`` starts them in the background with their data inside the project (Prefect's database in
``.prefect/``, MLflow's in ``mlflow.db`` and ``mlruns/``: the very stores the embedded default uses, so earlier runs
stay visible; with ``--team`` a PostgreSQL cluster of the project holds both servers' data, see
:mod:`lstmflow.ops.postgres`) and returns once each answers its health check. What is running is recorded in
``.lstmflow/stack.json``; while the stack is up, :func:`environment` points every lstmflow command at its servers.
``lstmflow down`` stops them all. Each service logs to ``.lstmflow/stack/<service>.log``.

A recorded PID alone does not say the process is still the service: after a reboot, or long after the service
stopped, another process may hold it, and ``down`` would signal that process's group. So each service records its
process's start time and command line at ``up``, and is taken as running only while both still match.

A service is a tree of processes: the MLflow server runs a dozen (uvicorn workers, job consumers), and when its main
process dies (``kill -9``, the OOM killer) they live on, answering on its port. So each service starts in its own
session and process group, with a token of its own in its environment (``LSTMFLOW_STACK_SERVICE``, which its
children inherit), and ``up`` records the children it has once the stack is healthy. ``down`` stops every process of
the service's tree: the group and session of a main process that still runs, and otherwise each process of the
recorded group, session or children that proves to be the service's own (recorded start time, or the token in its
environment), and their descendants; SIGTERM, then SIGKILL after a grace period. A process that merely holds a
recorded PID or group id is never signalled. ``status`` and every command that would use the stack (see
:func:`environment`) name what is unhealthy instead of quietly falling back to other servers.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple, cast

import psutil

from lstmflow.errors import ConfigError, LstmflowError
from lstmflow.ops import team
from lstmflow.ops.health import healthy, wait_for_worker, wait_healthy
from lstmflow.ops.postgres import Cluster

STATE_FILE = Path(".lstmflow") / "stack.json"
LOG_DIR = Path(".lstmflow") / "stack"
#: The PostgreSQL cluster of a team's stack (``lstmflow up --team``).
TEAM_DATABASE_DIR = Path(".lstmflow") / "postgres"
HOST = "127.0.0.1"
#: The work pool the stack's worker serves: flows deployed there run on this machine.
LOCAL_POOL = "local"
#: Seconds a process's start time may differ between two readings and still be the same process: psutil derives it
#: from the boot time, which Linux reports in whole seconds and which moves when the clock is adjusted.
START_TIME_SLACK = 1.0
#: The environment variable that carries a service's token to every process of its tree.
TOKEN_VARIABLE = "LSTMFLOW_STACK_SERVICE"
#: Seconds ``down`` waits after SIGKILL for the processes to go.
KILL_WAIT = 5.0
#: Seconds a running server has to answer its health check before ``status`` and the commands call it unhealthy (a
#: closed port answers at once; a busy machine can take seconds).
HEALTH_TIMEOUT = 10.0


@dataclass(frozen=True)
class Service:
    """One background process of the stack, and what tells it from a later process that gets the same PID."""

    name: str
    pid: int
    url: str  # what a client points at; the health check is derived from it
    log: str
    started: float = 0.0  # the process's start time (psutil's create_time); 0 where a state file lacks it
    command: tuple[str, ...] = ()  # its command line as started
    token: str = ""  # the value of TOKEN_VARIABLE in its environment; "" where a state file lacks it
    children: tuple[tuple[int, float], ...] = ()  # (pid, start time) of its descendants once the stack was healthy

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

    def processes(self) -> list[psutil.Process]:
        """Every live process of this service's tree: what ``down`` stops; empty once the whole tree is gone."""
        return _tree(self)

    def problem(self) -> str | None:
        """Why this service is not healthy, in a line; ``None`` when it runs and its server answers."""
        if self.running():
            if healthy(self, timeout=HEALTH_TIMEOUT):
                return None
            return f"{self.name} does not answer on {urllib.parse.urlsplit(self.url).netloc}"
        left = self.processes()
        if left:
            pids = ", ".join(str(process.pid) for process in left[:5]) + (", …" if len(left) > 5 else "")
            return (
                f"the {self.name} process (pid {self.pid}) is gone but {len(left)} of its processes still run "
                f"(pid {pids})"
            )
        return f"{self.name} (pid {self.pid}) is not running"


def up(
    root: Path,
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    timeout: float = 120.0,
    postgres_port: int | None = None,
    objects_port: int = 9000,
) -> list[Service]:
    """Start the Prefect server, the MLflow server and a worker of the local pool; return once all are healthy.

    With ``postgres_port`` (a team's stack) both servers keep their data in the project's PostgreSQL cluster
    (``.lstmflow/postgres``, started first on that port), an object store starts on ``objects_port`` for MLflow's
    artifacts and DVC's remote (:mod:`lstmflow.ops.team`), and the connection file for other checkouts is written;
    otherwise the servers use the embedded default's stores. A busy port is a :class:`ConfigError`
    naming it, before anything starts. If a service does not come up in ``timeout`` seconds, everything already
    started is stopped again and the error quotes its log.
    """
    root = Path(root).resolve()
    recorded = _read_state(root)
    running = [service for service in recorded if service.running()]
    if running and len(running) == len(recorded) and all(service.problem() is None for service in recorded):
        raise ConfigError(
            f"the stack of {root} is already up ({', '.join(s.name for s in running)}); `lstmflow down` first"
        )
    if any(service.processes() for service in recorded):
        raise LstmflowError(unhealthy_message(root, [p for p in map(Service.problem, recorded) if p]))
    ports = [("Prefect", prefect_port, "--prefect-port"), ("MLflow", mlflow_port, "--mlflow-port")]
    if postgres_port is not None:
        ports.append(("object store", objects_port, "--objects-port"))
        if not team_database(root).running():
            ports.append(("PostgreSQL", postgres_port, "--postgres-port"))
    for name, port, flag in ports:
        if not _port_free(port):
            raise ConfigError(f"port {port} on {HOST} is busy (another {name} server?); choose another with {flag}")
    (root / LOG_DIR).mkdir(parents=True, exist_ok=True)
    prefect_url = f"http://{HOST}:{prefect_port}/api"
    mlflow_url = f"http://{HOST}:{mlflow_port}"
    environment = {**os.environ, "PREFECT_HOME": str(root / ".prefect"), "PREFECT_API_URL": prefect_url}
    store = team.object_store(root, objects_port) if postgres_port is not None else None
    stores = _embedded_stores(root) if store is None else _team_stores(root, cast(int, postgres_port), store)
    commands = {} if store is None else {"objects": team.server_command(objects_port)}
    commands |= {
        "prefect": [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(prefect_port)],
        "mlflow": [
            sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(mlflow_port), *stores.mlflow_args
        ],
        "worker": [sys.executable, "-m", "prefect", "worker", "start", "--pool", LOCAL_POOL, "--type", "process"],
    }  # fmt: skip
    urls = {"prefect": prefect_url, "mlflow": mlflow_url, "worker": prefect_url}
    if store is not None:
        urls["objects"] = store.endpoint
    started: list[Service] = []
    try:
        for name in commands:  # the worker needs the Prefect server up, MLflow's server its object store
            service_environment = environment | stores.environment.get(name, {})
            started.append(_start(root, name, commands[name], urls[name], service_environment))
            _write_state(root, started)
            if name != "worker":
                wait_healthy(started[-1], timeout)
            if name == "objects" and store is not None:
                team.load(root, store)
        wait_for_worker(prefect_url, LOCAL_POOL, started[-1], timeout)
        started = [_with_children(service) for service in started]
        _write_state(root, started)
        if store is not None:
            keys = (store.endpoint, store.access_key_id, store.secret_access_key)
            team.publish(root, team.Connection(prefect_url, mlflow_url, team_database(root).url("optuna"), *keys))
    except BaseException:
        _stop(started)
        (root / STATE_FILE).unlink(missing_ok=True)
        raise
    return started


class _Stores(NamedTuple):
    """Where the servers keep their data: the MLflow server's arguments, and environment variables per service
    (a database password goes there rather than on a command line that every user's ``ps`` shows)."""

    mlflow_args: list[str]
    environment: dict[str, dict[str, str]]


def _embedded_stores(root: Path) -> _Stores:
    """The embedded default's stores, so earlier runs stay visible: ``mlflow.db``, ``mlruns/``, ``.prefect/``."""
    return _Stores(
        ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root", str(root / "mlruns")], {}
    )


def _team_stores(root: Path, postgres_port: int, store: team.ObjectStore) -> _Stores:
    """The project's PostgreSQL cluster, started, with a database each for Prefect, MLflow and Optuna, and the
    servers' settings on it and the object store."""
    cluster = Cluster(root / TEAM_DATABASE_DIR, postgres_port)
    cluster.start()
    for database in ("prefect", "mlflow", "optuna"):
        cluster.create_database(database)
    return _Stores(*team.server_settings(cluster, store))


def team_database(root: Path) -> Cluster:
    """The project's PostgreSQL cluster, made by ``up --team`` (its port as last started)."""
    return Cluster.at(Path(root).resolve() / TEAM_DATABASE_DIR)


def down(root: Path, timeout: float = 30.0) -> list[Service]:
    """Stop every process of every service of the stack (SIGTERM, then SIGKILL after ``timeout``), also those a
    crashed service left behind, then the team's PostgreSQL server if it runs; return the services that had
    anything running."""
    root = Path(root).resolve()
    services = [service for service in _read_state(root) if service.processes()]
    objects = next((s for s in services if s.name == "objects" and s.problem() is None), None)
    if objects is not None:  # the store keeps objects in memory only
        team.save(root, team.object_store(root, urllib.parse.urlsplit(objects.url).port or 0))
    _stop(services, timeout)
    (root / STATE_FILE).unlink(missing_ok=True)
    team_database(root).stop()
    team.disconnect(root)
    return services


def status(root: Path) -> list[tuple[Service, bool]]:
    """Each recorded service with whether it is healthy now (running, and its server answering)."""
    return [(service, problem is None) for service, problem in health(root)]


def health(root: Path) -> list[tuple[Service, str | None]]:
    """Each recorded service with why it is not healthy now (see :meth:`Service.problem`), ``None`` when it is."""
    return [(service, service.problem()) for service in _read_state(Path(root).resolve())]


def unhealthy_message(root: Path, problems: list[str]) -> str:
    """The one message for a recorded stack that is not healthy: what is wrong, and what to do."""
    return (
        f"the stack recorded in {Path(root).resolve() / STATE_FILE} is not healthy: {'; '.join(problems)}; "
        "run `lstmflow down` then `lstmflow up`"
    )


def environment(root: Path) -> dict[str, str]:
    """``PREFECT_API_URL`` and ``MLFLOW_TRACKING_URI`` of the project's stack; nothing when no stack is recorded.

    A recorded stack that is not healthy (a service gone, a server not answering, processes left by a crash) is an
    :class:`~lstmflow.errors.LstmflowError` naming it: a command must not quietly use other servers instead.
    """
    root = Path(root).resolve()
    checked = health(root)
    problems = [problem for _, problem in checked if problem]
    if problems:
        raise LstmflowError(unhealthy_message(root, problems))
    services = {service.name: service for service, _ in checked}
    connection = team.read_connection(root)
    if not services and connection is not None:  # a checkout that joined another's team stack
        return {"PREFECT_API_URL": connection.prefect_url, "MLFLOW_TRACKING_URI": connection.mlflow_url}
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
    """Start ``command`` in its own session and with a token of its own (so ``down`` finds its children, also after
    it died), logging to its file."""
    log = root / LOG_DIR / f"{name}.log"
    token = f"{name}-{secrets.token_hex(8)}"
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command, cwd=root, env={**environment, TOKEN_VARIABLE: token}, stdin=subprocess.DEVNULL, stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return Service(name, process.pid, url, str(log), _settled(process.pid), tuple(command), token)


def _with_children(service: Service) -> Service:
    """``service`` with its descendants as they are now recorded: ``down`` finds them even where they left its group
    and its main process died."""
    try:
        children = psutil.Process(service.pid).children(recursive=True) if service.running() else []
    except psutil.Error:
        children = []
    known = []
    for child in children:
        try:
            known.append((child.pid, child.create_time()))
        except psutil.Error:  # exited meanwhile
            pass
    return replace(service, children=tuple(known))


def _group_of(pid: int) -> tuple[int, int]:
    """The process group and session of ``pid``."""
    return os.getpgid(pid), os.getsid(pid)


def _tree(service: Service) -> list[psutil.Process]:
    """The live processes of ``service``'s tree (see the module's docstring)."""
    leader = service.running()
    recorded = dict(service.children)
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter():
        try:
            if process.pid == os.getpid():
                continue
            in_group = service.pid in _group_of(process.pid)
            if (in_group or process.pid in recorded) and _owned(process, service, leader, in_group, recorded):
                found[process.pid] = process
        except (psutil.Error, OSError):  # gone meanwhile, or not ours to read
            continue
    for process in list(found.values()):
        try:
            for child in process.children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.Error:
            continue
    return [process for process in found.values() if not _gone(process)]


def _owned(process: psutil.Process, service: Service, leader: bool, in_group: bool, recorded: dict[int, float]) -> bool:
    """Whether ``process``, found in the service's group or session or among its recorded children, is its own."""
    if process.pid == service.pid:
        return leader  # the recorded PID: only with the recorded start time and command line
    if leader and in_group:
        return True  # a group or session whose leader still runs holds only that leader's processes
    started = recorded.get(process.pid)
    if started is not None and abs(process.create_time() - started) <= START_TIME_SLACK:
        return True
    return bool(service.token) and process.environ().get(TOKEN_VARIABLE) == service.token


def _gone(process: psutil.Process) -> bool:
    """Whether ``process`` has exited; collects it if it is our exited child (else it would linger as a zombie)."""
    try:
        if process.status() != psutil.STATUS_ZOMBIE:
            return not process.is_running()
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False
    try:
        os.waitpid(process.pid, os.WNOHANG)
    except ChildProcessError:  # not our child: its parent collects it
        pass
    return True


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


def _stop(services: list[Service], timeout: float = 30.0) -> None:
    """SIGTERM every process of each service's tree, then SIGKILL what is left after ``timeout``.

    The trees are found again before SIGKILL: a process that the dying ones started meanwhile goes too.
    """
    targets = [process for service in reversed(services) for process in service.processes()]  # the worker first
    _signal(targets, signal.SIGTERM)
    _wait_gone(targets, timeout)
    for _ in range(3):
        left = {process.pid: process for process in targets if not _gone(process)}
        left.update((process.pid, process) for service in services for process in service.processes())
        if not left:
            return
        targets = list(left.values())
        _signal(targets, signal.SIGKILL)
        _wait_gone(targets, KILL_WAIT)


def _signal(processes: list[psutil.Process], signum: int) -> None:
    for process in processes:
        try:
            process.send_signal(signum)  # psutil checks that the PID still names the same process
        except psutil.Error:
            pass


def _wait_gone(processes: list[psutil.Process], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(_gone(process) for process in processes) and time.monotonic() < deadline:
        time.sleep(0.1)


def _read_state(root: Path) -> list[Service]:
    path = root / STATE_FILE
    if not path.exists():
        return []
    try:
        return _parse_state(path.read_text())
    except (ValueError, TypeError, AttributeError) as exc:
        raise LstmflowError(
            f"{path} is not a stack record lstmflow wrote ({exc}); stop what it started yourself, then delete it"
        ) from None


def _parse_state(text: str) -> list[Service]:
    return [
        Service(
            **{
                **entry,
                "command": tuple(entry.get("command", ())),
                "children": tuple((int(pid), float(started)) for pid, started in entry.get("children", ())),
            }
        )
        for entry in json.loads(text)
    ]


def _write_state(root: Path, services: list[Service]) -> None:
    path = root / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(service) for service in services], indent=2))
    os.replace(tmp, path)
