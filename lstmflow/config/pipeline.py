"""One pipeline's spec: its sections together, the rules between them (task and data kind, losses, search space,
promotion metric) and the default model per kind of data."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from lstmflow.config.base import Strict
from lstmflow.config.data import DataSpec
from lstmflow.config.keys import dotted_key, flatten, parse_key, set_key
from lstmflow.config.messages import describe_error, did_you_mean, location_text
from lstmflow.config.model import (
    SEQUENCE_CLASSIFIER_LAYERS,
    TEXT_CLASSIFIER_LAYERS,
    TRANSCRIBER_LAYERS,
    TRANSLATOR_DECODER_LAYERS,
    TRANSLATOR_ENCODER_LAYERS,
    VIDEO_CLASSIFIER_LAYERS,
    ModelSpec,
)
from lstmflow.config.operations import OPERATIONS, PromoteSpec, ScheduleSpec
from lstmflow.config.search import SEARCHABLE_SECTIONS, SearchParam, SearchSpec
from lstmflow.config.tasks import (
    AUTO_BLENDED_KINDS,
    BLENDED_KINDS,
    PROMOTE_METRICS,
    PROMOTE_TESTS,
    REFIT_TASKS,
    SEARCH_METRICS,
    TASK_DATA_KINDS,
    TASK_LOSSES,
    VAL_WEIGHTED_KINDS,
)
from lstmflow.config.train import EvaluateSpec, TrainSpec
from lstmflow.config.translator import translator_problems
from lstmflow.errors import ConfigError


class PipelineSpec(Strict):
    """One named pipeline: data, model, training and evaluation."""

    name: str = Field(
        description=(
            "The pipeline's name (its key under `pipelines`); also the MLflow experiment and registered model name."
        )
    )
    task: Literal["forecast", "classify", "language_model", "translate", "transcribe"] = Field(
        "forecast",
        description=(
            "What the model learns: `forecast` (data kind `timeseries`), `classify` (kinds `sequences`, `images`, "
            "`text`, `audio`, `video`), `language_model` (kind `corpus`: the next token at every step), `translate` "
            "(kind `pairs`: an encoder–decoder writes the target text of each source text) or `transcribe` (kind "
            "`speech`: the characters spoken in each clip, by CTC)."
        ),
    )
    description: str = Field("", description="Free text shown by `lstmflow list`.")
    data: DataSpec = Field(description="Where the data are and how they become model inputs.")
    model: ModelSpec = Field(
        default_factory=ModelSpec,
        description=(
            "The network. Default: for a forecast one `lstm` of 64 units and a `dense` output layer, with a linear "
            "autoregression of the window beside the lstm (`branches`: `conv1d` of 16 filters whose `kernel_size` is "
            "`data.window`, `padding: valid`, then `global_average_pool`) when the forecast is one step ahead, every "
            "target is differenced, the training part holds at least twice as many windows as the window has steps, "
            "and there is no `search`; for classifying "
            "`sequences`, `images` or `audio` LSTM-FCN (`branches`: an `lstm` of 64 and dropout 0.8 beside `conv1d` "
            "64-8, 128-5, 64-3 each with `batchnorm` and relu, then `global_average_pool`; a softmax `dense`); for "
            "`text` an `embedding` of 64 with dropout 0.25, a `conv1d` of 128 filters of 3 tokens with relu, "
            "`global_max_pool`, dropout 0.5 and a softmax `dense`; for `video` a `time_distributed` network on every "
            "frame (three blocks of `conv2d` 3x3 with 16, 32, 64 filters, `batchnorm`, relu and `max_pool2d`, then "
            "`flatten` and a `dense` of 128 with relu), an `lstm` of 64, dropout 0.25 and a softmax `dense`; for a "
            "language model an `embedding` of 64 and a "
            "stateful `lstm` of 256 units that returns sequences; for translate an encoder (`layers`: an `embedding` "
            "of 64, an `lstm` of 256) and a `decoder` (an `embedding` of 64, an `lstm` of 256, luong `attention`, a "
            "softmax `dense`); for transcribe two bidirectional `lstm` layers of 128 that return sequences and a "
            "softmax `dense` at every frame (the characters and the CTC blank)."
        ),
    )
    train: TrainSpec = Field(default_factory=TrainSpec, description="Training settings.")
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec, description="Evaluation settings.")
    search: SearchSpec | None = Field(
        None,
        description=(
            "Hyperparameter search with Optuna: `lstmflow run` (and `lstmflow search`) runs its trials, then evaluates "
            "and registers the best trial's model. Null: train once."
        ),
    )
    schedule: ScheduleSpec | None = Field(
        None,
        description=(
            "Retrain on a schedule: `lstmflow deploy` makes it a Prefect deployment of this pipeline, run by a worker "
            "of `pool`. Null: no schedule (runs start by hand, from the CLI or the Prefect UI)."
        ),
    )
    promote: PromoteSpec = Field(
        default_factory=PromoteSpec,
        description=(
            "When a newly registered model version becomes the champion (the model alias that `lstmflow serve NAME` "
            "and `predict` use): compared with the current champion on the same test data."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _default_model_for_the_data(cls, value: Any) -> Any:
        """Without a `model`: a language model gets a stateful sequence lstm, a text classifier a convolution with
        max pooling over time, a video classifier a per-frame convolutional network before an lstm, and other
        classifiers LSTM-FCN (see lstmflow.config.model)."""
        if not isinstance(value, dict) or "model" in value or not isinstance(value.get("data"), dict):
            return value
        kind, task = value["data"].get("kind"), value.get("task")
        layers: list[dict[str, Any]]
        if task == "translate":
            return {**value, "model": {"layers": TRANSLATOR_ENCODER_LAYERS, "decoder": TRANSLATOR_DECODER_LAYERS}}
        if task == "transcribe":
            layers = TRANSCRIBER_LAYERS
        elif task == "language_model":
            layers = [
                {"embedding": {"dim": 64}},
                {"lstm": {"units": 256, "return_sequences": True, "stateful": True}},
                {"dense": {"activation": "softmax"}},
            ]
        elif kind == "text":
            layers = TEXT_CLASSIFIER_LAYERS
        elif task == "classify" and kind in ("sequences", "images", "audio"):
            layers = SEQUENCE_CLASSIFIER_LAYERS
        elif task == "classify" and kind == "video":
            layers = VIDEO_CLASSIFIER_LAYERS
        else:
            return value
        return {**value, "model": {"layers": layers}}

    @model_validator(mode="after")
    def _task_fits_the_data(self) -> PipelineSpec:
        wanted = TASK_DATA_KINDS[self.task]
        if self.data.kind not in wanted:
            raise ValueError(
                f"task {self.task!r} needs data.kind {', '.join(map(repr, wanted))}, got {self.data.kind!r}"
            )
        lstms = {i: layer.lstm for i, layer in enumerate(self.model.layers) if layer.lstm is not None}
        backwards = [i for i, lstm in lstms.items() if lstm.bidirectional]
        if backwards and self.task == "language_model":
            raise ValueError(
                f"model.layers[{backwards[0]}].lstm.bidirectional: a language model predicts each next token from "
                "the ones before it; a backward reading would see the very token it must predict"
            )
        stateful = [i for i, lstm in lstms.items() if lstm.stateful]
        if stateful and self.task != "language_model":
            raise ValueError(
                f"model.layers[{stateful[0]}].lstm.stateful: carries the state across consecutive batches of one text, "
                f"which only task 'language_model' has; task {self.task!r} has independent samples"
            )
        self._decoder_fits()
        self._refit_fits()
        if self.train.blend_baseline is True and self.data.kind not in BLENDED_KINDS:
            raise ValueError(
                "train.blend_baseline: true is for forecasts, language models and for classifying sequences, text, "
                f"audio or video (data kind {', '.join(BLENDED_KINDS)}); this is task {self.task!r} on "
                f"{self.data.kind!r} data (set it to auto or false)"
            )
        losses = TASK_LOSSES[self.task]
        if self.train.loss is not None and self.train.loss not in losses:
            raise ValueError(
                f"train.loss for task {self.task!r} must be one of {', '.join(map(repr, losses))}, "
                f"got {self.train.loss!r}"
            )
        return self

    def _decoder_fits(self) -> None:
        """A decoder (and its attention) belongs to a translator, and a translator has one."""
        decoder = self.model.decoder
        if self.task == "translate" and decoder is None:
            raise ValueError(
                "model.decoder: task translate needs a decoder (e.g. `[{embedding: {dim: 64}}, {lstm: {units: 256, "
                "return_sequences: true}}, {attention: {}}, {dense: {activation: softmax}}]`); leave `model` out for "
                "the default translator"
            )
        if self.task != "translate" and decoder is not None:
            raise ValueError(f"model.decoder: only task 'translate' has a decoder; task {self.task!r} has none")
        if self.task == "translate" and (problems := translator_problems(self.model, "model")):
            raise ValueError("; ".join(problems))
        if self.task in ("translate", "transcribe") and self.train.ensemble > 1:
            raise ValueError(f"train.ensemble: a {self.task} model is one network, got {self.train.ensemble}")
        attention = [i for i, layer in enumerate(self.model.layers) if layer.attention is not None]
        if attention:
            raise ValueError(
                f"model.layers[{attention[0]}].attention: encoder–decoder attention belongs in model.decoder "
                "(task translate); to pool a sequence by attention use attention_pool"
            )

    def _refit_fits(self) -> None:
        """``train.refit: true`` needs training samples that validation data can join, one model, and a schedule
        that does not read the validation scores."""
        train = self.train
        if train.refit is not True:
            return
        if self.task not in REFIT_TASKS:
            raise ValueError(
                f"train.refit: true is for tasks {', '.join(map(repr, REFIT_TASKS))}; a {self.task!r} run trains on "
                "its corpus until the budget ends it (set refit to auto or false)"
            )
        if train.ensemble > 1:
            raise ValueError(f"train.refit: true is not with train.ensemble ({train.ensemble}); give one of them")
        if train.lr_schedule.name == "plateau":
            raise ValueError(
                "train.refit: true with train.lr_schedule plateau: a refit trains on the validation part, so no "
                "plateau could be read from it; use auto, cosine, step or onecycle"
            )

    @field_validator("search")
    @classmethod
    def _search_fits_the_pipeline(cls, search: SearchSpec | None, info: ValidationInfo) -> SearchSpec | None:
        """The metric is one the task logs, and every space key is a key of this pipeline that takes its values.

        Each key is checked by setting each of its probe values (both ends of a range, every choice) on the
        pipeline without its search and validating that, so a trial can never fail on its spec.
        """
        if search is None or not {"name", "task", "data", "model", "train", "evaluate"} <= info.data.keys():
            return search  # an earlier section is invalid and reported; the space cannot be checked against it
        metrics = SEARCH_METRICS[info.data["task"]]
        if search.metric not in metrics:
            raise ValueError(
                f"metric for task {info.data['task']!r} must be one of {', '.join(map(repr, metrics))}, "
                f"got {search.metric!r}"
            )
        base = {
            key: value.model_dump(mode="json") if isinstance(value, BaseModel) else value
            for key, value in info.data.items()
        }
        problems = [problem for key, param in search.space.items() if (problem := _space_key_problem(key, param, base))]
        if problems:
            raise ValueError("; ".join(problems))
        return search

    @field_validator("promote")
    @classmethod
    def _promote_fits_task(cls, promote: PromoteSpec, info: ValidationInfo) -> PromoteSpec:
        task = info.data.get("task")
        if task not in PROMOTE_METRICS:
            return promote
        metrics = PROMOTE_METRICS[task]
        if promote.metric is not None and promote.metric not in metrics:
            raise ValueError(
                f"metric for task {task!r} must be one of {', '.join(map(repr, metrics))}, got {promote.metric!r}"
            )
        fitting = PROMOTE_TESTS[task]
        if promote.test not in ("auto", "none", fitting):
            raise ValueError(f"test {promote.test!r} does not fit task {task!r}: use {fitting!r}, 'auto' or 'none'")
        return promote

    @property
    def loss(self) -> str:
        """The training loss, with the task's default filled in."""
        return self.train.loss or TASK_LOSSES[self.task][0]

    @property
    def blends_baseline(self) -> bool:
        """Whether the model is served blended with the run's strong baseline (``train.blend_baseline``, its
        ``auto`` resolved by data kind); the baseline must still have a partner to blend with."""
        blend = self.train.blend_baseline
        return blend is True or (blend == "auto" and self.data.kind in AUTO_BLENDED_KINDS)

    @property
    def weighs_blend_on_val(self) -> bool:
        """Whether the blend's weight is chosen on the validation part (texts, video), which then stays apart
        from training however small; a sequence or audio classifier's blend takes equal weights."""
        return self.blends_baseline and self.data.kind in VAL_WEIGHTED_KINDS

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", value):
            raise ValueError(f"must start with a letter and hold only letters, digits, '_' and '-', got {value!r}")
        return value

    def spec_hash(self) -> str:
        """A stable hash of what the spec trains (not its schedule or promotion rule): a cache key ingredient."""
        return hashlib.sha256(self.model_dump_json(exclude=OPERATIONS).encode()).hexdigest()[:16]

    def flat_params(self) -> dict[str, str]:
        """The resolved spec as dotted keys for MLflow, which allows no brackets: ``model.layers.0.lstm.units``."""
        # unset keys too: every run logs the same keys
        flat = flatten(self.model_dump(mode="json", exclude={"search", *OPERATIONS}))
        return {dotted_key(key): value for key, value in flat.items()}


