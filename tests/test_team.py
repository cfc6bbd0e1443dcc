"""The team's set-up on one machine, against the real servers: `lstmflow up --team` (PostgreSQL, moto's S3 server,
the Prefect and MLflow servers on them, the worker), and a second checkout of the project standing in for a second
machine that pulls the data through DVC, joins a search, serves the champion and trains one model with the first
over loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy
from conftest import TINY_PIPELINES, free_port, git, make_project, postgres_reachable_folder, run_lstmflow, wait_for

from lstmflow.ops import stack, team

pytestmark = pytest.mark.slow

TUNED = """\
  tuned:
    data: {path: data/tiny.csv, time_column: month, target: value, window: 24, horizon: 6, transform: none}
    model: {layers: [{lstm: {units: 8}}, {dense: {}}]}
    evaluate: {season: 12}
    search:
      trials: 2
      parallel: 2
      storage: team
      space: {train.optimizer.lr: {float: [0.001, 0.01], log: true}}
"""


class Team:
    """The first checkout, its stack's ports, and its servers' stores."""

    def __init__(self, project: Path, ports: dict[str, int]) -> None:
        self.project, self.ports = project, ports

    def flags(self) -> list[str]:
        return [item for name, port in self.ports.items() for item in (f"--{name}-port", str(port))]

    def query(self, database: str, sql: str) -> list[tuple[object, ...]]:
        engine = sqlalchemy.create_engine(stack.team_database(self.project).url(database))
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sqlalchemy.text(sql)).all()]

    def store(self) -> team.ObjectStore:
        return team.object_store(self.project, self.ports["objects"])


@pytest.fixture(scope="module")
def first() -> Iterator[Team]:
    folder = postgres_reachable_folder("lstmflow-team-")
    project = make_project(folder / "first", TINY_PIPELINES + TUNED)
    ports = {name: free_port() for name in ("prefect", "mlflow", "postgres", "objects")}
    checkout = Team(project, ports)
    try:
        up = run_lstmflow(project, "up", "--team", *checkout.flags(), timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr[-3000:]
        connection = team.read_connection(project)
        assert connection is not None
        for secret in (connection.secret_access_key, stack.team_database(project).password_file.read_text().strip()):
            assert secret not in up.stdout + up.stderr
        yield checkout
    finally:
        run_lstmflow(project, "down", timeout=300)
        stack.team_database(project).stop()
        shutil.rmtree(folder)


def second_checkout(first: Team, name: str) -> Path:
    """A clone of the first checkout's committed state, connected to its stack."""
    git(first.project, "add", "-A")
    git(first.project, "commit", "-qm", "pipelines, params and dvc.lock", "--allow-empty")
    clone = first.project.parent / name
    git(first.project.parent, "clone", "-q", str(first.project), str(clone))
    connect = run_lstmflow(clone, "connect", str(first.project), timeout=120)
    assert connect.returncode == 0, connect.stdout + connect.stderr
    return clone


def last_values(project: Path) -> list[str]:
    return [f"{v:.4f}" for v in pd.read_csv(project / "data" / "tiny.csv")["value"].tail(36)]


