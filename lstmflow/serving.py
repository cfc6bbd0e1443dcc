"""The served model: an MLflow pyfunc that rebuilds the LSTM from its state dict at load time.

The logged bundle is a folder with ``model.pt`` (state dict), ``spec.json`` (the
resolved pipeline spec) and ``features.json`` (the fitted preprocessing, columns,
window and horizon). Rebuilding from the spec, instead of pickling a module or
exporting a graph, keeps custom layers and preprocessing working in serving.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

BUNDLE_FILES = ("model.pt", "spec.json", "features.json")


class Forecaster:
    """Raw recent rows in, forecast in original units out; no MLflow needed."""

    def __init__(self, bundle_dir: Path) -> None:
        import torch

        from lstmflow.config import PipelineSpec
        from lstmflow.data.timeseries import Preprocessing
        from lstmflow.models.lstm import build_model

        self.spec = PipelineSpec.model_validate(json.loads((bundle_dir / "spec.json").read_text()))
        info = json.loads((bundle_dir / "features.json").read_text())
        self.columns: list[str] = info["columns"]
        self.targets: list[str] = info["targets"]
        self.window: int = info["window"]
        self.horizon: int = info["horizon"]
        self.preprocessing = Preprocessing.from_dict(info["preprocessing"])
        self.model = build_model(self.spec.model, len(self.columns), self.horizon * len(self.targets))
        state = torch.load(bundle_dir / "model.pt", map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval()

    @property
    def context_rows(self) -> int:
        return self.preprocessing.context_rows(self.window)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Forecast the ``horizon`` steps after the last row of ``frame``."""
        import torch

        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise ValueError(f"input lacks column(s) {missing}; expected {self.columns}")
        if len(frame) < self.context_rows:
            raise ValueError(f"input has {len(frame)} rows; this model needs the last {self.context_rows}")
        raw = frame[self.columns].to_numpy(dtype=np.float64)[-self.context_rows :]
        encoded = self.preprocessing.encode(raw)[-self.window :]  # (W, F)
        with torch.no_grad():
            out = self.model(torch.from_numpy(np.ascontiguousarray(encoded, dtype=np.float32))[None])  # (1, H*K)
        pred = out.numpy().reshape(1, self.horizon, len(self.targets))  # (1, H, K)
        last_raw = raw[-1:, : len(self.targets)]  # (1, K)
        forecast = self.preprocessing.decode(pred, last_raw)[0]  # (H, K)
        result = pd.DataFrame(forecast, columns=self.targets)
        result.insert(0, "step", np.arange(1, self.horizon + 1))
        return result


class LstmflowForecaster(mlflow.pyfunc.PythonModel):
    """MLflow's wrapper around :class:`Forecaster`."""

    def load_context(self, context: Any) -> None:
        self.forecaster = Forecaster(Path(context.artifacts["bundle"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.forecaster.predict(pd.DataFrame(model_input))
