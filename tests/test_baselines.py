"""The strong classical baselines on tiny real data: each scores under the model's metric names, AutoETS forecasts
in original units without look-ahead and beats seasonal naive on a trending seasonal series, TF-IDF + logistic
regression and the sequence classifier beat the majority class, and a failing baseline is skipped with a warning."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch

from lstmflow.config import PipelineSpec, validate_pipeline
from lstmflow.data.kinds import build_features
from lstmflow.data.sequences import load_sequences, write_sequences
from lstmflow.data.text import prepare_text_features
from lstmflow.data.timeseries import load_features, prepare_features, read_series, resolve_data
from lstmflow.errors import ConfigError
from lstmflow.evaluation import baselines
from lstmflow.evaluation.baselines import (
    BaselineSkipped,
    classifier_baseline,
    ets_forecasts,
    read_record,
    run_baseline,
)
from lstmflow.evaluation.evaluate import evaluate_classifier, evaluate_forecast, start_strong_baseline
from lstmflow.evaluation.metrics import mae, majority_baseline, seasonal_naive
from lstmflow.models.blend import PARTNER_FILE, blended, choose_weight, mean_and_spread, with_deltas_mean_and_spread
from lstmflow.models.ets import ETS_PARTNER_FILE
from lstmflow.models.lstm import build_model
from lstmflow.serving.predictors import Classifier, write_bundle
from lstmflow.serving.request_checks import BadRequest
from lstmflow.training.objectives import classifier_input_size

FORECAST_KEYS = {"mse", "rmse", "mae", "smape", "mase"}


def airline_like(rows: int = 120, seed: int = 0) -> np.ndarray:
    """Monthly, trending, multiplicatively seasonal and positive, like the airline passengers series."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    return (100 + 2.0 * t) * (1 + 0.25 * np.sin(2 * np.pi * t / 12)) * (1 + rng.normal(0, 0.02, rows))


# ------------------------------------------------------------------------------------------------ forecasts


def test_ets_forecasts_in_original_units_beat_seasonal_naive_on_a_trending_seasonal_series() -> None:
    raw = airline_like()[:, None]  # (T, 1)
    train_end, horizon, season = 84, 3, 12
    origins = np.arange(96, len(raw) - horizon + 1)
    forecasts, ets = ets_forecasts(raw, train_end, origins, horizon, season)

    actual = np.stack([raw[t0 : t0 + horizon] for t0 in origins])  # (N, horizon, 1)
    assert forecasts.shape == actual.shape
    assert abs(forecasts.mean() / actual.mean() - 1) < 0.05  # original units, not a scaled or differenced space
    naive = seasonal_naive(raw, origins, horizon, season)
    assert mae(actual, forecasts) < 0.5 * mae(actual, naive)
    forms = ets.form_names
    assert len(forms) == 1 and forms[0].startswith("ETS(") and forms[0].endswith(",M)")  # multiplicative season


def test_ets_forecasts_use_only_the_rows_before_each_origin() -> None:
    raw = airline_like()[:, None]
    origins = np.arange(90, 110)
    forecasts, _ = ets_forecasts(raw, 84, origins, 4, 12)
    changed = raw.copy()
    changed[100:] *= 3.0  # the future after origin 100 changes
    again, _ = ets_forecasts(changed, 84, origins, 4, 12)
    np.testing.assert_allclose(again[origins <= 100], forecasts[origins <= 100])
    assert not np.allclose(again[origins > 100], forecasts[origins > 100])


def test_ets_on_data_with_zeros_and_no_season_keeps_to_additive_forms() -> None:
    rng = np.random.default_rng(1)
    raw = np.cumsum(rng.normal(0, 1, 80))[:, None] - 5.0  # a random walk through zero
    forecasts, ets = ets_forecasts(raw, 60, np.arange(62, 78), 2, 1)
    assert np.isfinite(forecasts).all()
    forms = ets.form_names
    assert forms[0].startswith("ETS(A,") and forms[0].endswith(",N)")


