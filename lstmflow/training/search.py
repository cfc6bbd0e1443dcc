"""Hyperparameter search with Optuna: the study, its trials as overrides of the spec, pruning from inside training.

A search is a loop of ask → train → tell. The asking happens in one place per process (:func:`ask`): it checks the
budget, draws every ``search.space`` key for a new trial and claims the trial for this process. Each trial then
trains like a plain run, in a child process started by :mod:`lstmflow.training.launch`, with the pipeline's spec plus
the trial's values (:func:`trial_spec`). Pruning happens inside that child: :class:`PruningLogger` reports the metric to
the trial after each epoch and raises :class:`TrialPruned` when the pruner says stop; the launcher raises it again in
the parent, which records the trial PRUNED.

The study lives in Optuna storage and is named after the pipeline and a hash of everything that gives a trial's
value its meaning (:func:`study_name`): the same spec, space, metric and data continue the same study, a change
starts a new one. Several processes, here or on other machines, can work on one study at once; each trial is
claimed by the process that runs it (host, pid and a heartbeat), so that a trial whose process died is found
(:func:`requeue_interrupted`), marked interrupted and queued again with the same values, instead of counting as
running forever. The claim is lstmflow's own rather than Optuna's heartbeat (``heartbeat_interval`` and
``fail_stale_trials``): Optuna's exists for RDB storage only, not for the journal file that is the default; it beats
only inside ``study.optimize``, which an ask-and-tell search does not call; and it judges a trial by time alone,
where the pid and its start time show a dead process on the same host at once.

Nothing here imports MLflow or Prefect; Optuna is imported inside the functions that use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import socket
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import psutil

from lstmflow.config import PipelineSpec, SearchParam, SearchSpec, set_key, validate_pipeline
from lstmflow.errors import ConfigError, LstmflowError, TrainingError
from lstmflow.training.loggers import MetricLogger

if TYPE_CHECKING:
    import optuna

#: The default storage: a journal file per pipeline, under the project's runs/ folder.
JOURNAL_FILE = "optuna.journal"
#: Seconds between two heartbeats of a running trial.
HEARTBEAT_SECONDS = 30
#: A trial claimed by another machine whose last heartbeat is older than this is taken as interrupted.
STALE_SECONDS = 300
#: The user attributes lstmflow keeps on each trial.
OWNER_HOST, OWNER_PID, OWNER_STARTED, HEARTBEAT = (
    "lstmflow.host",
    "lstmflow.pid",
    "lstmflow.pid_started",
    "lstmflow.heartbeat",
)
INTERRUPTED, RETRY_OF = "lstmflow.interrupted", "lstmflow.retry_of"
#: Settings of `search` that steer the search without changing what a trial's value means.
STEERING = {"trials", "timeout", "parallel", "storage", "sampler", "pruner", "startup_trials", "min_epochs"}


class TrialPruned(LstmflowError):
    """The pruner stopped a trial after an epoch; raised inside training, recorded as a PRUNED trial."""

    planned = True

    def __init__(self, number: int, epoch: int, value: float) -> None:
        self.number, self.epoch, self.value = number, epoch, value
        super().__init__(f"trial {number} pruned after epoch {epoch} (metric {value:.6g})")


@dataclass(frozen=True)
class StudyRef:
    """Where a study lives: a journal file path or an SQLAlchemy URL, and the study's name."""

    storage: str
    name: str


def study_name(spec: PipelineSpec, data_version: str) -> str:
    """``<pipeline>-<hash>``: a hash of the spec (search steering settings, data paths and description left out),
    the resolved direction and the data version, so that the same search continues one study and any change starts
    a new one."""
    search = search_settings(spec)
    identity = spec.model_dump(mode="json", exclude={"data": True, "description": True, "search": STEERING})
    identity["search"]["direction"] = search.resolved_direction()
    digest = hashlib.sha256(json.dumps({"spec": identity, "data": data_version}, sort_keys=True).encode()).hexdigest()
    return f"{spec.name}-{digest[:12]}"


def storage_location(spec: PipelineSpec, root: Path) -> str:
    """``search.storage``, else the pipeline's journal file in the project."""
    return search_settings(spec).storage or str(root / "runs" / spec.name / JOURNAL_FILE)


def _storage(location: str) -> Any:
    """A journal file, or a database URL whose storage waits out a restart of the server (see
    :mod:`lstmflow.training.study_storage`): a trial training across the restart then loses nothing."""
    from lstmflow.training.study_storage import open_storage

    return open_storage(location)


