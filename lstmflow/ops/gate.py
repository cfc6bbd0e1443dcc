"""The retraining gate: a newly registered model version becomes the champion only when it is better on the same
test data, by the pipeline's ``promote`` rule; and promotion and rollback by hand.

Both versions are scored through their served predictors, each with its own preprocessing (scaler, tokenizer,
audio features, window), on the test part of the current data version, read from the raw data. So a champion
trained on an older data version is judged on exactly the samples the new version is judged on:

- forecasts: every test window of the current features, each model reading the rows before the window's origin;
  the paired per-window losses go to a one-sided Diebold–Mariano test (h = the horizon, since windows one step
  apart share h - 1 forecast steps);
- classification: every test sample as a raw request; whether each model got it right goes to a one-sided
  McNemar test;
- language models: the test text's cross-entropy per character (tokenizers may differ), no test;
- translators: every test source as a raw text; each translation's chrF goes to a one-sided sign test;
- transcribers: every test clip as a file; each transcript's character error rate goes to a one-sided sign test.

The scoring is :mod:`lstmflow.evaluation.comparison`, the tests :mod:`lstmflow.evaluation.significance`.
The rule: under ``beat_baseline`` (the default) the new version must first beat the baselines its own run logged
on the same test part (``test_<metric>`` against ``test_naive_*``, ``test_majority_*`` or ``test_unigram_*``, and
match the classical ``test_baseline_<metric>`` where the task has one): the run's logged metrics are the one source
of those figures, so the table a run prints and the gate agree.
A version that does not is registered, never promoted, first version included (verdict ``below_baseline``). Then,
with no champion, the new version is promoted; else it must be better in the metric's direction by at least
``min_gain`` (relative to the champion's value) and, unless the test is ``none``, significantly so (p < ``alpha``).
When one of the two cannot be scored, nothing is compared, and the decision records which one (``unscored``) and
why (``reason``):

- the champion loads but does not fit the current test data (other targets, a shorter horizon, columns the data
  no longer has, another task): the data or the task changed shape, so the champion cannot serve them either, and
  the new version is promoted;
- the champion does not load (a broken bundle, a spec this lstmflow no longer accepts): it is kept, since nothing
  says the new version is better; a person decides (``lstmflow promote``);
- the new version itself cannot be scored: it is never promoted.

The decision, its ``verdict`` (one of :data:`VERDICTS`) and its figures are tags ``lstmflow.gate.*`` on the new model
version, and metrics ``gate_*`` on its
MLflow run. A version with a recorded decision is not judged again, so the gate is safe to run on every flow run.
"""

from __future__ import annotations

import getpass
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lstmflow import tracking
from lstmflow.config import PipelineSpec, PromoteSpec
from lstmflow.errors import LstmflowError
from lstmflow.evaluation.comparison import Comparison, NotComparable, compared, scoring_data
from lstmflow.tracking import registry

#: Prefix of the decision tags on a model version.
GATE_TAG = "lstmflow.gate."
#: The decision's fields, in the order the tags list them; numbers are read back as floats.
DECISION_FIELDS = (
    "decision", "verdict", "alias", "champion_version", "metric", "direction", "challenger_value", "champion_value",
    "gain", "min_gain", "test", "statistic", "p_value", "alpha", "n", "unscored", "beat_baseline", "test_value",
    "baseline", "baseline_value", "baselines", "reason", "decided_at",
)  # fmt: skip
_NUMBERS = {
    "challenger_value", "champion_value", "gain", "min_gain", "statistic", "p_value", "alpha", "test_value",
    "baseline_value",
}  # fmt: skip
#: What the gate concluded, finer than ``decision``: ``promoted``; ``already_champion`` (the alias pointed at it
#: before the gate judged it); ``below_baseline`` (kept: it does not beat its run's baselines); ``not_better`` (kept:
#: not better than the champion by the rule); ``unscored`` (kept: it or the champion could not be scored).
VERDICTS = ("promoted", "already_champion", "below_baseline", "not_better", "unscored")
#: Per task, the name of the naive baseline the evaluate step logs beside each test metric as
#: ``test_<prefix>_<metric>`` (prefix: :data:`lstmflow.tracking.runs.BASELINE_PREFIX`).
NAIVE_BASELINE_NAMES = {
    "forecast": "seasonal-naive", "classify": "majority-class", "language_model": "unigram", "translate": "copy-source",
    "transcribe": "most-frequent-transcript",
}  # fmt: skip
#: The strong classical baseline's prefix: ``test_baseline_<metric>``, logged where the task has one.
CLASSICAL_PREFIX = "baseline"
#: What loading a bundle raises when it cannot be loaded: a file missing or unreadable, a spec that no longer
#: validates (pydantic's ValidationError), weights that do not fit the network the spec builds (torch's
#: RuntimeError), a task this lstmflow does not know.
_LOAD_ERRORS = (LstmflowError, ValidationError, OSError, ValueError, KeyError, RuntimeError)


