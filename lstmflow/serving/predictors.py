"""Which predictor a bundle holds: writing the bundle at registration and rebuilding its predictor at load time.

A forecaster (:mod:`~lstmflow.serving.forecaster`) takes recent raw rows and returns the next ``horizon`` steps; a
classifier (:mod:`~lstmflow.serving.classifier`) takes raw sequences or images and returns a label and one
probability per class for each; a language model (:mod:`~lstmflow.serving.generator`) takes prompts and returns the
text it writes after each; a translator (:mod:`~lstmflow.serving.translator`) takes texts and returns their
translations; a transcriber (:mod:`~lstmflow.serving.transcriber`) takes audio clips and returns what was said.
The bundle's files are described in :mod:`lstmflow.serving.bundle`, and a request none of them can answer raises
:class:`BadRequest`.

Nothing here imports MLflow: :mod:`lstmflow.tracking.serving` wraps a predictor as MLflow's pyfunc. The gate, the
tracking wrapper and the pipeline steps import the predictors and the bundle's names from this module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from lstmflow.models.blend import PARTNER_FILE
from lstmflow.models.ets import ETS_PARTNER_FILE
from lstmflow.models.ngram import NGRAM_PARTNER_FILE
from lstmflow.serving.bundle import BUNDLE_FILES, BUNDLED_FEATURE_FILES
from lstmflow.serving.classifier import Classifier, Requests
from lstmflow.serving.files import ROOTS_KEY, recorded_roots
from lstmflow.serving.forecaster import Forecaster
from lstmflow.serving.generator import Generator
from lstmflow.serving.request_checks import BadRequest
from lstmflow.serving.transcriber import Transcriber
from lstmflow.serving.translator import Translator

__all__ = [
    "BUNDLE_FILES",
    "PREDICTORS",
    "BadRequest",
    "Classifier",
    "Forecaster",
    "Generator",
    "Requests",
    "Transcriber",
    "Translator",
    "load_predictor",
    "write_bundle",
]

#: The data kinds whose requests name files.
FILE_KINDS = ("audio", "images", "speech", "video")

Predictor = Forecaster | Classifier | Generator | Translator | Transcriber

PREDICTORS: dict[str, type[Predictor]] = {
    "forecast": Forecaster,
    "classify": Classifier,
    "language_model": Generator,
    "translate": Translator,
    "transcribe": Transcriber,
}


def write_bundle(
    spec_json: dict[str, Any], features_dir: Path, model_path: Path, bundle_dir: Path
) -> tuple[Any, pd.DataFrame]:
    """Write the bundle the pyfunc loads; returns the predictor it makes and an example request."""
    from lstmflow.config import PipelineSpec

    spec = PipelineSpec.model_validate(spec_json)
    info = PREDICTORS[spec.task].bundle_info(features_dir)
    if spec.data.kind in FILE_KINDS:  # where a request's paths may point when served: the data's own folders
        info[ROOTS_KEY] = recorded_roots(spec.data)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path, bundle_dir / "model.pt")
    for partner in (PARTNER_FILE, ETS_PARTNER_FILE, NGRAM_PARTNER_FILE):  # a model blended with its baseline
        (bundle_dir / partner).unlink(missing_ok=True)
        if (model_path.parent / partner).exists():
            shutil.copyfile(model_path.parent / partner, bundle_dir / partner)
    for extra in BUNDLED_FEATURE_FILES:
        if (features_dir / extra).exists():
            shutil.copyfile(features_dir / extra, bundle_dir / extra)
    (bundle_dir / "spec.json").write_text(json.dumps(spec_json, indent=2))
    (bundle_dir / "features.json").write_text(json.dumps(info, indent=2))
    predictor = load_predictor(bundle_dir)
    return predictor, predictor.example(info)


def load_predictor(bundle_dir: Path) -> Predictor:
    """Rebuild the forecaster, classifier, generator, translator or transcriber that a bundle holds."""
    from lstmflow.config import PipelineSpec

    spec = PipelineSpec.model_validate(json.loads((bundle_dir / "spec.json").read_text()))
    info = json.loads((bundle_dir / "features.json").read_text())
    return PREDICTORS[spec.task](bundle_dir, spec, info)