def open_study(ref: StudyRef, spec: PipelineSpec, create: bool = False) -> tuple[optuna.Study, bool]:
    """The study, and whether this call created it; ``create`` makes it when missing.

    The sampler is a placeholder that samples nothing on its own: :func:`ask` sets a seeded one for each trial.
    """
    import optuna

    search = search_settings(spec)
    options = {
        "study_name": ref.name,
        "storage": _storage(ref.storage),
        "sampler": optuna.samplers.RandomSampler(),
        "pruner": make_pruner(search, spec.train.epochs if isinstance(spec.train.epochs, int) else 100),
    }
    if create:
        try:
            return optuna.create_study(direction=search.resolved_direction(), **options), True
        except optuna.exceptions.DuplicatedStudyError:
            pass  # made by an earlier call, or by another worker a moment ago
    return optuna.load_study(**options), False


def make_sampler(search: SearchSpec, seed: int) -> optuna.samplers.BaseSampler:
    """The ``search.sampler`` with ``seed``; TPE keeps Optuna's default of treating running trials as bad ones
    (``constant_liar``), so that parallel trials spread out."""
    import optuna

    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "grid":
        return optuna.samplers.GridSampler(search.grid(), seed=seed)
    if importlib.util.find_spec("cmaes") is None:
        raise ConfigError(
            "search.sampler: cmaes needs the cmaes package (pip install cmaes); tpe, random and grid do not"
        )
    # Categorical keys have no CMA-ES form: Optuna samples them at random, which the docs of `sampler` say.
    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def make_pruner(search: SearchSpec, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner; a trial's steps are its epochs (1-based), so ``n_warmup_steps`` is ``min_epochs - 1``."""
    import optuna

    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=search.startup_trials, n_warmup_steps=search.min_epochs - 1)
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=search.min_epochs, max_resource=max(epochs, search.min_epochs)
        )
    return optuna.pruners.NopPruner()


def budget(search: SearchSpec) -> int:
    """Trials the study runs in all: ``trials``, or fewer when a grid has fewer points."""
    if search.sampler != "grid":
        return search.trials
    points = 1
    for values in search.grid().values():
        points *= len(values)
    return min(search.trials, points)


def counts(study: optuna.Study) -> Counter[str]:
    """Trials by :func:`trial_state`."""
    return Counter(trial_state(trial) for trial in study.get_trials(deepcopy=False))


def trials_left(study: optuna.Study, search: SearchSpec) -> int:
    """Trials still to start: the budget less those finished (interrupted ones excepted), running or queued."""
    found = counts(study)
    taken = sum(found[state] for state in ("complete", "pruned", "failed", "running", "waiting"))
    return budget(search) - taken


def ask(study: optuna.Study, spec: PipelineSpec) -> int | None:
    """Start a new trial with values for every space key and claim it for this process; None when the budget is spent.

    A queued trial (an interrupted one, see :func:`requeue_interrupted`) is taken before a new one is drawn. The
    sampler is seeded from ``train.seed`` and the trial's number, so that a search gives the same trials when run
    again, a resumed search does not repeat earlier draws, and workers sharing a study do not repeat each other
    (a grid is walked in one seeded order, by trial number).
    """
    search = search_settings(spec)
    if trials_left(study, search) <= 0:
        return None
    expected = len(study.get_trials(deepcopy=False))
    placeholder = study.sampler
    # A grid is shuffled once by its seed: one order for the whole study, whose trial numbers index it.
    seed = spec.train.seed if search.sampler == "grid" else _seed(spec.train.seed, expected)
    study.sampler = make_sampler(search, seed)  # grid and cmaes draw during ask()
    try:
        trial = study.ask()
        _claim(trial)  # at once: a process killed before its claim leaves a trial only the stale timeout ends
        if trial.number != expected and search.sampler in ("tpe", "random"):  # another worker asked in between
            study.sampler = make_sampler(search, _seed(spec.train.seed, trial.number))  # these draw at suggest time
        for key, param in search.space.items():
            _suggest(trial, key, param)
    finally:
        # Tells go through the placeholder: a grid sampler's tell would call study.stop() on the last point, which
        # Optuna allows inside study.optimize() only; the budget already stops the search there.
        study.sampler = placeholder
    return trial.number


