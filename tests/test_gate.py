"""The retraining gate: its statistics against reference implementations, scoring any version on the same test data,
the decision rule, and the whole gate on a real MLflow registry (SQLite) with really trained tiny models."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import prepare_pipeline_features, prepared_corpus, write_sine_csv

from lstmflow.config import CorpusSpec, PromoteSpec, validate_pipeline
from lstmflow.data.kinds import build_features, resolve
from lstmflow.evaluation import comparison as scoring
from lstmflow.evaluation import significance
from lstmflow.models.lstm import build_model
from lstmflow.ops import gate, steps
from lstmflow.serving.predictors import Forecaster, load_predictor, write_bundle
from lstmflow.tracking import TrackingUnavailable, registry, tracking_uri
from lstmflow.training.fit import fit
from lstmflow.training.loggers import ListLogger

# ------------------------------------------------------------------------------------------------ statistics


@pytest.mark.parametrize(("b", "c"), [(7, 1), (3, 3), (0, 5), (0, 0)])
def test_mcnemar_exact_is_the_one_sided_binomial_test(b: int, c: int) -> None:
    from scipy.stats import binomtest

    challenger = np.array([True] * b + [False] * c + [True] * 10 + [False] * 4)
    champion = np.array([False] * b + [True] * c + [True] * 10 + [False] * 4)
    result = significance.mcnemar(challenger, champion)
    expected = binomtest(b, b + c, 0.5, alternative="greater").pvalue if b + c else 1.0
    assert result.p_value == pytest.approx(expected, rel=1e-12) and result.n == b + c + 14


def test_mcnemar_chi_square_matches_statsmodels_halved_to_one_side() -> None:
    from statsmodels.stats.contingency_tables import mcnemar as reference

    b, c = 40, 15  # 55 discordant pairs: the chi-square version
    challenger = np.array([True] * b + [False] * c + [True] * 30 + [False] * 5)
    champion = np.array([False] * b + [True] * c + [True] * 30 + [False] * 5)
    expected = reference([[30, b], [c, 5]], exact=False, correction=True)
    ours, reverse = significance.mcnemar(challenger, champion), significance.mcnemar(champion, challenger)
    assert ours.statistic == pytest.approx(expected.statistic) and ours.p_value == pytest.approx(expected.pvalue / 2)
    assert reverse.p_value == pytest.approx(1 - expected.pvalue / 2), "the champion better: no evidence at all"
    assert "chi-square" in ours.detail and "exact" in significance.mcnemar(challenger[:20], champion[:20]).detail


def test_diebold_mariano_with_horizon_one_is_the_one_sided_t_test() -> None:
    """With h = 1 the HLN-corrected statistic equals the one-sample t statistic of the loss differences."""
    from scipy.stats import ttest_1samp

    rng = np.random.default_rng(3)
    champion, challenger = rng.gamma(2.0, 1.0, 60), rng.gamma(2.0, 0.8, 60)
    result = significance.diebold_mariano(champion, challenger, horizon=1)
    expected = ttest_1samp(champion - challenger, 0.0, alternative="greater")
    assert result.statistic == pytest.approx(expected.statistic) and result.p_value == pytest.approx(expected.pvalue)


def test_diebold_mariano_long_run_variance_matches_statsmodels_hac() -> None:
    """For h > 1: the uniform-kernel HAC t statistic of the mean difference (statsmodels), times the HLN factor."""
    import statsmodels.api as sm
    from scipy.stats import t as student

    rng = np.random.default_rng(4)
    noise = rng.normal(0, 1, 83)
    d = 0.3 + np.convolve(noise, np.ones(4) / 2, mode="valid")  # MA(3): autocorrelated up to lag 3, 80 values
    horizon, n = 4, len(d)
    fitted = sm.OLS(d, np.ones(n)).fit(
        cov_type="HAC", cov_kwds={"maxlags": horizon - 1, "kernel": "uniform", "use_correction": False}
    )
    factor = math.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
    result = significance.diebold_mariano(d + 1.0, np.ones(n), horizon)
    assert result.statistic == pytest.approx(factor * fitted.tvalues[0], rel=1e-9)
    assert result.p_value == pytest.approx(student.sf(factor * fitted.tvalues[0], n - 1), rel=1e-9)


def test_diebold_mariano_finds_a_real_difference_and_none_where_there_is_none() -> None:
    rng = np.random.default_rng(5)
    champion = np.abs(rng.normal(0, 1.0, 200))
    assert significance.diebold_mariano(champion, 0.5 * champion + 0.01, horizon=3).p_value < 1e-6
    twin = np.abs(rng.normal(0, 1.0, 200))
    assert significance.diebold_mariano(champion, twin, horizon=3).p_value > 0.05
    assert significance.diebold_mariano(champion, champion, horizon=3).p_value == 1.0, (
        "identical forecasts: never better"
    )
    assert significance.diebold_mariano(champion[:3], champion[:3] - 1, horizon=3).p_value == 1.0, (
        "fewer windows than h"
    )


# ------------------------------------------------------------------------------------------------ decision


def comparison(
    challenger: float, champion: float, direction: str = "minimize", p_value: float | None = 0.001
) -> scoring.Comparison:
    test = None if p_value is None else significance.Significance("diebold_mariano", 3.0, p_value, 50, "DM")
    return scoring.Comparison("mae", direction, challenger, champion, 50, test)


def test_decide_needs_a_gain_of_at_least_min_gain_in_the_metric_direction() -> None:
    rule = PromoteSpec(min_gain=0.1)
    assert gate.decide(comparison(0.85, 1.0), rule).promote  # 15% lower error
    kept = gate.decide(comparison(0.95, 1.0), rule)
    assert not kept.promote and kept.gain == pytest.approx(0.05) and "min_gain" in kept.reason
    assert not gate.decide(comparison(1.2, 1.0), rule).promote
    assert gate.decide(comparison(0.9, 0.8, "maximize"), rule).promote  # accuracy up 12.5%
    assert not gate.decide(comparison(0.85, 0.8, "maximize"), rule).promote
    assert not gate.decide(comparison(1.0, 1.0), PromoteSpec()).promote, "equal is not better, even with min_gain 0"


def test_decide_needs_significance_unless_the_test_is_none() -> None:
    rule = PromoteSpec(alpha=0.05)
    kept = gate.decide(comparison(0.5, 1.0, p_value=0.2), rule)
    assert not kept.promote and "not significantly" in kept.reason and "p = 0.2" in kept.reason
    assert gate.decide(comparison(0.5, 1.0, p_value=0.01), rule).promote
    assert gate.decide(comparison(0.99, 1.0, p_value=None), rule).promote, "test none: the metric alone decides"


# ------------------------------------------------------------------------------------------------ baselines


def test_a_version_that_loses_to_or_ties_a_baseline_does_not_beat_it() -> None:
    lost = gate.check_baselines("forecast", "mae", "minimize", {"mae": 38.3, "naive_mae": 25.8})
    assert lost.beaten is False and lost.baseline == "seasonal-naive baseline" and lost.baseline_value == 25.8
    assert lost.summary == "mae 38.3 is worse than the seasonal-naive baseline's 25.8"
    tied = gate.check_baselines("classify", "accuracy", "maximize", {"accuracy": 0.5, "majority_accuracy": 0.5})
    assert tied.beaten is False and "no better than the majority-class baseline's 0.5" in tied.summary
    broken = gate.check_baselines("forecast", "mae", "minimize", {"mae": math.nan, "naive_mae": 1.0})
    assert broken.beaten is False and "not a number" in broken.summary


def test_every_logged_baseline_must_be_beaten_and_the_strongest_is_named() -> None:
    metrics = {"accuracy": 0.8, "majority_accuracy": 0.4, "baseline_accuracy": 0.85}
    check = gate.check_baselines("classify", "accuracy", "maximize", metrics)
    assert check.beaten is False and check.baseline == "classical baseline" and check.baseline_value == 0.85
    assert check.summary == "accuracy 0.8 is worse than the classical baseline's 0.85", "only the one it loses to"
    both = gate.check_baselines("classify", "accuracy", "maximize", metrics | {"accuracy": 0.9}, classical="ridge")
    assert both.beaten is True and both.baseline == "ridge baseline"
    assert both.summary == "accuracy 0.9 beats the majority-class baseline's 0.4 and beats the ridge baseline's 0.85"


def test_a_tie_with_the_classical_baseline_passes_a_tie_with_the_naive_one_does_not() -> None:
    perfect = {"accuracy": 1.0, "majority_accuracy": 0.34, "baseline_accuracy": 1.0}
    tied = gate.check_baselines("classify", "accuracy", "maximize", perfect, classical="tfidf_logistic")
    assert tied.beaten is True and "ties the tfidf_logistic baseline's 1" in tied.summary
    chance = gate.check_baselines("classify", "accuracy", "maximize", perfect | {"accuracy": 0.34})
    assert chance.beaten is False and "no better than the majority-class baseline's 0.34" in chance.summary


def test_a_baseline_that_was_not_logged_is_named_not_invented() -> None:
    naive_only = gate.check_baselines("language_model", "cross_entropy", "minimize", {
        "cross_entropy": 1.2, "unigram_cross_entropy": 3.0,
    })  # fmt: skip
    assert naive_only.beaten is True and "no test_baseline_cross_entropy was logged" in naive_only.summary
    no_baseline = gate.check_baselines("classify", "log_loss", "minimize", {"log_loss": 0.3, "accuracy": 0.9})
    assert no_baseline.beaten is None and no_baseline.baseline is None
    assert no_baseline.summary.endswith("no test_majority_log_loss or test_baseline_log_loss")
    unevaluated = gate.check_baselines("forecast", "rmse", "minimize", {"naive_rmse": 1.0})
    assert unevaluated.beaten is None and unevaluated.summary.endswith("the run logged no test_rmse")


def test_beat_baseline_is_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    assert series_spec(tmp_path).promote.beat_baseline is True
    assert series_spec(tmp_path, promote={"beat_baseline": False}).promote.beat_baseline is False


def test_a_gate_that_cannot_reach_mlflow_raises_what_the_task_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    spec = series_spec(tmp_path)
    trained = {"run_id": "0" * 32, "run_dir": str(tmp_path / "run")}
    with pytest.raises(TrackingUnavailable, match=r"judging tiny version 3: the MLflow server .* version 3 of 'tiny' "):
        gate.gate(spec, tmp_path / "features", trained, {"version": "3"}, tmp_path)


# ----------------------------------------------------------------------------- scoring through the served predictors


def untrained_bundle(spec: Any, features_dir: Path, n_in: int, n_out: int, folder: Path, per_step: bool = False) -> Any:
    """A bundle of a freshly initialised network: scoring and request layouts need no training."""
    torch.manual_seed(0)
    model = build_model(spec.model, n_in, n_out, where="test", per_step=per_step)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "weights.pt")
    predictor, _ = write_bundle(spec.model_dump(mode="json"), features_dir, folder / "weights.pt", folder / "bundle")
    return predictor


def series_spec(
    root: Path,
    rows: int = 240,
    train: dict[str, Any] | None = None,
    promote: dict[str, Any] | None = None,
    period: int = 12,
    **data: Any,
) -> Any:
    """The tiny sine pipeline on a ``rows``-row series (the same values, more of them, as ``rows`` grows), whose cycle
    is ``period`` steps (the pipeline's season stays 12); resolved."""
    write_sine_csv(root / "data" / "tiny.csv", rows=rows, season=period)
    raw = {
        "data": {
            "path": "data/tiny.csv",
            "time_column": "month",
            "target": "value",
            "horizon": 6,
            "transform": "none",
            **data,
        },
        "model": {"layers": [{"lstm": {"units": 8}}, {"dense": {}}]},
        "train": {"epochs": 1, "batch_size": 16, "seed": 0, **(train or {})},
        "evaluate": {"season": 12},
        "promote": promote or {},
    }
    return resolve(validate_pipeline("tiny", raw, root))


def test_forecast_at_gives_what_predict_gives_at_each_origin(tmp_path: Path) -> None:
    """Differencing (one row lost) and a window other than the data's: each window reads only rows before it."""
    from lstmflow.data.timeseries import load_features, read_series

    spec = series_spec(tmp_path, window=24, transform="difference")
    prepare_pipeline_features(spec, tmp_path / "features")
    features = load_features(tmp_path / "features")
    own = series_spec(tmp_path, window=10, transform="difference")  # another model's window on the same data
    prepare_pipeline_features(own, tmp_path / "own")
    predictor = untrained_bundle(own, tmp_path / "own", 1, 6, tmp_path / "m")
    frame = read_series(spec.data).reset_index(drop=True)
    origins = features.windows("test").origins
    batched = predictor.forecast_at(frame, origins, batch_size=7)
    one_by_one = np.stack([predictor.predict(frame.iloc[:origin])["value"].to_numpy()[:, None] for origin in origins])
    assert batched.shape == (len(origins), 6, 1)
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5)
    with pytest.raises(ValueError, match="origins must lie in 11"):
        predictor.forecast_at(frame, np.array([5]))


