"""Faults the user must fix are named once and never retried, and leave nothing half-done: a data error inside the
DVC stage, a full or read-only folder, a child's error file naming a foreign module; an unchanged pipeline never
adds a model version; skipped data files are counted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CORPUS_LINE, TINY_PIPELINES, make_project, mlflow_client
from prefect.states import Failed

from lstmflow.errors import ConfigError, DataError, StorageError, TrainingError
from tasks.policy import retry_unless_user_error

LM_PIPELINES = (
    TINY_PIPELINES
    + """\
  lm:
    task: language_model
    data: {kind: corpus, path: data/corpus.txt, sequence_length: 12}
    model:
      layers:
        - embedding: {dim: 8}
        - lstm: {units: 16, return_sequences: true}
        - dense: {activation: softmax}
"""
)


@pytest.mark.parametrize("error", [ConfigError("bad key"), DataError("bad cell"), StorageError("disk full")])
def test_what_the_user_must_fix_is_never_retried(error: Exception) -> None:
    assert retry_unless_user_error(None, None, Failed(data=error)) is False


def test_a_crash_is_retried() -> None:
    assert retry_unless_user_error(None, None, Failed(data=TrainingError("killed"))) is True


def test_a_failed_features_stage_raises_its_data_error_alone_and_keeps_the_previous_features(tmp_path: Path) -> None:
    from lstmflow.ops.steps import prepare

    root = make_project(tmp_path / "project", LM_PIPELINES)
    (root / "data" / "corpus.txt").write_text(CORPUS_LINE * 40)
    features = Path(prepare(root / "pipelines.yaml", "lm", []).features_dir)
    before = {path.name: path.read_bytes() for path in features.iterdir()}
    (root / "data" / "corpus.txt").write_text("ab")
    with pytest.raises(DataError) as raised:  # a DataError: the prepare task does not retry it
        prepare(root / "pipelines.yaml", "lm", [])
    message = str(raised.value)
    assert message.startswith("pipelines.lm.data: the corpus is too short") and message.count("too short") == 1
    assert "dvc" not in message.lower() and "last successful run are kept" in message
    assert {path.name: path.read_bytes() for path in features.iterdir()} == before


def test_a_child_error_file_never_imports_a_module_outside_lstmflow(tmp_path: Path) -> None:
    """The error file is data: a module it names is not imported (that would run its code), whatever it claims."""
    from lstmflow.training.launch import ERROR_FILE, _child_error

    (tmp_path / "planted.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\nclass Boom(Exception): ...\n")
    sys.path.insert(0, str(tmp_path))
    try:
        record = {"type": "planted:Boom", "message": "boom", "args": ["boom"], "state": {}, "traceback": ""}
        (tmp_path / ERROR_FILE).write_text(json.dumps(record))
        error = _child_error(tmp_path, 0, 123, 1)
    finally:
        sys.path.remove(str(tmp_path))
    assert isinstance(error, TrainingError) and "Boom: boom" in str(error)
    assert not (tmp_path / "ran").exists() and "planted" not in sys.modules


def test_lstmflow_errors_from_a_child_error_file_are_raised_as_themselves(tmp_path: Path) -> None:
    from lstmflow.training.launch import ERROR_FILE, _child_error

    record = {"type": "lstmflow.errors:DataError", "message": "bad", "args": ["bad"], "state": {}, "traceback": ""}
    (tmp_path / ERROR_FILE).write_text(json.dumps(record))
    error = _child_error(tmp_path, 0, 123, 1)
    assert type(error) is DataError and str(error) == "bad"


def test_skipped_files_are_counted_from_the_features(tmp_path: Path) -> None:
    from test_images import images_spec, make_folder

    from lstmflow.data.images import prepare_image_features
    from lstmflow.ops.steps import skipped_files

    folder = make_folder(tmp_path / "images")
    (folder / "bars" / "notes.txt").write_text("not an image")
    prepare_image_features(images_spec(folder), tmp_path / "features", "pipelines.pics.data")
    assert skipped_files(tmp_path / "features") == 1
    assert skipped_files(tmp_path / "nothing") == 0


def unshare_works() -> bool:
    done = subprocess.run(["unshare", "-U", "-r", "-m", "true"], capture_output=True, check=False)
    return done.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux" or not unshare_works(), reason="needs Linux user and mount namespaces")
@pytest.mark.parametrize(("options", "reason"), [("size=40k", "no space left"), ("ro", "read-only filesystem")])
def test_a_full_or_read_only_runs_folder_is_exit_2_with_its_path(tmp_path: Path, options: str, reason: str) -> None:
    """`runs/` on a tiny (or read-only) filesystem of its own: exit 2, one line naming the path, nothing retried,
    the MLflow run FAILED, no temporary file left."""
    root = make_project(tmp_path / "project")
    (root / "runs").mkdir()
    lstmflow = Path(sys.executable).parent / "lstmflow"
    script = f"mount -t tmpfs -o {options} tmpfs runs && exec {lstmflow} run tiny"
    done = subprocess.run(
        ["unshare", "-U", "-r", "-m", "sh", "-c", script],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr
    assert last.startswith(f"error: cannot write {root / 'runs'}") and reason in last and "run the same command" in last
    assert done.stderr.count("Task run 'train") <= 1, "not retried"
    client = mlflow_client(root)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    assert all(run.info.status == "FAILED" for run in runs)


@pytest.mark.slow
def test_an_unchanged_pipeline_never_adds_a_model_version(tmp_path: Path, prefect_harness: None) -> None:
    """A schedule added to pipelines.yaml changes nothing that trains: the training is reused from the cache, and
    although the register task misses its cache (its key holds the whole spec, as it would with another result
    store), the run's existing version is returned, not a second one made."""
    from flows.pipeline import run_pipeline

    root = make_project(tmp_path / "project")
    config = str(root / "pipelines.yaml")
    first = run_pipeline(pipeline="tiny", config=config)
    (root / "pipelines.yaml").write_text(TINY_PIPELINES + "    schedule: {interval: 1h}\n")
    second = run_pipeline(pipeline="tiny", config=config)
    assert second["cached"] and second["mlflow_run_id"] == first["mlflow_run_id"]
    assert second["model_version"] == first["model_version"] == "1"
    client = mlflow_client(root)
    assert [str(version.version) for version in client.search_model_versions("name = 'tiny'")] == ["1"]
    metrics = client.get_run(first["mlflow_run_id"]).data.metrics
    assert metrics["data_skipped_files"] == 0 and first["data_skipped_files"] == 0
