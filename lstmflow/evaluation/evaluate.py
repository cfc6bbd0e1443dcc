"""Scoring a trained model on the test part beside the naive baseline it must beat: a forecaster in original
units beside the seasonal-naive forecast, a classifier beside always predicting the majority training class, a
language model beside the unigram model (every token drawn with its training frequency, whatever came before).

Forecasters, classifiers and language models are also scored beside a strong classical baseline on the same split
(:mod:`lstmflow.evaluation.baselines`), returned as ``baseline_<metric>``; one that fails is skipped with a warning.
"""

from __future__ import annotations

import json
import math
import threading
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch

from lstmflow.config import CorpusSpec, PipelineSpec
from lstmflow.data.sequences import SequenceFeatures, SequenceSet, load_sequences
from lstmflow.data.timeseries import Features, WindowSet, load_features
from lstmflow.errors import DataError
from lstmflow.evaluation.baselines import (
    Baseline,
    classifier_baseline,
    ets_baseline,
    ngram_baseline,
    run_baseline,
)
from lstmflow.evaluation.metrics import (
    classification_metrics,
    confusion_matrix,
    forecast_metrics,
    log_loss,
    majority_baseline,
    mase_scale,
    seasonal_naive,
)
from lstmflow.evaluation.plots import plot_confusion_matrix, plot_forecast, plot_loss_curves
from lstmflow.models.blend import EQUAL_WEIGHT, PARTNER_FILE, Blend, blended, choose_weight
from lstmflow.models.ets import ETS_PARTNER_FILE
from lstmflow.models.lstm import LSTMNet, build_model
from lstmflow.models.ngram import NGRAM_PARTNER_FILE, NgramFit, NgramPartner, mixed
from lstmflow.models.ngram import choose_weight as choose_ngram_weight
from lstmflow.training.objectives import (
    LanguageModelObjective,
    classifier_input_size,
    resolve_batch_size,
    target_log_probabilities,
)


def load_trained(spec: PipelineSpec, features: Features, model_path: Path) -> LSTMNet:
    """Rebuild the network from its spec and load the trained weights, on CPU."""
    model = build_model(
        spec.model,
        features.n_features,
        features.horizon * features.n_targets,
        where=f"pipelines.{spec.name}.model",
        ensemble=spec.train.ensemble,
    )
    return _load_weights(model, model_path)


def predict(model: LSTMNet, windows: WindowSet, features: Features, batch_size: int = 256) -> np.ndarray:
    """Forecasts for every window, in original units: (N, horizon, targets)."""
    outputs = []
    with torch.no_grad():
        for x, _ in windows.batches(batch_size):
            outputs.append(model(x).reshape(len(x), features.horizon, features.n_targets).numpy())  # (B, H, K)
    scaled = np.concatenate(outputs)
    return features.preprocessing.decode(scaled, windows.history())


def evaluate_forecast(
    spec: PipelineSpec, features_dir: Path, model_path: Path, plot_dir: Path
) -> tuple[dict[str, float], list[Path]]:
    """Test metrics (mse, rmse, mae, smape, mase, their naive_* and AutoETS baseline_* twins) and the forecast
    and loss-curve plots. A forecast blended with its AutoETS (``train.blend_baseline``) is scored as served, the
    average of the two, with the network alone as ``network_<metric>`` and its weight as ``blend_weight``; the ETS
    parameters are saved beside the weights for the bundle."""
    features = load_features(features_dir)
    test = features.windows("test")
    if len(test) == 0:
        raise DataError(
            f"pipelines.{spec.name}.data.split.test: the test part holds no full window; "
            "raise split.test or lower horizon"
        )
    model = load_trained(spec, features, model_path)
    forecast = predict(model, test, features)
    actual = test.targets_original()
    naive = seasonal_naive(features.raw, test.origins, features.horizon, features.season)
    train_end = features.meta["split"]["train_end"]
    scale = mase_scale(features.raw[:train_end], features.season)
    plot_dir.mkdir(parents=True, exist_ok=True)
    strong = strong_baseline(spec, features_dir, plot_dir)
    baseline = None if strong is None else strong.forecast
    network_metrics: dict[str, float] = {}
    (model_path.parent / ETS_PARTNER_FILE).unlink(missing_ok=True)
    ets = strong.ets if strong is not None and spec.blends_baseline else None
    if ets is not None and baseline is not None:
        ets.save(model_path.parent)  # served beside the network, as it is scored here
        network = forecast_metrics(actual, forecast, naive, scale)
        network_metrics = {f"network_{key}": network[key] for key in ("mse", "rmse", "mae", "smape", "mase")}
        network_metrics["blend_weight"] = ets.weight
        forecast = ets.blend(forecast, baseline)
    metrics = {**forecast_metrics(actual, forecast, naive, scale, baseline), **network_metrics}

    plots = [
        plot_forecast(
            plot_dir / "forecast.png",
            features.meta["time"]["values"],
            actual,
            forecast,
            naive,
            title=f"{spec.name}: test forecasts vs actual",
            target_names=features.targets,
            baseline=baseline,
        ),
    ]
    plots += _loss_curves(model_path, plot_dir)
    return metrics, plots


