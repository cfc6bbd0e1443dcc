"""Strong classical baselines, scored on the same split and protocol as the LSTM, so a run says plainly whether the
network earned its keep.

One method per kind of data, each from a well-kept library and quick on small data:

- forecasts: AutoETS (statsmodels' ``ETSModel``; the error, trend, damping and seasonal forms chosen by AIC, as
  ``forecast::ets`` does) fitted on the training part, then run with those fixed parameters over the rest of the
  series, so every test origin is forecast from the actual history before it, without refitting, in original
  units. statsmodels rather than statsforecast: it is a dependency already, and statsforecast would add numba and
  its compile time to every run;
- sequences: logistic regression on MiniRocket features (:mod:`lstmflow.models.minirocket`), fitted on training
  and validation together, the regression a sequence classifier is served blended with;
- images read by rows: ``RidgeClassifierCV`` on per-channel summaries plus every channel resampled to a fixed
  length (z-normalised per sequence), and 1-NN Euclidean on the resampled shapes; the one more accurate on the
  validation part is kept (on digits read by rows 1-NN was ahead, and both ahead of MiniRocket's rows);
- texts: TF-IDF of word 1–2 and character 2–5 grams (sublinear tf) + logistic regression, on the raw texts,
  fitted again on training and validation once the validation part has chosen its strength;
- audio: logistic regression on MiniRocket features of the features the LSTM sees, as for sequences;
- video: logistic regression on each pixel's mean and standard deviation over the clip;
- language models: an interpolated Kneser-Ney n-gram (:mod:`lstmflow.models.ngram`), its order chosen on the
  validation part, beside the unigram evaluation keeps.

Regularisation strengths are chosen on the validation part when there is one (the LSTM's checkpoint is chosen
there too), so the baseline never sees the test part before it is scored. A baseline that fails must not fail the
run: :func:`run_baseline` turns any error into a warning and no baseline metrics.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lstmflow.evaluation.metrics import classification_metrics
from lstmflow.models.blend import Partner, class_probabilities, mean_and_spread
from lstmflow.models.ets import EtsForm, EtsPartner, ets_model
from lstmflow.models.ngram import KneserNey, NgramFit

if TYPE_CHECKING:
    from lstmflow.config import PipelineSpec
    from lstmflow.data.sequences import SequenceFeatures, SequenceSet

#: The tag (or param) that names the run's strong baseline, e.g. ``lstmflow.baseline: auto_ets``.
BASELINE_TAG = "lstmflow.baseline"
#: What :func:`run_baseline` writes beside the plots: the method that ran, or why it was skipped.
RECORD_FILE = "baseline.json"
#: The prefix of the baseline's metrics in what evaluation returns; logged as ``test_baseline_<metric>``.
PREFIX = "baseline_"

#: Seasonal ETS only up to this period, as ``forecast::ets`` (Hyndman): longer seasons have too many seasonal
#: states for a reliable fit, and the non-seasonal forms are still fitted.
MAX_ETS_SEASON = 24
#: At most this many training rows (the latest) fit the ETS parameters: enough for its few parameters, and it keeps
#: the fit to about a second on long series.
MAX_ETS_FIT_ROWS = 5_000
#: Every channel is resampled to at most this many steps for the ridge classifier.
MAX_RESAMPLED_STEPS = 128
#: Training texts from which TF-IDF keeps only n-grams found in two texts or more.
MIN_DF_FROM_TEXTS = 500
#: Training characters up to which the text baseline adds character n-grams to its words: their matrix holds about
#: four entries per character, and logistic regression's time grows with it (a million characters took about half a
#: minute on 2 cores, four times words alone); a set larger than that rarely needs them to be strong.
CHARACTER_NGRAMS_UP_TO = 1_000_000
#: Inverse regularisation strengths tried for logistic regression, in increasing order (each warm-starts the
#: next), the best on the validation part kept.
LOGISTIC_C = (0.1, 1.0, 10.0, 100.0)
#: The inverse regularisation strength of the regression on standardised MiniRocket features: a fixed one, as
#: small sets leave no validation part to choose on (0.01 to 0.1 scored alike on the quality suite's UCR sets).
MINIROCKET_C = 0.1
#: At most this many training and validation series (a stratified, seeded sample) fit the MiniRocket regression: its
#: ten thousand features per series would take gigabytes beyond that, and minutes, for little more accuracy.
MAX_MINIROCKET_SERIES = 10_000
#: 1-NN is tried only while train × (val + test) distances stay below this (a second or two), else ridge alone.
MAX_NN_PAIRS = 50_000_000
#: Ridge strengths searched by efficient leave-one-out inside ``RidgeClassifierCV``.
RIDGE_ALPHAS = np.logspace(-3, 3, 10)


class BaselineSkipped(UserWarning):
    """A strong baseline failed and was left out; the run goes on without it."""


@dataclass(frozen=True)
class Baseline:
    """A strong baseline's test metrics (named like the model's, without prefix) and how it was made."""

    method: str
    metrics: dict[str, float]
    #: For forecasts, the (N, horizon, k) forecasts in original units (scored and plotted with the model's); None
    #: otherwise.
    forecast: np.ndarray | None = None
    #: For texts, audio and video, the fitted regression a network may be blended with; None otherwise.
    partner: Partner | None = None
    #: For forecasts, the fitted ETS a network may be blended with; None otherwise.
    ets: EtsPartner | None = None
    #: For language models, the fitted n-gram a network may be interpolated with; None otherwise.
    ngram: NgramFit | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def prefixed(self) -> dict[str, float]:
        """The metrics as evaluation returns them: ``baseline_<metric>``."""
        return {f"{PREFIX}{key}": value for key, value in self.metrics.items()}


def run_baseline(method: str, compute: Callable[[], Baseline], record_dir: Path) -> Baseline | None:
    """``compute()``, or None with a :class:`BaselineSkipped` warning naming the method and the error; either way
    ``record_dir/baseline.json`` says which method ran (for the run's ``lstmflow.baseline`` tag) or why it did not."""
    started = time.perf_counter()
    try:
        baseline = compute()
    except Exception as error:  # noqa: BLE001 - a baseline must never fail the run it is only compared with
        reason = f"{type(error).__name__}: {error}"
        warnings.warn(f"strong baseline {method} skipped: {reason}", BaselineSkipped, stacklevel=2)
        _write_record(record_dir, {"method": method, "skipped": reason})
        return None
    seconds = round(time.perf_counter() - started, 3)
    _write_record(record_dir, {"method": baseline.method, "seconds": seconds, **baseline.details})
    return baseline


def read_record(record_dir: Path) -> dict[str, Any] | None:
    """What :func:`run_baseline` recorded in ``record_dir``: ``method`` and either ``seconds`` (and details such as
    the ETS forms) or ``skipped`` (the reason); None when no baseline ran there."""
    path = Path(record_dir) / RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _write_record(record_dir: Path, record: dict[str, Any]) -> None:
    Path(record_dir).mkdir(parents=True, exist_ok=True)
    (Path(record_dir) / RECORD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------------ forecasts


def ets_forecasts(
    raw: np.ndarray, train_end: int, origins: np.ndarray, horizon: int, season: int
) -> tuple[np.ndarray, EtsPartner]:
    """AutoETS forecasts (N, horizon, k) in original units from each origin, and the fitted ETS per target.

    ``raw`` is the whole series (T, k); the parameters are fitted on ``raw[:train_end]`` only. Origin ``t0``'s
    forecast uses rows before ``t0`` alone (statsmodels' dynamic prediction from ``t0``), as the LSTM's does.
    """
    raw = np.asarray(raw, dtype=np.float64)
    origins = np.asarray(origins, dtype=np.intp)
    start = max(0, train_end - MAX_ETS_FIT_ROWS)
    if len(origins) and origins.min() <= start:
        raise ValueError(f"the first test origin {origins.min()} lies inside the ETS fitting rows from {start}")
    fits = [_auto_ets(raw[start:train_end, j], season) for j in range(raw.shape[1])]
    partner = EtsPartner(
        forms=[form for _, form in fits],
        params=[np.asarray(fitted.params) for fitted, _ in fits],
        heuristic=[fitted.model.initialization_method == "heuristic" for fitted, _ in fits],
        season=season,
    )
    forecasts = partner.forecasts(raw[start:], origins - start, horizon)
    if not np.isfinite(forecasts).all():
        raise ValueError(f"ETS forms {partner.form_names} gave non-finite forecasts")
    return forecasts, partner


def ets_baseline(raw: np.ndarray, train_end: int, origins: np.ndarray, horizon: int, season: int) -> Baseline:
    """The AutoETS baseline of a forecast: its forecasts (scored with the model's by ``forecast_metrics``), forms
    and fitted parameters (for a blend)."""
    forecasts, partner = ets_forecasts(raw, train_end, origins, horizon, season)
    return Baseline("auto_ets", {}, forecast=forecasts, ets=partner, details={"forms": partner.form_names})


def _ets_forms(train: np.ndarray, season: int) -> list[EtsForm]:
    """The forms worth fitting: multiplicative ones only on positive data, seasonal ones only with two full seasons
    of a period up to :data:`MAX_ETS_SEASON`; multiplicative seasonality with multiplicative errors (stable)."""
    positive = bool((train > 0).all())
    seasonal: list[str | None] = [None]
    if 1 < season <= MAX_ETS_SEASON and len(train) >= 2 * season + 2:
        seasonal += ["add", "mul"] if positive else ["add"]
    trends: list[tuple[str | None, bool]] = [(None, False), ("add", False), ("add", True)]
    forms: list[EtsForm] = []
    for seasonal_form in seasonal:
        for trend, damped in trends:
            forms.append(("mul" if seasonal_form == "mul" else "add", trend, damped, seasonal_form))
            if positive and seasonal_form != "mul":
                forms.append(("mul", trend, damped, seasonal_form))
    return forms


def _auto_ets(train: np.ndarray, season: int) -> tuple[Any, EtsForm]:
    """The fitted results and form of the lowest-AIC ETS model on ``train``; forms that fail to fit are passed over."""
    if len(train) < 4:
        raise ValueError(f"ETS needs at least 4 training rows, got {len(train)}")
    best: tuple[float, Any, EtsForm] | None = None
    for form in _ets_forms(train, season):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence chatter of forms that lose anyway
                fitted = ets_model(train, form, season).fit(disp=False)
        except (ValueError, np.linalg.LinAlgError):
            continue
        if np.isfinite(fitted.aic) and (best is None or fitted.aic < best[0]):
            best = (float(fitted.aic), fitted, form)
    if best is None:
        raise ValueError("no ETS form could be fitted to the training part")
    return best[1], best[2]


# ------------------------------------------------------------------------------------------------ classifiers


def classifier_baseline(spec: PipelineSpec, features: SequenceFeatures) -> Baseline:
    """The strong baseline of a classifier, by data kind, scored on the test part (accuracy and macro-F1); for
    texts, audio and video with the fitted regression a network may be blended with (:mod:`lstmflow.models.blend`)."""
    kind = spec.data.kind
    train, val, test = (features.part(name) for name in ("train", "val", "test"))
    labels = (train.labels, val.labels)
    partner = None
    if kind == "text":
        partner = _logistic_partner(_text_vectorizer, _texts_by_part(spec, features), labels, features.n_classes)
        method, predicted = "tfidf_logistic", partner.test.argmax(axis=1)
    elif kind in ("sequences", "audio", "video"):
        sequences = [[part.sequence(i) for i in range(len(part))] for part in (train, val, test)]
        if kind == "video":  # summaries over time: each pixel's level and spread
            partner = _logistic_partner(_summary_scaler, sequences, labels, features.n_classes)
            method = "logistic_mean_std"
        else:
            partner = _minirocket_partner(sequences, labels, features.n_classes)
            method = "minirocket_logistic"
        predicted = partner.test.argmax(axis=1)
    else:
        length = min(int(np.max(np.diff(features.offsets))), MAX_RESAMPLED_STEPS)
        inputs = [_shape_features(part, length, features.n_features) for part in (train, val, test)]
        method, predicted = _shape_classifier(inputs, train, val, features.n_features)
    scores = classification_metrics(test.labels, predicted, features.classes)
    return Baseline(method, {key: scores[key] for key in ("accuracy", "macro_f1")}, partner=partner)


def _shape_classifier(
    inputs: list[np.ndarray], train: SequenceSet, val: SequenceSet, n_features: int
) -> tuple[str, np.ndarray]:
    """(method, test predictions) of ridge on all the shape features or 1-NN on the resampled shapes alone, the
    one more accurate on the validation part (ridge on a tie, without a validation part, or when 1-NN is too
    costly)."""
    from sklearn.neighbors import KNeighborsClassifier

    train_x, val_x, test_x = inputs
    ridge_val, ridge_test = np.split(_ridge(train_x, train.labels, np.concatenate([val_x, test_x])), [len(val_x)])
    if not len(val_x) or len(train_x) * (len(val_x) + len(test_x)) > MAX_NN_PAIRS:
        return "ridge_resampled", ridge_test
    shape = slice(SUMMARIES * n_features, None)  # the columns after the per-channel summaries
    nearest = KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(train_x[:, shape], train.labels)
    nn_val, nn_test = np.split(nearest.predict(np.concatenate([val_x, test_x])[:, shape]), [len(val_x)])
    if np.mean(nn_val == val.labels) > np.mean(ridge_val == val.labels):
        return "nn1_euclidean", np.asarray(nn_test, dtype=np.int64)
    return "ridge_resampled", ridge_test


#: Summary features per channel at the start of each row of :func:`_shape_features`.
SUMMARIES = 5


def _shape_features(part: SequenceSet, length: int, n_features: int) -> np.ndarray:
    """(N, F × (SUMMARIES + length)): per channel its mean, std, min, max and length, then the channel resampled to
    ``length`` steps by linear interpolation and z-normalised (its shape, whatever its level and scale)."""
    grid = np.linspace(0.0, 1.0, length)
    rows = np.empty((len(part), n_features * (SUMMARIES + length)))
    for i in range(len(part)):
        steps = np.asarray(part.sequence(i), dtype=np.float64)  # (T, F)
        where = np.linspace(0.0, 1.0, len(steps))
        resampled = np.stack([np.interp(grid, where, channel) for channel in steps.T])  # (F, length)
        spread = resampled.std(axis=1, keepdims=True)
        shape = (resampled - resampled.mean(axis=1, keepdims=True)) / np.where(spread > 0, spread, 1.0)
        summary = np.stack(
            [steps.mean(0), steps.std(0), steps.min(0), steps.max(0), np.full(steps.shape[1], np.log(len(steps)))]
        )
        rows[i] = np.concatenate([summary.ravel(), shape.ravel()])
    return rows


def _ridge(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Test predictions of a standardised ``RidgeClassifierCV`` fitted on the training part; its alpha is chosen by
    efficient leave-one-out on that part, so the validation part is not needed."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=RIDGE_ALPHAS))
    model.fit(train, train_labels)
    return np.asarray(model.predict(test), dtype=np.int64)


def _choose_logistic(train: Any, val: Any, labels: tuple[np.ndarray, np.ndarray]) -> Any:
    """Logistic regression fitted on train, its C the best on val (the smallest on a tie, or C = 1 without a
    validation part). Each larger C starts from the previous solution (warm start): far fewer iterations than
    fitting each from scratch."""
    from sklearn.linear_model import LogisticRegression

    train_labels, val_labels = labels
    model = LogisticRegression(max_iter=2000, warm_start=True)
    best: tuple[float, Any] | None = None
    for c in LOGISTIC_C if len(val_labels) else (1.0,):
        model.set_params(C=c).fit(train, train_labels)
        score = float(np.mean(model.predict(val) == val_labels)) if len(val_labels) else 0.0
        if best is None or score > best[0]:
            best = (score, copy.deepcopy(model))
    assert best is not None
    return best[1]


def _logistic_partner(
    featurizer: Callable[[list[Any]], Any],
    inputs: list[list[Any]],
    labels: tuple[np.ndarray, np.ndarray],
    n_classes: int,
) -> Partner:
    """Logistic regression on ``featurizer(training inputs)``'s features, its C chosen on the validation part from a
    fit on the training part, then fitted again with that C on training and validation together (what a competent
    first try does, and what the blend serves)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    featurize = featurizer(inputs[0])
    train = featurize.fit_transform(inputs[0])
    chosen = _choose_logistic(train, featurize.transform(inputs[1]) if len(inputs[1]) else None, labels)
    val = np.zeros((0, n_classes))
    if len(inputs[1]):
        val = class_probabilities(make_pipeline(featurize, chosen), chosen.classes_, inputs[1], n_classes)
    seen = [*inputs[0], *inputs[1]]
    refit = make_pipeline(featurizer(seen), LogisticRegression(C=chosen.C, max_iter=2000))
    refit.fit(seen, np.concatenate(labels))
    codes = np.asarray(refit.classes_)
    return Partner(refit, codes, val, class_probabilities(refit, codes, inputs[2], n_classes))


def _minirocket_partner(
    sequences: list[list[np.ndarray]], labels: tuple[np.ndarray, np.ndarray], n_classes: int
) -> Partner:
    """Logistic regression on standardised MiniRocket features of the training and validation sequences together
    (at most :data:`MAX_MINIROCKET_SERIES`), at :data:`MINIROCKET_C`. No validation probabilities: a sequence
    classifier's blend takes equal weights."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.utils import resample

    from lstmflow.models.minirocket import MiniRocket

    seen, seen_labels = [*sequences[0], *sequences[1]], np.concatenate(labels)
    if len(seen) > MAX_MINIROCKET_SERIES:
        kept = resample(
            np.arange(len(seen)), n_samples=MAX_MINIROCKET_SERIES, replace=False, stratify=seen_labels, random_state=0
        )
        seen, seen_labels = [seen[i] for i in kept], seen_labels[kept]
    model = make_pipeline(MiniRocket(), StandardScaler(), LogisticRegression(C=MINIROCKET_C, max_iter=2000))
    model.fit(seen, seen_labels)
    codes = np.asarray(model.classes_)
    return Partner(model, codes, np.zeros((0, n_classes)), class_probabilities(model, codes, sequences[2], n_classes))


def _summary_scaler(train: list[np.ndarray]) -> Any:
    """The unfitted features of the video regression: each clip's per-pixel mean and spread over time
    (:func:`~lstmflow.models.blend.mean_and_spread`), standardised."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    return make_pipeline(FunctionTransformer(mean_and_spread), StandardScaler())


def _text_vectorizer(train_texts: list[str]) -> Any:
    """The unfitted TF-IDF units for these training texts: word 1–2 grams and, up to
    :data:`CHARACTER_NGRAMS_UP_TO` training characters, character 2–5 grams within words; sublinear tf. Character
    n-grams catch what words miss in small sets (inflections, spellings, another language's letters): on the quality
    suite's text sets they were worth up to 15 points over words alone. From :data:`MIN_DF_FROM_TEXTS` texts on,
    an n-gram must occur in two of them: one seen once is mostly noise there, and dropping those shrinks the
    vocabulary (and the time) several-fold."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    min_df = 2 if len(train_texts) >= MIN_DF_FROM_TEXTS else 1
    units = [("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=min_df))]
    if sum(map(len, train_texts)) <= CHARACTER_NGRAMS_UP_TO:
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=min_df)
        units.append(("characters", chars))
    return FeatureUnion(units)


def _texts_by_part(spec: PipelineSpec, features: SequenceFeatures) -> list[list[str]]:
    """The raw texts of the train, val and test parts, read again in the order the data stage stored them (the
    parts and labels are the stored ones, so the split is the LSTM's exactly)."""
    from lstmflow.config import TextSpec
    from lstmflow.data.text import read_texts

    assert isinstance(spec.data, TextSpec)
    table = read_texts(spec.data, f"pipelines.{spec.name}.data")
    stored = [features.classes[code] for code in features.labels]
    if len(table.texts) != len(stored) or list(table.labels) != stored:
        raise ValueError(
            f"the texts of {spec.data.path} ({len(table.texts)}) no longer match the prepared ones ({len(stored)}): "
            "prepare the data again"
        )
    return [[text for text, part in zip(table.texts, features.parts) if part == code] for code in range(3)]


# ------------------------------------------------------------------------------------------------ language models


def ngram_baseline(
    train_ids: np.ndarray, val_streams: np.ndarray, test_streams: np.ndarray, vocab_size: int
) -> Baseline:
    """Cross-entropy per token (nats) of the interpolated Kneser-Ney n-gram of the training ids, its order chosen
    on ``val_streams``, on the tokens the model was scored on: every token of ``test_streams`` (rows, L) but each
    row's first, given the tokens before it in its row. The fitted n-gram and its validation and test probabilities
    travel as ``ngram``, for the blend."""
    ngram = KneserNey.fit(train_ids, vocab_size, val_streams)
    test = ngram.target_probabilities(test_streams)
    return Baseline(
        f"kneser_ney_{ngram.order}gram",
        {"cross_entropy": float(-np.log(test).mean())},
        ngram=NgramFit(ngram, ngram.target_probabilities(val_streams), test),
        details={"order": ngram.order},
    )
