"""Commands for the project's local servers (a Prefect server, a worker, an MLflow server): up, down, status."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lstmflow.cli.shared import ConfigOption, configure_environment, out
from lstmflow.config import Config
from lstmflow.errors import LstmflowError


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

    root = Config.load(config).path.parent
    configure_environment(root, use_stack=False)  # `up` itself says what is wrong with a stack already recorded
    for service in stack.up(root, prefect_port=prefect_port, mlflow_port=mlflow_port):
        url = service.url.removesuffix("/api") if service.name == "prefect" else service.url
        where = f"work pool {stack.LOCAL_POOL}" if service.name == "worker" else url
        out.print(f"{service.name:8} pid {service.pid:<7} {where}  log {service.log}")


def down_command(config: ConfigOption = Path("pipelines.yaml")) -> None:
    """Stop the servers and the worker that `lstmflow up` started for this project, with every process they started,
    also those a crashed server left behind."""
    from lstmflow.ops import stack

    stopped = stack.down(Path(config).expanduser().resolve().parent)
    out.print(f"stopped {', '.join(s.name for s in stopped)}" if stopped else "nothing was running")


def status_command(config: ConfigOption = Path("pipelines.yaml")) -> None:
    """Show the services `lstmflow up` started for this project and whether each answers; exit 1 if any does not."""
    from lstmflow.ops import stack

    root = Path(config).expanduser().resolve().parent
    services = stack.health(root)
    if not services:
        out.print("the stack is down (start it with `lstmflow up`)")
        return
    table = Table("service", "pid", "url", "healthy")
    for service, problem in services:
        table.add_row(service.name, str(service.pid), service.url, "yes" if problem is None else "[red]no[/]")
    out.print(table)
    problems = [problem for _, problem in services if problem]
    if problems:
        raise LstmflowError(stack.unhealthy_message(root, problems))