def _seed(seed: int, number: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def _suggest(trial: optuna.Trial, key: str, param: SearchParam) -> Any:
    if param.categorical is not None:
        return trial.suggest_categorical(key, param.categorical)
    low, high = param.bounds
    if param.int is not None:
        return trial.suggest_int(key, low, high, step=int(param.step or 1), log=param.log)
    return trial.suggest_float(key, low, high, step=param.step, log=param.log)


def running_trial(study: optuna.Study, number: int) -> optuna.Trial:
    """A live handle on trial ``number``, to report to, set attributes on and tell from this process."""
    import optuna

    trial_id = study.get_trials(deepcopy=False)[number]._trial_id  # Optuna has no public number → id lookup
    return optuna.trial.Trial(study, trial_id)


def trial_spec(base: PipelineSpec, params: dict[str, Any]) -> PipelineSpec:
    """The pipeline's spec with a trial's values set; the space was checked against it, so this fails only on a
    combination of values that the spec refuses together. A trial never refits (``train.refit``) nor trains on a small
    validation part (``early_stopping.small_val_trains``): it is judged on its validation scores, and the best trial's
    weights are registered as they are."""
    tree = base.model_dump(mode="json")
    for key, value in params.items():
        tree = set_key(tree, key, value, f"search.space.{key}")
    tree["train"]["refit"] = False
    tree["train"]["early_stopping"]["small_val_trains"] = False
    return validate_pipeline(base.name, tree, base.data.path.parent)


def trial_value(history: list[dict[str, float]], best_epoch: int, metric: str) -> float:
    """A completed trial's value: the metric at its best epoch, the one whose weights it keeps."""
    return float(history[best_epoch - 1][metric])


# --------------------------------------------------------------------------- liveness


def _owner() -> dict[str, Any]:
    """This process as a trial's owner: host, pid and the pid's start time (a pid alone may be reused)."""
    return {
        OWNER_HOST: socket.gethostname(),
        OWNER_PID: os.getpid(),
        OWNER_STARTED: psutil.Process().create_time(),
        HEARTBEAT: time.time(),
    }


def _claim(trial: optuna.Trial) -> None:
    for key, value in _owner().items():
        trial.set_user_attr(key, value)


@contextmanager
def heartbeat(trial: optuna.Trial) -> Iterator[None]:
    """Claim ``trial`` for this process and refresh its heartbeat while the block runs (it trains)."""
    _claim(trial)
    stop = threading.Event()

    def beat() -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        from lstmflow.training.study_storage import StudyStorageError

        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                trial.set_user_attr(HEARTBEAT, time.time())
            except UpdateFinishedTrialError:
                return  # another worker took this trial as interrupted; its training stops at the next epoch
            except StudyStorageError as exc:  # the database is down for long: the next beat tries again
                logging.getLogger(__name__).warning("trial %d: no heartbeat recorded: %s", trial.number, exc)

    thread = threading.Thread(target=beat, name=f"heartbeat-trial-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _abandoned(trial: optuna.trial.FrozenTrial, now: float) -> bool:
    """Whether a running trial's process is gone: checked directly on this host, by its heartbeat elsewhere."""
    attrs = trial.user_attrs
    if attrs.get(OWNER_HOST) == socket.gethostname() and OWNER_PID in attrs:
        try:
            return psutil.Process(attrs[OWNER_PID]).create_time() != attrs[OWNER_STARTED]
        except psutil.NoSuchProcess:
            return True
    last = attrs.get(HEARTBEAT, trial.datetime_start.timestamp() if trial.datetime_start else now)
    return now - last > STALE_SECONDS


def requeue_interrupted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Mark the running trials of dead processes interrupted and queue their values again; returns those trials."""
    from optuna.trial import TrialState

    now = time.time()
    abandoned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if _abandoned(t, now)]
    return [trial for trial in abandoned if _requeue(study, trial)]


def mark_interrupted(study: optuna.Study, numbers: list[int]) -> None:
    """Flag running trials as interrupted because their search is being stopped (Ctrl-C): when their training child
    then fails, :func:`record` queues them again instead of counting a failure."""
    for number in numbers:
        with contextlib.suppress(Exception):  # already finished, or the storage is going away with the process
            running_trial(study, number).set_user_attr(INTERRUPTED, True)


def _requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
    """End a trial as interrupted (FAIL with the flag, not counted) and queue its values again; False if another
    process ended it first. Only the process whose tell lands queues the retry."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        running_trial(study, trial.number).set_user_attr(INTERRUPTED, True)
        study.tell(trial.number, state=TrialState.FAIL)
    except (UpdateFinishedTrialError, ValueError):  # finished meanwhile (ValueError: tell's own check)
        return False
    study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.user_attrs.get(RETRY_OF, trial.number)})
    return True


