"""The local stack as `lstmflow up` starts it: real Prefect and MLflow servers and a worker on 127.0.0.1.

The whole life of a stack (up, status, a run through it, the UIs, down) is one test in test_browser.py: each start of
the servers costs about 20 s.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from lstmflow.errors import ConfigError
from lstmflow.ops import stack

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