def test_a_forecaster_that_does_not_fit_the_test_windows_is_named_not_comparable(tmp_path: Path) -> None:
    spec = series_spec(tmp_path, window=24)
    prepare_pipeline_features(spec, tmp_path / "features")
    data = scoring.scoring_data(spec, tmp_path / "features")
    short = series_spec(tmp_path / "short", window=24, horizon=3)
    prepare_pipeline_features(short, tmp_path / "short" / "features")
    with pytest.raises(scoring.NotComparable, match="forecasts 3 steps, the test windows have 6"):
        data.outputs(untrained_bundle(short, tmp_path / "short" / "features", 1, 3, tmp_path / "m"))
    assert data.outputs(untrained_bundle(spec, tmp_path / "features", 1, 6, tmp_path / "n")).shape == (data.n, 6, 1)


# ------------------------------------------------------------------- when a version cannot be scored: the rule


@dataclass
class Shapes:
    """The current data (horizon 6) and bundles: one that fits it, one of an older shape (horizon 3)."""

    spec: Any
    features_dir: Path
    fits: Path
    older_shape: Path


@pytest.fixture
def shapes(tmp_path: Path) -> Shapes:
    spec = series_spec(tmp_path, window=24)
    prepare_pipeline_features(spec, tmp_path / "features")
    short = series_spec(tmp_path / "short", window=24, horizon=3)
    prepare_pipeline_features(short, tmp_path / "short" / "features")
    untrained_bundle(spec, tmp_path / "features", 1, 6, tmp_path / "fits")
    untrained_bundle(short, tmp_path / "short" / "features", 1, 3, tmp_path / "older")
    return Shapes(spec, tmp_path / "features", tmp_path / "fits" / "bundle", tmp_path / "older" / "bundle")


