"""The one exception tree of lstmflow.

Everything a user can cause through ``pipelines.yaml`` or their data is a
:class:`ConfigError` or a :class:`DataError`: the CLI prints the message and
exits with code 2, never a traceback. Anything else is a bug or an environment
failure and exits with code 1.
"""

from __future__ import annotations


class LstmflowError(Exception):
    """Base of every error lstmflow raises on purpose."""

    exit_code = 1
    #: True for a planned stop rather than a failure (a pruned trial): logged as information, without a traceback.
    planned = False


class ConfigError(LstmflowError):
    """A bad ``pipelines.yaml`` or override; holds every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        header = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = header + self.problems[0]
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{header}{len(self.problems)} problems\n{lines}"
        super().__init__(message)


class DataError(LstmflowError):
    """Data that cannot be used as declared: a missing file, a bad cell, a series too short."""

    exit_code = 2


class CheckpointError(LstmflowError):
    """A checkpoint that is missing, corrupt or from a different configuration."""


class TrainingError(LstmflowError):
    """The training child process failed or was killed."""
