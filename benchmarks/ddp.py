"""DDP on CPU: start-up overhead and training throughput, 1 worker against 2 (gloo, one thread each); or one GPU.

Writes a seeded seasonal series (no downloads), prepares its windows with the real features code, and trains the
same spec through :func:`lstmflow.training.launch.train_in_child` with ``train.workers`` 1 and 2 (same global batch),
and, as a control, 1 worker with half the batch (what each of the 2 workers computes per step: on CPU a smaller batch
can be cheaper per sample, which alone makes 2 workers look better than 2×). For each run it measures:

- time to first batch: from the launcher's call to the moment rank 0 logs "training ... rank 0 of N", which comes
  after the children have imported torch, met (DDP) and built the model, right before the first batch;
- training throughput: training windows × epochs / the sum of the epochs' wall time (each epoch also scores the
  small validation part, 5% of the series).

With ``--gpu`` it trains instead one CUDA worker in fp32, bf16 and fp16 (``train.precision``); on a GPU machine
with its own PyTorch, run it from the repository with ``PYTHONPATH=.`` (it imports only torch, numpy and lstmflow).

Prints a table (median of ``--repeats`` runs) and appends it to ``benchmarks/RESULTS.md`` with machine and date.

    python benchmarks/ddp.py [--points 20000] [--epochs 2] [--batch 256] [--units 64] [--repeats 3] [--gpu]
                             [--no-append]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _report import RESULTS, publish  # benchmarks/ is the script's folder, so on sys.path

from lstmflow.config import PipelineSpec, validate_pipeline
from lstmflow.data.timeseries import load_features, prepare_features, resolve_data
from lstmflow.training.launch import LOG_FILE, train_in_child
from lstmflow.training.loggers import ListLogger

#: Rank 0's log line written right before its first batch (see lstmflow.training.fit.fit).
FIRST_BATCH = re.compile(
    r"^(\S+ \S+) INFO lstmflow\.train: training \S+ on \S+ with \d+ thread\(s\), rank 0 of", re.MULTILINE
)


def write_series(path: Path, points: int) -> None:
    """A monthly seasonal series with trend and noise (seed 0)."""
    rng = np.random.default_rng(0)
    t = np.arange(points)
    values = 10 + 0.001 * t + 3 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 0.3, points)
    path.write_text("t,value\n" + "".join(f"{i},{v:.4f}\n" for i, v in zip(t, values)))


def make_spec(folder: Path, args: argparse.Namespace, config: Config) -> PipelineSpec:
    raw = {
        "data": {
            "path": "series.csv", "time_column": "t", "target": "value", "window": 48, "horizon": 1,
            "transform": "none", "split": {"val": 0.05, "test": 0.05},
        },
        "model": {"layers": [{"lstm": {"units": args.units}}, {"dense": {}}]},
        "train": {
            "epochs": args.epochs, "batch_size": config.batch, "workers": config.workers, "threads": 1,
            "device": config.device, "precision": config.precision, "early_stopping": {"patience": None},
        },
        "evaluate": {"season": 12},
    }  # fmt: skip
    return resolve_data(validate_pipeline("bench", raw, folder))


def run_once(spec: PipelineSpec, features: Path, run_dir: Path, train_windows: int) -> dict[str, float]:
    started_at = time.time()
    result = train_in_child(spec, features, run_dir, ListLogger(), progress=False)
    stamp = FIRST_BATCH.search((run_dir / LOG_FILE).read_text())
    if stamp is None:
        raise RuntimeError(f"no 'training ... rank 0' line in {run_dir / LOG_FILE}")
    first_batch = dt.datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    training = sum(row["epoch_seconds"] for row in result.history)
    return {
        "first_batch_s": first_batch - started_at,
        "samples_per_s": train_windows * len(result.history) / training,
        "wall_s": time.time() - started_at,
        "val_loss": result.history[-1]["val_loss"],
    }


@dataclass(frozen=True)
class Config:
    workers: int
    batch: int
    device: str = "cpu"
    precision: str = "fp32"


def configs(args: argparse.Namespace) -> dict[str, Config]:
    """What to compare: 1 vs 2 CPU workers (and the control), or with ``--gpu`` one GPU in each precision."""
    if args.gpu:
        return {f"1 GPU, {p}": Config(1, args.batch, "cuda", p) for p in ("fp32", "bf16", "fp16")}
    return {
        "1 worker": Config(1, args.batch),
        "2 workers": Config(2, args.batch),
        f"1 worker, batch {args.batch // 2} (control)": Config(1, args.batch // 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu", action="store_true", help="one CUDA worker in fp32, bf16 and fp16 instead")
    parser.add_argument("--no-append", action="store_true", help=f"print only; leave {RESULTS.name} alone")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="lstmflow-ddp-bench-"))
    compared = configs(args)
    try:
        write_series(folder / "series.csv", args.points)
        spec = make_spec(folder, args, next(iter(compared.values())))
        prepare_features(spec.data, spec.evaluate.season, folder / "features", where="bench.data")
        train_windows = len(load_features(folder / "features").windows("train"))
        measured: dict[str, list[dict[str, float]]] = {label: [] for label in compared}
        for repeat in range(args.repeats):
            for index, (label, config) in enumerate(compared.items()):
                run_dir = folder / f"run-{index}-{repeat}"
                measured[label].append(
                    run_once(make_spec(folder, args, config), folder / "features", run_dir, train_windows)
                )
        table = report(args, train_windows, measured)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    publish(table, append=not args.no_append)


def report(args: argparse.Namespace, train_windows: int, measured: dict[str, list[dict[str, float]]]) -> str:
    median = {
        label: {k: statistics.median(run[k] for run in runs) for k in runs[0]} for label, runs in measured.items()
    }
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    device = torch.cuda.get_device_name(0) if args.gpu else f"{os.cpu_count()} cores"
    lines = [
        (
            f"## {dt.date.today().isoformat()} · {'one GPU' if args.gpu else 'DDP on CPU (gloo)'}: "
            f"`python benchmarks/ddp.py{' --gpu' if args.gpu else ''}`"
        ),
        "",
        (
            f"{platform.machine()}, {device}, {platform.system()} · Python {platform.python_version()}, "
            f"torch {torch.__version__} · load average after the runs {load} (1/5/15 min)"
        ),
        "",
        (
            f"{train_windows:,} training windows of 48 steps, LSTM {args.units} units, global batch {args.batch}, "
            f"{args.epochs} epochs, one thread per worker; median of {args.repeats} runs."
        ),
        "",
        "| run | time to first batch (s) | training samples/s | whole launch (s) | final val loss |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, run in median.items():
        lines.append(
            f"| {label} | {run['first_batch_s']:.1f} | {run['samples_per_s']:,.0f} | {run['wall_s']:.1f} | "
            f"{run['val_loss']:.4g} |"
        )
    (base_label, base), *others = median.items()
    lines.append("")
    for label, run in others:
        lines.append(
            f"- {label} vs {base_label}: throughput {run['samples_per_s'] / base['samples_per_s']:.2f}×, time to "
            f"first batch {run['first_batch_s'] - base['first_batch_s']:+.1f} s, final val loss "
            f"{abs(run['val_loss'] / base['val_loss'] - 1):.1e} relative"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
