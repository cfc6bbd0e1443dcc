"""Training in process: learning, early stopping, optimizers and schedules, seeding, checkpoints and resume."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import (
    FailingAt,
    Patterns,
    load_state,
    prepare_pipeline_features,
    prepared_corpus,
    without_timing,
    write_sine_csv,
)

from lstmflow.config import PipelineSpec, deep_merge, validate_pipeline
from lstmflow.data.timeseries import load_features, resolve_data
from lstmflow.errors import CheckpointError, ConfigError, DataError, TrainingError
from lstmflow.models.lstm import build_model
from lstmflow.training.checkpoint import CHECKPOINT_KEYS, atomic_torch_save
from lstmflow.training.distributed import World, cpu_runs_bf16_lstm
from lstmflow.training.fit import EpochLoop, FitResult, fit
from lstmflow.training.loggers import ListLogger
from lstmflow.training.objectives import evaluate_loss, make_objective
from lstmflow.training.step import clip_gradients

torch.set_num_threads(1)

#: Wall-clock timings differ between identical runs; everything else must not.
TIMING = "epoch_seconds"

BASE: dict[str, Any] = {
    "data": {
        "path": "sine.csv",
        "time_column": "month",
        "target": "value",
        "window": 24,
        "horizon": 6,
        "transform": "none",
    },
    "model": {"layers": [{"lstm": {"units": 8}}, {"dense": {}}]},
    "train": {"epochs": 4, "batch_size": 16, "optimizer": {"lr": 0.01}, "seed": 0},
}


@dataclass(frozen=True)
class Sine:
    """A small seasonal series with its features prepared once, and shortcuts to train on it."""

    data_dir: Path
    features_dir: Path

    def spec(self, **sections: Any) -> PipelineSpec:
        """The base pipeline with ``sections`` merged in (e.g. ``train={"epochs": 2}``), resolved on the data."""
        return resolve_data(validate_pipeline("sine", deep_merge(BASE, sections), self.data_dir))

    def fit(self, spec: PipelineSpec, run_dir: Path, logger: ListLogger | None = None) -> FitResult:
        return fit(spec, self.features_dir, run_dir, logger if logger is not None else ListLogger(), progress=False)


@pytest.fixture(scope="module")
def sine(tmp_path_factory: pytest.TempPathFactory) -> Sine:
    folder = tmp_path_factory.mktemp("data")
    write_sine_csv(folder / "sine.csv")
    sine = Sine(folder, folder / "features")
    prepare_pipeline_features(sine.spec(), sine.features_dir)
    return sine


def assert_same_tensors(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    for name, tensor in left.items():
        assert torch.equal(tensor, right[name]), name


# ------------------------------------------------------------------------------------------------ learning


@pytest.mark.parametrize(("transform", "starts_at_zero"), [("difference", True), ("none", False)])
def test_a_differenced_forecast_starts_from_the_naive_forecast(
    sine: Sine, tmp_path: Path, transform: str, starts_at_zero: bool
) -> None:
    """A network whose last linear dense starts at zero forecasts "no change" before its first step."""
    spec = sine.spec(data={"transform": transform})
    features_dir = tmp_path / "features"
    prepare_pipeline_features(spec, features_dir)
    loop = EpochLoop.build(spec, features_dir, tmp_path / "checkpoints", World(torch.device("cpu")))
    features = load_features(features_dir)
    x, _ = next(iter(features.windows("train").batches(8)))
    with torch.no_grad():
        answers = loop.model.eval()(x)
    assert bool((answers == 0).all()) is starts_at_zero
    untrained = evaluate_loss(loop.model, features.windows("val"), spec.loss, 64)
    trained = fit(spec, features_dir, tmp_path / "run", ListLogger(), progress=False)
    assert trained.best_val_loss < untrained  # the zero head still learns: its first step moves it


def test_fit_learns_logs_once_per_epoch_and_writes_its_result(sine: Sine, tmp_path: Path) -> None:
    logger = ListLogger()
    result = sine.fit(sine.spec(), tmp_path, logger)

    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    assert result.epochs_run == 4 and not result.stopped_early and result.resumed_from_epoch is None
    assert [step for step, _ in logger.records] == [1, 2, 3, 4]
    assert {"train_loss", "val_loss", "lr", TIMING, "penalty", "best_val_loss"} <= logger.records[0][1].keys()
    assert [metrics["val_loss"] for _, metrics in logger.records] == [row["val_loss"] for row in result.history]
    assert result.best_val_loss == min(row["val_loss"] for row in result.history)
    assert result.threads == 1 and result.device == "cpu"
    assert json.loads((tmp_path / "fit_result.json").read_text()) == asdict(result)
    assert FitResult.read(tmp_path / "fit_result.json") == result


def test_early_stopping_stops_and_restores_the_best_epochs_weights(sine: Sine, tmp_path: Path) -> None:
    # A min_delta no loss can beat: only the first epoch counts as an improvement. Patience in epochs alone.
    early_stopping = {"patience": 2, "min_delta": 1000.0, "min_steps": 0, "patience_steps": 0}
    train = {"epochs": 6, "early_stopping": early_stopping, "lr_schedule": {"name": "none"}}
    spec = sine.spec(train=train)
    result = sine.fit(spec, tmp_path / "stopped")

    assert result.stopped_early and result.stopped_by == "early_stopping" and result.epochs_run == 3
    assert result.best_epoch == 1 and result.best_val_loss == result.history[0]["val_loss"] == result.best_score
    # The same seed trained for exactly one epoch gives the first epoch's weights (no schedule depends on epochs).
    one_epoch = sine.fit(sine.spec(train={"epochs": 1, "lr_schedule": {"name": "none"}}), tmp_path / "one")
    assert_same_tensors(load_state(result.model_path), load_state(one_epoch.model_path))

    features = load_features(sine.features_dir)
    model = build_model(spec.model, features.n_features, features.horizon * features.n_targets)
    model.load_state_dict(load_state(result.model_path))
    recomputed = evaluate_loss(model, features.windows("val"), spec.loss, result.batch_size)
    assert recomputed == pytest.approx(result.best_val_loss, rel=1e-6)


def test_no_validation_windows_is_a_data_error(sine: Sine, tmp_path: Path) -> None:
    spec = sine.spec(data={"split": {"val": 0.0, "test": 0.15}})
    prepare_pipeline_features(spec, tmp_path / "features")
    with pytest.raises(DataError, match=r"pipelines\.sine\.data\.split\.val: .*no windows"):
        fit(spec, tmp_path / "features", tmp_path / "run", ListLogger(), progress=False)


def test_divergence_is_reported_before_it_is_checkpointed(sine: Sine, tmp_path: Path) -> None:
    spec = sine.spec(train={"optimizer": {"name": "sgd", "lr": 1.0e4}, "grad_clip": {"norm": None}})
    with pytest.raises(TrainingError, match=r"pipelines\.sine: training diverged in epoch 1 .*lower train\.optimizer"):
        sine.fit(spec, tmp_path)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize(
    ("optimizer", "loss"),
    [
        ({"name": "adam", "lr": 0.01}, "mse"),
        ({"name": "adamw", "lr": 0.01, "weight_decay": 0.01}, "mae"),
        ({"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}, "huber"),
    ],
)
def test_each_optimizer_and_loss_trains(sine: Sine, tmp_path: Path, optimizer: dict[str, Any], loss: str) -> None:
    spec = sine.spec(train={"optimizer": optimizer, "loss": loss}, model={"l2": 1e-4})
    result = sine.fit(spec, tmp_path)
    losses = [row["train_loss"] for row in result.history]
    assert all(math.isfinite(value) for value in losses)
    assert losses[-1] < losses[0]
    assert all(row["penalty"] > 0 for row in result.history)


LR = 0.01


def cosine(epoch: int, epochs: int, min_lr: float) -> float:
    """CosineAnnealingLR's closed form: the lr at the start of ``epoch`` (0-based)."""
    return min_lr + (LR - min_lr) * (1 + math.cos(math.pi * epoch / epochs)) / 2


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"name": "none"}, [LR] * 4),
        ({"name": "cosine", "min_lr": 0.001}, [cosine(epoch, 4, 0.001) for epoch in range(4)]),
        ({"name": "step", "step_size": 2, "gamma": 0.5}, [LR, LR, LR / 2, LR / 2]),
    ],
)
def test_epoch_schedules_set_the_lr(
    sine: Sine, tmp_path: Path, schedule: dict[str, Any], expected: list[float]
) -> None:
    result = sine.fit(sine.spec(train={"lr_schedule": schedule}), tmp_path)
    assert [row["lr"] for row in result.history] == pytest.approx(expected)


