"""The fixed cost of ``lstmflow run``: everything but training, as a user pays it, against an earlier commit.

A run's wall time through the command line (``lstmflow run NAME --json``, embedded: the temporary Prefect server,
MLflow on SQLite, DVC) minus the seconds its training loop reports (``fit_result.json``). Each commit gets a fresh
project holding the quality suite's ItalyPowerDemand (67 training series of 24 steps; see ``quality_data.py``),
whose first run (shown apart) also creates the project's stores and builds the features; the measured runs then
train one epoch with a new seed each (so training runs again on the cached features). The commits alternate run by
run, so both see the same load; medians, min–max, and the ratio to the earlier commit. The earlier commit runs from
a git worktree, imported ahead of the installed lstmflow (``PYTHONPATH``), with the same interpreter and libraries.
Prints a table and appends it to ``benchmarks/RESULTS.md``.

    python benchmarks/fixed_cost.py [--against REF] [--runs 5] [--no-append]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import quality  # benchmarks/ is the script's folder, so on sys.path
from _report import heading, publish

REPO = Path(__file__).resolve().parent.parent
SET = "italypower"


def run_once(project: Path, code: Path | None, seed: int) -> tuple[float, float]:
    """(wall seconds, training seconds) of one run of the set in ``project`` with the lstmflow of ``code``."""
    env = quality.environment(project)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH", "")]))
    command = [sys.executable, "-c", "from lstmflow.cli import main; main()", "run", SET, "--json"]
    command += ["--config", "pipelines.yaml", "--set", "train.epochs=1", "--set", f"train.seed={seed}"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"lstmflow run failed in {project} (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return wall, float(quality.fit_facts(project).get("seconds", 0.0))


def worktree(ref: str, folder: Path) -> Path:
    """A checkout of ``ref`` in ``folder`` (a git worktree of this repository)."""
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(folder), ref], cwd=REPO, check=True)
    return folder


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default="a74883a", help="the earlier commit (default: a74883a)")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per commit")
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="lstmflow-fixed-cost-"))
    earlier = worktree(args.against, scratch / "earlier")
    commits = {f"{args.against} (earlier)": earlier, "this tree": None}
    projects = {label: scratch / f"project-{index}" for index, label in enumerate(commits)}
    try:
        first_runs: dict[str, tuple[float, float]] = {}
        for label, code in commits.items():
            quality.make_project(projects[label], SET)
            first_runs[label] = run_once(projects[label], code, seed=0)  # a new project: its stores, the features
        walls: dict[str, list[float]] = {label: [] for label in commits}
        fixed: dict[str, list[float]] = {label: [] for label in commits}
        for seed in range(1, args.runs + 1):
            for label, code in commits.items():
                wall, training = run_once(projects[label], code, seed)
                walls[label].append(wall)
                fixed[label].append(wall - training)
                print(json.dumps({"commit": label, "seed": seed, "wall_s": round(wall, 2), "training_s": training}))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(earlier)], cwd=REPO, check=False)
    first = next(iter(commits))
    how = (
        f"`lstmflow run {SET} --set train.epochs=1 --set train.seed=N` (features cached), embedded; {args.runs} runs "
        "per commit, alternating. Fixed cost = wall − the training loop's own seconds. Medians (min–max).\n"
    )
    lines = [
        heading("the fixed cost of a run", " ".join(["python benchmarks/fixed_cost.py", *sys.argv[1:]])),
        how,
        "| commit | wall (s) | fixed cost (s) | fixed cost ÷ earlier | first run in a new project: wall, fixed (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label in commits:
        ratio = statistics.median(fixed[label]) / statistics.median(fixed[first])
        wall, training = first_runs[label]
        lines.append(
            f"| {label} | {summary(walls[label])} | {summary(fixed[label])} | {ratio:.2f}x | "
            f"{wall:.1f}, {wall - training:.1f} |"
        )
    publish("\n".join(lines) + "\n", append=not args.no_append)


if __name__ == "__main__":
    main()