def test_a_run_keeps_its_records_in_postgresql_and_its_artifacts_and_data_in_the_object_store(first: Team) -> None:
    run = run_lstmflow(first.project, "run", "tiny", "--json", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    version = json.loads(run.stdout.strip().splitlines()[-1])["model_uri"].rsplit("/", 1)[1]

    completed = first.query("prefect", "SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'")
    assert completed[0][0] >= 1
    assert ("tiny", int(version)) in first.query("mlflow", "SELECT name, version FROM model_versions")
    store = first.store()
    assert any(key.startswith("mlflow/") and key.endswith("/MLmodel") for key in store.keys("mlflow/"))
    assert store.keys("dvc/"), "the features were pushed to the team's DVC remote"
    assert not (first.project / "mlflow.db").exists() and not (first.project / "mlartifacts").exists()
    assert not (first.project / ".dvc-storage").exists()
    for private in (team.CONNECTION_FILE, Path(".dvc/config.local"), team.OBJECTS_DIR / "keys.json"):
        assert stat.S_IMODE((first.project / private).stat().st_mode) == 0o600, private

    status = run_lstmflow(first.project, "status", timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    assert all(name in status.stdout for name in ("postgres", "objects", "prefect", "mlflow", "worker"))


def test_a_second_checkout_pulls_the_data_joins_the_search_and_serves_the_champion(first: Team) -> None:
    searched = run_lstmflow(first.project, "search", "tuned", "--json", timeout=600)
    assert searched.returncode == 0, searched.stderr[-3000:]
    version = json.loads(searched.stdout.strip().splitlines()[-1])["model_uri"].rsplit("/", 1)[1]
    promoted = run_lstmflow(first.project, "promote", "tuned", "--version", version, timeout=120)
    assert promoted.returncode == 0, promoted.stderr
    second = second_checkout(first, "second-search")

    pulled = subprocess.run(
        [sys.executable, "-m", "dvc", "pull", "features@tuned"], check=False, cwd=second, capture_output=True, text=True
    )
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    features = sorted(
        p.relative_to(first.project) for p in (first.project / "features" / "tuned").rglob("*") if p.is_file()
    )
    assert features and all((second / f).read_bytes() == (first.project / f).read_bytes() for f in features)

    joined = run_lstmflow(second, "search", "tuned", "--trials", "3", "--json", timeout=600)
    assert joined.returncode == 0, joined.stderr[-3000:]
    trials = first.query("optuna", "SELECT number, state FROM trials ORDER BY number")
    assert trials == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
    assert first.query("optuna", "SELECT count(*) FROM studies") == [(1,)]

    answers = [run_lstmflow(checkout, "predict", "tuned", "--json", *last_values(checkout), timeout=300)
               for checkout in (first.project, second)]  # fmt: skip
    assert all(answer.returncode == 0 for answer in answers), [answer.stderr[-2000:] for answer in answers]
    assert "no @champion alias yet" not in answers[1].stderr and not (second / "mlflow.db").exists()
    assert json.loads(answers[0].stdout) == json.loads(answers[1].stdout)


def test_two_checkouts_train_one_model_over_loopback_and_log_it_to_the_team_mlflow(first: Team) -> None:
    second = second_checkout(first, "second-ddp")
    nodes = ["--set", "train.nodes.count=2", "--set", f"train.nodes.endpoint=127.0.0.1:{free_port()}"]
    binary = str(Path(sys.executable).parent / "lstmflow")
    machine0 = subprocess.Popen([binary, "run", "tiny", "--json", *nodes], cwd=first.project, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    machine1 = subprocess.Popen([binary, "join", "tiny", "--node-rank", "1", *nodes], cwd=second, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    (out0, err0), (out1, err1) = machine0.communicate(timeout=600), machine1.communicate(timeout=600)
    assert machine0.returncode == 0, err0[-3000:]
    assert machine1.returncode == 0, err1[-3000:]
    result = json.loads(out0.strip().splitlines()[-1])
    assert "trained 3 epochs with 2 processes in all" in out1
    runs = first.query("mlflow", f"SELECT status FROM runs WHERE run_uuid = '{result['mlflow_run_id']}'")
    assert runs == [("FINISHED",)]
    assert not (second / "mlflow.db").exists() and not (second / "mlruns").exists()


def test_compare_reproduce_and_serve_work_unchanged_from_a_second_checkout(first: Team) -> None:
    """A run of the first checkout (cached when an earlier test trained it) is reproduced by the second, which
    reads its spec and data version through the team's MLflow, ranks both runs with `compare`, and serves the
    pipeline's model over HTTP from the registry."""
    run = run_lstmflow(first.project, "run", "tiny", "--json", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    recorded = json.loads(run.stdout.strip().splitlines()[-1])["mlflow_run_id"]
    second = second_checkout(first, "second-operations")

    reproduced = run_lstmflow(second, "reproduce", recorded, timeout=600)
    assert reproduced.returncode == 0, reproduced.stderr[-3000:]
    copy = re.search(r"MLflow run ([0-9a-f]{32}) \(tag lstmflow.reproduces=" + recorded, reproduced.stdout)
    assert copy, reproduced.stdout
    query = f"SELECT value FROM tags WHERE run_uuid = '{copy[1]}' AND key = 'lstmflow.reproduces'"
    assert first.query("mlflow", query) == [(recorded,)]
    compared = subprocess.run([str(Path(sys.executable).parent / "lstmflow"), "compare", "tiny"], cwd=second,
                              capture_output=True, text=True, timeout=300, env=os.environ | {"COLUMNS": "300"},
                              check=False)  # fmt: skip
    assert compared.returncode == 0 and recorded[:8] in compared.stdout and copy[1][:8] in compared.stdout

    port = free_port()
    with (second / "serve.log").open("wb") as log:
        server = subprocess.Popen([str(Path(sys.executable).parent / "lstmflow"), "serve", "tiny", "--port", str(port)],
                                  cwd=second, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/ping"), "the served model", 300)
        body = json.dumps({"dataframe_records": [{"value": float(v)} for v in last_values(second)]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                         {"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert answer.status == 200 and json.loads(answer.read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def test_down_saves_the_object_store_and_up_brings_it_back(first: Team) -> None:
    run = run_lstmflow(first.project, "run", "tiny", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    keys = set(first.store().keys())
    before = run_lstmflow(first.project, "predict", "tiny", "--json", *last_values(first.project), timeout=300)
    assert before.returncode == 0, before.stderr[-2000:]

    down = run_lstmflow(first.project, "down", timeout=300)
    assert down.returncode == 0, down.stderr
    saved = first.project / team.OBJECTS_DIR / "saved"
    assert {p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file()} == keys
    assert not team.read_connection(first.project) and not stack.team_database(first.project).running()
    assert all(map(stack._port_free, first.ports.values()))

    up = run_lstmflow(first.project, "up", "--team", *first.flags(), timeout=600)
    assert up.returncode == 0, up.stdout + up.stderr[-3000:]
    assert set(first.store().keys()) == keys
    after = run_lstmflow(first.project, "predict", "tiny", "--json", *last_values(first.project), timeout=300)
    assert after.returncode == 0, after.stderr[-2000:]
    assert json.loads(after.stdout) == json.loads(before.stdout)


def test_the_object_store_down_while_a_run_logs_its_model_fails_that_step_and_its_retry_registers_once(
    first: Team,
) -> None:
    """moto's server dies as the register step is about to log the model: the MLflow server answers errors, the step
    fails with a named error and is retried; a store started again on the same port, with the objects it held as
    training ended (as a persistent store comes back; moto's memory is gone), takes the model, and the run ends with
    one ready version (nothing half-registered). The stack is then restarted for the other tests (the dead store
    leaves it unhealthy)."""
    environment = os.environ | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}  # as for an outage past the client's retries
    binary = str(Path(sys.executable).parent / "lstmflow")
    err = first.project / "outage.err"
    replacement: subprocess.Popen[bytes] | None = None
    before = {row[0] for row in first.query("mlflow", "SELECT version FROM model_versions WHERE name = 'tiny'")}
    earlier = set((first.project / "runs" / "tiny").glob("*"))
    with err.open("w") as stderr:
        run = subprocess.Popen([binary, "run", "tiny", "--json", "--set", "train.epochs=2"], cwd=first.project,
                               env=environment, stdout=subprocess.PIPE, stderr=stderr, text=True)  # fmt: skip
    try:
        wait_for(lambda: new_file(first.project, earlier, "fit_result.json"), "training")
        run.send_signal(signal.SIGSTOP)  # the run waits while the store is saved (seconds): it would register meanwhile
        try:
            team.save(first.project, first.store())  # what the store comes back with: the run's spec, the champion's
        finally:
            run.send_signal(signal.SIGCONT)
        wait_for(lambda: new_file(first.project, earlier, "metrics.json"), "the evaluation")  # register is next
        objects = next(service for service in stack._read_state(first.project) if service.name == "objects")
        for process in objects.processes():
            process.kill()
        wait_for(lambda: "registering tiny: the MLflow server" in err.read_text(), "the step to fail on the store")
        replacement = subprocess.Popen(team.server_command(first.ports["objects"]), stderr=subprocess.DEVNULL)
        wait_for(lambda: not stack._port_free(first.ports["objects"]), "the store to listen again")
        team.load(first.project, first.store())
        out, _ = run.communicate(timeout=600)
        assert run.returncode == 0, err.read_text()[-4000:]
    finally:
        run.kill()
        log = err.read_text()
        restarted = restart_stack(first, replacement)
    said = r"registering tiny: the MLflow server at \S+ (answers with errors|does not answer) \(.+?\); retry 1 of 6"
    assert re.search(said, log), log[-4000:]
    version = int(json.loads(out.strip().splitlines()[-1])["model_uri"].rsplit("/", 1)[1])
    rows = first.query("mlflow", "SELECT version, status FROM model_versions WHERE name = 'tiny'")
    assert {v for v, _ in rows} - before == {version} and (version, "READY") in rows, rows
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr[-3000:]


def new_file(project: Path, earlier: set[Path], name: str) -> bool:
    """Whether a run folder of tiny made after ``earlier`` holds ``name``."""
    return any(path.parent not in earlier for path in (project / "runs" / "tiny").glob(f"*/{name}"))


def restart_stack(first: Team, replacement: subprocess.Popen[bytes] | None) -> subprocess.CompletedProcess[str]:
    """`down` and `up --team` again, after stopping a store the test started itself."""
    run_lstmflow(first.project, "down", timeout=300)
    if replacement is not None:
        replacement.kill()
        replacement.wait()
    return run_lstmflow(first.project, "up", "--team", *first.flags(), timeout=600)