def broken_copy(bundle: Path, folder: Path, breakage: str) -> Path:
    """A copy of ``bundle`` that does not load: a spec this lstmflow no longer accepts, or its weights gone."""
    import shutil

    copy = Path(shutil.copytree(bundle, folder))
    if breakage == "spec":
        (copy / "spec.json").write_text('{"name": "tiny", "task": "forecast"}')
    else:
        (copy / "model.pt").unlink()
    return copy


def test_a_champion_of_an_older_data_shape_gives_way_and_the_reason_says_so(shapes: Shapes) -> None:
    decided = gate.judge_bundles(shapes.spec, shapes.features_dir, shapes.fits, shapes.older_shape, "1")
    assert decided["decision"] == "promoted" and decided["unscored"] == "champion"
    assert decided["reason"].startswith("promoted: the data or the task changed shape: the champion (version 1)")
    assert "forecasts 3 steps, the test windows have 6" in decided["reason"]


def test_a_champion_of_another_task_gives_way(shapes: Shapes, tmp_path: Path) -> None:
    from lstmflow.data.corpus import load_corpus

    (tmp_path / "lm").mkdir()
    lm = prepared_corpus(tmp_path / "lm", repeats=12)
    vocab = load_corpus(tmp_path / "lm" / "features").vocab_size
    untrained_bundle(lm, tmp_path / "lm" / "features", vocab, vocab, tmp_path / "lm" / "m", per_step=True)
    decided = gate.judge_bundles(shapes.spec, shapes.features_dir, shapes.fits, tmp_path / "lm" / "m" / "bundle", "1")
    assert decided["decision"] == "promoted" and decided["unscored"] == "champion"
    assert "it is a Generator, not a forecaster" in decided["reason"]


@pytest.mark.parametrize("breakage", ["spec", "weights"])
def test_a_champion_that_does_not_load_keeps_the_alias(shapes: Shapes, tmp_path: Path, breakage: str) -> None:
    broken = broken_copy(shapes.fits, tmp_path / "broken", breakage)
    decided = gate.judge_bundles(shapes.spec, shapes.features_dir, shapes.fits, broken, "4")
    assert decided["decision"] == "kept" and decided["unscored"] == "champion"
    assert decided["reason"].startswith("kept: the champion (version 4) does not load (")
    assert ("ValidationError" if breakage == "spec" else "FileNotFoundError") in decided["reason"]
    assert "`lstmflow promote tiny --version N`" in decided["reason"]


