"""A classifier served as the network blended with the run's regression baseline.

Texts: TF-IDF + logistic regression. On a few thousand texts a network trained from scratch and the regression on
word and character n-grams err on different texts: the network reads phrases in order, the regression catches
inflections and rare words through character n-grams the network's tokens never split out. Video: logistic
regression on each pixel's mean and spread over the clip, which sees its overall colour where the network follows
its course. Their weighted geometric mean of class probabilities was ahead of the network alone on every text set
of the quality suite, and level with or ahead of the regression on most (benchmarks/RESULTS.md); video, not
measured, is blended on request only (``train.blend_baseline: true``). The
weight is chosen on the validation part (the most accurate, the lower log-loss on a tie), from the network's kept
checkpoint and the regression fitted on the training part alone; the regression that is served was then fitted
again on training and validation together with the same strength, as the baseline the run reports was. A weight of
1 is the network alone, 0 the regression alone (which then only ties the baseline).

Sequences and audio features: logistic regression on MiniRocket features (:mod:`lstmflow.models.minirocket`),
which finds the same local shapes at many scales that a convolution branch learns slowly from a few dozen series
(on the suite's spoken digits it scored 1.000 on the audio features where their mean and spread scored 0.973).
Their blend takes equal weights (:data:`EQUAL_WEIGHT`), as a forecast's average does: a UCR set often holds a few
dozen training series and a validation part of a handful, too few to choose a weight on, and on the quality suite's
eight UCR/UEA sets the equal blend gained up to 18 points on the network alone and lost at most half of one.

The blend is a model in its own right, so it is saved beside the network's weights and travels in the served
bundle (``partner.joblib``, scikit-learn's own persistence); a served request goes through both. The regression
reads what the network reads: the raw texts, or the sequences in model space (scaled, truncated).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The file beside the network's weights (and in the served bundle) holding the fitted regression and the weight.
PARTNER_FILE = "partner.joblib"
#: The network's weights tried, from 0 (the regression alone) to 1 (the network alone).
WEIGHTS = np.linspace(0.0, 1.0, 21)
#: Inputs the regression scores at a time.
PREDICT_CHUNK = 4096
#: The network's weight in a sequence classifier's blend (not chosen on the validation part).
EQUAL_WEIGHT = 0.5
#: Probabilities are clipped to this before their logarithm: a class one model rules out stays possible.
FLOOR = 1e-9


@dataclass(frozen=True)
class Partner:
    """The regression a network may be blended with: the model to serve and its probabilities per part."""

    #: inputs (texts or sequences) → (N, classes) probabilities; fitted on training + validation inputs.
    model: Any
    #: Which class code each of ``model``'s probability columns is (classes absent from its training inputs lack one).
    codes: np.ndarray
    #: (N_val, classes): the same regression fitted on the training part alone, for choosing the weight (no rows
    #: where the weight is not chosen).
    val: np.ndarray
    #: (N_test, classes): ``model``'s.
    test: np.ndarray


def class_probabilities(model: Any, codes: np.ndarray, inputs: list[Any], n_classes: int) -> np.ndarray:
    """(N, n_classes) probabilities of a fitted scikit-learn classifier whose columns are class ``codes``, a chunk
    of inputs at a time (a MiniRocket regression holds ten thousand features per sequence)."""
    probabilities = np.zeros((len(inputs), n_classes))
    for start in range(0, len(inputs), PREDICT_CHUNK):
        probabilities[start : start + PREDICT_CHUNK, codes] = model.predict_proba(inputs[start : start + PREDICT_CHUNK])
    return probabilities


def mean_and_spread(sequences: list[np.ndarray]) -> np.ndarray:
    """(N, 2F): each (T, F) sequence's mean and standard deviation over time, per feature (the video regression's
    features; a module-level function, so the saved regression can find it again)."""
    return np.stack([np.concatenate([steps.mean(axis=0), steps.std(axis=0)]) for steps in map(np.float64, sequences)])


def with_deltas_mean_and_spread(sequences: list[np.ndarray]) -> np.ndarray:
    """(N, 4F): :func:`mean_and_spread` of each sequence's steps and of their deltas (each step minus the one
    before; 0 at the first), the features of the audio regression before MiniRocket's. Kept so that the blends of
    audio models registered then still load: their saved regression names this function."""
    return mean_and_spread([np.concatenate([s, np.diff(s, axis=0, prepend=s[:1])], axis=1) for s in sequences])


def blended(network: np.ndarray, partner: np.ndarray, weight: float) -> np.ndarray:
    """Rows of ``network ** weight * partner ** (1 - weight)``, normalised: the weighted geometric mean, which
    (unlike the arithmetic one) does not let the sharper of two differently calibrated models drown the other."""
    scores = weight * np.log(np.clip(network, FLOOR, 1.0)) + (1.0 - weight) * np.log(np.clip(partner, FLOOR, 1.0))
    scores -= scores.max(axis=1, keepdims=True)
    exp = np.exp(scores)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


def choose_weight(network: np.ndarray, partner: np.ndarray, labels: np.ndarray) -> float:
    """The network's weight in :data:`WEIGHTS` whose blend is the most accurate on ``labels`` (validation), the one
    with the lower log-loss on a tie."""

    def rank(weight: float) -> tuple[float, float]:
        mixed = blended(network, partner, weight)
        correct = float(np.mean(mixed.argmax(axis=1) == labels))
        return correct, float(np.mean(np.log(mixed[np.arange(len(labels)), labels])))

    return float(max(WEIGHTS, key=rank))


@dataclass(frozen=True)
class Blend:
    """What serving needs to blend: the regression (texts or sequences in), its class codes, the network's weight."""

    model: Any
    codes: np.ndarray
    weight: float
    n_classes: int

    def probabilities(self, network: np.ndarray, inputs: list[Any]) -> np.ndarray:
        """The blend of the network's (N, classes) probabilities with the regression's on the same inputs."""
        return blended(network, class_probabilities(self.model, self.codes, inputs, self.n_classes), self.weight)

    def save(self, folder: Path) -> Path:
        import joblib

        path = Path(folder) / PARTNER_FILE
        joblib.dump(dataclasses.asdict(self), path)
        return path


def load_blend(folder: Path) -> Blend | None:
    """The blend saved in ``folder``, or None when its model is the network alone."""
    path = Path(folder) / PARTNER_FILE
    if not path.is_file():
        return None
    import joblib

    return Blend(**joblib.load(path))
