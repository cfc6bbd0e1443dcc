"""The ``lstmflow`` command: validate, list, summarise, run and search the pipelines of ``pipelines.yaml``.

Exit codes: 0 success, 2 a bad config or bad data (a message, no traceback), 1 anything else.
The config is validated and the data probed before any flow starts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lstmflow.config import Config, PipelineSpec
from lstmflow.errors import LstmflowError

app = typer.Typer(
    help="Declare LSTM pipelines in pipelines.yaml; train, evaluate and register them through Prefect, DVC and MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="The pipelines file; data paths in it are relative to it.", envvar="LSTMFLOW_CONFIG")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a key for this run, e.g. --set train.epochs=5 --set model.layers[0].lstm.units=32."),
]


def configure_environment(root: Path) -> None:
    """Keep Prefect's, MLflow's and DVC's state in the project and everything offline and quiet; while the
    project's stack (``lstmflow up``) runs, point Prefect and MLflow at its servers.

    Must run before Prefect is imported; values already in the environment win.
    """
    from lstmflow.stack import environment

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
    from lstmflow.steps import probe

    loaded = _load(config)
    specs = loaded.all()
    table = Table("pipeline", "task", "data", "kind", "window", "horizon", "season", title=str(loaded.path))
    for name in names or loaded.names:
        spec = probe(specs[name] if name in specs else loaded.pipeline(name), loaded.path.parent)
        data = spec.data
        resolved = data.path.exists()
        table.add_row(
            name, spec.task, str(data.path.relative_to(loaded.path.parent) if data.path.is_relative_to(loaded.path.parent) else data.path),
            data.kind, *(str(getattr(data, key, None) or "-") for key in ("window", "horizon")),
            str(spec.evaluate.season or "-") if spec.task == "forecast" else "-",
        )
        if not resolved:
            err.print(f"[yellow]{name}: {data.path.name} is built by a DVC stage on the first run; defaults resolve then.[/]")
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
    from lstmflow.steps import probe

    loaded = _load(config)
    spec = probe(loaded.pipeline(name, set_ or []), loaded.path.parent)
    n_features, n_outputs = model_io(spec)
    per_step = spec.task == "language_model"
    model = build_model(spec.model, n_features, n_outputs, where=f"pipelines.{name}.model", per_step=per_step)
    out.print(summary(model, n_features), highlight=False)


@app.command("run")
def run_command(
    names: Annotated[list[str], typer.Argument(help="Pipeline name(s); several run one after the other in one process.")],
    config: ConfigOption = Path("pipelines.yaml"),
    set_: SetOption = None,
    force: Annotated[bool, typer.Option("--force", help="Train again even if spec, data and code are unchanged.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line per pipeline (the last line of stdout is the last pipeline's): pipeline, run id, model URI, data version, metrics.")] = False,
) -> None:
    """Run pipelines end to end through Prefect: prepare (DVC) → train → evaluate → register (MLflow).

    A pipeline with a search section runs its search instead of one training, and registers the best trial.
    Every named pipeline is validated and its data probed before the first flow starts.
    """
    from lstmflow.steps import probe

    loaded = _load(config)
    specs = [loaded.pipeline(name, set_ or []) for name in names]
    for spec in specs:
        probe(spec, loaded.path.parent)
    from flows.pipeline import run_pipeline

    for spec in specs:
        result = run_pipeline(pipeline=spec.name, overrides=_as_mapping(set_ or []), force=force, config=str(loaded.path))
        _print_result(spec, result, err if as_json else out)
        if as_json:
            sys.stdout.write(json.dumps(result, default=str) + "\n")
            sys.stdout.flush()


@app.command("search")
def search_command(
    name: Annotated[str, typer.Argument(help="A pipeline with a search section.")],
    trials: Annotated[int | None, typer.Option("--trials", "-n", min=1, help="The study's total of trials (search.trials); raise it to continue a finished search.")] = None,
    config: ConfigOption = Path("pipelines.yaml"),
    set_: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON line, as `run --json` does, with the search's summary under `search`.")] = False,
) -> None:
    """Search a pipeline's hyperparameters with Optuna, then evaluate and register the best trial's model (as `run`).

    An interrupted search continues where it stopped; with nothing changed and the trials done, no trial starts.
    """
    from lstmflow.errors import ConfigError
    from lstmflow.steps import probe

    loaded = _load(config)
    spec = loaded.pipeline(name, [*(set_ or []), *([f"search.trials={trials}"] if trials else [])])
    if spec.search is None:
        raise ConfigError(f"pipelines.{name}.search: not set; add a search section to search this pipeline, or train it once with `lstmflow run {name}`")
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
    "language_model": ("unigram", [(key, f"unigram_{key}") for key in ("perplexity", "bits_per_character", "cross_entropy")]),
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
    state = "reused (nothing changed)" if result["cached"] else f"{result['epochs_run']} epochs, best {result['best_epoch']}"
    if "search" in result:
        state = f"of the best trial, {result['search']['best']['number']}, reused (not trained again)"
    console.print(f"MLflow run {result['mlflow_run_id']} · training {state} · data {result['data_version']}")


#: Rows of the trials table: the best completed trials first.
TRIALS_SHOWN = 10


def _print_trials(summary: dict[str, Any], console: Console) -> None:
    """The best trials of a search, with their values, epochs and sampled values, and the study's counts."""
    rows = summary["trials"]
    keys = list(rows[0]["params"]) if rows else []
    goal = "lowest" if summary["direction"] == "minimize" else "highest"
    counts = ", ".join(f"{count} {state}" for state, count in sorted(summary["counts"].items()))
    table = Table("trial", "state", f"{summary['metric']} ({goal} best)", "epochs", title=f"search {summary['study']}: {counts}")
    for key in keys:
        table.add_column(key, overflow="fold")  # keys are long: fold them rather than cut them
    for row in rows[:TRIALS_SHOWN]:
        value = "-" if row["value"] is None else f"{row['value']:.4g}"
        params = [f"{row['params'][key]:.4g}" if isinstance(row["params"].get(key), float) else str(row["params"].get(key, "-")) for key in keys]
        table.add_row(str(row["number"]), row["state"], value, str(row["epochs_run"] or "-"), *params)
    console.print(table)
    ran = ", ".join(f"{count} {state}" for state, count in sorted(summary["ran"].items())) or "none (the study was complete)"
    console.print(f"trials run now: {ran} · MLflow parent run {summary['parent_run_id']}")


