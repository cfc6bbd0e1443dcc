"""Deployments: the retraining schedules of ``pipelines.yaml`` (:func:`deploy_schedules`), deployments of
``run_pipeline`` and ``search_pipeline`` on a GPU work pool, their run form in the Prefect UI, the worker command.

A deployment's runs are picked up by whichever worker polls its pool; the worker starts each run as a local
process (a ``process`` pool), so the run trains on the worker machine's GPUs. Which GPUs is a job variable,
``gpus``, that the pool's job template turns into ``CUDA_VISIBLE_DEVICES`` for the run's process: set per
deployment (``deploy_training(gpus=...)``), per run (``run_deployment(job_variables={"gpus": ...})`` or the UI's
custom run form), or left unset so the run sees what the worker's own environment shows. With ``train.device: auto``
and ``train.workers: auto`` training uses exactly the GPUs it is shown (none: the CPU).

Every deployment made here shows the flow's parameters in the UI's run form with their descriptions, ``pipeline`` as
a choice among the project's pipelines and ``config`` fixed to the project's file; the server enforces that schema, so
a bad value (an unknown pipeline, ``epochs: 0``) is refused when the run is created, not deep in a task.
"""

from __future__ import annotations

import copy
import datetime
import sys
import typing
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast
from uuid import UUID

from prefect import Flow, flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowFilter, FlowFilterName
from prefect.client.schemas.objects import WorkPool
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron, Interval, Schedule
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect.workers.process import ProcessWorker
from pydantic.fields import FieldInfo

from flows.pipeline import run_pipeline
from lstmflow.config import Config, ScheduleSpec
from lstmflow.errors import ConfigError

if TYPE_CHECKING:
    from prefect.server.schemas.schedules import CronSchedule, IntervalSchedule

#: The folder holding ``flows/`` and ``tasks/``: a worker loads the flow from here, so it must exist at the same
#: path on every worker machine (a checkout at a fixed path, or a shared mount).
CODE_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/pipeline.py:run_pipeline"
SEARCH_ENTRYPOINT = "flows/pipeline.py:search_pipeline"
#: ``run_pipeline/retrain-<pipeline>``: the deployment of a pipeline's ``schedule:``.
RETRAIN_PREFIX = "retrain-"
#: Interval schedules count from here, in the schedule's time zone, so a re-deploy keeps their times
#: (``1d`` fires at midnight, ``6h`` at 0, 6, 12 and 18 o'clock, ``1m`` on the minute).
INTERVAL_ANCHOR = datetime.datetime(2026, 1, 1)
#: The job variable that selects the GPUs of a run.
GPUS_VARIABLE = "gpus"
GPUS_SCHEMA = {
    # `prefect deployment run --job-variable gpus=0` sends the number 0 (values are read as JSON)
    "anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}, {"type": "null"}],
    "default": None,
    "title": "GPUs",
    "description": (
        "CUDA_VISIBLE_DEVICES for the flow run, e.g. 0 or '0,1'; an empty string hides every GPU (train on CPU); "
        "unset: what the worker's environment shows."
    ),
}


def gpu_job_template(template: dict[str, Any]) -> dict[str, Any]:
    """A copy of a process pool's base job template in which the ``gpus`` job variable sets CUDA_VISIBLE_DEVICES.

    The template's ``env`` becomes a mapping, which Prefect merges with the ``env`` job variable of the pool, the
    deployment and the run (an explicit ``env.CUDA_VISIBLE_DEVICES`` there wins); an unset ``gpus`` drops the key.
    """
    updated = copy.deepcopy(template)
    updated["variables"]["properties"][GPUS_VARIABLE] = GPUS_SCHEMA
    env = updated["job_configuration"].get("env")
    updated["job_configuration"]["env"] = {
        **(env if isinstance(env, dict) else {}),
        "CUDA_VISIBLE_DEVICES": f"{{{{ {GPUS_VARIABLE} }}}}",
    }
    return updated


def ensure_work_pool(name: str = "gpu") -> WorkPool:
    """The ``process`` work pool ``name`` with the ``gpus`` job variable: created, or completed if it lacks it.

    Every pool lstmflow deploys to is one: ``gpu`` for GPU machines, ``local`` for the worker of ``lstmflow up``, or
    a schedule's ``pool``. A pool that a worker created on its own (``prefect worker start --pool`` does when the pool
    is missing) has Prefect's default template, where ``gpus`` would be silently ignored; it gets the variable
    added, and every other setting of the pool is kept.
    """
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            template = gpu_job_template(ProcessWorker.get_default_base_job_template())
            description = "lstmflow: each worker runs flow runs as local processes on its machine (GPUs: `gpus`)."
            created = WorkPoolCreate(name=name, type="process", base_job_template=template, description=description)
            return client.create_work_pool(created)
        if pool.type != "process":
            raise ConfigError(
                f"work pool {name!r} has type {pool.type!r}; lstmflow's workers need a 'process' pool "
                "(pick another pool name, or delete this pool)"
            )
        if GPUS_VARIABLE not in pool.base_job_template["variables"]["properties"]:
            client.update_work_pool(name, WorkPoolUpdate(base_job_template=gpu_job_template(pool.base_job_template)))
            pool = client.read_work_pool(name)
        return pool