def test_a_challenger_that_cannot_be_scored_is_never_promoted(shapes: Shapes, tmp_path: Path) -> None:
    """Whatever the champion: one that fits, one of an older shape, one that does not load."""
    broken = broken_copy(shapes.fits, tmp_path / "broken", "spec")
    for challenger in (shapes.older_shape, broken):
        for champion in (shapes.fits, shapes.older_shape, broken):
            decided = gate.judge_bundles(shapes.spec, shapes.features_dir, challenger, champion, "1")
            assert decided["decision"] == "kept" and decided["unscored"] == "challenger", (challenger, champion)
            assert decided["reason"].startswith("kept: this version cannot be scored on the current test data (")
            assert decided["reason"].endswith("; it is never promoted")


def assert_requests_match_the_features(spec: Any, features_dir: Path, predictor: Any) -> None:
    """Each test request, read the way the served model reads it, is the stored test sample; labels agree."""
    from lstmflow.data.sequences import load_sequences

    features = load_sequences(features_dir)
    test = features.part("test")
    requests = predictor.requests(spec, features_dir, "test")
    assert len(requests.keys) == len(test) > 0
    assert requests.labels == [features.classes[code] for code in test.labels]
    for keys, rows in requests.chunks(5):
        answered_keys, samples = predictor.samples(rows)
        assert sorted(answered_keys) == sorted(keys)
        for key, sample in zip(answered_keys, samples):
            np.testing.assert_allclose(predictor.preprocessing.encode(sample), test.sequence(key), rtol=1e-5, atol=1e-5)
        assert list(predictor.predict(rows)["key"]) == answered_keys


def write_pattern_table(path: Path, per_class: int, layout: str, seed: int = 0) -> Path:
    """Three classes told apart by the order of their steps, as a long table (string ids in shuffled order, a time
    column) or a wide one (a row per sequence, empty trailing cells)."""
    rng = np.random.default_rng(seed)
    rows, wide = [], []
    for number in rng.permutation(3 * per_class):
        label = ("rise", "fall", "wave")[number % 3]
        length = int(rng.integers(4, 21))
        t = np.linspace(-1, 1, length)
        signal = {"rise": t, "fall": -t, "wave": np.sin(2 * np.pi * t)}[label] + rng.normal(0, 0.2, length)
        rows += [{"sid": f"s{number:04d}", "t": step, "x": value, "label": label} for step, value in enumerate(signal)]
        wide.append({"label": label, **{f"v{j}": value for j, value in enumerate(signal)}})
    path.parent.mkdir(parents=True, exist_ok=True)
    (pd.DataFrame(rows) if layout == "long" else pd.DataFrame(wide)).to_csv(path, index=False)
    return path


def classify_spec(root: Path, data: dict[str, Any], layers: list[dict[str, Any]] | None = None, **train: Any) -> Any:
    raw = {
        "task": "classify",
        "data": data,
        "model": {"layers": layers or [{"lstm": {"units": 16}}, {"dense": {"activation": "softmax"}}]},
        "train": {"epochs": 1, "batch_size": 16, "optimizer": {"lr": 0.02}, "seed": 0, **train},
    }
    return validate_pipeline("patterns", raw, root)


def prepared_classifier(root: Path, spec: Any) -> tuple[Path, Any]:
    """The data stage's features of ``spec`` in ``root / "features"``, and an untrained predictor for them."""
    from lstmflow.data.sequences import load_sequences
    from lstmflow.training.objectives import classifier_input_size

    features_dir = root / "features"
    build_features(spec.data, None, features_dir, "pipelines.patterns.data", root / "cache")
    features = load_sequences(features_dir)
    return features_dir, untrained_bundle(
        spec, features_dir, classifier_input_size(features), features.n_classes, root / "m"
    )


@pytest.mark.parametrize("layout", ["long", "wide"])
def test_requests_of_a_table_are_the_prepared_test_sequences(tmp_path: Path, layout: str) -> None:
    path = write_pattern_table(tmp_path / "patterns.csv", 20, layout)
    data: dict[str, Any] = {"kind": "sequences", "path": str(path), "format": layout, "label_column": "label"}
    data |= {"id_column": "sid", "time_column": "t", "value_columns": ["x"]} if layout == "long" else {}
    spec = classify_spec(tmp_path, data)
    features_dir, predictor = prepared_classifier(tmp_path, spec)
    assert_requests_match_the_features(spec, features_dir, predictor)


def test_requests_of_texts_and_images_are_the_prepared_test_samples(tmp_path: Path) -> None:
    from lstmflow.data.demo import _agent_texts, _write_digits

    texts = tmp_path / "texts"
    _agent_texts(texts_per_class=20).to_csv(tmp_path / "agents.csv", index=False)
    text_spec = classify_spec(
        texts,
        {"kind": "text", "path": str(tmp_path / "agents.csv"), "tokenizer": {"kind": "word"}, "max_length": 6},
        layers=[{"embedding": {"dim": 4}}, {"lstm": {"units": 4}}, {"dense": {"activation": "softmax"}}],
    )
    features_dir, predictor = prepared_classifier(texts, text_spec)
    assert_requests_match_the_features(text_spec, features_dir, predictor)

    images = tmp_path / "images"
    digits = _write_digits(tmp_path)
    for folder in digits.iterdir():  # 20 images per class is plenty
        for extra in sorted(folder.iterdir())[20:]:
            extra.unlink()
    image_spec = classify_spec(images, {"kind": "images", "path": str(digits)})
    features_dir, predictor = prepared_classifier(images, image_spec)
    assert_requests_match_the_features(image_spec, features_dir, predictor)


