"""The temporary Prefect server of an embedded run (flows/embedded.py): it answers, stops with the command, and a
project's new Prefect database and MLflow store start from migrated ones kept per machine."""

from __future__ import annotations

import importlib.metadata
import sqlite3
import urllib.request
from pathlib import Path

import pytest

from flows.embedded import LOG_FILE, TemporaryServer, flows_on_temporary_server, open_stores, prefect_api
from lstmflow import tracking
from lstmflow.ops import versioning


def revision(database: Path) -> str:
    with sqlite3.connect(database) as connection:
        return connection.execute("select version_num from alembic_version").fetchone()[0]


def test_server_answers_and_a_new_database_starts_from_the_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "first" / ".prefect"))
    first = TemporaryServer(tmp_path / "first")
    try:
        first.wait_ready(120)
        with urllib.request.urlopen(f"{first.url}/health", timeout=10) as answer:
            assert answer.status == 200
    finally:
        first.stop()
    assert first.process.poll() is not None  # stopped, not left running
    assert first.template.exists()  # kept once the first new database was migrated
    assert revision(first.template) == revision(tmp_path / "first" / ".prefect" / "prefect.db")

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "second" / ".prefect"))
    second = TemporaryServer(tmp_path / "second")
    try:
        database = tmp_path / "second" / ".prefect" / "prefect.db"
        assert revision(database) == revision(first.template)  # in place before the server started
        second.wait_ready(120)
    finally:
        second.stop()


def test_a_configured_server_starts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with prefect_api(tmp_path)():
        pass
    assert not (tmp_path / LOG_FILE).exists()


def test_flows_on_the_temporary_server_send_no_heartbeats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import flow
    from prefect.settings import get_current_settings, temporary_settings

    @flow
    def heartbeat_setting() -> int | None:
        return get_current_settings().flows.heartbeat_frequency

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / ".prefect"))
    server = TemporaryServer(tmp_path)
    try:
        with temporary_settings(updates={"api.url": server.url}), flows_on_temporary_server(server, 120):
            assert heartbeat_setting() is None
        assert get_current_settings().flows.heartbeat_frequency is not None  # Prefect's own setting outside
    finally:
        server.stop()


def test_open_stores_creates_the_dvc_repository_and_the_mlflow_store(tmp_path: Path) -> None:
    open_stores(tmp_path)
    assert (tmp_path / ".dvc" / "config.local").read_text().count("remote = local") == 1
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        assert connection.execute("select name from experiments").fetchall() == [("Default",)]
    open_stores(tmp_path)  # a second time changes nothing
    assert (tmp_path / ".dvc" / "config.local").read_text().count("remote = local") == 1


def test_a_new_mlflow_store_starts_from_the_template_the_first_one_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, second = tmp_path / "first", tmp_path / "second"
    tracking.open_store(tracking.tracking_uri(first))
    mlflow = importlib.metadata.version("mlflow")
    template = tmp_path / "cache" / "lstmflow" / "mlflow-database" / f"mlflow-{mlflow}.db"
    assert revision(template) == revision(first / "mlflow.db")

    tracking.open_store(tracking.tracking_uri(second))
    with sqlite3.connect(second / "mlflow.db") as connection:
        assert connection.execute("select name, artifact_location from experiments").fetchall() == [
            ("Default", str(second / "mlruns" / "0"))
        ]
    run_id = tracking.start_run(tracking.tracking_uri(second), "used", second / "mlruns", {"a": "1"}, {}, "r")
    assert tracking.run_status(tracking.tracking_uri(second), run_id) == "RUNNING"


def test_the_local_remote_follows_the_project_when_it_moves(tmp_path: Path) -> None:
    versioning.ensure_repo(tmp_path / "before")
    (tmp_path / "before").rename(tmp_path / "after")
    listed = "".join(versioning.dvc(tmp_path / "after", "remote", "list").split())  # DVC wraps long lines
    assert str(tmp_path / "after" / versioning.LOCAL_REMOTE) in listed, listed


def test_a_users_own_dvc_remote_is_kept_as_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user_config = tmp_path / "user-dvc"
    user_config.mkdir()
    (user_config / "config").write_text("[core]\n    remote = mine\n['remote \"mine\"']\n    url = /srv/dvc-store\n")
    monkeypatch.setenv("DVC_GLOBAL_CONFIG_DIR", str(user_config))
    versioning.ensure_repo(tmp_path / "project")
    assert not (tmp_path / "project" / ".dvc" / "config.local").exists()
    assert "mine" in versioning.dvc(tmp_path / "project", "remote", "default")
