"""The ``lstmflow`` command: validate, list, summarise, run and search the pipelines of ``pipelines.yaml``.

Exit codes: 0 success, 2 a bad config or bad data (a message, no traceback), 1 anything else.
The config is validated and the data probed before any flow starts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lstmflow.config import Config, PipelineSpec
from lstmflow.errors import LstmflowError

if TYPE_CHECKING:
    from lstmflow.tracking.runs import ModelChoice

app = typer.Typer(
    help="Declare LSTM pipelines in pipelines.yaml; train, evaluate and register them through Prefect, DVC and MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config", "-c", help="The pipelines file; data paths in it are relative to it.", envvar="LSTMFLOW_CONFIG"
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a key for this run, e.g. --set train.epochs=5 --set model.layers[0].lstm.units=32.",
    ),
]


def configure_environment(root: Path) -> None:
    """Keep Prefect's, MLflow's and DVC's state in the project and everything offline and quiet; while the
    project's stack (``lstmflow up``) runs, point Prefect and MLflow at its servers.

    Must run before Prefect is imported; values already in the environment win.
    """
    from lstmflow.ops.stack import environment

    defaults = {
        **environment(root),
        "PREFECT_HOME": str(root / ".prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DVC_NO_ANALYTICS": "1",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def _load(config: Path) -> Config:
    loaded = Config.load(config)
    configure_environment(loaded.path.parent)
    return loaded


@app.command("validate")
def validate_command(
    names: Annotated[list[str] | None, typer.Argument(help="Pipelines to check (default: all).")] = None,
    config: ConfigOption = Path("pipelines.yaml"),
) -> None:
    """Check pipelines.yaml and probe each pipeline's data (windows, horizon, season resolved)."""
    from lstmflow.ops.steps import probe

    loaded = _load(config)
    specs = loaded.all()
    table = Table("pipeline", "task", "data", "kind", "window", "horizon", "season", title=str(loaded.path))
    for name in names or loaded.names:
        spec = probe(specs[name] if name in specs else loaded.pipeline(name), loaded.path.parent)
        data = spec.data
        resolved = data.path.exists()
        table.add_row(
            name,
            spec.task,
            str(
                data.path.relative_to(loaded.path.parent) if data.path.is_relative_to(loaded.path.parent) else data.path
            ),
            data.kind,
            *(str(getattr(data, key, None) or "-") for key in ("window", "horizon")),
            str(spec.evaluate.season or "-") if spec.task == "forecast" else "-",
        )
        if not resolved:
            err.print(
                f"[yellow]{name}: {data.path.name} is built by a DVC stage on the first run; defaults resolve then.[/]"
            )
    out.print(table)
    out.print(f"[green]OK[/]: {len(names or loaded.names)} pipeline(s) valid.")


@app.command("list")
def list_command(config: ConfigOption = Path("pipelines.yaml")) -> None:
    """List the pipelines with their task, data and description."""
    loaded = _load(config)
    table = Table("pipeline", "task", "data", "layers", "description")
    for name, spec in loaded.all().items():
        layers = " → ".join(_layer_label(layer) for layer in spec.model.layers)
        table.add_row(name, spec.task, spec.data.path.name, layers, spec.description)
    out.print(table)


def _layer_label(layer: Any) -> str:
    units = getattr(layer.args, "units", None)
    return f"{layer.kind}({units})" if units else layer.kind


@app.command("summary")
def summary_command(
    name: Annotated[str, typer.Argument(help="Pipeline name.")],
    config: ConfigOption = Path("pipelines.yaml"),
    set_: SetOption = None,
) -> None:
    """Print the model's layers, output shapes and parameter counts, like Keras' summary()."""
    from lstmflow.data.kinds import model_io
    from lstmflow.models.lstm import build_model, summary
    from lstmflow.ops.steps import probe

    loaded = _load(config)
    spec = probe(loaded.pipeline(name, set_ or []), loaded.path.parent)
    n_features, n_outputs = model_io(spec)
    per_step = spec.task == "language_model"
    model = build_model(spec.model, n_features, n_outputs, where=f"pipelines.{name}.model", per_step=per_step)
    out.print(summary(model, n_features), highlight=False)


