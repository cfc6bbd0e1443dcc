"""Hyperparameter search: the space checked against the spec, pruning inside training, an interrupted search resumed,
two workers on one study, MLflow's parent and child runs, and the registered model of the best trial."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_PIPELINES, Patterns, make_project

from lstmflow.config import PipelineSpec
from lstmflow.errors import ConfigError, TrainingError
from lstmflow.ops import search_steps, steps
from lstmflow.training import search
from lstmflow.training.loggers import ListLogger

#: Two keys that matter on the three-class patterns: a learning rate from hopeless to good, and the LSTM's size.
SPACE = {
    "train.optimizer.lr": {"float": [1.0e-4, 5.0e-2], "log": True},
    "model.layers[0].lstm.units": {"categorical": [4, 16]},
}
EPOCHS = 3


def search_spec(patterns: Patterns, **settings: Any) -> PipelineSpec:
    """The patterns classifier with a search over SPACE: 6 trials of 3 epochs, pruning from the third trial on."""
    return patterns.spec(
        train={"epochs": EPOCHS, "early_stopping": {"patience": 10}},
        search={"trials": 6, "startup_trials": 2, "space": SPACE, **settings},
    )


def prepared_for(spec: PipelineSpec, patterns: Patterns) -> steps.Prepared:
    """The prepare step's hand-over for features made without DVC (fixed data versions)."""
    return steps.Prepared(spec.model_dump(mode="json"), str(patterns.features_dir), "d" * 32, "f" * 32)


