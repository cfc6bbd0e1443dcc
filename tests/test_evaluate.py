"""Scoring a classifier on real prepared sequences: metrics beside the majority baseline, plots, sample order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lstmflow.config import PipelineSpec, validate_pipeline
from lstmflow.data.sequences import load_sequences, write_sequences
from lstmflow.errors import DataError
from lstmflow.evaluation.evaluate import evaluate_classifier, predict_proba
from lstmflow.models.lstm import build_model
from lstmflow.training.fit import fit
from lstmflow.training.loggers import ListLogger

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ("bump", "falling", "rising")  # as write_sequences orders them
# per class: (train, val, test) sequences; training majority is "rising" (6), the test part's is "falling" (3)
PARTS = {"bump": (2, 1, 1), "falling": (4, 1, 3), "rising": (6, 1, 2)}


def shapes(length: int, label: str, rng: np.random.Generator) -> np.ndarray:
    """(T, 2): a rising ramp, a falling ramp or a bump in the middle, plus a noise feature; only order tells them apart
    from their mean (a ramp up and a ramp down hold the same values)."""
    t = np.linspace(0.0, 1.0, length)
    signal = {"rising": t, "falling": 1.0 - t, "bump": np.sin(np.pi * t)}[label]
    return np.stack([signal + rng.normal(0, 0.05, length), rng.normal(0, 1, length)], axis=1)


@pytest.fixture
def features_dir(tmp_path: Path) -> Path:
    """A prepared sequence folder: 22 sequences of 5 to 16 steps, parts given per class as in ``PARTS``."""
    rng = np.random.default_rng(0)
    sequences, labels, parts = [], [], []
    for label, counts in PARTS.items():
        for part, count in enumerate(counts):
            for _ in range(count):
                sequences.append(shapes(int(rng.integers(5, 17)), label, rng))
                labels.append(label)
                parts.append(part)
    out = tmp_path / "features"
    write_sequences(out, sequences, labels, np.array(parts, dtype=np.int8), "standard", None, "pipelines.tiny.data", {})
    return out


def classify_spec(tmp_path: Path) -> PipelineSpec:
    raw = {
        "task": "classify",
        "data": {"kind": "sequences", "path": "shapes.csv", "format": "wide"},
        "model": {"layers": [{"lstm": {"units": 8}}, {"dense": {"activation": "softmax"}}]},
        "train": {"epochs": 3, "batch_size": 4, "seed": 0, "blend_baseline": False},  # the network's own scores
    }
    return validate_pipeline("tiny", raw, tmp_path)


def untrained_model_file(spec: PipelineSpec, features_dir: Path, path: Path) -> Path:
    features = load_sequences(features_dir)
    torch.manual_seed(0)
    model = build_model(spec.model, features.n_features, features.n_classes, where="pipelines.tiny.model")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 10_000


def test_evaluate_classifier_after_training(tmp_path: Path, features_dir: Path) -> None:
    spec = classify_spec(tmp_path)
    result = fit(spec, features_dir, tmp_path / "run", ListLogger(), progress=False)

    metrics, plots = evaluate_classifier(spec, features_dir, Path(result.model_path), tmp_path / "plots")

    per_class = {f"{kind}_{name}" for kind in ("precision", "recall") for name in CLASSES}
    baselines = {"majority_accuracy", "majority_macro_f1", "baseline_accuracy", "baseline_macro_f1"}
    assert set(metrics) == {"accuracy", "macro_f1", "log_loss"} | baselines | per_class
    assert all(0.0 <= metrics[key] <= 1.0 for key in metrics if key != "log_loss")
    assert 0.0 < metrics["log_loss"] < 10.0
    # always "rising" (the training majority) on a test part of 1 bump, 3 falling, 2 rising:
    # accuracy 2/6; F1 of rising = 2·2 / (6 predicted + 2 actual), the other two classes 0
    assert metrics["majority_accuracy"] == pytest.approx(2 / 6)
    assert metrics["majority_macro_f1"] == pytest.approx((4 / 8) / 3)

    test = load_sequences(features_dir).part("test")
    model = build_model(spec.model, 2, 3, where="pipelines.tiny.model")
    model.load_state_dict(torch.load(result.model_path, weights_only=True))
    predicted = predict_proba(model.eval(), test).argmax(axis=1)
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == test.labels))

    assert [path.name for path in plots] == ["confusion_matrix.png", "loss_curves.png"]
    assert all(path.parent == tmp_path / "plots" for path in plots)
    for path in plots:
        assert_png(path)


def test_predict_proba_rows_follow_the_set_not_the_length_buckets(tmp_path: Path, features_dir: Path) -> None:
    spec = classify_spec(tmp_path)
    model_path = untrained_model_file(spec, features_dir, tmp_path / "model.pt")
    model = build_model(spec.model, 2, 3, where="pipelines.tiny.model")
    model.load_state_dict(torch.load(model_path, weights_only=True))
    model.eval()
    train = load_sequences(features_dir).part("train")
    assert not np.all(np.diff(train.lengths) >= 0)  # unsorted, so bucketing reorders the batches

    probabilities = predict_proba(model, train, batch_size=5)

    assert probabilities.shape == (len(train), 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    with torch.no_grad():
        for [sample], batch in zip(train.batch_indices(1), train.batches(1), strict=True):  # each sample alone
            alone = model(batch.x[:, : int(batch.lengths[0])]).numpy()[0]
            np.testing.assert_allclose(probabilities[sample], alone, atol=1e-5)


def test_evaluate_classifier_without_a_training_history(tmp_path: Path, features_dir: Path) -> None:
    spec = classify_spec(tmp_path)
    model_path = untrained_model_file(spec, features_dir, tmp_path / "run" / "model.pt")
    metrics, plots = evaluate_classifier(spec, features_dir, model_path, tmp_path / "plots")
    assert [path.name for path in plots] == ["confusion_matrix.png"]
    assert metrics["majority_accuracy"] == pytest.approx(2 / 6)


def test_an_empty_test_part_names_the_split_setting(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = ["rising", "falling"] * 4
    sequences = [shapes(8, label, rng) for label in labels]
    features_dir = tmp_path / "features"
    parts = np.array([0, 0, 0, 0, 0, 0, 1, 1], dtype=np.int8)  # no test part
    write_sequences(features_dir, sequences, labels, parts, "standard", None, "pipelines.tiny.data", {})
    spec = classify_spec(tmp_path)
    model_path = untrained_model_file(spec, features_dir, tmp_path / "model.pt")
    with pytest.raises(DataError, match=r"pipelines\.tiny\.data\.split\.test: the test part of .* holds no sequences"):
        evaluate_classifier(spec, features_dir, model_path, tmp_path / "plots")
