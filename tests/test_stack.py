"""The local stack as `lstmflow up` starts it: real Prefect and MLflow servers and a worker on 127.0.0.1.

The whole life of a stack (up, status, a run through it, the UIs, down) is one test in test_browser.py: each start of
the servers costs about 20 s. Here: what `up` refuses before starting anything, and what `down` signals.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import free_port

from lstmflow.errors import ConfigError
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