def forecast_spec(tmp_path: Path) -> PipelineSpec:
    months = pd.date_range("2000-01-01", periods=120, freq="MS").strftime("%Y-%m-%d")
    pd.DataFrame({"t": months, "y": airline_like()}).to_csv(tmp_path / "series.csv", index=False)
    raw = {
        "name": "air",
        "data": {
            "path": str(tmp_path / "series.csv"),
            "target": "y",
            "time_column": "t",
            "horizon": 2,
            "split": {"val": 0.15, "test": 0.2},
        },
        "model": {"layers": [{"lstm": {"units": 4}}, {"dense": {}}]},
    }
    return resolve_data(PipelineSpec.model_validate(raw))


def test_evaluate_forecast_scores_the_ets_baseline_under_the_model_names(tmp_path: Path) -> None:
    spec = forecast_spec(tmp_path)
    prepare_features(spec.data, spec.evaluate.season, tmp_path / "features")  # type: ignore[arg-type]
    features = load_features(tmp_path / "features")
    torch.manual_seed(0)
    model = build_model(spec.model, features.n_features, features.horizon * features.n_targets, where="model")
    torch.save(model.state_dict(), tmp_path / "model.pt")

    metrics, plots = evaluate_forecast(spec, tmp_path / "features", tmp_path / "model.pt", tmp_path / "plots")

    for prefix in ("", "naive_", "baseline_"):
        assert {f"{prefix}{key}" for key in FORECAST_KEYS} <= set(metrics)
    assert metrics["baseline_mse"] == pytest.approx(metrics["baseline_rmse"] ** 2)
    assert metrics["baseline_mae"] < metrics["naive_mae"]
    assert [path.name for path in plots] == ["forecast.png"]
    record = read_record(tmp_path / "plots")
    assert record is not None and record["method"] == "auto_ets" and len(record["forms"]) == 1


def untrained_forecaster(tmp_path: Path, blend: bool | str = "auto") -> tuple[PipelineSpec, Path, Path]:
    spec = forecast_spec(tmp_path)
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"blend_baseline": blend})})
    prepare_features(spec.data, spec.evaluate.season, tmp_path / "features")  # type: ignore[arg-type]
    features = load_features(tmp_path / "features")
    torch.manual_seed(0)
    model = build_model(spec.model, features.n_features, features.horizon * features.n_targets, where="model")
    (tmp_path / "run").mkdir(exist_ok=True)
    torch.save(model.state_dict(), tmp_path / "run" / "model.pt")
    return spec, tmp_path / "features", tmp_path / "run" / "model.pt"


def test_a_forecast_is_served_averaged_with_its_ets_as_it_was_scored(tmp_path: Path) -> None:
    spec, features_dir, model_path = untrained_forecaster(tmp_path)

    metrics, _ = evaluate_forecast(spec, features_dir, model_path, tmp_path / "plots")

    assert metrics["blend_weight"] == 0.5 and (model_path.parent / ETS_PARTNER_FILE).is_file()
    assert metrics["mae"] < metrics["network_mae"], "an untrained network gains from ETS"
    predictor, _ = write_bundle(spec.model_dump(mode="json"), features_dir, model_path, tmp_path / "bundle")
    frame = read_series(spec.data).reset_index(drop=True)  # type: ignore[arg-type]
    test = load_features(features_dir).windows("test")
    served = predictor.forecast_at(frame, test.origins)
    assert mae(test.targets_original(), served) == pytest.approx(metrics["mae"])
    last = int(test.origins[-1])  # a request of the series up to an origin, from its start, is forecast alike
    np.testing.assert_allclose(predictor.predict(frame.iloc[:last])["y"].to_numpy(), served[-1, :, 0], rtol=1e-6)
    with pytest.raises(BadRequest, match=f"this model needs the last {predictor.request_rows}"):
        predictor.predict(frame.iloc[last - predictor.request_rows + 1 : last])