class Unloadable(LstmflowError):
    """A model bundle that this lstmflow cannot load."""


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


# ---------------------------------------------------------------------------------------------------- baselines


@dataclass(frozen=True)
class BaselineCheck:
    """A version's own test metric beside the baselines its run logged. ``beaten`` is None when there was nothing to
    check (the metric or every baseline unlogged); ``summary`` says what was compared, or why nothing was."""

    beaten: bool | None
    value: float | None
    baseline: str | None  # the strongest baseline found: the one to beat
    baseline_value: float | None
    summary: str


def check_baselines(
    task: str, metric: str, direction: str, metrics: dict[str, float], classical: str | None = None
) -> BaselineCheck:
    """Does ``metrics[metric]`` (a run's test metrics, without ``test_``) beat every baseline logged beside it?

    Strictly better than the naive baseline, in ``direction``: a classifier that only ties its majority class has
    learnt nothing worth serving. At least as good as the classical one: a model that ties it (both perfect on an
    easy set) is worth serving. A baseline not logged, or not a number, is left out and named in the summary.
    ``classical`` names the strong baseline's method (e.g. ``auto_ets``) where the run recorded it.
    """
    from lstmflow.tracking.runs import BASELINE_PREFIX

    naive = f"{NAIVE_BASELINE_NAMES[task]} baseline"
    keys = {
        naive: f"{BASELINE_PREFIX[task]}_{metric}",
        f"{classical or 'classical'} baseline": f"{CLASSICAL_PREFIX}_{metric}",
    }
    found = {name: float(metrics[key]) for name, key in keys.items() if _finite(metrics.get(key))}
    unlogged = " or ".join(f"test_{key}" for name, key in keys.items() if name not in found)
    value = metrics.get(metric)
    if value is None or not found:
        missing = f"test_{metric}" if value is None else unlogged
        return BaselineCheck(None, value, None, None, f"baselines not checked: the run logged no {missing}")
    ranked = sorted(found.items(), key=lambda item: item[1], reverse=direction == "maximize")
    baseline, baseline_value = ranked[0]
    losing = [
        (name, other)
        for name, other in found.items()
        if not (_better(value, other, direction) or (name != naive and value == other))
    ]
    if losing:
        relations = [f"{_relation(value, other, direction)} the {name}'s {other:.4g}" for name, other in losing]
        summary = f"{metric} {value:.4g} is {' and '.join(relations)}"
        return BaselineCheck(False, value, baseline, baseline_value, summary)
    beats = " and ".join(
        f"{'ties' if value == other else 'beats'} the {name}'s {other:.4g}" for name, other in found.items()
    )
    note = f"; no {unlogged} was logged, so it was not checked" if unlogged else ""
    return BaselineCheck(True, value, baseline, baseline_value, f"{metric} {value:.4g} {beats}{note}")


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _better(value: float, other: float, direction: str) -> bool:
    return math.isfinite(value) and (value < other if direction == "minimize" else value > other)


def _relation(value: float, other: float, direction: str) -> str:
    if not math.isfinite(value):
        return "not a number, so not better than"
    return "no better than" if value == other else "worse than"


def run_baselines(spec: PipelineSpec, uri: str, run_id: str) -> BaselineCheck:
    """The check of :func:`check_baselines` on the test metrics (and the strong baseline's method, a run tag) that
    ``run_id``'s evaluate step logged."""
    from lstmflow.evaluation.baselines import BASELINE_TAG
    from lstmflow.tracking.runs import recorded_run

    rule, run = spec.promote, recorded_run(uri, run_id)
    metric, direction = rule.resolved_metric(spec.task), rule.resolved_direction(spec.task)
    return check_baselines(spec.task, metric, direction, run.test_metrics, run.tags.get(BASELINE_TAG))


def warning(name: str, result: dict[str, Any]) -> str | None:
    """The line a run ends with when the gate refused its version for losing to a baseline; None otherwise."""
    if result.get("verdict") != "below_baseline":
        return None
    return f"warning: {name} version {result['version']} is not promoted: {result['baselines']} (promote.beat_baseline)"