def test_plateau_decays_after_epochs_without_improvement(sine: Sine, tmp_path: Path) -> None:
    # Improvement needs a drop of min_delta (as for early stopping), which no epoch after the first achieves.
    train = {
        "lr_schedule": {"name": "plateau", "patience": 0, "gamma": 0.5, "min_lr": LR / 4},
        "early_stopping": {"patience": None, "min_delta": 1000.0},
        "epochs": 5,
    }
    result = sine.fit(sine.spec(train=train), tmp_path)
    assert [row["lr"] for row in result.history] == pytest.approx([LR, LR, LR / 2, LR / 4, LR / 4])


def test_onecycle_warms_up_then_anneals_per_batch(sine: Sine, tmp_path: Path) -> None:
    result = sine.fit(sine.spec(train={"lr_schedule": {"name": "onecycle"}}), tmp_path)
    lrs = [row["lr"] for row in result.history]
    assert lrs[0] == pytest.approx(LR / 25)  # OneCycleLR starts at max_lr / div_factor
    peak = max(range(4), key=lambda e: lrs[e])
    assert 0 < peak < 3 and lrs[peak] <= LR
    assert lrs[-1] < lrs[peak]


@pytest.mark.parametrize("clip", [{"value": 0.01}, {"norm": 0.01}])
def test_clipping_bounds_the_gradients(sine: Sine, tmp_path: Path, clip: dict[str, float]) -> None:
    spec = sine.spec(train={"grad_clip": clip})
    features = load_features(sine.features_dir)
    torch.manual_seed(0)
    model = build_model(spec.model, features.n_features, features.horizon * features.n_targets)
    x, y = next(features.windows("train").batches(16))
    (10 * (model(x).view(y.shape) - y)).square().mean().backward()  # (B, H*K) -> (B, H, K); a steep loss
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert max(g.abs().max().item() for g in grads) > 0.01 and torch.cat([g.flatten() for g in grads]).norm() > 0.01

    clip_gradients(model.parameters(), spec.train.grad_clip)
    if "value" in clip:
        assert max(g.abs().max().item() for g in grads) <= 0.01
    else:
        assert torch.cat([g.flatten() for g in grads]).norm().item() == pytest.approx(0.01, rel=1e-4)
    assert sine.fit(spec, tmp_path).epochs_run == 4