@pytest.mark.parametrize("season", [1, 4, 7, 12, 24])
def test_a_blends_ets_forecasts_from_as_few_rows_as_a_request_must_hold(season: int) -> None:
    t = np.arange(200)
    raw = 50 + 0.1 * t + 5 * np.sin(2 * np.pi * t / max(season, 2)) + np.random.default_rng(0).normal(0, 1, 200)
    _, ets = ets_forecasts(raw[:, None], 150, np.arange(160, 190), 3, season)
    shortest = raw[-ets.min_rows :, None]

    forecast = ets.forecasts(shortest, np.array([len(shortest)]), 3)

    assert forecast.shape == (1, 3, 1) and np.isfinite(forecast).all()


def test_a_forecast_without_the_blend_is_the_network_alone(tmp_path: Path) -> None:
    spec, features_dir, model_path = untrained_forecaster(tmp_path, blend=False)
    (model_path.parent / ETS_PARTNER_FILE).write_bytes(b"left by an earlier run")

    metrics, _ = evaluate_forecast(spec, features_dir, model_path, tmp_path / "plots")

    assert "network_mae" not in metrics and not (model_path.parent / ETS_PARTNER_FILE).exists()
    predictor, _ = write_bundle(spec.model_dump(mode="json"), features_dir, model_path, tmp_path / "bundle")
    test = load_features(features_dir).windows("test")
    served = predictor.forecast_at(read_series(spec.data).reset_index(drop=True), test.origins)  # type: ignore[arg-type]
    assert predictor.ets is None and mae(test.targets_original(), served) == pytest.approx(metrics["mae"])


# ------------------------------------------------------------------------------------------------ classifiers


def shapes(length: int, label: str, rng: np.random.Generator) -> np.ndarray:
    """(T, 2): a rising ramp, a falling ramp or a bump, plus a noise feature."""
    t = np.linspace(0.0, 1.0, length)
    signal = {"rising": t, "falling": 1.0 - t, "bump": np.sin(np.pi * t)}[label]
    return np.stack([signal + rng.normal(0, 0.1, length), rng.normal(0, 1, length)], axis=1)


def shapes_features(tmp_path: Path, per_class: tuple[int, int, int] = (8, 3, 5)) -> Path:
    """A prepared store of ramps and bumps of 6 to 30 steps; the training majority is no help on the test part."""
    rng = np.random.default_rng(0)
    sequences, labels, parts = [], [], []
    for label in ("bump", "falling", "rising"):
        for part, count in enumerate(per_class):
            for _ in range(count + (label == "rising") * (part == 0)):  # rising is the training majority
                sequences.append(shapes(int(rng.integers(6, 31)), label, rng))
                labels.append(label)
                parts.append(part)
    out = tmp_path / "features"
    write_sequences(out, sequences, labels, np.array(parts, dtype=np.int8), "standard", None, "pipelines.t.data", {})
    return out


def sequences_spec(tmp_path: Path) -> PipelineSpec:
    raw = {
        "task": "classify",
        "data": {"kind": "sequences", "path": "shapes.csv", "format": "wide"},
        "model": {"layers": [{"lstm": {"units": 4}}, {"dense": {"activation": "softmax"}}]},
    }
    return validate_pipeline("t", raw, tmp_path)


def majority(features: Any) -> float:
    labels = (features.part("train").labels, features.part("test").labels)
    return majority_baseline(*labels, features.n_classes)["majority_accuracy"]


def test_sequence_baseline_beats_the_majority_class(tmp_path: Path) -> None:
    features = load_sequences(shapes_features(tmp_path))
    baseline = classifier_baseline(sequences_spec(tmp_path), features)
    assert baseline.method == "minirocket_logistic" and baseline.partner is not None
    assert set(baseline.prefixed()) == {"baseline_accuracy", "baseline_macro_f1"}
    assert baseline.metrics["accuracy"] >= 0.8 > majority(features) + 0.3


def test_a_large_set_fits_the_minirocket_regression_on_a_stratified_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(baselines, "MAX_MINIROCKET_SERIES", 12)
    features = load_sequences(shapes_features(tmp_path))  # 34 training and validation series, 3 classes
    baseline = classifier_baseline(sequences_spec(tmp_path), features)
    assert baseline.partner is not None
    scaler = baseline.partner.model.named_steps["standardscaler"]
    assert scaler.n_samples_seen_ == 12 and len(baseline.partner.codes) == 3, "every class is in the sample"
    assert baseline.partner.test.shape == (len(features.part("test")), 3)


