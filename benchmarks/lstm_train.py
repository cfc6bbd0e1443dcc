"""LSTM training throughput on the CPU: lstmflow's LSTM kernel vs PyTorch's ``nn.LSTM`` vs Keras 3 on TensorFlow.

One training step = forward, backward and an Adam step on an MSE loss, on a fixed random batch. Models:

- the guide's example: 1 feature → LSTM(128) → Dense(10), 100 steps at batch 64 and 256, 500 steps at batch 64;
- the same with variable lengths (``guide-padded``: each sample 50-100 steps, padded to 100; PyTorch reads packed
  sequences, Keras masks the padding), as classifiers of sequences, texts and audio train;
- an audio-sized model: 40 features → LSTM(256) → LSTM(256) → Dense(10), 100 steps, batch 64.

The PyTorch variants train lstmflow's own network (``build_model``, as the trainer does), once with
``train.lstm_kernel: torch`` (``nn.LSTM``) and once with ``lstmflow`` (the compiled kernel on the same weights).

Each variant is its own subprocess (two OpenMP runtimes in one process skew each other) with its thread settings in
the environment before it imports anything; the parent sends every measurement in turn to every variant
(interleaved, the order rotating each repeat), so load changes hit all variants alike. Thread settings, on purpose:

- ``nn.LSTM 1t``: OMP_NUM_THREADS=1, the setting that survives a busy machine (STACK.md);
- ``nn.LSTM 2t``: 2 threads with OMP_WAIT_POLICY=PASSIVE (lstmflow's child processes use PASSIVE);
- ``lstmflow 1t`` / ``lstmflow 2t``: lstmflow's kernel with the same settings (2t splits the batch across threads);
- ``Keras/TF``: TensorFlow's own thread pool, as a Keras user gets it (``model.fit`` over repeated batches).

Keras runs from a separate virtual environment (``--keras-python``, default ``/tmp/kerasvenv/bin/python`` with
``tensorflow-cpu`` and ``keras``; never a dependency of lstmflow); without one it is skipped with a message.

Every variant runs with the malloc settings of lstmflow's training children
(``lstmflow.training.launch.MALLOC_SETTINGS``: freed memory stays in the heap, which made training steps 1.5-1.8×
faster here).

Achieved GFLOP/s counts 3 × 8·T·B·H·(I+H) per layer per training step (forward, and twice that for the backward),
with T the mean real length for the padded configuration.
The peak is the best fp32 2048×2048 matrix multiply on all cores in the same run (numpy's BLAS and ``torch.mm``).
``--busy`` measures everything a second time with a CPU-bound process running beside it.

Prints tables (medians with min–max over ``--repeats``) and appends them to ``benchmarks/RESULTS.md``.

    python benchmarks/lstm_train.py [--repeats 3] [--seconds 2] [--busy] [--configs guide-b64,audio-b64]
                                    [--keras-python PATH] [--no-append]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _report import RESULTS, publish  # benchmarks/ is the script's folder, so on sys.path

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = 10  # the Dense head's units
MATMUL_SIZE = 2048


@dataclass(frozen=True)
class Config:
    name: str
    features: int
    units: tuple[int, ...]
    steps: int
    batch: int
    padded: bool = False  # lengths drawn from steps/2 to steps, the rest padding

    def lengths(self) -> Any:
        """Each sample's real length (a seeded draw), or None when every sample is full."""
        import numpy as np

        if not self.padded:
            return None
        return np.random.default_rng(1).integers(self.steps // 2, self.steps + 1, self.batch)

    def flops_per_step(self) -> float:
        """3 × 8·T·B·H·(I+H) per layer: the four gates' multiplies, forward (1×) and backward (2×)."""
        lengths = self.lengths()
        steps = self.steps if lengths is None else float(lengths.mean())
        total, width = 0.0, self.features
        for hidden in self.units:
            total += 3 * 8 * steps * self.batch * hidden * (width + hidden)
            width = hidden
        return total


CONFIGS = {
    config.name: config
    for config in (
        Config("guide-b64", 1, (128,), 100, 64),
        Config("guide-b256", 1, (128,), 100, 256),
        Config("guide-T500", 1, (128,), 500, 64),
        Config("guide-padded", 1, (128,), 100, 64, padded=True),
        Config("audio-b64", 40, (256, 256), 100, 64),
    )
}


@dataclass(frozen=True)
class Variant:
    name: str
    worker: str  # torch | fast | keras
    threads: int | None  # None: the framework's default pool


VARIANTS = (
    Variant("nn.LSTM 1t", "torch", 1),
    Variant("nn.LSTM 2t", "torch", 2),
    Variant("lstmflow 1t", "fast", 1),
    Variant("lstmflow 2t", "fast", 2),
    Variant("Keras/TF", "keras", None),
)


# ------------------------------------------------------------------------------------------------- the workers


class TorchTrainer:
    """lstmflow's network (lstm layers → Dense(10)) trained with Adam on MSE, with ``nn.LSTM`` or lstmflow's kernel;
    one model per config, built on demand."""

    def __init__(self, fast: bool) -> None:
        import torch

        self.torch = torch
        self.kernel = "lstmflow" if fast else "torch"
        self.models: dict[str, Any] = {}

    def hello(self) -> dict[str, str]:
        versions = {"torch": self.torch.__version__, "threads": str(self.torch.get_num_threads())}
        if self.kernel == "lstmflow":
            from lstmflow.models.fast_lstm import compiled_kernels

            versions["lstmflow kernel"] = "compiled" if compiled_kernels() is not None else "PyTorch loop (no compiler)"
        return versions

    def _model(self, config: Config) -> tuple[Any, Any, Any, Any, Any]:
        if config.name not in self.models:
            torch = self.torch
            from lstmflow.config import ModelSpec
            from lstmflow.models.lstm import build_model

            torch.manual_seed(0)
            last = len(config.units) - 1
            layers = [
                {"lstm": {"units": hidden, "return_sequences": index < last}}
                for index, hidden in enumerate(config.units)
            ]
            spec = ModelSpec.model_validate({"layers": [*layers, {"dense": {"units": OUTPUTS}}]})
            model = build_model(spec, config.features, OUTPUTS, where="bench.model", lstm_kernel=self.kernel).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            x = torch.randn(config.batch, config.steps, config.features)  # (B, T, I)
            lengths = config.lengths()
            if lengths is not None:
                lengths = torch.from_numpy(lengths)
                x[torch.arange(config.steps)[None, :] >= lengths[:, None]] = 0.0  # padding
            y = torch.randn(config.batch, OUTPUTS)  # (B, 10)
            self.models[config.name] = (model, optimizer, x, lengths, y)
        return self.models[config.name]

    def step(self, config: Config) -> None:
        model, optimizer, x, lengths, y = self._model(config)
        optimizer.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.mse_loss(model(x, lengths), y)
        loss.backward()
        optimizer.step()

    def measure(self, config: Config, seconds: float) -> float:
        """Training samples/s over at least ``seconds`` (and 3 steps), after 2 warm-up steps."""
        for _ in range(2):
            self.step(config)
        steps, start = 0, time.perf_counter()
        while steps < 3 or time.perf_counter() - start < seconds:
            self.step(config)
            steps += 1
        return steps * config.batch / (time.perf_counter() - start)

    def peak(self) -> float:
        """Best GFLOP/s of a fp32 2048×2048 torch.mm over 5 tries."""
        a = self.torch.randn(MATMUL_SIZE, MATMUL_SIZE)
        b = self.torch.randn(MATMUL_SIZE, MATMUL_SIZE)
        return max(_timed_gflops(lambda: self.torch.mm(a, b)) for _ in range(5))


class KerasTrainer:
    """The same models in Keras 3 (TensorFlow backend), timed through ``model.fit`` over repeated batches."""

    def __init__(self) -> None:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import keras
        import numpy as np

        self.keras, self.np = keras, np
        self.models: dict[str, Any] = {}
        self.step_seconds: dict[str, float] = {}

    def hello(self) -> dict[str, str]:
        import tensorflow as tf

        return {"tensorflow": tf.__version__, "keras": self.keras.__version__}

    def _model(self, config: Config) -> tuple[Any, Any, Any]:
        if config.name not in self.models:
            keras, np = self.keras, self.np
            keras.utils.set_random_seed(0)
            layers = [keras.Input((config.steps, config.features))]
            if config.padded:
                layers.append(keras.layers.Masking(0.0))  # Keras's way to skip padded steps
            for index, hidden in enumerate(config.units):
                layers.append(keras.layers.LSTM(hidden, return_sequences=index < len(config.units) - 1))
            layers.append(keras.layers.Dense(OUTPUTS))
            model = keras.Sequential(layers)
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
            rng = np.random.default_rng(0)
            x = rng.standard_normal((config.batch, config.steps, config.features), dtype=np.float32)
            lengths = config.lengths()
            if lengths is not None:
                x[np.arange(config.steps)[None, :] >= lengths[:, None]] = 0.0  # padding
            y = rng.standard_normal((config.batch, OUTPUTS), dtype=np.float32)
            self.models[config.name] = (model, x, y)
        return self.models[config.name]

    def _fit(self, config: Config, batches: int) -> float:
        model, x, y = self._model(config)
        xs, ys = self.np.concatenate([x] * batches), self.np.concatenate([y] * batches)
        start = time.perf_counter()
        model.fit(xs, ys, batch_size=config.batch, epochs=1, shuffle=False, verbose=0)
        return time.perf_counter() - start

    def measure(self, config: Config, seconds: float) -> float:
        if config.name not in self.step_seconds:
            self._fit(config, 2)  # traces and compiles the training function
            self.step_seconds[config.name] = self._fit(config, 3) / 3
        batches = max(3, round(seconds / self.step_seconds[config.name]))
        elapsed = self._fit(config, batches)
        self.step_seconds[config.name] = elapsed / batches
        return batches * config.batch / elapsed


def _timed_gflops(run: Any) -> float:
    start = time.perf_counter()
    run()
    return 2 * MATMUL_SIZE**3 / (time.perf_counter() - start) / 1e9


def numpy_peak() -> float:
    """Best GFLOP/s of a fp32 2048×2048 numpy matmul over 5 tries (numpy's own BLAS)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((MATMUL_SIZE, MATMUL_SIZE), dtype=np.float32)
    b = rng.standard_normal((MATMUL_SIZE, MATMUL_SIZE), dtype=np.float32)
    return max(_timed_gflops(lambda: a @ b) for _ in range(5))


def worker_main(kind: str) -> None:
    """Answer the parent's JSON lines on stdin ({"config": name, "seconds": s} or {"peak": true}) on stdout."""
    if kind == "numpy":
        print(json.dumps({"gflops": numpy_peak()}), flush=True)
        return
    trainer = KerasTrainer() if kind == "keras" else TorchTrainer(fast=kind == "fast")
    print(json.dumps(trainer.hello()), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("peak"):
            reply = {"gflops": trainer.peak()}
        else:
            reply = {"samples_per_s": trainer.measure(CONFIGS[request["config"]], request["seconds"])}
        print(json.dumps(reply), flush=True)


# -------------------------------------------------------------------------------------------------- the parent


class Worker:
    """A variant's subprocess, started with its thread settings in the environment."""

    def __init__(self, variant: Variant, python: str) -> None:
        from lstmflow.training.launch import MALLOC_SETTINGS

        environment = {**MALLOC_SETTINGS, **os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
        if variant.threads is not None:
            threads = str(variant.threads)
            environment.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OMP_WAIT_POLICY="PASSIVE")
        else:
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY"):
                environment.pop(name, None)
        self.process = subprocess.Popen(
            [python, __file__, "--worker", variant.worker], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=environment,
        )  # fmt: skip
        self.versions: dict[str, str] = self._reply()

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.process.args} ended (exit {self.process.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def measure_peak(workers: dict[str, Worker]) -> dict[str, float]:
    """numpy's and torch's best fp32 2048² matmul on all cores (2 threads), each in its own process."""
    environment = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    numpy_reply = subprocess.run(
        [sys.executable, __file__, "--worker", "numpy"], capture_output=True, text=True, check=True, env=environment
    )
    torch_reply = workers["nn.LSTM 2t"].ask({"peak": True})
    return {"numpy": json.loads(numpy_reply.stdout)["gflops"], "torch.mm": torch_reply["gflops"]}


def run_pass(
    workers: dict[str, Worker], configs: list[Config], repeats: int, seconds: float
) -> dict[tuple[str, str], list[float]]:
    """samples/s per (config, variant), the variants interleaved with the order rotating each repeat."""
    samples: dict[tuple[str, str], list[float]] = {}
    names = list(workers)
    for repeat in range(repeats):
        for config in configs:
            order = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in order:
                reply = workers[name].ask({"config": config.name, "seconds": seconds})
                samples.setdefault((config.name, name), []).append(reply["samples_per_s"])
                print(f"  repeat {repeat + 1} {config.name:<11} {name:<12} {reply['samples_per_s']:>9,.0f} samples/s",
                      flush=True)  # fmt: skip
    return samples


def table(
    configs: list[Config], names: list[str], samples: dict[tuple[str, str], list[float]], peak: float
) -> list[str]:
    """Markdown rows: samples/s median (min–max), GFLOP/s, % of peak, and the ratio to the best baseline."""
    rows = [
        "| config | variant | samples/s median (min–max) | GFLOP/s | % of peak | vs best of nn.LSTM/Keras |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for config in configs:
        medians = {name: statistics.median(samples[config.name, name]) for name in names}
        baselines = [value for name, value in medians.items() if not name.startswith("lstmflow")]
        best_baseline = max(baselines)
        for name in names:
            values = samples[config.name, name]
            gflops = medians[name] / config.batch * config.flops_per_step() / 1e9
            rows.append(
                f"| {config.name} (I={config.features}, H={'×'.join(map(str, config.units))}, T={config.steps}"
                f"{', lengths T/2–T' if config.padded else ''}, "
                f"B={config.batch}) | {name} | {medians[name]:,.0f} ({min(values):,.0f}–{max(values):,.0f}) | "
                f"{gflops:.1f} | {100 * gflops / peak:.0f}% | {medians[name] / best_baseline:.2f}× |"
            )
    return rows


def load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=["torch", "fast", "keras", "numpy"], help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timed seconds per measurement")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--busy", action="store_true", help="measure again with a CPU-bound process running")
    parser.add_argument("--keras-python", default=os.environ.get("KERAS_PYTHON", "/tmp/kerasvenv/bin/python"))
    parser.add_argument("--no-append", action="store_true", help=f"print only; leave {RESULTS.name} alone")
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker)
        return

    configs = [CONFIGS[name] for name in args.configs.split(",")]
    keras_note = ""
    workers: dict[str, Worker] = {}
    for variant in VARIANTS:
        if variant.worker == "keras" and not Path(args.keras_python).exists():
            keras_note = f"Keras/TF skipped: keras not installed ({args.keras_python} not found)"
            print(keras_note)
            continue
        workers[variant.name] = Worker(variant, args.keras_python if variant.worker == "keras" else sys.executable)
    versions = {key: value for worker in workers.values() for key, value in worker.versions.items() if key != "threads"}
    names = list(workers)
    passes = [("quiet", False)] + ([("busy", True)] if args.busy else [])
    lines = [
        (
            f"\n## {dt.date.today().isoformat()} · CPU LSTM training: `python benchmarks/lstm_train.py"
            f"{' --busy' if args.busy else ''}`\n"
        ),
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} · Python {platform.python_version()}, "
        + ", ".join(f"{key} {value}" for key, value in versions.items())
        + f" · {args.repeats} repeats of ≥ {args.seconds:g} s per measurement, variants interleaved\n",
        (
            "Threads: `1t` = OMP_NUM_THREADS=1; `2t` = 2 threads with OMP_WAIT_POLICY=PASSIVE; Keras/TF = TensorFlow's "
            "default pool. GFLOP/s counts 3 × 8·T·B·H·(I+H) per layer per training step.\n"
        ),
    ]
    if keras_note:
        lines.append(keras_note + "\n")
    measured: list[tuple[str, bool, str, str, dict[tuple[str, str], list[float]]]] = []
    peaks: dict[str, float] = {}
    try:
        for label, busy in passes:
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                load_before = load_average()
                for key, value in measure_peak(workers).items():
                    peaks[key] = max(value, peaks.get(key, 0.0))
                print(f"\n{label}: load {load_before}; best peak GFLOP/s so far {peaks}")
                samples = run_pass(workers, configs, args.repeats, args.seconds)
                load_after = load_average()
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
            measured.append((label, busy, load_before, load_after, samples))
        for key, value in measure_peak(workers).items():  # again at the end: the best of all tries is the peak
            peaks[key] = max(value, peaks[key])
    finally:
        for worker in workers.values():
            worker.close()
    lines.append(
        "Peak fp32 2048² matmul on 2 threads, best of every try in this run: "
        + ", ".join(f"{key} {value:.0f}" for key, value in peaks.items())
        + " GFLOP/s; % of peak is against the larger.\n"
    )
    for label, busy, load_before, load_after, samples in measured:
        lines += [
            (
                f"### {label}{' (a second CPU-bound process running)' if busy else ''}: load average (1/5/15 min) "
                f"{load_before} before, {load_after} after\n"
            ),
            *table(configs, names, samples, max(peaks.values())),
            "",
        ]
    report = "\n".join(lines)
    publish(report, append=not args.no_append)


if __name__ == "__main__":
    main()
