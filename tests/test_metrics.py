"""Forecast metrics on small arrays computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lstmflow.metrics import forecast_metrics, mae, mase_scale, rmse, seasonal_naive, smape


def test_point_errors() -> None:
    y, yhat = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 8.0])
    assert mae(y, yhat) == 1.0
    assert rmse(y, yhat) == 2.0
    assert smape(y, yhat) == pytest.approx(100 * (2 * 4 / 12) / 4)


def test_smape_bounds_and_zero_over_zero() -> None:
    assert smape(np.zeros(3), np.zeros(3)) == 0.0
    assert smape(np.array([0.0, 0.0]), np.array([1.0, -2.0])) == 200.0
    assert smape(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0.0


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match=r"same shape, got \(3,\) and \(2,\)"):
        mae(np.zeros(3), np.zeros(2))


@pytest.mark.parametrize(
    ("season", "expected"),
    [
        (1, [11, 11, 11, 11, 11]),
        (2, [10, 11, 10, 11, 10]),
        (3, [9, 10, 11, 9, 10]),
        (12, [0, 1, 2, 3, 4]),
    ],
)
def test_seasonal_naive_indices(season: int, expected: list[int]) -> None:
    history = np.arange(40)[:, None] * np.array([1, 10])  # (T, 2): row r holds r and 10 r
    forecast = seasonal_naive(history, np.array([12, 14]), horizon=5, season=season)
    assert forecast.shape == (2, 5, 2)
    np.testing.assert_array_equal(forecast[0, :, 0], expected)  # origin 12
    np.testing.assert_array_equal(forecast[1, :, 0], np.array(expected) + 2)  # origin 14: two rows later
    np.testing.assert_array_equal(forecast[:, :, 1], 10 * forecast[:, :, 0])


def test_seasonal_naive_refuses_origins_without_a_full_season() -> None:
    with pytest.raises(ValueError, match="origin 2 is too early for season 3"):
        seasonal_naive(np.arange(10.0), np.array([2, 5]), horizon=1, season=3)


def test_mase_scale() -> None:
    train = np.array([1.0, 3.0, 2.0, 5.0])
    assert mase_scale(train, 1) == 2.0
    assert mase_scale(train, 2) == 1.5
    with pytest.raises(ValueError, match="more than season 4"):
        mase_scale(train, 4)


def test_forecast_metrics_beside_the_naive_baseline() -> None:
    y = np.array([[[2.0], [4.0]]])
    metrics = forecast_metrics(y, yhat=np.array([[[3.0], [4.0]]]), naive=np.array([[[1.0], [1.0]]]), scale=2.0)
    assert metrics == pytest.approx(
        {
            "rmse": math.sqrt(0.5), "mae": 0.5, "smape": 100 * (2 / 5) / 2, "mase": 0.25,
            "naive_rmse": math.sqrt(5), "naive_mae": 2.0, "naive_smape": 100 * (2 / 3 + 6 / 5) / 2, "naive_mase": 1.0,
        }
    )
    assert math.isnan(forecast_metrics(y, y, y, scale=0.0)["mase"])
