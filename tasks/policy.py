"""Task policies shared by the pipeline's tasks: when a retry can help, what a cache key is made of."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from lstmflow.config import OPERATIONS
from lstmflow.errors import LstmflowError
from lstmflow.ops.steps import code_version
from lstmflow.tracking import TrackingUnavailable

log = logging.getLogger(__name__)


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry crashes and flaky IO, never what the user must fix (exit code 2: a bad config or data, a full or
    unwritable folder): the same input fails the same way."""
    try:
        state.result()
    except LstmflowError as exc:  # a bad config or data, a full disk (exit code 2): the user's to fix
        return exc.exit_code != 2
    except Exception:  # noqa: BLE001 - anything else may be transient (a killed child, a locked store)
        return True
    return True


#: Pauses before the retries of a step that talks to MLflow: together about two minutes, longer than a restart of
#: its server takes (and each try first spends the MLflow client's own retries, some four minutes by default).
TRACKING_RETRY_DELAYS: list[float] = [2, 4, 8, 16, 32, 64]


def tracking_retries(others: int) -> Callable[[Any, Any, Any], bool]:
    """The retry condition of a step that talks to MLflow: every retry the task has while MLflow's server does not
    answer (TrackingUnavailable: what the step made is kept, the retry redoes only its MLflow part), and the first
    ``others`` failures of any other kind that :func:`retry_unless_user_error` would retry."""

    def condition(task: Any, task_run: Any, state: Any) -> bool:
        try:
            state.result()
        except TrackingUnavailable as exc:  # said on the console: the retries may take minutes
            what = str(exc).split("; ")[0]
            log.warning("%s; retry %d of %d", what, task_run.run_count, task.retries)
            return True
        except Exception:  # noqa: BLE001 - judged below
            return task_run.run_count <= others and retry_unless_user_error(task, task_run, state)
        return True

    return condition


def tracking_retry_options(others: int) -> dict[str, Any]:
    """The retry settings of a task that talks to MLflow (see :func:`tracking_retries`), for ``@task(**…)``."""
    return {
        "retries": len(TRACKING_RETRY_DELAYS),
        "retry_delay_seconds": TRACKING_RETRY_DELAYS,
        "retry_condition_fn": tracking_retries(others),
    }


def step_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """A step is reused when its resolved spec, its data's DVC hash and the version of the code that decides what
    trains (:func:`~lstmflow.ops.steps.code_version`: not the CLI's or the operations') are unchanged."""
    prepared = parameters["prepared"]
    # The operations sections (schedule, promote) change when a pipeline runs and what it registers, not what trains.
    trains = {key: value for key, value in prepared["spec"].items() if key not in OPERATIONS}
    spec_hash = hashlib.sha256(json.dumps(trains, sort_keys=True).encode()).hexdigest()[:16]
    return f"{context.task.name}-{prepared['spec']['name']}-{spec_hash}-{prepared['features_md5']}-{code_version()}"
