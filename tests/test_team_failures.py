"""Failures of the team's servers, real: the PostgreSQL server of a shared study going down while a trial trains
(back in a moment, or only after the search gave up), and the MLflow server down when training ends. Nothing is
mocked: a real cluster, real `mlflow server` processes, real training children and real Prefect flow runs."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from conftest import Patterns, free_port, make_project, wait_for

from lstmflow import tracking
from lstmflow.ops import search_steps, steps
from lstmflow.ops.postgres import Cluster
from lstmflow.training import search
from lstmflow.training.launch import LOG_FILE
from lstmflow.training.study_storage import RECONNECT_ENV

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- PostgreSQL down during a trial


TRIALS = 3
#: Enough epochs (about 40 ms each here) that a trial is still reporting them when the server stops after its first.
EPOCHS = 50


class Search:
    """A search of the patterns classifier whose study lives in ``database`` on the cluster."""

    def __init__(self, cluster: Cluster, database: str, patterns: Patterns, root: Path) -> None:
        cluster.create_database(database)
        self.spec = patterns.spec(
            train={"epochs": EPOCHS, "early_stopping": {"patience": EPOCHS}},
            search={
                "trials": TRIALS,
                "pruner": "none",
                "space": {"train.optimizer.lr": {"float": [1e-3, 3e-2], "log": True}},
                "storage": cluster.url(database),
            },
        )
        self.root = root
        self.prepared = steps.Prepared(
            self.spec.model_dump(mode="json"), str(patterns.features_dir), "d" * 32, "f" * 32
        )
        name = search.study_name(self.spec, self.prepared.features_md5)
        self.ref = search.StudyRef(search.storage_location(self.spec, root), name)

    def study(self) -> Any:
        """The study, once the search has made it."""

        def opened() -> Any:
            try:
                return search.open_study(self.ref, self.spec)[0]
            except KeyError:
                return None

        return wait_for(opened, "the study")

    def trial_log(self, number: int) -> Path:
        return self.root / "runs" / "patterns" / self.ref.name / f"trial-{number:04d}" / LOG_FILE

    def met_the_outage(self, number: int) -> bool:
        """Wait until trial ``number``'s training child has met the stopped server, or has ended without; whether it
        met it."""

        def seen() -> str | None:
            ended = any(self.trial_log(number).parent.glob("train_error*.json"))
            text = self.trial_log(number).read_text()
            return "met" if "out of reach" in text else "ended" if ended else None

        return wait_for(seen, f"trial {number} to meet the outage") == "met"

    def training_trial(self, study: Any) -> int:
        """The number of the first trial that has reported an epoch: its training child is using the database."""

        def reporting() -> list[int]:
            trials = study.get_trials(deepcopy=False)
            return [t.number for t in trials if t.state.name == "RUNNING" and t.intermediate_values]

        return wait_for(reporting, "a trial reporting its epochs")[0]

    def trials(self) -> list[Any]:
        return search.open_study(self.ref, self.spec)[0].get_trials(deepcopy=False)


def test_a_trial_training_across_a_database_restart_waits_for_it_and_counts_once(
    cluster: Cluster, patterns: Patterns, tmp_path: Path
) -> None:
    """The server stops after a trial's first epoch and starts again once that trial's training child has met the
    outage: the child waits, reports every later epoch, and the study ends with TRIALS completed trials, the one
    that trained across the restart among them, none run twice and none left running."""
    searching = Search(cluster, "restart_in_trial", patterns, tmp_path)

    def restart_during_a_trial() -> int:
        number = searching.training_trial(searching.study())
        cluster.stop()
        met = searching.met_the_outage(number)
        cluster.start()
        assert met, searching.trial_log(number).read_text()[-3000:]
        return number

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        restarted = pool.submit(restart_during_a_trial)
        done = search_steps.run_search(searching.prepared, tmp_path, progress=False)
        number = restarted.result()

    trials = searching.trials()
    assert [(t.number, t.state.name) for t in trials] == [(n, "COMPLETE") for n in range(TRIALS)]
    assert done["summary"]["counts"] == {"complete": TRIALS} and done["summary"]["ran"] == {"complete": TRIALS}
    assert sorted(trials[number].intermediate_values) == list(range(1, EPOCHS + 1)), "every epoch reported"
    assert "answers again" in searching.trial_log(number).read_text()
    assert len({t.params["train.optimizer.lr"] for t in trials}) == TRIALS, "no values trained twice"


WORKER = """
import json, sys
from pathlib import Path
from lstmflow.ops import search_steps, steps
prepared = steps.Prepared(**json.loads(Path(sys.argv[1]).read_text()))
search_steps.run_search(prepared, Path(sys.argv[2]), progress=False, need_best=False)
"""


def test_a_trial_whose_database_stayed_down_too_long_is_run_again_by_the_next_search(
    cluster: Cluster, patterns: Patterns, tmp_path: Path
) -> None:
    """The server stops during a trial and stays down past the reconnect window (2 s here): the search process
    stops with StudyStorageError, leaving the trial running under its dead pid. Once the server is back, the next
    search queues that trial again (interrupted, not counted), trains its values once more and ends with TRIALS
    completed trials; the interrupted trial's MLflow run is ended as killed."""
    searching = Search(cluster, "down_too_long", patterns, tmp_path)
    handover = tmp_path / "prepared.json"
    handover.write_text(json.dumps(asdict(searching.prepared)))
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(handover), str(tmp_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ | {RECONNECT_ENV: "2"},
        )
    try:
        number = searching.training_trial(searching.study())
        cluster.stop()
        wait_for(lambda: worker.poll() is not None, "the search to give up")
    finally:
        worker.kill()
        worker.wait()
        cluster.start()
    output = log_path.read_text()
    assert worker.returncode == 1 and "StudyStorageError: the study's database" in output, output[-3000:]
    assert "Connection refused" in output and cluster.password_file.read_text().strip() not in output
    assert searching.trials()[number].state.name == "RUNNING", "left running by the search that gave up"

    done = search_steps.run_search(searching.prepared, tmp_path, progress=False)
    trials = searching.trials()
    assert done["summary"]["counts"] == {"complete": TRIALS, "interrupted": 1}
    [retry] = [t for t in trials if t.user_attrs.get(search.RETRY_OF) == number]
    assert retry.state.name == "COMPLETE" and retry.params == trials[number].params
    assert search.trial_state(trials[number]) == "interrupted"
    assert not [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len({t.params["train.optimizer.lr"] for t in complete}) == TRIALS, "no values counted twice"
    runs = {run.data.tags["lstmflow.search.trial"]: run for run in trial_runs(tmp_path)}
    assert sorted(map(int, runs)) == [t.number for t in trials], "one MLflow run per trial"
    assert runs[str(number)].info.status == "KILLED"
    assert runs[str(number)].data.tags["lstmflow.search.state"] == "interrupted"


def trial_runs(root: Path) -> list[Any]:
    """The MLflow runs of the patterns search's trials in the project's own store."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("patterns").experiment_id], max_results=100)
    return [run for run in runs if "lstmflow.search.trial" in run.data.tags]


# ----------------------------------------------------------------------------- MLflow down when training ends


class MlflowServer:
    """A real `mlflow server` with its own store (SQLite, artifacts sent through the server), stopped and started
    again on the same port and store; one web worker and no job runner, as `lstmflow up` starts it."""

    def __init__(self, folder: Path, port: int) -> None:
        folder.mkdir(parents=True)
        self.folder, self.port = folder, port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        stores = ["--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}"]
        stores += ["--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"]
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), *stores]
        with (self.folder / "server.log").open("a") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its workers are stopped with it
                env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )
        wait_for(self.answers, f"the MLflow server on port {self.port}", 120)

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path / "mlflow-server", free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_mlflow_down_when_training_ends_and_when_registering_costs_no_training(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    """`lstmflow run` against an MLflow server that stops as training ends, and again as the register step logs the
    model, each time until the step has failed on it; the MLflow client's own retries are off, as for an outage
    longer than they last. The train and register tasks fail with TrackingUnavailable and are retried once the server
    is back: the retry of training resumes from the finished checkpoint (no epoch trained or logged twice, one MLflow
    run), and the run ends with one registered version, ready and loadable."""
    project = make_project(tmp_path / "project")
    environment = os.environ | {"MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    out, err = tmp_path / "run.out", tmp_path / "run.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        run = subprocess.Popen(
            [str(Path(sys.executable).parent / "lstmflow"), "run", "tiny"], cwd=project, env=environment,
            stdout=stdout, stderr=stderr,
        )  # fmt: skip
    try:
        result = wait_for(lambda: next((project / "runs" / "tiny").glob("*/fit_result.json"), None), "training")
        outage(mlflow_server, lambda: "training tiny: the MLflow server" in err.read_text())
        wait_for(lambda: (result.parent / "bundle").exists(), "the register step")  # logging the model next
        outage(mlflow_server, lambda: "registering tiny: the MLflow server" in err.read_text())
        assert run.wait(300) == 0, err.read_text()[-4000:]
    finally:
        run.kill()
        run.wait()

    log = err.read_text()
    for step in ("training", "registering"):
        said = rf"{step} tiny: the MLflow server at {re.escape(mlflow_server.url)} does not answer \(.+\); retry 1 of 6"
        assert re.search(said, log), log[-4000:]
    assert "Retries are exhausted" not in log
    assert json.loads(result.read_text())["resumed_from_epoch"] == 3, "the retry resumed the finished training"
    assert (result.parent / LOG_FILE).read_text().count("epoch 1/3") == 1
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    [training] = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert training.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(training.info.run_id, "train_loss")] == [1, 2, 3]
    [version] = client.search_model_versions("name = 'tiny'")
    assert (version.version, version.status, version.run_id) == ("1", "READY", training.info.run_id)
    assert "models:/tiny/1" in out.read_text()
    model = tracking.load_model(mlflow_server.url, "models:/tiny/1")
    assert model.metadata.run_id == training.info.run_id


def outage(server: MlflowServer, met: Callable[[], bool]) -> None:
    """Stop the server, and start it again once the run has failed on it (``met``)."""
    server.stop()
    try:
        wait_for(met, "the run to fail on the stopped MLflow server")
    finally:
        server.start()
