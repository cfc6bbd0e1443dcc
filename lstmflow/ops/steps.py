"""The pipeline's steps as plain functions: prepare → train (or search) → evaluate → register.

Each Prefect task in ``tasks/`` is a thin wrapper over one function here, so the
whole path can also run, and be tested, without any orchestration. Steps exchange
only references: paths, MLflow run ids, small dicts.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstmflow import tracking
from lstmflow.config import Config, PipelineSpec
from lstmflow.errors import ConfigError, DataError, writing
from lstmflow.ops import recovery, versioning

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """What the prepare step hands on: the resolved spec and its versioned features."""

    spec: dict[str, Any]
    features_dir: str
    data_md5: str
    features_md5: str

    @property
    def pipeline(self) -> PipelineSpec:
        return PipelineSpec.model_validate(self.spec)


def project_root(config_path: str | Path) -> Path:
    """Everything a project keeps (stores, features, runs) lives beside its ``pipelines.yaml``."""
    return Path(config_path).expanduser().resolve().parent


#: lstmflow's own source folder, which the code versions hash.
PACKAGE = Path(__file__).parents[1]
#: The code that decides what a pipeline trains, beside its spec (hashed on its own) and its data (DVC's hash): the
#: data preparation, the models and the training.
TRAINING_CODE = ("data", "models", "training")
#: In TRAINING_CODE but not deciding what trains: the demo data builder (its own stage version keys it, and DVC the
#: data it writes), where metrics go, and the search's choice of values (a trial's values are in the trial's spec).
NOT_TRAINING_CODE = ("data/demo.py", "training/loggers.py", "training/search.py")
#: What a source file is: the Python modules, and the C++ of the compiled LSTM.
SOURCE_SUFFIXES = (".py", ".cpp")


@functools.cache
def source_hash(parts: tuple[str, ...], leave_out: tuple[str, ...] = (), package: Path = PACKAGE) -> str:
    """A hash of the source files in ``parts`` of ``package`` (files or folders), less those in ``leave_out``.

    Names count as well as contents, so a moved module changes it. Computed once per process and arguments.
    """
    files = sorted(
        path
        for part in parts
        for path in _source_files(package / part)
        if not any(_within(path.relative_to(package), Path(out)) for out in leave_out)
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _source_files(path: Path) -> list[Path]:
    if path.is_dir():
        return [file for file in path.rglob("*") if file.suffix in SOURCE_SUFFIXES and file.is_file()]
    return [path]


def _within(path: Path, folder_or_file: Path) -> bool:
    return path == folder_or_file or folder_or_file in path.parents


def code_version(package: Path | None = None) -> str:
    """The version of the code that decides what a pipeline trains: part of the train step's cache key and the
    MLflow tag ``lstmflow.code_version``. A change anywhere else (the CLI, operations, tracking, evaluation,
    serving) keeps every cached training."""
    return source_hash(TRAINING_CODE, NOT_TRAINING_CODE, package or PACKAGE)


def data_code_version() -> str:
    """The version of the data preparation, the features stage's own: the demo data builder aside, whose data DVC
    hashes once it has written them."""
    return source_hash(("data",), ("data/demo.py",))


#: The keys of a data spec that name files (a translator's aligned target file besides ``path``).
PATH_KEYS = ("path", "target_path")


def stage_versions() -> dict[str, str]:
    """Versions of the code behind DVC stages that have no data dependency (the demo data builder)."""
    return {"datasets_version": source_hash(("data/demo.py",))}


def params_entry(spec: PipelineSpec, root: Path) -> dict[str, Any]:
    """The slice of a resolved spec that the features stage depends on, with data paths relative to the project."""

    def relative(value: str) -> str:
        path = Path(value)
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)

    data = spec.data.model_dump(mode="json")
    data.update({key: relative(data[key]) for key in PATH_KEYS if data.get(key) is not None})
    files = data["split"].get("files")
    if files:
        files.update({part: relative(path) for part, path in files.items()})
    entry: dict[str, Any] = {"data": data, "inputs": stage_inputs(data), "code_version": data_code_version()}
    if spec.task == "forecast":
        entry["season"] = spec.evaluate.season
    return entry


def stage_inputs(data: dict[str, Any]) -> dict[str, str]:
    """The data files of a params entry, for ``dvc.yaml``'s deps: a given split's training, validation and test
    files, else ``data.path`` three times (DVC accepts a dependency listed twice); aligned translation files are
    ``data.path`` (the sources), then ``data.target_path`` twice."""
    if data.get("target_path") is not None:
        return {"train": data["path"], "val": data["target_path"], "test": data["target_path"]}
    files = data.get("split", {}).get("files") or {}
    return {"train": data["path"], "val": files.get("val", data["path"]), "test": files.get("test", data["path"])}


def data_spec_from_params(entry: dict[str, Any], root: Path) -> tuple[Any, int | None]:
    """Inverse of :func:`params_entry`, for the DVC stage command: the typed data spec and the season."""
    from lstmflow.data.kinds import parse_data_spec

    data = dict(entry["data"])
    data.update({key: str((root / data[key]).resolve()) for key in PATH_KEYS if data.get(key) is not None})
    if files := data["split"].get("files"):
        data["split"] = {**data["split"], "files": {part: str((root / path).resolve()) for part, path in files.items()}}
    return parse_data_spec(data), entry.get("season")


def prepare(config_path: str | Path, name: str, overrides: list[str]) -> Prepared:
    """Resolve the spec, write its params, and let DVC build (or skip) the raw data and features stages."""
    config = Config.load(config_path)
    return prepare_spec(config.pipeline(name, overrides), project_root(config_path), config.names)


def prepare_spec(spec: PipelineSpec, root: Path, names: list[str]) -> Prepared:
    """:func:`prepare` for a spec already resolved (e.g. one recorded by an earlier run), in the project at ``root``
    whose pipelines are ``names`` (params entries of other names are dropped)."""
    from lstmflow.data.kinds import resolve

    name = spec.name
    versioning.ensure_repo(root)
    # Every entry needs what dvc.yaml reads (DVC parses all of them): entries written by an older lstmflow get it.
    entries = {
        n: {**e, "inputs": stage_inputs(e["data"])} for n, e in versioning.read_params(root).items() if n in names
    }
    if not spec.data.path.exists():
        producer = versioning.stage_producing(root, spec.data.path)
        if producer is None:
            raise DataError(f"pipelines.{name}.data.path: no such file or folder: {spec.data.path}")
        entries[name] = params_entry(spec, root)  # unresolved until the data exist; dvc.yaml needs the entry
        versioning.write_params(root, entries, stage_versions())
        versioning.repro(root, producer)
    spec = resolve(spec)
    entries[name] = params_entry(spec, root)
    versioning.write_params(root, entries, stage_versions())
    stage = f"features@{name}"
    versioning.repro(root, stage)
    versioning.push(root, stage)
    hashes = versioning.stage_hashes(root, stage)
    return Prepared(spec.model_dump(mode="json"), str(root / "features" / name), **hashes)


def start_tracked_run(
    prepared: Prepared,
    root: Path,
    flow_run_id: str | None,
    resume_run_id: str | None = None,
    run_name: str | None = None,
    extra_tags: dict[str, str] | None = None,
    extra_params: dict[str, str] | None = None,
) -> str:
    """Open (or reopen, on a retry) the pipeline's MLflow run with params, lineage tags and the resolved spec
    (``spec.json``, what `lstmflow reproduce` trains again)."""
    from lstmflow.tracking import runs

    uri = tracking.tracking_uri(root)
    if resume_run_id and tracking.reopen_run(uri, resume_run_id):
        return resume_run_id
    spec = prepared.pipeline
    tags = {
        "lstmflow.git_commit": versioning.git_commit(root),
        "lstmflow.data_md5": prepared.data_md5,
        "lstmflow.features_md5": prepared.features_md5,
        "lstmflow.prefect_flow_run_id": flow_run_id or "none",
        "lstmflow.spec_hash": spec.spec_hash(),
        "lstmflow.code_version": code_version(),
        "lstmflow.task": spec.task,
        "lstmflow.deterministic": str(spec.train.deterministic).lower(),
        **(extra_tags or {}),
    }
    params = {**spec.flat_params(), **(extra_params or {})}
    run_name = run_name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_id = tracking.start_run(uri, spec.name, root / "mlruns", params, tags, run_name=run_name)
    runs.log_spec(uri, run_id, prepared.spec, root)
    return run_id


def train(prepared: Prepared, root: Path, flow_run_id: str | None, progress: bool = True) -> dict[str, Any]:
    """Train in a child process, logging each epoch to a new (or, on retry, the same) MLflow run.

    The run folder is keyed by the flow run, so a retried task finds its run id and
    checkpoint and resumes instead of starting over; a run folder of the same spec, features and code whose process
    died (a kill of the whole tree) is continued, with its MLflow run, by the next start. An MLflow server that does
    not answer is a TrackingUnavailable, raised with the checkpoint kept: the retry that resumes trains nothing again.
    """
    spec = prepared.pipeline
    uri = tracking.tracking_uri(root)
    kept = (
        f"what was trained is kept in {root / 'runs' / spec.name}; once MLflow answers, `lstmflow run {spec.name}` "
        "continues from it without training again"
    )
    with tracking.answering(uri, f"training {spec.name}", kept):
        return _train(prepared, root, flow_run_id, progress)


def _while_training(spec: PipelineSpec, features_dir: Path, run_dir: Path) -> None:
    """What this process does while its training child runs (it would only wait): fit the strong baseline, and
    import what evaluate and register use."""
    from lstmflow.evaluation.evaluate import start_strong_baseline

    start_strong_baseline(spec, features_dir, run_dir / PLOTS)
    threading.Thread(target=_preload_later_steps, name="lstmflow-preload", daemon=True).start()


def _preload_later_steps() -> None:
    from lstmflow.evaluation import plots

    try:
        plots.preload()
        tracking.preload_model_logging()
    except Exception:  # noqa: BLE001 - a head start only: the steps themselves raise whatever this met
        return


def _train(prepared: Prepared, root: Path, flow_run_id: str | None, progress: bool) -> dict[str, Any]:
    from lstmflow.training.launch import train_in_child

    spec = prepared.pipeline
    uri = tracking.tracking_uri(root)
    runs_dir = root / "runs" / spec.name
    key = {"spec_hash": spec.spec_hash(), "features_md5": prepared.features_md5, "code_version": code_version()}
    with writing(runs_dir):
        run_dir = recovery.claim_abandoned(
            runs_dir,
            key,
            lambda run_id: tracking.run_status(uri, run_id) not in (None, "FINISHED"),
            runs_dir / (flow_run_id or f"local-{spec.spec_hash()}-{prepared.features_md5[:8]}"),
        )
    run_id_file = run_dir / "mlflow_run_id"
    previous = run_id_file.read_text().strip() if run_id_file.exists() else None
    run_id = start_tracked_run(prepared, root, flow_run_id, resume_run_id=previous)
    if run_id == previous and flow_run_id and run_dir.name != flow_run_id:
        log.warning("%s: continuing MLflow run %s from its last checkpoint in %s", spec.name, run_id, run_dir)
    try:
        with writing(run_dir):
            run_id_file.write_text(run_id)
            recovery.record_run(run_dir, run_id)
            features_dir = Path(prepared.features_dir)
            with tracking.relayed_metrics(uri, run_id, run_dir / METRICS_SPOOL) as logger:
                result = train_in_child(  # the baseline is fitted meanwhile, here, for evaluate to take
                    spec,
                    features_dir,
                    run_dir,
                    logger,
                    progress,
                    on_start=lambda _: _while_training(spec, features_dir, run_dir),
                )
    except BaseException:
        tracking.end_run(uri, run_id, "FAILED")
        raise
    summary = {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": int(result.stopped_early),
        "train_seconds": result.seconds,
        "steps": result.steps,
        "batch_size_used": result.batch_size,
        "refit_epochs": result.refit["epochs"] if result.refit else 0,
        "data_skipped_files": skipped_files(Path(prepared.features_dir)),
    }
    tracking.log_summary_metrics(uri, run_id, {k: float(v) for k, v in summary.items()})
    if summary["data_skipped_files"] and (listing := Path(prepared.features_dir) / SKIPPED_LIST).exists():
        tracking.log_artifacts(uri, run_id, [listing], "data")
    resolved = {  # what the automatic settings chose, and why training stopped
        "lstmflow.lstm_kernels": ",".join(result.lstm_kernels) or "none",
        "lstmflow.stopped_by": result.stopped_by,
        "lstmflow.kept": result.kept,
        "lstmflow.select": result.select,
        "lstmflow.lr_schedule": result.lr_schedule,
    }
    tracking.set_tags(uri, run_id, resolved)
    return {"run_id": run_id, "run_dir": str(run_dir), "model_path": result.model_path, **summary}


#: A run folder's plots (and the strong baseline's record), logged to the MLflow run as its ``plots`` artifacts.
PLOTS = "plots"
#: The training child's metrics, one JSON line per epoch, relayed from there to its MLflow run.
METRICS_SPOOL = "metrics.jsonl"
#: The list of files the features stage left out, and why (audio); logged to the run as ``data/skipped.json``.
SKIPPED_LIST = "skipped.json"


def skipped_files(features_dir: Path) -> int:
    """How many files of the raw data the features leave out (bad audio clips, loose files beside image folders)."""
    try:
        extra = json.loads((features_dir / "meta.json").read_text()).get("extra_meta") or {}
    except (OSError, ValueError, AttributeError):
        return 0
    return int(extra.get("skipped") or extra.get("skipped_files") or 0)


def join_training(prepared: Prepared, root: Path, progress: bool = True) -> dict[str, Any]:
    """Train as machine ``train.nodes.rank`` > 0 of a multi-node run that machine 0 started with the flow.

    Machine 0 alone tracks, logs, checkpoints, evaluates and registers; this machine prepares the same features
    (its own DVC stage, same content hash) and lends its processes to the training.
    """
    from lstmflow.training.launch import train_in_child
    from lstmflow.training.loggers import ListLogger

    spec = prepared.pipeline
    nodes = spec.train.nodes
    if nodes is None or nodes.rank == 0:
        raise ConfigError(
            f"pipelines.{spec.name}.train.nodes: joining needs a multi-node spec and a machine rank of 1 or more "
            f"(machine 0 runs `lstmflow run {spec.name}`), got {nodes!r}"
        )
    run_dir = root / "runs" / spec.name / f"node{nodes.rank}-{spec.spec_hash()}-{prepared.features_md5[:8]}"
    result = train_in_child(spec, Path(prepared.features_dir), run_dir, ListLogger(), progress=progress)
    return {
        "run_dir": str(run_dir),
        "epochs_run": result.epochs_run,
        "workers": result.workers,
        "seconds": result.seconds,
    }


def evaluate(prepared: Prepared, trained: dict[str, Any], root: Path) -> dict[str, float]:
    """Score the test part beside its naive baseline (seasonal naive, the majority class, the unigram model) and its
    strong classical one (tagged with its method); log metrics and plots."""
    from lstmflow.evaluation import evaluate as scoring
    from lstmflow.evaluation.baselines import BASELINE_TAG, read_record
    from lstmflow.evaluation.transcription import evaluate_transcriber
    from lstmflow.evaluation.translation import evaluate_translator

    spec = prepared.pipeline
    run_dir = Path(trained["run_dir"])
    scorer = {
        "forecast": scoring.evaluate_forecast,
        "classify": scoring.evaluate_classifier,
        "language_model": scoring.evaluate_language_model,
        "translate": evaluate_translator,
        "transcribe": evaluate_transcriber,
    }[spec.task]
    metrics, plots = scorer(spec, Path(prepared.features_dir), Path(trained["model_path"]), run_dir / PLOTS)
    uri = tracking.tracking_uri(root)
    with tracking.answering(uri, f"evaluating {spec.name}", f"the scores and plots are kept in {run_dir}"):
        tracking.log_summary_metrics(uri, trained["run_id"], {f"test_{k}": v for k, v in metrics.items()})
        tracking.log_artifacts(uri, trained["run_id"], plots, "plots")
        record = read_record(run_dir / PLOTS)
        if record is not None:
            skipped = " (skipped)" if "skipped" in record else ""
            tracking.set_tags(uri, trained["run_id"], {BASELINE_TAG: record["method"] + skipped})
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def register(prepared: Prepared, trained: dict[str, Any], root: Path) -> dict[str, str]:
    """Log the pyfunc model (state dict + spec + preprocessing), register it under the pipeline's name, and copy the
    run's lineage (git commit, data version, flow run, spec) onto the model version.

    A run registers once: when its version exists already (a cached training whose register task missed its cache:
    another result store, a changed schedule, a retry after MLflow failed to answer), that version is returned and
    no new one is added.
    """
    uri = tracking.tracking_uri(root)
    kept = (
        f"the trained model is kept in {trained['run_dir']}; once MLflow answers, `lstmflow run "
        f"{prepared.pipeline.name}` registers it without training again"
    )
    with tracking.answering(uri, f"registering {prepared.pipeline.name}", kept):
        return _register(prepared, trained, uri)


def _register(prepared: Prepared, trained: dict[str, Any], uri: str) -> dict[str, str]:
    from lstmflow.serving.predictors import write_bundle
    from lstmflow.tracking import registry, runs

    registered = registry.version_of_run(uri, prepared.pipeline.name, trained["run_id"])
    if registered is None:
        bundle = Path(trained["run_dir"]) / "bundle"
        model_path = Path(trained["model_path"])
        predictor, example = write_bundle(prepared.spec, Path(prepared.features_dir), model_path, bundle)
        registered = tracking.register_model(
            uri, trained["run_id"], prepared.pipeline.name, bundle, example, predictor.predict(example)
        )
    runs.tag_version_lineage(uri, prepared.pipeline.name, registered["version"])
    tracking.end_run(uri, trained["run_id"])
    return registered