def test_requests_of_clips_leave_out_the_files_the_data_stage_skipped(tmp_path: Path) -> None:
    from test_audio import make_folder, write_clip

    clips = make_folder(tmp_path / "clips", per_label=6)
    write_clip(clips / "high" / "clip2b-silent.wav", np.zeros(8000, dtype=np.float32))  # listed, but skipped: silent
    spec = classify_spec(tmp_path, {"kind": "audio", "path": str(clips), "n_mels": 16, "workers": 1})
    features_dir, predictor = prepared_classifier(tmp_path, spec)
    assert "high/clip2b-silent.wav" in (features_dir / "skipped.json").read_text()
    assert_requests_match_the_features(spec, features_dir, predictor)


def test_raw_data_that_no_longer_match_the_features_are_refused(tmp_path: Path) -> None:
    from lstmflow.errors import DataError
    from lstmflow.serving.predictors import Classifier

    path = write_pattern_table(tmp_path / "patterns.csv", 10, "wide")
    spec = classify_spec(tmp_path, {"kind": "sequences", "path": str(path), "format": "wide"})
    features_dir, _ = prepared_classifier(tmp_path, spec)
    write_pattern_table(path, 10, "wide", seed=1)  # new data, features not prepared again
    with pytest.raises(DataError, match="no longer match the features prepared"):
        Classifier.requests(spec, features_dir, "test")


def corpus_of(spec: Any) -> CorpusSpec:
    assert isinstance(spec.data, CorpusSpec)
    return spec.data


def test_score_text_is_the_evaluation_cross_entropy_of_one_stream(tmp_path: Path) -> None:
    from lstmflow.data.corpus import load_corpus, split_corpus
    from lstmflow.training.objectives import LanguageModelObjective, token_cross_entropy

    spec = prepared_corpus(tmp_path, repeats=12)
    features = load_corpus(tmp_path / "features")
    generator = untrained_bundle(
        spec, tmp_path / "features", features.vocab_size, features.vocab_size, tmp_path / "m", per_step=True
    )
    nats, tokens = generator.score_text(split_corpus(corpus_of(spec), "lm")["test"])
    expected, count = token_cross_entropy(generator.model, LanguageModelObjective(spec, features), "test", 1, "cpu")
    assert tokens == count and nats == pytest.approx(expected, rel=1e-6)


def test_compare_language_models_per_character_without_a_test(tmp_path: Path) -> None:
    from lstmflow.data.corpus import split_corpus

    spec = prepared_corpus(tmp_path, repeats=40, epochs=3, seed=0)
    trained = fit(spec, tmp_path / "features", tmp_path / "run", ListLogger(), progress=False)
    strong, _ = write_bundle(
        spec.model_dump(mode="json"), tmp_path / "features", Path(trained.model_path), tmp_path / "strong"
    )
    vocab = strong.tokenizer.vocab_size
    weak = untrained_bundle(spec, tmp_path / "features", vocab, vocab, tmp_path / "weak", per_step=True)
    result = scoring.compare(spec, tmp_path / "features", strong, weak)
    assert (
        result.metric == "cross_entropy"
        and result.test is None
        and result.n == len(split_corpus(corpus_of(spec), "lm")["test"])
    )
    assert result.challenger < result.champion < math.log(vocab) + 0.5
    assert gate.decide(result, spec.promote).promote


# ------------------------------------------------------------------------ the whole gate on a real registry (slow)


@dataclass
class Registered:
    prepared: steps.Prepared
    trained: dict[str, Any]
    version: str


def fit_and_register(root: Path, spec: Any, features_dir: Path, label: str) -> Registered:
    """Train in this process (no child), then the real register step: an MLflow run and a registered pyfunc."""
    prepared = steps.Prepared(spec.model_dump(mode="json"), str(features_dir), "d" * 32, "f" * 32)
    run_dir = root / "runs" / label
    result = fit(spec, features_dir, run_dir, ListLogger(), progress=False)
    run_id = steps.start_tracked_run(prepared, root, None, run_name=label)
    trained = {"run_id": run_id, "run_dir": str(run_dir), "model_path": result.model_path}
    return Registered(prepared, trained, steps.register(prepared, trained, root)["version"])


def judge(root: Path, entry: Registered) -> dict[str, Any]:
    prepared = entry.prepared
    return gate.gate(prepared.pipeline, Path(prepared.features_dir), entry.trained, {"version": entry.version}, root)


@pytest.fixture(scope="module")
def forecasts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """v1 barely trained on 240 rows; then the data grow to 300 rows: v2 trained well, v3 barely, on the new data."""
    root = tmp_path_factory.mktemp("gate-forecast")
    weak = {"epochs": 1, "optimizer": {"lr": 1e-4}}
    old = series_spec(root, rows=240, train=weak, window=24)
    prepare_pipeline_features(old, root / "features-v1")
    v1 = fit_and_register(root, old, root / "features-v1", "v1")
    first = judge(root, v1)
    new = series_spec(root, rows=300, window=18)  # a new data version: more rows, another window and scaler
    prepare_pipeline_features(new, root / "features-v2")
    v2 = fit_and_register(
        root, series_spec(root, 300, {"epochs": 60, "optimizer": {"lr": 0.01}}, window=18), root / "features-v2", "v2"
    )
    second = judge(root, v2)
    v3 = fit_and_register(root, series_spec(root, 300, weak, window=18), root / "features-v2", "v3")
    third = judge(root, v3)
    return {"root": root, "entries": (v1, v2, v3), "results": (first, second, third)}


