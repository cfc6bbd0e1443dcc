"""The Kneser-Ney n-gram: by hand on a tiny text, normalised in every context, its order chosen on validation; a
language model's baseline and, interpolated with the network, what the run scores and the bundle serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CORPUS_LINE

from lstmflow.config import PipelineSpec, validate_pipeline
from lstmflow.data.corpus import load_corpus, prepare_corpus_features
from lstmflow.evaluation.baselines import ngram_baseline, read_record
from lstmflow.evaluation.evaluate import evaluate_language_model
from lstmflow.models.lstm import build_model
from lstmflow.models.ngram import NGRAM_PARTNER_FILE, KneserNey, choose_weight, longest_order, mixed
from lstmflow.serving.predictors import write_bundle


def noisy_cycle(length: int, period: int, vocab_size: int, seed: int) -> np.ndarray:
    """A fixed random pattern of ``period`` tokens over and over, one in ten replaced by a random token: long
    contexts predict it."""
    rng = np.random.default_rng(seed)
    ids = np.random.default_rng(period).integers(0, vocab_size, period)[np.arange(length) % period]
    noisy = rng.random(length) < 0.1
    ids[noisy] = rng.integers(0, vocab_size, noisy.sum())
    return ids


def test_a_bigram_model_by_hand() -> None:
    train = np.array([0, 1, 0, 1, 0, 1, 2])  # bigrams 0→1 three times, 1→0 twice, 1→2 once
    model = KneserNey.fit(train, 3, np.array([[0, 1, 0, 1, 2]]), orders=range(2, 3))
    # discounts n1/(n1+2·n2): every token follows one other (continuations 1, 1, 1: 0.95 and a uniform 1/3);
    # bigram counts 3, 2, 1: 1/3. P(1|0) = (3 - 1/3)/3 + (1/3 · 1 type / 3) · 1/3, and so on.
    assert model.order == 2
    expected = np.array([[25 / 27, 8 / 27], [17 / 27, 25 / 27]])
    np.testing.assert_allclose(model.target_probabilities(np.array([[0, 1, 2], [1, 0, 1]])), expected)
    np.testing.assert_allclose(model.next_probabilities([1]), [17 / 27, 2 / 27, 8 / 27])


def test_every_context_gets_a_distribution_and_both_ways_of_asking_agree() -> None:
    train, val = noisy_cycle(3000, 7, 9, seed=0), noisy_cycle(400, 7, 9, seed=1)
    model = KneserNey.fit(train, 9, val.reshape(4, 100))
    rows = noisy_cycle(60, 7, 9, seed=2).reshape(3, 20)
    scored = model.target_probabilities(rows)
    for row, probabilities in zip(rows, scored):
        for position in range(1, len(row)):
            distribution = model.next_probabilities(row[:position])
            assert distribution.sum() == pytest.approx(1.0) and distribution.min() > 0
            assert distribution[row[position]] == pytest.approx(probabilities[position - 1])
    assert model.next_probabilities([8, 8, 8, 8]).sum() == pytest.approx(1.0)  # a context never seen


def test_the_order_is_the_one_validation_prefers() -> None:
    train, val, test = (noisy_cycle(length, 12, 4, seed) for length, seed in ((4000, 0), (600, 1), (600, 2)))
    # with 4 tokens a cycle of 12 repeats short patterns: only a long context says where in the cycle a token is
    chosen = KneserNey.fit(train, 4, val[None, :])
    bigram = KneserNey.fit(train, 4, val[None, :], orders=range(2, 3))
    assert chosen.order > 4
    entropy = {model.order: -np.log(model.target_probabilities(test[None, :])).mean() for model in (chosen, bigram)}
    assert entropy[chosen.order] < 0.7 * entropy[2]
    assert longest_order(4) == 31 and longest_order(50_000) == 3  # keys pack into 62 bits


def test_the_weight_mixes_two_models_that_err_apart() -> None:
    network, ngram = np.array([0.9, 0.9, 0.01, 0.01]), np.array([0.01, 0.01, 0.9, 0.9])
    weight = choose_weight(network, ngram)
    assert weight == pytest.approx(0.5)
    assert -np.log(mixed(network, ngram, weight)).mean() < -np.log(network).mean()
    assert choose_weight(network, network / 2) == 1.0


def test_the_baseline_scores_the_test_rows_under_the_model_names() -> None:
    train, val, test = (noisy_cycle(length, 7, 9, seed) for length, seed in ((3000, 0), (400, 1), (400, 2)))
    baseline = ngram_baseline(train, val.reshape(4, 100), test.reshape(4, 100), 9)
    assert baseline.method == f"kneser_ney_{baseline.ngram.model.order}gram"  # type: ignore[union-attr]
    assert baseline.metrics["cross_entropy"] < 0.5 * np.log(9), "the cycle is mostly predictable"


def language_model(tmp_path: Path, blend: bool | str = "auto") -> tuple[PipelineSpec, Path, Path]:
    """An untrained tiny character model of a repetitive corpus, its features and its saved weights."""
    (tmp_path / "corpus.txt").write_text(CORPUS_LINE * 40, encoding="utf-8")
    raw = {
        "task": "language_model",
        "data": {"kind": "corpus", "path": "corpus.txt", "sequence_length": 12},
        "model": {
            "layers": [{"embedding": {"dim": 4}}, {"lstm": {"units": 4, "return_sequences": True}}, {"dense": {}}]
        },
        "train": {"batch_size": 4, "blend_baseline": blend},
    }
    spec = validate_pipeline("lm", raw, tmp_path)
    prepare_corpus_features(spec.data, tmp_path / "f", "lm.data")  # type: ignore[arg-type]
    vocab = load_corpus(tmp_path / "f").vocab_size
    torch.manual_seed(0)
    (tmp_path / "run").mkdir()
    torch.save(build_model(spec.model, vocab, vocab, where="model", per_step=True).state_dict(), tmp_path / "run/m.pt")
    return spec, tmp_path / "f", tmp_path / "run/m.pt"


def test_a_language_model_is_scored_and_served_interpolated_with_its_ngram(tmp_path: Path) -> None:
    spec, features_dir, model_path = language_model(tmp_path)

    metrics, _ = evaluate_language_model(spec, features_dir, model_path, tmp_path / "plots")

    assert str(read_record(tmp_path / "plots")["method"]).startswith("kneser_ney_")  # type: ignore[index]
    for key in ("cross_entropy", "perplexity", "bits_per_character"):
        assert {key, f"unigram_{key}", f"baseline_{key}", f"network_{key}"} <= set(metrics)
    assert metrics["baseline_cross_entropy"] < 0.3 * metrics["unigram_cross_entropy"]  # the text repeats itself
    assert metrics["cross_entropy"] < 0.5 * metrics["network_cross_entropy"], "an untrained network gains"
    assert metrics["blend_weight"] < 0.5 and (model_path.parent / NGRAM_PARTNER_FILE).is_file()
    predictor, _ = write_bundle(spec.model_dump(mode="json"), features_dir, model_path, tmp_path / "bundle")
    assert predictor.ngram.weight == metrics["blend_weight"]
    nats, tokens = predictor.score_text(CORPUS_LINE * 3)
    assert nats / tokens < 0.5 * metrics["network_cross_entropy"]
    written = predictor.predict(predictor.example({}))["text"][0]
    assert len(written) == 20 and set(written) <= set(CORPUS_LINE), written


def test_without_the_blend_the_language_model_is_served_alone(tmp_path: Path) -> None:
    spec, features_dir, model_path = language_model(tmp_path, blend="auto")
    evaluate_language_model(spec, features_dir, model_path, tmp_path / "plots")  # leaves an n-gram beside the weights
    alone = spec.model_copy(update={"train": spec.train.model_copy(update={"blend_baseline": False})})

    metrics, _ = evaluate_language_model(alone, features_dir, model_path, tmp_path / "plots")

    assert "network_cross_entropy" not in metrics and not (model_path.parent / NGRAM_PARTNER_FILE).exists()
    assert metrics["cross_entropy"] > metrics["baseline_cross_entropy"], "the untrained network alone is scored"
    predictor, _ = write_bundle(alone.model_dump(mode="json"), features_dir, model_path, tmp_path / "bundle")
    assert predictor.ngram is None
