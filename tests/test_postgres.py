"""The team's PostgreSQL server (lstmflow.ops.postgres), real: a user-level cluster on loopback, and an Optuna study
stored in it that keeps going across a server restart. `lstmflow up --team`, which runs the servers on it, is tested
in tests/test_team.py."""

from __future__ import annotations

import stat
from pathlib import Path

import psutil
import pytest
import sqlalchemy
from conftest import Patterns

from lstmflow.ops.postgres import HOST, Cluster
from lstmflow.training import search

pytestmark = pytest.mark.slow


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