@pytest.mark.slow
def test_forecast_gate_promotes_the_first_and_a_clearly_better_version_and_keeps_a_worse_one(
    forecasts: dict[str, Any],
) -> None:
    root, (v1, v2, v3), (first, second, third) = forecasts["root"], forecasts["entries"], forecasts["results"]
    uri = tracking_uri(root)
    assert first["decision"] == "promoted" and first["reason"].startswith("first version")
    assert second["decision"] == "promoted" and second["champion_version"] == v1.version
    assert second["p_value"] < 0.01 and second["challenger_value"] < 0.5 * second["champion_value"]
    assert third["decision"] == "kept" and third["champion_version"] == v2.version and "not better" in third["reason"]
    assert registry.alias_version(uri, "tiny", "champion") == v2.version
    assert registry.history(uri, "tiny", "champion") == [v1.version, v2.version]
    tags = registry.version_tags(uri, "tiny", v3.version)
    assert (
        tags["lstmflow.gate.decision"] == "kept"
        and tags["lstmflow.gate.metric"] == "mae"
        and tags["lstmflow.gate.test"] == "diebold_mariano"
    )
    assert (
        float(tags["lstmflow.gate.champion_value"]) == pytest.approx(third["champion_value"])
        and tags["lstmflow.gate.champion_version"] == v2.version
    )
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=uri).get_run(v2.trained["run_id"])
    assert run.data.metrics["gate_promoted"] == 1.0 and run.data.metrics["gate_champion_mae"] == pytest.approx(
        second["champion_value"]
    )
    assert run.data.tags["lstmflow.gate.decision"] == "promoted"


@pytest.mark.slow
def test_a_champion_of_an_older_data_version_is_scored_on_the_new_test_windows(forecasts: dict[str, Any]) -> None:
    """v1 saw 240 rows with window 24; judged against v2 it forecasts each of the 300-row series' test windows."""
    from lstmflow.data.timeseries import load_features, read_series

    root, (v1, _, _), (_, second, _) = forecasts["root"], forecasts["entries"], forecasts["results"]
    features = load_features(root / "features-v2")
    test = features.windows("test")
    champion = load_predictor(Path(v1.trained["run_dir"]) / "bundle")
    assert isinstance(champion, Forecaster)
    frame = read_series(v1.prepared.pipeline.data.model_copy(update={"path": root / "data" / "tiny.csv"})).reset_index(
        drop=True
    )
    assert len(frame) == 300 and champion.window == 24
    forecasts_by_hand = np.stack([champion.predict(frame.iloc[:origin])["value"].to_numpy() for origin in test.origins])
    assert second["n"] == len(test.origins) == 300 - features.meta["split"]["val_end"] - 6 + 1
    assert second["champion_value"] == pytest.approx(
        np.mean(np.abs(forecasts_by_hand - test.targets_original()[:, :, 0])), rel=1e-6
    )


@pytest.mark.slow
def test_a_judged_version_is_not_judged_again(forecasts: dict[str, Any]) -> None:
    from dataclasses import asdict

    from tasks.gate import gate as gate_task

    root, (_, _, v3), (_, _, third) = forecasts["root"], forecasts["entries"], forecasts["results"]
    before = registry.version_tags(tracking_uri(root), "tiny", v3.version)
    again = gate_task.fn(asdict(v3.prepared), v3.trained, {"version": v3.version}, str(root))  # the task, no engine
    assert again["recorded"] is True and again["decision"] == "kept" and again["decided_at"] == third["decided_at"]
    assert again["champion_value"] == pytest.approx(third["champion_value"])
    assert registry.version_tags(tracking_uri(root), "tiny", v3.version) == before


@pytest.mark.slow
def test_promote_by_hand_and_rollback_move_the_alias_back_step_by_step(
    forecasts: dict[str, Any], tmp_path: Path
) -> None:
    """On a copy of the registry, so that the alias the other tests read stays where the gate put it."""
    import shutil

    root, (v1, v2, v3) = tmp_path, forecasts["entries"]
    shutil.copyfile(forecasts["root"] / "mlflow.db", root / "mlflow.db")  # judged versions are never downloaded
    uri = tracking_uri(root)
    with pytest.raises(registry.RegistryError, match=r"no version 9; its versions: 1, 2, 3"):
        gate.promote(uri, "tiny", 9)
    with pytest.raises(registry.RegistryError, match="no registered model 'nope'"):
        gate.promote(uri, "nope", 1)
    moved = gate.promote(uri, "tiny", v3.version, reason="weekend test", user="ana")
    assert moved == {
        "name": "tiny",
        "alias": "champion",
        "version": v3.version,
        "previous": v2.version,
        "changed": True,
    }
    tags = registry.version_tags(uri, "tiny", v3.version)
    assert tags["lstmflow.alias.champion.by"] == "manual" and tags["lstmflow.alias.champion.user"] == "ana"
    assert tags["lstmflow.alias.champion.reason"] == "weekend test"
    assert judge(root, v3)["decision"] == "kept", "its recorded decision stands; the gate does not undo a person"
    assert gate.rollback(uri, "tiny")["version"] == v2.version
    assert registry.alias_version(uri, "tiny", "champion") == v2.version
    assert gate.rollback(uri, "tiny")["version"] == v1.version
    assert registry.version_tags(uri, "tiny", v1.version)["lstmflow.alias.champion.by"] == "rollback"
    with pytest.raises(registry.RegistryError, match="no earlier 'champion' to roll back to"):
        gate.rollback(uri, "tiny")
    assert registry.alias_version(uri, "tiny", "champion") == v1.version
    again = judge(root, v2)
    assert again["recorded"] and registry.alias_version(uri, "tiny", "champion") == v1.version, (
        "a rollback stays rolled back"
    )


