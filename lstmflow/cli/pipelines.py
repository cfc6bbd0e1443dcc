"""Commands that read pipelines.yaml without running anything: validate, list, summary, reference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from lstmflow.cli.shared import ConfigOption, SetOption, err, load_config, out


def validate_command(
    names: Annotated[list[str] | None, typer.Argument(help="Pipelines to check (default: all).")] = None,
    config: ConfigOption = Path("pipelines.yaml"),
    set_: SetOption = None,
) -> None:
    """Check pipelines.yaml, probe each pipeline's data and build its model on the data's shapes (windows, horizon,
    season resolved), as `run` does before any flow starts. Named pipelines are checked alone: problems in others
    do not fail them."""
    from lstmflow.ops.probe import probe

    loaded = load_config(config)
    root = loaded.path.parent
    specs = {name: loaded.pipeline(name, set_ or []) for name in names} if names else loaded.all(set_ or [])
    table = Table("pipeline", "task", "data", "kind", "window", "horizon", "season", title=str(loaded.path))
    for name, unprobed in specs.items():
        spec = probe(unprobed, root)
        data = spec.data
        table.add_row(
            name,
            spec.task,
            str(data.path.relative_to(root) if data.path.is_relative_to(root) else data.path),
            data.kind,
            *(str(getattr(data, key, None) or "-") for key in ("window", "horizon")),
            str(spec.evaluate.season or "-") if spec.task == "forecast" else "-",
        )
        if not data.path.exists():
            err.print(
                f"[yellow]{name}: {data.path.name} is built by a DVC stage on the first run; defaults resolve then.[/]"
            )
    out.print(table)
    out.print(f"[green]OK[/]: {len(specs)} pipeline(s) valid.")


def list_command(config: ConfigOption = Path("pipelines.yaml")) -> None:
    """List the pipelines with their task, data and description."""
    loaded = load_config(config)
    table = Table("pipeline", "task", "data", "layers", "description")
    for name, spec in loaded.all().items():
        layers = " → ".join(_layer_label(layer) for layer in spec.model.layers)
        table.add_row(name, spec.task, spec.data.path.name, layers, spec.description)
    out.print(table)


def _layer_label(layer: Any) -> str:
    units = getattr(layer.args, "units", None)
    return f"{layer.kind}({units})" if units else layer.kind


def summary_command(
    name: Annotated[str, typer.Argument(help="Pipeline name.")],
    config: ConfigOption = Path("pipelines.yaml"),
    set_: SetOption = None,
) -> None:
    """Print the model's layers, output shapes and parameter counts, like Keras' summary()."""
    from lstmflow.models.lstm import summary
    from lstmflow.ops.probe import model_for, probe

    loaded = load_config(config)
    model, n_features = model_for(probe(loaded.pipeline(name, set_ or []), loaded.path.parent))
    out.print(summary(model, n_features), highlight=False)


def reference_command() -> None:
    """Print the pipelines.yaml reference (every key, its type, default and meaning) as Markdown."""
    from lstmflow.config.reference import reference_markdown

    out.print(reference_markdown(), markup=False, highlight=False, soft_wrap=True)
