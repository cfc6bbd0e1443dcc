"""The retraining gate: a newly registered model version becomes the champion only when it is better on the same
test data, by the pipeline's ``promote`` rule; and promotion and rollback by hand.

Both versions are scored through their served predictors, each with its own preprocessing (scaler, tokenizer,
audio features, window), on the test part of the current data version, read from the raw data. So a champion
trained on an older data version is judged on exactly the samples the new version is judged on:

- forecasts: every test window of the current features, each model reading the rows before the window's origin;
  the paired per-window losses go to a one-sided Diebold–Mariano test with the Harvey–Leybourne–Newbold
  small-sample correction (h = the horizon, since windows one step apart share h - 1 forecast steps);
- classification: every test sample as a raw request; whether each model got it right goes to a one-sided
  McNemar test (exact binomial on the discordant pairs when they are fewer than :data:`MCNEMAR_EXACT_BELOW`,
  else chi-square with continuity correction);
- language models: the test text's cross-entropy per character (tokenizers may differ), no test.

The rule: with no champion, the new version is promoted; else it must be better in the metric's direction by at
least ``min_gain`` (relative to the champion's value) and, unless the test is ``none``, significantly so
(p < ``alpha``). A champion that cannot be scored on the current data (other targets, a shorter horizon, columns
the data no longer has) cannot serve it either: the new version is promoted and the reason says why.

The decision and its figures are tags ``lstmflow.gate.*`` on the new model version, and metrics ``gate_*`` on its
MLflow run. A version with a recorded decision is not judged again, so the gate is safe to run on every flow run.
"""

from __future__ import annotations

import getpass
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from lstmflow import tracking
from lstmflow.config import PipelineSpec, PromoteSpec
from lstmflow.errors import DataError, LstmflowError
from lstmflow.ops.steps import Prepared
from lstmflow.tracking import registry

#: McNemar's test is exact (binomial) below this many discordant pairs, chi-square with continuity correction above.
MCNEMAR_EXACT_BELOW = 25
#: Samples per request when a classifier scores the test part: bounds the padded batch in memory.
REQUEST_SAMPLES = 512
#: Prefix of the decision tags on a model version.
GATE_TAG = "lstmflow.gate."
#: The decision's fields, in the order the tags list them; numbers are read back as floats.
DECISION_FIELDS = (
    "decision", "alias", "champion_version", "metric", "direction", "challenger_value", "champion_value", "gain",
    "min_gain", "test", "statistic", "p_value", "alpha", "n", "reason", "decided_at",
)  # fmt: skip
_NUMBERS = {"challenger_value", "champion_value", "gain", "min_gain", "statistic", "p_value", "alpha"}


class NotComparable(LstmflowError):
    """A model whose forecasts or answers do not fit the current test data (other targets, a shorter horizon)."""


# --------------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Significance:
    """A one-sided test of "the challenger is better"; ``p_value`` small means it is."""

    name: str
    statistic: float
    p_value: float
    n: int
    detail: str


def mcnemar(challenger_correct: np.ndarray, champion_correct: np.ndarray) -> Significance:
    """McNemar's test on paired right/wrong answers, one-sided toward the challenger being right more often.

    Only discordant pairs count: ``b`` samples the challenger alone gets right, ``c`` the champion alone. Under the
    null each is a fair coin, so the exact p is P(X >= b) for X ~ Binomial(b + c, 1/2); from
    :data:`MCNEMAR_EXACT_BELOW` pairs on, the normal approximation with continuity correction (the chi-square
    statistic ``(|b - c| - 1)² / (b + c)``, halved to one side). The statistic reported is that chi-square.
    """
    from scipy import stats

    challenger = np.asarray(challenger_correct, dtype=bool)
    champion = np.asarray(champion_correct, dtype=bool)
    if challenger.shape != champion.shape or challenger.ndim != 1:
        raise ValueError(
            f"need one answer per sample from each model, got shapes {challenger.shape} and {champion.shape}"
        )
    b, c = int((challenger & ~champion).sum()), int((champion & ~challenger).sum())
    pairs = b + c
    chi_square = (max(abs(b - c) - 1, 0) ** 2 / pairs) if pairs else 0.0
    if pairs < MCNEMAR_EXACT_BELOW:
        p_value = float(stats.binom.sf(b - 1, pairs, 0.5)) if pairs else 1.0
        how = "exact binomial"
    else:
        z = math.copysign(math.sqrt(chi_square), b - c)
        p_value = float(stats.norm.sf(z))
        how = "chi-square with continuity correction"
    detail = f"McNemar ({how}): challenger alone right on {b}, champion alone on {c} of {len(challenger)} samples"
    return Significance("mcnemar", chi_square, p_value, len(challenger), detail)