@pytest.mark.slow
def test_classification_gate_promotes_a_clearly_better_version_and_keeps_a_worse_one(tmp_path: Path) -> None:
    """Long table with string ids in shuffled order: answers are matched to samples by key. McNemar decides."""
    path = write_pattern_table(tmp_path / "patterns.csv", 60, "long")
    data = {
        "kind": "sequences",
        "path": str(path),
        "format": "long",
        "id_column": "sid",
        "time_column": "t",
        "value_columns": ["x"],
        "label_column": "label",
    }
    weak = classify_spec(tmp_path, data, epochs=1, optimizer={"lr": 1e-4})
    strong = classify_spec(tmp_path, data, epochs=25)
    features_dir = tmp_path / "features"
    build_features(weak.data, None, features_dir, "pipelines.patterns.data", tmp_path / "cache")
    v1 = fit_and_register(tmp_path, weak, features_dir, "v1")
    v2 = fit_and_register(tmp_path, strong, features_dir, "v2")
    v3 = fit_and_register(
        tmp_path, classify_spec(tmp_path, data, epochs=1, optimizer={"lr": 1e-4}, seed=1), features_dir, "v3"
    )
    assert judge(tmp_path, v1)["decision"] == "promoted"
    better = judge(tmp_path, v2)
    assert better["decision"] == "promoted" and better["test"] == "mcnemar" and better["p_value"] < 0.001
    assert better["challenger_value"] >= 0.9 and better["champion_value"] < 0.6 and better["n"] == 27
    worse = judge(tmp_path, v3)
    assert worse["decision"] == "kept" and worse["champion_version"] == v2.version
    assert registry.alias_version(tracking_uri(tmp_path), "patterns", "champion") == v2.version


