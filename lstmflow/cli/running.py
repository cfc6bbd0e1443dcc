"""Commands that train or use what was trained, here: run, search, join, generate; and how a run's result reads."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lstmflow.cli.shared import ConfigOption, SetOption, VerboseOption, err, load_config, out, quiet_logs
from lstmflow.config import PipelineSpec


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
            help="Print one JSON line per pipeline (the last line of stdout is the last pipeline's): pipeline, run id, "
            "model URI, data version, metrics, and the gate's verdict (gate.promoted, gate.verdict, gate.reason).",
        ),
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """Run pipelines end to end through Prefect: prepare (DVC) → train → evaluate → register (MLflow).

    A pipeline with a search section runs its search instead of one training, and registers the best trial.
    Every named pipeline is validated and its data probed before the first flow starts.
    """
    from flows.embedded import open_stores, prefect_api
    from lstmflow.ops.probe import probe

    quiet_logs(verbose)
    loaded = load_config(config)
    specs = [loaded.pipeline(name, set_ or []) for name in names]
    flows_context = prefect_api(loaded.path.parent)  # a temporary server starts here, while the rest prepares
    for spec in specs:
        probe(spec, loaded.path.parent)
    open_stores(loaded.path.parent)
    from flows.pipeline import run_pipeline
    from lstmflow.training.launch import warm_child

    with warm_child(specs[0]), flows_context():  # the child imports torch while the flow prepares the data
        for spec in specs:
            result = run_pipeline(
                pipeline=spec.name, overrides=_as_mapping(set_ or []), force=force, config=str(loaded.path)
            )
            _print_result(spec, result, err if as_json else out)
            if as_json:
                sys.stdout.write(json.dumps(result, default=str) + "\n")
                sys.stdout.flush()


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
    verbose: VerboseOption = False,
) -> None:
    """Search a pipeline's hyperparameters with Optuna, then evaluate and register the best trial's model (as `run`).

    An interrupted search continues where it stopped; with nothing changed and the trials done, no trial starts.
    """
    from lstmflow.errors import ConfigError
    from lstmflow.ops.probe import probe

    quiet_logs(verbose)
    loaded = load_config(config)
    spec = loaded.pipeline(name, [*(set_ or []), *([f"search.trials={trials}"] if trials else [])])
    if spec.search is None:
        raise ConfigError(
            f"pipelines.{name}.search: not set; add a search section to search this pipeline, or train it once with "
            f"`lstmflow run {name}`"
        )
    from flows.embedded import open_stores, prefect_api

    flows_context = prefect_api(loaded.path.parent)  # a temporary server starts here, while the rest prepares
    probe(spec, loaded.path.parent)
    open_stores(loaded.path.parent)
    from flows.pipeline import run_pipeline

    with flows_context():
        result = run_pipeline(pipeline=name, overrides=_as_mapping(set_ or []), trials=trials, config=str(loaded.path))
    _print_result(spec, result, err if as_json else out)
    if as_json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")


def _as_mapping(assignments: list[str]) -> dict[str, Any]:
    return dict(a.partition("=")[::2] for a in assignments)


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
    from lstmflow.ops.probe import probe

    loaded = load_config(config)
    overrides = [*(set_ or []), f"train.nodes.rank={node_rank}"]
    probe(loaded.pipeline(name, overrides), loaded.path.parent)
    prepared = steps.prepare(loaded.path, name, overrides)
    done = steps.join_training(prepared, loaded.path.parent)
    out.print(
        f"machine {node_rank} of {name}: trained {done['epochs_run']} epochs with {done['workers']} processes in all"
    )


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

    loaded = load_config(config)
    spec = loaded.pipeline(name, [])
    if spec.task != "language_model":
        raise ConfigError(f"pipelines.{name}.task: generate needs a language model, got task {spec.task!r}")
    model_uri = f"models:/{name}{version}" if version.startswith("@") else f"models:/{name}/{version}"
    model = tracking.load_model(tracking.tracking_uri(loaded.path.parent), model_uri)
    request = {"prompt": [prompt], "tokens": [tokens], "temperature": [temperature], "seed": [seed]}
    text = model.predict(pd.DataFrame(request))["text"].iloc[0]
    out.print(prompt + text, markup=False, highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------------------- a run's result

#: The headline metrics of each task and the baseline each is shown beside.
HEADLINE = {
    "forecast": ("seasonal naive", [(key, f"naive_{key}") for key in ("mse", "rmse", "mae", "smape", "mase")]),
    "classify": ("majority class", [("accuracy", "majority_accuracy"), ("macro_f1", "majority_macro_f1")]),
    "language_model": (
        "unigram",
        [(key, f"unigram_{key}") for key in ("perplexity", "bits_per_character", "cross_entropy")],
    ),
    "translate": ("copy source", [(key, f"copy_{key}") for key in ("chrf", "bleu", "exact_match")]),
    "transcribe": ("most frequent", [(key, f"frequent_{key}") for key in ("cer", "wer", "exact_match")]),
}


def _print_result(spec: PipelineSpec, result: dict[str, Any], console: Console) -> None:
    """The search's trials (if any), the headline metrics beside the baseline, the run's line and the gate's."""
    if "search" in result:
        _print_trials(result["search"], console)
    metrics = result["metrics"]
    baseline, rows = HEADLINE[spec.task]
    strong = result.get("baseline") or "classical baseline"
    blend = metrics.get("blend_weight")  # a model served blended with its strong baseline
    models = ["LSTM"] if blend is None else [f"blend (network weight {blend:.2f})", "network alone"]
    table = Table("metric (test part)", *models, baseline, strong, title=f"{spec.name}: {result['model_uri']}")
    for key, baseline_key in rows:
        if key in metrics:
            network = [] if blend is None else [metrics.get(f"network_{key}")]
            values = (metrics[key], *network, metrics.get(baseline_key), metrics.get(f"baseline_{key}"))
            table.add_row(key, *("-" if v is None else f"{v:.4g}" for v in values))
    console.print(table)
    state = (
        "reused (nothing changed)"
        if result["cached"]
        else f"{result['epochs_run']} epochs, best {result['best_epoch']}"
    )
    if "search" in result:
        state = f"of the best trial, {result['search']['best']['number']}, reused (not trained again)"
    skipped = result.get("data_skipped_files", 0)
    left_out = f" · {skipped} data file(s) skipped (listed in the run)" if skipped else ""
    console.print(f"MLflow run {result['mlflow_run_id']} · training {state} · data {result['data_version']}{left_out}")
    if gate := result.get("gate"):
        console.print(f"{_gate_line(gate)} (version {result['model_version']})", markup=False, highlight=False)
        _warn_if_refused(spec.name, gate)


def _warn_if_refused(name: str, decision: dict[str, Any]) -> None:
    """The run's last line, on stderr, when the gate refused its version for losing to a baseline: the pipeline
    worked (exit 0), but its model is not worth deploying."""
    from lstmflow.ops.gate import warning

    if line := warning(name, decision):
        err.print(line, style="bold yellow", markup=False, highlight=False)


def _gate_line(decision: dict[str, Any]) -> str:
    """One line on what the gate decided and why, with its figures when it compared two versions."""
    verb = "promoted as" if decision["decision"] == "promoted" else "not promoted to"
    line = f"gate: {verb} {decision['alias']!r}: {decision['reason'].removeprefix('kept: ')}"
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