def test_images_without_a_validation_part_get_the_ridge_classifier(tmp_path: Path) -> None:
    features = load_sequences(shapes_features(tmp_path, per_class=(8, 0, 5)))
    spec = SimpleNamespace(name="i", data=SimpleNamespace(kind="images"))
    baseline = classifier_baseline(spec, features)  # type: ignore[arg-type]
    assert baseline.method == "ridge_resampled" and baseline.metrics["accuracy"] > majority(features)
    assert baseline.partner is None, "images read by rows are not blended"


def test_audio_baseline_reads_minirocket_features_of_the_stored_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    loud = [rng.normal(0, 3, (int(rng.integers(10, 20)), 3)) for _ in range(24)]  # loud and quiet differ in spread
    quiet = [rng.normal(0, 1, (int(rng.integers(10, 20)), 3)) for _ in range(24)]
    parts = np.array([0] * 14 + [1] * 4 + [2] * 6, dtype=np.int8)
    out = tmp_path / "features"
    labels = ["loud"] * 24 + ["quiet"] * 24
    write_sequences(out, loud + quiet, labels, np.concatenate([parts, parts]), "standard", None, "data", {})
    spec = SimpleNamespace(name="a", data=SimpleNamespace(kind="audio"))

    baseline = classifier_baseline(spec, load_sequences(out))  # type: ignore[arg-type]

    assert baseline.method == "minirocket_logistic"
    assert baseline.metrics["accuracy"] >= 0.9


TOPICS = {
    "cooking": [
        "oven",
        "flour",
        "sugar",
        "bake",
        "simmer",
        "garlic",
        "onion",
        "recipe",
        "pan",
        "butter",
        "salt",
        "pepper",
    ],
    "football": [
        "goal",
        "striker",
        "referee",
        "penalty",
        "match",
        "league",
        "keeper",
        "pitch",
        "corner",
        "midfield",
        "coach",
        "score",
    ],
    "weather": [
        "rain",
        "cloud",
        "storm",
        "forecast",
        "sunny",
        "wind",
        "snow",
        "humid",
        "thunder",
        "degrees",
        "cold",
        "fog",
    ],
}
FILLER = ["the", "a", "of", "and", "to", "in", "it", "was", "very", "today", "we", "they", "this", "that"]


def text_rows(rng: np.random.Generator) -> list[dict[str, str]]:
    """Short texts of three topics, each a few topic words among common filler words; the majority is football."""
    rows = []
    for topic, count in (("cooking", 20), ("football", 34), ("weather", 20)):
        for _ in range(count):
            words = list(rng.choice(TOPICS[topic], 3)) + list(rng.choice(FILLER, 6))
            rows.append({"text": " ".join(rng.permutation(words)), "label": topic})
    return rows


def test_tfidf_logistic_beats_the_majority_class_on_small_texts(tmp_path: Path) -> None:
    pd.DataFrame(text_rows(np.random.default_rng(3))).to_csv(tmp_path / "texts.csv", index=False)
    raw = {
        "task": "classify",
        "data": {"kind": "text", "path": "texts.csv", "tokenizer": {"kind": "word"}},
        "model": {"layers": [{"embedding": {"dim": 8}}, {"lstm": {"units": 4}}, {"dense": {}}]},
    }
    spec = validate_pipeline("texts", raw, tmp_path)
    prepare_text_features(spec.data, tmp_path / "features", "pipelines.texts.data")  # type: ignore[arg-type]
    features = load_sequences(tmp_path / "features")

    baseline = classifier_baseline(spec, features)

    assert baseline.method == "tfidf_logistic"
    assert baseline.metrics["accuracy"] >= 0.9 > majority(features) + 0.3