@app.command("join")
def join_command(
    name: Annotated[str, typer.Argument(help="The pipeline machine 0 is training; its train.nodes names the machines and the endpoint.")],
    node_rank: Annotated[int, typer.Option("--node-rank", min=1, help="This machine's number, 1 to train.nodes.count - 1.")],
    config: ConfigOption = Path("pipelines.yaml"),
    set_: SetOption = None,
) -> None:
    """Lend this machine's workers to a multi-node training that machine 0 started with `lstmflow run NAME`.

    This machine prepares the same data (DVC) and trains its share; machine 0 alone logs to MLflow, checkpoints,
    evaluates and registers. Start it on every machine but 0, with the same code, data and pipelines.yaml.
    """
    from lstmflow import steps

    loaded = _load(config)
    overrides = [*(set_ or []), f"train.nodes.rank={node_rank}"]
    steps.probe(loaded.pipeline(name, overrides), loaded.path.parent)
    prepared = steps.prepare(loaded.path, name, overrides)
    done = steps.join_training(prepared, loaded.path.parent)
    out.print(f"machine {node_rank} of {name}: trained {done['epochs_run']} epochs with {done['workers']} processes in all")


@app.command("generate")
def generate_command(
    name: Annotated[str, typer.Argument(help="A language-model pipeline (task: language_model) that has been run, so its model is registered.")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text to continue.")],
    tokens: Annotated[int, typer.Option("--tokens", "-n", min=0, help="How many tokens to write (characters, for a char tokenizer).")] = 200,
    temperature: Annotated[float, typer.Option("--temperature", "-t", min=0.0, help="Below 1: safer, more repetitive text; above 1: more varied; 0: always the likeliest token.")] = 0.8,
    seed: Annotated[int, typer.Option("--seed", help="The same seed writes the same text.")] = 0,
    version: Annotated[str, typer.Option("--version", help="The registered version to use: a number, `latest`, or `@alias` (e.g. @champion).")] = "latest",
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
    pipeline: Annotated[str | None, typer.Option("--pipeline", help="The pipeline every run of this deployment trains (required with --cron); default: chosen per run.")] = None,
    pool: Annotated[str, typer.Option("--pool", help="The process work pool of the GPU workers (created if missing).")] = "gpu",
    name: Annotated[str | None, typer.Option("--name", help="The deployment's name: runs are `run_pipeline/NAME` (default train-gpu), or `search_pipeline/NAME` (default search-gpu).")] = None,
    gpus: Annotated[str | None, typer.Option("--gpus", help="CUDA_VISIBLE_DEVICES of its runs, e.g. 0,1 (\"\" for CPU only); default: the worker's own.")] = None,
    cron: Annotated[str | None, typer.Option("--cron", help="Retrain on this schedule (cron syntax, UTC), e.g. \"0 3 * * *\".")] = None,
    search: Annotated[bool, typer.Option("--search", help="Deploy the search flow instead (default name search-gpu): each run is one worker of the pipeline's study, which several machines share through search.storage.")] = False,
    config: ConfigOption = Path("pipelines.yaml"),
) -> None:
    """Create or update a deployment of the training (or search) flow on a GPU work pool (needs PREFECT_API_URL)."""
    from lstmflow.errors import ConfigError

    loaded = _load(config)
    _require_prefect_server("deploy")
    from flows.deploy import deploy_search, deploy_training

    if search:
        if cron is not None:
            raise ConfigError(f"--cron schedules retraining; runs of a search deployment are started per worker, got --cron {cron!r} with --search")
        name = name or "search-gpu"
        deployment_id = deploy_search(loaded.path, pool=pool, name=name, pipeline=pipeline, gpus=gpus)
    else:
        name = name or "train-gpu"
        deployment_id = deploy_training(loaded.path, pool=pool, name=name, pipeline=pipeline, gpus=gpus, cron=cron)
    flow_name = "search_pipeline" if search else "run_pipeline"
    out.print(f"deployment {flow_name}/{name} ({deployment_id}) on work pool {pool!r}; start a worker there with "
              f"`lstmflow worker --pool {pool}`")


@app.command("worker")
def worker_command(
    pool: Annotated[str, typer.Option("--pool", help="The work pool to take runs from (created if missing).")] = "gpu",
    name: Annotated[str | None, typer.Option("--name", help="The worker's name in the Prefect UI; default: Prefect's.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Flow runs at once on this machine (1: a run holds all its GPUs).")] = 1,
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
    prefect_port: Annotated[int, typer.Option("--prefect-port", min=1, max=65535, help="Port of the Prefect server and UI.")] = 4200,
    mlflow_port: Annotated[int, typer.Option("--mlflow-port", min=1, max=65535, help="Port of the MLflow server and UI.")] = 5000,
    config: ConfigOption = Path("pipelines.yaml"),
) -> None:
    """Start a Prefect server, a worker of the `local` work pool and an MLflow server on 127.0.0.1, in the background.

    Their data stay in the project (the same stores as without servers). Returns once each answers; while they
    run, every lstmflow command of this project uses them. `lstmflow down` stops them.
    """
    from lstmflow import stack

    root = _load(config).path.parent
    for service in stack.up(root, prefect_port=prefect_port, mlflow_port=mlflow_port):
        url = service.url.removesuffix("/api") if service.name == "prefect" else service.url
        out.print(f"{service.name:8} pid {service.pid:<7} {url if service.name != 'worker' else 'work pool ' + stack.LOCAL_POOL}  log {service.log}")


@app.command("down")
def down_command(config: ConfigOption = Path("pipelines.yaml")) -> None:
    """Stop the servers and the worker that `lstmflow up` started for this project."""
    from lstmflow import stack

    stopped = stack.down(Path(config).expanduser().resolve().parent)
    out.print(f"stopped {', '.join(s.name for s in stopped)}" if stopped else "nothing was running")


@app.command("status")
def status_command(config: ConfigOption = Path("pipelines.yaml")) -> None:
    """Show the services `lstmflow up` started for this project and whether each answers."""
    from lstmflow import stack

    services = stack.status(Path(config).expanduser().resolve().parent)
    if not services:
        out.print("the stack is down (start it with `lstmflow up`)")
        return
    table = Table("service", "pid", "url", "healthy")
    for service, healthy in services:
        table.add_row(service.name, str(service.pid), service.url, "yes" if healthy else "[red]no[/]")
    out.print(table)


@app.command("reference")
def reference_command() -> None:
    """Print the pipelines.yaml reference (every key, its type, default and meaning) as Markdown."""
    from lstmflow.reference import reference_markdown

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
