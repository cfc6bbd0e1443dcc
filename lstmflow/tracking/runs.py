"""What lstmflow asks MLflow about past runs and registered models: which version to serve, how a pipeline's runs
rank, and what a run recorded (its resolved spec and lineage) so that it can be reproduced.

MLflow itself is reached through :func:`lstmflow.tracking._client` only; nothing here imports it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lstmflow.errors import ConfigError, DataError, LstmflowError
from lstmflow.tracking import LINEAGE_TAGS, _client

#: The resolved spec of a run, logged at its start; data paths in it are relative to the project.
SPEC_ARTIFACT = "spec.json"
#: Set on a run made by `lstmflow reproduce`: the id of the run it reproduces.
REPRODUCES_TAG = "lstmflow.reproduces"
#: The alias `serve` and `predict` use when none is given (the one the retraining gate moves).
DEFAULT_ALIAS = "champion"
#: A search's parent run carries this tag; it trains nothing itself.
SEARCH_PARENT_TAG = "lstmflow.search.trials"
#: Where each task's baseline metric of the same kind is logged: ``test_<prefix>_<metric>``.
BASELINE_PREFIX = {
    "forecast": "naive", "classify": "majority", "language_model": "unigram", "translate": "copy",
    "transcribe": "frequent",
}  # fmt: skip
#: Runs fetched per page when listing an experiment.
PAGE = 1000


# ---------------------------------------------------------------------------------------------- registered models


@dataclass(frozen=True)
class ModelChoice:
    """The registered version a command uses, and how it was chosen."""

    name: str
    version: str
    model_uri: str  # models:/NAME@ALIAS when chosen by an alias that is set, else models:/NAME/VERSION
    alias: str | None
    note: str | None = None  # why the choice differs from what was asked (an alias that is not set)


def parse_model_name(name: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME@ALIAS`` as (name, alias or None)."""
    base, at, alias = name.partition("@")
    if not base or (at and not alias) or "@" in alias:
        raise ConfigError(f"model {name!r}: write NAME or NAME@ALIAS, e.g. sunspots@champion")
    return base, alias or None


def choose_version(uri: str, name: str, version: str | None = None, alias: str | None = None) -> ModelChoice:
    """The version of registered model ``name`` to use: ``version`` (a number or ``latest``), else the version
    ``alias`` points at (default ``champion``); an alias that is not set falls back to the latest version, with a note.
    """
    if version is not None and alias is not None:
        raise ConfigError(f"model {name}: give --version {version} or the alias @{alias}, not both")
    client = _client(uri)
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        raise ConfigError(f"no registered model {name!r} in {uri}; run the pipeline first (`lstmflow run {name}`)")
    numbers = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    if not numbers:
        raise ConfigError(
            f"registered model {name!r} in {uri} has no versions; run the pipeline first (`lstmflow run {name}`)"
        )
    latest = str(numbers[-1])
    if version is not None:
        if version == "latest":
            return ModelChoice(name, latest, f"models:/{name}/{latest}", None)
        if not version.isdigit() or int(version) not in numbers:
            raise ConfigError(
                f"model {name}: no version {version!r}; it has versions {', '.join(map(str, numbers))} (or `latest`)"
            )
        return ModelChoice(name, version, f"models:/{name}/{version}", None)
    wanted = alias or DEFAULT_ALIAS
    aliases = client.get_registered_model(name).aliases  # {alias: version}
    if wanted in aliases:
        return ModelChoice(name, str(aliases[wanted]), f"models:/{name}@{wanted}", wanted)
    if alias is not None:  # asked for by name: a typo must not silently serve something else
        known = ", ".join(f"@{a} (version {v})" for a, v in sorted(aliases.items())) or "none"
        raise ConfigError(f"model {name}: alias @{alias} is not set; its aliases: {known}")
    note = (
        f"model {name} has no @{DEFAULT_ALIAS} alias yet (no version was promoted); using the latest version, {latest}"
    )
    return ModelChoice(name, latest, f"models:/{name}/{latest}", None, note)