def mlflow_client(root: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def study_of(prepared: steps.Prepared, root: Path):
    spec = prepared.pipeline
    ref = search.StudyRef(search.storage_location(spec, root), search.study_name(spec, prepared.features_md5))
    return search.open_study(ref, spec)[0]


def trial_runs(root: Path, pipeline: str) -> list[Any]:
    client = mlflow_client(root)
    runs = client.search_runs([client.get_experiment_by_name(pipeline).experiment_id], max_results=1000)
    return [run for run in runs if "lstmflow.search.trial" in run.data.tags]


WORKER = """
import json, sys
from pathlib import Path
from lstmflow.ops import search_steps, steps
prepared = steps.Prepared(**json.loads(Path(sys.argv[1]).read_text()))
search_steps.run_search(prepared, Path(sys.argv[2]), progress=False, need_best=False)
"""


def start_worker(prepared: steps.Prepared, root: Path, name: str) -> subprocess.Popen[str]:
    """A search worker process on the project: runs trials until the study's budget is spent (its own session, so
    that a test can kill it with its training child)."""
    handover = root / f"{name}.json"
    handover.write_text(json.dumps(asdict(prepared)))
    log = open(root / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(handover), str(root)],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


# ----------------------------------------------------------------------------- the spec


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"model.layers[0].lstm.unit": {"int": [4, 16]}},
         ("space key 'model.layers[0].lstm.unit': no such key in the pipeline "
          "(did you mean 'model.layers[0].lstm.units'?)")),
        ({"model.layers[2].lstm.units": {"int": [4, 16]}},
         "space key 'model.layers[2].lstm.units': no such key in the pipeline"),
        ({"data.max_length": {"int": [4, 16]}},
         "space key 'data.max_length': cannot be searched: the data are prepared once per search"),
        ({"search.trials": {"int": [4, 16]}},
         "space key 'search.trials': cannot be searched: it configures the search itself"),
        ({"model.layers[0].lstm.dropout": {"categorical": [0.0, 1.5]}},
         ("space key 'model.layers[0].lstm.dropout': the value 1.5 is refused at model.layers[0].lstm.dropout: "
          "must be < 1, got 1.5")),
        ({"train.optimizer.name": {"categorical": ["adam", "rmsprop"]}},
         "space key 'train.optimizer.name': the value 'rmsprop' is refused at train.optimizer.name: must be one of"),
    ],
)  # fmt: skip
def test_a_bad_space_key_is_a_config_error_naming_it(patterns: Patterns, space: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        patterns.spec(search={"space": space})
    [problem] = raised.value.problems
    assert problem.startswith("pipelines.patterns.search: ") and message in problem


@pytest.mark.parametrize(
    ("search_section", "message"),
    [
        ({"metric": "val_perplexity", "space": SPACE},
         ("pipelines.patterns.search: metric for task 'classify' must be one of 'val_loss', 'val_accuracy', "
          "'val_macro_f1', got 'val_perplexity'")),
        ({"space": {"train.epochs": {"int": [1, 4], "float": [1, 4]}}},
         "pipelines.patterns.search.space.train.epochs: give exactly one of int, float and categorical"),
        ({"space": {"train.optimizer.lr": {"float": [0.0, 0.1], "log": True}}},
         "pipelines.patterns.search.space.train.optimizer.lr: log needs low > 0, got 0.0"),
        ({"space": {"train.batch_size": {"int": [8, 32], "step": 2.5}}},
         "pipelines.patterns.search.space.train.batch_size: step of an int range must be a whole number"),
        ({"sampler": "grid", "space": SPACE},
         ("pipelines.patterns.search: sampler grid needs a finite set of values for every key; "
          "give train.optimizer.lr")),
        ({"storage": "optuna.db", "space": SPACE}, "pipelines.patterns.search.storage: must be `team` or an SQL"),
    ],
)  # fmt: skip
def test_bad_search_settings_are_named(patterns: Patterns, search_section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        patterns.spec(search=search_section)
    assert any(problem.startswith(message) for problem in raised.value.problems), raised.value.problems


def test_direction_follows_the_metric_and_a_grid_lists_every_point(patterns: Patterns) -> None:
    assert search_spec(patterns).search.resolved_direction() == "minimize"
    assert search_spec(patterns, metric="val_accuracy").search.resolved_direction() == "maximize"
    grid = search_spec(patterns, sampler="grid", space={
        "train.batch_size": {"int": [8, 32], "step": 8}, "train.optimizer.lr": {"float": [0.01, 0.03], "step": 0.01},
        "model.layers[0].lstm.units": {"categorical": [4, 16]},
    }).search  # fmt: skip
    assert grid.grid()["train.batch_size"] == [8, 16, 24, 32]
    assert grid.grid()["train.optimizer.lr"] == pytest.approx([0.01, 0.02, 0.03])
    assert search.budget(grid) == 6 and search.budget(grid.model_copy(update={"trials": 30})) == 24


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "cmaes"])
def test_each_sampler_draws_inside_the_space_the_same_way_twice(
    patterns: Patterns, tmp_path: Path, sampler: str
) -> None:
    if sampler == "cmaes":
        pytest.importorskip("cmaes")
    space = {
        "train.batch_size": {"int": [8, 32], "step": 8}, "train.optimizer.lr": {"float": [0.01, 0.03], "step": 0.01},
        "model.layers[0].lstm.units": {"categorical": [4, 16]},
    }  # fmt: skip
    spec = search_spec(patterns, sampler=sampler, trials=30 if sampler == "grid" else 5, space=space)
    draws = []
    for attempt in ("first", "second"):
        ref = search.StudyRef(str(tmp_path / attempt / "optuna.journal"), search.study_name(spec, "f" * 32))
        study, _ = search.open_study(ref, spec, create=True)
        while (number := search.ask(study, spec)) is not None:
            params = study.get_trials(deepcopy=False)[number].params
            search.record(study, number, "complete", params["train.optimizer.lr"] * params["train.batch_size"])
        draws.append([trial.params for trial in study.get_trials(deepcopy=False)])
    assert draws[0] == draws[1], "seeded from train.seed and the trial numbers"
    if sampler == "grid":  # capped at the grid's 4 × 3 × 2 points, each drawn once
        assert len({tuple(sorted(params.items())) for params in draws[0]}) == len(draws[0]) == 24
    else:
        assert len(draws[0]) == 5
    for params in draws[0]:
        assert params["train.batch_size"] in {8, 16, 24, 32} and params["model.layers[0].lstm.units"] in {4, 16}
        assert min(abs(params["train.optimizer.lr"] - lr) for lr in (0.01, 0.02, 0.03)) < 1e-9


def test_study_name_follows_what_a_value_means_not_how_the_search_is_steered(patterns: Patterns) -> None:
    spec = search_spec(patterns)
    name = search.study_name(spec, "f" * 32)
    assert name.startswith("patterns-") and name == search.study_name(spec, "f" * 32)
    steered = search_spec(patterns, trials=40, parallel=2, sampler="random", pruner="none", timeout=60)
    assert search.study_name(steered, "f" * 32) == name, "more trials or another sampler continue the same study"
    assert search.study_name(spec, "e" * 32) != name, "new data start a new study"
    assert search.study_name(search_spec(patterns, metric="val_accuracy"), "f" * 32) != name
    other_space = search_spec(patterns, space={**SPACE, "train.batch_size": {"categorical": [8, 16]}})
    assert search.study_name(other_space, "f" * 32) != name
    other_spec = patterns.spec(train={"epochs": 5}, search={"trials": 6, "startup_trials": 2, "space": SPACE})
    assert search.study_name(other_spec, "f" * 32) != name, "a trial trained for other epochs means something else"


