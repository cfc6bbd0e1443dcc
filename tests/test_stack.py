"""The local stack as `lstmflow up` starts it: real Prefect and MLflow servers and a worker on 127.0.0.1.

The whole life of a stack (up, status, a run through it, the UIs, down) is one test in test_browser.py: each start of
the servers costs about 20 s or more. Here: what `up` refuses before starting anything, what `down` signals (process
trees of `sh` and `sleep`, as `up` starts a service: in its own session, with its token in the environment), what
`status` and the commands say about a stack that is not healthy, and one slow test of a real stack after `kill -9` of
the MLflow server.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from conftest import free_port, make_project, run_lstmflow, wait_for

from lstmflow.errors import ConfigError, LstmflowError
from lstmflow.ops import stack


def test_a_busy_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(
            ConfigError,
            match=rf"port {port} on 127.0.0.1 is busy \(another MLflow server\?\); choose another with --mlflow-port",
        ):
            stack.up(tmp_path, prefect_port=free_port(), mlflow_port=port)
    assert not (tmp_path / ".lstmflow" / "stack.json").exists()


# ------------------------------------------------------------------------- which recorded processes `down` signals


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own session, as `up` starts a service; killed at the end whatever the test did."""
    process = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def recorded(process: subprocess.Popen[bytes]) -> stack.Service:
    """The service entry `up` would have written for ``process``."""
    started = stack._settled(process.pid)
    return stack.Service("mlflow", process.pid, "http://127.0.0.1:1", "mlflow.log", started, ("sleep", "120"))


#: Entries that name the sleeper's PID but not the sleeper: what a state file says once another process has the PID.
STRANGERS = {
    "another start time": lambda service: dataclasses.replace(service, started=service.started - 3600),
    "another command": lambda service: dataclasses.replace(service, command=("python", "-m", "mlflow", "server")),
    "no identity (an older state file)": lambda service: stack.Service(
        service.name, service.pid, service.url, service.log
    ),
}


@pytest.mark.parametrize("stranger_of", list(STRANGERS.values()), ids=list(STRANGERS))
def test_down_never_signals_a_recorded_pid_that_another_process_now_holds(
    tmp_path: Path, sleeper: subprocess.Popen[bytes], stranger_of: Callable[[stack.Service], stack.Service]
) -> None:
    stranger = stranger_of(recorded(sleeper))
    stack._write_state(tmp_path, [stranger])
    assert not stranger.running() and stack.status(tmp_path) == [(stranger, False)]
    assert stack.down(tmp_path, timeout=2) == [], "not the recorded service: nothing to stop"
    assert sleeper.poll() is None, "the process that holds the PID now was left alone"
    assert not (tmp_path / stack.STATE_FILE).exists()


