"""The lstmflow command as a user runs it: exit codes, messages without tracebacks, --json, summary."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY_PIPELINES, free_port, make_project
from conftest import run_lstmflow as lstmflow

#: Every command, in the order `lstmflow --help` lists them.
COMMANDS = [
    "validate", "list", "summary", "run", "search", "join", "generate", "deploy", "promote", "rollback", "worker",
    "up", "down", "status", "connect", "serve", "predict", "compare", "reproduce", "reference",
]  # fmt: skip


def help_commands(help_text: str) -> dict[str, str]:
    """The commands of `lstmflow --help`'s Commands panel, in order, with the first line of each one's help."""
    panel = help_text.split("─ Commands ─", 1)[1]
    return dict(re.findall(r"^│ ([a-z]+) {2,}(\S.*?)\s*│$", panel, flags=re.MULTILINE))


def readme_commands() -> set[str]:
    """The commands the README's "The command line" block shows: `lstmflow NAME ...` lines and their `| NAME`s."""
    section = (REPO / "README.md").read_text().split("## The command line", 1)[1]
    block = section.split("```", 2)[1]
    commands = set()
    for line in block.splitlines():
        if line.startswith("lstmflow "):
            commands.add(line.split()[1])
            commands.update(re.findall(r"\| ([a-z]+)\b", line))
    return commands


def test_bad_config_exits_2_with_the_path_and_value(tiny_project: Path) -> None:
    done = lstmflow(tiny_project, "run", "tiny", "--set", "model.layers[0].lstm.units=-4")
    assert done.returncode == 2
    assert (
        "pipelines.tiny.model.layers[0].lstm.units: must be > 0, got -4 (from --set model.layers[0].lstm.units=-4)"
        in done.stderr
    )
    assert "Traceback" not in done.stderr
    assert not (tiny_project / ".prefect").exists(), "no flow may start on a bad config"


def test_bad_data_exits_2_naming_the_row(tiny_project: Path) -> None:
    csv = tiny_project / "data" / "tiny.csv"
    lines = csv.read_text().splitlines()
    lines[5] = lines[5].split(",")[0] + ",12..5"
    csv.write_text("\n".join(lines) + "\n")
    done = lstmflow(tiny_project, "run", "tiny")
    assert done.returncode == 2, done.stderr
    assert "line 6" in done.stderr and "'12..5'" in done.stderr and "value" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_data_file_and_unknown_pipeline_exit_2(tiny_project: Path) -> None:
    (tiny_project / "data" / "tiny.csv").unlink()
    done = lstmflow(tiny_project, "validate")
    assert done.returncode == 2 and "pipelines.tiny.data.path" in done.stderr
    done = lstmflow(tiny_project, "run", "tinny")
    assert done.returncode == 2 and "did you mean 'tiny'?" in done.stderr


def test_validate_resolves_defaults_and_list_shows_pipelines(tiny_project: Path) -> None:
    done = lstmflow(tiny_project, "validate")
    assert done.returncode == 0, done.stderr
    assert "tiny" in done.stdout and "1 pipeline(s) valid" in done.stdout
    done = lstmflow(tiny_project, "list")
    assert done.returncode == 0 and "lstm(8) → dense" in done.stdout


def test_summary_of_the_guides_example(tmp_path: Path) -> None:
    """Input(shape=(None, 1)) → LSTM(128) → Dense(10, softmax), as a pipeline; counts as in Keras + 4 × units."""
    pipelines = """\
pipelines:
  guide:
    data: {path: data/tiny.csv, target: value, window: 24, horizon: 10, transform: none}
    model:
      layers:
        - lstm: {units: 128, return_sequences: false}
        - dense: {units: 10, activation: softmax}
    train: {loss: mse, optimizer: {name: adam}}
"""
    root = make_project(tmp_path / "guide", pipelines)
    done = lstmflow(root, "summary", "guide")
    assert done.returncode == 0, done.stderr
    assert "67,072" in done.stdout and "66,560" in done.stdout and "1,290" in done.stdout
    assert "(None, 10)" in done.stdout
    wrong = lstmflow(root, "summary", "guide", "--set", "data.horizon=12")
    assert wrong.returncode == 2
    assert (
        "pipelines.guide.model.layers[1].dense.units" in wrong.stderr and "12" in wrong.stderr and "10" in wrong.stderr
    )


