"""Forecast and classification metrics on small arrays computed by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from lstmflow.evaluation.metrics import (
    classification_metrics,
    confusion_matrix,
    forecast_metrics,
    log_loss,
    mae,
    majority_baseline,
    mase_scale,
    metric_names,
    rmse,
    seasonal_naive,
    smape,
)


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
            "mse": 0.5,
            "rmse": math.sqrt(0.5),
            "mae": 0.5,
            "smape": 100 * (2 / 5) / 2,
            "mase": 0.25,
            "naive_mse": 5.0,
            "naive_rmse": math.sqrt(5),
            "naive_mae": 2.0,
            "naive_smape": 100 * (2 / 3 + 6 / 5) / 2,
            "naive_mase": 1.0,
        }
    )
    assert math.isnan(forecast_metrics(y, y, y, scale=0.0)["mase"])


def test_forecast_metrics_of_the_strong_baseline_share_the_model_names() -> None:
    y = np.array([[[2.0], [4.0]]])
    metrics = forecast_metrics(y, y + 1.0, y, scale=2.0, baseline=np.array([[[2.0], [1.0]]]))
    assert metrics["baseline_mse"] == pytest.approx(4.5)
    assert metrics["baseline_rmse"] == pytest.approx(math.sqrt(4.5))
    assert metrics["baseline_mae"] == pytest.approx(1.5)
    assert metrics["baseline_mase"] == pytest.approx(0.75)
    assert {key.removeprefix("baseline_") for key in metrics if key.startswith("baseline_")} == {
        key for key in metrics if "_" not in key
    }


# ------------------------------------------------------------------------------------------------ classification


def test_confusion_matrix_rows_are_truth_columns_predictions() -> None:
    matrix = confusion_matrix(np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2]), n_classes=4)
    np.testing.assert_array_equal(matrix, [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    assert matrix.dtype == np.int64


def test_confusion_matrix_refuses_bad_labels() -> None:
    with pytest.raises(ValueError, match=r"prediction holds class index 3, outside 0\.\.2"):
        confusion_matrix(np.array([0, 1]), np.array([0, 3]), n_classes=3)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.array([0, 1]), np.array([0]), n_classes=3)
    with pytest.raises(ValueError, match="integer class indices"):
        confusion_matrix(np.array([0.0, 1.0]), np.array([0, 1]), n_classes=3)
    with pytest.raises(ValueError, match="empty"):
        confusion_matrix(np.array([], dtype=int), np.array([], dtype=int), n_classes=3)


def test_classification_metrics_by_hand() -> None:
    # truth 0 0 0 1 1 2, predicted 0 0 1 1 2 2: TP 2/1/1, predicted 2/2/2, actual 3/2/1
    metrics = classification_metrics(np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2]), ["cat", "dog", "bird"])
    assert metrics == pytest.approx(
        {
            "accuracy": 4 / 6,
            "macro_f1": (4 / 5 + 2 / 4 + 2 / 3) / 3,  # F1 = 2TP / (predicted + actual)
            "precision_cat": 1.0,
            "recall_cat": 2 / 3,
            "precision_dog": 0.5,
            "recall_dog": 0.5,
            "precision_bird": 0.5,
            "recall_bird": 1.0,
        }
    )


def test_absent_and_never_predicted_classes() -> None:
    # class 2 is never predicted, class 3 occurs nowhere: macro-F1 averages classes 0, 1 and 2 only
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0/0 rates are 0 by definition, not a RuntimeWarning
        metrics = classification_metrics(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 0]), ["a", "b", "c", "d"])
    assert metrics["accuracy"] == 0.5
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0.0) / 3)
    assert (metrics["precision_c"], metrics["recall_c"]) == (0.0, 0.0)
    assert (metrics["precision_d"], metrics["recall_d"]) == (0.0, 0.0)
    assert metrics["precision_a"] == metrics["precision_b"] == 0.5


def test_perfect_predictions() -> None:
    y = np.array([2, 0, 1, 1])
    metrics = classification_metrics(y, y, ["x", "y", "z"])
    assert metrics["accuracy"] == metrics["macro_f1"] == 1.0
    assert all(value == 1.0 for key, value in metrics.items() if key.startswith(("precision_", "recall_")))


def test_class_names_become_distinct_mlflow_keys() -> None:
    names = ["a b", "x+y", "x_y", "naïve", "", "1/2-3.4"]
    assert metric_names(names) == ["a b", "x_y_1", "x_y_2", "na_ve", "_", "1/2-3.4"]
    metrics = classification_metrics(np.array([0, 1]), np.array([0, 1]), ["x+y", "x_y"])
    assert {"precision_x_y_0", "precision_x_y_1", "recall_x_y_0", "recall_x_y_1"} <= set(metrics)


def test_majority_baseline_predicts_the_most_frequent_training_class() -> None:
    # training majority is 1 (three of five); the test part's own majority (0) must not matter
    baseline = majority_baseline(np.array([1, 1, 1, 0, 2]), np.array([0, 0, 0, 1, 2]), n_classes=3)
    # always 1: one hit of five; F1 of class 1 = 2·1 / (5 + 1), classes 0 and 2 score 0
    assert baseline == pytest.approx({"majority_accuracy": 1 / 5, "majority_macro_f1": (2 / 6) / 3})


def test_majority_baseline_tie_and_unseen_test_class() -> None:
    # a tie goes to the lowest index (0); class 2 is absent from the test part and never predicted: not averaged
    baseline = majority_baseline(np.array([1, 1, 0, 0, 2]), np.array([0, 1, 1, 1]), n_classes=3)
    assert baseline == pytest.approx({"majority_accuracy": 1 / 4, "majority_macro_f1": (2 / 5 + 0.0) / 2})
    with pytest.raises(ValueError, match="at least one training label"):
        majority_baseline(np.array([], dtype=int), np.array([0]), n_classes=2)


def test_log_loss() -> None:
    probabilities = np.array([[0.5, 0.5], [0.1, 0.9], [1.0, 0.0]])
    assert log_loss(np.array([0, 1, 0]), probabilities) == pytest.approx(-(math.log(0.5) + math.log(0.9)) / 3)
    assert log_loss(np.array([1]), np.array([[1.0, 0.0]])) == pytest.approx(-math.log(1e-12))  # clipped, finite
    with pytest.raises(ValueError, match="one true label per row"):
        log_loss(np.array([0, 1]), probabilities)