def test_the_text_baseline_reads_characters_where_every_word_is_new(tmp_path: Path) -> None:
    """Each text's words are made-up stems seen nowhere else; only their endings (a class's inflection) tell."""
    rng = np.random.default_rng(5)
    letters = np.array(list("bcdfgklmnprstvz"))
    rows = [
        {"text": " ".join("".join(rng.choice(letters, 5)) + ending for _ in range(3)), "label": label}
        for label, ending in (("a", "ulo"), ("b", "exa")) * 60
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "texts.csv", index=False)
    raw = {"task": "classify", "data": {"kind": "text", "path": "texts.csv", "tokenizer": {"kind": "word"}}}
    spec = validate_pipeline("texts", raw, tmp_path)
    prepare_text_features(spec.data, tmp_path / "features", "pipelines.texts.data")  # type: ignore[arg-type]

    baseline = classifier_baseline(spec, load_sequences(tmp_path / "features"))

    assert baseline.metrics["accuracy"] >= 0.95, "words alone are all unseen: only character n-grams can tell"


def test_text_baseline_refuses_raw_texts_that_no_longer_match(tmp_path: Path) -> None:
    rows = text_rows(np.random.default_rng(4))
    pd.DataFrame(rows).to_csv(tmp_path / "texts.csv", index=False)
    raw = {"task": "classify", "data": {"kind": "text", "path": "texts.csv"}, "model": {"layers": [{"dense": {}}]}}
    spec = validate_pipeline("texts", raw, tmp_path)
    prepare_text_features(spec.data, tmp_path / "features", "data")  # type: ignore[arg-type]
    pd.DataFrame(rows[:-3]).to_csv(tmp_path / "texts.csv", index=False)  # edited after the data stage
    with pytest.raises(ValueError, match="no longer match the prepared ones"):
        classifier_baseline(spec, load_sequences(tmp_path / "features"))


def test_evaluate_classifier_adds_the_baseline_or_skips_it_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    features_dir = shapes_features(tmp_path)
    spec = sequences_spec(tmp_path)
    torch.manual_seed(0)
    model = build_model(spec.model, 2, 3, where="model")
    torch.save(model.state_dict(), tmp_path / "model.pt")

    metrics, _ = evaluate_classifier(spec, features_dir, tmp_path / "model.pt", tmp_path / "plots")
    assert metrics["baseline_accuracy"] > metrics["majority_accuracy"]
    assert read_record(tmp_path / "plots")["method"] == "minirocket_logistic"  # type: ignore[index]

    def broken(*_: object) -> baselines.Baseline:
        raise np.linalg.LinAlgError("singular matrix")

    monkeypatch.setattr("lstmflow.evaluation.evaluate.classifier_baseline", broken)
    with pytest.warns(BaselineSkipped, match="strong baseline sequences baseline skipped: LinAlgError: singular"):
        metrics, plots = evaluate_classifier(spec, features_dir, tmp_path / "model.pt", tmp_path / "plots")
    assert not any(key.startswith("baseline_") for key in metrics) and "majority_accuracy" in metrics
    assert [path.name for path in plots] == ["confusion_matrix.png"]
    assert read_record(tmp_path / "plots") == {
        "method": "sequences baseline",
        "skipped": "LinAlgError: singular matrix",
    }


def test_a_baseline_started_while_training_is_the_one_evaluation_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    features_dir = shapes_features(tmp_path)
    spec = sequences_spec(tmp_path)
    torch.save(build_model(spec.model, 2, 3, where="model").state_dict(), tmp_path / "model.pt")
    fitted_in: list[str] = []

    def recorded(*args: Any) -> baselines.Baseline:
        fitted_in.append(threading.current_thread().name)
        return classifier_baseline(*args)

    monkeypatch.setattr("lstmflow.evaluation.evaluate.classifier_baseline", recorded)
    start_strong_baseline(spec, features_dir, tmp_path / "plots")
    start_strong_baseline(spec, features_dir, tmp_path / "plots")  # a retried training task starts no second one
    metrics, _ = evaluate_classifier(spec, features_dir, tmp_path / "model.pt", tmp_path / "plots")
    assert fitted_in == ["lstmflow-baseline-t"]
    assert metrics["baseline_accuracy"] > metrics["majority_accuracy"]

    again, _ = evaluate_classifier(spec, features_dir, tmp_path / "model.pt", tmp_path / "plots")
    assert fitted_in == ["lstmflow-baseline-t", threading.current_thread().name]  # taken once, then fitted anew
    assert again["baseline_accuracy"] == metrics["baseline_accuracy"]