# ------------------------------------------------------------------------------------------------ seeding


def test_same_seed_gives_identical_history_and_weights(sine: Sine, tmp_path: Path) -> None:
    # dropout draws from the seeded torch generator; batch order from (seed, epoch)
    layers = [{"lstm": {"units": 8, "dropout": 0.2}}, {"dropout": {"rate": 0.2}}, {"dense": {}}]
    spec = sine.spec(model={"layers": layers})
    first = sine.fit(spec, tmp_path / "a")
    second = sine.fit(spec, tmp_path / "b")
    other_seed = sine.fit(spec.model_copy(update={"train": spec.train.model_copy(update={"seed": 1})}), tmp_path / "c")

    assert without_timing(first.history) == without_timing(second.history)
    assert_same_tensors(load_state(first.model_path), load_state(second.model_path))
    assert without_timing(other_seed.history) != without_timing(first.history)


# ------------------------------------------------------------------------------------- checkpoints and resume


def test_checkpoint_holds_everything_needed_to_resume(sine: Sine, tmp_path: Path) -> None:
    spec = sine.spec(train={"lr_schedule": {"name": "cosine"}})
    result = sine.fit(spec, tmp_path)
    checkpoint = torch.load(result.checkpoint_path, map_location="cpu", weights_only=True)
    previous = torch.load(tmp_path / "checkpoints" / "prev.pt", map_location="cpu", weights_only=True)

    assert set(CHECKPOINT_KEYS) <= checkpoint.keys()
    assert checkpoint["epoch"] == 4 and previous["epoch"] == 3
    assert checkpoint["spec"] == spec.model_dump(mode="json") and checkpoint["spec_hash"] == spec.spec_hash()
    assert without_timing(checkpoint["history"]) == without_timing(result.history)
    assert checkpoint["best_epoch"] == result.best_epoch and checkpoint["best_val_loss"] == result.best_val_loss
    assert checkpoint["epochs_without_improvement"] == 4 - result.best_epoch and checkpoint["stopped_by"] == "epochs"
    assert checkpoint["best_score"] == result.best_score == result.best_val_loss  # forecasts select by val_loss
    assert 0 < checkpoint["elapsed"] == result.train_seconds
    assert_same_tensors(checkpoint["best_model"], load_state(result.model_path))
    assert checkpoint["model"].keys() == checkpoint["best_model"].keys()
    assert "exp_avg" in checkpoint["optimizer"]["state"][0]  # Adam's moments
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine's end
    assert checkpoint["scheduler"]["epoch"]["last_epoch"] == 4 and checkpoint["scheduler"]["step"] is None
    assert checkpoint["batches_done"] == 0 and checkpoint["step"] == 4 * 9  # 139 training windows: 9 batches
    [rank] = checkpoint["ranks"]  # one training process
    assert {"torch", "cuda", "numpy", "python"} <= rank["rng"].keys() and isinstance(rank["rng"]["torch"], torch.Tensor)
    assert rank["sums"][0] == 139 and rank["sums"][1] / 139 == pytest.approx(result.history[-1]["train_loss"])
    assert rank["carried"] == {}  # a forecast carries nothing from batch to batch
    assert not list((tmp_path / "checkpoints").glob("*.tmp")) and not list((tmp_path / "checkpoints").glob(".*"))


