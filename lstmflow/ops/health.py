"""Whether the stack's servers answer: the health check of each kind of service, and the waits of ``lstmflow up``
until a server answers or the worker has joined its work pool (see :mod:`lstmflow.ops.stack`)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

from lstmflow.errors import LstmflowError


class Server(Protocol):
    """What the checks read of a stack service."""

    @property
    def name(self) -> str: ...

    @property
    def url(self) -> str: ...

    @property
    def log(self) -> str: ...

    def running(self) -> bool: ...


def health_url(service: Server) -> str:
    if service.name == "objects":
        return f"{service.url}/"  # S3's list of buckets
    return f"{service.url}/health"  # Prefect: /api/health; MLflow: /health


def healthy(service: Server, timeout: float = 2.0) -> bool:
    if service.name == "worker":
        return True  # no endpoint of its own: alive is all it can say
    try:
        with urllib.request.urlopen(health_url(service), timeout=timeout) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_healthy(service: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.running():
            raise LstmflowError(f"the {service.name} server exited while starting{log_tail(service)}")
        if healthy(service):
            return
        time.sleep(0.5)
    raise LstmflowError(
        f"the {service.name} server did not answer {health_url(service)} within {timeout:.0f} s{log_tail(service)}"
    )


def wait_for_worker(prefect_url: str, pool: str, worker: Server, timeout: float) -> None:
    """Wait until the worker has registered with the server (the work ``pool`` then lists it)."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(
        f"{prefect_url}/work_pools/{pool}/workers/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
    )
    while time.monotonic() < deadline:
        if not worker.running():
            raise LstmflowError(f"the worker exited while starting{log_tail(worker)}")
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                if json.loads(answer.read()):
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise LstmflowError(
        f"the worker did not register with the work pool {pool!r} within {timeout:.0f} s{log_tail(worker)}"
    )


def log_tail(service: Server, lines: int = 20) -> str:
    path = Path(service.log)
    if not path.exists():
        return ""
    tail = path.read_text(errors="replace").splitlines()[-lines:]
    return f"; last lines of {path}:\n" + "\n".join(tail)
