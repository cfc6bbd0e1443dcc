"""Commands that operate what was trained: deploy schedules and workers, move the champion, serve and predict,
compare and reproduce runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from lstmflow.cli.shared import ConfigOption, VerboseOption, err, load_config, out, quiet_logs

if TYPE_CHECKING:
    from lstmflow.config import Config
    from lstmflow.tracking.runs import ModelChoice, RunRecord


def deploy_command(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Pipelines whose schedule to deploy (default: every pipeline with a `schedule`)."),
    ] = None,
    gpu_pool: Annotated[
        str | None,
        typer.Option(
            "--gpu-pool",
            help="Instead: deploy the training flow, unscheduled, on this work pool of GPU machines (e.g. gpu); runs "
            "start from the UI or `prefect deployment run`.",
        ),
    ] = None,
    pipeline: Annotated[
        str | None,
        typer.Option(
            "--pipeline",
            help="With --gpu-pool: the pipeline its runs train by default (the run form can pick another).",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="With --gpu-pool: the deployment's name (default train-gpu, or search-gpu with --search)."
        ),
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            "--gpus",
            help='With --gpu-pool: CUDA_VISIBLE_DEVICES of its runs, e.g. 0,1 ("" for CPU only); default: the '
            "worker's own.",
        ),
    ] = None,
    search: Annotated[
        bool,
        typer.Option(
            "--search",
            help="With --gpu-pool: deploy the search flow; each of its runs is one worker of the pipeline's study, "
            "which several machines share through search.storage.",
        ),
    ] = False,
    config: ConfigOption = Path("pipelines.yaml"),
) -> None:
    """Make each pipeline's `schedule` a Prefect deployment that retrains it (created, updated, or removed with the
    schedule), or with --gpu-pool deploy the training or search flow on GPU workers. Needs a Prefect server
    (`lstmflow up`)."""
    from lstmflow.errors import ConfigError

    loaded = load_config(config)
    _require_prefect_server("deploy")
    if gpu_pool is None:
        given = (("--pipeline", pipeline), ("--name", name), ("--gpus", gpus), ("--search", search or None))
        if stray := [flag for flag, value in given if value is not None]:
            raise ConfigError(
                f"{', '.join(stray)} go with --gpu-pool; scheduled deployments take their settings from `schedule:` "
                f"in {loaded.path}"
            )
        _deploy_schedules(loaded, names)
    elif names:
        raise ConfigError(f"with --gpu-pool, name the default pipeline with --pipeline, got the argument(s) {names}")
    else:
        _deploy_on_pool(loaded, gpu_pool, pipeline, name, gpus, search)


def _deploy_schedules(loaded: Config, names: list[str] | None) -> None:
    """One line per retraining deployment created, updated or deleted, or how to add a schedule when none is."""
    from flows.deploy import deploy_schedules

    deployed = deploy_schedules(loaded.path, names or None)
    for deployment in deployed:
        out.print(deployment.describe(), markup=False, highlight=False)
    if not deployed:
        out.print(
            f"no pipeline of {loaded.path} has a `schedule:`; add one, e.g. "
            '`schedule: {cron: "0 3 * * 1"}`, and deploy again'
        )


def _deploy_on_pool(
    loaded: Config, pool: str, pipeline: str | None, name: str | None, gpus: str | None, search: bool
) -> None:
    """The training (or search) flow, unscheduled, on a work pool of GPU machines."""
    from flows.deploy import deploy_search, deploy_training

    if search:
        name = name or "search-gpu"
        deployment_id = deploy_search(loaded.path, pool=pool, name=name, pipeline=pipeline, gpus=gpus)
    else:
        name = name or "train-gpu"
        deployment_id = deploy_training(loaded.path, pool=pool, name=name, pipeline=pipeline, gpus=gpus)
    flow_name = "search_pipeline" if search else "run_pipeline"
    out.print(
        f"deployment {flow_name}/{name} ({deployment_id}) on work pool {pool!r}; start a worker there with "
        f"`lstmflow worker --pool {pool}`"
    )


def promote_command(
    name: Annotated[str, typer.Argument(help="The pipeline (its registered model).")],
    version: Annotated[int, typer.Option("--version", help="The model version to make the champion.")],
    reason: Annotated[str, typer.Option("--reason", help="Why, recorded on the version.")] = "",
    config: ConfigOption = Path("pipelines.yaml"),
) -> None:
    """Move the pipeline's champion alias (promote.alias) to a version by hand; the move is recorded, and `lstmflow
    rollback` undoes it."""
    from lstmflow import tracking
    from lstmflow.ops import gate

    loaded = load_config(config)
    alias = loaded.pipeline(name, []).promote.alias
    moved = gate.promote(
        tracking.tracking_uri(loaded.path.parent), name, str(version), alias, reason=reason or "by hand"
    )
    before = f"was version {moved['previous']}" if moved["previous"] else "was not set"
    state = f"now version {moved['version']} ({before})" if moved["changed"] else f"already version {moved['version']}"
    out.print(f"{name}@{alias}: {state}")


def rollback_command(
    name: Annotated[str, typer.Argument(help="The pipeline (its registered model).")],
    config: ConfigOption = Path("pipelines.yaml"),
) -> None:
    """Return the pipeline's champion alias to the version that held it before the last move (gate or promote)."""
    from lstmflow import tracking
    from lstmflow.ops import gate

    loaded = load_config(config)
    alias = loaded.pipeline(name, []).promote.alias
    moved = gate.rollback(tracking.tracking_uri(loaded.path.parent), name, alias)
    out.print(f"{name}@{alias}: back to version {moved['version']} (was version {moved['previous']})")


def worker_command(
    pool: Annotated[str, typer.Option("--pool", help="The work pool to take runs from (created if missing).")] = "gpu",
    name: Annotated[
        str | None, typer.Option("--name", help="The worker's name in the Prefect UI; default: Prefect's.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="Flow runs at once on this machine (1: a run holds all its GPUs).")
    ] = 1,
    run_once: Annotated[bool, typer.Option("--run-once", help="Run what is due, then exit.")] = False,
    config: ConfigOption = Path("pipelines.yaml"),
) -> None:
    """Start a Prefect worker on this machine for the GPU work pool (needs PREFECT_API_URL of a server)."""
    load_config(config)
    _require_prefect_server("worker")
    from flows.deploy import ensure_work_pool, worker_command

    ensure_work_pool(pool)
    command = worker_command(pool, name=name, limit=limit, run_once=run_once)
    sys.stdout.flush()
    os.execv(command[0], command)


def _require_prefect_server(command: str) -> None:
    """Deployments and workers live on a Prefect server; without one they would talk to a throwaway local API."""
    from lstmflow.errors import ConfigError

    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError(
            f"lstmflow {command} needs a Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api after "
            "`prefect server start --host 127.0.0.1`); without it a deployment or worker would talk to a temporary "
            "server that disappears"
        )


# ------------------------------------------------------------------------------------------ registered models

ModelArgument = Annotated[
    str,
    typer.Argument(help="A registered pipeline model: NAME (its @champion, else its latest version) or NAME@ALIAS."),
]
VersionOption = Annotated[
    str | None,
    typer.Option("--version", help="A registered version number, or `latest`; default: the alias's version."),
]
AliasOption = Annotated[
    str | None,
    typer.Option("--alias", help="A model alias (same as NAME@ALIAS); default: champion, else the latest version."),
]


def _choose_model(name: str, version: str | None, alias: str | None, root: Path) -> ModelChoice:
    """The registered version that NAME[@ALIAS] / --version / --alias pick, with a note on stderr when the default
    alias is not set yet."""
    from lstmflow import tracking
    from lstmflow.errors import ConfigError
    from lstmflow.tracking import runs

    base, named = runs.parse_model_name(name)
    if named and alias and named != alias:
        raise ConfigError(f"model {name}: the alias is @{named} in the name and --alias {alias}; give one")
    choice = runs.choose_version(tracking.tracking_uri(root), base, version, named or alias)
    if choice.note:
        err.print(f"[yellow]note[/]: {escape(choice.note)}", highlight=False)
    return choice


def serve_command(
    name: ModelArgument,
    version: VersionOption = None,
    alias: AliasOption = None,
    port: Annotated[
        int,
        typer.Option("--port", "-p", min=1, max=65535, help="Port to listen on (5000 is the stack's MLflow server)."),
    ] = 5001,
    host: Annotated[
        str, typer.Option("--host", help="Interface to listen on; 0.0.0.0 serves other machines too.")
    ] = "127.0.0.1",
    config: ConfigOption = Path("pipelines.yaml"),
) -> None:
    """Serve a registered model over HTTP with `mlflow models serve` (in this environment), until Ctrl-C.

    POST raw inputs as JSON to /invocations, in the columns `lstmflow predict` builds: {"dataframe_records":
    [{"text": "..."}]} for text, [{"path": "clip.wav"}] for audio, images or video (or a clip's bytes:
    [{"video_base64": "..."}], [{"audio_base64": "..."}] for speech), the recent rows of a series
    ({"value": 1.5}, ...) for a forecast. Answers: a label and per-class probabilities, a forecast in the data's
    units, or generated text; a request the model cannot read is a 400 with the reason.
    """
    import shutil

    from lstmflow import tracking
    from lstmflow.errors import ConfigError

    root = load_config(config).path.parent
    choice = _choose_model(name, version, alias, root)
    _check_port_free(host, port)
    scripts = str(Path(sys.executable).parent)  # the scoring server starts `uvicorn` from PATH
    environment = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking.tracking_uri(root),
        "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if shutil.which("uvicorn", path=environment["PATH"]) is None:
        raise ConfigError(f"`uvicorn` is not installed beside {sys.executable}; MLflow's scoring server needs it")
    out.print(
        f"serving {choice.model_uri} (version {choice.version}) at http://{host}:{port}/invocations · Ctrl-C stops it",
        highlight=False,
    )
    sys.stdout.flush()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", choice.model_uri, "--env-manager", "local",
               "--host", host, "--port", str(port)]  # fmt: skip
    os.execve(command[0], command, environment)


def _check_port_free(host: str, port: int) -> None:
    """A port already taken is a message before the model loads, not a server that dies after it."""
    import socket

    from lstmflow.errors import ConfigError

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: closing connections do not count
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another with --port") from None


def predict_command(
    name: ModelArgument,
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Raw inputs, by the pipeline's data kind: texts (text), files (audio, images, speech, video), prompts "
            "(corpus), texts to translate (pairs), the "
            "last values of a one-column series, oldest first; or .csv/.parquet tables in the request layout (any "
            "pipeline; needed for sequences and many-column series)."
        ),
    ],
    version: VersionOption = None,
    alias: AliasOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the answer as one JSON list of records instead of a table.")
    ] = False,
    config: ConfigOption = Path("pipelines.yaml"),
) -> None:
    """Predict with a registered model from raw inputs on the command line; prints a table.

    Classifiers answer a label and a probability per class for each input; forecasters the next steps in the data's
    units (after the last value or row given); language models the text after each prompt. A value that starts with
    `-` (a negative number) needs `--` before the inputs. Inputs the model cannot read exit 2 with the reason.
    """
    from lstmflow import tracking
    from lstmflow.serving.predict import answer_by_input, request_table
    from lstmflow.tracking import runs

    root = load_config(config).path.parent
    choice = _choose_model(name, version, alias, root)
    model = tracking.load_model(tracking.tracking_uri(root), choice.model_uri)
    predictor = runs.served_predictor(model)
    if hasattr(predictor, "allow_files_under"):
        predictor.allow_files_under(Path.cwd())  # files named on the command line: the current directory too
    request = request_table(predictor.spec, inputs, getattr(predictor, "columns", None))
    answer = answer_by_input(runs.predict(model, request, choice.model_uri), inputs)
    if as_json:
        sys.stdout.write(answer.to_json(orient="records") + "\n")
        return
    table = Table(*map(str, answer.columns), title=f"{choice.model_uri} (version {choice.version})")
    for row in answer.itertuples(index=False):
        table.add_row(*(f"{value:.4g}" if isinstance(value, float) else str(value) for value in row))
    out.print(table)


# ------------------------------------------------------------------------------------------------- runs


def compare_command(
    name: Annotated[str, typer.Argument(help="A pipeline: every run of its MLflow experiment is compared.")],
    top: Annotated[int, typer.Option("--top", "-n", min=1, help="Show the best N runs.")] = 10,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            "-m",
            help="The test metric to rank by; default: the pipeline's promote.metric (per task: mae, accuracy or "
            "cross_entropy).",
        ),
    ] = None,
    config: ConfigOption = Path("pipelines.yaml"),
) -> None:
    """Rank a pipeline's MLflow runs by a test metric, beside its baseline.

    Each row shows the run's model versions and aliases, its epochs, and the params that differ between the runs
    shown (the columns MLflow's compare view lines up). Runs without the metric (search parents, trials that were
    not evaluated, failed runs) are counted, not ranked.
    """
    from lstmflow import tracking
    from lstmflow.config import PROMOTE_METRICS
    from lstmflow.tracking import runs

    loaded = load_config(config)
    records = runs.pipeline_runs(tracking.tracking_uri(loaded.path.parent), name)
    task, chosen = _ranking_metric(loaded, name, records, metric)
    ranked, unranked = runs.rank_runs(records, f"test_{chosen}", PROMOTE_METRICS[task][chosen])
    shown = ranked[:top]
    differing = runs.differing_params(shown)
    out.print(_ranking_table(name, task, chosen, shown, len(ranked), differing))
    if unranked:
        err.print(
            f"{len(unranked)} run(s) have no test_{chosen} and are not ranked (search parents, trials not evaluated, "
            "failed or running runs)"
        )
    if len(shown) > 1 and not differing:
        err.print("the runs shown have the same params")


def _ranking_metric(loaded: Config, name: str, records: list[RunRecord], metric: str | None) -> tuple[str, str]:
    """The pipeline's task and the test metric to rank by: --metric, else the pipeline's promote.metric.

    A pipeline removed from pipelines.yaml keeps its runs: its task then comes from the runs' tags.
    """
    from lstmflow.config import PROMOTE_METRICS, PromoteSpec
    from lstmflow.errors import ConfigError

    spec = loaded.pipeline(name, []) if name in loaded.names else None
    recorded_tasks = [record.tags["lstmflow.task"] for record in records if "lstmflow.task" in record.tags]
    task = spec.task if spec else next(iter(recorded_tasks), None)
    if task is None:
        raise ConfigError(f"pipeline {name!r} is not in {loaded.path} and its runs record no task; nothing to rank")
    promote = spec.promote if spec else PromoteSpec()
    chosen = (metric or promote.resolved_metric(task)).removeprefix("test_")
    if chosen not in PROMOTE_METRICS[task]:
        raise ConfigError(
            f"--metric {metric}: a {task} pipeline is ranked by one of {', '.join(PROMOTE_METRICS[task])}"
        )
    return task, chosen


def _ranking_table(
    name: str, task: str, chosen: str, shown: list[RunRecord], evaluated: int, differing: list[str]
) -> Table:
    """The runs shown, best first, beside the baseline, with their versions, epochs and the params that differ."""
    from lstmflow.config import PROMOTE_METRICS
    from lstmflow.tracking import runs

    goal = "lower" if PROMOTE_METRICS[task][chosen] == "minimize" else "higher"
    baseline_name = runs.BASELINE_PREFIX[task]
    baseline = f"test_{baseline_name}_{chosen}"
    table = Table("#", "run", "run id", "model", f"{chosen} ({goal} is better)", f"{baseline_name} {chosen}", "epochs",
                  title=f"{name}: {len(shown)} of {evaluated} evaluated runs, best first")  # fmt: skip
    for key in differing:
        table.add_column(key, overflow="fold")
    for rank, record in enumerate(shown, 1):
        versions = ", ".join(f"v{v}" + "".join(f" @{a}" for a in aliases) for v, aliases in record.versions) or "-"
        epochs = record.metrics.get("epochs_run")
        table.add_row(
            str(rank), record.run_name, record.run_id, versions, f"{record.metrics[f'test_{chosen}']:.4g}",
            f"{record.metrics[baseline]:.4g}" if baseline in record.metrics else "-",
            "-" if epochs is None else str(int(epochs)), *(record.params.get(key, "-") for key in differing),
        )  # fmt: skip
    return table


def reproduce_command(
    run_id: Annotated[
        str, typer.Argument(help="The MLflow run to reproduce (its id, as `lstmflow compare NAME` lists).")
    ],
    config: ConfigOption = Path("pipelines.yaml"),
    verbose: VerboseOption = False,
) -> None:
    """Train a run's recorded spec again on the same data version, in a new run, and compare the test metrics.

    The run's own resolved spec (its spec.json) is used, not today's pipelines.yaml. If the data (its DVC md5) differ
    from the run's, this stops and names the commit to check out (`git checkout <commit> && dvc checkout`).
    """
    from lstmflow import tracking
    from lstmflow.tracking import runs

    quiet_logs(verbose)
    loaded = load_config(config)
    # an unknown or unfit run fails before a flow starts
    runs.recorded_run(tracking.tracking_uri(loaded.path.parent), run_id)
    from flows.reproduce import reproduce_run

    result = reproduce_run(run_id=run_id, config=str(loaded.path))
    recorded, metrics = result["recorded"], result["metrics"]
    title = f"{result['pipeline']}: run {run_id} reproduced at commit {result['git_commit']}, data {result['data_md5']}"
    reproduced = f"reproduced ({result['mlflow_run_id'][:8]})"
    table = Table("metric (test part)", f"recorded ({run_id[:8]})", reproduced, "difference", title=title)
    for key in sorted(set(recorded) | set(metrics)):
        old, new = recorded.get(key), metrics.get(key)
        difference = "-" if old is None or new is None else f"{new - old:+.3g}"
        table.add_row(key, "-" if old is None else f"{old:.6g}", "-" if new is None else f"{new:.6g}", difference)
    out.print(table)
    out.print(
        f"MLflow run {result['mlflow_run_id']} (tag lstmflow.reproduces={run_id}) · {result['epochs_run']} epochs"
    )
