"""Kill the whole `lstmflow run` tree at random points of training, run the same command again, and check that it
resumes: the same MLflow run, every epoch logged, and the final model bit-identical to an uninterrupted training.

Each trial is a fresh project (tests/conftest.py's tiny one): `lstmflow run` in a process group of its own,
SIGKILL of the group at a random moment of a random epoch, then the same command to the end. The reference model
is trained once, uninterrupted, by the same launcher from the same features and resolved spec.

    python benchmarks/kill_resume.py [--trials 10] [--seed 14] [--no-append]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import heading, publish  # benchmarks/ is the script's folder, so on sys.path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import torch
from conftest import load_state, make_project, mlflow_client  # sets the quiet, offline environment
from test_resume import KILL_RUN, kill_tree_during_training


def trial(root: Path, epoch: int, rng: random.Random, env: dict[str, str]) -> dict[str, object]:
    """One kill at ``epoch`` and one resumed run; what came of it."""
    started = time.perf_counter()
    kill_tree_during_training(root, env, epoch, rng)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lstmflow"), "run", "--json", *KILL_RUN],
        cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return {"epoch": epoch, "ok": False, "why": done.stderr.strip().splitlines()[-1:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    client = mlflow_client(root)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    steps = {metric.step for metric in client.get_metric_history(result["mlflow_run_id"], "val_loss")}
    [model] = root.glob("runs/tiny/*/model.pt")
    return {
        "epoch": epoch,
        "one_run": [run.info.status for run in runs] == ["FINISHED"],
        "all_epochs": steps == set(range(1, 61)),
        "resumed": "continuing MLflow run" in done.stderr,
        "model": model,
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    from lstmflow.config import PipelineSpec
    from lstmflow.training.launch import train_in_child
    from lstmflow.training.loggers import ListLogger

    rng = random.Random(args.seed)
    results, reference = [], None
    with tempfile.TemporaryDirectory(prefix="lstmflow-kill-") as folder:
        for number in range(args.trials):
            root = make_project(Path(folder) / f"trial{number}")
            outcome = trial(root, rng.randrange(2, 55), rng, dict(os.environ))
            if reference is None and "model" in outcome:
                [last] = root.glob("runs/tiny/*/checkpoints/last.pt")
                spec = PipelineSpec.model_validate(load_state(last)["spec"])
                train_in_child(spec, root / "features" / "tiny", Path(folder) / "reference", ListLogger(), False)
                reference = load_state(Path(folder) / "reference" / "model.pt")
            if "model" in outcome:
                model = load_state(outcome.pop("model"))
                outcome["identical"] = all(torch.equal(model[name], reference[name]) for name in reference)
            results.append(outcome)
            print(outcome, flush=True)
    checks = ("identical", "one_run", "all_epochs", "resumed")
    good = sum(all(result.get(check) for check in checks) for result in results)
    rows = "\n".join(
        f"| {r['epoch']} | {r.get('resumed')} | {r.get('one_run')} | {r.get('all_epochs')} | {r.get('identical')} "
        f"| {r.get('seconds', 0):.0f} |"
        for r in results
    )
    command = f"python benchmarks/kill_resume.py --trials {args.trials} --seed {args.seed}"
    publish(
        f"{heading('Kill the whole run tree, resume: bit-identical?', command)}\n"
        f"{good}/{len(results)} trials resumed into the same MLflow run with a bit-identical model.\n\n"
        "| killed in epoch | resumed | one MLflow run | epochs 1-60 logged | model bit-identical | seconds |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
        f"{rows}\n",
        append=not args.no_append,
    )


if __name__ == "__main__":
    main()
