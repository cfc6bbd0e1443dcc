"""The team's PostgreSQL server (lstmflow.ops.postgres), real: a user-level cluster on loopback, an Optuna study
stored in it that keeps going across a server restart, and `lstmflow up --team`: Prefect and MLflow servers on it that
a pipeline run reports to."""

from __future__ import annotations

import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import sqlalchemy
from conftest import Patterns, free_port, make_project, run_lstmflow

from lstmflow.ops import stack
from lstmflow.ops.postgres import HOST, Cluster
from lstmflow.training import search

pytestmark = pytest.mark.slow


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


def query(cluster: Cluster, database: str, sql: str) -> list[tuple[object, ...]]:
    with sqlalchemy.create_engine(cluster.url(database)).connect() as connection:
        return [tuple(row) for row in connection.execute(sqlalchemy.text(sql)).all()]


def test_up_team_keeps_prefect_and_mlflow_in_postgresql_and_down_stops_it(tmp_path: Path) -> None:
    """`up --team` starts the project's PostgreSQL, then the servers on it; a run's flow run, MLflow run and model
    version are rows there (no mlflow.db, artifacts sent through the server); `down` stops the database too."""
    folder = Path(tempfile.mkdtemp(prefix="lstmflow-team-"))  # a folder the 'postgres' account may enter
    folder.chmod(0o711)
    project = make_project(folder / "project")
    ports = [free_port() for _ in range(3)]
    flags = ["--prefect-port", str(ports[0]), "--mlflow-port", str(ports[1]), "--postgres-port", str(ports[2])]
    database = stack.team_database(project)
    try:
        up = run_lstmflow(project, "up", "--team", *flags, timeout=600)
        assert up.returncode == 0, up.stderr[-3000:]
        database = stack.team_database(project)
        assert database.port == ports[2] and database.running()
        assert database.password_file.read_text().strip() not in up.stdout + up.stderr
        status = run_lstmflow(project, "status", timeout=120)
        assert status.returncode == 0 and "postgres" in status.stdout, status.stdout + status.stderr

        run = run_lstmflow(project, "run", "tiny", timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        completed = query(database, "prefect", "SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'")
        assert completed[0][0] >= 1
        assert query(database, "mlflow", "SELECT name, version FROM model_versions") == [("tiny", 1)]
        assert ("optuna",) in query(database, "postgres", "SELECT datname FROM pg_database")
        assert not (project / "mlflow.db").exists() and any((project / "mlartifacts").rglob("MLmodel"))

        down = run_lstmflow(project, "down", timeout=300)
        assert down.returncode == 0, down.stderr
        assert not database.running() and all(map(stack._port_free, ports))
    finally:
        run_lstmflow(project, "down", timeout=300)
        database.stop()
        shutil.rmtree(folder)