@pytest.mark.parametrize(
    ("schedule", "optimizer", "damage"),
    [("onecycle", "sgd", "torn"), ("plateau", "adamw", "missing"), ("cosine", "adam", "torn")],
)
def test_damaged_last_checkpoint_falls_back_to_the_previous_one(
    sine: Sine, tmp_path: Path, schedule: str, optimizer: str, damage: str
) -> None:
    spec = sine.spec(train={"lr_schedule": {"name": schedule}, "optimizer": {"name": optimizer, "lr": 0.02}})
    complete = sine.fit(spec, tmp_path / "complete")
    shutil.copytree(tmp_path / "complete", tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    if damage == "torn":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    else:  # killed between the two renames of a checkpoint write
        last.unlink()

    logger = ListLogger()
    with pytest.warns(UserWarning, match=r"last\.pt is (unreadable|missing).*resuming from .*prev\.pt \(epoch 3\)"):
        resumed = sine.fit(spec, tmp_path / "run", logger)

    assert resumed.resumed_from_epoch == 3
    assert [step for step, _ in logger.records] == [4]  # logging continues at the right epoch
    assert without_timing(resumed.history) == without_timing(complete.history)
    assert_same_tensors(load_state(resumed.model_path), load_state(complete.model_path))
    assert torch.load(last, weights_only=True)["epoch"] == 4  # rewritten whole


def test_no_usable_checkpoint_is_an_error(sine: Sine, tmp_path: Path) -> None:
    spec = sine.spec(train={"epochs": 2})
    sine.fit(spec, tmp_path)
    for name in ("last.pt", "prev.pt"):
        (tmp_path / "checkpoints" / name).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"no usable checkpoint .*last\.pt is unreadable.*prev\.pt is unreadable"):
        sine.fit(spec, tmp_path)