@app.command("run")
def run_command(
    names: Annotated[
        list[str], typer.Argument(help="Pipeline name(s); several run one after the other in one process.")
    ],
    config: ConfigOption = Path("pipelines.yaml"),
    set_: SetOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Train again even if spec, data and code are unchanged.")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON line per pipeline (the last line of stdout is the last pipeline's): pipeline, run id, model URI, data version, metrics.",
        ),
    ] = False,
) -> None:
    """Run pipelines end to end through Prefect: prepare (DVC) → train → evaluate → register (MLflow).

    A pipeline with a search section runs its search instead of one training, and registers the best trial.
    Every named pipeline is validated and its data probed before the first flow starts.
    """
    from lstmflow.ops.steps import probe

    loaded = _load(config)
    specs = [loaded.pipeline(name, set_ or []) for name in names]
    for spec in specs:
        probe(spec, loaded.path.parent)
    from flows.pipeline import run_pipeline

    for spec in specs:
        result = run_pipeline(
            pipeline=spec.name, overrides=_as_mapping(set_ or []), force=force, config=str(loaded.path)
        )
        _print_result(spec, result, err if as_json else out)
        if as_json:
            sys.stdout.write(json.dumps(result, default=str) + "\n")
            sys.stdout.flush()


@app.command("search")
def search_command(
    name: Annotated[str, typer.Argument(help="A pipeline with a search section.")],
    trials: Annotated[
        int | None,
        typer.Option(
            "--trials",
            "-n",
            min=1,
            help="The study's total of trials (search.trials); raise it to continue a finished search.",
        ),
    ] = None,
    config: ConfigOption = Path("pipelines.yaml"),
    set_: SetOption = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the result as one JSON line, as `run --json` does, with the search's summary under `search`.",
        ),
    ] = False,
) -> None:
    """Search a pipeline's hyperparameters with Optuna, then evaluate and register the best trial's model (as `run`).

    An interrupted search continues where it stopped; with nothing changed and the trials done, no trial starts.
    """
    from lstmflow.errors import ConfigError
    from lstmflow.ops.steps import probe

    loaded = _load(config)
    spec = loaded.pipeline(name, [*(set_ or []), *([f"search.trials={trials}"] if trials else [])])
    if spec.search is None:
        raise ConfigError(
            f"pipelines.{name}.search: not set; add a search section to search this pipeline, or train it once with `lstmflow run {name}`"
        )
    probe(spec, loaded.path.parent)
    from flows.pipeline import run_pipeline

    result = run_pipeline(pipeline=name, overrides=_as_mapping(set_ or []), trials=trials, config=str(loaded.path))
    _print_result(spec, result, err if as_json else out)
    if as_json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")


def _as_mapping(assignments: list[str]) -> dict[str, Any]:
    return dict(a.partition("=")[::2] for a in assignments)


#: The headline metrics of each task and the baseline each is shown beside.
HEADLINE = {
    "forecast": ("seasonal naive", [(key, f"naive_{key}") for key in ("rmse", "mae", "smape", "mase")]),
    "classify": ("majority class", [("accuracy", "majority_accuracy"), ("macro_f1", "majority_macro_f1")]),
    "language_model": (
        "unigram",
        [(key, f"unigram_{key}") for key in ("perplexity", "bits_per_character", "cross_entropy")],
    ),
}


def _print_result(spec: PipelineSpec, result: dict[str, Any], console: Console) -> None:
    if "search" in result:
        _print_trials(result["search"], console)
    metrics = result["metrics"]
    baseline, rows = HEADLINE[spec.task]
    table = Table("metric (test part)", "LSTM", baseline, title=f"{spec.name}: {result['model_uri']}")
    for key, baseline_key in rows:
        if key in metrics:
            other = metrics.get(baseline_key)
            table.add_row(key, f"{metrics[key]:.4g}", "-" if other is None else f"{other:.4g}")
    console.print(table)
    state = (
        "reused (nothing changed)"
        if result["cached"]
        else f"{result['epochs_run']} epochs, best {result['best_epoch']}"
    )
    if "search" in result:
        state = f"of the best trial, {result['search']['best']['number']}, reused (not trained again)"
    console.print(f"MLflow run {result['mlflow_run_id']} · training {state} · data {result['data_version']}")
    if gate := result.get("gate"):
        console.print(f"{_gate_line(gate)} (version {result['model_version']})", markup=False, highlight=False)


