"""GPU workers: a Prefect work pool for GPU machines, deployments of ``run_pipeline`` and ``search_pipeline`` on it,
the worker command.

A deployment's runs are picked up by whichever worker polls its pool; the worker starts each run as a local
process (a ``process`` pool), so the run trains on the worker machine's GPUs. Which GPUs is a job variable,
``gpus``, that the pool's job template turns into ``CUDA_VISIBLE_DEVICES`` for the run's process: set per
deployment (``deploy_training(gpus=...)``), per run (``run_deployment(job_variables={"gpus": ...})`` or the UI's
custom run form), or left unset so the run sees what the worker's own environment shows. With ``train.device: auto``
and ``train.workers: auto`` training uses exactly the GPUs it is shown (none: the CPU).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.objects import WorkPool
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker

from lstmflow.config import Config
from lstmflow.errors import ConfigError

#: The folder holding ``flows/`` and ``tasks/``: a worker loads the flow from here, so it must exist at the same
#: path on every worker machine (a checkout at a fixed path, or a shared mount).
CODE_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/pipeline.py:run_pipeline"
SEARCH_ENTRYPOINT = "flows/pipeline.py:search_pipeline"
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

    A pool that a worker created on its own (``prefect worker start --pool`` does when the pool is missing) has
    Prefect's default template, where ``gpus`` would be silently ignored; it gets the variable added, and every
    other setting of the pool is kept.
    """
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            template = gpu_job_template(ProcessWorker.get_default_base_job_template())
            description = "GPU machines: each worker runs lstmflow flow runs as local processes on its GPUs."
            created = WorkPoolCreate(name=name, type="process", base_job_template=template, description=description)
            return client.create_work_pool(created)
        if pool.type != "process":
            raise ConfigError(
                f"work pool {name!r} has type {pool.type!r}; lstmflow's GPU workers need a 'process' pool "
                "(pick another pool name, or delete this pool)"
            )
        if GPUS_VARIABLE not in pool.base_job_template["variables"]["properties"]:
            client.update_work_pool(name, WorkPoolUpdate(base_job_template=gpu_job_template(pool.base_job_template)))
            pool = client.read_work_pool(name)
        return pool


def deploy_training(
    config: Path = Path("pipelines.yaml"),
    pool: str = "gpu",
    name: str = "train-gpu",
    pipeline: str | None = None,
    gpus: str | None = None,
    cron: str | None = None,
    job_variables: dict[str, Any] | None = None,
) -> UUID:
    """Deploy ``run_pipeline`` on the work pool ``pool`` (created if missing) for the project of ``config``.

    ``pipeline`` becomes the runs' default pipeline (a schedule needs one; a run from the UI may pick another).
    ``gpus`` is the runs' CUDA_VISIBLE_DEVICES (see :data:`GPUS_SCHEMA`); ``job_variables`` are any other job
    variables of a process pool, e.g. ``{"env": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}}``. Re-deploying
    the same name updates the deployment. Returns the deployment's id.
    """
    loaded = Config.load(config)
    if pipeline is not None:
        loaded.pipeline(pipeline)  # a bad default pipeline fails here, not at the first scheduled run
    elif cron is not None:
        names = ", ".join(loaded.names)
        raise ConfigError(f"a scheduled deployment needs a pipeline to run (cron {cron!r}): pass one of {names}")
    description = f"Train, evaluate and register pipelines of {loaded.path} on a worker of the {pool!r} pool."
    return _deploy(ENTRYPOINT, loaded, pool, name, {"pipeline": pipeline}, gpus, cron, job_variables, description)


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
        raise ConfigError(f"pipelines.{pipeline}.search: not set; a search deployment needs a pipeline with a search section")
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
    cron: str | None,
    job_variables: dict[str, Any] | None,
    description: str,
) -> UUID:
    """Deploy the flow at ``entrypoint`` on the pool, with the project's config and the given default parameters."""
    given = {key: value for key, value in defaults.items() if value is not None}
    parameters: dict[str, Any] = {"config": str(loaded.path), **given}
    variables = {**(job_variables or {}), **({GPUS_VARIABLE: gpus} if gpus is not None else {})}
    ensure_work_pool(pool)
    deployed = flow.from_source(source=str(CODE_ROOT), entrypoint=entrypoint)
    return deployed.deploy(
        name=name,
        work_pool_name=pool,
        parameters=parameters,
        job_variables=variables,
        cron=cron,
        description=description,
        print_next_steps=False,
        ignore_warnings=True,  # Prefect's hint to use `.serve` instead: a pool is the point here
    )


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
