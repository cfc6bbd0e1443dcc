"""Scoring a trained forecaster on the test part, in original units, beside the seasonal-naive baseline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lstmflow.config import PipelineSpec
from lstmflow.data.timeseries import Features, WindowSet, load_features
from lstmflow.errors import DataError
from lstmflow.metrics import forecast_metrics, mase_scale, seasonal_naive
from lstmflow.models.lstm import LSTMNet, build_model
from lstmflow.plots import plot_forecast, plot_loss_curves


def load_trained(spec: PipelineSpec, features: Features, model_path: Path) -> LSTMNet:
    """Rebuild the network from its spec and load the trained weights, on CPU."""
    model = build_model(spec.model, features.n_features, features.horizon * features.n_targets, where=f"pipelines.{spec.name}.model")
    model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    return model.eval()


def predict(model: LSTMNet, windows: WindowSet, features: Features, batch_size: int = 256) -> np.ndarray:
    """Forecasts for every window, in original units: (N, horizon, targets)."""
    outputs = []
    with torch.no_grad():
        for x, _ in windows.batches(batch_size):
            outputs.append(model(x).reshape(len(x), features.horizon, features.n_targets).numpy())  # (B, H, K)
    scaled = np.concatenate(outputs)
    return features.preprocessing.decode(scaled, windows.last_raw())


def evaluate_forecast(spec: PipelineSpec, features_dir: Path, model_path: Path, plot_dir: Path) -> tuple[dict[str, float], list[Path]]:
    """Test metrics (rmse, mae, smape, mase and their naive_* twins) and the forecast and loss-curve plots."""
    features = load_features(features_dir)
    test = features.windows("test")
    if len(test) == 0:
        raise DataError(f"pipelines.{spec.name}.data.split.test: the test part holds no full window; raise split.test or lower horizon")
    model = load_trained(spec, features, model_path)
    forecast = predict(model, test, features)
    actual = test.targets_original()
    naive = seasonal_naive(features.raw, test.origins, features.horizon, features.season)
    train_end = features.meta["split"]["train_end"]
    scale = mase_scale(features.raw[:train_end], features.season)
    metrics = forecast_metrics(actual, forecast, naive, scale)

    plot_dir.mkdir(parents=True, exist_ok=True)
    plots = [
        plot_forecast(
            plot_dir / "forecast.png", features.meta["time"]["values"], actual, forecast, naive,
            title=f"{spec.name}: test forecasts vs actual", target_names=features.targets,
        ),
    ]
    history_file = model_path.parent / "fit_result.json"
    if history_file.exists():
        plots.append(plot_loss_curves(plot_dir / "loss_curves.png", json.loads(history_file.read_text())["history"]))
    return metrics, plots
