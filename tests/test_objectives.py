"""Objectives: what each task tells the training loop, and the spec errors that stop a classifier early."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CLASSIFY_BASE, Patterns, prepare_pipeline_features, write_pattern_sequences, write_sine_csv

from lstmflow.config import ClassSplitSpec, PipelineSpec, deep_merge, validate_pipeline
from lstmflow.data.sequences import load_sequences
from lstmflow.data.timeseries import resolve_data
from lstmflow.errors import ConfigError, DataError
from lstmflow.models.lstm import build_model
from lstmflow.training.objectives import (
    ClassifyObjective,
    ForecastObjective,
    classifier_input_size,
    make_objective,
)
from lstmflow.training.scores import accuracy_and_macro_f1

torch.set_num_threads(1)


def config_error(spec: PipelineSpec, features_dir: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        make_objective(spec, features_dir)
    return str(caught.value)


# ---------------------------------------------------------------------------------------------- classify


def test_classify_objective_sizes_the_model_from_the_training_labels(patterns: Patterns) -> None:
    objective = make_objective(patterns.spec(), patterns.features_dir)
    assert isinstance(objective, ClassifyObjective)
    assert (objective.n_features, objective.n_outputs) == (2, 3)
    assert objective.needs == "3 classes in the training labels"

    spec = patterns.spec(model={"layers": [{"lstm": {"units": 4}}, {"dense": {"units": 4, "activation": "softmax"}}]})
    with pytest.raises(ConfigError) as caught:
        build_model(spec.model, objective.n_features, objective.n_outputs, "pipelines.patterns.model", objective.needs)
    assert str(caught.value) == (
        "pipelines.patterns.model.layers[1].dense.units: the task needs 3 outputs (3 classes in the training labels), "
        "got 4"
    )


def test_classify_batches_loss_and_metrics_follow_the_sequences(patterns: Patterns) -> None:
    objective = make_objective(patterns.spec(), patterns.features_dir)
    train = load_sequences(patterns.features_dir).part("train")
    batches = list(objective.batches("train", 16, shuffle=True, seed=3, epoch=2))
    assert len(batches) == objective.batch_count("train", 16) == 5  # 72 training sequences
    (x, lengths), target = batches[0]
    assert x.shape == (len(target), int(lengths.max()), 2) and lengths.device.type == "cpu"
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(train.labels.tolist())

    torch.manual_seed(0)
    model = build_model(patterns.spec().model, objective.n_features, objective.n_outputs)
    model.eval()
    loss = objective.loss(model, (x, lengths), target)
    torch.testing.assert_close(loss, F.cross_entropy(torch.log(model(x, lengths)), target))  # softmax in the loss

    metrics = objective.evaluate(model, "val", 8, "cpu")
    with torch.no_grad():
        val = [(model(x, lengths), y) for (x, lengths), y in objective.batches("val", 8)]
    probabilities, labels = torch.cat([p for p, _ in val]), torch.cat([y for _, y in val])
    assert metrics.keys() == {"loss", "accuracy", "macro_f1"}
    predicted = probabilities.argmax(dim=1)
    assert metrics["accuracy"] == (predicted == labels).sum().item() / len(labels)
    seen = torch.unique(torch.cat([labels, predicted])).tolist()  # scikit-learn's macro average: these classes
    f1 = [
        2 * ((predicted == c) & (labels == c)).sum().item() / ((predicted == c).sum() + (labels == c).sum()).item()
        for c in seen
    ]
    assert metrics["macro_f1"] == pytest.approx(sum(f1) / len(f1))
    assert metrics["loss"] == pytest.approx(F.nll_loss(torch.log(probabilities), labels).item(), rel=1e-5)

    stats = objective.batch_stats("train", 16, shuffle=True, seed=3, epoch=2)
    assert stats == {"padding_fraction": train.padding_fraction(16, shuffle=True, seed=3, epoch=2)}
    assert 0 < stats["padding_fraction"] < 0.5


def test_classifier_output_activation_must_be_softmax_or_linear(patterns: Patterns) -> None:
    hidden = {"dense": {"units": 5, "activation": "relu"}}
    layers = [{"lstm": {"units": 4}}, hidden, {"dense": {"activation": "sigmoid"}}]
    assert config_error(patterns.spec(model={"layers": layers}), patterns.features_dir) == (
        "pipelines.patterns.model.layers[2].dense.activation: a classifier's output layer gives the class scores, "
        "so its activation must be softmax (folded into the cross-entropy loss) or linear, got 'sigmoid'"
    )
    # a hidden dense may use any activation; a linear output gives the logits directly
    layers[-1] = {"dense": {"activation": "linear"}}
    assert make_objective(patterns.spec(model={"layers": layers}), patterns.features_dir).n_outputs == 3


def test_classify_without_validation_samples_is_a_data_error(tmp_path: Path) -> None:
    write_pattern_sequences(tmp_path / "features", split=ClassSplitSpec(val=0.0, test=0.2))
    spec = validate_pipeline("patterns", CLASSIFY_BASE, tmp_path)
    with pytest.raises(DataError, match=r"pipelines\.patterns\.data\.split: the validation part .* no samples"):
        make_objective(spec, tmp_path / "features")


# ---------------------------------------------------------------------------------------------- forecast


def test_forecast_objective_is_the_windows_and_train_loss(tmp_path: Path) -> None:
    write_sine_csv(tmp_path / "sine.csv")
    raw = {
        "data": {"path": "sine.csv", "time_column": "month", "target": "value", "window": 24, "horizon": 6},
        "model": {"layers": [{"lstm": {"units": 4}}, {"dense": {}}]},
        "train": {"loss": "mae"},
    }
    spec = resolve_data(validate_pipeline("sine", raw, tmp_path))
    prepare_pipeline_features(spec, tmp_path / "features")
    objective = make_objective(spec, tmp_path / "features")
    assert isinstance(objective, ForecastObjective)
    assert (objective.n_features, objective.n_outputs, objective.needs) == (1, 6, "horizon 6 × 1 target(s)")
    assert objective.batch_stats("train", 16, shuffle=True, seed=0, epoch=1) == {}

    (x,), y = next(objective.batches("train", 16))
    assert x.shape == (16, 24, 1) and y.shape == (16, 6, 1)
    torch.manual_seed(0)
    model = build_model(spec.model, objective.n_features, objective.n_outputs)
    torch.testing.assert_close(objective.loss(model, (x,), y), (model(x).view(16, 6, 1) - y).abs().mean())
    assert objective.evaluate(model, "val", 16, "cpu").keys() == {"loss"}


# ---------------------------------------------------------------------------------------------- text


def test_text_sizes_the_embedding_from_the_vocabulary_and_needs_one_first(tmp_path: Path, patterns: Patterns) -> None:
    from lstmflow.data.text import prepare_text_features

    rows = ["the cat sat,a", "a dog ran,b", "the dog sat,a", "a cat ran,b", "the cat ran,a", "a dog sat,b"]
    (tmp_path / "texts.csv").write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    raw = {"task": "classify", "data": {"kind": "text", "path": "texts.csv", "split": {"val": 0.34, "test": 0.0}},
           "model": {"layers": [{"embedding": {"dim": 4}}, {"lstm": {"units": 4}}, {"dense": {}}]}}  # fmt: skip
    spec = validate_pipeline("reviews", raw, tmp_path)
    summary = prepare_text_features(spec.data, tmp_path / "features", "pipelines.reviews.data")
    objective = make_objective(spec, tmp_path / "features")
    assert (objective.n_features, objective.n_outputs) == (summary["vocab_size"], 2)
    assert classifier_input_size(load_sequences(tmp_path / "features")) == summary["vocab_size"]
    assert classifier_input_size(load_sequences(patterns.features_dir)) == 2  # values per step
    model = build_model(spec.model, objective.n_features, objective.n_outputs)
    (x, lengths), _ = next(objective.batches("train", 4))
    assert x.shape[-1] == 1 and model(x, lengths).shape == (len(lengths), 2)

    lstm_first = {"model": {"layers": [{"lstm": {"units": 4}}, {"dense": {}}]}}
    without = validate_pipeline("reviews", deep_merge(raw, lstm_first), tmp_path)
    assert config_error(without, tmp_path / "features") == (
        "pipelines.reviews.model.layers[0]: text arrives as token ids, so the first layer must be an embedding "
        "that turns them into vectors (e.g. `- embedding: {dim: 64}`), got lstm"
    )
    embedded = patterns.spec(model={"layers": [{"embedding": {"dim": 4}}, {"lstm": {"units": 4}}, {"dense": {}}]})
    assert config_error(embedded, patterns.features_dir) == (
        "pipelines.patterns.model.layers[0].embedding: reads token ids, which only data.kind text and corpus give; "
        "data.kind sequences gives values (remove the embedding)"
    )


@pytest.mark.parametrize("seed", range(5))
def test_validation_accuracy_and_macro_f1_are_scikit_learns(seed: int) -> None:
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 4, 40)  # class 4 only ever predicted, class 5 in neither
    y_pred = np.where(rng.random(40) < 0.5, y_true, rng.integers(0, 5, 40))
    scores = accuracy_and_macro_f1(y_true, y_pred)
    assert scores["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert scores["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
