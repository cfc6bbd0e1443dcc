"""Fitting a model to prepared features: the epoch loop, its end-of-epoch decisions, data parallelism.

The loop is the same for every task: an :class:`~lstmflow.training.objectives.Objective` supplies the batches, the loss
and the task's extra metrics (``val_accuracy``, ``val_macro_f1`` and ``train_padding_fraction`` when classifying).
Before the first step a :class:`~lstmflow.training.plan.TrainingPlan` fixes what depends on the data's size (the
batch size, the patience in epochs, whether the validation part can decide at all, the lr schedule). After each epoch
the loop validates, then decides: is this the best epoch by ``train.select`` (its weights are kept), is it time to
stop (early stopping, ``epochs``, ``train.budget``), and what the lr schedule does next; then it logs the epoch and
writes a checkpoint. The budget is checked after every step too: it cuts an epoch short (a long corpus's first epoch
included), and that partial epoch is validated and decided on like any other.

``fit`` is meant to run in the training process(es) that :mod:`lstmflow.training.launch` starts; it sets process-wide
state (torch threads, RNG seeds, the deterministic-algorithms switch) that a caller's process should not inherit.
With several processes (a :class:`~lstmflow.training.distributed.World` larger than one) each trains on its rows of
every batch under DDP; rank 0 alone evaluates, logs and writes checkpoints, and sends what it found to the others, so
that every rank takes the same schedule and early-stopping decisions. What a run leaves lives in ``run_dir``:

- ``checkpoints/``: ``last.pt`` and ``prev.pt``, everything needed to continue (see
  :mod:`lstmflow.training.checkpoint`).
- ``model.pt``: the kept epoch's state dict, restored at the end.
- ``fit_result.json``: the :class:`FitResult`, which is also how the launcher's parent reads it.

Calling ``fit`` again on the same ``run_dir`` and spec continues from the last good checkpoint. Within an epoch it
skips exactly the batches already trained (the shuffled order is a function of seed and epoch), so the run ends
with the same metrics and weights as one that was never interrupted: bit for bit on CPU, and on GPU with
``train.deterministic`` (unless ``budget.seconds`` ends either run, which depends on the machine's speed). Metrics
go to the logger before the epoch's checkpoint is written, so an interrupted run may log the last epoch twice (same
step, same values) but never skips one.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from lstmflow.config import PipelineSpec
from lstmflow.errors import CheckpointError, TrainingError
from lstmflow.models.lstm import LSTMNet, Network
from lstmflow.training.budget import Budget, Clock, ProgressLines, minutes, progress_log
from lstmflow.training.checkpoint import (
    CHECKPOINT_DIR,
    LAST,
    TrainingState,
    atomic_torch_save,
    atomic_write_bytes,
    checkpoint_or_error,
    cpu_copy,
    save_checkpoint,
)
from lstmflow.training.distributed import (
    DataParallelNet,
    World,
)
from lstmflow.training.loggers import MetricLogger
from lstmflow.training.objectives import Objective, Part, make_objective
from lstmflow.training.plan import TrainingPlan, plan_training
from lstmflow.training.schedules import Schedule, make_schedule
from lstmflow.training.step import (
    Precision,
    make_optimizer,
    seed_everything,
    set_deterministic,
    train_step,
    training_device,
    zero_sums,
)

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
RESULT_FILE = "fit_result.json"


@dataclass
class FitResult:
    """What a fit produced; plain JSON types only, so it crosses process and task boundaries."""

    best_epoch: int  # 1-based, as logged: the epoch whose weights are kept
    epochs_run: int  # in all, counting those before a resume
    best_val_loss: float  # the kept epoch's validation loss
    stopped_early: bool  # stopped_by == "early_stopping"
    resumed_from_epoch: int | None  # epochs the resumed checkpoint had completed, None for a fresh start
    resumed_from_batch: int | None  # batches of the next epoch it had trained (0 at an epoch's end)
    history: list[dict[str, float]]  # one dict per epoch: epoch, train_loss, val_loss, penalty, lr, task metrics
    model_path: str  # the kept epoch's state dict
    checkpoint_path: str
    seconds: float  # wall time of this call only
    device: str
    threads: int  # torch.get_num_threads() in the process that trained
    workers: int  # training processes in all (DDP's world size)
    precision: str
    deterministic: bool
    #: What ran the LSTM recurrence in this call's training steps (``train.lstm_kernel``, resolved per pass):
    #: "lstmflow" (the compiled CPU kernel), "lstmflow-loop" (its PyTorch fallback), "torch" (nn.LSTM, cuDNN on GPU).
    lstm_kernels: list[str] = field(default_factory=list)
    stopped_by: str = "epochs"  # what ended the run: "budget", "early_stopping" or "epochs"
    batch_size: int = 0  # train.batch_size as used (auto resolved)
    steps: int = 0  # optimizer steps in all, counting those before a resume
    train_seconds: float = 0.0  # seconds of training in all, counting those before a resume (what the budget counts)
    select: str = "val_loss"  # train.select as used: the history key that chose best_epoch
    best_score: float = math.nan  # that metric at best_epoch
    kept: str = "best"  # "best" epoch's weights, or "last" when the validation part was too small to decide on
    lr_schedule: str = ""  # the schedule that ran: a train.lr_schedule name, or auto-plateau / auto-cosine
    class_weights: list[float] | None = None  # the classes' weights in the training loss (train.class_weight)
    #: train.ensemble above 1: each member's seed, kept epoch and scores (the fields above are the ensemble's then,
    #: see :mod:`lstmflow.training.ensemble`); empty for one model.
    members: list[dict[str, Any]] = field(default_factory=list)
    #: train.refit: the refit's epochs, steps and training samples when its weights are the kept ones, else None.
    refit: dict[str, int] | None = None

    def write(self, path: Path) -> None:
        atomic_write_bytes(json.dumps(asdict(self), indent=2).encode(), path)

    @classmethod
    def read(cls, path: Path) -> FitResult:
        return cls(**json.loads(path.read_text()))


def train_threads(spec: PipelineSpec) -> int:
    """CPU threads for training. One by default: on a shared machine, PyTorch's small LSTM matmuls run several times
    slower with two busy-waiting OpenMP threads than with one."""
    return spec.train.threads or 1


def fit(
    spec: PipelineSpec,
    features_dir: Path,
    run_dir: Path,
    logger: MetricLogger,
    progress: bool = True,
    world: World | None = None,
) -> FitResult:
    """Train ``spec.model`` on the features in ``features_dir``; resumes from ``run_dir`` when it holds a checkpoint.

    ``world`` is this process's place among several training processes (see
    :func:`lstmflow.training.distributed.join`); None trains alone. With ``train.ensemble`` above 1 it trains the
    members one after another (:mod:`lstmflow.training.ensemble`).
    """
    torch.set_num_threads(train_threads(spec))
    world = world or World(training_device(spec))
    set_deterministic(spec.train.deterministic)
    if spec.train.ensemble > 1:
        from lstmflow.training.ensemble import fit_ensemble  # which calls fit_member: a cycle at import time

        return fit_ensemble(spec, Path(features_dir), Path(run_dir), logger, progress, world)
    from lstmflow.training.refit import fit_and_refit  # which calls fit_member: a cycle at import time

    return fit_and_refit(spec, Path(features_dir), Path(run_dir), logger, progress, world)


def fit_member(
    spec: PipelineSpec,
    features_dir: Path,
    run_dir: Path,
    logger: MetricLogger,
    progress: bool,
    world: World,
    member: str = "",
) -> FitResult:
    """:func:`fit` of one network after the process-wide settings; ``member`` (e.g. ``"member 2/5"``) names it in
    the progress lines and the log when it is one of an ensemble."""
    seed_everything(spec.train.seed)
    loop = EpochLoop.build(spec, features_dir, run_dir / CHECKPOINT_DIR, world)
    loop.member = member
    return run_loop(loop, run_dir, logger, progress)


def run_loop(loop: EpochLoop, run_dir: Path, logger: MetricLogger, progress: bool) -> FitResult:
    """Resume ``loop`` from its checkpoint when it has one, train until something stops it, and write the kept
    weights and the result into ``run_dir``."""
    started, world = time.perf_counter(), loop.world
    resumed_from = loop.resume()
    loop.announce()
    with _progress_bar(progress and world.is_main) as bar:
        while loop.state.stopped_by is None:
            loop.run_epoch(bar, logger)
    return _finish(loop, run_dir, resumed_from, started)


@dataclass
class EpochLoop:
    """The live objects of one :func:`fit` call, and the steps of its loop: train an epoch, then decide."""

    spec: PipelineSpec
    world: World
    objective: Objective
    plan: TrainingPlan
    model: Network
    trained: Network | DataParallelNet  # what the loss calls: the model, or the model under DDP
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    precision: Precision
    checkpoint_dir: Path
    state: TrainingState = field(default_factory=TrainingState)
    clock: Clock = field(default_factory=Clock)
    budget: Budget | None = None
    progress_lines: ProgressLines | None = None
    member: str = ""  # "member 2/5" in an ensemble, else empty

    @property
    def part(self) -> Part:
        """What it trains on: "train+val" for a refit, or where validation is too small to decide on (the plan's)."""
        return self.plan.part

    def name(self) -> str:
        """The pipeline's name, and the member's number in an ensemble, as the log lines start."""
        return f"{self.spec.name} {self.member}" if self.member else self.spec.name

    @classmethod
    def build(
        cls, spec: PipelineSpec, features_dir: Path, checkpoint_dir: Path, world: World, part: Part = "train"
    ) -> EpochLoop:
        """The objective, plan, model, optimizer, schedule and precision for a fresh start (see :meth:`resume`),
        training on ``part``."""
        train_spec = spec.train
        objective = make_objective(spec, features_dir)
        plan = plan_training(spec, objective, world.size, part)
        model = objective.network(spec, train_spec.lstm_kernel).to(world.device)
        if objective.starts_from_zero and isinstance(model, LSTMNet):  # a translator never starts from zero
            model.zero_output()
        trained = world.parallel(model)
        if world.rank:
            seed_everything(train_spec.seed + world.rank)  # common weights above; each rank's own dropout masks below
        optimizer = make_optimizer(spec, model.parameters())
        schedule = make_schedule(spec, optimizer, plan)
        precision = Precision(train_spec.precision, world.device)
        loop = cls(spec, world, objective, plan, model, trained, optimizer, schedule, precision, checkpoint_dir)
        loop.budget, loop.progress_lines = Budget(spec, world), ProgressLines(world.is_main)
        return loop

    def resume(self) -> tuple[int | None, int | None]:
        """Continue from the run's checkpoint when it has one; returns the epochs and batches it had trained, or
        (None, None) for a fresh start. The budget's clock continues from the checkpoint's time."""
        world = self.world
        checkpoint = world.broadcast(checkpoint_or_error(self.checkpoint_dir, self.spec) if world.is_main else None)
        if isinstance(checkpoint, CheckpointError):  # raised on every rank, so that they all stop
            raise checkpoint
        if checkpoint is None:
            return None, None
        self.state = TrainingState.resume(
            checkpoint, self.model, self.optimizer, self.schedule, self.precision.scaler, world
        )
        state = self.state
        self.clock = Clock(state.elapsed)
        where = self.checkpoint_dir
        log.info("resuming %s from epoch %d, batch %d (%s)", self.spec.name, state.epoch, state.batches_done, where)
        return state.epoch, state.batches_done

    def announce(self) -> None:
        """The plan in the log; the reason when the data turned early stopping off, on the console too."""
        plan, world = self.plan, self.world
        log.info(
            "training %s on %s with %d thread(s), rank %d of %d: batch_size %d, %d steps per epoch, at most %d steps, "
            "budget %s, lr schedule %s (warm-up %d steps), select %s, %s",
            self.name(), world.device, torch.get_num_threads(), world.rank, world.size, plan.batch_size,
            plan.steps_per_epoch, plan.max_steps, self._budget().describe(), plan.lr_schedule, plan.warmup_steps,
            plan.selection.metric,
            "no early stopping" if plan.patience is None
            else f"early stopping after {plan.patience} epochs without a gain, from step {plan.min_steps}",
        )  # fmt: skip
        if plan.note is not None and world.is_main and self.state.stopped_by is None:
            progress_log.info(plan.note)

    def _budget(self) -> Budget:
        assert self.budget is not None  # set by build
        return self.budget

    def run_epoch(self, bar: Progress, logger: MetricLogger) -> None:
        """Train the next epoch (or the rest of it, after a mid-epoch resume, or until the budget cuts it), then take
        the end-of-epoch decisions."""
        epoch = self.state.epoch + 1
        started = time.perf_counter()
        task, cut = self._train_batches(epoch, bar)
        self._end_epoch(epoch, started, bar, task, logger, cut)

    def _order(self, epoch: int) -> dict[str, Any]:
        """The epoch's shuffled batch order: a function of the seed and the epoch, so that a resume replays it."""
        return {"shuffle": True, "seed": self.spec.train.seed, "epoch": epoch}

    def _train_batches(self, epoch: int, bar: Progress) -> tuple[TaskID, bool]:
        """The epoch's training steps, with a checkpoint every ``train.checkpoint_every`` batches; returns its bar
        and whether the budget cut the epoch short."""
        train_spec, state, optimizer, plan = self.spec.train, self.state, self.optimizer, self.plan
        skip = state.batches_done  # trained before this call: non-zero right after a mid-epoch resume
        if not skip:
            state.epoch_lr, state.sums = optimizer.param_groups[0]["lr"], zero_sums(self.world.device)
        task = bar.add_task(
            f"{self.member} epoch {epoch}/{plan.epochs}".lstrip(), total=plan.steps_per_epoch, completed=skip,
            loss=math.nan, val="", lr=state.epoch_lr,
        )  # fmt: skip
        self.model.train()
        batches = self.objective.batches(self.part, plan.batch_size, **self._order(epoch))
        for index, (inputs, target) in enumerate(itertools.islice(batches, skip, None), start=skip):
            if index == skip and skip:
                # Only now that the pass has begun: batches() resets the carried state when it starts.
                self.objective.restore_carried_state({k: v.to(self.world.device) for k, v in state.carried.items()})
            shard = self.world.shard(inputs, target)
            data_loss, penalty = train_step(
                self.objective, self.trained, self.model, shard, optimizer, self.precision, train_spec.grad_clip
            )
            state.add(shard.rows, data_loss, penalty)
            state.batches_done, state.step = index + 1, state.step + 1
            self.schedule.after_step(state.step)
            if not bar.disable:
                bar.update(task, advance=1, loss=state.train_loss(), lr=optimizer.param_groups[0]["lr"])
            self._report_progress(epoch)
            unfinished = state.batches_done < plan.steps_per_epoch
            if unfinished and self._budget().spent(self.clock, state.step):
                return task, True
            every = train_spec.checkpoint_every
            if every and state.step % every == 0 and unfinished:
                self.save()
        return task, False

    def _report_progress(self, epoch: int) -> None:
        """The progress line, when one is due: epoch, step, training loss, last validation score, time used."""
        lines = self.progress_lines
        if lines is None or not lines.due():
            return
        state, plan = self.state, self.plan
        last = f"{state.history[-1][plan.selection.metric]:.4f}" if state.history else "-"
        lines.emit(
            f"{self.name()}: epoch {epoch}/{plan.epochs} step {state.step}/{plan.max_steps} "
            f"train_loss {state.train_loss():.4f} {plan.selection.metric} {last} "
            f"elapsed {minutes(self.clock.elapsed())} / budget {self._budget().describe()}"
        )

    def _end_epoch(
        self, epoch: int, started: float, bar: Progress, task: TaskID, logger: MetricLogger, cut: bool
    ) -> None:
        """Validate, decide (kept weights, the schedule's step, whether to stop), log the epoch and checkpoint it."""
        seen, loss_sum, penalty_sum = self.world.sum(self.state.sums).tolist()
        val_metrics, batch_stats = self.world.broadcast(self._evaluate(epoch) if self.world.is_main else None)
        val_loss = val_metrics.pop("loss")
        bar.update(task, val=f"  val_loss {val_loss:.4f}")
        if not (math.isfinite(val_loss) and math.isfinite(loss_sum)):
            # Raised before this epoch is checkpointed: a retry resumes from the last sound state.
            raise TrainingError(
                f"pipelines.{self.spec.name}: training diverged in epoch {epoch} (train loss {loss_sum / seen}, "
                f"val loss {val_loss}); lower train.optimizer.lr or set train.grad_clip"
            )
        scores = {"val_loss": val_loss, **{f"val_{name}": value for name, value in val_metrics.items()}}
        selected = scores[self.plan.selection.metric]
        self._keep_if_best(epoch, selected, val_loss)
        self.schedule.after_epoch(selected)
        self.state.stopped_by = self._stop_reason(epoch, cut)
        metrics = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "val_loss": val_loss,
            "penalty": penalty_sum / seen,
            "best_val_loss": self.state.best_val_loss,
            "lr": self.state.epoch_lr,
            "epoch_seconds": time.perf_counter() - started,
            **scores,
            **{f"train_{name}": value for name, value in batch_stats.items()},
        }
        self._record(epoch, metrics, logger)
        self.save()

    def _evaluate(self, epoch: int) -> tuple[dict[str, float], dict[str, float]]:
        """The epoch's validation metrics (``loss`` among them) and facts about its training batches."""
        batch_size = self.plan.batch_size
        with self.precision.autocast():
            val_metrics = self.objective.evaluate(self.model, "val", batch_size, self.world.device)
        return val_metrics, self.objective.batch_stats(self.part, batch_size, **self._order(epoch))

    def _keep_if_best(self, epoch: int, selected: float, val_loss: float) -> None:
        """Keep the weights of an epoch that beat the best by ``train.select`` (more than ``min_delta``), or of every
        epoch when the validation part is too small to decide on; count the epochs without a gain."""
        state = self.state
        gained = self.plan.selection.better(
            selected, val_loss, state.best_score, state.best_val_loss, self.spec.train.early_stopping.min_delta
        )
        state.epochs_without_improvement = 0 if gained else state.epochs_without_improvement + 1
        if gained or self.plan.keep_last:
            state.best_score, state.best_val_loss, state.best_epoch = selected, val_loss, epoch
            state.best_model = cpu_copy(self.model.state_dict())

    def _stop_reason(self, epoch: int, cut: bool) -> str | None:
        """Why the run ends after ``epoch``, or None to go on. Early stopping waits for ``min_steps`` steps."""
        state, plan = self.state, self.plan
        if cut:
            return "budget"
        waited = plan.patience is not None and state.epochs_without_improvement >= plan.patience
        if waited and state.step >= plan.min_steps:
            return "early_stopping"
        if epoch >= plan.epochs:
            return "epochs"
        return "budget" if self._budget().spent(self.clock, state.step) else None

    def _record(self, epoch: int, metrics: dict[str, float], logger: MetricLogger) -> None:
        """Close the epoch in the state, and log its metrics (rank 0 only) and its line."""
        state = self.state
        state.history.append(metrics)
        state.epoch, state.batches_done = epoch, 0
        if self.world.is_main:
            logger.log_metrics({k: float(v) for k, v in metrics.items() if k != "epoch"}, step=epoch)
        selected = self.plan.selection.metric
        selection = "" if selected == "val_loss" else f" {selected}={metrics[selected]:.5f}"  # val_loss is shown
        log.info(
            "epoch %d/%d train_loss=%.5f val_loss=%.5f%s lr=%.3g%s",
            epoch, self.plan.epochs, metrics["train_loss"], metrics["val_loss"], selection, state.epoch_lr,
            f" (stopped by {state.stopped_by})" if state.stopped_by else "",
        )  # fmt: skip

    def save(self) -> None:
        """Every rank sends its own part to rank 0, which writes the one checkpoint."""
        self.state.elapsed = self.clock.elapsed()
        ranks = self.world.gather(self.state.rank_snapshot(self.objective))
        if self.world.is_main:
            checkpoint = self.state.to_checkpoint(
                self.spec, self.model, self.optimizer, self.schedule, self.precision.scaler, ranks
            )
            save_checkpoint(checkpoint, self.checkpoint_dir)


