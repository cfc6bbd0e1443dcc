"""The GPU work pool, a deployment of the training flow on it, and a real worker process that runs it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import make_project

pytestmark = pytest.mark.slow

#: Generous: the flow run imports Prefect and torch, runs DVC, trains, evaluates and registers a model.
WORKER_TIMEOUT_SECONDS = 300


def resolved_env(pool_name: str, job_variables: dict[str, Any]) -> dict[str, str | None]:
    """The environment a process worker gives a run with these job variables (Prefect's own resolution)."""
    from prefect.client.orchestration import get_client
    from prefect.workers.process import ProcessJobConfiguration

    with get_client(sync_client=True) as client:
        template = client.read_work_pool(pool_name).base_job_template
    return asyncio.run(ProcessJobConfiguration.from_template_and_values(template, job_variables)).env


def test_gpus_job_variable_sets_cuda_visible_devices(prefect_harness: None) -> None:
    from flows.deploy import ensure_work_pool

    pool = ensure_work_pool("gpu-template")
    assert pool.type == "process" and ensure_work_pool("gpu-template").id == pool.id, "a second call leaves it as is"
    assert resolved_env("gpu-template", {"gpus": "1,3"}) == {"CUDA_VISIBLE_DEVICES": "1,3"}
    assert resolved_env("gpu-template", {"gpus": 1}) == {"CUDA_VISIBLE_DEVICES": "1"}
    assert resolved_env("gpu-template", {"gpus": ""}) == {"CUDA_VISIBLE_DEVICES": ""}, "empty hides every GPU"
    assert resolved_env("gpu-template", {}) == {}, "unset: the worker's own CUDA_VISIBLE_DEVICES applies"
    assert resolved_env("gpu-template", {"gpus": "0", "env": {"CUDA_VISIBLE_DEVICES": "2", "A": "b"}}) == {
        "CUDA_VISIBLE_DEVICES": "2",
        "A": "b",
    }, "an explicit env entry wins and other env entries are kept"


def test_pool_created_by_a_worker_gets_the_gpus_variable(prefect_harness: None) -> None:
    """`prefect worker start --pool` creates a missing pool with Prefect's default template; ours completes it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    from flows.deploy import ensure_work_pool

    default = ProcessWorker.get_default_base_job_template()
    default["variables"]["properties"]["env"]["default"] = {"HF_HOME": "/scratch/hf"}  # a setting the admin made
    with get_client(sync_client=True) as client:
        created = client.create_work_pool(WorkPoolCreate(name="gpu-default", type="process", base_job_template=default))
    assert ensure_work_pool("gpu-default").id == created.id
    assert resolved_env("gpu-default", {"gpus": "0"}) == {"HF_HOME": "/scratch/hf", "CUDA_VISIBLE_DEVICES": "0"}


def test_a_pool_of_another_type_is_refused(prefect_harness: None) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.deploy import ensure_work_pool
    from lstmflow.errors import ConfigError

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="gpu-k8s", type="kubernetes"))
    with pytest.raises(ConfigError, match="work pool 'gpu-k8s' has type 'kubernetes'"):
        ensure_work_pool("gpu-k8s")


def test_a_schedule_without_a_pipeline_is_refused(tmp_path: Path, prefect_harness: None) -> None:
    from flows.deploy import deploy_training
    from lstmflow.errors import ConfigError

    root = make_project(tmp_path / "project")
    with pytest.raises(ConfigError, match="a scheduled deployment needs a pipeline to run .*: pass one of tiny"):
        deploy_training(root / "pipelines.yaml", pool="gpu-cron", cron="0 3 * * *")
    with pytest.raises(ConfigError, match="nope"):
        deploy_training(root / "pipelines.yaml", pool="gpu-cron", pipeline="nope")


def watch_environments(worker: subprocess.Popen[bytes], seen: dict[str, dict[str, str]], stop: threading.Event) -> None:
    """Record the environment of the worker's flow-run process and of the training child it spawns."""
    roles = {"prefect.engine": "flow run", "spawn_main": "training child"}
    while not stop.is_set() and len(seen) < len(roles):
        try:
            children = psutil.Process(worker.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for child in children:
            try:
                command = " ".join(child.cmdline())
                for marker, role in roles.items():
                    if marker in command and role not in seen:
                        seen[role] = child.environ()
            except psutil.Error:  # it ended between the listing and the look
                continue
        stop.wait(0.05)


def test_local_worker_runs_the_deployed_training_flow(tmp_path: Path, prefect_harness: None) -> None:
    """Deploy, trigger a run, and let a real `prefect worker start --run-once` process pick it up and train."""
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    from flows.deploy import deploy_training, worker_command

    root = make_project(tmp_path / "project")
    shared_store = f"sqlite:///{tmp_path / 'shared-mlflow.db'}"  # stands in for the cluster's tracking server
    deployment_id = deploy_training(
        root / "pipelines.yaml", pool="gpu-worker", name="train-test", pipeline="tiny", gpus="1",
        job_variables={"env": {"MLFLOW_TRACKING_URI": shared_store}},
    )  # fmt: skip
    # Scheduled now, not waited for; the run's gpus (a number, as `--job-variable gpus=0` gives) beats the deployment's.
    flow_run = run_deployment(deployment_id, parameters={"epochs": 2}, job_variables={"gpus": 0}, timeout=0)

    environment = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "CUDA_VISIBLE_DEVICES": ""}
    with open(tmp_path / "worker.log", "wb") as log:
        command = worker_command("gpu-worker", run_once=True)
        worker = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    seen: dict[str, dict[str, str]] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_environments, args=(worker, seen, stop), daemon=True)
    watcher.start()
    try:
        worker.wait(timeout=WORKER_TIMEOUT_SECONDS)
    finally:
        stop.set()
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        watcher.join(timeout=5)

    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(flow_run.id)
    worker_output = (tmp_path / "worker.log").read_text(errors="replace")
    assert finished.state is not None and finished.state.is_completed(), worker_output[-4000:]
    assert worker.returncode == 0

    for role in ("flow run", "training child"):
        assert seen[role]["CUDA_VISIBLE_DEVICES"] == "0", f"the run's gpus beat the deployment's, worker's: {role}"
        assert seen[role]["MLFLOW_TRACKING_URI"] == shared_store

    mlflow = MlflowClient(tracking_uri=shared_store, registry_uri=shared_store)
    [run] = mlflow.search_runs([mlflow.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["lstmflow.prefect_flow_run_id"] == str(flow_run.id)
    assert run.data.params["train.epochs"] == "2", "the run's parameter reached the flow"
    assert mlflow.get_model_version("tiny", "1").run_id == run.info.run_id
    assert not (root / "mlflow.db").exists(), "the env job variable, not the project default, chose the store"
