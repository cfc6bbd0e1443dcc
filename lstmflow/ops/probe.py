"""The probe that runs before any flow: every config and data error found here, as one named message (exit 2),
rather than inside a DVC stage, a Prefect task or a training child.

It reads the pipeline's data as the data stage will (each kind's reader, its split into parts), resolves the
defaults that depend on the data (window, horizon, season), and builds the model on the shapes the data give, so a
last ``dense`` of the wrong size or an ``lstm`` fed a single vector fails here.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from lstmflow.config import PipelineSpec
from lstmflow.errors import ConfigError, DataError
from lstmflow.ops import versioning


def probe(spec: PipelineSpec, root: Path) -> PipelineSpec:
    """Check the data and the model's shapes, and return the spec with its data defaults resolved.

    Data that a DVC stage builds and that are not there yet (the demo data on a fresh clone) are probed by the
    prepare step, after the stage ran; a missing file inside a stage's output that exists is a typo, and refused.
    """
    from lstmflow.data.kinds import resolve
    from lstmflow.training.objectives import scoring_problems

    if spec.task in ("classify", "language_model") and (problems := scoring_problems(spec)):
        raise ConfigError(problems)
    if not spec.data.path.exists() and _still_to_build(spec, root):
        return spec
    if (files := spec.data.split.files) is not None:
        for part, path in (("val", files.val), ("test", files.test)):
            if path is not None and not path.exists():
                raise DataError(f"pipelines.{spec.name}.data.split.files.{part}: no such file or folder: {path}")
    spec = resolve(spec)
    import torch

    with torch.device("meta"):  # shapes checked, nothing allocated: a model of any size costs no memory here
        model_for(spec)
    return spec


def _still_to_build(spec: PipelineSpec, root: Path) -> bool:
    """True when a DVC stage builds the missing data path and has not run yet; otherwise a DataError saying why the
    path is missing (no stage makes it, or the stage's output exists without it)."""
    path, where = spec.data.path, f"pipelines.{spec.name}.data.path"
    stage = versioning.stage_producing(root, path)
    if stage is None:
        raise DataError(f"{where}: no such file or folder: {path}")
    built = next((parent for parent in path.parents if parent.exists()), root)
    if built == root or versioning.stage_producing(root, built) != stage or _code_changed(root, stage):
        return True
    siblings = [entry.name for entry in built.iterdir()]
    close = difflib.get_close_matches(path.name, siblings, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; it holds {', '.join(sorted(siblings)[:8]) or 'nothing'}"
    raise DataError(
        f"{where}: {path} is not in {built}, which DVC stage {stage!r} built already (its output exists and the file "
        f"is not in it){hint}"
    )


def _code_changed(root: Path, stage: str) -> bool:
    """Whether the lstmflow code behind ``stage`` (its ``lstmflow.*`` params) changed since ``dvc.lock`` recorded it:
    DVC runs the stage again then, so its present output (say, demo data of an older lstmflow) is no evidence."""
    from lstmflow.ops.steps import stage_versions

    try:
        recorded = versioning.lock_entry(root, stage).get("params", {}).get("params.yaml", {})
    except DataError:  # never run by DVC: its output was made otherwise, and is what there is
        return False
    return any(recorded.get(f"lstmflow.{key}", value) != value for key, value in stage_versions().items())


def model_for(spec: PipelineSpec) -> tuple[Any, int]:
    """The pipeline's network built on the shapes its (resolved) data give, and its input features per step; every
    shape rule broken in one ConfigError naming the layer."""
    from lstmflow.data.kinds import model_io
    from lstmflow.models.lstm import build_model

    n_features, n_outputs = model_io(spec)
    if spec.task == "translate":
        from lstmflow.models.seq2seq import Seq2Seq

        assert n_outputs is not None  # the target vocabulary, known from the raw pairs
        return Seq2Seq(spec.model, n_features, n_outputs, f"pipelines.{spec.name}.model"), n_features
    per_step = spec.task in ("language_model", "transcribe")
    where, ensemble = f"pipelines.{spec.name}.model", spec.train.ensemble
    model = build_model(
        spec.model, n_features, n_outputs, where, per_step=per_step, ensemble=ensemble,
        generates=spec.task == "language_model",
    )  # fmt: skip
    return model, n_features