def _gate_line(decision: dict[str, Any]) -> str:
    """One line on what the gate decided and why, with its figures when it compared two versions."""
    line = f"gate: {decision['decision']} as {decision['alias']!r}: {decision['reason']}"
    if decision.get("champion_value") is not None:
        test = "" if decision.get("p_value") is None else f", {decision['test']} p={decision['p_value']:.3g}"
        line += (
            f" [{decision['metric']} {decision['challenger_value']:.4g} vs {decision['champion_value']:.4g} of version "
            f"{decision['champion_version']}{test}]"
        )
    return line


#: Rows of the trials table: the best completed trials first.
TRIALS_SHOWN = 10


def _print_trials(summary: dict[str, Any], console: Console) -> None:
    """The best trials of a search, with their values, epochs and sampled values, and the study's counts."""
    rows = summary["trials"]
    keys = list(rows[0]["params"]) if rows else []
    goal = "lowest" if summary["direction"] == "minimize" else "highest"
    counts = ", ".join(f"{count} {state}" for state, count in sorted(summary["counts"].items()))
    table = Table(
        "trial", "state", f"{summary['metric']} ({goal} best)", "epochs", title=f"search {summary['study']}: {counts}"
    )
    for key in keys:
        table.add_column(key, overflow="fold")  # keys are long: fold them rather than cut them
    for row in rows[:TRIALS_SHOWN]:
        value = "-" if row["value"] is None else f"{row['value']:.4g}"
        params = [
            f"{row['params'][key]:.4g}"
            if isinstance(row["params"].get(key), float)
            else str(row["params"].get(key, "-"))
            for key in keys
        ]
        table.add_row(str(row["number"]), row["state"], value, str(row["epochs_run"] or "-"), *params)
    console.print(table)
    ran = (
        ", ".join(f"{count} {state}" for state, count in sorted(summary["ran"].items()))
        or "none (the study was complete)"
    )
    console.print(f"trials run now: {ran} · MLflow parent run {summary['parent_run_id']}")


@app.command("join")
def join_command(
    name: Annotated[
        str,
        typer.Argument(help="The pipeline machine 0 is training; its train.nodes names the machines and the endpoint."),
    ],
    node_rank: Annotated[
        int, typer.Option("--node-rank", min=1, help="This machine's number, 1 to train.nodes.count - 1.")
    ],
    config: ConfigOption = Path("pipelines.yaml"),
    set_: SetOption = None,
) -> None:
    """Lend this machine's workers to a multi-node training that machine 0 started with `lstmflow run NAME`.

    This machine prepares the same data (DVC) and trains its share; machine 0 alone logs to MLflow, checkpoints,
    evaluates and registers. Start it on every machine but 0, with the same code, data and pipelines.yaml.
    """
    from lstmflow.ops import steps

    loaded = _load(config)
    overrides = [*(set_ or []), f"train.nodes.rank={node_rank}"]
    steps.probe(loaded.pipeline(name, overrides), loaded.path.parent)
    prepared = steps.prepare(loaded.path, name, overrides)
    done = steps.join_training(prepared, loaded.path.parent)
    out.print(
        f"machine {node_rank} of {name}: trained {done['epochs_run']} epochs with {done['workers']} processes in all"
    )


@app.command("generate")
def generate_command(
    name: Annotated[
        str,
        typer.Argument(
            help="A language-model pipeline (task: language_model) that has been run, so its model is registered."
        ),
    ],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text to continue.")],
    tokens: Annotated[
        int, typer.Option("--tokens", "-n", min=0, help="How many tokens to write (characters, for a char tokenizer).")
    ] = 200,
    temperature: Annotated[
        float,
        typer.Option(
            "--temperature",
            "-t",
            min=0.0,
            help="Below 1: safer, more repetitive text; above 1: more varied; 0: always the likeliest token.",
        ),
    ] = 0.8,
    seed: Annotated[int, typer.Option("--seed", help="The same seed writes the same text.")] = 0,
    version: Annotated[
        str,
        typer.Option(
            "--version", help="The registered version to use: a number, `latest`, or `@alias` (e.g. @champion)."
        ),
    ] = "latest",
    config: ConfigOption = Path("pipelines.yaml"),
) -> None:
    """Write text after --prompt with the pipeline's registered language model, sampling one token at a time."""
    import pandas as pd

    from lstmflow import tracking
    from lstmflow.errors import ConfigError

    loaded = _load(config)
    spec = loaded.pipeline(name, [])
    if spec.task != "language_model":
        raise ConfigError(f"pipelines.{name}.task: generate needs a language model, got task {spec.task!r}")
    model_uri = f"models:/{name}{version}" if version.startswith("@") else f"models:/{name}/{version}"
    model = tracking.load_model(tracking.tracking_uri(loaded.path.parent), model_uri)
    request = {"prompt": [prompt], "tokens": [tokens], "temperature": [temperature], "seed": [seed]}
    text = model.predict(pd.DataFrame(request))["text"].iloc[0]
    out.print(prompt + text, markup=False, highlight=False, soft_wrap=True)


