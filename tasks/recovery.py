"""At a flow's start: what runs killed processes left RUNNING is marked as ended, with a line for each."""

from __future__ import annotations

import uuid
from pathlib import Path

from prefect import get_client, get_run_logger
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.states import Crashed

from lstmflow.ops import recovery


def recover(root: str) -> None:
    """Mark the MLflow runs of dead processes FAILED and their Prefect flow runs CRASHED; then record this flow
    run's process, for the next start to check."""
    logger = get_run_logger()
    for line in recovery.mark_abandoned(Path(root)):
        logger.warning(line)
    for flow_run_id in recovery.dead_flow_runs(Path(root)):
        if _mark_crashed(flow_run_id):
            logger.warning("Prefect flow run %s was left running by a process that died: marked CRASHED", flow_run_id)
    if (this_run := flow_run.get_id()) is not None:
        recovery.record_flow_run(Path(root), this_run)


def _mark_crashed(flow_run_id: str) -> bool:
    """Set a flow run that has not ended to CRASHED; False when it ended (or is unknown to this Prefect API)."""
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(uuid.UUID(flow_run_id))
        except (ObjectNotFound, ValueError):
            return False
        if run.state is None or run.state.is_final():
            return False
        client.set_flow_run_state(run.id, Crashed(message="the process running this flow run died"), force=True)
    return True
