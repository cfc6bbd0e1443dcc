"""How a pipeline's wall time and peak memory grow with its data: 1×, 4× and 16× the rows.

Two pipelines on seeded data made here (no downloads): a forecaster on a seasonal series (``--rows`` points at 1×)
and a classifier on labelled sequences of 60 steps (``--sequences`` at 1×). Each size runs the real pipeline
(DVC stages, training in its child process, evaluation, registration; no Prefect) in a fresh project, in a fresh
Python process, with a fixed number of epochs and no early stopping, so that time grows with the data only.

Reported per size: the wall time of the whole pipeline and of its training, and the peak resident memory of the
pipeline's own process and of its training child (``getrusage``'s ``ru_maxrss``). Ratios are against 1× of the
same pipeline in the same run: linear growth reads 4.0 and 16.0. A discarded warm-up run goes first. Prints a table
and appends it to ``benchmarks/RESULTS.md``.

    python benchmarks/scaling.py [--rows 4000] [--sequences 400] [--epochs 2] [--no-append]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import RESULTS, heading, publish  # benchmarks/ is the script's folder, so on sys.path

REPO = Path(__file__).resolve().parents[1]
FACTORS = (1, 4, 16)


def write_series(path: Path, points: int) -> None:
    """A monthly seasonal series with trend and noise (seed 0)."""
    rng = np.random.default_rng(0)
    t = np.arange(points)
    values = 10 + 0.001 * t + 3 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 0.3, points)
    path.write_text("t,value\n" + "".join(f"{i},{v:.4f}\n" for i, v in zip(t, values)))


def write_sequences(path: Path, count: int, steps: int = 60) -> None:
    """Long-format sequences of three classes (rising, falling, oscillating) plus noise (seed 0)."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, steps)
    shapes = {"rise": t, "fall": 1 - t, "wave": 0.5 + 0.5 * np.sin(6 * np.pi * t)}
    lines = ["id,t,value,label"]
    for i in range(count):
        label = list(shapes)[i % 3]
        values = shapes[label] + rng.normal(0, 0.2, steps)
        lines += [f"s{i},{j},{v:.4f},{label}" for j, v in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")


def pipelines_yaml(epochs: int) -> str:
    train = {"epochs": epochs, "batch_size": 64, "early_stopping": {"patience": None}}
    config = {
        "pipelines": {
            "series": {
                "task": "forecast",
                "data": {"path": "series.csv", "time_column": "t", "target": "value", "window": 48, "horizon": 1},
                "model": {"layers": [{"lstm": {"units": 64}}, {"dense": {}}]},
                "train": train,
                "evaluate": {"season": 12},
            },
            "sequences": {
                "task": "classify",
                "data": {"kind": "sequences", "path": "sequences.csv", "id_column": "id", "time_column": "t",
                         "value_columns": ["value"], "label_column": "label"},
                "model": {"layers": [{"lstm": {"units": 64}}, {"dense": {"activation": "softmax"}}]},
                "train": train,
            },
        }
    }  # fmt: skip
    return json.dumps(config)  # JSON is YAML


def make_project(root: Path, rows: int, sequences: int, epochs: int) -> None:
    import shutil

    root.mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    (root / "pipelines.yaml").write_text(pipelines_yaml(epochs))
    write_series(root / "series.csv", rows)
    write_sequences(root / "sequences.csv", sequences)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "b@x",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "b@x",
    }
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)


def measure(root: Path, pipeline: str) -> dict[str, float]:
    """Run one pipeline in this process (a fresh one per size); its times and peak memory."""
    from lstmflow.cli import configure_environment

    configure_environment(root)
    from lstmflow.ops import steps

    config = str(root / "pipelines.yaml")
    started = time.perf_counter()
    prepared = steps.prepare(config, pipeline, [])
    trained = steps.train(prepared, root, None, progress=False)
    steps.evaluate(prepared, trained, root)
    steps.register(prepared, trained, root)
    total = time.perf_counter() - started
    return {
        "wall_s": total,
        "train_s": float(trained["train_seconds"]),
        "pipeline_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "child_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,  # the largest child
    }


def run_size(pipeline: str, factor: int, args: argparse.Namespace) -> dict[str, float]:
    """One size in a fresh Python process, so that peak memory is that size's own."""
    command = [
        sys.executable, __file__, "--worker", pipeline, "--factor", str(factor),
        "--rows", str(args.rows), "--sequences", str(args.sequences), "--epochs", str(args.epochs),
    ]  # fmt: skip
    done = subprocess.run(
        command, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(args: argparse.Namespace, results: dict[str, dict[int, dict[str, float]]]) -> str:
    lines = [
        heading("scaling with the data", "python benchmarks/scaling.py"),
        (
            f"{args.epochs} epochs, no early stopping, one training thread; 1× is {args.rows:,} series points "
            f"(forecast, window 48, LSTM 64) and {args.sequences:,} sequences of 60 steps (classify, LSTM 64). "
            "Ratios against 1×."
        ),
        "",
        "| pipeline | data | wall (s) | × | training (s) | × | peak RSS pipeline (MB) | peak RSS training child (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for pipeline, sizes in results.items():
        base = sizes[FACTORS[0]]
        for factor, row in sizes.items():
            lines.append(
                f"| {pipeline} | {factor}× | {row['wall_s']:.1f} | {row['wall_s'] / base['wall_s']:.2f} | "
                f"{row['train_s']:.1f} | {row['train_s'] / base['train_s']:.2f} | {row['pipeline_rss_mb']:.0f} | "
                f"{row['child_rss_mb']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4000, help="series points at 1× (default 4000)")
    parser.add_argument("--sequences", type=int, default=400, help="sequences at 1× (default 400)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-append", action="store_true", help=f"print only; do not append to {RESULTS.name}")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--factor", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        with tempfile.TemporaryDirectory(prefix="lstmflow-scaling-") as folder:
            root = Path(folder) / "project"
            make_project(root, args.rows * args.factor, args.sequences * args.factor, args.epochs)
            print(json.dumps(measure(root, args.worker)))
        return
    print("warm-up (discarded): series 1× ...", flush=True)
    run_size("series", FACTORS[0], args)  # the first run pays cold caches: the compiled LSTM, imports from disk
    results: dict[str, dict[int, dict[str, float]]] = {}
    for pipeline in ("series", "sequences"):
        for factor in FACTORS:
            print(f"{pipeline} {factor}× ...", flush=True)
            results.setdefault(pipeline, {})[factor] = run_size(pipeline, factor, args)
    publish(report(args, results), append=not args.no_append)


if __name__ == "__main__":
    main()
