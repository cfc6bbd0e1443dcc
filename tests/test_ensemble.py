"""``train.ensemble``: N seeds trained one after another, saved as one state dict, rebuilt from the spec, and
answering with the average of their members' predictions."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import (
    Patterns,
    load_state,
    prepare_pipeline_features,
    prepared_corpus,
    without_timing,
    write_sine_csv,
)

from lstmflow.config import PipelineSpec, validate_pipeline
from lstmflow.data.sequences import load_sequences
from lstmflow.data.timeseries import load_features, resolve_data
from lstmflow.errors import ConfigError
from lstmflow.evaluation.evaluate import load_trained, predict_proba
from lstmflow.models.lstm import EnsembleNet, LSTMNet, build_model, summary
from lstmflow.serving.predictors import write_bundle
from lstmflow.training.ensemble import MEMBERS_DIR
from lstmflow.training.fit import FitResult, fit
from lstmflow.training.launch import train_in_child
from lstmflow.training.loggers import ListLogger
from lstmflow.training.objectives import classifier_input_size, evaluate_loss, make_objective
from lstmflow.training.search import search_settings

torch.set_num_threads(1)

SINE: dict[str, Any] = {
    "data": {"path": "sine.csv", "time_column": "month", "target": "value", "window": 24, "horizon": 6,
             "transform": "none"},
    "model": {"layers": [{"lstm": {"units": 8}}, {"dense": {}}]},
    "train": {"epochs": 3, "batch_size": 16, "optimizer": {"lr": 0.01}, "seed": 0, "ensemble": 3},
}  # fmt: skip


@pytest.fixture(scope="module")
def sine(tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineSpec, Path]:
    """A forecaster ensemble of 3 on a small seasonal series, and its prepared features."""
    folder = tmp_path_factory.mktemp("sine")
    write_sine_csv(folder / "sine.csv")
    spec = resolve_data(validate_pipeline("sine", SINE, folder))
    prepare_pipeline_features(spec, folder / "features")
    return spec, folder / "features"


@pytest.fixture(scope="module")
def trained(sine: tuple[PipelineSpec, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[FitResult, ListLogger]:
    spec, features_dir = sine
    logger = ListLogger()
    return fit(spec, features_dir, tmp_path_factory.mktemp("run"), logger, progress=False), logger


def member_network(spec: PipelineSpec, run_dir: Path, number: int, n_features: int, n_outputs: int) -> LSTMNet:
    """Member ``number`` (from 1) loaded alone from its own folder, as a plain network."""
    network = build_model(spec.model, n_features, n_outputs)
    network.load_state_dict(load_state(run_dir / MEMBERS_DIR / str(number) / "model.pt"))
    return network.eval()


def test_an_ensemble_forecasts_the_average_of_its_members(
    sine: tuple[PipelineSpec, Path], trained: tuple[FitResult, ListLogger]
) -> None:
    spec, features_dir = sine
    result, _ = trained
    run_dir = Path(result.model_path).parent
    features = load_features(features_dir)
    model = load_trained(spec, features, Path(result.model_path))  # rebuilt from the spec, as evaluation does
    assert isinstance(model, EnsembleNet) and len(model.members) == 3

    n_outputs = features.horizon * features.n_targets
    members = [member_network(spec, run_dir, number, features.n_features, n_outputs) for number in (1, 2, 3)]
    x, _ = next(features.windows("test").batches(64))
    with torch.no_grad():
        own = torch.stack([member(x) for member in members])  # (M, B, H*K)
        assert not torch.allclose(own[0], own[1])  # other seeds, other weights
        torch.testing.assert_close(model(x), own.mean(dim=0))
    val_loss = evaluate_loss(model, features.windows("val"), spec.loss, result.batch_size)
    assert result.best_val_loss == pytest.approx(val_loss, rel=1e-6) == result.best_score


def test_members_train_one_after_another_and_are_logged_in_turn(
    trained: tuple[FitResult, ListLogger],
) -> None:
    result, logger = trained
    assert [member["seed"] for member in result.members] == [0, 1, 2]
    assert result.epochs_run == sum(member["epochs_run"] for member in result.members) == 9
    assert [(row["member"], row["epoch"]) for row in result.history] == [
        (member, 3 * (member - 1) + epoch) for member in (1, 2, 3) for epoch in (1, 2, 3)
    ]
    epochs = [(step, metrics) for step, metrics in logger.records if "train_loss" in metrics]
    assert [step for step, _ in epochs] == list(range(1, 10))  # member 2's first epoch follows member 1's last
    member_scores = [(step, metrics) for step, metrics in logger.records if "member_val_loss" in metrics]
    assert [step for step, _ in member_scores] == [1, 2, 3]
    assert [metrics["member_val_loss"] for _, metrics in member_scores] == [m["best_val_loss"] for m in result.members]
    ensemble = [metrics for _, metrics in logger.records if "ensemble_val_loss" in metrics]
    assert ensemble == [{"ensemble_val_loss": result.best_val_loss}]


def test_a_resumed_ensemble_trains_only_the_members_not_finished(
    sine: tuple[PipelineSpec, Path], trained: tuple[FitResult, ListLogger], tmp_path: Path
) -> None:
    spec, features_dir = sine
    result, _ = trained
    shutil.copytree(Path(result.model_path).parent, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / MEMBERS_DIR / "3")  # killed before member 3 began
    for name in ("fit_result.json", "model.pt"):
        (tmp_path / name).unlink()
    before = load_state(tmp_path / MEMBERS_DIR / "1" / "model.pt")

    logger = ListLogger()
    again = fit(spec, features_dir, tmp_path, logger, progress=False)

    epochs = [step for step, metrics in logger.records if "train_loss" in metrics]
    assert epochs == [7, 8, 9]  # member 3's alone
    assert again.resumed_from_epoch == 6 and again.members[:2] == result.members[:2]
    assert without_timing(again.history) == without_timing(result.history)
    assert again.best_val_loss == result.best_val_loss
    after = load_state(tmp_path / MEMBERS_DIR / "1" / "model.pt")
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_a_classifier_ensemble_averages_its_members_probabilities(patterns: Patterns, tmp_path: Path) -> None:
    spec = patterns.spec(train={"epochs": 2, "ensemble": 3})
    result = fit(spec, patterns.features_dir, tmp_path, ListLogger(), progress=False)
    features = load_sequences(patterns.features_dir)
    n_features, n_classes = classifier_input_size(features), features.n_classes
    model = build_model(spec.model, n_features, n_classes, ensemble=spec.train.ensemble)
    model.load_state_dict(load_state(result.model_path))
    model.eval()

    test = features.part("test")
    members = [member_network(spec, tmp_path, number, n_features, n_classes) for number in (1, 2, 3)]
    own = np.stack([predict_proba(member, test) for member in members])  # (M, N, C)
    probabilities = predict_proba(model, test)  # the softmax of the ensemble's logits
    np.testing.assert_allclose(probabilities, own.mean(axis=0), rtol=1e-5, atol=1e-7)
    val_accuracy = make_objective(spec, patterns.features_dir).evaluate(model, "val", result.batch_size, "cpu")
    assert result.select == "val_accuracy" and result.best_score == val_accuracy["accuracy"]


def test_a_language_model_ensemble_carries_each_members_state(tmp_path: Path) -> None:
    spec = prepared_corpus(tmp_path)  # a stateful character model: embedding, lstm, softmax dense
    vocabulary = 20
    torch.manual_seed(0)
    model = build_model(spec.model, vocabulary, vocabulary, per_step=True, ensemble=2).eval()
    assert isinstance(model, EnsembleNet)
    tokens = torch.randint(0, vocabulary, (3, 10, 1)).float()  # (B, T, 1) token ids
    with torch.no_grad():
        _, state = model.logits_carrying(tokens[:, :5])
        logits, _ = model.logits_carrying(tokens[:, 5:], state)
        own = []
        for member in model.networks():
            _, member_state = member.logits_carrying(tokens[:, :5])
            own.append(torch.softmax(member.logits_carrying(tokens[:, 5:], member_state)[0], dim=-1))
    torch.testing.assert_close(torch.softmax(logits, dim=-1), torch.stack(own).mean(dim=0))


def test_the_summary_shows_a_member_and_counts_every_member(sine: tuple[PipelineSpec, Path]) -> None:
    spec, features_dir = sine
    features = load_features(features_dir)
    one = build_model(spec.model, features.n_features, features.horizon * features.n_targets)
    three = build_model(spec.model, features.n_features, features.horizon * features.n_targets, ensemble=3)
    single = sum(param.numel() for param in one.parameters())
    text = summary(three, features.n_features)
    assert 'Model: "EnsembleNet" of 3 members' in text
    assert f"Total params: {single:,}" in text  # the member's table
    assert f"Ensemble total params: {3 * single:,} (3 × {single:,})" in text


def test_an_ensemble_of_one_keeps_the_spec_hash_and_a_search_refuses_more(patterns: Patterns) -> None:
    plain = patterns.spec()
    assert patterns.spec(train={"ensemble": 1}).spec_hash() == plain.spec_hash()
    assert "ensemble" not in plain.model_dump()["train"]
    assert patterns.spec(train={"ensemble": 2}).spec_hash() != plain.spec_hash()
    searched = patterns.spec(train={"ensemble": 2}, search={"space": {"train.optimizer.lr": {"float": [1e-3, 1e-2]}}})
    with pytest.raises(ConfigError, match=r"pipelines\.patterns\.train\.ensemble: 2 cannot be searched"):
        search_settings(searched)


def test_the_ensemble_key_refuses_zero(patterns: Patterns) -> None:
    with pytest.raises(ConfigError, match=r"train\.ensemble"):
        patterns.spec(train={"ensemble": 0})


@pytest.mark.slow
def test_two_workers_train_every_member_as_one_process_does(patterns: Patterns, tmp_path: Path) -> None:
    spec = patterns.spec(train={"epochs": 2, "ensemble": 2})
    one = fit(spec, patterns.features_dir, tmp_path / "one", ListLogger(), progress=False)
    two_workers = spec.model_copy(update={"train": spec.train.model_copy(update={"workers": 2})})
    two = train_in_child(two_workers, patterns.features_dir, tmp_path / "two", ListLogger(), progress=False)
    assert two.workers == 2 and len(two.members) == 2
    assert [m["best_val_loss"] for m in two.members] == pytest.approx([m["best_val_loss"] for m in one.members], 1e-4)
    assert two.best_val_loss == pytest.approx(one.best_val_loss, rel=1e-4)


def test_a_served_ensemble_is_rebuilt_from_its_bundle_and_answers_with_the_average(
    sine: tuple[PipelineSpec, Path], trained: tuple[FitResult, ListLogger], tmp_path: Path
) -> None:
    spec, features_dir = sine
    result, _ = trained
    run_dir = Path(result.model_path).parent
    served, request = write_bundle(spec.model_dump(mode="json"), features_dir, run_dir / "model.pt", tmp_path / "all")
    assert isinstance(served.model, EnsembleNet) and len(served.model.members) == 3

    one = spec.model_copy(update={"train": spec.train.model_copy(update={"ensemble": 1})}).model_dump(mode="json")
    answers = [
        write_bundle(one, features_dir, run_dir / MEMBERS_DIR / str(number) / "model.pt", tmp_path / str(number))[0]
        .predict(request)
        .select_dtypes("number")
        for number in (1, 2, 3)
    ]
    average = sum(answers[1:], answers[0]) / 3
    forecast = served.predict(request).select_dtypes("number")
    assert forecast.size > 0 and not np.allclose(answers[0], answers[1])
    np.testing.assert_allclose(forecast, average, rtol=1e-5)