def test_blended_is_the_normalised_weighted_geometric_mean() -> None:
    network, partner = np.array([[0.8, 0.2], [0.1, 0.9]]), np.array([[0.5, 0.5], [0.6, 0.4]])
    assert blended(network, partner, 1.0) == pytest.approx(network)
    assert blended(network, partner, 0.0) == pytest.approx(partner)
    half = np.sqrt(network * partner)
    assert blended(network, partner, 0.5) == pytest.approx(half / half.sum(axis=1, keepdims=True))


def test_the_blend_weight_follows_validation_and_mixes_models_that_err_apart() -> None:
    labels = np.array([0, 1, 0, 1, 0, 1])
    truth = np.eye(2)[labels] * 0.8 + 0.1
    coin = np.full((6, 2), 0.5)
    assert choose_weight(truth, coin, labels) == 1.0 and choose_weight(coin, truth, labels) == 0.0
    # each sure and right on its own half, unsure and wrong on the other: only a mix gets every sample right
    network = np.where(np.arange(6)[:, None] < 3, truth, 1.0 - np.eye(2)[labels] * 0.55 - 0.2)
    partner = np.where(np.arange(6)[:, None] >= 3, truth, 1.0 - np.eye(2)[labels] * 0.55 - 0.2)
    weight = choose_weight(network, partner, labels)
    assert 0.0 < weight < 1.0 and np.all(blended(network, partner, weight).argmax(axis=1) == labels)
    assert np.mean(network.argmax(axis=1) == labels) == 0.5 == np.mean(partner.argmax(axis=1) == labels)


def untrained_classifier(tmp_path: Path, name: str, raw: dict[str, Any]) -> tuple[PipelineSpec, Path, Path]:
    """A pipeline with prepared features and untrained (seeded) weights: (spec, features folder, weights)."""
    spec = validate_pipeline(name, raw, tmp_path)
    build_features(spec.data, None, tmp_path / "features", f"pipelines.{name}.data", tmp_path / "cache")
    torch.manual_seed(0)
    features = load_sequences(tmp_path / "features")
    model = build_model(spec.model, classifier_input_size(features), features.n_classes, where="model")
    (tmp_path / "run").mkdir(exist_ok=True)
    torch.save(model.state_dict(), tmp_path / "run" / "model.pt")
    return spec, tmp_path / "features", tmp_path / "run" / "model.pt"


def untrained_text_classifier(tmp_path: Path, blend: bool | str = "auto") -> tuple[PipelineSpec, Path, Path]:
    pd.DataFrame(text_rows(np.random.default_rng(3))).to_csv(tmp_path / "texts.csv", index=False)
    raw = {
        "task": "classify",
        "data": {"kind": "text", "path": "texts.csv", "tokenizer": {"kind": "word"}},
        "model": {"layers": [{"embedding": {"dim": 8}}, {"lstm": {"units": 4}}, {"dense": {}}]},
        "train": {"blend_baseline": blend},
    }
    return untrained_classifier(tmp_path, "texts", raw)


def served_accuracy(spec: PipelineSpec, features_dir: Path, model_path: Path, bundle: Path) -> tuple[Any, float]:
    """(the served classifier, its accuracy on the test part's raw texts)."""
    predictor, _ = write_bundle(spec.model_dump(mode="json"), features_dir, model_path, bundle)
    requests = Classifier.requests(spec, features_dir, "test")
    answers = predictor.predict(requests.frame)
    return predictor, float(np.mean(answers["label"].to_numpy() == np.array(requests.labels)))