@app.command("deploy")
def deploy_command(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Pipelines whose schedule to deploy (default: every pipeline with a `schedule`)."),
    ] = None,
    gpu_pool: Annotated[
        str | None,
        typer.Option(
            "--gpu-pool",
            help="Instead: deploy the training flow, unscheduled, on this work pool of GPU machines (e.g. gpu); runs start from the UI or `prefect deployment run`.",
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
            help='With --gpu-pool: CUDA_VISIBLE_DEVICES of its runs, e.g. 0,1 ("" for CPU only); default: the worker\'s own.',
        ),
    ] = None,
    search: Annotated[
        bool,
        typer.Option(
            "--search",
            help="With --gpu-pool: deploy the search flow; each of its runs is one worker of the pipeline's study, which several machines share through search.storage.",
        ),
    ] = False,
    config: ConfigOption = Path("pipelines.yaml"),
) -> None:
    """Make each pipeline's `schedule` a Prefect deployment that retrains it (created, updated, or removed with the
    schedule), or with --gpu-pool deploy the training or search flow on GPU workers. Needs a Prefect server
    (`lstmflow up`)."""
    from lstmflow.errors import ConfigError

    loaded = _load(config)
    _require_prefect_server("deploy")
    if gpu_pool is None:
        stray = [
            flag
            for flag, value in (
                ("--pipeline", pipeline),
                ("--name", name),
                ("--gpus", gpus),
                ("--search", search or None),
            )
            if value is not None
        ]
        if stray:
            raise ConfigError(
                f"{', '.join(stray)} go with --gpu-pool; scheduled deployments take their settings from `schedule:` in {loaded.path}"
            )
        from flows.deploy import deploy_schedules

        deployed = deploy_schedules(loaded.path, names or None)
        for deployment in deployed:
            out.print(deployment.describe(), markup=False, highlight=False)
        if not deployed:
            out.print(
                f'no pipeline of {loaded.path} has a `schedule:`; add one, e.g. `schedule: {{cron: "0 3 * * 1"}}`, and deploy again'
            )
        return
    if names:
        raise ConfigError(f"with --gpu-pool, name the default pipeline with --pipeline, got the argument(s) {names}")
    from flows.deploy import deploy_search, deploy_training

    if search:
        name = name or "search-gpu"
        deployment_id = deploy_search(loaded.path, pool=gpu_pool, name=name, pipeline=pipeline, gpus=gpus)
    else:
        name = name or "train-gpu"
        deployment_id = deploy_training(loaded.path, pool=gpu_pool, name=name, pipeline=pipeline, gpus=gpus)
    flow_name = "search_pipeline" if search else "run_pipeline"
    out.print(
        f"deployment {flow_name}/{name} ({deployment_id}) on work pool {gpu_pool!r}; start a worker there with "
        f"`lstmflow worker --pool {gpu_pool}`"
    )


@app.command("promote")
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

    loaded = _load(config)
    alias = loaded.pipeline(name, []).promote.alias
    moved = gate.promote(
        tracking.tracking_uri(loaded.path.parent), name, str(version), alias, reason=reason or "by hand"
    )
    before = f"was version {moved['previous']}" if moved["previous"] else "was not set"
    state = f"now version {moved['version']} ({before})" if moved["changed"] else f"already version {moved['version']}"
    out.print(f"{name}@{alias}: {state}")


@app.command("rollback")
def rollback_command(
    name: Annotated[str, typer.Argument(help="The pipeline (its registered model).")],
    config: ConfigOption = Path("pipelines.yaml"),
) -> None:
    """Return the pipeline's champion alias to the version that held it before the last move (gate or promote)."""
    from lstmflow import tracking
    from lstmflow.ops import gate

    loaded = _load(config)
    alias = loaded.pipeline(name, []).promote.alias
    moved = gate.rollback(tracking.tracking_uri(loaded.path.parent), name, alias)
    out.print(f"{name}@{alias}: back to version {moved['version']} (was version {moved['previous']})")