def judge_bundles(
    spec: PipelineSpec, features_dir: Path, challenger: Path, champion: Path, champion_version: str
) -> dict[str, Any]:
    """The decision on the bundle ``challenger`` against the champion's bundle, on the test part of ``spec``'s
    current data: the fields of :data:`DECISION_FIELDS` that depend on the two models.

    When one of them cannot be scored, the rule of this module's docstring decides, and ``unscored`` names which.
    """
    from lstmflow.serving.predictors import BadRequest

    data = scoring_data(spec, features_dir)
    try:
        ours = _outputs(data, challenger)
    except (Unloadable, NotComparable, BadRequest) as exc:
        why = f"this version cannot be scored on the current test data ({exc})"
        return {"decision": "kept", "unscored": "challenger", "reason": f"kept: {why}; it is never promoted"}
    try:
        theirs = _outputs(data, champion)
    except Unloadable as exc:
        why = f"the champion (version {champion_version}) does not load ({exc}), so nothing was compared"
        hint = f"`lstmflow promote {spec.name} --version N` moves the alias by hand"
        return {"decision": "kept", "unscored": "champion", "reason": f"kept: {why}; {hint}"}
    except (NotComparable, BadRequest) as exc:
        why = f"the champion (version {champion_version}) cannot be scored on the current test data ({exc})"
        reason = f"promoted: the data or the task changed shape: {why}, so it cannot serve them either"
        return {"decision": "promoted", "unscored": "champion", "reason": reason}
    comparison = compared(spec, data, ours, theirs)
    decision = decide(comparison, spec.promote)
    test = comparison.test
    return {
        "decision": "promoted" if decision.promote else "kept", "challenger_value": comparison.challenger,
        "champion_value": comparison.champion, "gain": decision.gain, "n": comparison.n,
        "statistic": test.statistic if test else None, "p_value": test.p_value if test else None,
        "reason": decision.reason,
    }  # fmt: skip


def _outputs(data: Any, bundle: Path) -> Any:
    """What the predictor in ``bundle`` answers to ``data``; a bundle that does not load is :class:`Unloadable`."""
    from lstmflow.serving.predictors import load_predictor

    try:
        predictor = load_predictor(bundle)
    except _LOAD_ERRORS as exc:
        raise Unloadable(f"{type(exc).__name__}: {' '.join(str(exc).split())}") from exc
    return data.outputs(predictor)


# ------------------------------------------------------------------------------------------------------ the step


def gate(
    spec: PipelineSpec, features_dir: Path, trained: dict[str, Any], registered: dict[str, str], root: Path
) -> dict[str, Any]:
    """Judge the newly registered version against the alias's version and move the alias if it wins; record why.

    ``features_dir`` holds the current features of ``spec``'s data, ``trained`` the new version's ``run_id`` (whose
    evaluate step logged the test metrics and baselines) and ``run_dir``. Returns the decision (``promoted``, ``kept``
    or ``already_champion``), its figures (the keys of :data:`DECISION_FIELDS`, None where they do not apply, e.g. a
    first version's), ``version`` and ``promoted``; ``recorded`` is True when it was read back from an earlier run's
    tags instead of judged now (a version is judged once). When MLflow's server does not answer, raises
    :class:`~lstmflow.tracking.TrackingUnavailable` for the task's retries: the version stays registered, unjudged.
    """
    uri = tracking.tracking_uri(root)
    kept = f"version {registered['version']} of {spec.name!r} stays registered; `lstmflow run {spec.name}` judges it"
    with tracking.answering(uri, f"judging {spec.name} version {registered['version']}", kept):
        return _judge(spec, features_dir, trained, str(registered["version"]), uri)


def _judge(spec: PipelineSpec, features_dir: Path, trained: dict[str, Any], version: str, uri: str) -> dict[str, Any]:
    name, alias = spec.name, spec.promote.alias
    tags = registry.version_tags(uri, name, version)
    if tags.get(GATE_TAG + "decision") and tags.get(GATE_TAG + "alias") == alias:
        return _recorded(uri, name, version, tags)
    result: dict[str, Any] = {**dict.fromkeys(DECISION_FIELDS), "alias": alias, "version": version, "recorded": False}
    champion = registry.alias_version(uri, name, alias)
    if champion == version:
        reason = f"version {version} already is {alias!r}"
        return _concluded(result | {"decision": "already_champion", "reason": reason})
    result |= _rule_fields(spec) | {"champion_version": champion}
    check = run_baselines(spec, uri, trained["run_id"]) if spec.promote.beat_baseline else None
    if check is not None:
        result |= {
            "test_value": check.value, "baseline": check.baseline, "baseline_value": check.baseline_value,
            "baselines": check.summary,
        }  # fmt: skip
    if check is not None and check.beaten is False:
        reason = f"kept: {check.summary} (promote.beat_baseline)"
        result |= {"decision": "kept", "verdict": "below_baseline", "reason": reason}
    elif champion is None:
        beats = f"; {check.summary}" if check is not None else ""
        result |= {"decision": "promoted", "reason": f"first version: {name!r} has no {alias!r} yet{beats}"}
    else:
        ours = _local_bundle(uri, name, version, Path(trained["run_dir"]) / "bundle")
        with tempfile.TemporaryDirectory(prefix="lstmflow-champion-") as scratch:
            theirs = registry.download_bundle(uri, name, champion, Path(scratch))
            result |= judge_bundles(spec, Path(features_dir), ours, theirs, champion)
    result["decided_at"] = _now()
    _record(uri, name, version, _concluded(result), trained["run_id"])
    return result


