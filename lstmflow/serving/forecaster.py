"""The served forecaster: recent raw rows of a series in, the next ``horizon`` steps in original units out.

It reads a request as the data stage read the training series (the bundle's fitted preprocessing), so a caller
sends raw values, never scaled ones. A forecaster blended with its run's AutoETS (``train.blend_baseline``) runs ETS
over every row of the request (the network reads the last ones): sent from the series' start, the rows give the
forecast the run scored. No MLflow needed: :mod:`lstmflow.tracking.serving` wraps it as a pyfunc.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lstmflow.models.ets import load_ets_partner
from lstmflow.serving.bundle import load_network
from lstmflow.serving.request_checks import BadRequest, decoded, numbers, require_columns


class Forecaster:
    """Raw recent rows in, forecast in original units out; no MLflow needed."""

    def __init__(self, bundle_dir: Path, spec: Any, info: dict[str, Any]) -> None:
        from lstmflow.data.timeseries import Preprocessing

        self.spec = spec
        self.columns: list[str] = info["columns"]
        self.targets: list[str] = info["targets"]
        self.window: int = info["window"]
        self.horizon: int = info["horizon"]
        self.preprocessing = Preprocessing.from_dict(info["preprocessing"])
        self.model = load_network(bundle_dir, spec, len(self.columns), self.horizon * len(self.targets))
        #: The ETS the network's forecasts are averaged with (``train.blend_baseline``), or None: the network alone.
        self.ets = load_ets_partner(bundle_dir)

    @staticmethod
    def bundle_info(features_dir: Path) -> dict[str, Any]:
        from lstmflow.data.timeseries import load_features

        features = load_features(features_dir)
        return {
            "columns": features.columns,
            "targets": features.targets,
            "window": features.window,
            "horizon": features.horizon,
            "preprocessing": features.preprocessing.to_dict(),
            "train_end": features.meta["split"]["train_end"],
        }

    def example(self, info: dict[str, Any]) -> pd.DataFrame:
        """The last rows of the training part: a realistic request."""
        from lstmflow.data.timeseries import read_series

        end = info["train_end"]
        return read_series(self.spec.data).iloc[max(0, end - self.request_rows) : end].reset_index(drop=True)

    @property
    def context_rows(self) -> int:
        """Rows the network reads before a forecast's first step."""
        return self.preprocessing.context_rows(self.window)

    @property
    def request_rows(self) -> int:
        """Rows a request must hold: the network's, or more for a blend's ETS to take its initial states from."""
        return max(self.context_rows, self.ets.min_rows if self.ets is not None else 0)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Forecast the ``horizon`` steps after the last row of ``frame``."""
        import torch

        require_columns(frame, self.columns)
        if len(frame) < self.request_rows:
            averaged = " (averaged with AutoETS, which reads every row: send the series from its start)"
            raise BadRequest(
                f"the request has {len(frame)} rows; this model needs the last {self.request_rows}"
                + (averaged if self.ets is not None else "")
            )
        raw = numbers(frame.iloc[-self.context_rows :], self.columns)  # (R, F): finite numbers, else named
        with np.errstate(all="ignore"):  # what overflows or leaves a transform's domain is refused just below
            encoded = self.preprocessing.encode(raw)[-self.window :]  # (W, F)
            if not np.isfinite(encoded).all() or np.abs(encoded).max(initial=0.0) > np.finfo(np.float32).max:
                raise BadRequest(
                    f"the request's last {self.context_rows} rows hold values this model's scaling and transform "
                    f"{list(self.preprocessing.transforms)} cannot take (too large, or not positive for a log)"
                )
            with torch.no_grad():
                out = self.model(torch.from_numpy(np.ascontiguousarray(encoded, dtype=np.float32))[None])  # (1, H*K)
            pred = out.numpy().reshape(1, self.horizon, len(self.targets))  # (1, H, K)
            history = raw[None, -self.preprocessing.anchor_rows :, : len(self.targets)]  # (1, L, K): undoes differences
            forecast = self.preprocessing.decode(pred, history)[0]  # (H, K)
        if self.ets is not None:
            series = numbers(frame, self.targets)  # every row: ETS's state follows the series from its start
            forecast = self.ets.blend(forecast, self._ets_forecasts(series, np.array([len(series)]))[0])
        if not np.isfinite(forecast).all():
            raise BadRequest("the forecast is not finite for these rows: their values are too large for this model")
        result = pd.DataFrame(forecast, columns=self.targets)
        result.insert(0, "step", np.arange(1, self.horizon + 1))
        return result

    def forecast_at(self, frame: pd.DataFrame, origins: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Forecasts (N, horizon, targets) in original units from many points of one series, in batches.

        ``frame`` is the whole series in time order (this model's columns among its columns) and ``origins[i]`` the
        row of forecast ``i``'s first step. Each forecast reads only the rows before its origin, as :meth:`predict`
        of those rows would; the series is encoded once. For scoring on the same test windows as another model
        whose window, scaler or transform differ.
        """
        import torch
        from numpy.lib.stride_tricks import sliding_window_view

        require_columns(frame, self.columns)
        origins = np.asarray(origins, dtype=np.intp)
        if origins.size == 0 or origins.min() < self.context_rows or origins.max() > len(frame):
            shown = f"{origins.min()}..{origins.max()}" if origins.size else "none"
            raise BadRequest(
                f"forecast origins must lie in {self.context_rows}..{len(frame)} (this model reads the "
                f"{self.context_rows} rows before each, of {len(frame)}); got {shown}"
            )
        first = int(origins.min()) - self.context_rows
        raw = decoded("rows", lambda: frame[self.columns].to_numpy(dtype=np.float64)[first : int(origins.max())])
        with np.errstate(invalid="ignore", divide="ignore"):  # a log of values <= 0 is reported just below
            encoded = self.preprocessing.encode(raw)  # (R - lost, F): row j is raw row j + lost
        if not np.isfinite(encoded).all():
            raise BadRequest(
                f"rows {first}..{int(origins.max()) - 1} hold missing or infinite values, or values this model's "
                f"transform {list(self.preprocessing.transforms)} cannot take"
            )
        lost = self.context_rows - self.window
        starts = origins - first - lost - self.window  # each window's first row in `encoded`
        windows = sliding_window_view(encoded, (self.window, encoded.shape[1]))[:, 0]  # (R' - W + 1, W, F) view
        k = len(self.targets)
        outputs = []
        with torch.no_grad():
            for begin in range(0, len(starts), batch_size):
                x = torch.from_numpy(
                    np.ascontiguousarray(windows[starts[begin : begin + batch_size]], dtype=np.float32)
                )
                outputs.append(self.model(x).numpy().reshape(len(x), self.horizon, k))  # (B, H*K) → (B, H, K)
        before = np.arange(-self.preprocessing.anchor_rows, 0)
        history = raw[(origins - first)[:, None] + before, :k]  # (N, L, K): the rows before each origin
        forecasts = self.preprocessing.decode(np.concatenate(outputs), history)
        if self.ets is None:
            return forecasts
        series = decoded("rows", lambda: frame[self.targets].to_numpy(dtype=np.float64)[: int(origins.max())])
        return self.ets.blend(forecasts, self._ets_forecasts(series, origins))

    def _ets_forecasts(self, series: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """(N, horizon, targets) forecasts of the blend's ETS from ``origins`` of ``series``; a BadRequest where its
        forms cannot take the values (a multiplicative form and a value that is not positive)."""
        assert self.ets is not None
        try:
            with np.errstate(all="ignore"):
                return self.ets.forecasts(series, origins, self.horizon)
        except ValueError as error:
            raise BadRequest(f"this model's ETS {self.ets.form_names} cannot forecast these rows: {error}") from None
