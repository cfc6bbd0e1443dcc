"""Both versions of a model scored on the same test data, each through its own predictor, and the paired test.

The gate (:mod:`lstmflow.ops.gate`) decides on a :class:`Comparison`; this module only scores. Forecasts are compared
at the same origins (Diebold-Mariano), classes on the same raw samples rebuilt as requests (McNemar), language models
by cross-entropy per character (tokenizers may differ; no test), translators on the same test sources (a sign test
on each sentence's chrF), transcribers on the same test clips (a sign test on each clip's character error rate).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from lstmflow.config import PipelineSpec
from lstmflow.errors import DataError, LstmflowError
from lstmflow.evaluation.significance import Significance, diebold_mariano, mcnemar, sign_test

if TYPE_CHECKING:
    from lstmflow.config import CorpusSpec, SpeechSpec, TimeSeriesDataSpec

#: Samples per request when a classifier scores the test part: bounds the padded batch in memory.
REQUEST_SAMPLES = 512


class NotComparable(LstmflowError):
    """A model whose forecasts or answers do not fit the current test data (other targets, a shorter horizon)."""


@dataclass(frozen=True)
class Comparison:
    """Both versions' values of the deciding metric on the same test data, and the paired test (None for ``none``)."""

    metric: str
    direction: str
    challenger: float
    champion: float
    n: int
    test: Significance | None


class _ForecastData:
    """The test windows of the current series: origins, truth in original units, the series' raw rows."""

    def __init__(self, spec: PipelineSpec, features_dir: Path) -> None:
        from lstmflow.data.timeseries import load_features, read_series
        from lstmflow.evaluation.metrics import mase_scale

        where = f"pipelines.{spec.name}.data"
        features = load_features(features_dir)
        windows = features.windows("test")
        if len(windows) == 0:
            raise DataError(f"{where}.split.test: the test part holds no full window; the gate has nothing to compare")
        self.frame = read_series(cast("TimeSeriesDataSpec", spec.data), where)  # a forecast reads a series
        targets = self.frame[features.targets].to_numpy(np.float64)
        if len(self.frame) != features.meta["rows"] or not np.array_equal(targets, features.raw):
            raise DataError(
                f"{where}: the raw series no longer matches the features prepared in {features_dir}; "
                "prepare the data again"
            )
        self.origins = windows.origins
        self.truth = windows.targets_original()  # (N, H, K)
        self.targets, self.horizon, self.n = features.targets, features.horizon, len(windows)
        self.scale = mase_scale(features.raw[: features.meta["split"]["train_end"]], features.season)

    def outputs(self, predictor: Any) -> np.ndarray:
        from lstmflow.serving.predictors import Forecaster

        if not isinstance(predictor, Forecaster):
            raise NotComparable(f"it is a {type(predictor).__name__}, not a forecaster")
        if predictor.targets != self.targets:
            raise NotComparable(f"it forecasts {predictor.targets}, the data's targets are {self.targets}")
        if predictor.horizon < self.horizon:
            raise NotComparable(f"it forecasts {predictor.horizon} steps, the test windows have {self.horizon}")
        return predictor.forecast_at(self.frame, self.origins)[:, : self.horizon]  # (N, H, K)

    def value(self, metric: str, forecast: np.ndarray) -> float:
        from lstmflow.evaluation import metrics

        if metric == "mase":
            return metrics.mae(self.truth, forecast) / self.scale if self.scale > 0 else math.nan
        return {"mae": metrics.mae, "rmse": metrics.rmse, "smape": metrics.smape}[metric](self.truth, forecast)

    def losses(self, metric: str, forecast: np.ndarray) -> np.ndarray:
        """One loss per test window: absolute error (mae, mase), squared error (rmse) or sMAPE, averaged over it."""
        from lstmflow.evaluation.metrics import smape

        if metric == "smape":
            return np.array([smape(truth, window) for truth, window in zip(self.truth, forecast)])
        errors = forecast - self.truth
        return (errors**2 if metric == "rmse" else np.abs(errors)).mean(axis=(1, 2))

    def paired_test(self, metric: str, challenger: np.ndarray, champion: np.ndarray) -> Significance:
        return diebold_mariano(self.losses(metric, champion), self.losses(metric, challenger), self.horizon)