#: Strong baselines begun by :func:`start_strong_baseline`, by (spec hash, features folder, record folder).
_STARTED: dict[tuple[str, str, str], Future[Baseline | None]] = {}


def start_strong_baseline(spec: PipelineSpec, features_dir: Path, record_dir: Path) -> None:
    """Fit the strong baseline of a forecast or classifier in a thread of this process, for :func:`strong_baseline`
    to take when the test part is scored: started once the training child runs, it costs the run no time of its own
    (its imports and fits on the core the child leaves, ETS forms and logistic regressions take seconds)."""
    key = _baseline_key(spec, features_dir, record_dir)
    if spec.task not in ("forecast", "classify") or key in _STARTED:
        return
    future: Future[Baseline | None] = Future()
    _STARTED[key] = future

    def fit() -> None:
        try:
            future.set_result(_fit_strong_baseline(spec, features_dir, record_dir))
        except BaseException as error:  # noqa: BLE001 - raised where the result is taken
            future.set_exception(error)

    threading.Thread(target=fit, name=f"lstmflow-baseline-{spec.name}", daemon=True).start()


def strong_baseline(spec: PipelineSpec, features_dir: Path, record_dir: Path) -> Baseline | None:
    """The run's strong baseline (None when it failed, with a warning): the one begun by
    :func:`start_strong_baseline`, else fitted now."""
    started = _STARTED.pop(_baseline_key(spec, features_dir, record_dir), None)
    return started.result() if started is not None else _fit_strong_baseline(spec, features_dir, record_dir)


def _baseline_key(spec: PipelineSpec, features_dir: Path, record_dir: Path) -> tuple[str, str, str]:
    return spec.spec_hash(), str(Path(features_dir).resolve()), str(Path(record_dir).resolve())


def _fit_strong_baseline(spec: PipelineSpec, features_dir: Path, record_dir: Path) -> Baseline | None:
    if spec.task == "classify":
        sequences = load_sequences(features_dir)
        return run_baseline(f"{spec.data.kind} baseline", lambda: classifier_baseline(spec, sequences), record_dir)
    features = load_features(features_dir)
    train_end, origins = features.meta["split"]["train_end"], features.windows("test").origins
    return run_baseline(
        "auto_ets",
        lambda: ets_baseline(features.raw, train_end, origins, features.horizon, features.season),
        record_dir,
    )


