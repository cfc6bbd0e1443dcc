"""The ``lstmflow`` command: validate, list, summarise, run and search the pipelines of ``pipelines.yaml``, and
operate what they trained.

Exit codes: 0 success, 2 a bad config or bad data (a message, no traceback), 1 anything else.
The config is validated and the data probed before any flow starts.

The commands live by group: :mod:`~lstmflow.cli.pipelines` reads pipelines.yaml, :mod:`~lstmflow.cli.running`
trains, :mod:`~lstmflow.cli.operating` deploys, promotes, serves and compares, :mod:`~lstmflow.cli.stack` runs the
local servers; :mod:`~lstmflow.cli.shared` holds what they share. This module lists them, in the order
``lstmflow --help`` shows them.
"""

from __future__ import annotations

import atexit
import gc
import sys
from collections.abc import Callable

import typer
from rich.markup import escape

from lstmflow.cli import operating, pipelines, running, stack
from lstmflow.cli.shared import configure_environment, err
from lstmflow.errors import LstmflowError

__all__ = ["app", "configure_environment", "main"]

app = typer.Typer(
    help="Declare LSTM pipelines in pipelines.yaml; train, evaluate and register them through Prefect, DVC and MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Every command, in the order ``lstmflow --help`` lists them.
COMMANDS: dict[str, Callable[..., None]] = {
    "validate": pipelines.validate_command,
    "list": pipelines.list_command,
    "summary": pipelines.summary_command,
    "run": running.run_command,
    "search": running.search_command,
    "join": running.join_command,
    "generate": running.generate_command,
    "deploy": operating.deploy_command,
    "promote": operating.promote_command,
    "rollback": operating.rollback_command,
    "worker": operating.worker_command,
    "up": stack.up_command,
    "down": stack.down_command,
    "status": stack.status_command,
    "connect": stack.connect_command,
    "serve": operating.serve_command,
    "predict": operating.predict_command,
    "compare": operating.compare_command,
    "reproduce": operating.reproduce_command,
    "reference": pipelines.reference_command,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)


def main() -> None:
    """Entry point: lstmflow's errors become a message and an exit code (2 for config and data), not a traceback."""
    # Registered first, so it runs after every other exit handler: the interpreter's last garbage collection then
    # skips the frozen heap (torch, MLflow, Prefect: about 2 s on 2 cores) instead of scanning it for cycles that
    # the end of the process frees anyway.
    atexit.register(gc.freeze)
    try:
        app()
    except LstmflowError as exc:
        err.print(f"[red]error[/]: {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
