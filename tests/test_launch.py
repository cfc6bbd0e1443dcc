"""The training launcher: a real spawned child, its environment, its errors, and a SIGKILL followed by a resume."""

from __future__ import annotations

import json
import os
import random
import re
import resource
import signal
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import prepare_pipeline_features, without_timing, write_sine_csv

from lstmflow.config import PipelineSpec, validate_pipeline
from lstmflow.data.timeseries import resolve_data
from lstmflow.errors import ConfigError, DataError, TrainingError
from lstmflow.training import launch
from lstmflow.training.fit import fit
from lstmflow.training.launch import train_in_child, warm_child
from lstmflow.training.loggers import ListLogger

torch.set_num_threads(1)


class FileLogger:
    """A MetricLogger that survives the child: one JSON line per call. ``stall_at`` makes that step hang after
    logging it (the checkpoint of the step before is then on disk), so the test can kill the child there."""

    def __init__(self, path: Path, stall_at: int | None = None) -> None:
        self.path, self.stall_at = path, stall_at

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps({"step": step, **metrics}) + "\n")
        if step == self.stall_at:
            self.stalled_marker().write_text("stalled")
            time.sleep(600)

    def stalled_marker(self) -> Path:
        return self.path.with_suffix(".stalled")

    def steps(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines()]


def make_spec(data_dir: Path, **train: Any) -> PipelineSpec:
    raw = {
        "data": {
            "path": "sine.csv",
            "time_column": "month",
            "target": "value",
            "window": 24,
            "horizon": 6,
            "transform": "none",
        },
        "model": {"layers": [{"lstm": {"units": 8, "dropout": 0.1}}, {"dense": {}}]},
        "train": {"epochs": 5, "batch_size": 16, "optimizer": {"lr": 0.01}, "lr_schedule": {"name": "cosine"}, **train},
    }
    return resolve_data(validate_pipeline("sine", raw, data_dir))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_sine_csv(folder / "sine.csv")
    prepare_pipeline_features(make_spec(folder), folder / "features")
    return folder


