"""Where the seconds of a pipeline run go: Prefect, DVC, training, MLflow.

Copies the project's pipelines.yaml and dvc.yaml into a fresh temporary git repository
(new MLflow, Prefect and DVC stores), runs one pipeline through the real flow, then runs
it again unchanged (the cached path), and prints a table. DVC, MLflow and training time
are measured by timing the functions that do that work; Prefect is the rest of the wall
time (server start, task orchestration, result storage).

    python benchmarks/pipeline_overhead.py [--pipeline sunspots] [--epochs N]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
spent: dict[str, float] = defaultdict(float)


def timed(module: Any, name: str, bucket: str) -> None:
    """Replace ``module.name`` by a wrapper that adds its wall time to ``spent[bucket]``."""
    original: Callable[..., Any] = getattr(module, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[bucket] += time.perf_counter() - start

    setattr(module, name, wrapper)


def make_project(root: Path) -> None:
    root.mkdir(parents=True)
    for name in ("pipelines.yaml", "dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@x"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="sunspots")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: the pipeline's own)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="lstmflow-bench-")) / "project"
    make_project(root)
    from lstmflow.cli import configure_environment

    configure_environment(root)
    from lstmflow import launch, tracking, versioning

    timed(versioning, "dvc", "dvc")
    for name in ("start_run", "log_summary_metrics", "log_artifacts", "register_model", "end_run", "reopen_run"):
        timed(tracking, name, "mlflow")
    timed(launch, "train_in_child", "training")
    from flows.pipeline import run_pipeline

    rows = []
    for label in ("first run", "unchanged re-run"):
        spent.clear()
        start = time.perf_counter()
        result = run_pipeline(pipeline=args.pipeline, epochs=args.epochs, config=str(root / "pipelines.yaml"))
        total = time.perf_counter() - start
        parts = {key: spent[key] for key in ("dvc", "training", "mlflow")}
        parts["prefect + rest"] = total - sum(parts.values())
        rows.append((label, total, parts, result["cached"]))

    print(f"\npipeline_overhead: {args.pipeline}, {platform.node()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"{'run':<18}{'total s':>9}{'prefect+rest':>14}{'dvc':>8}{'training':>10}{'mlflow':>8}  cached")
    for label, total, parts, cached in rows:
        print(
            f"{label:<18}{total:>9.1f}{parts['prefect + rest']:>14.1f}{parts['dvc']:>8.1f}"
            f"{parts['training']:>10.1f}{parts['mlflow']:>8.1f}  {cached}"
        )
    shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
