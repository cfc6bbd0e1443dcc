"""Data-parallel training: two gloo workers on CPU against one process (forecast with batch norm, classifier, stateful
language model), two machines on loopback, the named errors, the real flow with two workers, and (on a CUDA machine)
the GPU path.

The GPU tests import only torch, pytest and lstmflow (with conftest), so that they run on a machine with its own
PyTorch: ``PYTHONPATH=. pytest -m gpu tests/test_distributed.py``.
"""

from __future__ import annotations

import ipaddress
import json
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import (
    Patterns,
    free_port,
    load_state,
    make_project,
    prepare_pipeline_features,
    prepared_corpus,
    write_sine_csv,
)

from lstmflow.config import PipelineSpec, deep_merge, validate_pipeline
from lstmflow.data.timeseries import resolve_data
from lstmflow.errors import CheckpointError, ConfigError
from lstmflow.training.distributed import RendezvousError
from lstmflow.training.fit import FitResult, fit
from lstmflow.training.launch import train_in_child
from lstmflow.training.loggers import ListLogger

torch.set_num_threads(1)

#: 139 training windows: batches of 23 leave a last batch of one row, so the second worker has none of its own.
BASE: dict[str, Any] = {
    "data": {
        "path": "sine.csv", "time_column": "month", "target": "value", "window": 24, "horizon": 6, "transform": "none"
    },
    "model": {
        "layers": [
            {"lstm": {"units": 8, "return_sequences": True}}, {"batchnorm": {}}, {"lstm": {"units": 8}}, {"dense": {}}
        ]
    },
    "train": {"epochs": 3, "batch_size": 23, "optimizer": {"lr": 0.01}, "seed": 0, "deterministic": True},
}  # fmt: skip


class JsonLinesLogger:
    """A MetricLogger that survives the child processes: one JSON line per call, from whichever process makes it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps({"step": step, **metrics}) + "\n")

    def steps(self) -> list[int]:
        return [json.loads(line)["step"] for line in self.path.read_text().splitlines()] if self.path.exists() else []


def spec_on(data_dir: Path, **train: Any) -> PipelineSpec:
    return resolve_data(validate_pipeline("sine", deep_merge(BASE, {"train": train}), data_dir))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_sine_csv(folder / "sine.csv")
    prepare_pipeline_features(spec_on(folder), folder / "features")
    return folder


@pytest.fixture(scope="module")
def one_process(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FitResult:
    """The reference: the same spec and global batch, trained by one process."""
    try:
        return fit(
            spec_on(data_dir), data_dir / "features", tmp_path_factory.mktemp("one"), ListLogger(), progress=False
        )
    finally:
        torch.use_deterministic_algorithms(False)  # fit sets it for its process, which is this one


def val_losses(result: FitResult) -> list[float]:
    return [row["val_loss"] for row in result.history]


def test_two_workers_match_one_process_log_once_and_listen_on_loopback_only(
    data_dir: Path, one_process: FitResult, tmp_path: Path
) -> None:
    import psutil

    listening: set[str] = set()

    def record_listening_sockets(first: BaseProcess) -> None:
        while first.is_alive():
            for child in psutil.Process().children(recursive=True):
                try:
                    if "spawn_main" in " ".join(child.cmdline()):  # a training worker
                        listening.update(c.laddr.ip for c in child.net_connections("inet") if c.status == "LISTEN")
                except psutil.Error:  # ended between the listing and the look
                    continue
            time.sleep(0.05)

    logger = JsonLinesLogger(tmp_path / "metrics.jsonl")
    run_dir = tmp_path / "run"
    two = train_in_child(spec_on(data_dir, workers=2), data_dir / "features", run_dir, logger, progress=False,
                         on_start=record_listening_sockets)  # fmt: skip

    assert (two.workers, one_process.workers) == (2, 1) and two.deterministic
    assert val_losses(two) == pytest.approx(val_losses(one_process), rel=1e-4)
    assert [r["train_loss"] for r in two.history] == pytest.approx(
        [r["train_loss"] for r in one_process.history], rel=1e-4
    )
    ours, theirs = load_state(two.model_path), load_state(one_process.model_path)
    assert ours.keys() == theirs.keys()  # the batch norm with global statistics saves as the plain one
    for name in ours:  # tight enough to see the running variance taking in the second worker's borrowed row
        scale = theirs[name].float().abs().max()
        assert torch.allclose(ours[name].float(), theirs[name].float(), rtol=0, atol=1e-5 * scale), name
    assert logger.steps() == [1, 2, 3], "rank 0 alone logs, once per epoch"
    assert "rank 1 of 2" in (run_dir / "train.rank1.log").read_text()
    assert not list(run_dir.glob(".rendezvous-*"))
    assert listening, "gloo listens while the workers train"
    assert all(ipaddress.ip_address(address).is_loopback for address in listening), listening


def test_a_classifier_with_masked_batch_norm_on_two_workers_matches_one_process(
    patterns: Patterns, tmp_path: Path
) -> None:
    """Variable-length sequences: ``model.logits(x, lengths)`` goes through DDP, and the batch norm's global statistics
    leave every worker's padding out."""
    layers = [{"lstm": {"units": 8, "return_sequences": True}}, {"batchnorm": {}}, {"lstm": {"units": 8}},
              {"dense": {"activation": "softmax"}}]  # fmt: skip
    spec = patterns.spec(model={"layers": layers}, train={"epochs": 2})
    one = patterns.fit(spec, tmp_path / "one")
    two_workers = spec.model_copy(update={"train": spec.train.model_copy(update={"workers": 2})})
    two = train_in_child(two_workers, patterns.features_dir, tmp_path / "two", ListLogger(), progress=False)
    assert val_losses(two) == pytest.approx(val_losses(one), rel=1e-4)
    assert [row["val_accuracy"] for row in two.history] == [row["val_accuracy"] for row in one.history]