def predict_proba(model: LSTMNet, sequences: SequenceSet, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, classes) float64, row i for sample i of ``sequences`` (the order of its ``labels``).

    Batches come sorted by length (bucketing), so each batch's rows are put back at their samples' places. The
    softmax is applied to :meth:`LSTMNet.logits`, so the rows are probabilities whether or not the spec ends in
    ``activation: softmax``.
    """
    if len(sequences) == 0:
        raise ValueError("no sequences to predict: the set is empty")
    order = sequences.batch_indices(batch_size)
    outputs = []
    with torch.no_grad():
        for batch in sequences.batches(batch_size):
            logits = model.logits(batch.x, batch.lengths)  # (B, C)
            outputs.append(torch.softmax(logits.double(), dim=-1).numpy())
    batched = np.concatenate(outputs)  # rows in batch order
    probabilities = np.empty_like(batched)
    probabilities[np.concatenate(order)] = batched
    return probabilities


def evaluate_classifier(
    spec: PipelineSpec, features_dir: Path, model_path: Path, plot_dir: Path
) -> tuple[dict[str, float], list[Path]]:
    """Test accuracy, macro-F1, per-class precision and recall and log-loss, beside the majority-class baseline
    (``majority_accuracy``, ``majority_macro_f1``) and the strong one (``baseline_accuracy``,
    ``baseline_macro_f1``); the confusion-matrix and loss-curve plots. A classifier blended with its baseline
    (``train.blend_baseline``) is scored as served, the blend, with the network alone as ``network_accuracy`` and
    ``network_macro_f1`` and its weight as ``blend_weight``."""
    features = load_sequences(features_dir)
    test = features.part("test")
    if len(test) == 0:
        raise DataError(
            f"pipelines.{spec.name}.data.split.test: the test part of {features_dir} holds no sequences; "
            "raise split.test, or name some samples `test` in the split column"
        )
    model = build_model(
        spec.model,
        classifier_input_size(features),
        features.n_classes,
        where=f"pipelines.{spec.name}.model",
        needs=f"{features.n_classes} classes in the prepared data",
        ensemble=spec.train.ensemble,
    )
    _load_weights(model, model_path)
    network = predict_proba(model, test)
    strong = strong_baseline(spec, features_dir, plot_dir)
    probabilities, blend_metrics = network, {}
    if (chosen := _blend(spec, model, features, strong, model_path.parent)) is not None:
        weight, partner = chosen
        probabilities = blended(network, partner, weight)
        scores = classification_metrics(test.labels, network.argmax(axis=1), features.classes)
        blend_metrics = {"network_accuracy": scores["accuracy"], "network_macro_f1": scores["macro_f1"]}
        blend_metrics["blend_weight"] = weight
    predicted = probabilities.argmax(axis=1)
    metrics = {
        **classification_metrics(test.labels, predicted, features.classes),
        "log_loss": log_loss(test.labels, probabilities),
        **majority_baseline(features.part("train").labels, test.labels, features.n_classes),
        **blend_metrics,
    }
    metrics |= {} if strong is None else strong.prefixed()
    plots = [
        plot_confusion_matrix(
            plot_dir / "confusion_matrix.png",
            confusion_matrix(test.labels, predicted, features.n_classes),
            features.classes,
            title=f"{spec.name}: test confusion matrix",
        ),
        *_loss_curves(model_path, plot_dir, loss_label="cross-entropy (nats)"),
    ]
    return metrics, plots


def _blend(
    spec: PipelineSpec, model: LSTMNet, features: SequenceFeatures, strong: Baseline | None, folder: Path
) -> tuple[float, np.ndarray] | None:
    """(the network's weight, the regression's test probabilities) of the blend with the baseline's regression
    (``train.blend_baseline``), the weight chosen on the validation part or equal (sequences, audio); the blend is
    saved in ``folder`` beside the weights, for the bundle to serve. None, and no blend left in ``folder``, when the
    network is served alone."""
    (folder / PARTNER_FILE).unlink(missing_ok=True)
    val = features.part("val")
    partner = None if strong is None else strong.partner
    if not spec.blends_baseline or partner is None or (spec.weighs_blend_on_val and len(val) == 0):
        return None
    weight = EQUAL_WEIGHT
    if spec.weighs_blend_on_val:
        weight = choose_weight(predict_proba(model, val), partner.val, val.labels)
    Blend(partner.model, partner.codes, weight, features.n_classes).save(folder)
    return weight, partner.test


#: The prompt of the sample text logged with a language model: the start of the test part, this many characters.
SAMPLE_PROMPT_CHARACTERS = 80
SAMPLE_TOKENS = 400


def evaluate_language_model(
    spec: PipelineSpec, features_dir: Path, model_path: Path, plot_dir: Path
) -> tuple[dict[str, float], list[Path]]:
    """Test cross-entropy per token (nats), perplexity and, for character models, bits per character, each beside
    the unigram baseline's (``unigram_*``, add-one smoothed training frequencies, on the same tokens) and the
    Kneser-Ney n-gram's (``baseline_*``). A network interpolated with that n-gram (``train.blend_baseline``) is
    scored as served, the network alone as ``network_*``; the loss-curve plot and ``sample.txt``, text the model
    wrote after the start of the test part."""
    from lstmflow.data.corpus import load_corpus, split_corpus
    from lstmflow.serving.generate import generate

    features = load_corpus(features_dir)
    objective = LanguageModelObjective(spec, features)
    model = _load_weights(
        build_model(
            spec.model,
            features.vocab_size,
            features.vocab_size,
            where=f"pipelines.{spec.name}.model",
            per_step=True,
            ensemble=spec.train.ensemble,
        ),
        model_path,
    )
    batch_size = resolve_batch_size(spec, objective)
    streams = {part: features.stream(part).layout(objective.rows(part, batch_size)) for part in ("val", "test")}
    plot_dir.mkdir(parents=True, exist_ok=True)
    strong = run_baseline(
        "kneser_ney",
        lambda: ngram_baseline(features.stream("train").ids, streams["val"], streams["test"], features.vocab_size),
        plot_dir,
    )
    probabilities = target_log_probabilities(model, objective, "test", batch_size, "cpu").double().exp().numpy()
    metrics: dict[str, float] = {}
    partner = None
    (model_path.parent / NGRAM_PARTNER_FILE).unlink(missing_ok=True)  # served alone unless mixed below
    fit = strong.ngram if strong is not None and spec.blends_baseline else None
    if fit is not None:
        partner = _interpolation(model, objective, batch_size, fit, model_path.parent)
        metrics = {"network_cross_entropy": float(-np.log(probabilities).mean()), "blend_weight": partner.weight}
        probabilities = mixed(probabilities, fit.test, partner.weight)
    counts = np.asarray(features.meta["unigram_counts"], dtype=np.float64) + 1.0  # add-one: no token impossible
    metrics |= {
        "cross_entropy": float(-np.log(probabilities).mean()),
        "unigram_cross_entropy": float(-np.log(counts[streams["test"][:, 1:]] / counts.sum()).mean()),
    }
    metrics |= {} if strong is None else strong.prefixed()
    for prefix in ("", "unigram_", "baseline_", "network_"):
        if f"{prefix}cross_entropy" not in metrics:
            continue
        metrics[f"{prefix}perplexity"] = math.exp(metrics[f"{prefix}cross_entropy"])
        if features.meta["tokenizer_kind"] == "char":
            metrics[f"{prefix}bits_per_character"] = metrics[f"{prefix}cross_entropy"] / math.log(2)

    assert isinstance(spec.data, CorpusSpec)  # the config gives task language_model corpus data only
    prompt = split_corpus(spec.data, f"pipelines.{spec.name}.data")["test"][:SAMPLE_PROMPT_CHARACTERS]
    sample = plot_dir / "sample.txt"
    written = generate(
        model, features.tokenizer, prompt, SAMPLE_TOKENS, temperature=0.8, seed=spec.train.seed, ngram=partner
    )
    sample.write_text(f"{prompt}{written}\n", encoding="utf-8")
    return metrics, [sample, *_loss_curves(model_path, plot_dir, loss_label="cross-entropy per token (nats)")]


def _interpolation(
    model: LSTMNet, objective: LanguageModelObjective, batch_size: int, fit: NgramFit, folder: Path
) -> NgramPartner:
    """The network's interpolation with the run's n-gram (``train.blend_baseline``), its weight chosen on the
    validation part, saved in ``folder`` beside the weights for the bundle."""
    network = target_log_probabilities(model, objective, "val", batch_size, "cpu").double().exp().numpy()
    partner = NgramPartner(fit.model, choose_ngram_weight(network, fit.val))
    partner.save(folder)
    return partner


def _load_weights(model: LSTMNet, model_path: Path) -> LSTMNet:
    """The trained state dict loaded on CPU; the model in eval mode (no dropout, batchnorm's running statistics)."""
    model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    return model.eval()


def _loss_curves(model_path: Path, plot_dir: Path, loss_label: str = "loss (scaled units)") -> list[Path]:
    """The loss-curve plot from the training history beside the model (``fit_result.json``), when there is one."""
    history_file = model_path.parent / "fit_result.json"
    if not history_file.exists():
        return []
    history = json.loads(history_file.read_text())["history"]
    return [plot_loss_curves(plot_dir / "loss_curves.png", history, loss_label)]