@dataclass(frozen=True)
class ScheduledDeployment:
    """What :func:`deploy_schedules` did to one pipeline's retraining deployment."""

    pipeline: str
    name: str  # flow/deployment, as `prefect deployment run` takes it
    deployment_id: UUID
    action: Literal["created", "updated", "deleted"]
    pool: str | None  # None once deleted
    schedule: str | None  # e.g. "cron 0 3 * * 1 (Europe/Berlin)", "every 6h (UTC), paused"; None once deleted
    next_run: datetime.datetime | None  # None when paused or deleted

    def describe(self) -> str:
        """One line for the CLI."""
        if self.action == "deleted":
            return f"deleted {self.name} ({self.deployment_id}): pipeline {self.pipeline!r} has no schedule any more"
        upcoming = f"; next run {self.next_run.isoformat(timespec='minutes')}" if self.next_run else ""
        return f"{self.action} {self.name} ({self.deployment_id}): {self.schedule} on work pool {self.pool!r}{upcoming}"


def deploy_schedules(
    config: Path = Path("pipelines.yaml"), names: list[str] | None = None
) -> list[ScheduledDeployment]:
    """Make each pipeline's ``schedule:`` a deployment ``run_pipeline/retrain-<pipeline>`` on its pool.

    Creates or updates (never duplicates) the deployments of the named pipelines, or of every pipeline with a
    schedule; a named pipeline without one is a :class:`ConfigError`. Without names, ``pipelines.yaml`` is the whole
    truth: a ``retrain-*`` deployment of this project whose pipeline lost its schedule (or no longer exists) is
    deleted, with its scheduled runs (past runs stay in the Prefect UI). A deploy also resets what was changed by
    hand in the UI (a paused schedule: set ``active: false`` to keep it paused).
    """
    loaded = Config.load(config)
    if names:
        specs = {name: loaded.pipeline(name) for name in dict.fromkeys(names)}
        unscheduled = [name for name, spec in specs.items() if spec.schedule is None]
        if unscheduled:
            how = "add e.g. `schedule: {cron: '0 3 * * *', timezone: UTC}` or `schedule: {interval: 1d}` to"
            problems = [f"pipelines.{name}.schedule: not set; {how} pipelines.{name}" for name in unscheduled]
            raise ConfigError(problems, source=str(loaded.path))
    else:
        specs = loaded.all()
    scheduled = {name: spec.schedule for name, spec in specs.items() if spec.schedule is not None}
    results = [_deploy_retraining(loaded, pipeline, schedule) for pipeline, schedule in scheduled.items()]
    if not names:
        results += _delete_retraining(loaded, keep=set(scheduled))
    return results


def _deploy_retraining(loaded: Config, pipeline: str, spec: ScheduleSpec) -> ScheduledDeployment:
    name = RETRAIN_PREFIX + pipeline
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(f"{run_pipeline.name}/{name}")
            action: Literal["created", "updated"] = "updated"
        except ObjectNotFound:
            action = "created"
    schedule = prefect_schedule(spec)
    text = schedule_text(spec)
    description = (
        f"Retrain pipeline {pipeline!r} of {loaded.path} {text.removesuffix(', paused')} on a worker of the "
        f"{spec.pool!r} pool: its `schedule:` in pipelines.yaml, deployed by `lstmflow deploy`."
    )
    defaults = {"pipeline": pipeline}
    deployment_id = _deploy(ENTRYPOINT, loaded, spec.pool, name, defaults, None, schedule, None, description)
    next_run = _next_date(schedule) if spec.active else None
    full_name = f"{run_pipeline.name}/{name}"
    return ScheduledDeployment(pipeline, full_name, deployment_id, action, spec.pool, text, next_run)


