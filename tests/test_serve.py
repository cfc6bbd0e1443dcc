"""Serving raw inputs: `lstmflow serve` and `mlflow models serve` over HTTP, and `lstmflow predict` on the command line.

One project holds a forecast, a text and an audio pipeline, each trained for one epoch and registered as the flow
registers it (the pyfunc with its preprocessing). Three real model servers on free loopback ports answer requests
with raw inputs: recent series rows, texts, audio files. Bad requests get a 400 with the reason, and every server
answers a good request afterwards. (tests/test_flow.py covers `mlflow models serve` of a forecast through the flow.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import free_port, make_project

PIPELINES = """\
defaults:
  train: {epochs: 1, batch_size: 16, seed: 0}
pipelines:
  tiny:
    data: {path: data/tiny.csv, time_column: month, target: value, window: 24, horizon: 6, transform: none}
    model: {layers: [{lstm: {units: 8}}, {dense: {}}]}
    evaluate: {season: 12}
  agents:
    task: classify
    data: {kind: text, path: data/agents.csv, tokenizer: {kind: word}, max_length: 16}
    model: {layers: [{embedding: {dim: 8}}, {lstm: {units: 8}}, {dense: {activation: softmax}}]}
  chirps:
    task: classify
    data: {kind: audio, path: data/chirps, n_mels: 16, workers: 1}
    model: {layers: [{lstm: {units: 8}}, {dense: {activation: softmax}}]}
