"""Where the seconds of a pipeline run go (Prefect, DVC, training, MLflow), and what an unchanged re-run costs.

Copies the project's pipelines.yaml and dvc.yaml into a fresh temporary git repository
(new MLflow, Prefect and DVC stores), runs one pipeline through the real flow, then runs
it again unchanged (the cached path). DVC, MLflow and training time are measured by timing
the functions that do that work; Prefect is the rest of the wall time (server start, task
orchestration, result storage). The first run starts as ``lstmflow run`` does (the temporary
server, Prefect's import and the stores' creation at once), so work done while the server
starts counts in its own column. Three set-ups, each in its own process and project:

- ``embedded``: the default, a temporary Prefect server inside the process and MLflow on SQLite;
- ``stack``: ``lstmflow up``'s servers running (Prefect server, MLflow server, both on SQLite), the flow talking to
  them;
- ``team``: ``lstmflow up --team`` (both servers on PostgreSQL, MLflow's artifacts and DVC's remote in the S3 object
  store).

The target: an unchanged re-run costs at most 10% of the first run. The last column compares each run with the same
run embedded, measured in the same invocation. Prints a table and appends it to ``benchmarks/RESULTS.md``.

    python benchmarks/pipeline_overhead.py [--pipeline sunspots] [--epochs N] [--no-append]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _report import heading, publish  # benchmarks/ is the script's folder, so on sys.path

REPO = Path(__file__).resolve().parents[1]
spent: dict[str, float] = defaultdict(float)
MODES = ("embedded", "stack", "team")


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
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "b@x",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "b@x",
    }
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)


def measure(mode: str, pipeline: str, epochs: int | None) -> list[dict[str, Any]]:
    """Both runs of ``pipeline`` in a fresh project, in this process; ``mode`` ``stack`` starts the servers first."""
    folder = Path(tempfile.mkdtemp(prefix="lstmflow-bench-"))
    folder.chmod(0o711)  # as root, the team's PostgreSQL server runs as 'postgres', which must reach the project
    root = folder / "project"
    make_project(root)
    from lstmflow.ops import stack

    if mode != "embedded":
        team_ports = (free_port(), free_port()) if mode == "team" else (None, 0)
        stack.up(
            root, prefect_port=free_port(), mlflow_port=free_port(), postgres_port=team_ports[0],
            objects_port=team_ports[1],
        )  # fmt: skip
    try:
        from lstmflow.cli import configure_environment

        configure_environment(root)
        from lstmflow import tracking
        from lstmflow.ops import versioning
        from lstmflow.training import launch

        timed(versioning, "dvc", "dvc")
        for name in ("start_run", "log_summary_metrics", "log_artifacts", "register_model", "end_run", "reopen_run"):
            timed(tracking, name, "mlflow")
        timed(launch, "train_in_child", "training")
        rows = []
        with contextlib.ExitStack() as flows:
            for label in ("first run", "unchanged re-run"):
                spent.clear()
                start = time.perf_counter()
                if label == "first run":
                    run_pipeline = start_as_the_cli(root, flows)
                result = run_pipeline(pipeline=pipeline, epochs=epochs, config=str(root / "pipelines.yaml"))
                total = time.perf_counter() - start
                parts = {key: spent[key] for key in ("dvc", "training", "mlflow")}
                parts["prefect + rest"] = total - sum(parts.values())
                rows.append({"run": label, "total": total, **parts, "cached": result["cached"]})
        return rows
    finally:
        if mode != "embedded":
            stack.down(root)
        shutil.rmtree(root.parent, ignore_errors=True)


def start_as_the_cli(root: Path, flows: contextlib.ExitStack) -> Callable[..., Any]:
    """What ``lstmflow run`` does before its first flow: the temporary Prefect server starts (unless one is
    configured) while Prefect is imported and the stores are created; returns the flow once the server answers,
    its context entered on ``flows``."""
    from flows.embedded import open_stores, prefect_api

    flows_context = prefect_api(root)
    open_stores(root)
    from flows.pipeline import run_pipeline

    flows.enter_context(flows_context())
    return run_pipeline


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def report(pipeline: str, measured: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        heading("pipeline overhead", f"python benchmarks/pipeline_overhead.py --pipeline {pipeline}"),
        "| set-up | run | total (s) | Prefect + rest | DVC | training | MLflow | cached | rerun/first | ÷ embedded |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    embedded = measured["embedded"]
    for mode, rows in measured.items():
        first = rows[0]["total"]
        for row, same_run in zip(rows, embedded, strict=True):
            lines.append(
                f"| {mode} | {row['run']} | {row['total']:.1f} | {row['prefect + rest']:.1f} | {row['dvc']:.1f} | "
                f"{row['training']:.1f} | {row['mlflow']:.1f} | {row['cached']} | {row['total'] / first:.0%} | "
                f"{row['total'] / same_run['total']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="sunspots")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: the pipeline's own)")
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.pipeline, args.epochs)))
        return
    measured = {}
    for mode in MODES:
        print(f"{mode} ...", flush=True)
        command = [sys.executable, __file__, "--worker", mode, "--pipeline", args.pipeline]
        command += ["--epochs", str(args.epochs)] if args.epochs else []
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        measured[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    publish(report(args.pipeline, measured), append=not args.no_append)


if __name__ == "__main__":
    sys.exit(main())
