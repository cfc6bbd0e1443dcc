"""Paired significance tests of "the challenger is better than the champion", one-sided, on the same test samples.

- :func:`mcnemar` for right/wrong answers (classifiers): scipy's binomial test and statsmodels' McNemar, each made
  one-sided here (statsmodels' test is two-sided only);
- :func:`diebold_mariano` for per-forecast losses (forecasters), with the Harvey–Leybourne–Newbold small-sample
  correction. Neither scipy nor statsmodels has this test, so it is written out: the long-run variance of the loss
  differences, the HLN factor and Student's t;
- :func:`sign_test` for per-sample scores (a translator's per-sentence chrF): scipy's binomial test on the samples
  where one model scores higher. It asks only which is better on each sentence, not by how much, so a few very
  long or very odd sentences cannot decide it, and chrF's scale needs no distribution assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: McNemar's test is exact (binomial) below this many discordant pairs, chi-square with continuity correction above.
MCNEMAR_EXACT_BELOW = 25


@dataclass(frozen=True)
class Significance:
    """A one-sided test of "the challenger is better"; ``p_value`` small means it is."""

    name: str
    statistic: float
    p_value: float
    n: int
    detail: str


def _paired(first: np.ndarray, second: np.ndarray, dtype: type, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as ``dtype``, refused unless they are one value per sample each."""
    ours: np.ndarray = np.asarray(first, dtype=dtype)
    theirs: np.ndarray = np.asarray(second, dtype=dtype)
    if ours.shape != theirs.shape or ours.ndim != 1:
        raise ValueError(f"need one {what} per sample from each model, got shapes {ours.shape} and {theirs.shape}")
    return ours, theirs


def mcnemar(challenger_correct: np.ndarray, champion_correct: np.ndarray) -> Significance:
    """McNemar's test on paired right/wrong answers, one-sided toward the challenger being right more often.

    Only discordant pairs count: ``b`` samples the challenger alone gets right, ``c`` the champion alone. Under the
    null each is a fair coin, so below :data:`MCNEMAR_EXACT_BELOW` pairs the p value is the exact binomial
    P(X >= b), X ~ Binomial(b + c, 1/2); from there on, statsmodels' chi-square with continuity correction, its
    two-sided p halved toward the side the challenger is on. The statistic reported is that chi-square.
    """
    from scipy.stats import binomtest
    from statsmodels.stats.contingency_tables import mcnemar as two_sided_mcnemar

    challenger, champion = _paired(challenger_correct, champion_correct, bool, "answer")
    b, c = int((challenger & ~champion).sum()), int((champion & ~challenger).sum())
    pairs = b + c
    detail = f"challenger alone right on {b}, champion alone on {c} of {len(challenger)} samples"
    if pairs == 0:  # the same answers everywhere: no evidence either way
        return Significance("mcnemar", 0.0, 1.0, len(challenger), f"McNemar (exact binomial): {detail}")
    chi_square = two_sided_mcnemar([[0, b], [c, 0]], exact=False, correction=True)
    if pairs < MCNEMAR_EXACT_BELOW:
        p_value, how = float(binomtest(b, pairs, 0.5, alternative="greater").pvalue), "exact binomial"
    else:
        two_sided = float(chi_square.pvalue)
        p_value = two_sided / 2 if b > c else 1 - two_sided / 2
        how = "chi-square with continuity correction"
    return Significance("mcnemar", float(chi_square.statistic), p_value, len(challenger), f"McNemar ({how}): {detail}")


def diebold_mariano(champion_loss: np.ndarray, challenger_loss: np.ndarray, horizon: int) -> Significance:
    """Diebold–Mariano's test of equal forecast accuracy, one-sided toward the challenger's loss being lower, with
    the Harvey–Leybourne–Newbold (1997) small-sample correction and Student's t with T - 1 degrees of freedom.

    ``d_t = champion_loss_t - challenger_loss_t``; its long-run variance sums the autocovariances up to lag
    ``horizon - 1`` (h-step forecasts made one step apart overlap). When that sum is not positive (it can be, in
    small samples), the lag-0 variance alone is used and the detail says so.
    """
    from scipy import stats

    champion, challenger = _paired(champion_loss, challenger_loss, np.float64, "loss")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    d = champion - challenger
    n = len(d)
    if n <= horizon:
        return Significance(
            "diebold_mariano", 0.0, 1.0, n, f"Diebold–Mariano: {n} forecasts, too few for horizon {horizon}"
        )
    mean = float(d.mean())
    centred = d - mean
    autocovariance = [float(centred[lag:] @ centred[: n - lag]) / n for lag in range(horizon)]
    variance = autocovariance[0] + 2 * sum(autocovariance[1:])
    note = ""
    if variance <= 0 < autocovariance[0]:
        variance, note = autocovariance[0], "; long-run variance not positive, lag-0 variance used"
    if variance <= 0:  # every difference the same
        statistic = math.inf if mean > 0 else -math.inf if mean < 0 else 0.0
        p_value = 0.0 if mean > 0 else 1.0
    else:
        correction = math.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
        statistic = correction * mean / math.sqrt(variance / n)
        p_value = float(stats.t.sf(statistic, n - 1))
    detail = f"Diebold–Mariano (HLN-corrected, h={horizon}): mean loss difference {mean:.6g} over {n} forecasts{note}"
    return Significance("diebold_mariano", statistic, p_value, n, detail)


def sign_test(challenger_score: np.ndarray, champion_score: np.ndarray) -> Significance:
    """The sign test on paired per-sample scores (higher is better), one-sided toward the challenger: the exact
    binomial P(X >= b), X ~ Binomial(b + c, 1/2), where the challenger scores higher on ``b`` samples and the
    champion on ``c`` (ties left out). The statistic reported is ``b - c``."""
    from scipy.stats import binomtest

    challenger, champion = _paired(challenger_score, champion_score, np.float64, "score")
    b, c = int((challenger > champion).sum()), int((champion > challenger).sum())
    detail = f"sign test: challenger higher on {b}, champion on {c}, tied on {len(challenger) - b - c} samples"
    p_value = float(binomtest(b, b + c, 0.5, alternative="greater").pvalue) if b + c else 1.0
    return Significance("sign", float(b - c), p_value, len(challenger), detail)