def test_two_machines_of_one_worker_each_train_one_model(
    data_dir: Path, one_process: FitResult, tmp_path: Path
) -> None:
    endpoint = f"127.0.0.1:{free_port()}"

    def machine(rank: int) -> FitResult:
        spec = spec_on(data_dir, nodes={"count": 2, "rank": rank, "endpoint": endpoint, "timeout": 120})
        logger = JsonLinesLogger(tmp_path / f"metrics{rank}.jsonl")
        return train_in_child(spec, data_dir / "features", tmp_path / f"machine{rank}", logger, progress=False)

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(machine, [0, 1])

    assert first.workers == second.workers == 2
    assert val_losses(first) == val_losses(second) == pytest.approx(val_losses(one_process), rel=1e-4)
    assert JsonLinesLogger(tmp_path / "metrics0.jsonl").steps() == [1, 2, 3]
    assert JsonLinesLogger(tmp_path / "metrics1.jsonl").steps() == []
    assert (tmp_path / "machine0" / "checkpoints" / "last.pt").exists()
    assert not (tmp_path / "machine1" / "checkpoints").exists(), "machine 0 alone writes checkpoints"
    assert torch.equal(
        load_state(first.model_path)["layers.3.linear.weight"], load_state(second.model_path)["layers.3.linear.weight"]
    )