def _space_key_problem(key: str, param: SearchParam, base: dict[str, Any]) -> str | None:
    """Why ``key`` cannot be searched with ``param`` on ``base`` (the pipeline dumped without `search`), or None."""
    section = key.split(".")[0].split("[")[0]
    if section not in SEARCHABLE_SECTIONS:
        why = {
            "data": "the data are prepared once per search (give each data variant its own pipeline)",
            "search": "it configures the search itself",
        }.get(section, "only model.* and train.* keys change what a trial trains")
        return f"space key {key!r}: cannot be searched: {why}"
    try:
        parts = parse_key(key)
    except ConfigError as exc:
        return f"space key {key!r}: {exc.problems[0]}"
    node: Any = base
    for part in parts:
        if isinstance(part, int) and isinstance(node, list):
            found = part < len(node)
        else:
            found = isinstance(node, dict) and part in node
        if not found:
            return f"space key {key!r}: no such key in the pipeline{did_you_mean(key, flatten(base))}"
        node = node[part]
    for value in param.probe_values():
        try:
            PipelineSpec.model_validate(set_key(base, key, value, f"search.space.{key}"))
        except ConfigError as exc:
            return f"space key {key!r}: {exc.problems[0]}"
        except ValidationError as exc:
            error = exc.errors()[0]
            where = location_text(error["loc"])
            at = f" at {where}" if where else ""  # a rule between sections names its keys in the message itself
            return f"space key {key!r}: the value {value!r} is refused{at}: {describe_error(error)}"
    return None
