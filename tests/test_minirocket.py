"""MiniRocket features: the paper's 84 kernels × 119 biases, proportions in [0, 1], the same for the same fit,
dilations that fit the series, several channels and lengths read, and shapes told apart that summaries cannot."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from lstmflow.models.minirocket import FEATURES_PER_KERNEL, KERNEL_LENGTH, TWOS, MiniRocket, _dilations


def bumps_and_dips(count: int, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """(T, 1) series of 40 to 60 steps holding one bump or one mirrored dip at a random place: the same values in
    another order, so the mean, spread, minimum and maximum cannot tell them apart."""
    series, labels = [], []
    for i in range(count):
        length, width = int(rng.integers(40, 61)), 8
        start = int(rng.integers(0, length - width))
        values = rng.normal(0, 0.05, length)
        ramp = np.linspace(0.0, 1.0, width)
        values[start : start + width] += ramp if i % 2 else ramp[::-1]  # a rising or a falling edge
        series.append(values[:, None])
        labels.append(i % 2)
    return series, np.array(labels)


def test_the_kernels_are_the_papers_84() -> None:
    weights = np.full((len(TWOS), KERNEL_LENGTH), -1)
    np.put_along_axis(weights, TWOS, 2, axis=1)
    assert weights.shape == (84, 9) and (weights.sum(axis=1) == 0).all()
    assert len({tuple(row) for row in weights}) == 84


@pytest.mark.parametrize("steps", [9, 24, 251, 512])
def test_dilations_fit_the_series_and_share_every_kernels_features(steps: int) -> None:
    dilations, counts = _dilations(steps)
    assert dilations[0] == 1 and (KERNEL_LENGTH - 1) * dilations[-1] <= steps - 1
    assert counts.sum() == FEATURES_PER_KERNEL and (counts > 0).all()


def test_features_are_proportions_fitted_once_and_reproduced() -> None:
    series, _ = bumps_and_dips(12, np.random.default_rng(0))
    features = MiniRocket(seed=3).fit(series)
    first = features.transform(series)
    assert first.shape == (12, 84 * FEATURES_PER_KERNEL) and first.dtype == np.float32
    assert first.min() >= 0.0 and first.max() <= 1.0 and first.std(axis=0).mean() > 0.05
    np.testing.assert_array_equal(first, features.transform(series))
    np.testing.assert_array_equal(first, MiniRocket(seed=3).fit_transform(series))


def test_several_channels_and_short_series_are_read() -> None:
    rng = np.random.default_rng(1)
    series = [rng.normal(size=(int(rng.integers(3, 9)), 5)) for _ in range(6)]  # shorter than a kernel, 5 channels
    features = MiniRocket().fit(series)
    assert features.steps_ == KERNEL_LENGTH
    assert {len(chosen) for per_dilation in features.channels_ for chosen in per_dilation} > {1}
    assert features.transform(series[:2]).shape == (2, 84 * FEATURES_PER_KERNEL)


def test_a_linear_model_on_the_features_tells_edges_apart_that_summaries_cannot() -> None:
    rng = np.random.default_rng(2)
    train, train_labels = bumps_and_dips(40, rng)
    test, test_labels = bumps_and_dips(40, rng)
    features = MiniRocket().fit(train)

    model = LogisticRegression(C=0.1, max_iter=2000).fit(features.transform(train), train_labels)
    summaries = [np.array([[s.mean(), s.std(), s.min(), s.max()] for s in part]) for part in (train, test)]
    on_summaries = LogisticRegression(max_iter=2000).fit(summaries[0], train_labels)

    assert np.mean(model.predict(features.transform(test)) == test_labels) >= 0.95
    assert np.mean(on_summaries.predict(summaries[1]) == test_labels) < 0.75
