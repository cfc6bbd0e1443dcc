"""Training that adapts to the data's size: the automatic batch size, early stopping measured in steps, the budget
and its progress lines, the auto lr schedule, selection by accuracy, class weights, and the small-validation rule."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CLASSIFY_BASE, FailingAt, prepared_corpus, write_pattern_sequences

from lstmflow.config import ClassSplitSpec, PipelineSpec, deep_merge, validate_pipeline
from lstmflow.data.sequences import assign_parts, write_sequences
from lstmflow.errors import ConfigError
from lstmflow.models.lstm import build_model
from lstmflow.training import budget
from lstmflow.training.fit import FitResult, fit
from lstmflow.training.loggers import ListLogger, MetricLogger
from lstmflow.training.objectives import class_weights, make_objective, resolve_batch_size

torch.set_num_threads(1)

SMALL_MODEL = {"layers": [{"lstm": {"units": 8}}, {"dense": {"activation": "softmax"}}]}


#: The validation samples these tests' specs count as enough to decide on (the default, 100, would need larger sets).
DECIDES = 30


def spec_on(folder: Path, **sections: Any) -> PipelineSpec:
    """A classify spec on the features in ``folder / "features"``, with the documented train defaults unless
    ``sections`` says otherwise (conftest's base sets a batch size, which these tests leave to ``auto``), but for a
    validation part of 30 samples counting as enough to decide on, so that these small sets stop early."""
    base = {key: value for key, value in CLASSIFY_BASE.items() if key != "train"}
    base["train"] = {"early_stopping": {"min_val_samples": DECIDES}}
    return validate_pipeline("tiny", deep_merge({**base, "model": SMALL_MODEL}, sections), folder)


def fit_on(folder: Path, spec: PipelineSpec, run_dir: Path, logger: MetricLogger | None = None) -> FitResult:
    return fit(spec, folder / "features", run_dir, logger or ListLogger(), progress=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 sequences: 24 to train on and 30 to validate (just enough to decide on)."""
    folder = tmp_path_factory.mktemp("small")
    write_pattern_sequences(folder / "features", per_class=20, split=ClassSplitSpec(val=0.5, test=0.1))
    return folder


@pytest.fixture(scope="module")
def tiny_val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 sequences, of which 15 validate: too few to decide on."""
    folder = tmp_path_factory.mktemp("tiny_val")
    write_pattern_sequences(folder / "features", per_class=20, split=ClassSplitSpec(val=0.25, test=0.15))
    return folder


# ------------------------------------------------------------------------------------------------ batch size


class Counted:
    """An objective stand-in with a given number of training samples."""

    def __init__(self, samples: int) -> None:
        self.count = samples

    def samples(self, part: str) -> int:
        return self.count


@pytest.mark.parametrize(
    ("samples", "world", "expected"),
    [(40, 1, 8), (200, 1, 8), (256, 1, 16), (700, 1, 32), (1024, 1, 64), (10**6, 1, 64), (40, 12, 12)],
)
def test_auto_batch_size_gives_small_sets_many_steps(small: Path, samples: int, world: int, expected: int) -> None:
    spec = spec_on(small)
    assert spec.train.batch_size == "auto"
    assert resolve_batch_size(spec, Counted(samples), world) == expected  # type: ignore[arg-type]
    given = spec_on(small, train={"batch_size": 48})
    assert resolve_batch_size(given, Counted(samples), world) == 48  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- early stopping in steps


def test_early_stopping_waits_for_min_steps(small: Path, tmp_path: Path) -> None:
    # min_delta no loss can beat: only epoch 1 is a gain, so patience 2 alone would stop after epoch 3 (9 steps).
    early_stopping = {"patience": 2, "patience_steps": 0, "min_delta": 1000.0, "min_steps": 40}
    spec = spec_on(small, train={"epochs": 50, "select": "val_loss", "early_stopping": early_stopping})
    result = fit_on(small, spec, tmp_path / "run")

    assert result.batch_size == 8 and result.steps == 3 * result.epochs_run  # 24 training sequences: 3 steps an epoch
    assert result.stopped_by == "early_stopping" and result.best_epoch == 1
    assert 40 <= result.steps < 40 + 3  # stopped at the first epoch's end from step 40 on


def test_patience_counts_steps_as_well_as_epochs(small: Path, tmp_path: Path) -> None:
    early_stopping = {"patience": 1, "patience_steps": 12, "min_delta": 1000.0, "min_steps": 0}
    spec = spec_on(small, train={"epochs": 50, "select": "val_loss", "early_stopping": early_stopping})
    result = fit_on(small, spec, tmp_path / "run")
    assert result.stopped_by == "early_stopping" and result.epochs_run == 1 + 4  # 12 steps are 4 epochs of 3


def test_a_tiny_training_set_trains_at_least_min_steps_by_default(small: Path, tmp_path: Path) -> None:
    result = fit_on(small, spec_on(small, train={"budget": {"seconds": None}}), tmp_path / "run")
    assert result.steps >= 300 and result.batch_size == 8
    assert result.lr_schedule == "auto-plateau" and result.select == "val_accuracy"
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]


# ------------------------------------------------------------------------------------------------ the budget


def test_a_step_budget_cuts_an_epoch_and_keeps_the_best_weights(
    small: Path, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    spec = spec_on(small, train={"epochs": 50, "budget": {"steps": 7}, "select": "val_loss"})
    with caplog.at_level(logging.INFO):
        result = fit_on(small, spec, tmp_path / "run")

    assert result.stopped_by == "budget" and not result.stopped_early
    assert result.steps == 7 and result.epochs_run == 3  # epochs of 3 steps; the third is cut after its first
    assert len(result.history) == 3 and result.best_epoch == min(
        range(1, 4), key=lambda e: result.history[e - 1]["val_loss"]
    )
    budget_lines = [r.getMessage() for r in caplog.records if r.name == budget.PROGRESS_LOGGER]
    assert budget_lines == [
        (
            f"tiny: training stopped by its budget (train.budget: 10m00s, 7 steps) after 3 epoch(s), 7 steps, "
            f"{budget.minutes(result.train_seconds)}; keeping the best epoch, {result.best_epoch} "
            f"(val_loss {result.best_val_loss:.4f})"
        )
    ]


def test_a_time_budget_interrupts_a_language_models_first_epoch(tmp_path: Path) -> None:
    spec = prepared_corpus(tmp_path, repeats=200, batch_size=4, budget={"seconds": 1e-3}, epochs=3)
    result = fit(spec, tmp_path / "features", tmp_path / "run", ListLogger(), progress=False)
    objective = make_objective(spec, tmp_path / "features")
    assert objective.batch_count("train", 4) > 1
    assert result.stopped_by == "budget" and result.steps == 1 and result.epochs_run == 1
    assert Path(result.model_path).exists() and math.isfinite(result.best_val_loss)


def test_a_resumed_run_continues_its_budget_from_the_checkpoint(small: Path, tmp_path: Path) -> None:
    spec = spec_on(small, train={"epochs": 4, "budget": {"seconds": 50.0}})
    with pytest.raises(RuntimeError, match="failed at epoch 3"):
        fit_on(small, spec, tmp_path / "run", FailingAt(3))
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["epoch"] == 2 and 0 < checkpoint["elapsed"] < 50 and checkpoint["stopped_by"] is None

    torch.save({**checkpoint, "elapsed": 50.0}, last)  # as if the two epochs had used up the budget's time
    resumed = fit_on(small, spec, tmp_path / "run")
    assert resumed.resumed_from_epoch == 2 and resumed.stopped_by == "budget" and resumed.epochs_run == 3
    assert resumed.steps == checkpoint["step"] + 1  # one step of epoch 3, then the budget
    assert resumed.train_seconds >= 50.0


def test_progress_lines_come_every_so_often_and_not_at_all_in_short_runs(
    small: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = spec_on(small, train={"epochs": 2})
    with caplog.at_level(logging.INFO):
        fit_on(small, spec, tmp_path / "quiet")
    assert not [r for r in caplog.records if r.name == budget.PROGRESS_LOGGER]

    caplog.clear()
    monkeypatch.setattr(budget, "PROGRESS_EVERY", 0.0)  # a line after every step
    with caplog.at_level(logging.INFO):
        result = fit_on(small, spec, tmp_path / "chatty")
    lines = [r.getMessage() for r in caplog.records if r.name == budget.PROGRESS_LOGGER]
    assert len(lines) == result.steps
    assert lines[0].startswith("tiny: epoch 1/2 step 1/6 train_loss ") and " val_accuracy - elapsed 0m" in lines[0]
    assert f" val_accuracy {result.history[0]['val_accuracy']:.4f} " in lines[3] and lines[3].endswith(
        "/ budget 10m00s"
    )


# ------------------------------------------------------------------------------------------- lr schedule


def test_auto_schedule_warms_up_then_decays_on_the_selected_metric(small: Path, tmp_path: Path) -> None:
    early_stopping = {"patience": 2, "patience_steps": 0, "min_delta": 1000.0, "min_steps": 1000}
    train = {"epochs": 8, "optimizer": {"lr": 0.01}, "early_stopping": early_stopping, "select": "val_loss"}
    result = fit_on(small, spec_on(small, train=train), tmp_path / "run")
    lrs = [row["lr"] for row in result.history]
    # warm-up: 5% of 24 steps is 1 step, from a tenth of the lr; then halved after every patience // 2 = 1 epoch
    # without a gain (every epoch after the first), from epoch 3 on.
    assert result.lr_schedule == "auto-plateau"
    assert lrs[0] == pytest.approx(0.001) and lrs[1] == pytest.approx(0.01)
    assert lrs[2:5] == pytest.approx([0.005, 0.0025, 0.00125])


def test_without_early_stopping_auto_anneals_to_the_last_step(small: Path, tmp_path: Path) -> None:
    train = {"epochs": 5, "optimizer": {"lr": 0.01}, "early_stopping": {"patience": None}}
    result = fit_on(small, spec_on(small, train=train), tmp_path / "run")
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert result.lr_schedule == "auto-cosine" and result.stopped_by == "epochs" and result.kept == "best"
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert result.history[1]["lr"] > result.history[2]["lr"] > result.history[3]["lr"] > result.history[4]["lr"]


# ------------------------------------------------------------------------------------------------ selection


@pytest.mark.parametrize("select", ["val_accuracy", "val_macro_f1"])
def test_select_keeps_the_epoch_with_the_best_score(small: Path, select: str, tmp_path: Path) -> None:
    spec = spec_on(small, train={"epochs": 12, "select": select, "early_stopping": {"patience": None}})
    result = fit_on(small, spec, tmp_path)
    scores = [row[select] for row in result.history]
    ties = [e for e in range(1, 13) if scores[e - 1] == max(scores)]
    expected = min(ties, key=lambda e: result.history[e - 1]["val_loss"])  # ties go to the lower val_loss
    assert result.best_epoch == expected and result.best_score == max(scores) and result.select == select

    objective = make_objective(spec, small / "features")
    model = build_model(spec.model, objective.n_features, objective.n_outputs)
    model.load_state_dict(torch.load(result.model_path, weights_only=True))
    assert objective.evaluate(model, "val", 8, "cpu")[select.removeprefix("val_")] == pytest.approx(max(scores))


def test_selecting_by_accuracy_is_for_classify_only(tmp_path: Path) -> None:
    spec = prepared_corpus(tmp_path, select="val_accuracy")
    with pytest.raises(ConfigError, match=r"pipelines\.lm\.train\.select: val_accuracy is for task classify only"):
        fit(spec, tmp_path / "features", tmp_path / "run", ListLogger(), progress=False)


# ------------------------------------------------------------------------------------------- class weights


def test_class_weight_rules() -> None:
    imbalanced = np.array([0] * 30 + [1] * 6 + [2] * 10)
    balanced = len(imbalanced) / (3 * np.array([30, 6, 10]))  # scikit-learn's n / (classes * count)
    np.testing.assert_allclose(class_weights(imbalanced, 3, "balanced"), balanced, rtol=1e-6)
    np.testing.assert_allclose(class_weights(imbalanced, 3, "auto"), np.sqrt(balanced), rtol=1e-6)
    assert class_weights(imbalanced, 3, "none") is None
    mild = np.array([0] * 20 + [1] * 8)  # 2.5 : 1, below the ratio at which auto weighs
    assert class_weights(mild, 2, "auto") is None
    np.testing.assert_allclose(class_weights(mild, 3, "balanced"), [28 / 40, 28 / 16, 0.0], rtol=1e-6)


def write_imbalanced(folder: Path, counts: dict[str, int]) -> None:
    """The patterns of conftest with ``counts`` sequences per class."""
    rng = np.random.default_rng(0)
    sequences, labels = [], []
    for label, count in counts.items():
        for _ in range(count):
            t = np.linspace(-1, 1, int(rng.integers(4, 21)))
            signal = {"rise": t, "fall": -t, "wave": np.sin(2 * np.pi * t)}[label]
            sequences.append(np.stack([signal + rng.normal(0, 0.2, len(t)), rng.normal(0, 1, len(t))], axis=1))
            labels.append(label)
    parts = assign_parts(labels, ClassSplitSpec(val=0.3, test=0.1), None, where="pipelines.tiny.data")
    write_sequences(folder / "features", sequences, labels, parts, "standard", None, "pipelines.tiny.data", {})


def test_imbalanced_labels_weigh_the_loss_by_inverse_frequency(tmp_path: Path) -> None:
    write_imbalanced(tmp_path, {"rise": 60, "fall": 12, "wave": 12})
    spec = spec_on(tmp_path, train={"epochs": 2})
    objective = make_objective(spec, tmp_path / "features")
    train_counts = np.bincount(objective.features.part("train").labels, minlength=3)  # type: ignore[attr-defined]
    expected = np.sqrt(train_counts.sum() / (3 * train_counts))
    assert objective.class_weights is not None  # type: ignore[attr-defined]
    np.testing.assert_allclose(objective.class_weights.numpy(), expected, rtol=1e-5)  # type: ignore[attr-defined]

    torch.manual_seed(0)
    model = build_model(spec.model, objective.n_features, objective.n_outputs)
    (inputs, target), *_ = objective.batches("train", 64)
    logits = model.logits(*inputs)
    weighted = F.cross_entropy(logits, target, weight=torch.from_numpy(expected).float())
    torch.testing.assert_close(objective.loss(model, inputs, target), weighted)
    assert not torch.isclose(weighted, F.cross_entropy(logits, target))

    result = fit_on(tmp_path, spec, tmp_path / "run")
    assert result.class_weights == pytest.approx(expected.tolist(), rel=1e-5)
    plain = fit_on(tmp_path, spec_on(tmp_path, train={"epochs": 2, "class_weight": "none"}), tmp_path / "plain")
    assert plain.class_weights is None and plain.history[0]["train_loss"] != result.history[0]["train_loss"]


# ------------------------------------------------------------------------------------ a tiny validation part


def test_a_tiny_validation_part_trains_a_fixed_schedule_and_keeps_the_last_weights(
    tiny_val: Path, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    spec = spec_on(tiny_val, train={"epochs": 6, "optimizer": {"lr": 0.01}})
    with caplog.at_level(logging.INFO):
        result = fit_on(tiny_val, spec, tmp_path / "run")
    notes = [r.getMessage() for r in caplog.records if r.name == budget.PROGRESS_LOGGER]
    assert notes == [
        (
            "pipelines.tiny: 15 validation samples are fewer than train.early_stopping.min_val_samples (30), too few "
            "to decide on: early stopping is off, the lr warms up and anneals to the run's end (train.lr_schedule "
            "auto), and the last epoch's weights are kept; the validation samples join the training part, so its "
            "validation scores are on seen samples"
        )
    ]
    assert result.kept == "last" and result.best_epoch == result.epochs_run == 6 and result.stopped_by == "epochs"
    assert result.lr_schedule == "auto-cosine"
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert_same = [torch.equal(a, b) for a, b in zip(checkpoint["model"].values(), checkpoint["best_model"].values())]
    assert all(assert_same)

    enough = spec_on(tiny_val, train={"epochs": 6, "early_stopping": {"min_val_samples": 15}})
    assert fit_on(tiny_val, enough, tmp_path / "enough").kept == "best"


def test_auto_min_val_samples_is_100_for_a_classifier_served_alone(tiny_val: Path) -> None:
    from lstmflow.training.plan import min_val_samples

    assert min_val_samples(spec_on(tiny_val, train={"early_stopping": {"min_val_samples": "auto"}})) == 100
    assert min_val_samples(spec_on(tiny_val)) == DECIDES
    with pytest.raises(ConfigError, match="must be 0 or more, or auto, got -1"):
        spec_on(tiny_val, train={"early_stopping": {"min_val_samples": -1}})


def test_a_tiny_validation_part_joins_training_unless_told_not_to_or_in_a_search_trial(tiny_val: Path) -> None:
    from lstmflow.training.plan import plan_training
    from lstmflow.training.search import trial_spec

    spec = spec_on(tiny_val, train={"epochs": 6, "batch_size": 5})
    objective = make_objective(spec, tiny_val / "features")
    train, val = objective.samples("train"), objective.samples("val")
    joined = plan_training(spec, objective)
    assert joined.part == "train+val" and joined.steps_per_epoch == math.ceil((train + val) / 5)
    held_out = spec_on(tiny_val, train={"epochs": 6, "batch_size": 5, "early_stopping": {"small_val_trains": False}})
    for kept_apart in (held_out, trial_spec(spec, {})):
        plan = plan_training(kept_apart, objective)
        assert plan.part == "train" and plan.steps_per_epoch == math.ceil(train / 5) and plan.keep_last
        assert plan.note is not None and "join" not in plan.note


def test_auto_epochs_give_short_epochs_thousands_of_steps_and_keep_given_epochs() -> None:
    from lstmflow.training.plan import resolve_epochs

    assert resolve_epochs("auto", 5) == 400, "5 steps an epoch: 2,000 steps take 400 epochs"
    assert resolve_epochs("auto", 25) == 200, "a few hundred samples: 200 passes, more than 2,000 steps"
    assert resolve_epochs("auto", 100) == 200, "long epochs: 200 too"
    assert resolve_epochs("auto", 1) == 1000, "at most 1,000 epochs"
    assert resolve_epochs(7, 5) == 7, "a given number is the ceiling, as written"
