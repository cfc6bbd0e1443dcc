"""The stack and its UIs as a user sees them: `lstmflow up`, a run through its servers, headless Chromium on the
Prefect and MLflow UIs, `lstmflow down`.

The stack starts on free loopback ports in a tiny project, a pipeline runs through it from the command line, and
Chromium renders the Prefect UI's flow runs page and the MLflow UI's runs of the pipeline's experiment: the flow
run's and the MLflow run's names must be in the rendered page. Screenshots stay in tests/output/browser/. One test
stack for the module, since each start of the servers costs about 20 s: its life test always runs, and its teardown
stops it and checks that nothing is left listening; the UI test alone skips when Chromium is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, free_port, make_project, run_lstmflow

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
SCREENSHOTS = REPO / "tests" / "output" / "browser"
#: Virtual milliseconds each attempt gives the single-page apps to fetch and render; doubled on each retry, since
#: a busy machine can answer the UIs' API calls after the first budget is spent.
BUDGETS_MS = (30_000, 60_000, 120_000)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())


def render(url: str, screenshot: Path, wanted: str, profile: Path) -> str:
    """The DOM of ``url`` once Chromium has rendered it with ``wanted`` in it (or after the last budget)."""
    dom = ""
    for budget in BUDGETS_MS:
        print(f"rendering {url} with {budget} ms of virtual time")
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1600,1200",
             f"--user-data-dir={profile}", f"--virtual-time-budget={budget}", f"--screenshot={screenshot}",
             "--dump-dom", url],
            check=False, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        dom = done.stdout
        if wanted in dom:
            break
    return dom


@dataclass(frozen=True)
class Stack:
    """A stack that is up in a tiny project, and the `run --json` result of a run made through it."""

    root: Path
    prefect: str
    mlflow: str
    up: subprocess.CompletedProcess[str]
    run: subprocess.CompletedProcess[str]

    @property
    def result(self) -> dict[str, Any]:
        return json.loads(self.run.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def stack_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`lstmflow up` on free ports and one run through it; on teardown `lstmflow down`, and nothing left listening."""
    from lstmflow.ops import stack

    root = make_project(tmp_path_factory.mktemp("stack") / "project")
    prefect_port, mlflow_port = free_port(), free_port()
    up = run_lstmflow(root, "up", "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port))
    services = stack.status(root)
    try:
        run = run_lstmflow(root, "run", "tiny", "--json", "--set", "train.epochs=2", timeout=600)
        yield Stack(root, f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}", up, run)
    finally:
        down = run_lstmflow(root, "down", timeout=120)
    assert down.returncode == 0 and "stopped prefect, mlflow, worker" in down.stdout, down.stdout + down.stderr
    assert not any(service.running() for service, _ in services)
    assert "the stack is down" in run_lstmflow(root, "status", timeout=60).stdout and stack.environment(root) == {}
    for port in (prefect_port, mlflow_port):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))  # nothing listens there any more


def test_the_stack_runs_a_pipeline_through_its_servers(stack_up: Stack) -> None:
    """`lstmflow up`, `status`, "already up", the environment, and a `run --json` that both servers know."""
    from lstmflow.cli import configure_environment
    from lstmflow.errors import ConfigError
    from lstmflow.ops import stack

    root = stack_up.root
    assert stack_up.up.returncode == 0, stack_up.up.stderr[-3000:]
    assert stack_up.prefect in stack_up.up.stdout and stack_up.mlflow in stack_up.up.stdout
    assert [service.name for service, _ in stack.status(root)] == ["prefect", "mlflow", "worker"]
    assert run_lstmflow(root, "status", timeout=60).stdout.count("yes") == 3
    assert (root / ".prefect").is_dir() and (root / "mlflow.db").exists(), "the stores live in the project"
    with pytest.raises(ConfigError, match="is already up"):
        stack.up(root, prefect_port=free_port(), mlflow_port=free_port())
    saved = dict(os.environ)
    try:
        for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
            os.environ.pop(key, None)
        configure_environment(root)
        assert (os.environ["PREFECT_API_URL"], os.environ["MLFLOW_TRACKING_URI"]) == (
            f"{stack_up.prefect}/api",
            stack_up.mlflow,
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)

    assert stack_up.run.returncode == 0, stack_up.run.stderr[-3000:]
    result = stack_up.result
    assert {"pipeline", "mlflow_run_id", "model_uri", "data_version", "metrics", "gate"} <= set(result)
    assert result["pipeline"] == "tiny" and result["epochs_run"] == 2 and result["metrics"]["naive_mae"] > 0
    # the run went through the servers: both know it
    assert get_json(f"{stack_up.prefect}/api/flow_runs/{result['flow_run_id']}")["name"]
    run_info = get_json(f"{stack_up.mlflow}/api/2.0/mlflow/runs/get?run_id={result['mlflow_run_id']}")["run"]["info"]
    assert run_info["run_name"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is missing (.ci/run installs it with apt-get)")
def test_both_uis_show_the_run_in_chromium(stack_up: Stack, tmp_path: Path) -> None:
    """The Prefect UI's flow runs page and the MLflow UI's runs page, rendered headless, name the run."""
    assert CHROMIUM is not None and stack_up.run.returncode == 0, stack_up.run.stderr[-3000:]
    result = stack_up.result
    flow_run_name = get_json(f"{stack_up.prefect}/api/flow_runs/{result['flow_run_id']}")["name"]
    run_info = get_json(f"{stack_up.mlflow}/api/2.0/mlflow/runs/get?run_id={result['mlflow_run_id']}")["run"]["info"]
    query = urllib.parse.urlencode({"experiment_name": "tiny"})
    experiment = get_json(f"{stack_up.mlflow}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pages = {
        "prefect-flow-runs.png": (f"{stack_up.prefect}/runs", flow_run_name),
        "mlflow-experiment-runs.png": (
            f"{stack_up.mlflow}/#/experiments/{experiment['experiment_id']}/runs",
            run_info["run_name"],
        ),
    }
    for file_name, (url, wanted) in pages.items():
        dom = render(url, SCREENSHOTS / file_name, wanted, tmp_path / "chromium")
        print(f"screenshot of {url}: {SCREENSHOTS / file_name}")
        assert wanted in dom, f"{wanted!r} is not on {url} as rendered (see {SCREENSHOTS / file_name})"
        assert (SCREENSHOTS / file_name).stat().st_size > 10_000, "a blank page would be a few KB"