@app.command("worker")
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
    _load(config)
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


@app.command("up")
def up_command(
    prefect_port: Annotated[
        int, typer.Option("--prefect-port", min=1, max=65535, help="Port of the Prefect server and UI.")
    ] = 4200,
    mlflow_port: Annotated[
        int, typer.Option("--mlflow-port", min=1, max=65535, help="Port of the MLflow server and UI.")
    ] = 5000,
    config: ConfigOption = Path("pipelines.yaml"),
) -> None:
    """Start a Prefect server, a worker of the `local` work pool and an MLflow server on 127.0.0.1, in the background.

    Their data stay in the project (the same stores as without servers). Returns once each answers; while they
    run, every lstmflow command of this project uses them. `lstmflow down` stops them.
    """
    from lstmflow.ops import stack

    root = _load(config).path.parent
    for service in stack.up(root, prefect_port=prefect_port, mlflow_port=mlflow_port):
        url = service.url.removesuffix("/api") if service.name == "prefect" else service.url
        out.print(
            f"{service.name:8} pid {service.pid:<7} {url if service.name != 'worker' else 'work pool ' + stack.LOCAL_POOL}  log {service.log}"
        )


@app.command("down")
def down_command(config: ConfigOption = Path("pipelines.yaml")) -> None:
    """Stop the servers and the worker that `lstmflow up` started for this project."""
    from lstmflow.ops import stack

    stopped = stack.down(Path(config).expanduser().resolve().parent)
    out.print(f"stopped {', '.join(s.name for s in stopped)}" if stopped else "nothing was running")


@app.command("status")
def status_command(config: ConfigOption = Path("pipelines.yaml")) -> None:
    """Show the services `lstmflow up` started for this project and whether each answers."""
    from lstmflow.ops import stack

    services = stack.status(Path(config).expanduser().resolve().parent)
    if not services:
        out.print("the stack is down (start it with `lstmflow up`)")
        return
    table = Table("service", "pid", "url", "healthy")
    for service, healthy in services:
        table.add_row(service.name, str(service.pid), service.url, "yes" if healthy else "[red]no[/]")
    out.print(table)


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


