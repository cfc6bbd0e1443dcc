"""A small hyperparameter search: wall time with 1 and 2 trials at once, and what pruning saves.

Writes a seeded seasonal series (no downloads), prepares its windows with the real features code, and runs the same
search three times through :func:`lstmflow.ops.search_steps.run_search` (Optuna journal storage, MLflow on SQLite,
each trial training in its own child process; Prefect is not involved):

- ``parallel 1, median pruner``: the reference;
- ``parallel 2, median pruner``: two trials at once, one thread each;
- ``parallel 1, no pruner``: the same trials trained to the end, to count what pruning saved.

The trials are fewer than TPE's 10 random start-up trials, so every run draws the same configurations (each trial's
draw is seeded from ``train.seed`` and its number): the runs differ only in pruning and parallelism. With two at
once the median is taken over whichever trials have completed by then, so pruning may differ a little.

Prints a table and appends it to ``benchmarks/RESULTS.md`` with machine, load and date.

    python benchmarks/search.py [--trials 8] [--epochs 8] [--points 48000] [--no-append]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from _report import RESULTS, publish  # benchmarks/ is the script's folder, so on sys.path

from lstmflow.config import PipelineSpec, validate_pipeline
from lstmflow.data.timeseries import prepare_features, resolve_data
from lstmflow.ops import search_steps, steps
from lstmflow.training import search

RUNS = {
    "parallel 1, median pruner": {"parallel": 1, "pruner": "median"},
    "parallel 2, median pruner": {"parallel": 2, "pruner": "median"},
    "parallel 1, no pruner": {"parallel": 1, "pruner": "none"},
}


def write_series(path: Path, points: int) -> None:
    """A monthly seasonal series with trend and noise (seed 0)."""
    rng = np.random.default_rng(0)
    t = np.arange(points)
    values = 10 + 0.001 * t + 3 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 0.3, points)
    path.write_text("t,value\n" + "".join(f"{i},{v:.4f}\n" for i, v in zip(t, values)))


def make_spec(folder: Path, args: argparse.Namespace, search: dict[str, Any]) -> PipelineSpec:
    raw = {
        "data": {"path": "series.csv", "time_column": "t", "target": "value", "window": 48, "horizon": 1},
        "model": {"layers": [{"lstm": {"units": 16}}, {"dense": {}}]},
        "train": {"epochs": args.epochs, "batch_size": 64, "threads": 1, "early_stopping": {"patience": None}},
        "evaluate": {"season": 12},
        "search": {
            "trials": args.trials, "startup_trials": 2, **search,
            "space": {
                "train.optimizer.lr": {"float": [1.0e-4, 3.0e-2], "log": True},
                "model.layers[0].lstm.units": {"categorical": [16, 48]},
            },
        },
    }  # fmt: skip
    raw["data"]["transform"] = "none"
    return resolve_data(validate_pipeline("bench", raw, folder))


def run_once(folder: Path, name: str, spec: PipelineSpec) -> dict[str, Any]:
    """One search in a fresh project folder (its own journal and MLflow store); wall time and epochs trained."""
    root = folder / name
    root.mkdir()
    prepared = steps.Prepared(spec.model_dump(mode="json"), str(folder / "features"), "bench", "bench")
    started = time.perf_counter()
    done = search_steps.run_search(prepared, root, progress=False)
    seconds = time.perf_counter() - started
    trials = done["summary"]["trials"]
    study = search.open_study(search.StudyRef(search.storage_location(spec, root), done["summary"]["study"]), spec)[0]
    fitting = sum(trial.user_attrs.get("lstmflow.train_seconds", 0.0) for trial in study.get_trials(deepcopy=False))
    return {
        "seconds": seconds,
        "fitting": fitting,
        "epochs": sum(trial["epochs_run"] for trial in trials),
        "pruned": sum(trial["state"] == "pruned" for trial in trials),
        "best": done["summary"]["best"]["value"],
        "configs": sorted((t["number"], tuple(sorted(t["params"].items()))) for t in trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--points", type=int, default=48_000)
    parser.add_argument("--no-append", action="store_true", help=f"print only; leave {RESULTS.name} alone")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    folder = Path(tempfile.mkdtemp(prefix="lstmflow-search-bench-"))
    try:
        write_series(folder / "series.csv", args.points)
        first = make_spec(folder, args, next(iter(RUNS.values())))
        prepare_features(first.data, first.evaluate.season, folder / "features", where="bench.data")
        measured = {
            label: run_once(folder, f"run-{index}", make_spec(folder, args, search))
            for index, (label, search) in enumerate(RUNS.items())
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    table = report(args, measured)
    publish(table, append=not args.no_append)


def report(args: argparse.Namespace, measured: dict[str, dict[str, Any]]) -> str:
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    reference, parallel, unpruned = measured.values()
    same = reference["configs"] == parallel["configs"] == unpruned["configs"]
    lines = [
        f"## {dt.date.today().isoformat()} · hyperparameter search: `python benchmarks/search.py`",
        "",
        (
            f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} · Python {platform.python_version()}, "
            f"torch {torch.__version__}, optuna {optuna.__version__} · load average after the runs {load} (1/5/15 min)"
        ),
        "",
        (
            f"{args.trials} trials (TPE, seeded; lr and LSTM units searched) of up to {args.epochs} epochs on a "
            f"{args.points:,}-point series, one thread per trial, each trial in its own child process; "
            f"{'the same' if same else 'NOT the same'} configurations in every run."
        ),
        "",
        "| run | wall time (s) | epochs trained | trials pruned | best val_loss |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, run in measured.items():
        lines.append(f"| {label} | {run['seconds']:.1f} | {run['epochs']} | {run['pruned']} | {run['best']:.4g} |")
    overhead = (unpruned["seconds"] - unpruned["fitting"]) / args.trials
    lines += [
        "",
        f"- 2 trials at once vs 1: {reference['seconds'] / parallel['seconds']:.2f}× faster.",
        (
            f"- each trial costs about {overhead:.1f} s beyond its fit (unpruned run: wall time less the children's "
            "`fit` time, per trial): the child process's start and imports, its MLflow run, the study's bookkeeping."
        ),
        (
            f"- pruning trained {reference['epochs']} of the {unpruned['epochs']} epochs the same trials take unpruned "
            f"({1 - reference['epochs'] / unpruned['epochs']:.0%} fewer) and took {reference['seconds']:.1f} s "
            f"instead of {unpruned['seconds']:.1f} s ({1 - reference['seconds'] / unpruned['seconds']:.0%} less wall "
            "time)."
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
