"""What every benchmark does with its result: print it and, unless told not to, append it to RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def publish(report: str, append: bool = True) -> None:
    """Print ``report``; with ``append``, add it to RESULTS.md as its own block (a blank line before it)."""
    print(report)
    if append:
        with RESULTS.open("a") as file:
            file.write("\n" + report.strip("\n") + "\n")
        print(f"appended to {RESULTS}")


def heading(title: str, command: str) -> str:
    """A report's first lines: date, title and command, then the machine and the load average after the runs."""
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"## {datetime.date.today()} · {title}: `{command}`\n\n"
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} · Python {platform.python_version()} · "
        f"load average after the runs {load} (1/5/15 min)\n"
    )
