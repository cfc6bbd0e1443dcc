"""What every benchmark does with its result: print it and, unless told not to, append it to RESULTS.md."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def publish(report: str, append: bool = True) -> None:
    """Print ``report``; with ``append``, add it to RESULTS.md as its own block (a blank line before it)."""
    print(report)
    if append:
        with RESULTS.open("a") as file:
            file.write("\n" + report.strip("\n") + "\n")
        print(f"appended to {RESULTS}")