@pytest.mark.slow
def test_the_gate_records_on_the_version_why_it_could_not_compare(tmp_path: Path) -> None:
    """v1 forecasts 3 steps; the horizon becomes 6 and v2 is promoted over it. Then v2's registered bundle breaks:
    v3 is kept, and v2 stays the champion."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    from mlflow import MlflowClient

    uri = tracking_uri(tmp_path)
    short = series_spec(tmp_path, window=24, horizon=3)
    prepare_pipeline_features(short, tmp_path / "features-v1")
    assert judge(tmp_path, fit_and_register(tmp_path, short, tmp_path / "features-v1", "v1"))["decision"] == "promoted"
    spec = series_spec(tmp_path, window=24)
    prepare_pipeline_features(spec, tmp_path / "features-v2")
    v2 = fit_and_register(tmp_path, spec, tmp_path / "features-v2", "v2")
    second = judge(tmp_path, v2)
    tags = registry.version_tags(uri, "tiny", v2.version)
    assert second["decision"] == "promoted" and "changed shape" in second["reason"]
    assert tags["lstmflow.gate.unscored"] == "champion" and tags["lstmflow.gate.reason"] == second["reason"]
    assert registry.alias_version(uri, "tiny", "champion") == v2.version

    location = MlflowClient(tracking_uri=uri).get_model_version_download_uri("tiny", v2.version)
    (Path(url2pathname(urlparse(location).path)) / "artifacts" / "bundle" / "spec.json").write_text("{}")
    v3 = fit_and_register(tmp_path, spec, tmp_path / "features-v2", "v3")
    third = judge(tmp_path, v3)
    tags = registry.version_tags(uri, "tiny", v3.version)
    assert third["decision"] == "kept" and f"the champion (version {v2.version}) does not load" in third["reason"]
    assert tags["lstmflow.gate.unscored"] == "champion" and tags["lstmflow.gate.decision"] == "kept"
    assert registry.alias_version(uri, "tiny", "champion") == v2.version


# ------------------------------------------------------------ the baselines on a real registry, through evaluate (slow)


def fit_evaluate_register(root: Path, spec: Any, features_dir: Path, label: str) -> Registered:
    """As :func:`fit_and_register`, with the real evaluate step between: the run logs its test metrics and baselines."""
    prepared = steps.Prepared(spec.model_dump(mode="json"), str(features_dir), "d" * 32, "f" * 32)
    run_dir = root / "runs" / label
    result = fit(spec, features_dir, run_dir, ListLogger(), progress=False)
    run_id = steps.start_tracked_run(prepared, root, None, run_name=label)
    trained = {"run_id": run_id, "run_dir": str(run_dir), "model_path": result.model_path}
    steps.evaluate(prepared, trained, root)
    return Registered(prepared, trained, steps.register(prepared, trained, root)["version"])


def logged_test_metrics(root: Path, entry: Registered) -> dict[str, float]:
    from mlflow import MlflowClient

    metrics = MlflowClient(tracking_uri=tracking_uri(root)).get_run(entry.trained["run_id"]).data.metrics
    return {key.removeprefix("test_"): value for key, value in metrics.items() if key.startswith("test_")}


def strongest_mae(logged: dict[str, float]) -> float:
    """The lowest baseline MAE the run logged: seasonal naive's, or the classical method's where evaluate ran one."""
    return min(logged["naive_mae"], logged.get("baseline_mae", math.inf))


UNTRAINED = {"epochs": 1, "optimizer": {"lr": 1e-6}}  # a network that has learnt nothing: its forecasts sit near 0
TRAINED = {"epochs": 60, "optimizer": {"lr": 0.01}}


def cycle_of_10(root: Path, train: dict[str, Any], **promote: Any) -> Any:
    """A sine of period 10 declared with season 12: seasonal naive (lag 12) is a weak baseline, a trained network
    (on differences, so the trend does not leave its range) beats it, an untrained one does not."""
    return series_spec(root, 300, train, promote, period=10, window=18, transform="difference")


@pytest.mark.slow
def test_the_gate_refuses_a_first_version_that_loses_to_its_seasonal_naive_baseline(tmp_path: Path) -> None:
    """v1 learnt nothing: registered, not promoted, and says why; v2 beats the baseline and becomes the champion."""
    uri = tracking_uri(tmp_path)
    weak = cycle_of_10(tmp_path, UNTRAINED)
    prepare_pipeline_features(weak, tmp_path / "features")
    v1 = fit_evaluate_register(tmp_path, weak, tmp_path / "features", "v1")
    logged = logged_test_metrics(tmp_path, v1)
    assert logged["mae"] > logged["naive_mae"], "the untrained network must lose for this test to mean anything"
    first = judge(tmp_path, v1)
    assert first["decision"] == "kept" and first["verdict"] == "below_baseline" and first["promoted"] is False
    assert first["test_value"] == logged["mae"] and first["baseline_value"] == strongest_mae(logged)
    expected = f"mae {logged['mae']:.4g} is worse than the seasonal-naive baseline's {logged['naive_mae']:.4g}"
    why = f"{first['baselines']} (promote.beat_baseline)"
    assert first["baselines"].startswith(expected) and first["reason"] == f"kept: {why}"
    assert gate.warning("tiny", first) == f"warning: tiny version {v1.version} is not promoted: {why}"
    assert registry.alias_version(uri, "tiny", "champion") is None, "no champion rather than a useless one"
    tags = registry.version_tags(uri, "tiny", v1.version)
    assert tags["lstmflow.gate.verdict"] == "below_baseline" and tags["lstmflow.gate.reason"] == first["reason"]
    again = judge(tmp_path, v1)
    assert again["recorded"] and again["verdict"] == "below_baseline" and again["promoted"] is False
    assert again["beat_baseline"] is True and again["baselines"] == first["baselines"]

    v2 = fit_evaluate_register(tmp_path, cycle_of_10(tmp_path, TRAINED), tmp_path / "features", "v2")
    second = judge(tmp_path, v2)
    assert second["decision"] == "promoted" and second["verdict"] == "promoted" and second["promoted"] is True
    assert "beats the seasonal-naive baseline's" in second["reason"] and second["champion_version"] is None
    assert second["test_value"] < second["baseline_value"] == strongest_mae(logged_test_metrics(tmp_path, v2))
    assert registry.alias_version(uri, "tiny", "champion") == v2.version and gate.warning("tiny", second) is None


@pytest.mark.slow
def test_the_classical_baseline_is_read_from_the_run_and_must_be_beaten_too(tmp_path: Path) -> None:
    """A trained version beats seasonal naive; a classical method that did better on its run keeps it out."""
    spec = cycle_of_10(tmp_path, TRAINED)
    prepare_pipeline_features(spec, tmp_path / "features")
    entry = fit_evaluate_register(tmp_path, spec, tmp_path / "features", "v1")
    logged = logged_test_metrics(tmp_path, entry)
    assert logged["mae"] < logged["naive_mae"]
    from lstmflow import tracking
    from lstmflow.evaluation.baselines import BASELINE_TAG

    stronger = 0.9 * logged["mae"]  # what a classical method logs beside it on the same test windows, and its name
    tracking.log_summary_metrics(tracking_uri(tmp_path), entry.trained["run_id"], {"test_baseline_mae": stronger})
    tracking.set_tags(tracking_uri(tmp_path), entry.trained["run_id"], {BASELINE_TAG: "auto_ets"})
    result = judge(tmp_path, entry)
    assert result["verdict"] == "below_baseline" and result["baseline"] == "auto_ets baseline"
    assert result["baselines"] == f"mae {logged['mae']:.4g} is worse than the auto_ets baseline's {stronger:.4g}"


@pytest.mark.slow
def test_beat_baseline_false_restores_the_old_rule_the_first_version_is_promoted(tmp_path: Path) -> None:
    spec = cycle_of_10(tmp_path, UNTRAINED, beat_baseline=False)
    prepare_pipeline_features(spec, tmp_path / "features")
    entry = fit_evaluate_register(tmp_path, spec, tmp_path / "features", "v1")
    logged = logged_test_metrics(tmp_path, entry)
    assert logged["mae"] > logged["naive_mae"]
    result = judge(tmp_path, entry)
    assert result["decision"] == "promoted" and result["verdict"] == "promoted" and result["baselines"] is None
    assert result["reason"] == "first version: 'tiny' has no 'champion' yet" and result["beat_baseline"] is False
    assert registry.alias_version(tracking_uri(tmp_path), "tiny", "champion") == entry.version


@pytest.mark.slow
def test_run_exits_0_and_its_json_and_last_line_say_the_version_is_not_promoted(tmp_path: Path) -> None:
    """The whole command as a user runs it: an untrained model on the tiny project loses to seasonal naive."""
    import json

    from conftest import make_project, run_lstmflow

    project = make_project(tmp_path / "project")
    done = run_lstmflow(
        project, "run", "tiny", "--json", "--set", "train.epochs=1", "--set", "train.optimizer.lr=1e-6", timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    verdict = result["gate"]
    assert verdict["promoted"] is False and verdict["verdict"] == "below_baseline"
    assert result["metrics"]["mae"] > result["metrics"]["naive_mae"]
    figures = f"mae {result['metrics']['mae']:.4g} is worse than the seasonal-naive baseline's"
    assert verdict["reason"].startswith(f"kept: {figures}")
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"warning: tiny version {result['model_version']} is not promoted: {figures}"), last
    assert last.endswith("(promote.beat_baseline)")
    assert "Successfully registered model" not in done.stderr and "Created version" not in done.stderr  # MLflow's