def test_checkpoint_of_another_spec_is_refused(sine: Sine, tmp_path: Path) -> None:
    first = sine.spec(train={"epochs": 2})
    sine.fit(first, tmp_path)
    changed = sine.spec(train={"epochs": 2, "optimizer": {"lr": 0.02}})
    with pytest.raises(CheckpointError) as caught:
        sine.fit(changed, tmp_path)
    assert first.spec_hash() in str(caught.value) and changed.spec_hash() in str(caught.value)


def test_checkpoint_of_another_pipeline_names_that_pipeline(sine: Sine, tmp_path: Path) -> None:
    sine.fit(sine.spec(train={"epochs": 1}), tmp_path)
    other = resolve_data(validate_pipeline("other", deep_merge(BASE, {"train": {"epochs": 1}}), sine.data_dir))
    with pytest.raises(CheckpointError, match=r"last\.pt holds a checkpoint of pipeline 'sine' \(spec \w+\), but "
                       r"pipeline 'other' now resolves to spec \w+; train into a new run directory"):  # fmt: skip
        fit(other, sine.features_dir, tmp_path, ListLogger(), progress=False)


@pytest.mark.parametrize(
    ("lstm_kernel", "schedule", "patience"),
    [("torch", "onecycle", 10), ("lstmflow", "onecycle", 10), ("torch", "auto", 10), ("torch", "auto", None)],
)
def test_a_mid_epoch_checkpoint_resumes_to_exactly_the_uninterrupted_result(
    sine: Sine, tmp_path: Path, lstm_kernel: str, schedule: str, patience: int | None
) -> None:
    # Dropout draws from the RNG, and onecycle and auto's warm-up (then plateau, or cosine without early stopping)
    # move the lr every batch: all must continue where they stopped.
    layers = [{"lstm": {"units": 8, "dropout": 0.2}}, {"dropout": {"rate": 0.2}}, {"dense": {}}]
    train = {
        "checkpoint_every": 4,
        "lr_schedule": {"name": schedule, "warmup": 0.4},
        "early_stopping": {"patience": patience},
        "deterministic": True,
        "lstm_kernel": lstm_kernel,
    }
    spec = sine.spec(model={"layers": layers}, train=train)
    try:
        complete = sine.fit(spec, tmp_path / "complete")
        with pytest.raises(RuntimeError, match="failed at epoch 2"):
            sine.fit(spec, tmp_path / "run", FailingAt(2))
        # 9 batches an epoch: checkpoints after steps 4, 8, 9 (epoch 1), 12 and 16; the epoch-2 one was never written
        checkpoints = tmp_path / "run" / "checkpoints"
        last, previous = (load_state(checkpoints / name) for name in ("last.pt", "prev.pt"))
        assert (last["epoch"], last["batches_done"], last["step"]) == (1, 7, 16)
        assert (previous["epoch"], previous["batches_done"], previous["step"]) == (1, 3, 12)

        logger = ListLogger()
        resumed = sine.fit(spec, tmp_path / "run", logger)
    finally:
        torch.use_deterministic_algorithms(False)  # fit sets it process-wide

    assert (resumed.resumed_from_epoch, resumed.resumed_from_batch) == (1, 7) and resumed.deterministic
    assert len(resumed.lstm_kernels) == 1 and resumed.lstm_kernels[0].startswith(lstm_kernel)  # lstmflow(-loop)
    assert [step for step, _ in logger.records] == [2, 3, 4]
    assert without_timing(resumed.history) == without_timing(complete.history)
    assert_same_tensors(load_state(resumed.model_path), load_state(complete.model_path))
    final, expected = (
        load_state(Path(run) / "checkpoints" / "last.pt") for run in (tmp_path / "run", tmp_path / "complete")
    )
    assert_same_tensors(final["model"], expected["model"])
    assert final["optimizer"]["state"][0]["exp_avg"].equal(expected["optimizer"]["state"][0]["exp_avg"])