def record(
    study: optuna.Study, number: int, state: str, value: float | None = None, attrs: dict[str, Any] | None = None
) -> str:
    """Record a trial's outcome, ``complete`` (with ``value``), ``pruned``, ``failed`` or ``interrupted``, with its
    attributes; returns the state recorded. A failed trial flagged by :func:`mark_interrupted` (its training child
    died of the same Ctrl-C) is recorded interrupted, and one that another process already ended keeps that ending."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    trial = running_trial(study, number)
    try:
        for key, attr in (attrs or {}).items():
            trial.set_user_attr(key, attr)
        current = study.get_trials(deepcopy=False)[number]
        if state == "interrupted" or (state == "failed" and current.user_attrs.get(INTERRUPTED)):
            return "interrupted" if _requeue(study, current) else trial_state(study.get_trials(deepcopy=False)[number])
        ending = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}[state]
        study.tell(number, value if state == "complete" else None, state=ending)
    except (UpdateFinishedTrialError, ValueError):  # taken as abandoned by another process and queued again
        return trial_state(study.get_trials(deepcopy=False)[number])
    return state


# --------------------------------------------------------------------------- pruning


class PruningLogger:
    """A :class:`~lstmflow.training.loggers.MetricLogger` for a trial: forwards every epoch to ``inner`` (the trial's
    MLflow run), reports ``search.metric`` to the trial and raises :class:`TrialPruned` when the pruner says stop.

    It crosses into the training child by pickle: it holds the study's reference, not the study, and opens the study
    there on first use. It also stops the child when the process that runs the trial is gone (a ``kill -9``): nobody
    would record its outcome, and the trial is run again when the search resumes.
    """

    def __init__(self, inner: MetricLogger, ref: StudyRef, spec: PipelineSpec, number: int) -> None:
        self.inner = inner
        self.ref = ref
        self.spec = spec
        self.number = number
        self.owner_pid = os.getpid()
        self._trial: optuna.Trial | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_trial": None}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.inner.log_metrics(metrics, step)
        metric = search_settings(self.spec).metric
        if metric not in metrics:
            return
        if os.getpid() != self.owner_pid and os.getppid() != self.owner_pid:  # a child whose owner died
            raise TrainingError(
                f"trial {self.number}: the search process {self.owner_pid} that runs it is gone; stopping (the trial "
                "is run again when the search resumes)"
            )
        if self._trial is None:
            study, _ = open_study(self.ref, self.spec)
            self._trial = running_trial(study, self.number)
        self._trial.report(metrics[metric], step)
        if self._trial.should_prune():
            raise TrialPruned(self.number, step, metrics[metric])


# --------------------------------------------------------------------------- results


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best completed trial, or None when none completed."""
    from optuna.trial import TrialState

    return study.best_trial if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else None


def ranked_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Completed trials best first, then pruned, failed and interrupted ones by number."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    complete.sort(key=lambda t: cast(float, t.value), reverse=study.direction == StudyDirection.MAXIMIZE)  # set
    return complete + [t for t in trials if t.state in (TrialState.PRUNED, TrialState.FAIL)]


def trial_state(trial: optuna.trial.FrozenTrial) -> str:
    """complete, pruned, failed, interrupted (run again, not counted in the budget), running or waiting.

    Only a failed trial can be interrupted: one flagged by :func:`mark_interrupted` that then completed keeps its
    result.
    """
    if trial.state.name == "FAIL" and trial.user_attrs.get(INTERRUPTED):
        return "interrupted"
    return trial.state.name.lower().replace("fail", "failed")


def plot_study(study: optuna.Study, metric: str, out_dir: Path) -> list[Path]:
    """PNGs of the optimisation history and, with two completed trials or more, the parameter importances.

    Optuna's matplotlib plots draw through pyplot, so the Agg backend is selected first (no display needed) and each
    figure is closed after saving.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as optuna_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Callable[..., Any]] = {"optimization_history.png": optuna_plots.plot_optimization_history}
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 2:
        plots["param_importances.png"] = optuna_plots.plot_param_importances
    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # "few trials per regime" from the importance evaluator
        for name, plot in plots.items():
            axes = plot(study, target_name=metric)
            figure = axes.figure.figure  # the Figure itself (a subfigure's .figure would be its parent)
            figure.savefig(out_dir / name, dpi=110, bbox_inches="tight")
            plt.close(figure)
            paths.append(out_dir / name)
    return paths


def search_settings(spec: PipelineSpec) -> SearchSpec:
    """The pipeline's ``search`` section; a ConfigError names the pipeline when it has none, or when it trains an
    ensemble: trials compare values on one model's curve (the pruner reads it epoch by epoch), and N seeds per trial
    would multiply the search's cost by N without changing which values win."""
    if spec.search is None:
        raise ConfigError(f"pipelines.{spec.name}.search: not set; add a search section to search this pipeline")
    if spec.train.ensemble > 1:
        raise ConfigError(
            f"pipelines.{spec.name}.train.ensemble: {spec.train.ensemble} cannot be searched with; search with 1 "
            "(the default), then train the best values with train.ensemble in a pipeline without search"
        )
    return spec.search
