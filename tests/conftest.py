"""Shared fixtures. The environment is set before anything imports Prefect, MLflow or torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

_STATE = Path(tempfile.mkdtemp(prefix="lstmflow-tests-"))
os.environ.update(
    OMP_NUM_THREADS="1",
    PREFECT_HOME=str(_STATE / "prefect"),
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    DO_NOT_TRACK="true",
    MLFLOW_DISABLE_TELEMETRY="true",
    DVC_NO_ANALYTICS="1",
    GIT_AUTHOR_NAME="lstmflow tests",
    GIT_AUTHOR_EMAIL="tests@lstmflow.invalid",
    GIT_COMMITTER_NAME="lstmflow tests",
    GIT_COMMITTER_EMAIL="tests@lstmflow.invalid",
)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A real, temporary Prefect API for the flow tests (about 15 s, once per session)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def write_sine_csv(path: Path, rows: int = 240, season: int = 12, seed: int = 0) -> Path:
    """A small real series: a seasonal sine with a slow trend and noise, indexed by month."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    values = 10 + 0.02 * t + 3 * np.sin(2 * np.pi * t / season) + rng.normal(0, 0.3, rows)
    dates = np.datetime64("2000-01") + t.astype("timedelta64[M]")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("month,value\n" + "".join(f"{d},{v:.4f}\n" for d, v in zip(dates, values)))
    return path


def prepare_pipeline_features(spec, out_dir: Path) -> None:  # noqa: ANN001 - a PipelineSpec
    """The features stage's work for one resolved pipeline, without DVC."""
    from lstmflow.data.timeseries import prepare_features

    prepare_features(spec.data, spec.evaluate.season, out_dir, where=f"pipelines.{spec.name}.data")


TINY_PIPELINES = """\
defaults:
  train: {epochs: 3, batch_size: 16, early_stopping: {patience: 5}, seed: 0}
pipelines:
  tiny:
    data: {path: data/tiny.csv, time_column: month, target: value, window: 24, horizon: 6, transform: none}
    model:
      layers:
        - lstm: {units: 8}
        - dense: {}
    evaluate: {season: 12}
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def make_project(root: Path, pipelines: str = TINY_PIPELINES) -> Path:
    """A real project: a git repository with pipelines.yaml, the repo's dvc.yaml and .gitignore, and a small CSV."""
    root.mkdir(parents=True)
    (root / "pipelines.yaml").write_text(pipelines)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    write_sine_csv(root / "data" / "tiny.csv")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "tiny project")
    return root


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")