@pytest.mark.parametrize("lstm_kernel", ["torch", "lstmflow"])
def test_a_stateful_language_model_resumes_mid_epoch_with_its_carried_state(tmp_path: Path, lstm_kernel: str) -> None:
    spec = prepared_corpus(tmp_path, checkpoint_every=5, lstm_kernel=lstm_kernel)
    features = tmp_path / "features"
    complete = fit(spec, features, tmp_path / "complete", ListLogger(), progress=False)
    with pytest.raises(RuntimeError, match="failed at epoch 2"):
        fit(spec, features, tmp_path / "run", FailingAt(2), progress=False)
    last = load_state(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and last["batches_done"] > 0
    carried = last["ranks"][0]["carried"]
    assert sorted(carried) == ["1.c", "1.h"] and carried["1.h"].shape == (1, 4, 16)  # (layers, streams, units)

    resumed = fit(spec, features, tmp_path / "run", ListLogger(), progress=False)
    assert (resumed.resumed_from_epoch, resumed.resumed_from_batch) == (1, last["batches_done"])
    assert len(resumed.lstm_kernels) == 1 and resumed.lstm_kernels[0].startswith(lstm_kernel)  # lstmflow(-loop)
    assert without_timing(resumed.history) == without_timing(complete.history)
    assert_same_tensors(load_state(resumed.model_path), load_state(complete.model_path))


def test_train_lstm_kernel_picks_what_trains_and_both_learn_the_same(sine: Sine, tmp_path: Path) -> None:
    results = {
        kernel: sine.fit(sine.spec(train={"epochs": 2, "lstm_kernel": kernel}), tmp_path / kernel)
        for kernel in ("torch", "lstmflow")
    }
    assert results["torch"].lstm_kernels == ["torch"]
    assert results["lstmflow"].lstm_kernels in (["lstmflow"], ["lstmflow-loop"])  # the loop without a compiler
    for ours, theirs in zip(results["lstmflow"].history, results["torch"].history, strict=True):
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4)


def test_bf16_trains_where_the_cpu_can_and_is_refused_before_training_elsewhere(sine: Sine, tmp_path: Path) -> None:
    bf16 = sine.spec(train={"epochs": 2, "precision": "bf16", "device": "cpu"})
    if cpu_runs_bf16_lstm():
        result = sine.fit(bf16, tmp_path / "bf16")
        assert result.precision == "bf16" and all(math.isfinite(row["val_loss"]) for row in result.history)
        assert load_state(result.model_path)["layers.0.lstm.weight_ih_l0"].dtype == torch.float32  # weights stay fp32
        assert result.lstm_kernels == ["torch"]  # lstmflow's kernel has no bf16: autocast keeps nn.LSTM
    else:  # a CPU without AVX-512: oneDNN would fail inside the first batch
        with pytest.raises(ConfigError, match=r"pipelines\.sine\.train\.precision: bf16 is not supported by this CPU"):
            sine.fit(bf16, tmp_path / "bf16")
        assert not (tmp_path / "bf16").exists()


def test_fp16_is_refused_on_cpu_before_training(sine: Sine, tmp_path: Path) -> None:

    with pytest.raises(ConfigError, match=r"pipelines\.sine\.train\.precision: fp16 needs CUDA .*use bf16 or fp32"):
        sine.fit(sine.spec(train={"precision": "fp16", "device": "cpu"}), tmp_path / "fp16")
    assert not (tmp_path / "fp16").exists()


def test_a_finished_run_resumes_to_the_same_result_without_training(sine: Sine, tmp_path: Path) -> None:
    early_stopping = {"patience": 1, "min_delta": 1000.0, "min_steps": 0, "patience_steps": 0}
    spec = sine.spec(train={"epochs": 6, "early_stopping": early_stopping})
    first = sine.fit(spec, tmp_path)
    logger = ListLogger()
    again = sine.fit(spec, tmp_path, logger)
    assert first.stopped_early and again.stopped_early and again.epochs_run == first.epochs_run == 2
    assert logger.records == [] and again.resumed_from_epoch == 2
    assert again.history == first.history