def _delete_retraining(loaded: Config, keep: set[str]) -> list[ScheduledDeployment]:
    """Delete the ``retrain-*`` deployments of this project's config whose pipeline is not in ``keep``."""
    deleted = []
    with get_client(sync_client=True) as client:
        training = FlowFilter(name=FlowFilterName(any_=[run_pipeline.name]))
        retraining = DeploymentFilter(name=DeploymentFilterName(like_=RETRAIN_PREFIX))
        for deployment in client.read_deployments(flow_filter=training, deployment_filter=retraining):
            pipeline = deployment.name.removeprefix(RETRAIN_PREFIX)
            of_this_project = deployment.parameters.get("config") == str(loaded.path)
            if deployment.name.startswith(RETRAIN_PREFIX) and of_this_project and pipeline not in keep:
                client.delete_deployment(deployment.id)
                name = f"{run_pipeline.name}/{deployment.name}"
                deleted.append(ScheduledDeployment(pipeline, name, deployment.id, "deleted", None, None, None))
    return deleted


def prefect_schedule(spec: ScheduleSpec) -> Schedule:
    """The Prefect schedule of a pipeline's ``schedule:`` (the one place that translates it)."""
    if spec.cron is not None:
        return Cron(spec.cron, timezone=spec.timezone, active=spec.active)
    interval = datetime.timedelta(seconds=spec.interval or 0)
    anchor = INTERVAL_ANCHOR.replace(tzinfo=zoneinfo.ZoneInfo(spec.timezone))
    return Interval(interval, anchor_date=anchor, timezone=spec.timezone, active=spec.active)


