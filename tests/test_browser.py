"""The UIs as a user sees them: headless Chromium opens the Prefect and MLflow UIs of `lstmflow up` after a run.

The stack starts on free loopback ports in a tiny project, a pipeline runs through it from the command line, and
Chromium renders the Prefect UI's flow runs page and the MLflow UI's runs of the pipeline's experiment: the flow
run's and the MLflow run's names must be in the rendered page. Screenshots stay in tests/output/browser/.
"""

from __future__ import annotations

import json
import shutil
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


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
def test_prefect_and_mlflow_uis_show_the_flow_run_and_the_mlflow_run(tmp_path: Path) -> None:
    from lstmflow import stack

    root = make_project(tmp_path / "project")
    prefect_port, mlflow_port = free_port(), free_port()
    stack.up(root, prefect_port=prefect_port, mlflow_port=mlflow_port)
    try:
        run = subprocess.run(
            [str(Path(sys.executable).parent / "lstmflow"), "run", "tiny", "--json"], cwd=root, capture_output=True, text=True, timeout=600
        )
        assert run.returncode == 0, run.stderr[-3000:]
        result = json.loads(run.stdout.splitlines()[-1])
        prefect, mlflow = f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}"
        flow_run_name = get_json(f"{prefect}/api/flow_runs/{result['flow_run_id']}")["name"]
        mlflow_run_name = get_json(f"{mlflow}/api/2.0/mlflow/runs/get?run_id={result['mlflow_run_id']}")["run"]["info"]["run_name"]
        query = urllib.parse.urlencode({"experiment_name": "tiny"})
        experiment_id = get_json(f"{mlflow}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]["experiment_id"]

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
        stack.down(root)
    assert stack.status(root) == []
