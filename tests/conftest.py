"""Shared fixtures. The environment is set before anything imports Prefect, MLflow or torch."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A real, temporary Prefect API for the flow tests (about 15 s, once per session)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def free_port() -> int:
    """A loopback port that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], Any], what: str, seconds: float = 240) -> Any:
    """``condition()``'s first true value; a guard against hanging, not a measure: a test fails on it only when the
    awaited thing never happens."""
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)
    return found


def postgres_reachable_folder(prefix: str) -> Path:
    """A new folder under /tmp that the PostgreSQL server may pass through: as root it runs as 'postgres', which
    cannot enter root's 0700 pytest folders."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o711)
    return folder


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A real PostgreSQL cluster of the team stack's kind (lstmflow.ops.postgres), on a free loopback port."""
    from lstmflow.ops.postgres import Cluster

    folder = postgres_reachable_folder("lstmflow-pg-")
    started = Cluster(folder / "cluster", free_port())
    started.start()
    try:
        yield started
    finally:
        started.stop()
        shutil.rmtree(folder)


def load_state(path: str | Path) -> dict[str, Any]:
    """A state dict or checkpoint saved by training, loaded on the CPU without unpickling code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def without_timing(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """A training history without its wall-clock entries, which differ between two identical runs."""
    return [{key: value for key, value in row.items() if key != "epoch_seconds"} for row in history]


class FailingAt:
    """A metric logger that fails the run when asked to log epoch ``step``, after the checkpoints of the epochs and
    batches before it: a crash at a known point, for the resume tests."""

    def __init__(self, step: int) -> None:
        self.step = step

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step == self.step:
            raise RuntimeError(f"failed at epoch {step}")


def mlflow_client(root: Path) -> Any:
    """An MLflow client on the project's own SQLite store (tracking and registry)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def run_lstmflow(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The `lstmflow` command of this environment, run as a user runs it; never raises on a non-zero exit."""
    command = [str(Path(sys.executable).parent / "lstmflow"), *args]
    return subprocess.run(command, check=False, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def write_sine_csv(path: Path, rows: int = 240, season: int = 12, seed: int = 0) -> Path:
    """A small real series: a seasonal sine with a slow trend and noise, indexed by month."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    values = 10 + 0.02 * t + 3 * np.sin(2 * np.pi * t / season) + rng.normal(0, 0.3, rows)
    dates = np.datetime64("2000-01") + t.astype("timedelta64[M]")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("month,value\n" + "".join(f"{d},{v:.4f}\n" for d, v in zip(dates, values)))
    return path


def prepare_pipeline_features(spec, out_dir: Path) -> None:
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


# ------------------------------------------------------------- a small classification set

from lstmflow.config import ClassSplitSpec, PipelineSpec, deep_merge, validate_pipeline
from lstmflow.data.sequences import assign_parts, write_sequences
from lstmflow.training.fit import FitResult, fit
from lstmflow.training.loggers import ListLogger

CLASSES = ("rise", "fall", "wave")

CLASSIFY_BASE: dict[str, Any] = {
    "task": "classify",
    "data": {"kind": "sequences", "path": "patterns.csv", "format": "wide"},
    "model": {"layers": [{"lstm": {"units": 16}}, {"dense": {"activation": "softmax"}}]},
    "train": {"epochs": 8, "batch_size": 16, "optimizer": {"lr": 0.02}, "seed": 0},
}


def write_pattern_sequences(
    out_dir: Path, per_class: int = 40, split: ClassSplitSpec | None = None, seed: int = 0
) -> dict[str, Any]:
    """Three classes that only the order of the steps tells apart, written with the real sequence writer.

    Feature 0 rises, falls or makes two waves over 4 to 20 steps (each has mean about 0), with noise; feature 1 is
    noise alone. Returns write_sequences' summary.
    """
    rng = np.random.default_rng(seed)
    sequences, labels = [], []
    for label in CLASSES:
        for _ in range(per_class):
            length = int(rng.integers(4, 21))
            t = np.linspace(-1, 1, length)
            signal = {"rise": t, "fall": -t, "wave": np.sin(2 * np.pi * t)}[label]
            sequences.append(np.stack([signal + rng.normal(0, 0.2, length), rng.normal(0, 1, length)], axis=1))
            labels.append(label)
    split = split or ClassSplitSpec(val=0.25, test=0.15)
    parts = assign_parts(labels, split, None, where="pipelines.patterns.data")
    return write_sequences(out_dir, sequences, labels, parts, "standard", None, "pipelines.patterns.data", {})


@dataclass(frozen=True)
class Patterns:
    """The three-class patterns, prepared once, and a shortcut to a classify spec on them."""

    data_dir: Path
    features_dir: Path

    def spec(self, **sections: Any) -> PipelineSpec:
        return validate_pipeline("patterns", deep_merge(CLASSIFY_BASE, sections), self.data_dir)

    def fit(self, spec: PipelineSpec, run_dir: Path, logger: ListLogger | None = None) -> FitResult:
        return fit(spec, self.features_dir, run_dir, logger if logger is not None else ListLogger(), progress=False)


@pytest.fixture(scope="module")
def patterns(tmp_path_factory: pytest.TempPathFactory) -> Patterns:
    folder = tmp_path_factory.mktemp("patterns")
    write_pattern_sequences(folder / "features")
    return Patterns(folder, folder / "features")


# ------------------------------------------------------------- a small corpus for language models

#: A text whose next character follows from the ones before it, not from character frequencies alone.
CORPUS_LINE = "the cat sat on the mat. a dog ran to the log.\n"


def prepared_corpus(root: Path, repeats: int = 40, **train: Any) -> PipelineSpec:
    """A stateful character language model over ``CORPUS_LINE × repeats`` in ``root``, its features prepared in
    ``root / "features"``; ``train`` keys go into its ``train`` section."""
    from lstmflow.data.corpus import prepare_corpus_features

    (root / "corpus.txt").write_text(CORPUS_LINE * repeats, encoding="utf-8")
    raw = {
        "task": "language_model",
        "data": {"kind": "corpus", "path": "corpus.txt", "sequence_length": 12},
        "model": {"layers": [
            {"embedding": {"dim": 8}}, {"lstm": {"units": 16, "return_sequences": True, "stateful": True}},
            {"dense": {"activation": "softmax"}},
        ]},
        "train": {"epochs": 2, "batch_size": 4, "optimizer": {"lr": 0.02}, **train},
    }  # fmt: skip
    spec = validate_pipeline("lm", raw, root)
    prepare_corpus_features(spec.data, root / "features", "pipelines.lm.data")
    return spec