def schedule_text(spec: ScheduleSpec) -> str:
    """``cron 0 3 * * 1 (Europe/Berlin)`` or ``every 6h (UTC)``, with ``, paused`` when not active."""
    if spec.cron is not None:
        when = f"cron {spec.cron}"
    else:
        seconds = int(spec.interval or 0)
        count, unit = next((seconds // size, unit) for unit, size in _UNITS if seconds % size == 0)
        when = f"every {count}{unit}"
    return f"{when} ({spec.timezone})" + ("" if spec.active else ", paused")


_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def _next_date(schedule: Schedule) -> datetime.datetime:
    """When the schedule fires next, by the server's own date logic."""
    # Prefect's run_coro_as_sync is generic in a TypeVar mypy cannot solve (infer_variance): the cast names its result.
    dates = cast("list[datetime.datetime]", run_coro_as_sync(_server_schedule(schedule).get_dates(1)))
    return dates[0]


def _server_schedule(schedule: Schedule) -> CronSchedule | IntervalSchedule:
    """The server's model of ``schedule``: its ``get_dates`` is the very date logic of Prefect's scheduler."""
    from prefect.server.schemas.schedules import CronSchedule, IntervalSchedule

    if schedule.cron is not None:
        return CronSchedule(cron=schedule.cron, timezone=schedule.timezone, day_or=schedule.day_or)
    return IntervalSchedule(interval=schedule.interval, anchor_date=schedule.anchor_date, timezone=schedule.timezone)


def deploy_training(
    config: Path = Path("pipelines.yaml"),
    pool: str = "gpu",
    name: str = "train-gpu",
    pipeline: str | None = None,
    gpus: str | None = None,
    job_variables: dict[str, Any] | None = None,
) -> UUID:
    """Deploy ``run_pipeline``, unscheduled, on the work pool ``pool`` (created if missing) for the project of
    ``config``; schedules live in ``pipelines.yaml`` (:func:`deploy_schedules`, whose ``pool`` may be ``gpu`` too).

    ``pipeline`` becomes the runs' default pipeline (a run from the UI may pick another).
    ``gpus`` is the runs' CUDA_VISIBLE_DEVICES (see :data:`GPUS_SCHEMA`); ``job_variables`` are any other job
    variables of a process pool, e.g. ``{"env": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}}``. Re-deploying
    the same name updates the deployment. Returns the deployment's id.
    """
    loaded = Config.load(config)
    if pipeline is not None:
        loaded.pipeline(pipeline)  # a bad default pipeline fails here, not at the first run
    description = f"Train, evaluate and register pipelines of {loaded.path} on a worker of the {pool!r} pool."
    return _deploy(ENTRYPOINT, loaded, pool, name, {"pipeline": pipeline}, gpus, None, job_variables, description)


def deploy_search(
    config: Path = Path("pipelines.yaml"),
    pool: str = "gpu",
    name: str = "search-gpu",
    pipeline: str | None = None,
    trials: int | None = None,
    gpus: str | None = None,
    job_variables: dict[str, Any] | None = None,
) -> UUID:
    """Deploy ``search_pipeline`` on the work pool ``pool``: each run is one worker of the pipeline's study.

    Start as many runs as there are machines to share the trials (``prefect deployment run 'search_pipeline/NAME'``,
    or the UI); each worker runs ``search.parallel`` trials at once until the study holds ``search.trials``
    (``trials`` overrides it). The workers share the study through ``search.storage``, which must then be a database
    every machine reaches (e.g. PostgreSQL), and their runs through ``MLFLOW_TRACKING_URI`` (a job variable in
    ``env``). Afterwards ``lstmflow search NAME`` evaluates and registers the best trial without training again.
    Other arguments as for :func:`deploy_training`.
    """
    loaded = Config.load(config)
    if pipeline is not None and loaded.pipeline(pipeline).search is None:
        raise ConfigError(
            f"pipelines.{pipeline}.search: not set; a search deployment needs a pipeline with a search section"
        )
    description = f"Run trials of a pipeline's search of {loaded.path} on a worker of the {pool!r} pool."
    defaults = {"pipeline": pipeline, "trials": trials}
    return _deploy(SEARCH_ENTRYPOINT, loaded, pool, name, defaults, gpus, None, job_variables, description)


def _deploy(
    entrypoint: str,
    loaded: Config,
    pool: str,
    name: str,
    defaults: dict[str, Any],
    gpus: str | None,
    schedule: Schedule | None,
    job_variables: dict[str, Any] | None,
    description: str,
) -> UUID:
    """Deploy the flow at ``entrypoint`` on the pool, with the project's config, the given default parameters and
    the project's run form; no schedule removes one the deployment had."""
    given = {key: value for key, value in defaults.items() if value is not None}
    parameters: dict[str, Any] = {"config": str(loaded.path), **given}
    variables = {**(job_variables or {}), **({GPUS_VARIABLE: gpus} if gpus is not None else {})}
    choices = loaded.names if entrypoint == ENTRYPOINT else _search_pipelines(loaded)
    ensure_work_pool(pool)
    # Called from synchronous code, Prefect's dual sync/async methods return their results, not coroutines.
    source = cast("Flow[..., Any]", flow.from_source(source=str(CODE_ROOT), entrypoint=entrypoint))
    deployment = cast(
        RunnerDeployment,
        source.to_deployment(
            name=name,
            work_pool_name=pool,
            parameters=parameters,
            job_variables=variables,
            schedules=[schedule] if schedule is not None else [],
            description=description,
            enforce_parameter_schema=True,  # the server refuses a run whose parameters break the form's schema
        ),
    )
    # Prefect builds the schema from the signature; the form is ours. (The private attribute is what Prefect's
    # own `freeze` of a parameter edits; tests read the stored schema back from the server.)
    deployment._parameter_openapi_schema.properties = form_properties(
        deployment._parameter_openapi_schema.properties, source, choices, str(loaded.path)
    )
    return cast(UUID, deployment.apply())


def form_properties(
    properties: dict[str, Any], loaded_flow: Flow[..., Any], pipelines: list[str], config: str
) -> dict[str, Any]:
    """The properties of a deployment's parameter schema, which the Prefect UI renders as the run form.

    Each parameter gets the description of its ``Annotated[..., Field(description=...)]`` (Prefect 3 reads
    descriptions only from ``= Field(...)`` defaults and docstrings), ``pipeline`` becomes a choice among
    ``pipelines``, and ``config`` is fixed to the project's file (the choices come from it).
    """
    form = copy.deepcopy(properties)
    for parameter, description in _descriptions(loaded_flow.fn).items():
        if parameter in form:
            form[parameter].setdefault("description", description)
    form["pipeline"]["enum"] = pipelines
    form["config"].update(enum=[config], default=config, readOnly=True)
    return form


def _descriptions(function: Callable[..., Any]) -> dict[str, str]:
    hints = typing.get_type_hints(function, include_extras=True)
    return {
        parameter: meta.description
        for parameter, hint in hints.items()
        for meta in getattr(hint, "__metadata__", ())
        if isinstance(meta, FieldInfo) and meta.description
    }


def _search_pipelines(loaded: Config) -> list[str]:
    """The pipelines with a ``search`` section: the choices of a search deployment's form."""
    names = [name for name in loaded.names if loaded.merged(name)[0].get("search") is not None]
    if not names:
        raise ConfigError(f"no pipeline of {loaded.path} has a search section, so a search deployment has none to run")
    return names


def worker_command(
    pool: str = "gpu", name: str | None = None, limit: int | None = 1, run_once: bool = False
) -> list[str]:
    """``prefect worker start`` for the pool, with this environment's Python.

    The worker reaches the server through ``PREFECT_API_URL`` in its environment (without it, it would poll a
    temporary server of its own and never see a run). ``limit`` 1: one training run at a time holds the
    machine's GPUs. ``run_once``: poll once, run what is due, and exit (for tests and cron-driven machines).
    """
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    if name is not None:
        command += ["--name", name]
    if limit is not None:
        command += ["--limit", str(limit)]
    if run_once:
        command.append("--run-once")
    return command