def test_a_rendezvous_that_never_answers_is_a_named_error(data_dir: Path, tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"  # nobody listens there: machine 0 never started
    spec = spec_on(data_dir, nodes={"count": 2, "rank": 1, "endpoint": endpoint, "timeout": 2})
    with pytest.raises(RendezvousError, match=rf"pipelines\.sine\.train: the 2 training processes did not all meet at "
                       rf"tcp://{endpoint} within 2 s \(this is rank 1; machine 0 must be running"):  # fmt: skip
        train_in_child(spec, data_dir / "features", tmp_path, ListLogger(), progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bad_settings_fail_together_before_any_worker_starts(data_dir: Path, tmp_path: Path) -> None:
    spec = spec_on(data_dir, workers=2, backend="nccl", precision="fp16", device="auto", batch_size=1)
    with pytest.raises(ConfigError) as caught:
        train_in_child(spec, data_dir / "features", tmp_path, ListLogger(), progress=False)
    assert caught.value.problems == [
        (
            "pipelines.sine.train.precision: fp16 needs CUDA (PyTorch's CPU LSTM has no fp16 kernels); "
            "use bf16 or fp32 on cpu"
        ),
        (
            "pipelines.sine.train.batch_size: the global batch of 1 is shared by 2 workers; give at least 2 so that "
            "each has rows of its own"
        ),
        (
            "pipelines.sine.train.backend: nccl needs CUDA devices and a PyTorch built with NCCL, but training runs "
            f"on cpu (torch {torch.__version__}); use backend: gloo or auto"
        ),
    ]
    assert not (tmp_path / "train.log").exists(), "no worker started"


def test_a_stateful_language_model_keeps_whole_streams_per_worker(tmp_path: Path) -> None:
    """Each worker carries the (h, c) of its own streams (rows) from span to span, so two workers learn the text
    as one process does; any other split of the rows would hand a worker states from another stream."""
    spec = prepared_corpus(tmp_path, deterministic=True)
    try:
        one = fit(spec, tmp_path / "features", tmp_path / "one", ListLogger(), progress=False)
    finally:
        torch.use_deterministic_algorithms(False)
    two_workers = spec.model_copy(update={"train": spec.train.model_copy(update={"workers": 2})})
    two = train_in_child(two_workers, tmp_path / "features", tmp_path / "two", ListLogger(), progress=False)
    assert val_losses(two) == pytest.approx(val_losses(one), rel=1e-4)
    assert val_losses(one)[-1] < val_losses(one)[0]


def test_a_checkpoint_of_another_pipeline_is_refused_before_any_worker_starts(data_dir: Path, tmp_path: Path) -> None:
    try:
        fit(spec_on(data_dir, epochs=1), data_dir / "features", tmp_path, ListLogger(), progress=False)
    finally:
        torch.use_deterministic_algorithms(False)
    other = resolve_data(validate_pipeline("other", deep_merge(BASE, {"train": {"workers": 2}}), data_dir))
    with pytest.raises(CheckpointError, match=r"holds a checkpoint of pipeline 'sine' .* but pipeline 'other'"):
        train_in_child(other, data_dir / "features", tmp_path, ListLogger(), progress=False)
    assert not (tmp_path / "train.log").exists(), "no worker started"


# ------------------------------------------------------------------------------------------------ the real flow


@pytest.mark.slow
def test_two_workers_through_the_flow_log_one_run_like_one_worker(tmp_path: Path, prefect_harness: None) -> None:
    from mlflow import MlflowClient

    from flows.pipeline import run_pipeline

    root = make_project(tmp_path / "project")
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    histories = {}
    for workers in (1, 2):
        overrides = {"train.workers": workers, "train.deterministic": True}
        result = run_pipeline(pipeline="tiny", overrides=overrides, config=str(root / "pipelines.yaml"))
        histories[workers] = client.get_metric_history(result["mlflow_run_id"], "val_loss")
        assert client.get_run(result["mlflow_run_id"]).data.params["train.workers"] == str(workers)
    experiment = client.get_experiment_by_name("tiny")
    assert len(client.search_runs([experiment.experiment_id])) == 2, "one MLflow run per training, workers or not"
    assert [m.step for m in histories[2]] == [1, 2, 3], "one value per epoch: rank 0 alone logs"
    assert [m.value for m in histories[2]] == pytest.approx([m.value for m in histories[1]], rel=1e-4)


# ---------------------------------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_model_trained_on_cuda_loads_and_predicts_on_cpu(data_dir: Path, tmp_path: Path, precision: str) -> None:
    from lstmflow.data.timeseries import load_features
    from lstmflow.models.lstm import build_model
    from lstmflow.training.objectives import evaluate_loss

    spec = spec_on(data_dir, device="cuda", precision=precision)
    result = train_in_child(spec, data_dir / "features", tmp_path, ListLogger(), progress=False)
    assert result.device == "cuda:0" and result.precision == precision

    state = torch.load(result.model_path, map_location="cpu", weights_only=True)
    features = load_features(data_dir / "features")
    model = build_model(spec.model, features.n_features, features.horizon * features.n_targets)
    model.load_state_dict(state)
    on_cpu = evaluate_loss(model, features.windows("val"), spec.loss, spec.train.batch_size)
    assert on_cpu == pytest.approx(result.best_val_loss, rel=0.05 if precision != "fp32" else 1e-3)  # TF32 in cuDNN


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_more_gpu_workers_than_gpus_is_refused_before_any_starts(data_dir: Path, tmp_path: Path) -> None:
    gpus = torch.cuda.device_count()
    spec = spec_on(data_dir, device="cuda", workers=gpus + 1)
    with pytest.raises(ConfigError, match=rf"train\.workers: {gpus + 1} workers on cuda need {gpus + 1} GPUs, but this "
                       rf"machine has {gpus}"):  # fmt: skip
        train_in_child(spec, data_dir / "features", tmp_path, ListLogger(), progress=False)
    assert not (tmp_path / "train.log").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_deterministic_cuda_training_repeats_bit_for_bit(data_dir: Path, tmp_path: Path) -> None:
    spec = spec_on(data_dir, device="cuda")
    first, second = (train_in_child(spec, data_dir / "features", tmp_path / run, ListLogger(), progress=False)
                     for run in ("a", "b"))  # fmt: skip
    assert val_losses(first) == val_losses(second)
    ours, theirs = load_state(first.model_path), load_state(second.model_path)
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
