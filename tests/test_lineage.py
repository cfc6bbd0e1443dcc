"""Comparing a pipeline's runs, the lineage a run records, and `lstmflow reproduce`, through real Prefect, DVC and
MLflow (SQLite) on the tiny project: two runs of one pipeline with different overrides, then a reproduction."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_PIPELINES, git, make_project, mlflow_client, run_lstmflow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_runs(
    tmp_path_factory: pytest.TempPathFactory, prefect_harness: None
) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The tiny pipeline as declared (3 epochs), then with other epochs and learning rate: two runs, two versions."""
    from flows.pipeline import run_pipeline

    # A 3-epoch model loses to seasonal naive; lineage is about versions, not about the baseline rule of the gate.
    pipelines = TINY_PIPELINES.replace(
        "    evaluate: {season: 12}\n", "    evaluate: {season: 12}\n    promote: {beat_baseline: false}\n"
    )
    assert pipelines != TINY_PIPELINES
    root = make_project(tmp_path_factory.mktemp("lineage") / "project", pipelines)
    config = str(root / "pipelines.yaml")
    first = run_pipeline(pipeline="tiny", config=config)
    second = run_pipeline(pipeline="tiny", epochs=2, learning_rate=0.01, config=config)
    return root, first, second


def test_every_run_of_a_pipeline_logs_the_same_params_and_metric_names(
    two_runs: tuple[Path, dict[str, Any], dict[str, Any]],
) -> None:
    """What MLflow's compare view needs to line runs up: the same keys, different values where the runs differ."""
    root, first, second = two_runs
    runs = [mlflow_client(root).get_run(result["mlflow_run_id"]).data for result in (first, second)]
    assert set(runs[0].params) == set(runs[1].params)
    # The gate's figures (gate_*) exist only where there was a champion to compare with: not on the first run.
    metric_names = [{key for key in run.metrics if not key.startswith("gate_")} for run in runs]
    assert metric_names[0] == metric_names[1] >= {"test_mae", "test_naive_mae", "epochs_run", "val_loss"}
    differing = {key for key in runs[0].params if runs[0].params[key] != runs[1].params[key]}
    assert differing == {"train.epochs", "train.optimizer.lr"}


def test_a_run_records_its_resolved_spec_and_the_version_its_lineage(
    two_runs: tuple[Path, dict[str, Any], dict[str, Any]],
) -> None:
    from lstmflow.config import validate_pipeline
    from lstmflow.tracking.runs import SPEC_ARTIFACT, tag_version_lineage

    root, first, _ = two_runs
    run = mlflow_client(root).get_run(first["mlflow_run_id"])
    spec = json.loads(
        Path(
            mlflow_client(root).download_artifacts(run.info.run_id, SPEC_ARTIFACT, str(root / "downloaded"))
        ).read_text()
    )
    assert spec["data"]["path"] == "data/tiny.csv", "paths relative to the project, so another clone reads its own copy"
    assert spec["data"]["window"] == 24 and spec["evaluate"]["season"] == 12 and spec["train"]["epochs"] == 3
    assert validate_pipeline("tiny", spec, root).spec_hash() == run.data.tags["lstmflow.spec_hash"]

    tags = (
        mlflow_client(root).get_model_version("tiny", first["model_version"]).tags
    )  # copied there by the register step
    assert (
        tag_version_lineage(f"sqlite:///{root / 'mlflow.db'}", "tiny", first["model_version"]).items() <= tags.items()
    )
    assert tags["lstmflow.git_commit"].split("-")[0] == git(root, "rev-parse", "HEAD").strip()
    assert tags["lstmflow.data_md5"] == first["data_md5"] and tags["lstmflow.features_md5"] == first["data_version"]
    assert (
        tags["lstmflow.prefect_flow_run_id"] == first["flow_run_id"]
        and tags["lstmflow.run_id"] == first["mlflow_run_id"]
    )
    assert tags["lstmflow.spec"].endswith(f"{first['mlflow_run_id']}/artifacts/{SPEC_ARTIFACT}")


