"""Commands for the project's local servers (a Prefect server, a worker, an MLflow server): up, down, status."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from lstmflow.cli.shared import ConfigOption, configure_environment, out
from lstmflow.config import Config
from lstmflow.errors import LstmflowError


def _port(flag: str, what: str) -> Any:
    return typer.Option(flag, min=1, max=65535, help=what)


def up_command(
    prefect_port: Annotated[int, _port("--prefect-port", "Port of the Prefect server and UI.")] = 4200,
    mlflow_port: Annotated[int, _port("--mlflow-port", "Port of the MLflow server and UI.")] = 5000,
    team: Annotated[
        bool,
        typer.Option(
            "--team",
            help="The team's set-up: Prefect's and MLflow's data in a PostgreSQL server of the project "
            "(.lstmflow/postgres; needs Debian's postgresql package), MLflow's artifacts and DVC's remote in an S3 "
            "object store (needs lstmflow[team]); other checkouts join with `lstmflow connect`.",
        ),
    ] = False,
    postgres_port: Annotated[int, _port("--postgres-port", "Port of the PostgreSQL server (with --team).")] = 5433,
    objects_port: Annotated[int, _port("--objects-port", "Port of the S3 object store (with --team).")] = 9000,
    config: ConfigOption = Path("pipelines.yaml"),
) -> None:
    """Start a Prefect server, a worker of the `local` work pool and an MLflow server on 127.0.0.1, in the background.

    Their data stay in the project: the same stores as without servers, or with --team a PostgreSQL server and an
    S3 object store started first (on 127.0.0.1 only; generated credentials in .lstmflow/, mode 0600, never
    printed). Returns once each answers; while they run, every lstmflow command of this project uses them.
    `lstmflow down` stops them.
    """
    from lstmflow.ops import stack

    root = Config.load(config).path.parent
    configure_environment(root, use_stack=False)  # `up` itself says what is wrong with a stack already recorded
    services = stack.up(
        root,
        prefect_port=prefect_port,
        mlflow_port=mlflow_port,
        postgres_port=postgres_port if team else None,
        objects_port=objects_port,
    )
    if team:
        database = stack.team_database(root)
        out.print(f"{'postgres':8} {'':11} {stack.HOST}:{database.port}  data {database.data}")
    for service in services:
        url = service.url.removesuffix("/api") if service.name == "prefect" else service.url
        where = f"work pool {stack.LOCAL_POOL}" if service.name == "worker" else url
        out.print(f"{service.name:8} pid {service.pid:<7} {where}  log {service.log}")


def down_command(config: ConfigOption = Path("pipelines.yaml")) -> None:
    """Stop the servers and the worker that `lstmflow up` started for this project, with every process they started,
    also those a crashed server left behind."""
    from lstmflow.ops import stack, team

    root = Path(config).expanduser().resolve().parent
    joined = team.read_connection(root)
    stopped = stack.down(root)
    if stopped:
        out.print(f"stopped {', '.join(s.name for s in stopped)}")
    elif joined is not None:
        out.print(f"disconnected from the team stack at {joined.prefect_url} (DVC's default remote is local again)")
    else:
        out.print("nothing was running")


def connect_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="The checkout that ran `lstmflow up --team`, or a copy of its .lstmflow/team.json.",
            show_default=False,
        ),
    ],
    config: ConfigOption = Path("pipelines.yaml"),
) -> None:
    """Join another checkout's team stack: this checkout's commands then use its Prefect and MLflow servers, DVC
    pushes and pulls through its object store, and `search.storage: team` means its Optuna database.

    The connection file is copied to .lstmflow/team.json (mode 0600: it holds the database password and the store's
    keys); `lstmflow down` here disconnects.
    """
    from lstmflow.ops import team

    root = Config.load(config).path.parent
    configure_environment(root, use_stack=False)
    connection = team.connect(root, Path(source).expanduser().resolve())
    out.print(f"connected: Prefect {connection.prefect_url}, MLflow {connection.mlflow_url}")
    out.print(f"DVC remote {team.DVC_REMOTE!r} ({team.DVC_REMOTE_URL} at {connection.endpoint}) is the default")


def status_command(config: ConfigOption = Path("pipelines.yaml")) -> None:
    """Show the services `lstmflow up` started for this project and whether each answers; exit 1 if any does not."""
    from lstmflow.ops import stack

    root = Path(config).expanduser().resolve().parent
    services = stack.health(root)
    if not services:
        _print_connection(root)
        return
    table = Table("service", "pid", "url", "healthy")
    problems = [problem for _, problem in services if problem]
    database = stack.team_database(root)
    if database.data.exists():
        running = database.running()
        table.add_row("postgres", "", f"{stack.HOST}:{database.port}", "yes" if running else "[red]no[/]")
        problems += [] if running else [f"the PostgreSQL server of {database.data} is not running"]
    for service, problem in services:
        table.add_row(service.name, str(service.pid), service.url, "yes" if problem is None else "[red]no[/]")
    out.print(table)
    if problems:
        raise LstmflowError(stack.unhealthy_message(root, problems))


def _print_connection(root: Path) -> None:
    """What ``status`` says in a checkout without a stack of its own: the team stack it joined, or that none runs."""
    from lstmflow.ops import team

    joined = team.read_connection(root)
    if joined is None:
        out.print("the stack is down (start it with `lstmflow up`)")
        return
    out.print(f"joined the team stack at Prefect {joined.prefect_url}, MLflow {joined.mlflow_url}, objects "
              f"{joined.endpoint} (`lstmflow down` disconnects)")  # fmt: skip
