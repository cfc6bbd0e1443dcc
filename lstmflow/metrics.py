"""Forecast scores in original units, always beside the seasonal-naive baseline they must beat.

Pure numpy, so evaluation, tests and the served model share one definition. MASE divides by the in-sample
MAE of the seasonal-naive forecast on the training part (Hyndman & Koehler, 2006), which makes scores
comparable across series of different scales; with several targets one pooled scale is used.
"""

from __future__ import annotations

import numpy as np


def _pair(y: np.ndarray, yhat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, yhat = np.asarray(y, dtype=np.float64), np.asarray(yhat, dtype=np.float64)
    if y.shape != yhat.shape:
        raise ValueError(f"truth and forecast must have the same shape, got {y.shape} and {yhat.shape}")
    if y.size == 0:
        raise ValueError("cannot score an empty forecast")
    return y, yhat


def rmse(y: np.ndarray, yhat: np.ndarray) -> float:
    y, yhat = _pair(y, yhat)
    return float(np.sqrt(np.mean((y - yhat) ** 2)))


def mae(y: np.ndarray, yhat: np.ndarray) -> float:
    y, yhat = _pair(y, yhat)
    return float(np.mean(np.abs(y - yhat)))


def smape(y: np.ndarray, yhat: np.ndarray) -> float:
    """Symmetric MAPE in percent (0 to 200); a point where truth and forecast are both 0 counts as 0 error."""
    y, yhat = _pair(y, yhat)
    denominator = np.abs(y) + np.abs(yhat)
    ratio = np.divide(2.0 * np.abs(y - yhat), denominator, out=np.zeros_like(y), where=denominator > 0)
    return float(100.0 * np.mean(ratio))


def seasonal_naive(history: np.ndarray, origins: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Repeat the last observed season before each origin.

    Step j from origin t0 forecasts ``history[t0 + j - season * (j // season + 1)]``, always a row before t0,
    so the baseline has no look-ahead. ``history`` is (T, k) (or (T,)); the result is (N, horizon, k)
    (or (N, horizon)).
    """
    if season < 1 or horizon < 1:
        raise ValueError(f"season and horizon must be >= 1, got season {season} and horizon {horizon}")
    origins = np.asarray(origins, dtype=np.intp)
    steps = np.arange(horizon)
    lags = season * (steps // season + 1)
    index = origins[:, None] + steps[None, :] - lags[None, :]  # (N, horizon)
    if index.size and index.min() < 0:
        raise ValueError(f"origin {origins.min()} is too early for season {season}: it needs {season} earlier rows")
    return np.asarray(history)[index]


def mase_scale(train: np.ndarray, season: int) -> float:
    """In-sample MAE of the seasonal-naive forecast at lag ``season`` on the training values (all columns pooled)."""
    train = np.asarray(train, dtype=np.float64)
    if len(train) <= season:
        raise ValueError(f"the MASE scale needs more than season {season} training rows, got {len(train)}")
    return float(np.mean(np.abs(train[season:] - train[:-season])))


def forecast_metrics(y: np.ndarray, yhat: np.ndarray, naive: np.ndarray, scale: float) -> dict[str, float]:
    """RMSE, MAE, sMAPE and MASE of the model and of the naive forecast; MASE is NaN when the scale is 0."""
    metrics: dict[str, float] = {}
    for prefix, forecast in (("", yhat), ("naive_", naive)):
        error = mae(y, forecast)
        metrics[f"{prefix}rmse"] = rmse(y, forecast)
        metrics[f"{prefix}mae"] = error
        metrics[f"{prefix}smape"] = smape(y, forecast)
        metrics[f"{prefix}mase"] = error / scale if scale > 0 else float("nan")
    return metrics