def _concluded(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with its ``verdict`` (see :data:`VERDICTS`) and ``promoted``: whether the version is the alias's
    version by the gate's decision (promoted now, or already)."""
    decision = result["decision"]
    if not result.get("verdict"):
        kept = "unscored" if result.get("unscored") else "not_better"
        result["verdict"] = decision if decision in ("promoted", "already_champion") else kept
    result["promoted"] = decision != "kept"
    return result


def _rule_fields(spec: PipelineSpec) -> dict[str, Any]:
    rule, task = spec.promote, spec.task
    return {
        "metric": rule.resolved_metric(task), "direction": rule.resolved_direction(task), "min_gain": rule.min_gain,
        "test": rule.resolved_test(task), "alpha": rule.alpha, "beat_baseline": rule.beat_baseline,
    }  # fmt: skip


def _local_bundle(uri: str, name: str, version: str, bundle: Path) -> Path:
    """The challenger's bundle where the register step wrote it, else downloaded (the gate ran on another machine)."""
    from lstmflow.serving.predictors import BUNDLE_FILES

    if all((bundle / file).is_file() for file in BUNDLE_FILES):
        return bundle
    return registry.download_bundle(uri, name, version, bundle.parent / f"bundle-v{version}")


def _recorded(uri: str, name: str, version: str, tags: dict[str, str]) -> dict[str, Any]:
    """The decision an earlier run recorded on ``version``; a promotion stopped between its tags and the alias move
    (see :func:`_record`) is finished now."""
    result: dict[str, Any] = {"version": version, "recorded": True}
    for key in DECISION_FIELDS:
        value = tags.get(GATE_TAG + key)
        result[key] = float(value) if value is not None and key in _NUMBERS else value
    if result["n"] is not None:
        result["n"] = int(result["n"])
    if result["beat_baseline"] is not None:
        result["beat_baseline"] = result["beat_baseline"] == "True"
    alias = result["alias"]
    if result["decision"] == "promoted" and registry.alias_tag(alias, "since") not in tags:
        _move_alias(uri, name, alias, version, "gate", result["reason"])
    return _concluded(result)  # a decision recorded before verdicts were: derived from it


def _record(uri: str, name: str, version: str, result: dict[str, Any], run_id: str) -> None:
    """The decision as tags on the version, written before the alias moves (so a stop in between is repaired by
    :func:`_recorded`), then the move, then the figures on the version's MLflow run."""
    tags = {GATE_TAG + key: str(result[key]) for key in DECISION_FIELDS if result[key] is not None}
    registry.set_version_tags(uri, name, version, tags)
    if result["decision"] == "promoted":
        _move_alias(uri, name, result["alias"], version, "gate", result["reason"])
    _log_on_run(uri, run_id, version, result)


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
        GATE_TAG + "decision": result["decision"], GATE_TAG + "verdict": result["verdict"],
        GATE_TAG + "model_version": version,
        GATE_TAG + "champion_version": result.get("champion_version") or "none", GATE_TAG + "reason": result["reason"],
    })  # fmt: skip


# ------------------------------------------------------------------------------------------- people: promote, rollback


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
    _note(uri, name, alias, version, {"since": _now(), "by": by, "user": user, "reason": reason})


def _note(uri: str, name: str, alias: str, version: str, notes: dict[str, str]) -> None:
    """Tags ``lstmflow.alias.<alias>.<key>`` on the version: what happened to it as the alias's version."""
    registry.set_version_tags(uri, name, version, {registry.alias_tag(alias, key): text for key, text in notes.items()})


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
    reason = f"rolled back from version {current}" if current else "rolled back"
    _note_move(uri, name, alias, target, "rollback", reason, who)
    if current is not None:
        _note(uri, name, alias, current, {"rolled_back_at": _now(), "rolled_back_by": who})
    return {"name": name, "alias": alias, "version": target, "previous": current}