def diebold_mariano(champion_loss: np.ndarray, challenger_loss: np.ndarray, horizon: int) -> Significance:
    """Diebold–Mariano's test of equal forecast accuracy, one-sided toward the challenger's loss being lower, with
    the Harvey–Leybourne–Newbold (1997) small-sample correction and Student's t with T - 1 degrees of freedom.

    ``d_t = champion_loss_t - challenger_loss_t``; its long-run variance sums the autocovariances up to lag
    ``horizon - 1`` (h-step forecasts made one step apart overlap). When that sum is not positive (it can be, in
    small samples), the lag-0 variance alone is used and the detail says so.
    """
    from scipy import stats

    champion = np.asarray(champion_loss, dtype=np.float64)
    challenger = np.asarray(challenger_loss, dtype=np.float64)
    if champion.shape != challenger.shape or champion.ndim != 1:
        raise ValueError(
            f"need one loss per forecast from each model, got shapes {champion.shape} and {challenger.shape}"
        )
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    d = champion - challenger
    n = len(d)
    if n <= horizon:
        return Significance(
            "diebold_mariano", 0.0, 1.0, n, f"Diebold–Mariano: {n} forecasts, too few for horizon {horizon}"
        )
    mean = float(d.mean())
    centred = d - mean
    autocovariance = [float(centred[lag:] @ centred[: n - lag]) / n for lag in range(horizon)]
    variance = autocovariance[0] + 2 * sum(autocovariance[1:])
    note = ""
    if variance <= 0 < autocovariance[0]:
        variance, note = autocovariance[0], "; long-run variance not positive, lag-0 variance used"
    if variance <= 0:  # every difference the same
        statistic = math.inf if mean > 0 else -math.inf if mean < 0 else 0.0
        p_value = 0.0 if mean > 0 else 1.0
    else:
        correction = math.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
        statistic = correction * mean / math.sqrt(variance / n)
        p_value = float(stats.t.sf(statistic, n - 1))
    detail = f"Diebold–Mariano (HLN-corrected, h={horizon}): mean loss difference {mean:.6g} over {n} forecasts{note}"
    return Significance("diebold_mariano", statistic, p_value, n, detail)


