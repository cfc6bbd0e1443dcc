"""The ``lstmflow`` command: validate, list, summarise and run the pipelines of ``pipelines.yaml``.

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
    """Keep Prefect's, MLflow's and DVC's state in the project and everything offline and quiet.

    Must run before Prefect is imported; values already in the environment win.
    """
    defaults = {
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


def _as_mapping(assignments: list[str]) -> dict[str, Any]:
    return dict(a.partition("=")[::2] for a in assignments)


#: The headline metrics of each task and the baseline each is shown beside.
HEADLINE = {
    "forecast": ("seasonal naive", [(key, f"naive_{key}") for key in ("rmse", "mae", "smape", "mase")]),
    "classify": ("majority class", [("accuracy", "majority_accuracy"), ("macro_f1", "majority_macro_f1")]),
    "language_model": ("unigram", [(key, f"unigram_{key}") for key in ("perplexity", "bits_per_character", "cross_entropy")]),
}


def _print_result(spec: PipelineSpec, result: dict[str, Any], console: Console) -> None:
    metrics = result["metrics"]
    baseline, rows = HEADLINE[spec.task]
    table = Table("metric (test part)", "LSTM", baseline, title=f"{spec.name}: {result['model_uri']}")
    for key, baseline_key in rows:
        if key in metrics:
            other = metrics.get(baseline_key)
            table.add_row(key, f"{metrics[key]:.4g}", "-" if other is None else f"{other:.4g}")
    console.print(table)
    state = "reused (nothing changed)" if result["cached"] else f"{result['epochs_run']} epochs, best {result['best_epoch']}"
    console.print(f"MLflow run {result['mlflow_run_id']} · training {state} · data {result['data_version']}")


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
    name: Annotated[str, typer.Option("--name", help="The deployment's name: runs are `run_pipeline/NAME`.")] = "train-gpu",
    gpus: Annotated[str | None, typer.Option("--gpus", help="CUDA_VISIBLE_DEVICES of its runs, e.g. 0,1 (\"\" for CPU only); default: the worker's own.")] = None,
    cron: Annotated[str | None, typer.Option("--cron", help="Retrain on this schedule (cron syntax, UTC), e.g. \"0 3 * * *\".")] = None,
    config: ConfigOption = Path("pipelines.yaml"),
) -> None:
    """Create or update a deployment of the training flow on a GPU work pool (needs PREFECT_API_URL of a server)."""
    loaded = _load(config)
    _require_prefect_server("deploy")
    from flows.deploy import deploy_training

    deployment_id = deploy_training(loaded.path, pool=pool, name=name, pipeline=pipeline, gpus=gpus, cron=cron)
    out.print(f"deployment run_pipeline/{name} ({deployment_id}) on work pool {pool!r}; start a worker there with "
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
