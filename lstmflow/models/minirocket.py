"""MiniRocket features of sequences (Dempster, Schmidt & Webb 2021), the classical partner of a sequence classifier.

Each feature is the proportion of time steps at which one fixed convolution of the series, at one dilation, exceeds
one bias (PPV). The kernels are the 84 of length 9 with weights -1 and three weights 2; the dilations spread
exponentially up to the series' length; the biases are quantiles of the convolution of a random training series.
A linear classifier on these features is among the most accurate classical methods on the UCR archive and fits
in seconds. Written here with numpy because the libraries that ship it (aeon, sktime) pin numba below the
version librosa needs in this environment; it follows the paper's reference algorithm, not its exact random draws.
Several channels: each (dilation, kernel) pair reads the sum of a random subset of channels (the paper's
multivariate variant; a kernel is linear, so convolving the sum is summing the convolutions).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

#: The kernel length, and the 84 positions of its three weights of 2 (the other six are -1).
KERNEL_LENGTH = 9
TWOS = np.array(list(combinations(range(KERNEL_LENGTH), 3)))
#: Features in all (a multiple of the 84 kernels near the paper's 10,000) and dilations per kernel at most.
FEATURES_PER_KERNEL = 119
MAX_DILATIONS = 32
#: Series are resampled to their longest training length, within these bounds: a kernel of 9 must fit once, and
#: time grows with the length (a series of equal length within them is read as it is: on the quality suite's ACSF1,
#: 1,460 steps, resampling to 512 or 1,024 cost 5 to 7 points).
MIN_STEPS, MAX_STEPS = KERNEL_LENGTH, 2048
#: Sequences transformed at a time: their convolutions at one dilation are held together.
CHUNK = 1024


class MiniRocket(TransformerMixin, BaseEstimator):
    """A scikit-learn transformer: a list of (T, F) sequences → (N, 84 × 119) PPV features, as float32."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, sequences: list[np.ndarray], labels: object = None) -> MiniRocket:
        """Choose the length, dilations, channel subsets and biases from the training sequences."""
        series = self._resampled(sequences, fitting=True)
        rng = np.random.default_rng(self.seed)
        self.dilations_, counts = _dilations(self.steps_)
        golden = (np.arange(1, FEATURES_PER_KERNEL * len(TWOS) + 1) * ((np.sqrt(5) + 1) / 2)) % 1
        self.channels_: list[list[np.ndarray]] = []
        self.biases_: list[list[np.ndarray]] = []
        start = 0
        for position, (dilation, count) in enumerate(zip(self.dilations_, counts, strict=True)):
            channels, biases = [], []
            for kernel, twos in enumerate(TWOS):
                chosen = _channel_subset(rng, series.shape[1])
                example = series[rng.integers(len(series)), chosen].sum(axis=0, keepdims=True)
                output = _convolve(_Shifted(example, dilation), twos, self._padded(position, kernel))
                biases.append(np.quantile(output, golden[start : start + count]))
                channels.append(chosen)
                start += count
            self.channels_.append(channels)
            self.biases_.append(biases)
        return self

    def transform(self, sequences: list[np.ndarray]) -> np.ndarray:
        """(N, 84 × 119) float32, a chunk of sequences at a time (the convolutions of a chunk are held at once)."""
        features = np.empty((len(sequences), FEATURES_PER_KERNEL * len(TWOS)), dtype=np.float32)
        for first in range(0, len(sequences), CHUNK):
            features[first : first + CHUNK] = self._features(self._resampled(sequences[first : first + CHUNK]))
        return features

    def _features(self, series: np.ndarray) -> np.ndarray:
        columns = []
        for position, dilation in enumerate(self.dilations_):
            shifted: dict[tuple[int, ...], _Shifted] = {}  # per channel subset: one series alone shares them all
            for kernel, twos in enumerate(TWOS):
                chosen = self.channels_[position][kernel]
                key = tuple(chosen)
                if key not in shifted:
                    shifted[key] = _Shifted(series[:, chosen].sum(axis=1), dilation)
                output = _convolve(shifted[key], twos, self._padded(position, kernel))
                biases = self.biases_[position][kernel]  # compared along the steps, the contiguous axis: 10x faster
                columns.append((output[:, None, :] > biases[None, :, None]).mean(axis=2))
        return np.concatenate(columns, axis=1)

    @staticmethod
    def _padded(position: int, kernel: int) -> bool:
        """Half the (dilation, kernel) pairs read the zero-padded ends, half only whole windows (the paper's rule)."""
        return (position + kernel) % 2 == 0

    def _resampled(self, sequences: list[np.ndarray], fitting: bool = False) -> np.ndarray:
        """(N, F, steps): each channel linearly resampled to the fitted number of steps."""
        if fitting:
            self.steps_ = int(np.clip(max(len(s) for s in sequences), MIN_STEPS, MAX_STEPS))
        grid = np.linspace(0.0, 1.0, self.steps_)
        rows = []
        for steps in sequences:
            values = np.asarray(steps, dtype=np.float32).reshape(len(steps), -1)
            if len(values) == self.steps_:  # read as it is (the usual case: a set of equal lengths)
                rows.append(values.T)
                continue
            where = np.linspace(0.0, 1.0, len(values)) if len(values) > 1 else np.zeros(1)
            rows.append(np.stack([np.interp(grid, where, channel) for channel in values.T]))
        return np.stack(rows).astype(np.float32)


def _dilations(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct dilations, exponentially spaced so the kernel spans up to the whole series, and how many
    features (biases) each kernel gets at each: more at the small dilations that repeat in the spacing."""
    largest = np.log2((steps - 1) / (KERNEL_LENGTH - 1))
    spaced = np.floor(np.logspace(0, largest, min(FEATURES_PER_KERNEL, MAX_DILATIONS), base=2)).astype(int)
    dilations, repeats = np.unique(spaced, return_counts=True)
    counts = (repeats * FEATURES_PER_KERNEL / repeats.sum()).astype(int)
    counts[: FEATURES_PER_KERNEL - counts.sum()] += 1
    return dilations, counts


def _channel_subset(rng: np.random.Generator, channels: int) -> np.ndarray:
    """A random subset of the channels, of size 2^U(0, log2(min(F, 9) + 1)) rounded down (the paper's draw)."""
    size = int(2 ** rng.uniform(0, np.log2(min(channels, KERNEL_LENGTH) + 1)))
    return np.sort(rng.choice(channels, size=max(1, min(size, channels)), replace=False))


class _Shifted:
    """(N, T) series zero-padded and seen shifted by (j - 4) × dilation for each kernel position j (views, not
    copies), with the sum of all nine: what every kernel at this dilation needs."""

    def __init__(self, series: np.ndarray, dilation: int) -> None:
        self.pad = (KERNEL_LENGTH // 2) * dilation
        padded = np.pad(series, ((0, 0), (self.pad, self.pad)))
        steps = series.shape[1]
        self.views = [padded[:, j * dilation : j * dilation + steps] for j in range(KERNEL_LENGTH)]
        self.total = np.sum(self.views, axis=0)


def _convolve(shifted: _Shifted, twos: np.ndarray, padded: bool) -> np.ndarray:
    """(N, T'): the kernel with weights 2 at ``twos`` and -1 elsewhere, 3 Σ x at the twos - Σ x, at every step
    (``padded``) or only where it lies wholly inside the series (when the series is long enough to leave any)."""
    views = shifted.views
    output = 3 * (views[twos[0]] + views[twos[1]] + views[twos[2]]) - shifted.total
    if padded or output.shape[1] <= 2 * shifted.pad:
        return output
    return output[:, shifted.pad : -shifted.pad]