# ------------------------------------------------------------------------------------------------- comparison


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
        self.frame = read_series(spec.data, where)
        targets = self.frame[features.targets].to_numpy(np.float64)
        if len(self.frame) != features.meta["rows"] or not np.array_equal(targets, features.raw):
            raise DataError(
                f"{where}: the raw series no longer matches the features prepared in {features_dir}; prepare the data again"
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
                f"pipelines.{spec.name}.data.split.test: the test part holds no samples; the gate has nothing to compare"
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

        self.text = split_corpus(spec.data, f"pipelines.{spec.name}.data")["test"]
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


_TESTS: dict[str, Callable[[PipelineSpec, Path], Any]] = {
    "forecast": _ForecastData,
    "classify": _ClassifyData,
    "language_model": _CorpusData,
}


def scoring_data(spec: PipelineSpec, features_dir: Path) -> Any:
    """The test part of ``spec``'s current data, ready to score any predictor on (``outputs(predictor)``)."""
    return _TESTS[spec.task](spec, Path(features_dir))


def compare(spec: PipelineSpec, features_dir: Path, challenger: Any, champion: Any) -> Comparison:
    """Score two predictors (see :mod:`lstmflow.serving.predictors`) on the test part of ``spec``'s current data.

    A predictor that does not fit the data raises NotComparable or its own BadRequest, naming why.
    """
    data = scoring_data(spec, features_dir)
    return _compared(spec, data, data.outputs(challenger), data.outputs(champion))


def _compared(spec: PipelineSpec, data: Any, ours: Any, theirs: Any) -> Comparison:
    rule = spec.promote
    metric, test = rule.resolved_metric(spec.task), rule.resolved_test(spec.task)
    return Comparison(
        metric, rule.resolved_direction(spec.task), data.value(metric, ours), data.value(metric, theirs), data.n,
        None if test == "none" else data.paired_test(metric, ours, theirs),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------- decision


@dataclass(frozen=True)
class Decision:
    promote: bool
    gain: float | None
    reason: str


def relative_gain(challenger: float, champion: float, direction: str) -> float:
    """How much better the challenger is, as a fraction of the champion's value (negative: worse)."""
    better = champion - challenger if direction == "minimize" else challenger - champion
    if champion == 0:
        return math.inf if better > 0 else -math.inf if better < 0 else 0.0
    return better / abs(champion)


def decide(comparison: Comparison, rule: PromoteSpec) -> Decision:
    """Promote iff better in the metric's direction, by at least ``min_gain`` relative, and significantly so
    (p < ``alpha``) unless the rule's test is ``none``."""
    c = comparison
    figures = f"{c.metric} {c.challenger:.6g} vs the champion's {c.champion:.6g} on {c.n} test samples"
    if not math.isfinite(c.challenger):
        return Decision(False, None, f"kept: {figures}, not a number to compare")
    if not math.isfinite(c.champion):  # the champion's forecasts or probabilities broke down on these data
        return Decision(True, None, f"promoted: {figures}; the champion's is not a number")
    gain = relative_gain(c.challenger, c.champion, c.direction)
    if gain <= 0:
        return Decision(False, gain, f"kept: {figures}, not better ({c.direction})")
    better = f"{gain:.2%} better" if math.isfinite(gain) else "better (the champion's value is 0)"
    if gain < rule.min_gain:
        return Decision(False, gain, f"kept: {figures}, {better} but promote.min_gain is {rule.min_gain:.2%}")
    if c.test is not None and not c.test.p_value < rule.alpha:
        significance = f"p = {c.test.p_value:.3g} >= alpha {rule.alpha} ({c.test.detail})"
        return Decision(False, gain, f"kept: {figures}, {better} but not significantly: {significance}")
    significance = f"; p = {c.test.p_value:.3g} < alpha {rule.alpha} ({c.test.detail})" if c.test is not None else ""
    return Decision(True, gain, f"promoted: {figures}, {better}{significance}")


# ------------------------------------------------------------------------------------------------------ the step


def gate(prepared: Prepared, trained: dict[str, Any], registered: dict[str, str], root: Path) -> dict[str, Any]:
    """Judge the newly registered version against the alias's version and move the alias if it wins; record why.

    Returns the decision (``promoted``, ``kept`` or ``already_champion``), its figures (the keys of
    :data:`DECISION_FIELDS`, None where they do not apply, e.g. a first version's) and ``version``; ``recorded`` is
    True when it was read back from an earlier run's tags instead of judged now (a version is judged once).
    """
    from lstmflow.serving.predictors import BadRequest, load_predictor

    spec: PipelineSpec = prepared.pipeline
    uri, name, version, alias = tracking.tracking_uri(root), spec.name, str(registered["version"]), spec.promote.alias
    tags = registry.version_tags(uri, name, version)
    if tags.get(GATE_TAG + "decision") and tags.get(GATE_TAG + "alias") == alias:
        result = _read_decision(tags, version)
        if result["decision"] == "promoted" and _since_tag(alias) not in tags:  # stopped between its tags and the move
            _move_alias(uri, name, alias, version, "gate", result["reason"])
        return result
    champion = registry.alias_version(uri, name, alias)
    result: dict[str, Any] = {**dict.fromkeys(DECISION_FIELDS), "alias": alias, "version": version, "recorded": False}
    if champion == version:
        return result | {"decision": "already_champion", "reason": f"version {version} already is {alias!r}"}
    rule = spec.promote
    result |= {
        "decision": "promoted", "champion_version": champion, "metric": rule.resolved_metric(spec.task),
        "direction": rule.resolved_direction(spec.task), "min_gain": rule.min_gain, "test": rule.resolved_test(spec.task),
        "alpha": rule.alpha,
    }  # fmt: skip
    if champion is None:
        result["reason"] = f"first version: {name!r} has no {alias!r} yet"
    else:
        data = scoring_data(spec, Path(prepared.features_dir))
        ours = data.outputs(load_predictor(_local_bundle(uri, name, version, Path(trained["run_dir"]) / "bundle")))
        with tempfile.TemporaryDirectory(prefix="lstmflow-champion-") as scratch:
            try:
                theirs = data.outputs(load_predictor(registry.download_bundle(uri, name, champion, Path(scratch))))
            except (LstmflowError, BadRequest, ValidationError) as exc:  # it cannot serve the current data either
                theirs = None
                result["reason"] = (
                    f"promoted: the champion (version {champion}) cannot be scored on the current test data: {exc}"
                )
        if theirs is not None:
            comparison = _compared(spec, data, ours, theirs)
            decision = decide(comparison, rule)
            test = comparison.test
            result |= {
                "decision": "promoted" if decision.promote else "kept", "challenger_value": comparison.challenger,
                "champion_value": comparison.champion, "gain": decision.gain, "n": comparison.n,
                "statistic": test.statistic if test else None, "p_value": test.p_value if test else None,
                "reason": decision.reason,
            }  # fmt: skip
    result["decided_at"] = _now()
    tags = {GATE_TAG + key: str(result[key]) for key in DECISION_FIELDS if result[key] is not None}
    registry.set_version_tags(uri, name, version, tags)  # written before the move: see the repair above
    if result["decision"] == "promoted":
        _move_alias(uri, name, alias, version, "gate", result["reason"])
    _log_on_run(uri, trained["run_id"], version, result)
    return result


def _local_bundle(uri: str, name: str, version: str, bundle: Path) -> Path:
    """The challenger's bundle where the register step wrote it, else downloaded (the gate ran on another machine)."""
    from lstmflow.serving.predictors import BUNDLE_FILES

    if all((bundle / file).is_file() for file in BUNDLE_FILES):
        return bundle
    return registry.download_bundle(uri, name, version, bundle.parent / f"bundle-v{version}")


def _read_decision(tags: dict[str, str], version: str) -> dict[str, Any]:
    result: dict[str, Any] = {"version": version, "recorded": True}
    for key in DECISION_FIELDS:
        value = tags.get(GATE_TAG + key)
        result[key] = float(value) if value is not None and key in _NUMBERS else value
    if result["n"] is not None:
        result["n"] = int(result["n"])
    return result


def _log_on_run(uri: str, run_id: str, version: str, result: dict[str, Any]) -> None:
    """The decision on the new version's MLflow run too, where its other metrics are: metrics ``gate_*`` and tags."""
    metric = result["metric"]
    numbers = {
        f"gate_challenger_{metric}": result.get("challenger_value"),
        f"gate_champion_{metric}": result.get("champion_value"),
        "gate_gain": result.get("gain"),
        "gate_statistic": result.get("statistic"),
        "gate_p_value": result.get("p_value"),
        "gate_promoted": float(result["decision"] == "promoted"),
    }
    finite = {key: value for key, value in numbers.items() if value is not None and math.isfinite(value)}
    tracking.log_summary_metrics(uri, run_id, finite)
    tracking.set_tags(uri, run_id, {
        GATE_TAG + "decision": result["decision"], GATE_TAG + "model_version": version,
        GATE_TAG + "champion_version": result.get("champion_version") or "none", GATE_TAG + "reason": result["reason"],
    })  # fmt: skip


# ------------------------------------------------------------------------------------------- people: promote, rollback


def _since_tag(alias: str) -> str:
    return f"lstmflow.alias.{alias}.since"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in this environment (a container without a passwd entry)
        return "unknown"


def _move_alias(uri: str, name: str, alias: str, version: str, by: str, reason: str, user: str | None = None) -> None:
    """Point ``alias`` at ``version``, append it to the alias's history and say on the version when, by whom, why."""
    registry.set_alias(uri, name, alias, version)
    past = registry.history(uri, name, alias)
    if not past or past[-1] != version:
        registry.set_history(uri, name, alias, [*past, version])
    _note_move(uri, name, alias, version, by, reason, user or _user())


def _note_move(uri: str, name: str, alias: str, version: str, by: str, reason: str, user: str) -> None:
    prefix = f"lstmflow.alias.{alias}."
    tags = {_since_tag(alias): _now(), prefix + "by": by, prefix + "user": user, prefix + "reason": reason}
    registry.set_version_tags(uri, name, version, tags)


def promote(
    uri: str, name: str, version: str | int, alias: str = "champion", reason: str = "", user: str | None = None
) -> dict[str, Any]:
    """Point ``alias`` of model ``name`` at ``version`` by hand, whatever the gate said; recorded as ``manual``.

    A version that does not exist is a RegistryError listing those that do. Returns ``previous`` (the version the
    alias left, or None) and ``changed`` (False when it already pointed there).
    """
    version = registry.require_version(uri, name, version)
    previous = registry.alias_version(uri, name, alias)
    if previous != version:
        _move_alias(uri, name, alias, version, "manual", reason or "promoted by hand", user)
    return {"name": name, "alias": alias, "version": version, "previous": previous, "changed": previous != version}


def rollback(uri: str, name: str, alias: str = "champion", user: str | None = None) -> dict[str, Any]:
    """Point ``alias`` back at the version it pointed at before (the gate's or a person's move), and forget the
    current one in its history, so a second rollback goes back one more. No earlier version is a RegistryError.

    When the alias was moved outside lstmflow (the MLflow UI), "before" is the last version lstmflow moved it to.
    """
    current = registry.alias_version(uri, name, alias)
    past = registry.history(uri, name, alias)
    if past and past[-1] == current:
        past = past[:-1]
    existing = set(registry.versions(uri, name))
    past = [version for version in past if version in existing and version != current]  # deleted ones cannot return
    if not past:
        pointed = f"version {current}" if current else "nothing"
        raise registry.RegistryError(
            f"model {name!r} has no earlier {alias!r} to roll back to (it points at {pointed}); "
            f"promote a version instead: lstmflow promote {name} --version N"
        )
    target = past[-1]
    registry.set_alias(uri, name, alias, target)
    registry.set_history(uri, name, alias, past)
    who = user or _user()
    _note_move(
        uri, name, alias, target, "rollback", f"rolled back from version {current}" if current else "rolled back", who
    )
    if current is not None:
        prefix = f"lstmflow.alias.{alias}."
        registry.set_version_tags(
            uri, name, current, {prefix + "rolled_back_at": _now(), prefix + "rolled_back_by": who}
        )
    return {"name": name, "alias": alias, "version": target, "previous": current}
