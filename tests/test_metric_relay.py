"""A training child's metrics reach its MLflow run through the parent (lstmflow.tracking.relayed_metrics): every
line once, whole lines only, and a failure to log raised when training is over, with the lines kept for a retry."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from lstmflow import tracking
from lstmflow.training.loggers import SpoolLogger, read_spool


def new_run(root: Path) -> tuple[str, str]:
    uri = tracking.tracking_uri(root)
    return uri, tracking.start_run(uri, "relay", root / "mlruns", {}, {}, run_name="relay")


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key)]


def log_epochs(logger: Any, epochs: int) -> None:
    for epoch in range(1, epochs + 1):
        logger.log_metrics({"val_loss": 1.0 / epoch, "lr": 0.001}, step=epoch)


def test_a_spawned_childs_epochs_reach_the_run_once_each(tmp_path: Path) -> None:
    uri, run_id = new_run(tmp_path)
    spool = tmp_path / "metrics.jsonl"
    with tracking.relayed_metrics(uri, run_id, spool) as logger:
        child = multiprocessing.get_context("spawn").Process(target=log_epochs, args=(logger, 5))
        child.start()
        child.join()
        deadline = time.monotonic() + 10 * tracking.RELAY_SECONDS
        while len(history(uri, run_id, "val_loss")) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(history(uri, run_id, "val_loss")) == 5  # relayed while the block still runs, as a run trains
    assert child.exitcode == 0
    assert history(uri, run_id, "val_loss") == [(epoch, 1.0 / epoch) for epoch in range(1, 6)]

    with tracking.relayed_metrics(uri, run_id, spool) as logger:  # a retry on the same run folder
        logger.log_metrics({"val_loss": 0.1}, step=6)
    assert [step for step, _ in history(uri, run_id, "val_loss")] == [1, 2, 3, 4, 5, 6]  # nothing relayed twice


def test_a_line_still_being_written_waits_for_its_end(tmp_path: Path) -> None:
    spool = tmp_path / "metrics.jsonl"
    SpoolLogger(spool).log_metrics({"loss": 2.0}, step=1)
    whole = spool.read_bytes()
    spool.write_bytes(whole + b'{"step": 2, "time": 0, "metr')
    rows, offset = read_spool(spool, 0)
    assert [(step, metrics) for step, _, metrics in rows] == [(1, {"loss": 2.0})]
    assert offset == len(whole)
    spool.write_bytes(whole + b'{"step": 2, "time": 0, "metrics": {"loss": 1.0}}\n')
    assert read_spool(spool, offset)[0] == [(2, 0, {"loss": 1.0})]


def test_a_failure_to_log_is_raised_after_training_and_the_lines_are_kept(tmp_path: Path) -> None:
    uri, _ = new_run(tmp_path)
    spool = tmp_path / "metrics.jsonl"
    with (
        pytest.raises(Exception, match="no-such-run"),  # MLflow's own error for a missing run
        tracking.relayed_metrics(uri, "no-such-run", spool) as logger,
    ):
        log_epochs(logger, 2)
    assert len(read_spool(spool, 0)[0]) == 2
    assert not spool.with_name(spool.name + ".relayed").exists()  # the next attempt relays both lines

    with (
        pytest.raises(RuntimeError, match="training failed"),  # the block's own error is the one raised
        tracking.relayed_metrics(uri, "no-such-run", spool),
    ):
        raise RuntimeError("training failed")