def test_trial_spec_sets_each_value(patterns: Patterns) -> None:
    spec = search.trial_spec(search_spec(patterns), {"train.optimizer.lr": 1.0e-5, "model.layers[0].lstm.units": 4})
    assert spec.train.optimizer.lr == 1.0e-5 and spec.model.layers[0].lstm.units == 4
    assert spec.model.layers[1].dense is not None and spec.train.epochs == EPOCHS


def test_search_command_on_a_pipeline_without_search_exits_2(tiny_project: Path) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lstmflow"), "search", "tiny"],
        cwd=tiny_project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and "pipelines.tiny.search: not set" in done.stderr and "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- the study, without training


@pytest.mark.parametrize("database", [False, True], ids=["journal file", "SQLAlchemy URL"])
def test_a_trial_of_a_dead_process_is_queued_again_once(patterns: Patterns, tmp_path: Path, database: bool) -> None:
    """A running trial claimed by a process that no longer exists is ended as interrupted (not counted) and its
    values queued; a trial of a live process, or of another machine with a fresh heartbeat, is left alone. The same
    with the default journal file and with a database (SQLite here, PostgreSQL on a cluster)."""
    spec = search_spec(patterns, trials=4, storage=f"sqlite:///{tmp_path / 'optuna.db'}" if database else None)
    ref = search.StudyRef(search.storage_location(spec, tmp_path), search.study_name(spec, "f" * 32))
    study, created = search.open_study(ref, spec, create=True)
    assert created and search.trials_left(study, spec.search) == 4
    dead, alive, remote = (search.ask(study, spec) for _ in range(3))
    search.running_trial(study, dead).set_user_attr(search.OWNER_STARTED, 0.0)  # that pid's process started later
    remote_trial = search.running_trial(study, remote)
    remote_trial.set_user_attr(search.OWNER_HOST, "another-machine")
    assert search.trials_left(study, spec.search) == 1

    [requeued] = search.requeue_interrupted(study)
    assert requeued.number == dead and search.requeue_interrupted(study) == [], "queued once"
    found = search.counts(study)
    assert found == {"interrupted": 1, "running": 2, "waiting": 1}
    assert search.trials_left(study, spec.search) == 1, "the interrupted trial is not counted; its retry is"
    retry = search.ask(study, spec)
    frozen = study.get_trials(deepcopy=False)
    assert frozen[retry].params == frozen[dead].params and frozen[retry].user_attrs[search.RETRY_OF] == dead

    remote_trial.set_user_attr(search.HEARTBEAT, time.time() - search.STALE_SECONDS - 1)
    assert [t.number for t in search.requeue_interrupted(study)] == [remote]
    assert search.counts(study)["running"] == 2 and alive in {
        t.number for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"
    }


def test_the_pruning_logger_forwards_reports_and_prunes(patterns: Patterns, tmp_path: Path) -> None:
    """After two completed trials, a trial whose loss stays above their median is pruned at its first epoch; the
    metrics reach the inner logger first, and the logger pickles without its open study."""
    spec = search_spec(patterns)
    ref = search.StudyRef(search.storage_location(spec, tmp_path), search.study_name(spec, "f" * 32))
    study, _ = search.open_study(ref, spec, create=True)
    for loss in (0.5, 0.4):
        number = search.ask(study, spec)
        logger = search.PruningLogger(ListLogger(), ref, spec, number)
        for epoch in range(1, EPOCHS + 1):
            logger.log_metrics({"val_loss": loss / epoch, "train_loss": 1.0}, step=epoch)
        assert search.record(study, number, "complete", loss / EPOCHS) == "complete"
    number = search.ask(study, spec)
    inner = ListLogger()
    logger = pickle.loads(pickle.dumps(search.PruningLogger(inner, ref, spec, number)))
    with pytest.raises(search.TrialPruned, match=f"trial {number} pruned after epoch 1"):
        logger.log_metrics({"val_loss": 2.0}, step=1)
    assert logger.inner.records == [(1, {"val_loss": 2.0})]
    assert search.record(study, number, "pruned") == "pruned"
    assert search.counts(study) == {"complete": 2, "pruned": 1}


