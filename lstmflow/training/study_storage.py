"""Where a study lives: a journal file, or a database whose restart the trials wait out instead of failing on it.

A database server that restarts (an upgrade, a failover, a crash) cuts every connection, and each storage call made
while it is down fails: Optuna's RDBStorage raises ``StorageInternalError`` and does not try again. A trial that
reports an epoch, sets an attribute or is told its result at that moment would be lost (recorded failed, or left
running). :class:`PatientStorage` therefore retries a call that failed on a lost or refused connection, with a
growing pause, until the server answers again or ``LSTMFLOW_STUDY_RECONNECT_SECONDS`` (default 120) have passed;
then it raises :class:`StudyStorageError`, and the search stops with the trial left for the next search to run
again. Connections are tested before use (``pool_pre_ping``), so a pool of dead ones after a restart is replaced.

A retried write is safe in Optuna's storage: each call is one transaction, rolled back when its connection is lost.
What a retry cannot tell apart is a commit that landed while its answer was lost: a trial's end told twice is refused
as already finished, which :func:`lstmflow.training.search.record` accepts; a new trial made twice leaves one without
an owner, which :func:`lstmflow.training.search.requeue_interrupted` ends once its heartbeat is stale.

Imported by :mod:`lstmflow.training.search` when a study is opened; it imports Optuna and SQLAlchemy itself.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy.exc
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, get_storage
from optuna.storages.journal import JournalFileBackend

from lstmflow.errors import ConfigError, LstmflowError

log = logging.getLogger(__name__)

#: The environment variable that sets how long a storage call waits for the database to come back.
RECONNECT_ENV = "LSTMFLOW_STUDY_RECONNECT_SECONDS"
RECONNECT_SECONDS = 120.0
#: Longest pause between two tries.
MOST_PAUSE_SECONDS = 5.0
#: Tries at creating the tables while other processes create them too (a new database, workers starting at once).
SCHEMA_TRIES = 5

T = TypeVar("T")


class StudyStorageError(LstmflowError):
    """The study's database stayed out of reach for longer than the reconnect window; the trial that needed it is
    run again by the next search."""


def open_storage(location: str) -> BaseStorage:
    """A journal file (several processes may append at once: it takes a file lock) or a database URL."""
    if "://" in location:
        return PatientStorage(location)
    Path(location).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(location))


def reconnect_seconds() -> float:
    """``LSTMFLOW_STUDY_RECONNECT_SECONDS``, else 120; a value that is not a positive number is a ConfigError."""
    raw = os.environ.get(RECONNECT_ENV) or str(RECONNECT_SECONDS)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not seconds > 0:
        raise ConfigError(f"{RECONNECT_ENV}: must be a number of seconds > 0, got {raw!r}")
    return seconds


def lost_connection(exc: BaseException) -> str | None:
    """Why the database went away, refused or dropped a connection, when ``exc`` (or an exception it came from) says
    so; None for anything else (a bad statement, a broken constraint)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError) or (
            isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated
        ):
            reason = str(getattr(seen, "orig", None) or seen).strip()
            return reason.splitlines()[0] if reason else type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    return None


def patiently(call: Callable[[], T], where: str) -> T:
    """``call()``, tried again while it fails on a lost connection, for up to :func:`reconnect_seconds`."""
    deadline, pause = None, 0.5
    while True:
        try:
            result = call()
        except Exception as exc:
            if (reason := lost_connection(exc)) is None:
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + reconnect_seconds()
                log.warning("the study's database %s is out of reach (%s); trying again for %.0f s", where, reason,
                            deadline - now)  # fmt: skip
            if now >= deadline:
                raise StudyStorageError(
                    f"the study's database {where} stayed out of reach for {reconnect_seconds():.0f} s ({reason}); "
                    f"its running trials are run again by the next search (wait longer with {RECONNECT_ENV})"
                ) from exc
            time.sleep(min(pause, deadline - now))
            pause = min(pause * 2, MOST_PAUSE_SECONDS)
            continue
        if deadline is not None:
            log.warning("the study's database %s answers again", where)
        return result


def _delegate(name: str) -> Callable[..., Any]:
    """A method that makes Optuna's storage call ``name``, waiting out a database restart."""

    def call(self: PatientStorage, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self._inner, name)
        return patiently(lambda: method(*args, **kwargs), self.where)

    call.__name__ = call.__qualname__ = name
    return call


class PatientStorage(BaseStorage):
    """Optuna's (cached) RDB storage, each call of the storage API waiting out a database restart (see the module).

    It wraps the storage API, not the RDB storage's own methods: Optuna's cache calls private ones of those."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
        self._inner = patiently(self._connect, self.where)

    def _connect(self) -> BaseStorage:
        """Optuna's storage on ``url``; the tables made here unless another process is making them right now."""
        for attempt in range(1, SCHEMA_TRIES):
            try:
                return self._open()
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):  # both made a table: one won
                time.sleep(0.2 * attempt)
        return self._open()  # the last try raises what it meets

    def _open(self) -> BaseStorage:
        return get_storage(RDBStorage(self.url, engine_kwargs={"pool_pre_ping": True}))

    create_new_study = _delegate("create_new_study")
    delete_study = _delegate("delete_study")
    set_study_user_attr = _delegate("set_study_user_attr")
    set_study_system_attr = _delegate("set_study_system_attr")
    get_study_id_from_name = _delegate("get_study_id_from_name")
    get_study_name_from_id = _delegate("get_study_name_from_id")
    get_study_directions = _delegate("get_study_directions")
    get_study_user_attrs = _delegate("get_study_user_attrs")
    get_study_system_attrs = _delegate("get_study_system_attrs")
    get_all_studies = _delegate("get_all_studies")
    create_new_trial = _delegate("create_new_trial")
    set_trial_param = _delegate("set_trial_param")
    get_trial_id_from_study_id_trial_number = _delegate("get_trial_id_from_study_id_trial_number")
    set_trial_state_values = _delegate("set_trial_state_values")
    set_trial_intermediate_value = _delegate("set_trial_intermediate_value")
    set_trial_user_attr = _delegate("set_trial_user_attr")
    set_trial_system_attr = _delegate("set_trial_system_attr")
    get_trial = _delegate("get_trial")
    get_all_trials = _delegate("get_all_trials")