def _finish(loop: EpochLoop, run_dir: Path, resumed_from: tuple[int | None, int | None], started: float) -> FitResult:
    """Restore the kept epoch's weights, say what ended the run, and write the weights and the result where the
    launcher reads them."""
    state, spec, world, plan = loop.state, loop.spec, loop.world, loop.plan
    assert state.best_model is not None and state.stopped_by is not None  # every epoch, cut or not, is decided on
    loop.model.load_state_dict(state.best_model)
    model_path = run_dir / MODEL_FILE
    weights = getattr(loop.objective, "class_weights", None)
    result = FitResult(
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        best_val_loss=state.best_val_loss,
        stopped_early=state.stopped_by == "early_stopping",
        resumed_from_epoch=resumed_from[0],
        resumed_from_batch=resumed_from[1],
        history=state.history,
        model_path=str(model_path),
        checkpoint_path=str(loop.checkpoint_dir / LAST),
        seconds=time.perf_counter() - started,
        device=str(world.device),
        threads=torch.get_num_threads(),
        workers=world.size,
        precision=spec.train.precision,
        deterministic=spec.train.deterministic,
        lstm_kernels=loop.model.lstm_kernels_trained(),
        stopped_by=state.stopped_by,
        batch_size=plan.batch_size,
        steps=state.step,
        train_seconds=state.elapsed,
        select=plan.selection.metric,
        best_score=state.best_score,
        kept="last" if plan.keep_last else "best",
        lr_schedule=plan.lr_schedule,
        class_weights=None if weights is None else [float(w) for w in weights],
    )
    kernels = ", ".join(result.lstm_kernels) or "no training step"
    log.info("%s: the LSTM recurrence ran in %s (train.lstm_kernel: %s)", spec.name, kernels, spec.train.lstm_kernel)
    if world.is_main:
        _say_how_it_ended(loop, result)
    if world.local_rank == 0:  # one copy on each machine, where that machine's launcher reads it
        atomic_torch_save(state.best_model, model_path)
        result.write(run_dir / RESULT_FILE)
    return result


def _say_how_it_ended(loop: EpochLoop, result: FitResult) -> None:
    """One line: what stopped the run and which epoch's weights it keeps; on the console too when the budget did."""
    reasons = {
        "budget": f"its budget (train.budget: {loop._budget().describe()})",
        "early_stopping": f"early stopping ({loop.plan.patience} epochs without a better {result.select})",
        "epochs": f"its last epoch (train.epochs: {loop.spec.train.epochs}, {loop.plan.epochs} epochs)",
    }
    line = (
        f"{loop.name()}: training stopped by {reasons[result.stopped_by]} after {result.epochs_run} epoch(s), "
        f"{result.steps} steps, {minutes(result.train_seconds)}; keeping the {result.kept} epoch, "
        f"{result.best_epoch} ({result.select} {result.best_score:.4f})"
    )
    (progress_log if result.stopped_by == "budget" else log).info(line)


def _progress_bar(enabled: bool) -> Progress:
    """One bar per epoch with its batches, running loss and lr; silent when stderr is not a terminal."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}{task.fields[val]}  lr {task.fields[lr]:.2e}"),
        TimeElapsedColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
    )