def loop_ref(spec: PipelineSpec, root: Path) -> dict[str, str]:
    """A study reference for driving the loop without MLflow (no parent run)."""
    ref = search.StudyRef(search.storage_location(spec, root), search.study_name(spec, "f" * 32))
    search.open_study(ref, spec, create=True)
    return {"storage": ref.storage, "study": ref.name, "parent_run_id": "none", "trials_dir": str(root / "trials")}


def test_the_loop_keeps_parallel_trials_running_and_stops_at_the_budget_or_the_timeout(
    patterns: Patterns, tmp_path: Path
) -> None:
    """drive_trials with trials that record a value after a moment instead of training: at most ``parallel`` run at
    once, the budget ends the loop, and a timeout ends a call early (no trial starts after it) that the next call
    continues."""
    import concurrent.futures
    import threading

    spec = search_spec(patterns, trials=6, parallel=2, timeout=1.0)
    prepared, ref = prepared_for(spec, patterns), loop_ref(spec, tmp_path)
    study = study_of(prepared, tmp_path)
    lock, running, most, pause = threading.Lock(), [0], [0], [1.2]  # the first call's trials outlast its timeout

    def trial(number: int) -> dict[str, Any]:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(pause[0])
        with lock:
            running[0] -= 1
        return {"number": number, "state": search.record(study, number, "complete", float(number))}

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = search_steps.drive_trials(
            prepared, tmp_path, ref, lambda n: pool.submit(trial, n), concurrent.futures.as_completed
        )
        assert len(first) == 2 and most[0] == 2, "two at once, then the timeout: no third trial"
        pause[0] = 0.05
        endless = prepared_for(search_spec(patterns, trials=6, parallel=2), patterns)
        rest = search_steps.drive_trials(
            endless, tmp_path, ref, lambda n: pool.submit(trial, n), concurrent.futures.as_completed
        )
    assert len(rest) == 4 and most[0] == 2 and search.counts(study) == {"complete": 6}


def test_a_stopped_loop_queues_its_running_trials_again(patterns: Patterns, tmp_path: Path) -> None:
    """Ctrl-C in the loop: the trials still running are flagged, and when their training then fails (as a child
    does on the same SIGINT) they are recorded interrupted and queued, not counted as failed."""
    import concurrent.futures

    spec = search_spec(patterns, trials=4, parallel=2)
    prepared, ref = prepared_for(spec, patterns), loop_ref(spec, tmp_path)
    study = study_of(prepared, tmp_path)
    other = concurrent.futures.Future()  # a trial still training when Ctrl-C comes

    def start(number: int) -> concurrent.futures.Future[dict[str, Any]]:
        if number == 0:
            return other
        stopped = concurrent.futures.Future()
        stopped.set_exception(KeyboardInterrupt())
        return stopped

    with pytest.raises(KeyboardInterrupt):
        search_steps.drive_trials(prepared, tmp_path, ref, start, concurrent.futures.as_completed)
    assert (
        search.record(study, 0, "failed", attrs={"lstmflow.error": "TrainingError: killed by SIGINT"}) == "interrupted"
    )
    trials = study.get_trials(deepcopy=False)
    assert search.trial_state(trials[0]) == "interrupted" and trials[-1].user_attrs[search.RETRY_OF] == 0
    assert search.trials_left(study, spec.search) == 4 - 2, "trial 1 (running) and the queued retry of trial 0"


# ----------------------------------------------------------------------------- searches that train