class _ClassifyData:
    """The test samples as raw requests, with their true labels."""

    def __init__(self, spec: PipelineSpec, features_dir: Path) -> None:
        from lstmflow.serving.predictors import Classifier

        self.requests = Classifier.requests(spec, features_dir, "test")
        if not self.requests.keys:
            raise DataError(
                f"pipelines.{spec.name}.data.split.test: the test part holds no samples; "
                "the gate has nothing to compare"
            )
        self.truth = np.array(self.requests.labels, dtype=object)
        self.n = len(self.truth)

    def outputs(self, predictor: Any) -> tuple[np.ndarray, np.ndarray]:
        """(predicted label per sample, probability of its true label per sample); 0 for a class the model lacks."""
        import pandas as pd

        from lstmflow.serving.predictors import Classifier

        if not isinstance(predictor, Classifier):
            raise NotComparable(f"it is a {type(predictor).__name__}, not a classifier")
        answers = []
        for keys, rows in self.requests.chunks(REQUEST_SAMPLES):
            answer = predictor.predict(rows).set_index("key")
            missing = [key for key in keys if key not in answer.index]
            if missing:
                raise NotComparable(f"it answered no prediction for sample(s) {missing[:5]}")
            answers.append(answer.loc[keys])
        answer = pd.concat(answers)
        probabilities = answer[[f"prob_{label}" for label in predictor.classes]].to_numpy(np.float64)  # (N, C)
        column = {label: i for i, label in enumerate(predictor.classes)}
        of_truth = np.array(
            [probabilities[row, column[label]] if label in column else 0.0 for row, label in enumerate(self.truth)]
        )
        return answer["label"].astype(str).to_numpy(dtype=object), of_truth

    def value(self, metric: str, outputs: tuple[np.ndarray, np.ndarray]) -> float:
        from lstmflow.evaluation.metrics import classification_metrics, log_loss

        predicted, of_truth = outputs
        if metric == "log_loss":  # the true label's probability as a one-column table
            return log_loss(np.zeros(self.n, dtype=np.int64), of_truth[:, None])
        classes = sorted(set(self.truth) | set(predicted))
        index = {label: i for i, label in enumerate(classes)}
        codes = [np.array([index[label] for label in labels]) for labels in (self.truth, predicted)]
        return classification_metrics(codes[0], codes[1], classes)[metric]

    def paired_test(
        self, metric: str, challenger: tuple[np.ndarray, ...], champion: tuple[np.ndarray, ...]
    ) -> Significance:
        """McNemar's on right/wrong, whatever the metric: the paired evidence a classifier's answers give."""
        return mcnemar(challenger[0] == self.truth, champion[0] == self.truth)


class _CorpusData:
    """The test text, scored per character so that models with different tokenizers compare."""

    def __init__(self, spec: PipelineSpec, features_dir: Path) -> None:
        from lstmflow.data.corpus import split_corpus

        self.text = split_corpus(cast("CorpusSpec", spec.data), f"pipelines.{spec.name}.data")["test"]
        self.n = len(self.text)

    def outputs(self, predictor: Any) -> float:
        """Nats per character of the test text."""
        from lstmflow.serving.predictors import Generator

        if not isinstance(predictor, Generator):
            raise NotComparable(f"it is a {type(predictor).__name__}, not a language model")
        nats, _ = predictor.score_text(self.text)
        return nats / self.n

    def value(self, metric: str, nats_per_character: float) -> float:
        """cross_entropy in nats per character, perplexity per character, or bits per character."""
        if metric == "perplexity":
            return math.exp(nats_per_character)
        return nats_per_character / math.log(2) if metric == "bits_per_character" else nats_per_character

    def paired_test(self, metric: str, challenger: float, champion: float) -> Significance:
        raise ValueError("a language model has no significance test; its promote.test is 'none'")


