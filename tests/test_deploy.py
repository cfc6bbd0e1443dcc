"""The GPU work pool, the deployments of pipelines.yaml's schedules, the run form the UI renders, and a real worker
process that runs a deployment."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from itertools import pairwise
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import psutil
import pytest
from conftest import TINY_PIPELINES, make_project

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


def test_deployments_that_could_not_run_are_refused(tmp_path: Path, prefect_harness: None) -> None:
    from flows.deploy import deploy_schedules, deploy_search, deploy_training
    from lstmflow.errors import ConfigError

    root = make_project(tmp_path / "project")
    with pytest.raises(ConfigError, match="nope"):
        deploy_training(root / "pipelines.yaml", pool="gpu-cron", pipeline="nope")
    with pytest.raises(ConfigError, match="no pipeline of .* has a search section"):
        deploy_search(root / "pipelines.yaml", pool="gpu-cron")
    with pytest.raises(ConfigError, match=r"pipelines.tiny.schedule: not set; add e.g. `schedule: \{cron: "):
        deploy_schedules(root / "pipelines.yaml", ["tiny"])
    with pytest.raises(ConfigError, match="no pipeline named 'tiney' .*did you mean 'tiny'"):
        deploy_schedules(root / "pipelines.yaml", ["tiney"])


SCHEDULED_PIPELINES = (
    TINY_PIPELINES
    + """\
    schedule: {interval: 1d, timezone: Europe/Berlin}
  other:
    data: {path: data/tiny.csv, time_column: month, target: value, window: 12, horizon: 3, transform: none}
    model: {layers: [{lstm: {units: 4}}, {dense: {}}]}
    evaluate: {season: 12}
    schedule: {cron: '0 3 * * 1', timezone: America/New_York, active: false}
"""
)


def scheduled_runs(deployment_id: UUID, count: int = 3) -> list[Any]:
    """Ask the server to schedule the deployment's next runs, with the scheduler's own code, and read them back."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        scheduled = client.request(
            "POST", "/deployments/{id}/schedule", path_params={"id": deployment_id}, json={"max_runs": count}
        )
        scheduled.raise_for_status()
        only_this = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        return client.read_flow_runs(deployment_filter=only_this, sort=FlowRunSort.EXPECTED_START_TIME_ASC)


