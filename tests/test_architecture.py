"""The layering rules of ARCHITECTURE.md, checked by import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 kept, 0 broken" in done.stdout


def test_importing_the_core_does_no_work(tmp_path: Path) -> None:
    """No mkdir, no tracking URI, no Prefect at import time: importing every core module leaves the cwd alone."""
    code = (
        "import os, sys, pkgutil, importlib, lstmflow;"
        "before = set(os.listdir('.'));"
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(lstmflow.__path__, 'lstmflow.')];"
        "assert set(os.listdir('.')) == before, set(os.listdir('.')) - before;"
        "assert 'prefect' not in sys.modules, 'prefect imported by the core'"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