def test_atomic_save_leaves_no_partial_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "state.pt"
    atomic_torch_save({"weights": torch.arange(3)}, target)
    before = target.read_bytes()
    unpicklable = {"weights": torch.zeros(100_000), "callback": lambda: None}  # torch.save fails midway through

    with pytest.raises(Exception, match="lambda"):
        atomic_torch_save(unpicklable, target, previous=tmp_path / "before.pt")
    with pytest.raises(Exception, match="lambda"):
        atomic_torch_save(unpicklable, tmp_path / "new.pt")

    assert target.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["state.pt"]


# -------------------------------------------------------------------------------------------- classification


def test_forecast_history_holds_only_the_forecast_metrics(sine: Sine, tmp_path: Path) -> None:
    result = sine.fit(sine.spec(train={"epochs": 1}), tmp_path)
    assert list(result.history[0]) == [
        "epoch", "train_loss", "val_loss", "penalty", "best_val_loss", "lr", "epoch_seconds"
    ]  # fmt: skip
    assert (result.batch_size, result.steps, result.select) == (16, 9, "val_loss")  # the batch size BASE gives


def test_classifier_learns_an_order_pattern_in_variable_length_sequences(patterns: Patterns, tmp_path: Path) -> None:
    logger = ListLogger()
    result = patterns.fit(patterns.spec(), tmp_path, logger)

    accuracies = [row["val_accuracy"] for row in result.history]
    assert max(accuracies) >= 0.8  # chance is 1/3; the means of the three classes are all about 0
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    best = result.history[result.best_epoch - 1]
    assert best["val_loss"] == result.best_val_loss == min(row["val_loss"] for row in result.history)
    assert all(0 < row["train_padding_fraction"] < 0.5 for row in result.history)
    assert {"val_accuracy", "train_padding_fraction", "val_loss", "train_loss"} <= logger.records[0][1].keys()

    # model.pt is the best epoch's classifier: its validation accuracy is the one logged for that epoch
    objective = make_objective(patterns.spec(), patterns.features_dir)
    model = build_model(patterns.spec().model, objective.n_features, objective.n_outputs)
    model.load_state_dict(load_state(result.model_path))
    assert objective.evaluate(model, "val", 16, "cpu")["accuracy"] == best["val_accuracy"]


def test_classifier_resumes_after_a_damaged_checkpoint(patterns: Patterns, tmp_path: Path) -> None:
    layers = [{"lstm": {"units": 8, "dropout": 0.2, "return_sequences": True}}, {"batchnorm": {}},
              {"lstm": {"units": 8}}, {"dropout": {"rate": 0.2}}, {"dense": {"activation": "softmax"}}]  # fmt: skip
    spec = patterns.spec(model={"layers": layers}, train={"epochs": 4, "lr_schedule": {"name": "onecycle"}})
    complete = patterns.fit(spec, tmp_path / "complete")
    shutil.copytree(tmp_path / "complete", tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])

    logger = ListLogger()
    with pytest.warns(UserWarning, match=r"last\.pt is unreadable.*resuming from .*prev\.pt \(epoch 3\)"):
        resumed = patterns.fit(spec, tmp_path / "run", logger)

    assert resumed.resumed_from_epoch == 3 and [step for step, _ in logger.records] == [4]
    assert without_timing(resumed.history) == without_timing(complete.history)
    assert_same_tensors(load_state(resumed.model_path), load_state(complete.model_path))


def test_a_classifier_spec_error_stops_fit_before_training(patterns: Patterns, tmp_path: Path) -> None:
    spec = patterns.spec(model={"layers": [{"lstm": {"units": 4}}, {"dense": {"activation": "sigmoid"}}]})
    with pytest.raises(
        ConfigError, match=r"pipelines\.patterns\.model\.layers\[1\]\.dense\.activation: a classifier's output"
    ):
        patterns.fit(spec, tmp_path)
    assert not (tmp_path / "checkpoints").exists()