class _PairsData:
    """The test pairs: each model translates the raw source texts, scored against the reference translations."""

    def __init__(self, spec: PipelineSpec, features_dir: Path) -> None:
        from lstmflow.data.pairs import load_pairs

        test = load_pairs(features_dir).part("test")
        if len(test) == 0:
            raise DataError(f"pipelines.{spec.name}.data.split.test: the test part holds no pairs; nothing to compare")
        self.sources, self.references, self.n = test.source_texts, test.target_texts, len(test)

    def outputs(self, predictor: Any) -> list[str]:
        from lstmflow.serving.predictors import Translator

        if not isinstance(predictor, Translator):
            raise NotComparable(f"it is a {type(predictor).__name__}, not a translator")
        return predictor.translate(self.sources)

    def value(self, metric: str, translations: list[str]) -> float:
        from lstmflow.evaluation.translation import translation_scores

        return translation_scores(translations, self.references)[metric]

    def paired_test(self, metric: str, challenger: list[str], champion: list[str]) -> Significance:
        """The sign test on each sentence's chrF, whatever the corpus metric: BLEU has no sentence-level form."""
        from lstmflow.evaluation.translation import sentence_chrf

        return sign_test(sentence_chrf(challenger, self.references), sentence_chrf(champion, self.references))


class _SpeechData:
    """The test clips as files (each model computes its own features from them), with their transcripts."""

    def __init__(self, spec: PipelineSpec, features_dir: Path) -> None:
        from lstmflow.data.speech import load_speech, read_speech
        from lstmflow.serving.files import recorded_roots

        where = f"pipelines.{spec.name}.data"
        test = load_speech(features_dir).part("test")
        if len(test) == 0:
            raise DataError(f"{where}.split: the test part holds no clips; the gate has nothing to compare")
        paths = {clip.name: clip.path for clip in read_speech(cast("SpeechSpec", spec.data), where).clips}
        gone = [name for name in test.names if name not in paths]
        if gone:
            raise DataError(f"{where}: test clips {gone[:3]} are no longer in the raw data; prepare the data again")
        self.paths, self.truth, self.n = [str(paths[name]) for name in test.names], test.texts, len(test)
        self.roots = recorded_roots(spec.data)

    def outputs(self, predictor: Any) -> list[str]:
        import pandas as pd

        from lstmflow.serving.predictors import Transcriber

        if not isinstance(predictor, Transcriber):
            raise NotComparable(f"it is a {type(predictor).__name__}, not a transcriber")
        predictor.allow_files_under(*self.roots)  # the current data's clips, wherever its own data lay
        return predictor.transcribe(pd.DataFrame({"path": self.paths}))

    def value(self, metric: str, transcripts: list[str]) -> float:
        from lstmflow.evaluation.transcription import error_rates

        return error_rates(transcripts, self.truth)[metric]

    def paired_test(self, metric: str, challenger: list[str], champion: list[str]) -> Significance:
        """The sign test on each clip's character error rate (lower is better, so the scores are negated)."""
        from lstmflow.evaluation.transcription import utterance_cer

        return sign_test(-utterance_cer(challenger, self.truth), -utterance_cer(champion, self.truth))


_TESTS: dict[str, Callable[[PipelineSpec, Path], Any]] = {
    "forecast": _ForecastData,
    "classify": _ClassifyData,
    "language_model": _CorpusData,
    "translate": _PairsData,
    "transcribe": _SpeechData,
}


def scoring_data(spec: PipelineSpec, features_dir: Path) -> Any:
    """The test part of ``spec``'s current data, ready to score any predictor on (``outputs(predictor)``)."""
    return _TESTS[spec.task](spec, Path(features_dir))


def compare(spec: PipelineSpec, features_dir: Path, challenger: Any, champion: Any) -> Comparison:
    """Score two predictors (see :mod:`lstmflow.serving.predictors`) on the test part of ``spec``'s current data.

    A predictor that does not fit the data raises NotComparable or its own BadRequest, naming why.
    """
    data = scoring_data(spec, features_dir)
    return compared(spec, data, data.outputs(challenger), data.outputs(champion))


def compared(spec: PipelineSpec, data: Any, ours: Any, theirs: Any) -> Comparison:
    rule = spec.promote
    metric, test = rule.resolved_metric(spec.task), rule.resolved_test(spec.task)
    return Comparison(
        metric, rule.resolved_direction(spec.task), data.value(metric, ours), data.value(metric, theirs), data.n,
        None if test == "none" else data.paired_test(metric, ours, theirs),
    )  # fmt: skip