def test_down_stops_a_recorded_service_that_is_still_the_same_process(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    service = recorded(sleeper)
    stack._write_state(tmp_path, [service])
    assert stack._read_state(tmp_path) == [service] and service.running()
    assert stack.down(tmp_path, timeout=5) == [service]
    sleeper.wait(timeout=5)  # gone: `down` signalled its process group (and collected it, its child here)
    assert not service.running()


# ------------------------------------------------------------------- process trees: what `down` stops, and when


class Trees:
    """Starts process trees as `up` starts a service, and kills at the end whatever of them a test left running."""

    def __init__(self) -> None:
        self.started: list[psutil.Process] = []

    def start(
        self, script: str, children: int, token: str = "svc-test-token"
    ) -> tuple[subprocess.Popen[bytes], stack.Service]:
        """``sh -c script`` in its own session with ``token``; returns once it has ``children`` descendants."""
        command = ["sh", "-c", script]
        leader = subprocess.Popen(
            command, start_new_session=True, env={**os.environ, stack.TOKEN_VARIABLE: token}
        )  # fmt: skip
        self.started.append(psutil.Process(leader.pid))
        deadline = time.monotonic() + 30
        while len(psutil.Process(leader.pid).children(recursive=True)) < children:
            assert time.monotonic() < deadline, f"{script!r} did not start {children} children"
            time.sleep(0.05)
        self.started += psutil.Process(leader.pid).children(recursive=True)
        service = stack.Service(
            "mlflow", leader.pid, "http://127.0.0.1:1", "mlflow.log", stack._settled(leader.pid), tuple(command), token
        )
        return leader, service

    def alive(self) -> list[psutil.Process]:
        return [process for process in self.started if not stack._gone(process)]


@pytest.fixture
def trees() -> Iterator[Trees]:
    made = Trees()
    yield made
    for process in made.alive():
        process.kill()


def kill_leader(leader: subprocess.Popen[bytes]) -> None:
    """``kill -9`` of a service's main process, as a crash or the OOM killer ends it; its children live on."""
    leader.send_signal(signal.SIGKILL)
    leader.wait(timeout=10)


TWO_SLEEPERS = "sleep 300 & sleep 300 & wait"


def test_down_stops_what_a_killed_service_left_behind(tmp_path: Path, trees: Trees) -> None:
    leader, service = trees.start(TWO_SLEEPERS, children=2)
    orphans = psutil.Process(leader.pid).children()
    stack._write_state(tmp_path, [service])
    kill_leader(leader)
    assert not service.running() and sorted(p.pid for p in service.processes()) == sorted(p.pid for p in orphans)
    pids = ", ".join(str(p.pid) for p in service.processes())
    problem = f"the mlflow process (pid {leader.pid}) is gone but 2 of its processes still run (pid {pids})"
    assert stack.health(tmp_path) == [(service, problem)]
    with pytest.raises(LstmflowError, match=r"is not healthy: the mlflow process .* is gone but 2 of its processes"):
        stack.environment(tmp_path)
    with pytest.raises(LstmflowError, match=r"run `lstmflow down` then `lstmflow up`"):
        stack.up(tmp_path, prefect_port=free_port(), mlflow_port=free_port())  # refused before anything starts
    assert not (tmp_path / stack.LOG_DIR).exists()

    assert stack.down(tmp_path, timeout=5) == [service]
    assert trees.alive() == [] and service.processes() == []
    assert not (tmp_path / stack.STATE_FILE).exists() and stack.environment(tmp_path) == {}


def test_down_leaves_a_process_of_a_dead_services_group_that_is_not_its_own(tmp_path: Path, trees: Trees) -> None:
    """With the main process gone, a process of its group must prove to be the service's: the token or the record."""
    script = f"env -u {stack.TOKEN_VARIABLE} sleep 300 & sleep 300 & wait"
    leader, service = trees.start(script, children=2)
    stranger, own = sorted(psutil.Process(leader.pid).children(), key=lambda p: stack.TOKEN_VARIABLE in p.environ())
    stack._write_state(tmp_path, [service])
    kill_leader(leader)
    assert stack.down(tmp_path, timeout=5) == [service]
    assert stack._gone(own) and not stack._gone(stranger), "only the process with the service's token was signalled"


def test_down_stops_the_whole_group_of_a_service_that_still_runs(tmp_path: Path, trees: Trees) -> None:
    """While the main process runs, its group and session are the service's, with or without the token."""
    leader, service = trees.start(f"env -u {stack.TOKEN_VARIABLE} sleep 300 & sleep 300 & wait", children=2)
    stack._write_state(tmp_path, [service])
    assert len(service.processes()) == 3
    assert stack.down(tmp_path, timeout=5) == [service]
    assert trees.alive() == [] and leader.poll() is not None


def test_down_kills_what_ignores_sigterm_after_the_grace_period(tmp_path: Path, trees: Trees) -> None:
    _, service = trees.start("trap '' TERM; sleep 300 & sleep 300 & wait", children=2)
    stack._write_state(tmp_path, [service])
    began = time.monotonic()
    assert stack.down(tmp_path, timeout=1) == [service]
    assert trees.alive() == [] and time.monotonic() - began < 1 + stack.KILL_WAIT


def test_down_finds_a_recorded_child_that_left_the_group(tmp_path: Path, trees: Trees) -> None:
    """A child in a session of its own and without the token is the service's by the record `up` wrote."""
    leader, service = trees.start(f"env -u {stack.TOKEN_VARIABLE} setsid sleep 300 & wait", children=1)
    (child,) = psutil.Process(leader.pid).children()
    # the child exists as the forked shell a moment before it runs setsid: wait for its session of its own
    wait_for(lambda: os.getsid(child.pid) != leader.pid, "the child to leave the leader's session", seconds=30)
    service = stack._with_children(service)
    assert service.children == ((child.pid, child.create_time()),)
    stack._write_state(tmp_path, [service])
    assert stack._read_state(tmp_path) == [service]
    kill_leader(leader)
    assert [p.pid for p in service.processes()] == [child.pid]
    assert stack.down(tmp_path, timeout=5) == [service] and trees.alive() == []


def test_a_recorded_child_whose_pid_another_process_holds_is_left_alone(tmp_path: Path, trees: Trees) -> None:
    leader, service = trees.start(f"env -u {stack.TOKEN_VARIABLE} setsid sleep 300 & wait", children=1)
    (child,) = psutil.Process(leader.pid).children()
    service = dataclasses.replace(service, children=((child.pid, child.create_time() - 3600),))
    stack._write_state(tmp_path, [service])
    kill_leader(leader)
    assert service.processes() == [] and stack.down(tmp_path, timeout=5) == [] and not stack._gone(child)


def test_a_state_file_lstmflow_did_not_write_is_named(tmp_path: Path) -> None:
    (tmp_path / stack.STATE_FILE).parent.mkdir()
    (tmp_path / stack.STATE_FILE).write_text("{not json")
    with pytest.raises(LstmflowError, match=r"stack.json is not a stack record lstmflow wrote"):
        stack.environment(tmp_path)


def test_servers_given_in_the_environment_skip_the_stack(
    tmp_path: Path, trees: Trees, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With both servers set by the user, the stack's state does not matter; with one missing it must be healthy."""
    from lstmflow.cli import configure_environment

    _, service = trees.start(TWO_SLEEPERS, children=2)
    stack._write_state(tmp_path, [service])  # its "server" does not answer
    monkeypatch.setattr(os, "environ", dict(os.environ))
    os.environ.update(PREFECT_API_URL="http://127.0.0.1:9/api", MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    configure_environment(tmp_path)
    del os.environ["MLFLOW_TRACKING_URI"]
    with pytest.raises(LstmflowError, match=r"is not healthy: mlflow does not answer on 127\.0\.0\.1:1;"):
        configure_environment(tmp_path)


# ----------------------------------------------------------------------- the commands with an unhealthy stack


def test_status_and_every_command_refuse_an_unhealthy_stack_until_down(tmp_path: Path, trees: Trees) -> None:
    """`status` exits 1 naming what is wrong; `run`, `validate` and `up` stop with the same message; `down` cleans."""
    root = make_project(tmp_path / "project")
    port = free_port()
    _, service = trees.start(TWO_SLEEPERS, children=2)
    service = dataclasses.replace(service, url=f"http://127.0.0.1:{port}")
    stack._write_state(root, [service])
    message = (
        f"error: the stack recorded in {root / stack.STATE_FILE} is not healthy: mlflow does not answer on "
        f"127.0.0.1:{port}; run `lstmflow down` then `lstmflow up`"
    )
    status = run_lstmflow(root, "status", timeout=120)
    assert status.returncode == 1 and "mlflow" in status.stdout and "no" in status.stdout
    assert status.stderr.strip() == message
    for command in (["run", "tiny"], ["validate"], ["up", "--mlflow-port", str(free_port())]):
        refused = run_lstmflow(root, *command, timeout=120)
        assert (refused.returncode, refused.stderr.strip()) == (1, message), command
        assert "Traceback" not in refused.stdout + refused.stderr
    assert not (root / "mlruns").exists() and not (root / "runs").exists(), "nothing ran"
    down = run_lstmflow(root, "down", timeout=120)
    assert (down.returncode, down.stdout.strip()) == (0, "stopped mlflow") and trees.alive() == []
    assert run_lstmflow(root, "status", timeout=120).stdout.strip() == "the stack is down (start it with `lstmflow up`)"


# ------------------------------------------------------------------------------- a real stack after a crash


def listening(port: int) -> bool:
    return not stack._port_free(port)


@pytest.mark.slow
def test_a_real_stack_after_kill_9_of_the_mlflow_server(tmp_path: Path) -> None:
    """`kill -9` of the MLflow server leaves its workers on the port: `status` exits 1, `run` is refused, `down`
    stops every process the stack started, and `up` starts again on the same ports."""
    root = make_project(tmp_path / "project")
    ports = free_port(), free_port()
    flags = ("--prefect-port", str(ports[0]), "--mlflow-port", str(ports[1]))
    recorded: list[psutil.Process] = []
    try:
        up = run_lstmflow(root, "up", *flags, timeout=600)
        assert up.returncode == 0, up.stderr[-3000:]
        services = {service.name: service for service in stack._read_state(root)}
        recorded = [process for service in services.values() for process in service.processes()]
        mlflow = services["mlflow"]
        assert len(mlflow.processes()) > 1, "the MLflow server runs workers"
        os.kill(mlflow.pid, signal.SIGKILL)
        time.sleep(1)
        assert listening(ports[1]), "its workers still hold the port"

        status = run_lstmflow(root, "status", timeout=120)
        assert status.returncode == 1, status.stdout + status.stderr
        assert f"is not healthy: the mlflow process (pid {mlflow.pid}) is gone but" in status.stderr
        refused = run_lstmflow(root, "run", "tiny", timeout=120)
        assert refused.returncode == 1 and "Traceback" not in refused.stdout + refused.stderr
        assert refused.stderr.startswith(f"error: the stack recorded in {root / stack.STATE_FILE} is not healthy")
        assert refused.stderr.strip().endswith("run `lstmflow down` then `lstmflow up`")

        down = run_lstmflow(root, "down", timeout=300)
        assert (down.returncode, down.stdout.strip()) == (0, "stopped prefect, mlflow, worker"), down.stderr
        assert [p.pid for p in recorded if not stack._gone(p)] == [] and not any(map(listening, ports))

        again = run_lstmflow(root, "up", *flags, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert run_lstmflow(root, "status", timeout=120).returncode == 0
    finally:
        recorded += [process for service in stack._read_state(root) for process in service.processes()]
        run_lstmflow(root, "down", timeout=300)
        for process in recorded:
            if not stack._gone(process):
                process.kill()
    assert not any(map(listening, ports))
    assert not (root / stack.STATE_FILE).exists()