def test_schedules_become_deployments_that_follow_pipelines_yaml(tmp_path: Path, prefect_harness: None) -> None:
    """Each `schedule:` is a deployment on its pool; a second deploy updates it in place; a removed schedule's
    deployment is deleted with its scheduled runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
    from prefect.exceptions import ObjectNotFound

    from flows.deploy import deploy_schedules

    root = make_project(tmp_path / "project", SCHEDULED_PIPELINES)
    config = str(root / "pipelines.yaml")
    first = {result.pipeline: result for result in deploy_schedules(root / "pipelines.yaml")}
    tiny, other = first["tiny"], first["other"]
    assert (tiny.action, tiny.name, tiny.pool) == ("created", "run_pipeline/retrain-tiny", "local")
    assert tiny.schedule == "every 1d (Europe/Berlin)"
    assert other.schedule == "cron 0 3 * * 1 (America/New_York), paused"
    assert other.next_run is None, "a paused schedule has no next run"
    assert "every 1d (Europe/Berlin) on work pool 'local'; next run" in tiny.describe()

    with get_client(sync_client=True) as client:
        assert client.read_work_pool("local").type == "process", "the schedules' default pool was created"
        deployment = client.read_deployment(tiny.deployment_id)
        [tiny_schedule] = client.read_deployment_schedules(tiny.deployment_id)
        [other_schedule] = client.read_deployment_schedules(other.deployment_id)
    assert deployment.parameters == {"pipeline": "tiny", "config": config}
    assert deployment.work_pool_name == "local" and "Retrain pipeline 'tiny'" in (deployment.description or "")
    assert isinstance(tiny_schedule.schedule, IntervalSchedule) and tiny_schedule.active
    assert tiny_schedule.schedule.interval.total_seconds() == 86400
    assert tiny_schedule.schedule.timezone == "Europe/Berlin"
    assert isinstance(other_schedule.schedule, CronSchedule) and not other_schedule.active
    assert (other_schedule.schedule.cron, other_schedule.schedule.timezone) == ("0 3 * * 1", "America/New_York")

    runs = scheduled_runs(tiny.deployment_id)
    starts = [run.expected_start_time for run in runs]
    assert len(runs) == 3
    assert {run.state_name for run in runs} == {"Scheduled"}
    assert all(run.parameters == {"pipeline": "tiny", "config": config} for run in runs)
    assert starts[0] == tiny.next_run, "the next run deploy_schedules reports is the server's"
    assert {(b - a).total_seconds() for a, b in pairwise(starts)} == {86400}
    local = tiny.next_run.astimezone(ZoneInfo("Europe/Berlin"))  # type: ignore[union-attr]
    assert (local.hour, local.minute) == (0, 0), "a daily interval fires at midnight of its time zone, redeploy or not"
    assert scheduled_runs(other.deployment_id) == [], "a paused schedule makes no runs"

    # Daily becomes every 12 hours; `other` loses its schedule.
    edited = SCHEDULED_PIPELINES.replace("interval: 1d", "interval: 12h")
    edited = edited.replace("    schedule: {cron: '0 3 * * 1', timezone: America/New_York, active: false}\n", "")
    (root / "pipelines.yaml").write_text(edited)
    second = {result.pipeline: result for result in deploy_schedules(root / "pipelines.yaml")}
    assert (second["tiny"].action, second["tiny"].deployment_id) == ("updated", tiny.deployment_id)
    assert (second["other"].action, second["other"].deployment_id) == ("deleted", other.deployment_id)
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=["run_pipeline"])))
        names = [deployment.name for deployment in deployments]
        [tiny_schedule] = client.read_deployment_schedules(tiny.deployment_id)
        with pytest.raises(ObjectNotFound):
            client.read_deployment(other.deployment_id)
    assert names.count("retrain-tiny") == 1 and "retrain-other" not in names
    assert tiny_schedule.schedule.interval.total_seconds() == 12 * 3600  # type: ignore[union-attr]
    starts = [run.expected_start_time for run in scheduled_runs(tiny.deployment_id)]
    assert {(b - a).total_seconds() for a, b in pairwise(starts)} == {12 * 3600}, "the daily runs were replaced"

    unscheduled = make_project(tmp_path / "another")
    assert deploy_schedules(unscheduled / "pipelines.yaml") == [], "nothing scheduled there, nothing deployed"
    with get_client(sync_client=True) as client:
        assert client.read_deployment(tiny.deployment_id), "another project's deploy leaves this one's deployments"


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
    """Deploy; the server refuses runs with bad parameters; trigger a good run and let a real
    `prefect worker start --run-once` process pick it up and train."""
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_URL

    from flows.deploy import deploy_training, worker_command

    root = make_project(tmp_path / "project")
    shared_store = f"sqlite:///{tmp_path / 'shared-mlflow.db'}"  # stands in for the cluster's tracking server
    deployment_id = deploy_training(
        root / "pipelines.yaml", pool="gpu-worker", name="train-test", pipeline="tiny", gpus="1",
        job_variables={"env": {"MLFLOW_TRACKING_URI": shared_store}},
    )  # fmt: skip

    with get_client(sync_client=True) as client:
        schema = client.read_deployment(deployment_id).parameter_openapi_schema
        form = schema["properties"]  # what the UI's run form renders
        assert form["pipeline"]["enum"] == ["tiny"], "the pipeline is chosen from the names in pipelines.yaml"
        assert form["pipeline"]["description"] == "Name of a pipeline in pipelines.yaml."
        assert form["epochs"]["anyOf"][0] == {"type": "integer", "exclusiveMinimum": 0}
        assert form["epochs"]["description"] == "Override train.epochs."
        assert all(field.get("description") for field in form.values()), "every field of the form says what it is"
        assert "$ref" not in str(schema), "a flat form: no nested models"
        assert form["config"]["readOnly"] and form["config"]["enum"] == [str(root / "pipelines.yaml")]
        bad_values = {
            "pipeline": ("nope", "'nope' is not one of \\['tiny'\\]"),
            "epochs": (0, "0 is less than or equal to the minimum of 0"),
            "batch_size": ("16", "'16' is not valid"),
        }
        for parameter, (value, reason) in bad_values.items():
            message = f"Validation failed for field '{parameter}'. Failure reason: {reason}"
            with pytest.raises(PrefectHTTPStatusError, match=message) as refused:
                client.create_flow_run_from_deployment(deployment_id, parameters={parameter: value})
            assert refused.value.response.status_code == 409, "the server refuses it before any run exists"
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