"""
BIN = Path(sys.executable).parent
ANIMALS = {"cat", "dog", "fox"}


def register(root: Path, name: str) -> dict[str, str]:
    """Features, a one-epoch fit and the registered pyfunc, as the flow makes them, minus DVC and the training child
    process (they change nothing in what is served, and cost seconds each)."""
    from lstmflow.config import Config
    from lstmflow.data.kinds import build_features
    from lstmflow.ops import steps
    from lstmflow.ops.probe import probe
    from lstmflow.training.fit import fit
    from lstmflow.training.loggers import ListLogger

    spec = probe(Config.load(root / "pipelines.yaml").pipeline(name, []), root)
    features = root / "features" / name
    build_features(
        spec.data, spec.evaluate.season, features, f"pipelines.{name}.data", cache_dir=root / ".lstmflow" / "cache"
    )
    prepared = steps.Prepared(spec.model_dump(mode="json"), str(features), "no-dvc", "no-dvc")
    run_dir = root / "runs" / name
    result = fit(spec, features, run_dir, ListLogger(), progress=False)
    run_id = steps.start_tracked_run(prepared, root, None)
    return steps.register(prepared, {"run_id": run_id, "run_dir": str(run_dir), "model_path": result.model_path}, root)


@dataclass(frozen=True)
class Server:
    """A model server in its own process group, its log in a file."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def post(self, body: Any, content_type: str = "application/json") -> tuple[int, Any]:
        """POST ``body`` (JSON-encoded unless bytes) to /invocations; the status and the decoded answer."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/invocations", data, {"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            text = error.read().decode()
            try:
                return error.code, json.loads(text)
            except json.JSONDecodeError:
                return error.code, {"message": text}

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server on port {self.port} exited: {self.log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"server on port {self.port} did not answer /ping: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def start(root: Path, name: str, command: list[str]) -> Server:
    port = free_port()
    log = root / f"{name}-server.log"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
    }
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=root,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(process, port, log)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Server]]]:
    """tiny via `lstmflow serve` (no alias set: the latest version), chirps via `lstmflow serve chirps@champion`,
    agents via a plain `mlflow models serve -m models:/agents@champion`; stopped at the end."""
    from mlflow import MlflowClient

    from lstmflow.data.demo import _agent_texts, build_audio_demo

    root = make_project(tmp_path_factory.mktemp("serve") / "project", PIPELINES)
    _agent_texts(texts_per_class=20).to_csv(root / "data" / "agents.csv", index=False)
    build_audio_demo(root / "data" / "chirps", clips_per_class=6, seconds=(0.3, 0.5))
    for name in ("tiny", "agents", "chirps"):
        assert register(root, name)["version"] == "1"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for name in ("agents", "chirps"):
        MlflowClient(uri, uri).set_registered_model_alias(name, "champion", "1")
    servers = {
        "tiny": start(root, "tiny", [str(BIN / "lstmflow"), "serve", "tiny"]),
        "chirps": start(root, "chirps", [str(BIN / "lstmflow"), "serve", "chirps@champion"]),
        "agents": start(root, "agents", [sys.executable, "-m", "mlflow", "models", "serve",
                                         "-m", "models:/agents@champion",
                                         "--env-manager", "local", "--host", "127.0.0.1"]),
    }  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        for server in servers.values():
            server.wait_ready(deadline)
        yield root, servers
    finally:
        for server in servers.values():
            server.stop()
    assert all(server.process.poll() is not None for server in servers.values())


def local_model(root: Path, name: str):
    from lstmflow.tracking import load_model

    return load_model(f"sqlite:///{root / 'mlflow.db'}", f"models:/{name}/1")


def records(frame: pd.DataFrame) -> dict[str, Any]:
    return {"dataframe_records": json.loads(frame.to_json(orient="records"))}


@pytest.mark.slow
def test_lstmflow_serve_forecasts_recent_rows_in_original_units(served: tuple[Path, dict[str, Server]]) -> None:
    root, servers = served
    assert (
        "no @champion alias yet" in servers["tiny"].log.read_text()
        and "models:/tiny/1" in servers["tiny"].log.read_text()
    )
    history = pd.read_csv(root / "data" / "tiny.csv")
    recent = history[["month", "value"]].tail(30)  # more rows than the window, an extra column: both allowed
    status, answer = servers["tiny"].post(records(recent))
    assert status == 200, answer
    forecast = pd.DataFrame(answer["predictions"])
    assert list(forecast.columns) == ["step", "value"] and list(forecast["step"]) == [1, 2, 3, 4, 5, 6]
    local = local_model(root, "tiny").predict(recent[["value"]])
    assert np.allclose(forecast["value"], local["value"], rtol=1e-5)
    level, spread = history["value"].tail(24).mean(), history["value"].std()
    assert (abs(forecast["value"] - level) < 3 * spread).all(), "a forecast in the data's units, not scaled ones"


@pytest.mark.slow
def test_mlflow_models_serve_labels_raw_texts_with_probabilities(served: tuple[Path, dict[str, Server]]) -> None:
    root, servers = served
    texts = ["The quick cat chased the dog near the fox", "Near the cat , the old fox greeted the dog", "the dog"]
    status, answer = servers["agents"].post({"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}})
    assert status == 200, answer
    labels = pd.DataFrame(answer["predictions"])
    assert list(labels["key"]) == [0, 1, 2] and set(labels["label"]) <= ANIMALS
    probabilities = labels[[f"prob_{a}" for a in sorted(ANIMALS)]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert list(labels["label"]) == [sorted(ANIMALS)[i] for i in probabilities.argmax(axis=1)]
    local = local_model(root, "agents").predict(pd.DataFrame({"text": texts}))
    assert np.allclose(probabilities, local.filter(like="prob_").to_numpy(), atol=1e-6)


@pytest.mark.slow
def test_lstmflow_serve_labels_audio_files(served: tuple[Path, dict[str, Server]]) -> None:
    root, servers = served
    clips = [str(root / "data" / "chirps" / label / "000.wav") for label in ("rising", "falling")]
    status, answer = servers["chirps"].post(records(pd.DataFrame({"path": clips})))
    assert status == 200, answer
    labels = pd.DataFrame(answer["predictions"])
    assert len(labels) == 2 and set(labels["label"]) <= {"rising", "falling", "rise-fall"}
    assert np.allclose(labels.filter(like="prob_").sum(axis=1), 1.0, atol=1e-5)


BAD_REQUESTS = {  # server, body, what the 400's message must say
    "series: wrong type": (
        "tiny",
        {"dataframe_records": [{"value": "n/a"}] * 36},
        "could not convert string to float: 'n/a'",
    ),
    "series: missing field": ("tiny", {"dataframe_records": [{"sales": 1.0}] * 36}, "missing inputs ['value']"),
    "series: too few rows": (
        "tiny",
        {"dataframe_records": [{"value": 1.0}] * 3},
        "has 3 rows; this model needs the last ",
    ),
    "series: wrong shape": (
        "tiny",
        {"dataframe_split": {"columns": ["value"], "data": [[1.0, 2.0]] * 36}},
        "1 columns passed, passed data had 2",
    ),
    "series: no frame at all": ("tiny", {"rows": [1.0, 2.0]}, "exactly one of the input fields"),
    "text: wrong type": ("agents", {"dataframe_records": [{"text": 5}]}, "must hold text in every sample; got 0: int"),
    "text: a missing value": ("agents", {"dataframe_records": [{"text": None}]}, "got 0: a missing value"),
    "text: missing field": ("agents", {"dataframe_records": [{"txt": "the cat"}]}, "missing inputs ['text']"),
    "text: wrong shape": (
        "agents",
        {"dataframe_split": {"columns": ["text"], "data": [["the cat", "the dog"]]}},
        "1 columns passed, passed data had 2",
    ),
    "text: not JSON": ("agents", b"the cat chased the dog", "valid JSON"),
    "audio: a file that does not decode": ("chirps", "undecodable", "not-audio.wav': not readable as audio"),
    "audio: a file that is not there": ("chirps", "missing", "missing.wav': no such file"),
    "audio: missing field": ("chirps", {"dataframe_records": [{"file": "x.wav"}]}, "missing inputs ['path']"),
    # issue 14: what crashed the parser, came back as a 200 or a stack trace, or opened files anywhere
    "any: JSON nested 100,000 deep": ("agents", b"[" * 100_000, "nests 100000 levels deep"),
    "series: an infinite value": (
        "tiny",
        {"dataframe_records": [{"value": 1.0}] * 23 + [{"value": float("inf")}]},
        "column 'value', row 23: inf (not finite)",
    ),
    "series: true/false": ("tiny", {"dataframe_records": [{"value": True}] * 36}, "column 'value', row 0: true"),
    "text: a list": ("agents", {"dataframe_records": [{"text": [1, 2]}]}, "got 0: list"),
    "audio: a file outside the data folder": (
        "chirps",
        {"dataframe_records": [{"path": "/etc/passwd"}]},
        "'/etc/passwd' is not a file this model may read",
    ),
    "audio: a path climbing out": (
        "chirps",
        {"dataframe_records": [{"path": "../../../../../../../etc/hostname"}]},
        "is not a file this model may read",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_is_a_400_with_its_reason_and_the_server_keeps_serving(
    served: tuple[Path, dict[str, Server]], case: str
) -> None:
    root, servers = served
    name, body, reason = BAD_REQUESTS[case]
    if body == "undecodable":
        (root / "data" / "chirps" / "not-audio.wav").write_bytes(b"RIFF\x00\x00 this is not a wave file" * 20)
        body = {"dataframe_records": [{"path": str(root / "data" / "chirps" / "not-audio.wav")}]}
    elif body == "missing":  # inside the data folder: outside it, whether a file exists is not told
        body = {"dataframe_records": [{"path": str(root / "data" / "chirps" / "missing.wav")}]}
    status, answer = servers[name].post(body)
    assert status == 400, (status, answer)
    assert reason in answer["message"], answer
    assert "\n" not in answer["message"] and "stack_trace" not in answer, answer
    good = {
        "tiny": {"dataframe_records": [{"value": 10.0 + i % 12} for i in range(24)]},
        "agents": {"dataframe_records": [{"text": "the cat chased the dog"}]},
        "chirps": {"dataframe_records": [{"path": str(root / "data" / "chirps" / "rising" / "001.wav")}]},
    }[name]
    assert servers[name].post(good)[0] == 200, "the server keeps serving after a bad request"


def lstmflow(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(BIN / "lstmflow"), *args]
    return subprocess.run(command, check=False, cwd=root, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_predict_from_the_command_line_answers_as_the_server(served: tuple[Path, dict[str, Server]]) -> None:
    root, servers = served
    values = [f"{v:.4f}" for v in pd.read_csv(root / "data" / "tiny.csv")["value"].tail(36)]
    done = lstmflow(root, "predict", "tiny", "--json", *values)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no @champion alias yet" in done.stderr
    status, answer = servers["tiny"].post({"dataframe_records": [{"value": float(v)} for v in values]})
    assert status == 200 and np.allclose(
        pd.DataFrame(json.loads(done.stdout))["value"], pd.DataFrame(answer["predictions"])["value"], rtol=1e-5
    )

    done = lstmflow(root, "predict", "agents", "the dog followed the fox", "the fox")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "models:/agents@champion (version 1)" in done.stdout and "input" in done.stdout and "prob_cat" in done.stdout
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]] for line in done.stdout.splitlines() if line.startswith("│")
    ]
    assert [row[0] for row in rows] == ["the dog followed the fox", "the fox"] and {row[1] for row in rows} <= ANIMALS


@pytest.mark.slow
def test_predict_and_serve_refuse_bad_inputs_with_a_message_not_a_traceback(
    served: tuple[Path, dict[str, Server]],
) -> None:
    root, servers = served
    (root / "noise.wav").write_bytes(b"not audio at all" * 10)
    busy = str(servers["tiny"].port)
    checks = {
        (
            "predict",
            "chirps",
            str(root / "noise.wav"),
        ): "noise.wav': not readable as audio",  # refused by the model itself; the current directory is allowed
        ("predict", "chirps", "/etc/passwd"): "'/etc/passwd' is not a file this model may read",
        ("serve", "agents@challenger"): "alias @challenger is not set; its aliases: @champion (version 1)",
        (
            "serve",
            "agents",
            "--port",
            busy,
        ): f"cannot listen on 127.0.0.1:{busy} (Address already in use); choose another with --port",
    }
    for args, message in checks.items():
        done = lstmflow(root, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr[-2000:])
        assert message in done.stderr and "Traceback" not in done.stderr, (args, done.stderr[-2000:])


@pytest.mark.slow
def test_choosing_a_version_names_what_exists(served: tuple[Path, dict[str, Server]]) -> None:
    from lstmflow.errors import ConfigError
    from lstmflow.tracking.runs import choose_version

    root, _ = served
    uri = f"sqlite:///{root / 'mlflow.db'}"
    assert choose_version(uri, "agents").model_uri == "models:/agents@champion"
    fallback = choose_version(uri, "tiny")
    assert (fallback.model_uri, fallback.alias) == ("models:/tiny/1", None)
    assert "no @champion alias yet" in (fallback.note or "")
    assert choose_version(uri, "tiny", version="latest").model_uri == "models:/tiny/1"
    for kwargs, message in (
        ({"name": "agents", "version": "7"}, "no version '7'; it has versions 1"),
        ({"name": "nope"}, "no registered model 'nope'"),
        ({"name": "agents", "version": "1", "alias": "champion"}, "not both"),
    ):
        with pytest.raises(ConfigError, match=message):
            choose_version(uri, **kwargs)


# ------------------------------------------------------------- the command line's input rule, without a model


def test_predict_reads_inputs_by_the_data_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lstmflow.config import validate_pipeline
    from lstmflow.errors import DataError
    from lstmflow.serving.predict import answer_by_input, request_table

    text = validate_pipeline(
        "agents", {"task": "classify", "data": {"kind": "text", "path": "a.csv", "text_column": "body"}}, tmp_path
    )
    assert request_table(text, ["the cat", "a dog"]).to_dict("list") == {"body": ["the cat", "a dog"]}
    audio = validate_pipeline("chirps", {"task": "classify", "data": {"kind": "audio", "path": "clips"}}, tmp_path)
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    monkeypatch.chdir(tmp_path)
    assert request_table(audio, ["a.wav"]).to_dict("list") == {"path": [str(tmp_path / "a.wav")]}
    with pytest.raises(DataError, match="INPUT 'b.wav': no such file"):
        request_table(audio, ["a.wav", "b.wav"])
    series = validate_pipeline("tiny", {"data": {"path": "t.csv", "target": "value"}}, tmp_path)
    assert request_table(series, ["1", "2.5", "-3e1"], ["value"]).to_dict("list") == {"value": [1.0, 2.5, -30.0]}
    with pytest.raises(DataError, match="INPUT 'twelve': not a number"):
        request_table(series, ["1", "twelve"], ["value"])
    with pytest.raises(DataError, match="takes a .csv or .parquet table of its recent rows"):
        request_table(series, ["1", "2"], ["value", "price"])
    pd.DataFrame({"value": [1.0, 2.0], "price": [3.0, 4.0]}).to_csv(tmp_path / "recent.csv", index=False)
    pd.DataFrame({"value": [5.0], "price": [6.0]}).to_parquet(tmp_path / "more.parquet")
    assert request_table(series, ["recent.csv", "more.parquet"], ["value", "price"])["price"].tolist() == [
        3.0,
        4.0,
        6.0,
    ]
    with pytest.raises(DataError, match="mix tables"):
        request_table(series, ["recent.csv", "7"], ["value"])
    answer = pd.DataFrame({"key": [1, 0], "label": ["dog", "cat"]})
    assert answer_by_input(answer, ["the cat", "a dog"]).to_dict("list") == {
        "input": ["a dog", "the cat"],
        "label": ["dog", "cat"],
    }
    assert answer_by_input(answer, ["recent.csv"]).equals(answer), "rows of a table keep their keys"
    sequences = validate_pipeline(
        "order", {"task": "classify", "data": {"kind": "sequences", "path": "s.csv", "format": "wide"}}, tmp_path
    )
    with pytest.raises(DataError, match="table of its sequences"):
        request_table(sequences, ["0.5"])
