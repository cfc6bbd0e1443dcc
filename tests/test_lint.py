"""Lint and types as part of the test command: ruff (rules and line length, formatting) and mypy on the core."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / command[0]), *command[1:]], check=False, cwd=REPO, capture_output=True, text=True)


def test_ruff_finds_nothing() -> None:
    done = tool("ruff", "check", "--output-format", "concise", ".")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr


def test_the_code_is_formatted() -> None:
    done = tool("ruff", "format", "--check", ".")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr


@pytest.mark.slow
def test_mypy_finds_no_type_errors_in_the_core_flows_and_tasks() -> None:
    """pyproject's [tool.mypy] names the packages; about a minute without a cache."""
    done = tool("mypy", "--no-incremental")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr
