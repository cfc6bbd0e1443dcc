"""The bundle a served model is rebuilt from, and the network read back from it.

The logged bundle is a folder with ``model.pt`` (state dict), ``spec.json`` (the resolved pipeline spec) and
``features.json`` (the fitted preprocessing and what the input looks like), plus the feature files the model needs
at serving time (a fitted tokenizer). Rebuilding from the spec, instead of pickling a module or exporting a graph,
keeps custom layers and preprocessing working in serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BUNDLE_FILES = ("model.pt", "spec.json", "features.json")
#: Files of a features folder that the served model needs too (the fitted tokenizers).
BUNDLED_FEATURE_FILES = ("tokenizer.json", "source_tokenizer.json", "target_tokenizer.json")


def load_network(
    bundle_dir: Path, spec: Any, n_features: int, n_outputs: int, per_step: bool = False, generates: bool = True
) -> Any:
    """The LSTM built from ``spec`` with the bundle's trained weights, on CPU and in eval mode."""
    import torch

    from lstmflow.models.lstm import build_model

    where, ensemble = f"pipelines.{spec.name}.model", spec.train.ensemble
    model = build_model(
        spec.model, n_features, n_outputs, where, per_step=per_step, ensemble=ensemble, generates=generates
    )
    model.load_state_dict(torch.load(bundle_dir / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()
