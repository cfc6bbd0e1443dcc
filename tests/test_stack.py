"""The local stack as `lstmflow up` starts it: real Prefect and MLflow servers and a worker on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from pathlib import Path

import pytest

from lstmflow import stack
from lstmflow.errors import ConfigError

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_up_starts_healthy_servers_on_loopback_and_down_leaves_nothing_running(tmp_path: Path) -> None:
    prefect_port, mlflow_port = free_port(), free_port()
    services = stack.up(tmp_path, prefect_port=prefect_port, mlflow_port=mlflow_port)
    try:
        assert [s.name for s in services] == ["prefect", "mlflow", "worker"]
        assert all(healthy for _, healthy in stack.status(tmp_path))
        assert stack.environment(tmp_path) == {
            "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        }
        with urllib.request.urlopen(f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/experiments/search?max_results=5") as answer:
            assert "experiments" in json.loads(answer.read())
        assert (tmp_path / ".prefect").is_dir() and (tmp_path / "mlflow.db").exists(), "the stores live in the project"
        with pytest.raises(ConfigError, match="is already up"):
            stack.up(tmp_path, prefect_port=free_port(), mlflow_port=free_port())
    finally:
        stopped = stack.down(tmp_path)
    assert {s.name for s in stopped} == {"prefect", "mlflow", "worker"}
    assert not any(service.running() for service in services)
    assert stack.environment(tmp_path) == {} and stack.status(tmp_path) == []
    for port in (prefect_port, mlflow_port):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))  # nothing listens there any more


def test_a_busy_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"port {port} on 127.0.0.1 is busy \(another MLflow server\?\); choose another with --mlflow-port"):
            stack.up(tmp_path, prefect_port=free_port(), mlflow_port=port)
    assert not (tmp_path / ".lstmflow" / "stack.json").exists()


def test_up_status_down_from_the_command_line_and_commands_use_the_servers(tiny_project: Path) -> None:
    import subprocess
    import sys

    from lstmflow.cli import configure_environment

    binary = str(Path(sys.executable).parent / "lstmflow")
    ports = [str(free_port()), str(free_port())]
    done = subprocess.run([binary, "up", "--prefect-port", ports[0], "--mlflow-port", ports[1]], cwd=tiny_project, capture_output=True, text=True, timeout=300)
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"http://127.0.0.1:{ports[0]}" in done.stdout and f"http://127.0.0.1:{ports[1]}" in done.stdout
        status = subprocess.run([binary, "status"], cwd=tiny_project, capture_output=True, text=True, timeout=60)
        assert status.stdout.count("yes") == 3, status.stdout
        saved = dict(os.environ)
        try:
            for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
                os.environ.pop(key, None)
            configure_environment(tiny_project)
            assert os.environ["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{ports[1]}"
            assert os.environ["PREFECT_API_URL"] == f"http://127.0.0.1:{ports[0]}/api"
        finally:
            os.environ.clear()
            os.environ.update(saved)
    finally:
        down = subprocess.run([binary, "down"], cwd=tiny_project, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and "stopped prefect, mlflow, worker" in down.stdout
    assert "the stack is down" in subprocess.run([binary, "status"], cwd=tiny_project, capture_output=True, text=True).stdout
