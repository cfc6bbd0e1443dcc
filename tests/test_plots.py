"""The run's figures: valid PNGs of a readable size, from small arrays, for every input shape they accept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lstmflow.evaluation.plots import plot_confusion_matrix, plot_forecast, plot_loss_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def windows(series: np.ndarray, horizon: int) -> np.ndarray:
    """(rows, k) → (N, horizon, k) windows starting one step apart."""
    return np.stack([series[i : i + horizon] for i in range(len(series) - horizon + 1)])


def assert_png(path: Path) -> tuple[int, int]:
    """The file is a PNG of a sensible size; returns its (width, height) in pixels."""
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert 10_000 < len(data) < 2_000_000
    height, width = imread(path).shape[:2]
    assert 600 <= width <= 2000 and 300 <= height <= 2000
    return width, height


@pytest.fixture
def seasonal() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(60)
    return (50 + 40 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 5, 60))[:, None]  # (rows, 1)


def test_forecast_with_dates_naive_and_fans(tmp_path: Path, seasonal: np.ndarray) -> None:
    actual = windows(seasonal, horizon=12)  # (49, 12, 1)
    forecast = actual + np.random.default_rng(1).normal(0, 4, actual.shape)
    naive = windows(np.roll(seasonal, 12, axis=0), horizon=12)
    dates = np.arange("1990-01", "1995-01", dtype="datetime64[M]")  # the whole series: cut to its last 60 rows
    path = plot_forecast(
        tmp_path / "plots" / "forecast.png", dates, actual, forecast, naive, title="sunspots", target_names=["sunspots"]
    )
    assert path == tmp_path / "plots" / "forecast.png"
    assert_png(path)


def test_forecast_with_the_strong_baseline_beside_the_naive_one(tmp_path: Path, seasonal: np.ndarray) -> None:
    actual = windows(seasonal, horizon=2)  # (59, 2, 1)
    naive = windows(np.roll(seasonal, 12, axis=0), horizon=2)
    alone = assert_png(plot_forecast(tmp_path / "naive.png", None, actual, actual + 2.0, naive))
    both = plot_forecast(tmp_path / "both.png", None, actual, actual + 2.0, naive, baseline=actual - 1.0)
    assert assert_png(both) == alone
    assert both.read_bytes() != (tmp_path / "naive.png").read_bytes()  # the baseline's line is drawn
    with pytest.raises(ValueError, match=r"baseline has shape \(59, 1, 1\)"):
        plot_forecast(tmp_path / "f.png", None, actual, actual, naive, baseline=actual[:, :1])


def test_forecast_with_text_labels_and_several_targets(tmp_path: Path, seasonal: np.ndarray) -> None:
    series = np.concatenate([seasonal, seasonal * 0.5 + 3, -seasonal, seasonal**0.5, seasonal + 1], axis=1)
    actual = windows(series, horizon=3)  # (58, 3, 5)
    labels = [f"week {i}" for i in range(60)]
    width, height = assert_png(plot_forecast(tmp_path / "f.png", labels, actual, actual + 1.0))
    assert height > width  # four panels stacked, the fifth target left out


def test_forecast_of_one_step_without_times(tmp_path: Path, seasonal: np.ndarray) -> None:
    actual = windows(seasonal, horizon=1)  # (60, 1, 1)
    assert_png(plot_forecast(tmp_path / "f.png", None, actual, actual * 1.1, naive=np.roll(actual, 1, axis=0)))


def test_forecast_refuses_mismatched_inputs(tmp_path: Path, seasonal: np.ndarray) -> None:
    actual = windows(seasonal, horizon=12)
    with pytest.raises(ValueError, match="forecast has shape"):
        plot_forecast(tmp_path / "f.png", None, actual, actual[:, :6])
    with pytest.raises(ValueError, match="times has 10 labels, the test windows cover 60 rows"):
        plot_forecast(tmp_path / "f.png", list(range(10)), actual, actual)
    with pytest.raises(ValueError, match="2 target names for 1 targets"):
        plot_forecast(tmp_path / "f.png", None, actual, actual, target_names=["a", "b"])


def test_loss_curves_with_learning_rate_and_log_scale(tmp_path: Path) -> None:
    history = [
        {
            "epoch": e,
            "train_loss": 2 * np.exp(-e / 5),
            "val_loss": 2.5 * np.exp(-e / 6) + 0.0005 * max(0, e - 20) ** 2,
            "lr": 1e-3 * 0.5 ** (e // 10),
        }
        for e in range(1, 41)
    ]
    _, height = assert_png(plot_loss_curves(tmp_path / "loss.png", history))
    assert height > 600  # the learning-rate panel is there


def test_loss_curves_without_validation_or_learning_rate(tmp_path: Path) -> None:
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": None} for e in range(1, 6)]
    assert_png(plot_loss_curves(tmp_path / "loss.png", history))


def test_loss_curves_need_a_history(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="history is empty"):
        plot_loss_curves(tmp_path / "loss.png", [])


def test_confusion_matrix_small(tmp_path: Path) -> None:
    matrix = np.array([[50, 3, 2], [4, 20, 1], [0, 0, 0]])  # the last class has no test sample: a row of zeros
    path = plot_confusion_matrix(tmp_path / "plots" / "cm.png", matrix, ["cat", "dog", "bird"], title="pets")
    assert path == tmp_path / "plots" / "cm.png"
    assert_png(path)


def test_confusion_matrix_grows_with_thirty_long_named_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = [f"sensor reading class number {i}" for i in range(30)]
    matrix = rng.integers(0, 5, (30, 30)) + np.diag(rng.integers(20, 60, 30))
    small_width, small_height = assert_png(plot_confusion_matrix(tmp_path / "small.png", matrix[:3, :3], names[:3]))
    width, height = assert_png(plot_confusion_matrix(tmp_path / "large.png", matrix, names))
    assert width > small_width * 1.5 and height > small_height * 1.5


def test_confusion_matrix_refuses_a_mismatched_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"matrix has shape \(2, 2\), expected \(3, 3\)"):
        plot_confusion_matrix(tmp_path / "cm.png", np.eye(2, dtype=int), ["a", "b", "c"])
