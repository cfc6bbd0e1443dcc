"""The typed pipeline spec: ``pipelines.yaml`` validated once, at the edge.

A file holds optional ``defaults`` that are deep-merged into every entry of
``pipelines`` (mappings merge key by key, lists and scalars replace). Overrides
given as ``key=value`` (``--set``) apply after the merge, before validation, so
their errors carry the same YAML paths. Every problem is collected into one
:class:`~lstmflow.errors.ConfigError` whose lines read
``pipelines.sunspots.model.layers[1].lstm.units: must be > 0, got -4``.

The modules, in the order they build on each other:

- ``base``: ``Strict``, the base of every spec model (unknown keys refused, frozen).
- ``tasks``: every per-task table (data kinds, losses, search and promotion metrics, significance tests).
- one module per section of a pipeline: ``splits`` and ``data`` (``data``), ``model``, ``train`` (``train`` and
  ``evaluate``), ``search``, ``operations`` (``schedule`` and ``promote``).
- ``keys``: dotted keys on plain mappings (``--set``, search spaces, MLflow parameter names).
- ``messages``: pydantic's errors in lstmflow's words, and did-you-mean hints.
- ``pipeline``: ``PipelineSpec``, the sections joined and the rules between them.
- ``loading``: the file, ``defaults`` merged, ``--set`` applied, every problem in one error.
- ``reference``: the README's key tables, generated from the models.

This module is the package's public surface: the names in ``__all__`` are imported as ``from lstmflow.config import
X`` everywhere else, and stay importable from here whichever module defines them.
"""

from __future__ import annotations

from lstmflow.config.base import Strict
from lstmflow.config.clips import AudioFeaturesSpec, AudioSpec, SpeechSpec, VideoSpec
from lstmflow.config.data import (
    DATA_KINDS,
    DATA_SPECS,
    CorpusSpec,
    DataSpec,
    ImagesSpec,
    PairsSpec,
    SequenceTableSpec,
    TextSpec,
    TimeSeriesDataSpec,
    TokenizerSpec,
)
from lstmflow.config.keys import apply_override, deep_merge, dotted_key, flatten, parse_key, set_key
from lstmflow.config.loading import Config, ConfigFile, validate_pipeline
from lstmflow.config.model import (
    SEQUENCE_CLASSIFIER_LAYERS,
    TEXT_CLASSIFIER_LAYERS,
    Activation,
    ActivationLayer,
    AttentionPoolLayer,
    BatchNormLayer,
    Conv1DLayer,
    DenseLayer,
    DropoutLayer,
    EmbeddingLayer,
    GlobalPoolLayer,
    LayerNormLayer,
    LayerSpec,
    LSTMLayer,
    ModelSpec,
    Pool1DLayer,
)
from lstmflow.config.operations import OPERATIONS, PromoteSpec, ScheduleSpec, duration_seconds
from lstmflow.config.pipeline import PipelineSpec
from lstmflow.config.search import SEARCHABLE_SECTIONS, SearchParam, SearchSpec
from lstmflow.config.splits import ClassSplitSpec, CorpusSplitSpec, SplitFilesSpec, SplitSpec
from lstmflow.config.tasks import PROMOTE_METRICS, PROMOTE_TESTS, SEARCH_METRICS, TASK_DATA_KINDS, TASK_LOSSES
from lstmflow.config.train import (
    EarlyStoppingSpec,
    EvaluateSpec,
    GradClipSpec,
    LRScheduleSpec,
    NodesSpec,
    OptimizerSpec,
    TrainSpec,
)

__all__ = [
    "DATA_KINDS",
    "DATA_SPECS",
    "OPERATIONS",
    "PROMOTE_METRICS",
    "PROMOTE_TESTS",
    "SEARCHABLE_SECTIONS",
    "SEARCH_METRICS",
    "SEQUENCE_CLASSIFIER_LAYERS",
    "TASK_DATA_KINDS",
    "TASK_LOSSES",
    "TEXT_CLASSIFIER_LAYERS",
    "Activation",
    "ActivationLayer",
    "AttentionPoolLayer",
    "AudioFeaturesSpec",
    "AudioSpec",
    "BatchNormLayer",
    "ClassSplitSpec",
    "Config",
    "ConfigFile",
    "Conv1DLayer",
    "CorpusSpec",
    "CorpusSplitSpec",
    "DataSpec",
    "DenseLayer",
    "DropoutLayer",
    "EarlyStoppingSpec",
    "EmbeddingLayer",
    "EvaluateSpec",
    "GlobalPoolLayer",
    "GradClipSpec",
    "ImagesSpec",
    "LRScheduleSpec",
    "LSTMLayer",
    "LayerNormLayer",
    "LayerSpec",
    "ModelSpec",
    "NodesSpec",
    "OptimizerSpec",
    "PairsSpec",
    "PipelineSpec",
    "Pool1DLayer",
    "PromoteSpec",
    "ScheduleSpec",
    "SearchParam",
    "SearchSpec",
    "SequenceTableSpec",
    "SpeechSpec",
    "SplitFilesSpec",
    "SplitSpec",
    "Strict",
    "TextSpec",
    "TimeSeriesDataSpec",
    "TokenizerSpec",
    "TrainSpec",
    "VideoSpec",
    "apply_override",
    "deep_merge",
    "dotted_key",
    "duration_seconds",
    "flatten",
    "parse_key",
    "set_key",
    "validate_pipeline",
]