def test_compare_ranks_the_runs_by_the_test_metric_beside_the_baseline(
    two_runs: tuple[Path, dict[str, Any], dict[str, Any]],
) -> None:
    root, first, second = two_runs
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lstmflow"), "compare", "tiny"],
        cwd=root, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"}, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    best, worst = sorted((first, second), key=lambda result: result["metrics"]["mae"])
    rows = [
        line for line in done.stdout.splitlines() if first["mlflow_run_id"] in line or second["mlflow_run_id"] in line
    ]
    assert [best["mlflow_run_id"] in rows[0], worst["mlflow_run_id"] in rows[1]] == [True, True], done.stdout
    header = done.stdout[: done.stdout.index(rows[0])]
    assert (
        "mae (lower is better)" in header
        and "naive mae" in header
        and "train.epochs" in header
        and "train.optimizer.lr" in header
    )
    assert "train.batch_size" not in header, "only the params that differ get a column"
    cells = [cell.strip() for cell in rows[0].split("│")]
    assert f"{best['metrics']['mae']:.4g}" in cells and f"{best['metrics']['naive_mae']:.4g}" in cells
    assert str(best["epochs_run"]) in cells and any(cell.startswith(f"v{best['model_version']}") for cell in cells)
    assert "@champion" in done.stdout, "the gate made a version the champion; compare shows which"
    wrong = subprocess.run(
        [str(Path(sys.executable).parent / "lstmflow"), "compare", "tiny", "--metric", "accuracy"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert wrong.returncode == 2 and "a forecast pipeline is ranked by one of mae, rmse, smape, mase" in wrong.stderr


def test_reproduce_trains_the_recorded_spec_again_with_the_same_metrics(
    two_runs: tuple[Path, dict[str, Any], dict[str, Any]],
) -> None:
    """Today's pipelines.yaml says 3 epochs; the second run recorded 2 and lr 0.01, and that is what is reproduced."""
    from flows.reproduce import reproduce_run

    root, _, second = two_runs
    result = reproduce_run(run_id=second["mlflow_run_id"], config=str(root / "pipelines.yaml"))
    assert result["mlflow_run_id"] != second["mlflow_run_id"] and result["epochs_run"] == 2
    # Same seed, data, code and thread count on CPU: the same float operations in the same order, and the metrics
    # came out bit-identical here. 1e-6 relative (a few float32 ulps of the model's outputs, far below any real
    # change: one more epoch moves mae by > 1e-2) forgives only a different summation order in another BLAS build.
    assert result["metrics"].keys() == second["metrics"].keys()
    for key, value in second["metrics"].items():
        assert result["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert result["recorded"] == pytest.approx(second["metrics"])
    run = mlflow_client(root).get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["lstmflow.reproduces"] == second["mlflow_run_id"]
    assert run.data.params == mlflow_client(root).get_run(second["mlflow_run_id"]).data.params
    assert run.data.tags["lstmflow.prefect_flow_run_id"] == result["flow_run_id"] != second["flow_run_id"]


def test_reproduce_on_other_data_names_the_commit_to_check_out(
    two_runs: tuple[Path, dict[str, Any], dict[str, Any]],
) -> None:
    from flows.reproduce import reproduce_run
    from lstmflow.errors import DataError

    root, first, _ = two_runs
    csv = root / "data" / "tiny.csv"
    original = csv.read_text()
    csv.write_text(original.replace(original.splitlines()[5].split(",")[1], "99.0", 1))
    commit = git(root, "rev-parse", "HEAD").strip()
    try:
        with pytest.raises(DataError, match=re.escape(f"`git checkout {commit} && dvc checkout`")) as refused:
            reproduce_run(run_id=first["mlflow_run_id"], config=str(root / "pipelines.yaml"))
        assert f"data md5 {first['data_md5']}, this workspace has" in str(refused.value)
    finally:
        csv.write_text(original)
    experiment = mlflow_client(root).get_experiment_by_name("tiny")
    assert not [
        run
        for run in mlflow_client(root).search_runs([experiment.experiment_id])
        if run.data.tags.get("lstmflow.reproduces") == first["mlflow_run_id"]
    ]


def test_reproduce_from_the_command_line_refuses_an_unknown_run_before_any_flow(
    two_runs: tuple[Path, dict[str, Any], dict[str, Any]],
) -> None:
    root, _, _ = two_runs
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lstmflow"), "reproduce", "0" * 32],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and f"no MLflow run '{'0' * 32}'" in done.stderr and "Traceback" not in done.stderr


def test_the_gate_names_its_decision_and_people_promote_and_roll_back(
    two_runs: tuple[Path, dict[str, Any], dict[str, Any]],
) -> None:
    """The first version became the champion by the gate; a person moves the alias and takes the move back."""
    root, first, second = two_runs
    assert first["gate"]["decision"] == "promoted" and "first version" in first["gate"]["reason"]
    assert (
        second["gate"]["decision"] in {"promoted", "kept"}
        and second["gate"]["champion_version"] == first["model_version"]
    )
    champion = str(mlflow_client(root).get_model_version_by_alias("tiny", "champion").version)
    other = str(first["model_version"] if champion == str(second["model_version"]) else second["model_version"])

    promoted = run_lstmflow(root, "promote", "tiny", "--version", other, "--reason", "a person knows better")
    assert promoted.returncode == 0, promoted.stderr[-2000:]
    assert f"tiny@champion: now version {other} (was version {champion})" in promoted.stdout
    assert str(mlflow_client(root).get_model_version_by_alias("tiny", "champion").version) == other
    assert (
        mlflow_client(root).get_model_version("tiny", other).tags["lstmflow.alias.champion.reason"]
        == "a person knows better"
    )

    rolled = run_lstmflow(root, "rollback", "tiny")
    assert rolled.returncode == 0, rolled.stderr[-2000:]
    assert f"back to version {champion} (was version {other})" in rolled.stdout
    assert str(mlflow_client(root).get_model_version_by_alias("tiny", "champion").version) == champion

    missing = run_lstmflow(root, "promote", "tiny", "--version", "9")
    assert (
        missing.returncode == 2
        and "model 'tiny' has no version 9" in missing.stderr
        and "Traceback" not in missing.stderr
    )
