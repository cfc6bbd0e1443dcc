"""The stack and its UIs as a user sees them: `lstmflow up`, a run through its servers, headless Chromium on the
Prefect and MLflow UIs, `lstmflow down`.

The stack starts on free loopback ports in a tiny project, a pipeline runs through it from the command line, and
Chromium renders the Prefect UI's flow runs page and the MLflow UI's runs of the pipeline's experiment: the flow
run's and the MLflow run's names must be in the rendered page. Screenshots stay in tests/output/browser/. One test
for the whole life of a stack, since each start of the servers costs about 20 s; without Chromium the UI part is
skipped and the rest still runs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, make_project
from test_stack import free_port

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
             f"--user-data-dir={profile}", f"--virtual-time-budget={budget}", f"--screenshot={screenshot}", "--dump-dom", url],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        dom = done.stdout
        if wanted in dom:
            break
    return dom


def lstmflow(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "lstmflow"), *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_stack_serves_a_run_to_the_uis_and_down_leaves_nothing_running(tmp_path: Path) -> None:
    """`lstmflow up`, `status`, a run through the servers, both UIs showing it in Chromium, `lstmflow down`."""
    from lstmflow.cli import configure_environment
    from lstmflow.errors import ConfigError
    from lstmflow.ops import stack

    root = make_project(tmp_path / "project")
    prefect_port, mlflow_port = free_port(), free_port()
    prefect, mlflow = f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}"
    up = lstmflow(root, "up", "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port))
    services = stack.status(root)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        assert prefect in up.stdout and mlflow in up.stdout
        assert [service.name for service, _ in services] == ["prefect", "mlflow", "worker"]
        assert lstmflow(root, "status", timeout=60).stdout.count("yes") == 3
        assert (root / ".prefect").is_dir() and (root / "mlflow.db").exists(), "the stores live in the project"
        with pytest.raises(ConfigError, match="is already up"):
            stack.up(root, prefect_port=free_port(), mlflow_port=free_port())
        saved = dict(os.environ)
        try:
            for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
                os.environ.pop(key, None)
            configure_environment(root)
            assert (os.environ["PREFECT_API_URL"], os.environ["MLFLOW_TRACKING_URI"]) == (f"{prefect}/api", mlflow)
        finally:
            os.environ.clear()
            os.environ.update(saved)

        run = lstmflow(root, "run", "tiny", "--json", "--set", "train.epochs=2", timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        result = json.loads(run.stdout.splitlines()[-1])
        assert {"pipeline", "mlflow_run_id", "model_uri", "data_version", "metrics", "gate"} <= set(result)
        assert result["pipeline"] == "tiny" and result["epochs_run"] == 2 and result["metrics"]["naive_mae"] > 0
        # the run went through the servers: both know it
        flow_run_name = get_json(f"{prefect}/api/flow_runs/{result['flow_run_id']}")["name"]
        mlflow_run_name = get_json(f"{mlflow}/api/2.0/mlflow/runs/get?run_id={result['mlflow_run_id']}")["run"]["info"][
            "run_name"
        ]
        query = urllib.parse.urlencode({"experiment_name": "tiny"})
        experiment_id = get_json(f"{mlflow}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"][
            "experiment_id"
        ]

        if CHROMIUM is None:
            pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        pages = {
            "prefect-flow-runs.png": (f"{prefect}/runs", flow_run_name),
            "mlflow-experiment-runs.png": (f"{mlflow}/#/experiments/{experiment_id}/runs", mlflow_run_name),
        }
        for file_name, (url, wanted) in pages.items():
            dom = render(url, SCREENSHOTS / file_name, wanted, tmp_path / "chromium")
            print(f"screenshot of {url}: {SCREENSHOTS / file_name}")
            assert wanted in dom, f"{wanted!r} is not on {url} as rendered (see {SCREENSHOTS / file_name})"
            assert (SCREENSHOTS / file_name).stat().st_size > 10_000, "a blank page would be a few KB"
    finally:
        down = lstmflow(root, "down", timeout=120)
    assert down.returncode == 0 and "stopped prefect, mlflow, worker" in down.stdout
    assert not any(service.running() for service, _ in services)
    assert "the stack is down" in lstmflow(root, "status", timeout=60).stdout and stack.environment(root) == {}
    for port in (prefect_port, mlflow_port):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))  # nothing listens there any more
