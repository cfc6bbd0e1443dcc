"""The whole path through real Prefect, DVC and MLflow (SQLite) on a tiny project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import REPO, git, make_project, mlflow_client

pytestmark = pytest.mark.slow


def dvc(root: Path, *args: str) -> str:
    """DVC as a user runs it, with the virtual environment's scripts first on PATH (stage commands need them)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, check=True, capture_output=True, text=True, env=env
    ).stdout


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> tuple[Path, dict[str, Any]]:
    from flows.pipeline import run_pipeline

    root = make_project(tmp_path_factory.mktemp("flow") / "project")
    return root, run_pipeline(pipeline="tiny", config=str(root / "pipelines.yaml"))


def test_run_logs_params_epoch_metrics_and_test_metrics(first_run: tuple[Path, dict[str, Any]]) -> None:
    root, result = first_run
    run = mlflow_client(root).get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "3" and run.data.params["model.layers.0.lstm.units"] == "8"
    history = mlflow_client(root).get_metric_history(result["mlflow_run_id"], "train_loss")
    assert [m.step for m in history] == list(range(1, result["epochs_run"] + 1))
    for key in ("rmse", "mae", "smape", "mase", "naive_rmse", "naive_mae"):
        assert np.isfinite(run.data.metrics[f"test_{key}"])
        assert result["metrics"][key] == pytest.approx(run.data.metrics[f"test_{key}"])
    artifacts = {a.path for a in mlflow_client(root).list_artifacts(result["mlflow_run_id"], "plots")}
    assert artifacts == {"plots/forecast.png", "plots/loss_curves.png"}


def test_lineage_tags_point_at_code_data_and_flow_run(first_run: tuple[Path, dict[str, Any]]) -> None:
    root, result = first_run
    tags = mlflow_client(root).get_run(result["mlflow_run_id"]).data.tags
    assert tags["lstmflow.git_commit"].split("-")[0] == git(root, "rev-parse", "HEAD").strip()
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["features@tiny"]
    assert tags["lstmflow.data_md5"] == lock["deps"][0]["md5"]
    assert tags["lstmflow.features_md5"] == lock["outs"][0]["md5"] == result["data_version"]
    assert tags["lstmflow.prefect_flow_run_id"] == result["flow_run_id"]
    assert tags["lstmflow.lstm_kernels"] == "torch"  # auto: full-length forecast windows train fastest in nn.LSTM


def test_registered_model_loads_and_predicts(first_run: tuple[Path, dict[str, Any]]) -> None:
    import pandas as pd

    from lstmflow.tracking import load_model, tracking_uri

    root, result = first_run
    assert result["model_uri"] == "models:/tiny/1"
    model = load_model(tracking_uri(root), result["model_uri"])
    history = pd.read_csv(root / "data" / "tiny.csv")
    forecast = model.predict(history[["value"]])  # the series from its start: ETS, averaged in, reads all of it
    assert list(forecast.columns) == ["step", "value"] and len(forecast) == 6
    assert forecast["value"].between(history["value"].min() - 5, history["value"].max() + 5).all()


def test_bad_requests_are_invalid_parameters_not_server_errors(first_run: tuple[Path, dict[str, Any]]) -> None:
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from lstmflow.serving.predictors import BadRequest, load_predictor
    from lstmflow.tracking import load_model, tracking_uri

    root, result = first_run
    model = load_model(tracking_uri(root), result["model_uri"])
    history = pd.read_csv(root / "data" / "tiny.csv")[["value"]]
    bad = {  # MLflow's signature check answers the first two, lstmflow's own checks the last
        "missing column": (history.rename(columns={"value": "sales"}).tail(36), r"missing inputs \['value'\]"),
        "not numbers": (history.tail(36).astype(str).replace({str(history["value"].iloc[-1]): "n/a"}), "value"),
        "too few rows": (history.tail(3), "has 3 rows; this model needs the last "),
    }
    for name, (frame, message) in bad.items():
        with pytest.raises(MlflowException, match=message) as caught:
            model.predict(frame)
        assert caught.value.get_http_status_code() == 400, name

    predictor = load_predictor(root / "runs" / "tiny" / result["flow_run_id"] / "bundle")  # no MLflow in front
    with pytest.raises(BadRequest, match=r"lacks column\(s\) \['value'\]; it has \['sales'\]"):
        predictor.predict(history.rename(columns={"value": "sales"}).tail(36))
    with pytest.raises(
        BadRequest, match=r"column .value., row \d+: a missing value \(NaN\); this model takes finite numbers"
    ):
        predictor.predict(history.tail(36).assign(value=np.nan))