@pytest.mark.slow
def test_a_search_prunes_trials_that_then_train_fewer_epochs(patterns: Patterns, tmp_path: Path) -> None:
    """Six trials on the patterns: some pruned, each after fewer epochs; MLflow holds a parent run with the two
    PNGs and the best trial, and one child run per trial with its params, its curve and its state."""
    prepared = prepared_for(search_spec(patterns), patterns)
    done = search_steps.run_search(prepared, tmp_path, progress=False)

    summary = done["summary"]
    assert summary["counts"].get("complete", 0) + summary["counts"].get("pruned", 0) == 6
    assert summary["counts"]["pruned"] >= 1 and summary["ran"] == summary["counts"]
    client = mlflow_client(tmp_path)
    runs = {int(run.data.tags["lstmflow.search.trial"]): run for run in trial_runs(tmp_path, "patterns")}
    assert sorted(runs) == list(range(6))
    for trial in summary["trials"]:
        run = runs[trial["number"]]
        epochs_logged = len(client.get_metric_history(run.info.run_id, "val_loss"))
        assert run.data.tags["lstmflow.search.state"] == trial["state"]
        assert run.data.tags["mlflow.parentRunId"] == summary["parent_run_id"]
        assert float(run.data.params["train.optimizer.lr"]) == pytest.approx(trial["params"]["train.optimizer.lr"])
        if trial["state"] == "pruned":
            assert trial["epochs_run"] == epochs_logged < EPOCHS and run.info.status == "KILLED"
        else:
            assert trial["epochs_run"] == epochs_logged == EPOCHS and run.info.status == "FINISHED"

    best = summary["best"]
    complete = [t for t in summary["trials"] if t["state"] == "complete"]
    assert best["value"] == min(t["value"] for t in complete) and best["run_id"] == runs[best["number"]].info.run_id
    parent = client.get_run(summary["parent_run_id"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "plots")} == {
        "plots/optimization_history.png",
        "plots/param_importances.png",
    }
    assert parent.data.tags["lstmflow.search.best_trial"] == str(best["number"])
    assert (
        json.loads(parent.data.tags["lstmflow.search.best.model.layers.0.lstm.units"])
        == best["params"]["model.layers[0].lstm.units"]
    )
    assert parent.data.metrics["best_val_loss"] == pytest.approx(best["value"])
    assert (
        done["prepared"]["spec"]["model"]["layers"][0]["lstm"]["units"] == best["params"]["model.layers[0].lstm.units"]
    )
    assert Path(done["trained"]["model_path"]).exists() and done["trained"]["run_id"] == best["run_id"]

    weights = Path(done["trained"]["model_path"]).read_bytes()
    Path(done["trained"]["model_path"]).unlink()  # as on a machine where another worker trained the best trial
    again = search_steps.run_search(prepared, tmp_path, progress=False)
    assert again["summary"]["ran"] == {} and again["summary"]["best"] == best, "a finished study starts no trial"
    assert Path(again["trained"]["model_path"]).read_bytes() == weights, "fetched from the trial's MLflow run"


@pytest.mark.slow
def test_an_interrupted_search_resumes_to_the_requested_count_without_repeating_trials(
    patterns: Patterns, tmp_path: Path
) -> None:
    """Kill a search process (and its training child) while it trains its third trial; the next call queues that
    trial again and runs until 4 trials are finished, leaving the two finished ones alone."""
    prepared = prepared_for(search_spec(patterns, trials=4, pruner="none"), patterns)
    worker = start_worker(prepared, tmp_path, "killed")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and worker.poll() is None:
        trials = study_of(prepared, tmp_path).get_trials() if (tmp_path / "runs").exists() else []
        training = [t for t in trials if t.state.name == "RUNNING" and search_steps.TRIAL_RUN_ATTR in t.user_attrs]
        if sum(t.state.name == "COMPLETE" for t in trials) >= 2 and training:
            break
        time.sleep(0.2)
    assert worker.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    before = {t.number: t.params for t in study_of(prepared, tmp_path).get_trials() if t.state.name == "COMPLETE"}
    [killed] = [t.number for t in study_of(prepared, tmp_path).get_trials() if t.state.name == "RUNNING"]

    done = search_steps.run_search(prepared, tmp_path, progress=False)
    trials = study_of(prepared, tmp_path).get_trials()
    assert done["summary"]["counts"] == {"complete": 4, "interrupted": 1}
    assert {t.number: t.params for t in trials if t.number in before} == before
    [retry] = [t for t in trials if t.user_attrs.get(search.RETRY_OF) == killed]
    assert retry.params == trials[killed].params and retry.state.name == "COMPLETE"
    assert done["summary"]["ran"] == {"complete": 2}, "the retry and one new trial: the finished two are not run again"
    runs = trial_runs(tmp_path, "patterns")
    per_trial = sorted(int(run.data.tags["lstmflow.search.trial"]) for run in runs)
    assert per_trial == list(range(5)), "one MLflow run per trial"
    [killed_run] = [run for run in runs if run.data.tags["lstmflow.search.trial"] == str(killed)]
    assert killed_run.info.status == "KILLED" and killed_run.data.tags["lstmflow.search.state"] == "interrupted"


SEARCHED_PIPELINES = (
    TINY_PIPELINES
    + """\
    search:
      trials: 3
      pruner: none
      space:
        model.layers[0].lstm.units: {categorical: [4, 8]}
        train.optimizer.lr: {float: [1.0e-3, 3.0e-2], log: true}
"""
)


