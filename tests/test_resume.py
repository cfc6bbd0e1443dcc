"""A kill of the whole `lstmflow run` tree resumes: same MLflow run, same checkpoint, the same model bit for bit; and
what the dead process left RUNNING is marked ended on the next start."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import load_state, make_project, mlflow_client, without_timing

from lstmflow.ops import recovery

#: `lstmflow run` arguments of the kill tests: long enough to be killed mid-training several times.
KILL_RUN = ("tiny", "--set", "train.epochs=60", "--set", "train.early_stopping.patience=1000")
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+ train_loss")


def dead_owner() -> dict[str, object]:
    """The owner record of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = {**recovery.this_process(), "pid": child.pid}
    owner["started"] = __import__("psutil").Process(child.pid).create_time()
    child.wait()
    return owner


def write_resume(run_dir: Path, key: dict[str, str], owner: dict[str, object], run_id: str) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / recovery.RESUME_FILE).write_text(json.dumps({"key": key, "owner": owner, "mlflow_run_id": run_id}))
    return run_dir


def test_an_owner_is_alive_while_its_process_runs_and_not_after() -> None:
    assert recovery.is_alive(recovery.this_process())
    assert not recovery.is_alive(dead_owner())
    assert not recovery.is_alive({**recovery.this_process(), "started": 0.0}), "a reused pid is not the owner"


def test_a_start_claims_only_a_dead_run_of_the_same_spec_features_and_code(tmp_path: Path) -> None:
    key = {"spec_hash": "s", "features_md5": "f", "code_version": "c"}
    runs = tmp_path / "runs" / "tiny"
    write_resume(runs / "other-key", {**key, "spec_hash": "t"}, dead_owner(), "r1")
    write_resume(runs / "alive", key, recovery.this_process(), "r2")
    write_resume(runs / "finished", key, dead_owner(), "r3")
    dead = write_resume(runs / "dead", key, dead_owner(), "r4")
    unfinished = lambda run_id: run_id != "r3"  # the MLflow run of "finished" ended
    assert recovery.claim_abandoned(runs, key, unfinished, runs / "new") == dead
    record = json.loads((dead / recovery.RESUME_FILE).read_text())
    assert record["owner"] == recovery.this_process() and record["mlflow_run_id"] == "r4"
    assert recovery.claim_abandoned(runs, key, unfinished, runs / "new") == runs / "new", "claimed once"


def test_runs_left_running_by_a_dead_process_are_marked_failed_once(tmp_path: Path) -> None:
    from lstmflow import tracking

    uri = tracking.tracking_uri(tmp_path)
    run_id = tracking.start_run(uri, "tiny", tmp_path / "mlruns", {}, {}, run_name="killed")
    alive_id = tracking.start_run(uri, "tiny", tmp_path / "mlruns", {}, {}, run_name="running")
    write_resume(tmp_path / "runs" / "tiny" / "a", {}, dead_owner(), run_id)
    write_resume(tmp_path / "runs" / "tiny" / "b", {}, recovery.this_process(), alive_id)
    [line] = recovery.mark_abandoned(tmp_path)
    assert run_id in line and "marked FAILED" in line
    assert [tracking.run_status(uri, r) for r in (run_id, alive_id)] == ["FAILED", "RUNNING"]
    assert recovery.mark_abandoned(tmp_path) == [], "reported once"


def test_a_run_found_ended_is_not_asked_about_again_until_another_process_claims_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lstmflow import tracking

    uri = tracking.tracking_uri(tmp_path)
    run_id = tracking.start_run(uri, "tiny", tmp_path / "mlruns", {}, {}, run_name="finished")
    tracking.end_run(uri, run_id, "FINISHED")
    run_dir = write_resume(tmp_path / "runs" / "tiny" / "a", {}, dead_owner(), run_id)
    assert recovery.mark_abandoned(tmp_path) == []
    asked: list[str] = []
    status = tracking.run_status
    monkeypatch.setattr(tracking, "run_status", lambda uri, run: asked.append(run) or status(uri, run))
    assert recovery.mark_abandoned(tmp_path) == [] and asked == []  # noted as ended: MLflow is not asked again

    record = json.loads((run_dir / recovery.RESUME_FILE).read_text())  # another process claims it, reopens the run
    (run_dir / recovery.RESUME_FILE).write_text(json.dumps({**record, "owner": dead_owner()}))  # and is killed
    assert tracking.reopen_run(uri, run_id, finished_too=True)
    [line] = recovery.mark_abandoned(tmp_path)
    assert run_id in line and asked == [run_id] and tracking.run_status(uri, run_id) == "FAILED"


def trained_epochs(root: Path) -> int:
    """The last epoch any training of the project logged."""
    logs = "".join(path.read_text() for path in root.glob("runs/tiny/*/train.log"))
    return max((int(epoch) for epoch in EPOCH_LINE.findall(logs)), default=0)


def kill_tree_during_training(root: Path, env: dict[str, str], epoch: int, rng: random.Random) -> None:
    """Start `lstmflow run` in a process group of its own and SIGKILL the whole group during epoch ``epoch + 1``
    (at a random moment in it), whatever process (CLI, flow, training child) is doing what."""
    command = [str(Path(sys.executable).parent / "lstmflow"), "run", *KILL_RUN]
    process = subprocess.Popen(command, cwd=root, env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    while trained_epochs(root) < epoch:
        assert process.poll() is None, f"the run ended before epoch {epoch}"
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.05))
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_the_whole_tree_killed_at_five_random_points_resumes_to_the_same_model(
    tmp_path: Path, prefect_harness: None
) -> None:
    """Five SIGKILLs of the process group at random epochs, then one run to the end: one MLflow run, every epoch
    logged, the killed flow runs CRASHED, and the model bit-identical to a training never interrupted."""
    from prefect.settings import PREFECT_API_URL

    from lstmflow.config import PipelineSpec
    from lstmflow.training.launch import train_in_child
    from lstmflow.training.loggers import ListLogger

    root = make_project(tmp_path / "project")
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    rng = random.Random(14)
    for epoch in sorted(rng.sample(range(2, 50), 5)):
        kill_tree_during_training(root, env, epoch, rng)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lstmflow"), "run", "--json", *KILL_RUN],
        cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "marked CRASHED" in done.stderr and "continuing MLflow run" in done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    [run_dir] = [path.parent for path in root.glob("runs/tiny/*/model.pt")]
    client = mlflow_client(root)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert [(run.info.run_id, run.info.status) for run in runs] == [(result["mlflow_run_id"], "FINISHED")]
    steps = {metric.step for metric in client.get_metric_history(result["mlflow_run_id"], "val_loss")}
    assert steps == set(range(1, 61))

    checkpoint = load_state(run_dir / "checkpoints" / "last.pt")
    reference = tmp_path / "reference"
    spec = PipelineSpec.model_validate(checkpoint["spec"])
    train_in_child(spec, root / "features" / "tiny", reference, ListLogger(), progress=False)
    resumed, uninterrupted = load_state(run_dir / "model.pt"), load_state(reference / "model.pt")
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in uninterrupted)
    history = load_state(reference / "checkpoints" / "last.pt")["history"]
    assert without_timing(checkpoint["history"]) == without_timing(history)