def tensors(tree: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor inside nested dicts and lists, by its path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    return {path: t for key, value in items for path, t in tensors(value, f"{prefix}/{key}").items()}


def test_child_trains_with_the_thread_environment_set_before_torch(data_dir: Path, tmp_path: Path) -> None:
    # ListLogger lives in lstmflow, so the child imports nothing of the tests (conftest sets OMP_NUM_THREADS itself).
    spec = make_spec(data_dir, epochs=2, threads=2)
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
    parent_before = {name: os.environ.get(name) for name in names}
    result = train_in_child(spec, data_dir / "features", tmp_path, ListLogger(), progress=False)

    assert result.threads == 2 and result.epochs_run == 2 and result.resumed_from_epoch is None
    log = (tmp_path / "train.log").read_text()
    assert "OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE" in log  # as the child found them at its start
    assert f"MALLOC_MMAP_THRESHOLD_={256 * 2**20} MALLOC_TRIM_THRESHOLD_={256 * 2**20}" in log
    assert {name: os.environ.get(name) for name in names} == parent_before  # the parent's own are put back


def test_the_childs_budget_line_reaches_the_console_and_its_log_but_its_epoch_lines_only_the_log(
    data_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    spec = make_spec(data_dir, epochs=3, budget={"steps": 12})  # 9 batches an epoch: cut in epoch 2
    result = train_in_child(spec, data_dir / "features", tmp_path, ListLogger(), progress=False)

    assert result.stopped_by == "budget" and result.steps == 12 and result.epochs_run == 2 and result.batch_size == 16
    line = "sine: training stopped by its budget (train.budget: 10m00s, 12 steps) after 2 epoch(s), 12 steps"
    console = capfd.readouterr().err
    assert line in console and "epoch 1/3 train_loss" not in console  # the epochs' lines stay in the log
    log = (tmp_path / "train.log").read_text()
    assert line in log and "epoch 1/3 train_loss" in log


def test_the_warm_child_takes_the_job_of_its_environment_and_trains_as_a_new_one_would(
    data_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(data_dir, epochs=2, threads=2)
    started: list[int | None] = []
    with warm_child(spec):
        warm = launch._warm_child
        assert warm is not None and warm.process.is_alive()
        warm_pid = warm.process.pid
        result = train_in_child(
            spec, data_dir / "features", tmp_path / "warm", ListLogger(), False, lambda child: started.append(child.pid)
        )
        assert started == [warm_pid] and launch._warm_child is None

    assert "OMP_NUM_THREADS=2 MKL_NUM_THREADS=2" in (tmp_path / "warm" / "train.log").read_text()
    cold = train_in_child(spec, data_dir / "features", tmp_path / "cold", ListLogger(), progress=False)
    assert result.best_val_loss == cold.best_val_loss and result.epochs_run == cold.epochs_run == 2


def test_a_warm_child_of_another_environment_is_left_and_stopped_unused(data_dir: Path, tmp_path: Path) -> None:
    started: list[int | None] = []
    spec, record = make_spec(data_dir, epochs=1), lambda child: started.append(child.pid)
    with warm_child(make_spec(data_dir, epochs=1, threads=2)):
        warm = launch._warm_child
        assert warm is not None
        train_in_child(spec, data_dir / "features", tmp_path, ListLogger(), False, record)
        assert started[0] != warm.process.pid and warm.process.is_alive()  # one thread: a child of its own

    assert not warm.process.is_alive() and launch._warm_child is None


def test_no_warm_child_for_a_run_of_several_workers(data_dir: Path) -> None:
    with warm_child(make_spec(data_dir, epochs=1, workers=2)):
        assert launch._warm_child is None
    with warm_child(make_spec(data_dir, epochs=1)):
        assert launch._warm_child is not None


def test_a_malloc_setting_of_the_caller_is_kept(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lstmflow.training.launch import child_environment

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    environment = child_environment(make_spec(data_dir, epochs=1))
    assert environment["MALLOC_MMAP_THRESHOLD_"] == "65536" and environment["MALLOC_TRIM_THRESHOLD_"] == str(
        256 * 2**20
    )


def test_data_error_in_the_child_arrives_as_the_same_data_error(data_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(data_dir)
    with pytest.raises(DataError) as in_process:
        fit(spec, tmp_path / "no-features", tmp_path / "here", ListLogger(), progress=False)
    with pytest.raises(DataError) as from_child:
        train_in_child(spec, tmp_path / "no-features", tmp_path / "child", ListLogger(), progress=False)
    assert str(from_child.value) == str(in_process.value)
    assert "Traceback" in (tmp_path / "child" / "train.log").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA to make device: cuda fail")
def test_config_error_in_the_child_keeps_its_problems(data_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(data_dir, device="cuda")
    with pytest.raises(ConfigError) as caught:
        train_in_child(spec, data_dir / "features", tmp_path, ListLogger(), progress=False)
    assert caught.value.problems == [str(caught.value)]
    assert str(caught.value).startswith("pipelines.sine.train.device: cuda requested")


class CrashingLogger:
    """Fails the child at its first epoch's metrics: with a Python exception, or with SIGABRT like a C crash."""

    def __init__(self, how: str) -> None:
        self.how = how

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.how == "abort":
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file left behind
            os.abort()
        raise RuntimeError(f"logger broke at step {step}")


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("raise", r"failed with RuntimeError: logger broke at step 1 \(exit code 1\)\n.*Traceback"),
        ("abort", r"killed by SIGABRT.*last lines of .*train\.log:\n.*Fatal Python error: Aborted"),
    ],
    ids=["python-exception", "sigabrt"],
)
def test_other_failures_in_the_child_are_training_errors(
    data_dir: Path, tmp_path: Path, how: str, expected: str
) -> None:
    with pytest.raises(TrainingError, match=re.compile(expected, re.DOTALL)):
        train_in_child(make_spec(data_dir), data_dir / "features", tmp_path, CrashingLogger(how), progress=False)


@pytest.mark.slow
def test_sigkilled_child_resumes_to_exactly_the_uninterrupted_result(data_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(data_dir)
    features = data_dir / "features"
    uninterrupted = fit(spec, features, tmp_path / "uninterrupted", ListLogger(), progress=False)

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stalling = FileLogger(run_dir / "metrics.jsonl", stall_at=3)
    checkpoint_epoch_when_killed: list[int] = []

    def kill_once_epoch_2_is_checkpointed(process: BaseProcess) -> None:
        deadline = time.monotonic() + 300  # a guard against a hung test, not a timing assertion
        while not stalling.stalled_marker().exists():
            assert process.is_alive() and time.monotonic() < deadline, "the child ended before stalling in epoch 3"
            time.sleep(0.05)
        last = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
        checkpoint_epoch_when_killed.append(last["epoch"])
        process.kill()  # a real SIGKILL from outside the child

    with pytest.raises(TrainingError, match="killed by SIGKILL") as killed:
        train_in_child(spec, features, run_dir, stalling, progress=False, on_start=kill_once_epoch_2_is_checkpointed)
    assert checkpoint_epoch_when_killed == [2]
    assert "train.log" in str(killed.value)

    resumed = train_in_child(spec, features, run_dir, FileLogger(run_dir / "metrics.jsonl"), progress=False)

    assert resumed.resumed_from_epoch == 2 and resumed.epochs_run == 5
    assert without_timing(resumed.history) == without_timing(uninterrupted.history)
    assert resumed.best_epoch == uninterrupted.best_epoch and resumed.best_val_loss == uninterrupted.best_val_loss
    for name in ("model.pt", "checkpoints/last.pt"):  # the best weights; the last weights, optimizer and RNG states
        ours = tensors(torch.load(run_dir / name, map_location="cpu", weights_only=True))
        theirs = tensors(torch.load(tmp_path / "uninterrupted" / name, map_location="cpu", weights_only=True))
        assert ours.keys() == theirs.keys() and len(ours) > 4
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), f"{name}: {key}"

    # Epoch 3 was logged before the kill and again after the resume, with the same values; none is missing.
    logged = FileLogger(run_dir / "metrics.jsonl").steps()
    assert [row["step"] for row in logged] == [1, 2, 3, 3, 4, 5]
    assert without_timing([logged[2]]) == without_timing([logged[3]])
    once_each = [row for row in logged if row is not logged[2]]
    assert [row["val_loss"] for row in once_each] == [row["val_loss"] for row in uninterrupted.history]


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_sigkill_at_a_random_step_resumes_within_the_epoch_to_identical_weights(
    data_dir: Path, tmp_path: Path, workers: int
) -> None:
    spec = make_spec(data_dir, workers=workers, checkpoint_every=2, deterministic=True)
    features = data_dir / "features"
    uninterrupted = train_in_child(spec, features, tmp_path / "uninterrupted", ListLogger(), progress=False)

    # 9 batches an epoch, 45 steps in all: checkpoints after every even step and at each epoch's end.
    target = random.Random(f"kill-{workers}").randrange(3, 40)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    checkpoints = run_dir / "checkpoints"
    killed_at: list[tuple[int, int]] = []

    def kill_at_the_target_step(first: BaseProcess) -> None:
        deadline = time.monotonic() + 300  # a guard against a hung test, not a timing assertion
        while not any(step >= target for step in checkpoint_steps(checkpoints)):
            assert first.is_alive() and time.monotonic() < deadline, f"the child ended before step {target}"
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGSTOP)  # frozen: what is on disk now is what the resume finds
        last = checkpoints / "last.pt" if (checkpoints / "last.pt").exists() else checkpoints / "prev.pt"
        checkpoint = torch.load(last, map_location="cpu", weights_only=True)
        killed_at.append((checkpoint["epoch"], checkpoint["batches_done"]))
        first.kill()  # a real SIGKILL from outside; under DDP the launcher then stops the other worker

    # The logger stalls at the last epoch, so the run cannot end before the kill whatever the machine's speed.
    stalling = FileLogger(run_dir / "metrics.jsonl", stall_at=spec.train.epochs)
    with pytest.raises(TrainingError, match="killed by SIGKILL"):
        train_in_child(spec, features, run_dir, stalling, progress=False, on_start=kill_at_the_target_step)

    resumed = train_in_child(spec, features, run_dir, FileLogger(run_dir / "metrics.jsonl"), progress=False)

    assert [(resumed.resumed_from_epoch, resumed.resumed_from_batch)] == killed_at, f"target step {target}"
    assert without_timing(resumed.history) == without_timing(uninterrupted.history)
    for name in ("model.pt", "checkpoints/last.pt"):  # the best weights; the last weights, optimizer and RNG states
        ours = tensors(torch.load(run_dir / name, map_location="cpu", weights_only=True))
        theirs = tensors(torch.load(tmp_path / "uninterrupted" / name, map_location="cpu", weights_only=True))
        assert ours.keys() == theirs.keys() and len(ours) > 4
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), f"{name}: {key} (killed at {killed_at}, target step {target})"


def checkpoint_steps(checkpoints: Path) -> list[int]:
    """The steps of the checkpoints on disk now; one being replaced reads as absent."""
    steps = []
    for name in ("last.pt", "prev.pt"):
        try:
            steps.append(torch.load(checkpoints / name, map_location="cpu", weights_only=True)["step"])
        except (FileNotFoundError, RuntimeError, EOFError):
            continue
    return steps