@app.command("serve")
def serve_command(
    name: Annotated[
        str,
        typer.Argument(
            help="A registered pipeline model: NAME (its @champion, else its latest version) or NAME@ALIAS."
        ),
    ],
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
    [{"text": "..."}]} for text, [{"path": "clip.wav"}] for audio or images, the recent rows of a series
    ({"value": 1.5}, ...) for a forecast. Answers: a label and per-class probabilities, a forecast in the data's
    units, or generated text; a request the model cannot read is a 400 with the reason.
    """
    import shutil
    import socket

    from lstmflow import tracking
    from lstmflow.errors import ConfigError

    root = _load(config).path.parent
    choice = _choose_model(name, version, alias, root)
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: closing connections do not count
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another with --port") from None
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
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        choice.model_uri,
        "--env-manager",
        "local",
        "--host",
        host,
        "--port",
        str(port),
    ]
    os.execve(command[0], command, environment)


@app.command("predict")
def predict_command(
    name: Annotated[
        str,
        typer.Argument(
            help="A registered pipeline model: NAME (its @champion, else its latest version) or NAME@ALIAS."
        ),
    ],
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Raw inputs, by the pipeline's data kind: texts (text), files (audio, images), prompts (corpus), the last values of a one-column series, oldest first; or .csv/.parquet tables in the request layout (any pipeline; needed for sequences and many-column series)."
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

    root = _load(config).path.parent
    choice = _choose_model(name, version, alias, root)
    model = tracking.load_model(tracking.tracking_uri(root), choice.model_uri)
    predictor = runs.served_predictor(model)
    request = request_table(predictor.spec, inputs, getattr(predictor, "columns", None))
    answer = answer_by_input(runs.predict(model, request, choice.model_uri), inputs)
    if as_json:
        sys.stdout.write(answer.to_json(orient="records") + "\n")
        return
    table = Table(*map(str, answer.columns), title=f"{choice.model_uri} (version {choice.version})")
    for row in answer.itertuples(index=False):
        table.add_row(*(f"{value:.4g}" if isinstance(value, float) else str(value) for value in row))
    out.print(table)


@app.command("compare")
def compare_command(
    name: Annotated[str, typer.Argument(help="A pipeline: every run of its MLflow experiment is compared.")],
    top: Annotated[int, typer.Option("--top", "-n", min=1, help="Show the best N runs.")] = 10,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            "-m",
            help="The test metric to rank by; default: the pipeline's promote.metric (per task: mae, accuracy or cross_entropy).",
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
    from lstmflow.config import PROMOTE_METRICS, PromoteSpec
    from lstmflow.errors import ConfigError
    from lstmflow.tracking import runs

    loaded = _load(config)
    records = runs.pipeline_runs(tracking.tracking_uri(loaded.path.parent), name)
    spec = loaded.pipeline(name, []) if name in loaded.names else None  # a pipeline removed since keeps its runs
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
    direction = PROMOTE_METRICS[task][chosen]
    ranked, unranked = runs.rank_runs(records, f"test_{chosen}", direction)
    shown = ranked[:top]
    baseline = f"test_{runs.BASELINE_PREFIX[task]}_{chosen}"
    differing = runs.differing_params(shown)
    goal = "lower" if direction == "minimize" else "higher"
    table = Table("#", "run", "run id", "model", f"{chosen} ({goal} is better)", f"{runs.BASELINE_PREFIX[task]} {chosen}", "epochs",
                  title=f"{name}: {len(shown)} of {len(ranked)} evaluated runs, best first")  # fmt: skip
    for key in differing:
        table.add_column(key, overflow="fold")
    for rank, record in enumerate(shown, 1):
        versions = ", ".join(f"v{v}" + "".join(f" @{a}" for a in aliases) for v, aliases in record.versions) or "-"
        epochs = record.metrics.get("epochs_run")
        table.add_row(
            str(rank), record.run_name, record.run_id, versions, f"{record.metrics[f'test_{chosen}']:.4g}",
            f"{record.metrics[baseline]:.4g}" if baseline in record.metrics else "-", "-" if epochs is None else str(int(epochs)),
            *(record.params.get(key, "-") for key in differing),
        )  # fmt: skip
    out.print(table)
    if unranked:
        err.print(
            f"{len(unranked)} run(s) have no test_{chosen} and are not ranked (search parents, trials not evaluated, failed or running runs)"
        )
    if len(shown) > 1 and not differing:
        err.print("the runs shown have the same params")


@app.command("reproduce")
def reproduce_command(
    run_id: Annotated[
        str, typer.Argument(help="The MLflow run to reproduce (its id, as `lstmflow compare NAME` lists).")
    ],
    config: ConfigOption = Path("pipelines.yaml"),
) -> None:
    """Train a run's recorded spec again on the same data version, in a new run, and compare the test metrics.

    The run's own resolved spec (its spec.json) is used, not today's pipelines.yaml. If the data (its DVC md5) differ
    from the run's, this stops and names the commit to check out (`git checkout <commit> && dvc checkout`).
    """
    from lstmflow import tracking
    from lstmflow.tracking import runs

    loaded = _load(config)
    runs.recorded_run(
        tracking.tracking_uri(loaded.path.parent), run_id
    )  # an unknown or unfit run fails before a flow starts
    from flows.reproduce import reproduce_run

    result = reproduce_run(run_id=run_id, config=str(loaded.path))
    recorded, metrics = result["recorded"], result["metrics"]
    table = Table("metric (test part)", f"recorded ({run_id[:8]})", f"reproduced ({result['mlflow_run_id'][:8]})", "difference",
                  title=f"{result['pipeline']}: run {run_id} reproduced at commit {result['git_commit']}, data {result['data_md5']}")  # fmt: skip
    for key in sorted(set(recorded) | set(metrics)):
        old, new = recorded.get(key), metrics.get(key)
        difference = "-" if old is None or new is None else f"{new - old:+.3g}"
        table.add_row(key, "-" if old is None else f"{old:.6g}", "-" if new is None else f"{new:.6g}", difference)
    out.print(table)
    out.print(
        f"MLflow run {result['mlflow_run_id']} (tag lstmflow.reproduces={run_id}) · {result['epochs_run']} epochs"
    )


@app.command("reference")
def reference_command() -> None:
    """Print the pipelines.yaml reference (every key, its type, default and meaning) as Markdown."""
    from lstmflow.config.reference import reference_markdown

    out.print(reference_markdown(), markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point: lstmflow's errors become a message and an exit code (2 for config and data), not a traceback."""
    try:
        app()
    except LstmflowError as exc:
        err.print(f"[red]error[/]: {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