def test_a_text_classifier_is_served_blended_with_its_baseline_as_it_was_scored(tmp_path: Path) -> None:
    spec, features_dir, model_path = untrained_text_classifier(tmp_path)

    metrics, _ = evaluate_classifier(spec, features_dir, model_path, tmp_path / "plots")

    assert (model_path.parent / PARTNER_FILE).is_file()
    assert {"network_accuracy", "network_macro_f1", "blend_weight"} <= metrics.keys()
    assert metrics["accuracy"] > metrics["network_accuracy"] + 0.3, "an untrained network gains from the regression"
    predictor, accuracy = served_accuracy(spec, features_dir, model_path, tmp_path / "bundle")
    assert predictor.blend.weight == metrics["blend_weight"] and accuracy == pytest.approx(metrics["accuracy"])


def test_a_small_validation_part_stays_apart_when_it_chooses_the_blend_weight(tmp_path: Path) -> None:
    from lstmflow.training.objectives import make_objective
    from lstmflow.training.plan import min_val_samples, plan_training

    spec, features_dir, _ = untrained_text_classifier(tmp_path)  # 74 texts: a validation part of about a dozen
    objective = make_objective(spec, features_dir)
    plan = plan_training(spec, objective)
    assert plan.part == "train" and plan.keep_last and plan.patience is None
    assert plan.note is not None and "choose the blend's weight" in plan.note
    alone = spec.model_copy(update={"train": spec.train.model_copy(update={"blend_baseline": False})})
    assert plan_training(alone, objective).part == "train+val", "without a blend they join the training part"
    assert min_val_samples(spec) == 30 and min_val_samples(alone) == 100, "a blend stops early on 30 samples"


def test_without_the_blend_the_network_is_served_alone(tmp_path: Path) -> None:
    spec, features_dir, model_path = untrained_text_classifier(tmp_path, blend="auto")
    evaluate_classifier(spec, features_dir, model_path, tmp_path / "plots")  # leaves a blend beside the weights
    alone = spec.model_copy(update={"train": spec.train.model_copy(update={"blend_baseline": False})})

    metrics, _ = evaluate_classifier(alone, features_dir, model_path, tmp_path / "plots")

    assert not (model_path.parent / PARTNER_FILE).exists() and "network_accuracy" not in metrics
    predictor, accuracy = served_accuracy(alone, features_dir, model_path, tmp_path / "bundle")
    assert predictor.blend is None and accuracy == pytest.approx(metrics["accuracy"])


def test_the_earlier_audio_regression_still_reads_which_way_its_features_move() -> None:
    rising = np.linspace(0.0, 1.0, 20)[:, None]
    falling = rising[::-1]  # the same values: the same mean and spread

    plain = mean_and_spread([rising, falling])
    moving = with_deltas_mean_and_spread([rising, falling])  # what audio blends registered before MiniRocket load

    np.testing.assert_allclose(plain[0], plain[1])
    assert moving.shape == (2, 4) and moving[0, 1] > 0 > moving[1, 1], "the deltas' mean tells the two apart"


