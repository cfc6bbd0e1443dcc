"""What every command group uses: the two consoles, the common options, the environment and loading the config.

These live here rather than in ``lstmflow.cli`` itself because ``lstmflow.cli`` imports the command modules to
register their commands; the command modules import this one, so nothing imports in a circle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lstmflow.config import Config

#: The width of a console whose output goes to a file or a pipe: wide enough that no table or line is cut (rich
#: would otherwise cut them at 80 columns, or at ``COLUMNS``, which describes a terminal and which a parent process
#: that loaded GNU readline, such as pytest or IPython, passes on set to 80).
UNCUT_WIDTH = 10_000


def console(stderr: bool = False) -> Console:
    """A console that fits a terminal's width on a terminal and cuts nothing in a file, a pipe or a CI log.

    The stderr console never wraps plain lines (messages stay whole, greppable lines); tables fit the width.
    """
    made = Console(stderr=stderr, soft_wrap=stderr)
    if not made.is_terminal:
        made.width = UNCUT_WIDTH
    return made


#: Results, tables and answers: what a script reads.
out = console()
#: Notes, warnings and errors; with ``--json`` also the human-readable results, so stdout stays machine-readable.
err = console(stderr=True)

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
VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="Also show Prefect's and MLflow's own logs (task states, the temporary server)."
    ),
]

#: Settings that keep a flow run's console to lstmflow's own lines: Prefect's console handler shows warnings and
#: errors only (its INFO lines, among them the temporary server's "dedicated Prefect server" tip, go; flow-run logs
#: still reach the Prefect API and its UI in full), Prefect's internal services stay silent when a stopped run
#: closes the temporary server under them (the websocket errors of its events client), MLflow logs warnings only.
QUIET_LOGS = {
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    "PREFECT_INTERNAL_LOGGING_LEVEL": "CRITICAL",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}


def configure_environment(root: Path, use_stack: bool = True) -> None:
    """Keep Prefect's, MLflow's and DVC's state in the project and everything offline and quiet; while the
    project's stack (``lstmflow up``) runs, point Prefect and MLflow at its servers (unless ``use_stack`` is false).

    A recorded stack that is not healthy stops the command with an :class:`~lstmflow.errors.LstmflowError` naming
    what is wrong, rather than let it use other servers; not so where ``PREFECT_API_URL`` and
    ``MLFLOW_TRACKING_URI`` are both set already, since the stack's servers would not be used anyway.

    Must run before Prefect is imported; values already in the environment win.
    """
    from lstmflow.ops.stack import environment

    servers_given = all(key in os.environ for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"))
    defaults = {
        **(environment(root) if use_stack and not servers_given else {}),
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


def quiet_logs(verbose: bool) -> None:
    """Before a flow runs in this process: Prefect's and MLflow's logs stay off the console unless ``verbose``.

    Must run before Prefect is imported (it reads its logging settings once); values already in the environment
    win, and the training children inherit the settings.
    """
    if verbose:
        return
    for key, value in QUIET_LOGS.items():
        os.environ.setdefault(key, value)


def load_config(config: Path) -> Config:
    """The pipelines file, with the environment set up for its project."""
    loaded = Config.load(config)
    configure_environment(loaded.path.parent)
    return loaded
