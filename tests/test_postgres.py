"""The team's PostgreSQL server (lstmflow.ops.postgres), real: a user-level cluster on loopback, an Optuna study
stored in it that keeps going across a server restart, and an MLflow server on it that `lstmflow run` reports to."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import sqlalchemy
from conftest import Patterns, make_project

from lstmflow.ops.postgres import HOST, Cluster
from lstmflow.training import search

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # Under /tmp rather than pytest's folder: as root the server runs as 'postgres', which cannot enter root's 0700
    # pytest folders (the cluster's own folder is handed to it).
    folder = Path(tempfile.mkdtemp(prefix="lstmflow-pg-"))
    folder.chmod(0o711)
    started = Cluster(folder / "cluster", free_port())
    started.start()
    try:
        yield started
    finally:
        started.stop()
        shutil.rmtree(folder)


def test_the_cluster_listens_on_loopback_only_and_keeps_its_password_to_itself(cluster: Cluster) -> None:
    assert stat.S_IMODE(cluster.password_file.stat().st_mode) == 0o600
    password = cluster.password_file.read_text().strip()
    assert len(password) >= 32
    listening = {
        c.laddr for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == cluster.port
    }
    assert listening and {address.ip for address in listening} == {HOST}
    assert not [p.pid for p in psutil.process_iter(["cmdline"]) if password in " ".join(p.info["cmdline"] or [])]

    cluster.create_database("checks")
    cluster.create_database("checks")  # a second call finds it
    with sqlalchemy.create_engine(cluster.url("checks")).connect() as connection:
        assert connection.execute(sqlalchemy.text("SELECT current_database()")).scalar() == "checks"
    wrong = cluster.url("checks").replace(password, "not-the-password")
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication failed"):
        sqlalchemy.create_engine(wrong).connect()


def test_a_study_on_postgresql_keeps_its_trials_across_a_server_restart(cluster: Cluster, patterns: Patterns) -> None:
    """The server restarts between two trials (every pooled connection dies): the next trial's bookkeeping
    reconnects, so both trials are recorded once each and the study goes on to its budget."""
    cluster.create_database("optuna")
    spec = patterns.spec(
        search={"trials": 3, "space": {"train.optimizer.lr": {"float": [1e-4, 1e-2]}}, "storage": cluster.url("optuna")}
    )
    ref = search.StudyRef(search.storage_location(spec, Path()), search.study_name(spec, "f" * 32))
    study, created = search.open_study(ref, spec, create=True)
    assert created
    first = search.ask(study, spec)
    assert first is not None and search.record(study, first, "complete", 0.5) == "complete"

    cluster.restart()

    second = search.ask(study, spec)
    assert second is not None and search.record(study, second, "complete", 0.25) == "complete"
    reopened, created_again = search.open_study(ref, spec, create=True)
    assert not created_again
    trials = reopened.get_trials(deepcopy=False)
    assert [(t.number, t.state.name, t.value) for t in trials] == [(0, "COMPLETE", 0.5), (1, "COMPLETE", 0.25)]
    assert search.trials_left(reopened, spec.search) == 1


def start_mlflow_server(cluster: Cluster, artifacts: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """An MLflow server on the cluster's ``mlflow`` database, its URL once it answers. The database URL (with the
    password) goes in the environment, never on the command line; one web worker and no job runner (2 cores)."""
    cluster.create_database("mlflow")
    port = free_port()
    environment = os.environ | {
        "MLFLOW_BACKEND_STORE_URI": cluster.url("mlflow"),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", HOST, "--port", str(port)]
    command += ["--workers", "1", "--artifacts-destination", str(artifacts)]
    server = subprocess.Popen(
        command, env=environment, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the MLflow server did not answer in 120 s: {log.read_text()[-3000:]}")


def test_a_run_reports_to_an_mlflow_server_on_postgresql(cluster: Cluster, tmp_path: Path) -> None:
    """`lstmflow run` with MLFLOW_TRACKING_URI set logs its run and registers its model through the server, whose
    store is PostgreSQL: the run, its test metrics and the version are rows there, nothing in a local mlflow.db."""
    project = make_project(tmp_path / "project")
    server, url = start_mlflow_server(cluster, tmp_path / "artifacts", tmp_path / "mlflow.log")
    try:
        environment = os.environ | {"MLFLOW_TRACKING_URI": url}
        lstmflow = str(Path(sys.executable).parent / "lstmflow")
        done = subprocess.run(
            [lstmflow, "run", "tiny"],
            cwd=project,
            env=environment,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    assert not (project / "mlflow.db").exists()
    with sqlalchemy.create_engine(cluster.url("mlflow")).connect() as connection:
        rows = connection.execute(sqlalchemy.text("SELECT name, version FROM model_versions")).all()
        tested = connection.execute(sqlalchemy.text("SELECT count(*) FROM metrics WHERE key LIKE 'test_%'")).scalar()
        finished = connection.execute(sqlalchemy.text("SELECT count(*) FROM runs WHERE status = 'FINISHED'")).scalar()
    assert [(name, str(version)) for name, version in rows] == [("tiny", "1")]
    assert tested and finished
    assert any((tmp_path / "artifacts").rglob("MLmodel")), "the server stored the model's files"