def test_mlflow_models_serve_answers_400_to_a_bad_request_and_keeps_serving(
    first_run: tuple[Path, dict[str, Any]],
) -> None:
    import socket
    import time
    import urllib.error
    import urllib.request

    import pandas as pd

    root, result = first_run
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", result["model_uri"], "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def post(frame: pd.DataFrame) -> tuple[int, str]:
        body = json.dumps({"dataframe_split": frame.to_dict(orient="split", index=False)}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-3000:]
                time.sleep(0.5)
        history = pd.read_csv(root / "data" / "tiny.csv")[["value"]]
        status, text = post(history.tail(3))
        assert status == 400 and "this model needs the last " in text
        status, text = post(history)  # the series from its start: the network reads its end, ETS all of it
        assert status == 200 and len(json.loads(text)["predictions"]) == 6
    finally:
        server.terminate()
        server.wait(30)


def test_dvc_repro_skips_unchanged_stages(first_run: tuple[Path, dict[str, Any]]) -> None:
    root, _ = first_run
    output = dvc(root, "repro", "features@tiny")
    assert "Stage 'features@tiny' didn't change, skipping" in output
    assert "Running stage" not in output
    assert (root / ".dvc-storage").is_dir(), "the local remote is created and pushed to on first use"


def test_an_unchanged_stage_is_pushed_and_skipped_without_a_dvc_process(
    first_run: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lstmflow.ops import versioning

    root, _ = first_run
    features_md5 = versioning.stage_hashes(root, "features@tiny")["features_md5"]
    remote = root / ".dvc-storage" / "files" / "md5" / features_md5[:2] / features_md5[2:]
    assert remote.is_file()  # the first run's push, made in-process, reached the local remote
    processes: list[tuple[str, ...]] = []
    monkeypatch.setattr(versioning, "dvc", lambda _root, *args: processes.append(args) or "")
    versioning.repro(root, "features@tiny")
    versioning.push(root, "features@tiny")
    assert processes == []
    (root / "params.yaml").write_text((root / "params.yaml").read_text().replace("window: 24", "window: 25"))
    try:
        versioning.repro(root, "features@tiny")  # a changed param: DVC's own repro, here recorded instead
        assert processes == [("repro", "features@tiny")]
    finally:
        (root / "params.yaml").write_text((root / "params.yaml").read_text().replace("window: 25", "window: 24"))


def test_cached_rerun_starts_no_training(first_run: tuple[Path, dict[str, Any]]) -> None:
    from flows.pipeline import run_pipeline

    root, result = first_run
    runs_before = sorted((root / "runs" / "tiny").iterdir())
    experiment = mlflow_client(root).get_experiment_by_name("tiny")
    mlflow_runs_before = len(mlflow_client(root).search_runs([experiment.experiment_id]))
    again = run_pipeline(pipeline="tiny", config=str(root / "pipelines.yaml"))
    assert again["cached"] is True
    assert again["mlflow_run_id"] == result["mlflow_run_id"]
    assert sorted((root / "runs" / "tiny").iterdir()) == runs_before
    assert len(mlflow_client(root).search_runs([experiment.experiment_id])) == mlflow_runs_before


def test_changed_override_trains_again_and_force_bypasses_cache(first_run: tuple[Path, dict[str, Any]]) -> None:
    from flows.pipeline import run_pipeline

    root, result = first_run
    changed = run_pipeline(pipeline="tiny", epochs=2, config=str(root / "pipelines.yaml"))
    assert changed["cached"] is False and changed["mlflow_run_id"] != result["mlflow_run_id"]
    assert changed["epochs_run"] == 2
    forced = run_pipeline(pipeline="tiny", epochs=2, force=True, config=str(root / "pipelines.yaml"))
    assert forced["cached"] is False and forced["mlflow_run_id"] != changed["mlflow_run_id"]
    changed_version = int(changed["model_uri"].rsplit("/", 1)[1])
    assert forced["model_uri"] == f"models:/tiny/{changed_version + 1}", "a forced run registers a new version"


def test_every_shipped_pipeline_runs_through_the_flow(tmp_path: Path, prefect_harness: None) -> None:
    """The demo pipelines, on their real data built by the DVC stage, one epoch each; each registered model predicts."""
    import base64

    import pandas as pd

    from flows.pipeline import run_pipeline
    from lstmflow.data.images import load_image
    from lstmflow.tracking import load_model, tracking_uri

    root = make_project(tmp_path / "demo", pipelines=(REPO / "pipelines.yaml").read_text())
    requests = {
        "sunspots": lambda raw: pd.read_csv(raw / "sunspots.csv")[["sunactivity"]].tail(30),
        "co2": lambda raw: pd.read_csv(raw / "co2.csv")[["co2"]].interpolate().tail(60),
        "order": lambda raw: pd.read_csv(raw / "order_sequences.csv").query("series_id in ['s0000', 's0001']")[
            ["series_id", "step", "x"]
        ],
        "digits": lambda raw: pd.DataFrame(  # the served signature takes pixel columns, row by row
            [load_image(raw / "digits" / d / f"000{d}.png", grayscale=True).reshape(-1) for d in ("3", "7")]
        ).add_prefix("pixel_"),
        "agents": lambda raw: pd.read_csv(raw / "agents.csv")[["text"]].head(2),
        "chirps": lambda raw: pd.DataFrame(
            {"path": [str(raw / "chirps" / "rising" / "000.wav"), str(raw / "chirps" / "falling" / "000.wav")]}
        ),
        "shapes": lambda raw: pd.DataFrame(  # one clip by path, one by its bytes
            {
                "path": [str(raw / "shapes" / "left" / "000.mp4"), None],
                "video_base64": [None, base64.b64encode((raw / "shapes" / "up" / "000.mp4").read_bytes()).decode()],
            }
        ),
        "pydocs": lambda raw: pd.DataFrame(
            {"prompt": ["The if statement", "A class"], "tokens": [30, 5], "temperature": [0.8, 0.0], "seed": [1, 1]}
        ),
        "numbers": lambda raw: pd.DataFrame({"text": ["forty-two", "one hundred and seven"]}),
        "spoken": lambda raw: (
            pd.read_csv(raw / "speech" / "manifest.csv").head(2)[["path"]].map(lambda path: str(raw / "speech" / path))
        ),
    }
    baselines = {
        "forecast": {"naive_mae", "mase"},
        "classify": {"majority_accuracy", "macro_f1"},
        "language_model": {"unigram_perplexity", "perplexity"},
        "translate": {"copy_chrf", "chrf", "baseline_chrf"},
        "transcribe": {"frequent_cer", "cer", "wer"},
    }
    for name, pipeline in yaml.safe_load((REPO / "pipelines.yaml").read_text())["pipelines"].items():
        result = run_pipeline(pipeline=name, epochs=1, config=str(root / "pipelines.yaml"))
        assert result["model_uri"] == f"models:/{name}/1"
        assert (
            baselines[pipeline["task"]] <= set(result["metrics"])
            and json.loads(json.dumps(result, default=str))["pipeline"] == name
        )
        prediction = load_model(tracking_uri(root), result["model_uri"]).predict(requests[name](root / "data" / "raw"))
        assert "MLFLOW_TRACKING_URI" not in os.environ, "a project's store must not leak into the process"
        if pipeline["task"] == "language_model":  # a character model: one character per token
            assert list(prediction["prompt"]) == ["The if statement", "A class"] and prediction[
                "text"
            ].str.len().tolist() == [30, 5]
        elif pipeline["task"] == "classify":
            assert len(prediction) == 2 and {"label", "key"} <= set(prediction.columns)
            probabilities = prediction.filter(like="prob_").to_numpy()
            assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        elif pipeline["task"] == "translate":  # one epoch: some French text, whatever it says
            assert list(prediction["text"]) == ["forty-two", "one hundred and seven"]
            assert prediction["translation"].map(type).eq(str).all()
        elif pipeline["task"] == "transcribe":
            assert len(prediction) == 2 and prediction["text"].map(type).eq(str).all()
        else:
            horizon = {"sunspots": 1, "co2": 12}[
                name
            ]  # sunspots' is set in pipelines.yaml; co2's resolves to its season
            assert list(prediction["step"]) == list(range(1, horizon + 1)) and prediction.notna().all().all()


def test_killed_training_is_retried_from_its_checkpoint_in_the_same_mlflow_run(
    tmp_path: Path, prefect_harness: None
) -> None:
    """SIGKILL the training child once a checkpoint exists: Prefect's retry resumes it and continues the run."""
    import signal
    import threading

    import psutil

    from flows.pipeline import run_pipeline

    root = make_project(tmp_path / "kill")

    def kill_first_training_child() -> None:
        while not list((root / "runs").glob("tiny/*/checkpoints/last.pt")):
            threading.Event().wait(0.005)
        for child in psutil.Process().children(recursive=True):
            if "spawn_main" in " ".join(child.cmdline()):
                child.send_signal(signal.SIGKILL)
                return

    killer = threading.Thread(target=kill_first_training_child, daemon=True)
    killer.start()
    result = run_pipeline(
        pipeline="tiny",
        epochs=40,
        overrides={"train.early_stopping.patience": 100},
        config=str(root / "pipelines.yaml"),
    )
    killer.join(timeout=5)
    [run_dir] = (root / "runs" / "tiny").iterdir()
    fit_result = json.loads((run_dir / "fit_result.json").read_text())
    assert fit_result["resumed_from_epoch"] is not None and fit_result["epochs_run"] == 40
    runs = mlflow_client(root).search_runs([mlflow_client(root).get_experiment_by_name("tiny").experiment_id])
    assert [r.info.run_id for r in runs] == [result["mlflow_run_id"]] and runs[0].info.status == "FINISHED"
    steps = sorted({m.step for m in mlflow_client(root).get_metric_history(result["mlflow_run_id"], "val_loss")})
    assert steps == list(range(1, 41)), "every epoch logged once to the one run, none skipped"


def test_prepare_upgrades_params_written_by_an_older_lstmflow(tiny_project: Path) -> None:
    """An entry without the stage inputs (as lstmflow wrote them before given splits) must not break dvc.yaml."""
    from lstmflow.ops.steps import prepare

    config = tiny_project / "pipelines.yaml"
    config.write_text(config.read_text() + "  other:\n    data: {path: data/tiny.csv, target: value}\n")
    (tiny_project / "params.yaml").write_text(  # "other" was prepared by an older lstmflow; DVC parses its entry too
        "pipelines:\n  other:\n    code_version: old\n    data: {path: data/tiny.csv, split: {val: 0.15, test: 0.15}}\n"
    )
    prepared = prepare(config, "tiny", [])
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())["pipelines"]
    assert params["other"]["inputs"] == {"train": "data/tiny.csv", "val": "data/tiny.csv", "test": "data/tiny.csv"}
    assert Path(prepared.features_dir).is_dir() and len(prepared.data_md5) == 32
