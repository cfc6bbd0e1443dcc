"""``train.refit``: the model trained again on training and validation data for the epochs validation chose."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FailingAt, Patterns, load_state, prepare_pipeline_features, without_timing, write_sine_csv

from lstmflow.config import PipelineSpec, deep_merge, validate_pipeline
from lstmflow.data.timeseries import resolve_data
from lstmflow.errors import ConfigError
from lstmflow.training.fit import FitResult, fit
from lstmflow.training.loggers import ListLogger
from lstmflow.training.objectives import make_objective
from lstmflow.training.refit import REFIT_DIR
from lstmflow.training.search import trial_spec

torch.set_num_threads(1)

SINE: dict[str, Any] = {
    "data": {"path": "sine.csv", "time_column": "month", "target": "value", "window": 24, "horizon": 6,
             "transform": "none"},
    "model": {"layers": [{"lstm": {"units": 8}}, {"dense": {}}]},
    "train": {"epochs": 4, "batch_size": 16, "optimizer": {"lr": 0.01}, "seed": 0},
}  # fmt: skip


class Sine:
    """A small seasonal series with its features prepared once."""

    def __init__(self, folder: Path) -> None:
        self.data_dir, self.features_dir = folder, folder / "features"

    def spec(self, **sections: Any) -> PipelineSpec:
        return resolve_data(validate_pipeline("sine", deep_merge(SINE, sections), self.data_dir))

    def fit(self, spec: PipelineSpec, run_dir: Path, logger: Any = None) -> FitResult:
        return fit(spec, self.features_dir, run_dir, logger if logger is not None else ListLogger(), progress=False)


@pytest.fixture(scope="module")
def sine(tmp_path_factory: pytest.TempPathFactory) -> Sine:
    folder = tmp_path_factory.mktemp("sine")
    write_sine_csv(folder / "sine.csv")
    sine = Sine(folder)
    prepare_pipeline_features(sine.spec(), sine.features_dir)
    return sine


def same_weights(left: str | Path, right: str | Path) -> bool:
    first, second = load_state(left), load_state(right)
    return first.keys() == second.keys() and all(first[name].equal(second[name]) for name in first)


def test_a_forecast_refit_trains_on_both_parts_for_the_chosen_epochs_and_keeps_that_model(
    sine: Sine, tmp_path: Path
) -> None:
    only_first = sine.fit(sine.spec(train={"refit": False}), tmp_path / "first")
    logger = ListLogger()
    refitted = sine.fit(sine.spec(train={"refit": True}), tmp_path / "refit", logger)

    objective = make_objective(sine.spec(), sine.features_dir)
    # Both parts' windows, and the horizon - 1 whose forecast steps straddle the boundary between them.
    straddling = SINE["data"]["horizon"] - 1
    assert objective.samples("train+val") == objective.samples("train") + objective.samples("val") + straddling
    assert only_first.refit is None
    assert refitted.refit is not None and refitted.refit["epochs"] == only_first.best_epoch
    assert refitted.refit["samples"] == objective.samples("train+val")
    # The run's choice and scores are the first run's; the weights are the refit's.
    assert without_timing(refitted.history) == without_timing(only_first.history)
    assert (refitted.best_epoch, refitted.best_val_loss) == (only_first.best_epoch, only_first.best_val_loss)
    assert not same_weights(refitted.model_path, only_first.model_path)
    assert same_weights(refitted.model_path, tmp_path / "refit" / REFIT_DIR / "model.pt")
    assert refitted.steps > only_first.steps
    # Its epochs are logged after the first run's, with training metrics only.
    steps = [step for step, _ in logger.records]
    first_epochs = only_first.epochs_run
    assert steps == [*range(1, first_epochs + 1), *range(first_epochs + 1, first_epochs + only_first.best_epoch + 1)]
    assert all(name.startswith("refit_") for _, metrics in logger.records[first_epochs:] for name in metrics)
    assert "refit_train_loss" in logger.records[-1][1] and "refit_val_loss" not in logger.records[-1][1]


def test_a_classifier_refit_sees_every_training_and_validation_sequence(patterns: Patterns, tmp_path: Path) -> None:
    spec = patterns.spec(train={"refit": True, "epochs": 3})
    result = patterns.fit(spec, tmp_path)
    objective = make_objective(spec, patterns.features_dir)

    assert result.refit is not None and result.refit["epochs"] == result.best_epoch
    assert result.refit["samples"] == objective.samples("train") + objective.samples("val") == 102


def test_a_run_cut_during_its_refit_resumes_there_to_the_same_model(sine: Sine, tmp_path: Path) -> None:
    spec = sine.spec(train={"refit": True, "lr_schedule": {"name": "none"}})
    complete = sine.fit(spec, tmp_path / "complete")
    assert complete.refit is not None and complete.refit["epochs"] >= 2
    cut_at = complete.epochs_run + 2  # the refit's second epoch
    with pytest.raises(RuntimeError, match=f"failed at epoch {cut_at}"):
        sine.fit(spec, tmp_path / "run", FailingAt(cut_at))
    assert (tmp_path / "run" / REFIT_DIR / "checkpoints").is_dir()

    logger = ListLogger()
    resumed = sine.fit(spec, tmp_path / "run", logger)

    assert next(step for step, _ in logger.records if step > complete.epochs_run) == cut_at
    assert resumed.refit == complete.refit
    assert same_weights(resumed.model_path, complete.model_path)


def test_refit_is_off_by_default_and_auto_skips_a_run_the_budget_stopped(sine: Sine, tmp_path: Path) -> None:
    assert sine.fit(sine.spec(), tmp_path / "default").refit is None  # off unless asked for
    assert sine.fit(sine.spec(train={"refit": "auto"}), tmp_path / "auto").refit is not None
    budget_cut = sine.fit(sine.spec(train={"refit": "auto", "budget": {"steps": 3}}), tmp_path / "cut")
    assert budget_cut.stopped_by == "budget" and budget_cut.refit is None


def test_auto_leaves_a_classifier_whose_validation_part_is_too_small_to_choose(
    patterns: Patterns, tmp_path: Path
) -> None:
    small = patterns.spec(train={"refit": "auto", "epochs": 2, "early_stopping": {"min_val_samples": 1000}})
    result = patterns.fit(small, tmp_path)
    assert result.kept == "last" and result.refit is None


def test_a_search_trial_never_refits(sine: Sine) -> None:
    spec = sine.spec(train={"refit": True})
    assert trial_spec(spec, {"train.optimizer.lr": 0.02}).train.refit is False


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"train": {"refit": True, "ensemble": 2}}, r"train\.refit: true is not with train\.ensemble \(2\)"),
        ({"train": {"refit": True, "lr_schedule": {"name": "plateau"}}}, r"train\.lr_schedule plateau"),
        ({"train": {"refit": "always"}}, r"train\.refit"),
    ],
)
def test_a_refit_that_cannot_be_is_refused_with_the_key(sine: Sine, sections: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        sine.spec(**sections)


def test_a_language_model_refit_is_refused_with_the_task(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text("abc " * 50, encoding="utf-8")
    raw = {
        "task": "language_model",
        "data": {"kind": "corpus", "path": "corpus.txt", "sequence_length": 8},
        "model": {"layers": [{"embedding": {"dim": 4}}, {"lstm": {"units": 4, "return_sequences": True}},
                             {"dense": {"activation": "softmax"}}]},
        "train": {"refit": True},
    }  # fmt: skip
    with pytest.raises(ConfigError, match=r"train\.refit: true is for tasks 'classify', 'forecast'"):
        validate_pipeline("lm", raw, tmp_path)


def test_fitting_a_finished_run_again_gives_the_same_refitted_model(sine: Sine, tmp_path: Path) -> None:
    spec = sine.spec(train={"refit": True})
    first = sine.fit(spec, tmp_path)
    shutil.copyfile(first.model_path, tmp_path / "kept.pt")
    logger = ListLogger()
    again = sine.fit(spec, tmp_path, logger)
    assert again.refit == first.refit and same_weights(again.model_path, tmp_path / "kept.pt")
    assert logger.records == []  # nothing trained again