def predict(model: Any, frame: Any, model_uri: str) -> Any:
    """The model's answer to ``frame``; a request it refuses is a :class:`DataError` with the model's message.

    A refusal is MLflow's invalid-parameter error (a failed signature check, or the predictor's ``BadRequest``): the
    error code is read off the exception so that this module need not import MLflow.
    """
    try:
        return model.predict(frame)
    except Exception as exc:
        if getattr(exc, "error_code", None) != "INVALID_PARAMETER_VALUE":
            raise
        from lstmflow.tracking.serving import one_line

        raise DataError(f"{model_uri} refused the input: {one_line(str(exc))}") from None


def served_predictor(model: Any) -> Any:
    """The :mod:`lstmflow.serving.predictors` predictor inside a loaded pyfunc: its spec says what input it reads."""
    return model.unwrap_python_model().predictor


def tag_version_lineage(uri: str, name: str, version: str) -> dict[str, str]:
    """Copy the lineage of the run behind a model version (git commit, DVC data and features md5, Prefect flow run,
    and where its resolved spec is) onto the version as tags, so that the registry page shows them; returns them."""
    client = _client(uri)
    model_version = client.get_model_version(name, version)
    run = client.get_run(model_version.run_id)
    tags = {key: run.data.tags[key] for key in LINEAGE_TAGS if key in run.data.tags}
    tags["lstmflow.run_id"] = run.info.run_id
    tags["lstmflow.spec"] = f"{run.info.artifact_uri}/{SPEC_ARTIFACT}"
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return tags


# ---------------------------------------------------------------------------------------------- comparing runs


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run of a pipeline, as the comparison shows it."""

    run_id: str
    run_name: str
    status: str
    start_time: int
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]
    versions: list[tuple[str, list[str]]] = field(default_factory=list)  # registered (version, aliases) of this run


def pipeline_runs(uri: str, name: str) -> list[RunRecord]:
    """Every run of the pipeline's experiment (MLflow experiment ``name``), newest first, with their model versions."""
    client = _client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise ConfigError(f"no MLflow experiment {name!r} in {uri}; run the pipeline first (`lstmflow run {name}`)")
    found, token = [], None
    while True:
        page = client.search_runs(
            [experiment.experiment_id], max_results=PAGE, order_by=["attributes.start_time DESC"], page_token=token
        )
        found.extend(page)
        token = page.token
        if not token:
            break
    versions: dict[str, list[tuple[str, list[str]]]] = {}
    if client.search_registered_models(filter_string=f"name = '{name}'"):
        by_version: dict[str, list[str]] = {}
        for alias, version in client.get_registered_model(name).aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        for model_version in client.search_model_versions(f"name = '{name}'"):
            entry = (str(model_version.version), sorted(by_version.get(str(model_version.version), [])))
            versions.setdefault(model_version.run_id, []).append(entry)
    return [
        RunRecord(
            run.info.run_id, run.info.run_name or "", run.info.status, run.info.start_time, dict(run.data.metrics),
            dict(run.data.params), dict(run.data.tags),
            sorted(versions.get(run.info.run_id, []), key=lambda v: int(v[0])),
        )
        for run in found
    ]  # fmt: skip


def rank_runs(records: list[RunRecord], metric_key: str, direction: str) -> tuple[list[RunRecord], list[RunRecord]]:
    """(runs with ``metric_key``, best first; runs without it: search parents, unevaluated trials, failed runs)."""
    scored = [record for record in records if metric_key in record.metrics]
    scored.sort(key=lambda record: record.metrics[metric_key], reverse=direction == "maximize")
    return scored, [record for record in records if metric_key not in record.metrics]


def differing_params(records: list[RunRecord]) -> list[str]:
    """The params whose values (or presence) differ between ``records``, in the order they were logged."""
    keys = list(dict.fromkeys(key for record in records for key in record.params))
    return [key for key in keys if len({record.params.get(key) for record in records}) > 1]