@pytest.mark.slow
def test_the_registered_model_is_the_best_trials_and_a_rerun_trains_nothing(
    tmp_path: Path, prefect_harness: None
) -> None:
    import pandas as pd

    from flows.pipeline import run_pipeline
    from lstmflow.tracking import load_model, tracking_uri

    root = make_project(tmp_path / "project", SEARCHED_PIPELINES)
    result = run_pipeline(pipeline="tiny", config=str(root / "pipelines.yaml"))

    best = result["search"]["best"]
    assert result["search"]["ran"] == {"complete": 3} and result["model_uri"] == "models:/tiny/1"
    client = mlflow_client(root)
    version = client.get_model_version("tiny", "1")
    assert version.run_id == result["mlflow_run_id"] == best["run_id"], "registered from the best trial's own run"
    run = client.get_run(version.run_id)
    assert run.data.params["model.layers.0.lstm.units"] == str(best["params"]["model.layers[0].lstm.units"])
    assert float(run.data.params["train.optimizer.lr"]) == pytest.approx(best["params"]["train.optimizer.lr"])
    assert "test_mase" in run.data.metrics and run.data.tags["mlflow.parentRunId"] == result["search"]["parent_run_id"]
    forecast = load_model(tracking_uri(root), result["model_uri"]).predict(
        pd.read_csv(root / "data" / "tiny.csv")[["value"]].tail(36)
    )
    assert len(forecast) == 6 and forecast["value"].notna().all()

    again = run_pipeline(pipeline="tiny", config=str(root / "pipelines.yaml"))
    assert again["cached"] is True and again["search"]["ran"] == {} and again["model_uri"] == "models:/tiny/1"
    more = run_pipeline(pipeline="tiny", trials=4, config=str(root / "pipelines.yaml"))
    assert more["search"]["ran"] == {"complete": 1} and more["search"]["study"] == result["search"]["study"]


def test_a_search_with_no_completed_trial_says_so(patterns: Patterns, tmp_path: Path) -> None:
    """Closing a study where every trial failed is a TrainingError naming the study and its counts."""
    spec = search_spec(patterns, trials=1)
    prepared = prepared_for(spec, patterns)
    study_ref = search_steps.open_search(prepared, tmp_path, None)
    study = study_of(prepared, tmp_path)
    search.record(study, search.ask(study, spec), "failed", attrs={"lstmflow.error": "TrainingError: diverged"})
    with pytest.raises(TrainingError, match=rf"no trial of study {study_ref['study']} completed \(1 failed\)"):
        search_steps.close_search(prepared, tmp_path, study_ref, [])
    assert search_steps.close_search(prepared, tmp_path, study_ref, [], need_best=False)["trained"] is None


@pytest.mark.slow
def test_a_search_deployment_runs_workers_that_share_one_study(tmp_path: Path, prefect_harness: None) -> None:
    """Two runs of the search deployment, picked up together by a real worker (each run its own process), share the
    study without losing or repeating a trial; the run that follows starts no trial and registers the best."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    from flows.deploy import deploy_search, worker_command
    from flows.pipeline import run_pipeline

    root = make_project(tmp_path / "project", SEARCHED_PIPELINES.replace("trials: 3", "trials: 4"))
    deployment_id = deploy_search(root / "pipelines.yaml", pool="gpu-search", name="search-test", pipeline="tiny")
    flow_runs = [run_deployment(deployment_id, timeout=0) for _ in range(2)]
    environment = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    worker = subprocess.run(
        worker_command("gpu-search", limit=2, run_once=True),
        env=environment,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    with get_client(sync_client=True) as client:
        states = [client.read_flow_run(flow_run.id).state for flow_run in flow_runs]
    assert all(state is not None and state.is_completed() for state in states), (worker.stdout + worker.stderr)[-4000:]

    result = run_pipeline(pipeline="tiny", config=str(root / "pipelines.yaml"))
    assert result["search"]["ran"] == {} and result["search"]["counts"] == {"complete": 4}
    assert result["model_uri"] == "models:/tiny/1" and result["mlflow_run_id"] == result["search"]["best"]["run_id"]
    runs = trial_runs(root, "tiny")
    assert {run.data.tags["lstmflow.prefect_flow_run_id"] for run in runs} == {
        str(flow_run.id) for flow_run in flow_runs
    }, "both ran trials"
    assert sorted(int(run.data.tags["lstmflow.search.trial"]) for run in runs) == [0, 1, 2, 3], (
        "one MLflow run per trial"
    )
    assert len({run.data.tags["mlflow.parentRunId"] for run in runs}) == 1, "one parent run for the study"