def test_an_audio_classifier_is_served_blended_as_it_was_scored(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    for label, pitch in (("low", 300.0), ("high", 1500.0)):  # real clips: noisy tones, a pitch apiece, any length
        for i in range(15):
            steps = np.arange(int(16000 * rng.uniform(0.15, 0.3))) / 16000
            clip = 0.4 * np.sin(2 * np.pi * pitch * rng.uniform(0.9, 1.1) * steps) + rng.normal(0, 0.05, len(steps))
            (tmp_path / "clips" / label).mkdir(parents=True, exist_ok=True)
            soundfile.write(tmp_path / "clips" / label / f"{i}.wav", clip.astype(np.float32), 16000)
    raw = {
        "task": "classify",
        "data": {"kind": "audio", "path": "clips", "workers": 1, "split": {"val": 0.3, "test": 0.3}},
        "model": {"layers": [{"lstm": {"units": 4}}, {"dense": {}}]},
    }
    spec, features_dir, model_path = untrained_classifier(tmp_path, "tones", raw)
    alone = spec.model_copy(update={"train": spec.train.model_copy(update={"blend_baseline": False})})
    assert "blend_weight" not in evaluate_classifier(alone, features_dir, model_path, tmp_path / "plots")[0]

    metrics, _ = evaluate_classifier(spec, features_dir, model_path, tmp_path / "plots")

    assert metrics["accuracy"] == 1.0 and metrics["network_accuracy"] < 1.0, "the regression hears the pitch"
    predictor, accuracy = served_accuracy(spec, features_dir, model_path, tmp_path / "bundle")
    assert predictor.blend.weight == metrics["blend_weight"] == 0.5 and accuracy == metrics["accuracy"]
    clip_probabilities = predictor.predict(Classifier.requests(spec, features_dir, "test").frame).filter(like="prob_")
    assert np.allclose(clip_probabilities.sum(axis=1), 1.0)


def test_a_sequence_classifier_is_served_blended_with_equal_weights_as_it_was_scored(tmp_path: Path) -> None:
    from lstmflow.training.objectives import make_objective
    from lstmflow.training.plan import plan_training

    rng = np.random.default_rng(5)
    rows = [{"label": label, **{f"t{j}": v for j, v in enumerate(shapes(24, label, rng)[:, 0])}}
            for label in ("bump", "falling", "rising") for _ in range(14)]  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "shapes.csv", index=False)
    raw = {
        "task": "classify",
        "data": {"kind": "sequences", "path": "shapes.csv", "format": "wide"},
        "model": {"layers": [{"lstm": {"units": 4}}, {"dense": {}}]},
    }
    spec, features_dir, model_path = untrained_classifier(tmp_path, "shapes", raw)
    plan = plan_training(spec, make_objective(spec, features_dir))
    assert plan.part == "train+val", "equal weights need no validation part: a small one joins training"

    metrics, _ = evaluate_classifier(spec, features_dir, model_path, tmp_path / "plots")

    assert metrics["blend_weight"] == 0.5 and metrics["accuracy"] > metrics["network_accuracy"] + 0.3
    predictor, accuracy = served_accuracy(spec, features_dir, model_path, tmp_path / "bundle")
    assert predictor.blend.weight == 0.5 and accuracy == pytest.approx(metrics["accuracy"])


def test_a_blend_is_refused_where_no_regression_is_fitted(tmp_path: Path) -> None:
    raw = {
        "task": "classify",
        "data": {"kind": "images", "path": "digits.csv", "shape": [8, 8]},
        "train": {"blend_baseline": True},
    }
    with pytest.raises(ConfigError, match=r"train\.blend_baseline: true is for forecasts, language models and for .*"):
        validate_pipeline("shapes", raw, tmp_path)


def test_run_baseline_records_the_method_and_its_details(tmp_path: Path) -> None:
    made = baselines.Baseline("tfidf_logistic", {"accuracy": 0.5}, details={"c": 10.0})
    assert run_baseline("text baseline", lambda: made, tmp_path) is made
    record = json.loads((tmp_path / "baseline.json").read_text())
    assert record["method"] == "tfidf_logistic" and record["c"] == 10.0 and record["seconds"] >= 0
    assert read_record(tmp_path / "elsewhere") is None


def test_one_step_ets_forecasts_equal_the_dynamic_predictions_from_each_origin() -> None:
    raw = airline_like()[:, None]
    origins = np.arange(90, 118)
    one_step, _ = ets_forecasts(raw, 84, origins, 1, 12)  # the fitted values' fast path
    two_steps, _ = ets_forecasts(raw, 84, origins, 2, 12)  # one dynamic prediction per origin
    np.testing.assert_allclose(one_step[:, 0], two_steps[:, 0], rtol=1e-9)


def test_the_regression_scores_a_chunk_of_inputs_at_a_time_as_it_would_all_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sklearn.linear_model import LogisticRegression

    from lstmflow.models import blend

    rng = np.random.default_rng(6)
    inputs, labels = rng.normal(size=(11, 3)), np.array([0, 2] * 5 + [0])  # class 1 never seen: a column of zeros
    model = LogisticRegression().fit(inputs, labels)
    whole = blend.class_probabilities(model, model.classes_, list(inputs), 3)
    monkeypatch.setattr(blend, "PREDICT_CHUNK", 4)

    np.testing.assert_allclose(blend.class_probabilities(model, model.classes_, list(inputs), 3), whole)
    assert whole.shape == (11, 3) and not whole[:, 1].any()
