"""How a checkout joins a team stack (lstmflow.ops.team), without the servers: the connection file, DVC's remote in
a real DVC repository, `search.storage: team`, and `lstmflow connect`'s refusals."""

from __future__ import annotations

import json
import stat
from dataclasses import asdict
from pathlib import Path

import pytest
from conftest import make_project, run_lstmflow

from lstmflow.errors import ConfigError
from lstmflow.ops import stack, team

CONNECTION = team.Connection(
    prefect_url="http://127.0.0.1:4301/api", mlflow_url="http://127.0.0.1:5301",
    optuna_url="postgresql+psycopg://lstmflow:s3cret@127.0.0.1:5433/optuna", endpoint="http://127.0.0.1:9301",
    access_key_id="LFKEY", secret_access_key="not-for-git",
)  # fmt: skip


def test_a_connection_file_is_private_and_reads_back(tmp_path: Path) -> None:
    path = team.write_connection(tmp_path, CONNECTION)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert team.read_connection(tmp_path) == CONNECTION
    assert team.optuna_url(tmp_path, "pipelines.x.search.storage") == CONNECTION.optuna_url

    path.write_text('{"prefect_url": "http://x"}')
    with pytest.raises(ConfigError, match=f"{path} is not a team connection lstmflow wrote"):
        team.read_connection(tmp_path)


def test_search_storage_team_without_a_connection_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        team.optuna_url(tmp_path, "pipelines.tuned.search.storage")
    message = str(refused.value)
    assert message.startswith("pipelines.tuned.search.storage is 'team' but ")
    assert str(tmp_path / team.CONNECTION_FILE) in message and "lstmflow connect FOLDER" in message


def test_connect_points_dvc_at_the_store_privately_and_down_disconnects(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    copied = tmp_path / "team.json"  # a copy of another machine's file
    copied.write_text(json.dumps(asdict(CONNECTION)))

    done = run_lstmflow(project, "connect", str(copied), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "not-for-git" not in done.stdout + done.stderr and "s3cret" not in done.stdout + done.stderr
    assert team.read_connection(project) == CONNECTION
    local = project / ".dvc" / "config.local"
    assert stat.S_IMODE(local.stat().st_mode) == 0o600
    settings = local.read_text()
    assert "['remote \"team\"']" in settings and "url = s3://lstmflow/dvc" in settings
    assert "endpointurl = http://127.0.0.1:9301" in settings and "secret_access_key = not-for-git" in settings
    assert "remote = team" in settings and "not-for-git" not in (project / ".dvc" / "config").read_text()
    assert stack.environment(project) == {
        "PREFECT_API_URL": CONNECTION.prefect_url, "MLFLOW_TRACKING_URI": CONNECTION.mlflow_url
    }  # fmt: skip
    status = run_lstmflow(project, "status", timeout=120)
    assert status.returncode == 0 and "joined the team stack at Prefect http://127.0.0.1:4301/api" in status.stdout

    down = run_lstmflow(project, "down", timeout=120)
    assert down.returncode == 0 and "disconnected from the team stack" in down.stdout, down.stdout + down.stderr
    assert team.read_connection(project) is None and stack.environment(project) == {}
    assert "team" not in local.read_text()


def test_connect_to_a_checkout_without_a_team_stack_is_refused(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    other = tmp_path / "other"
    other.mkdir()
    done = run_lstmflow(project, "connect", str(other), timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{other / team.CONNECTION_FILE} does not exist: run `lstmflow up --team` in {other} first" in done.stderr
    assert "Traceback" not in done.stderr and not (project / team.CONNECTION_FILE).exists()
