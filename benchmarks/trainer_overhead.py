"""Trainer overhead: lstmflow's whole ``fit`` vs a bare PyTorch loop over the same model and tensors.

Writes a seeded seasonal series (no downloads), prepares its windows with the real features code, and trains the
guide's example model (1 feature → LSTM(128) → Dense) on windows of 100 steps, batch 64, one thread:

- ``lstmflow fit``: :func:`lstmflow.training.fit.fit` in this process on the prepared features: shuffled batches from
  the window store, loss and metric sums, a validation pass and a checkpoint each epoch, the metric logger, the best
  model saved at the end. Timed as the whole call (model building included).
- ``bare loop``: the same model (same spec, seed and optimizer) on every training window materialised as one
  tensor before timing, a ``randperm`` per epoch, forward, MSE, backward, Adam, and the same validation pass.

Both train the same windows for the same epochs; throughput = training windows × epochs / seconds. The variants
alternate, ``--repeats`` times; medians with min–max. Prints a table and appends it to ``benchmarks/RESULTS.md``.

    python benchmarks/trainer_overhead.py [--points 6000] [--epochs 2] [--repeats 3] [--no-append]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _report import RESULTS, publish  # benchmarks/ is the script's folder, so on sys.path
from torch import Tensor

from lstmflow.config import PipelineSpec, validate_pipeline
from lstmflow.data.timeseries import load_features, prepare_features, resolve_data
from lstmflow.models.lstm import build_model
from lstmflow.training.fit import fit
from lstmflow.training.loggers import ListLogger
from lstmflow.training.step import make_optimizer, seed_everything

WINDOW, UNITS, BATCH = 100, 128, 64


def write_series(path: Path, points: int) -> None:
    """A monthly seasonal series with trend and noise (seed 0)."""
    rng = np.random.default_rng(0)
    t = np.arange(points)
    values = 10 + 0.001 * t + 3 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 0.3, points)
    path.write_text("t,value\n" + "".join(f"{i},{v:.4f}\n" for i, v in zip(t, values)))


def make_spec(folder: Path, epochs: int) -> PipelineSpec:
    raw = {
        "data": {
            "path": "series.csv", "time_column": "t", "target": "value", "window": WINDOW, "horizon": 1,
            "transform": "none", "split": {"val": 0.05, "test": 0.05},
        },
        "model": {"layers": [{"lstm": {"units": UNITS}}, {"dense": {}}]},
        "train": {"epochs": epochs, "batch_size": BATCH, "threads": 1, "early_stopping": {"patience": None}},
        "evaluate": {"season": 12},
    }  # fmt: skip
    return resolve_data(validate_pipeline("bench", raw, folder))


def all_windows(features_dir: Path, part: str) -> tuple[Tensor, Tensor]:
    """Every window of a part as one (N, T, F) input tensor and its (N, ...) targets."""
    batches = list(load_features(features_dir).windows(part).batches(BATCH))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def bare_loop(spec: PipelineSpec, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor]) -> float:
    """Seconds for ``spec.train.epochs`` epochs of plain PyTorch training plus a validation pass per epoch."""
    started = time.perf_counter()
    seed_everything(spec.train.seed)
    model = build_model(spec.model, train[0].shape[-1], train[1][0].numel(), where="bench.model")
    optimizer = make_optimizer(spec, model.parameters())
    x, y = train
    for _ in range(spec.train.epochs):
        model.train()
        for batch in torch.randperm(len(x)).split(BATCH):
            prediction = model(x[batch]).view(y[batch].shape)  # (B, H·K) → (B, H, K)
            loss = torch.nn.functional.mse_loss(prediction, y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = sum(
                torch.nn.functional.mse_loss(model(vx).view(vy.shape), vy, reduction="sum").item()
                for vx, vy in zip(val[0].split(BATCH), val[1].split(BATCH))
            )
    if not np.isfinite(val_loss):
        raise RuntimeError(f"the bare loop diverged: val loss {val_loss}")
    return time.perf_counter() - started


def load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-append", action="store_true", help=f"print only; leave {RESULTS.name} alone")
    args = parser.parse_args()
    torch.set_num_threads(1)

    folder = Path(tempfile.mkdtemp(prefix="lstmflow-trainer-bench-"))
    seconds: dict[str, list[float]] = {"lstmflow fit": [], "bare loop": []}
    try:
        write_series(folder / "series.csv", args.points)
        spec = make_spec(folder, args.epochs)
        features_dir = folder / "features"
        prepare_features(spec.data, spec.evaluate.season, features_dir, where="bench.data")
        train, val = all_windows(features_dir, "train"), all_windows(features_dir, "val")
        load_before = load_average()
        for repeat in range(args.repeats):
            started = time.perf_counter()
            fit(spec, features_dir, folder / f"run-{repeat}", ListLogger(), progress=False)
            seconds["lstmflow fit"].append(time.perf_counter() - started)
            seconds["bare loop"].append(bare_loop(spec, train, val))
            fit_s, bare_s = seconds["lstmflow fit"][-1], seconds["bare loop"][-1]
            print(f"  repeat {repeat + 1}: fit {fit_s:.2f} s, bare loop {bare_s:.2f} s", flush=True)
        load_after = load_average()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    windows = len(train[0]) * args.epochs
    rates = {label: [windows / value for value in values] for label, values in seconds.items()}
    medians = {label: statistics.median(values) for label, values in rates.items()}
    overhead = medians["bare loop"] / medians["lstmflow fit"] - 1
    lines = [
        f"\n## {dt.date.today().isoformat()} · Trainer overhead: `python benchmarks/trainer_overhead.py`\n",
        (
            f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} · Python {platform.python_version()}, "
            f"torch {torch.__version__} · one thread · load average (1/5/15 min) {load_before} before, {load_after} "
            "after\n"
        ),
        (
            f"{len(train[0]):,} training windows of {WINDOW} steps (+ {len(val[0]):,} validation), LSTM({UNITS}) → "
            f"Dense, batch {BATCH}, {args.epochs} epochs, {args.repeats} alternating repeats.\n"
        ),
        "| loop | training windows/s median (min–max) | seconds median |",
        "| --- | --- | --- |",
        *(
            f"| {label} | {medians[label]:,.0f} ({min(rates[label]):,.0f}–{max(rates[label]):,.0f}) | "
            f"{statistics.median(seconds[label]):.2f} |"
            for label in seconds
        ),
        "",
        f"Overhead of lstmflow's trainer: {100 * overhead:+.1f}% time per training window (target ≤ 5%).",
    ]
    report = "\n".join(lines)
    publish(report, append=not args.no_append)


if __name__ == "__main__":
    main()