def test_help_lists_every_command_with_its_help() -> None:
    done = lstmflow(REPO, "--help")
    assert done.returncode == 0, done.stderr
    listed = help_commands(done.stdout)
    assert list(listed) == COMMANDS
    assert all(len(first_line) > 20 for first_line in listed.values()), listed


def test_readme_command_list_matches_help() -> None:
    """Each command of `lstmflow --help` is in the README's command list, and the list names no other."""
    assert readme_commands() == set(COMMANDS)


def test_tables_are_not_cut_in_a_pipe(tiny_project: Path) -> None:
    """Through a pipe (a file, a CI log) rich would assume 80 columns and cut the table; every cell stays whole."""
    description = "A monthly series with a slow trend and a yearly season, " * 3
    pipelines = TINY_PIPELINES.replace("    evaluate:", f"    description: {description.strip()}\n    evaluate:")
    (tiny_project / "pipelines.yaml").write_text(pipelines)
    done = lstmflow(tiny_project, "list")
    assert done.returncode == 0, done.stderr
    assert description.strip() in done.stdout


@pytest.mark.parametrize("verbose", [False, True])
def test_prefect_logs_only_with_verbose(verbose: bool) -> None:
    """Quiet by default: Prefect's INFO lines (the temporary server's tip among them) stay off the console while its
    warnings show; with -v they all show."""
    script = f"""
from lstmflow.cli.shared import quiet_logs
quiet_logs(verbose={verbose})
from prefect.logging import get_logger
from prefect.logging.configuration import setup_logging
setup_logging()
get_logger().info("Starting temporary server")
get_logger().warning("a warning")
"""
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "a warning" in done.stderr
    assert ("Starting temporary server" in done.stderr) == verbose


@pytest.mark.parametrize("command", ["deploy", "worker"])
def test_deploy_and_worker_need_a_prefect_server(tiny_project: Path, command: str) -> None:
    import os

    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lstmflow"), command],
        check=False,
        cwd=tiny_project,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 2 and f"lstmflow {command} needs a Prefect server: set PREFECT_API_URL" in done.stderr


@pytest.mark.slow
def test_two_machines_train_one_model_with_run_and_join(tmp_path: Path) -> None:
    """Machine 0 runs the flow, machine 1 joins: two project checkouts on 127.0.0.1 stand for two machines."""
    nodes = f'  train: {{nodes: {{count: 2, endpoint: "127.0.0.1:{free_port()}", timeout: 240}}}}\n'
    pipelines = TINY_PIPELINES.replace(
        "    evaluate: {season: 12}\n", "    evaluate: {season: 12}\n" + nodes.replace("  train", "    train")
    )
    machines = [make_project(tmp_path / f"machine{rank}", pipelines) for rank in (0, 1)]
    binary = str(Path(sys.executable).parent / "lstmflow")
    first = subprocess.Popen(
        [binary, "run", "tiny", "--json"], cwd=machines[0], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    second = subprocess.Popen(
        [binary, "join", "tiny", "--node-rank", "1"],
        cwd=machines[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    (out0, err0), (out1, err1) = first.communicate(timeout=600), second.communicate(timeout=600)
    assert first.returncode == 0, err0[-3000:]
    assert second.returncode == 0, err1[-3000:]
    result = json.loads(out0.strip().splitlines()[-1])
    assert result["epochs_run"] == 3 and result["model_uri"] == "models:/tiny/1"
    assert "machine 1 of tiny: trained 3 epochs with 2 processes in all" in out1
    assert not (machines[1] / "mlflow.db").exists(), "machine 1 neither tracks nor registers"
    # quiet by default, and not cut at 80 columns in a pipe: the result lines (on stderr with --json) stay whole
    assert "dedicated Prefect server" not in err0 and "Beginning flow run" not in err0, err0[-3000:]
    assert f"MLflow run {result['mlflow_run_id']} · training 3 epochs, best 3 · data {result['data_version']}" in err0


def test_the_gate_line_says_plainly_whether_the_version_became_the_champion() -> None:
    from lstmflow.cli.running import _gate_line

    refused = {"decision": "kept", "alias": "champion", "reason": "kept: accuracy 0.9 is worse than the baseline's 1"}
    promoted = {"decision": "promoted", "alias": "champion", "reason": "first version"}
    assert _gate_line(refused) == "gate: not promoted to 'champion': accuracy 0.9 is worse than the baseline's 1"
    assert _gate_line(promoted) == "gate: promoted as 'champion': first version"
