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
) -> None:
    """Check pipelines.yaml and probe each pipeline's data (windows, horizon, season resolved)."""
    from lstmflow.ops.steps import probe

    loaded = load_config(config)
    specs = loaded.all()
    root = loaded.path.parent
    table = Table("pipeline", "task", "data", "kind", "window", "horizon", "season", title=str(loaded.path))
    for name in names or loaded.names:
        spec = probe(specs[name] if name in specs else loaded.pipeline(name), root)
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
    out.print(f"[green]OK[/]: {len(names or loaded.names)} pipeline(s) valid.")


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
    from lstmflow.data.kinds import model_io
    from lstmflow.models.lstm import build_model, summary
    from lstmflow.ops.steps import probe

    loaded = load_config(config)
    spec = probe(loaded.pipeline(name, set_ or []), loaded.path.parent)
    n_features, n_outputs = model_io(spec)
    per_step = spec.task == "language_model"
    model = build_model(spec.model, n_features, n_outputs, where=f"pipelines.{name}.model", per_step=per_step)
    out.print(summary(model, n_features), highlight=False)


def reference_command() -> None:
    """Print the pipelines.yaml reference (every key, its type, default and meaning) as Markdown."""
    from lstmflow.config.reference import reference_markdown

    out.print(reference_markdown(), markup=False, highlight=False, soft_wrap=True)