# ---------------------------------------------------------------------------------------------- lineage and reproducing


def log_spec(uri: str, run_id: str, spec: dict[str, Any], root: Path) -> None:
    """Log the resolved spec as ``spec.json``, its data paths relative to the project so that another clone (or
    `lstmflow reproduce`) can read the same data."""
    _client(uri).log_dict(run_id, _relative_paths(spec, root), SPEC_ARTIFACT)


def _relative_paths(spec: dict[str, Any], root: Path) -> dict[str, Any]:
    def relative(value: str) -> str:
        path = Path(value)
        return path.relative_to(root).as_posix() if path.is_absolute() and path.is_relative_to(root) else value

    data = {**spec["data"], "path": relative(spec["data"]["path"])}
    split = data.get("split") or {}
    if files := split.get("files"):
        data["split"] = {**split, "files": {part: relative(path) for part, path in files.items()}}
    return {**spec, "data": data}


@dataclass(frozen=True)
class RecordedRun:
    """What a run recorded: its resolved spec (data paths relative to the project), lineage tags and test metrics."""

    run_id: str
    run_name: str
    spec: dict[str, Any]
    tags: dict[str, str]
    test_metrics: dict[str, float]

    @property
    def commit(self) -> str:
        """The git commit the run was trained at (without a ``-dirty`` mark)."""
        return self.tags.get("lstmflow.git_commit", "unknown").removesuffix("-dirty")

    def check_same_data(self, data_md5: str, features_md5: str) -> None:
        """Refuse to reproduce on other data (or features built by other code) than the run's, naming the commit."""
        recorded = (self.tags.get("lstmflow.data_md5"), self.tags.get("lstmflow.features_md5"))
        if recorded == (data_md5, features_md5):
            return
        what = (
            f"data md5 {recorded[0]}, this workspace has {data_md5}"
            if recorded[0] != data_md5
            else f"features md5 {recorded[1]}, this workspace builds {features_md5} from the same data "
            "(the data code changed)"
        )
        dirty = (
            " (it had uncommitted changes then)" if self.tags.get("lstmflow.git_commit", "").endswith("-dirty") else ""
        )
        raise DataError(
            f"run {self.run_id} was trained on {what}; check out its version first: "
            f"`git checkout {self.commit} && dvc checkout`{dirty}, then run `lstmflow reproduce {self.run_id}` again"
        )


def recorded_run(uri: str, run_id: str) -> RecordedRun:
    """The recorded spec, tags and test metrics of ``run_id``; a run that cannot be reproduced is a named error."""
    client = _client(uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        if getattr(exc, "error_code", None) not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise  # not an unknown id: a store that is down, say
        raise ConfigError(
            f"no MLflow run {run_id!r} in {uri} (`lstmflow compare NAME` lists a pipeline's runs)"
        ) from None
    tags = dict(run.data.tags)
    if SEARCH_PARENT_TAG in tags:
        best = tags.get("lstmflow.search.best_run_id", "its best trial's run (tag lstmflow.search.best_run_id)")
        raise ConfigError(
            f"run {run_id} is a search's parent run and trained nothing itself; reproduce its best trial, run {best}"
        )
    if SPEC_ARTIFACT not in {artifact.path for artifact in client.list_artifacts(run_id)}:
        raise LstmflowError(
            f"run {run_id} has no {SPEC_ARTIFACT} artifact (it was logged by an older lstmflow, or the artifact store "
            "lost it); its params hold the spec, and its tag lstmflow.git_commit the code to check out"
        )
    with tempfile.TemporaryDirectory(prefix="lstmflow-spec-") as folder:
        spec = json.loads(Path(client.download_artifacts(run_id, SPEC_ARTIFACT, folder)).read_text())
    metrics = {key.removeprefix("test_"): value for key, value in run.data.metrics.items() if key.startswith("test_")}
    return RecordedRun(run_id, run.info.run_name or "", spec, tags, metrics)
