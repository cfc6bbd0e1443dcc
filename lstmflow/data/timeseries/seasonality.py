"""What a series' training part says about its own season and its form: the tests behind the data-driven defaults.

Each test is a documented rule from the forecasting literature computed with statsmodels / scipy, never hand-tuned
to one data set:

- :func:`season_from_autocorrelation`: the lag of the first clear autocorrelation cycle (a significant trough,
  then a significant peak), for series whose calendar names no season (sunspots' ~11-year cycle in yearly data);
- :func:`amplitude_grows_with_level`: a Guerrero-style test for a log transform (seasonal swings proportional to
  the level, as in monthly airline passengers);
- :func:`seasonal_strength`: STL's seasonal strength, the rule R's ``forecast::nsdiffs`` uses for seasonal
  differencing (> 0.64);
- :func:`level_is_stationary`: the KPSS test R's ``forecast::ndiffs`` uses for first differencing.
"""

from __future__ import annotations

import numpy as np

#: Fewest whole cycles the training part must hold before a season is inferred from its autocorrelation.
MIN_CYCLES = 4
#: Longest season searched for, in rows (the autocorrelation is computed up to here).
MAX_SEASON = 400
#: A cycle shows in the autocorrelation as a trough then a peak, each beyond ± max(MIN_PEAK, PEAK_SIGMAS / √n):
#: 3.3 white-noise standard errors is about a 0.1% two-sided test, and the floor keeps weak wiggles of random walks
#: and AR(1) series out (measured: under 3% of simulated random walks and AR(0.9) series of 100-1000 steps get a
#: season, while noisy sines of period 5-24 and sunspots, lynx get theirs).
PEAK_SIGMAS = 3.3
MIN_PEAK = 0.3
#: STL seasonal strength above which the series is seasonally differenced (Wang, Smith & Hyndman 2006; nsdiffs).
SEASONAL_STRENGTH = 0.64
#: Cycles needed for the amplitude-versus-level regression, and the slope above which a log suits better than none:
#: log(spread) = a + (1 - λ) log(level) is Guerrero's Box-Cox relation, so a slope > 0.5 means λ is nearer 0 (log)
#: than 1 (no transform); the regression must also be significant at 5%.
MIN_LEVEL_CYCLES = 4
LOG_SLOPE = 0.5
LEVEL_P_VALUE = 0.05
#: KPSS level-stationarity is rejected below this p-value (ndiffs' default 5% test).
KPSS_P_VALUE = 0.05
#: The augmented Dickey-Fuller test rejects a unit root below this p-value.
ADF_P_VALUE = 0.05


def season_from_autocorrelation(train: np.ndarray) -> int:
    """The season of a series whose calendar names none: its first clear autocorrelation cycle, else 1.

    The series is detrended (a least-squares line removed) so that a trend's slowly decaying autocorrelation does
    not hide the cycle. The season is the smallest lag k >= 2, at most ``len / MIN_CYCLES``, where the
    autocorrelation (statsmodels' ``acf``) has a local peak of at least the bound and falls below minus the bound
    somewhere before k (the bound: :data:`MIN_PEAK` or :data:`PEAK_SIGMAS` white-noise standard errors, whichever
    is larger). The smallest such lag, not the highest peak, so that a multiple of the season is not taken for it.
    """
    from statsmodels.tsa.stattools import acf

    values = np.asarray(train, dtype=np.float64)
    longest = min(len(values) // MIN_CYCLES, MAX_SEASON)
    if longest < 2 or np.ptp(values) == 0:
        return 1
    steps = np.arange(len(values))
    detrended = values - np.polyval(np.polyfit(steps, values, 1), steps)
    if np.ptp(detrended) < 1e-9 * max(1.0, float(np.abs(values).max())):
        return 1  # a straight line: no cycle
    correlation = np.asarray(acf(detrended, nlags=longest + 1, fft=True))
    bound = max(MIN_PEAK, PEAK_SIGMAS / np.sqrt(len(values)))
    for lag in range(2, longest + 1):
        peak = correlation[lag] > correlation[lag - 1] and correlation[lag] >= correlation[lag + 1]
        if peak and correlation[lag] >= bound and correlation[1:lag].min() <= -bound:
            return lag
    return 1


def seasonal_strength(train: np.ndarray, season: int) -> float:
    """STL seasonal strength max(0, 1 - Var(remainder) / Var(seasonal + remainder)); 0 without two whole cycles."""
    from statsmodels.tsa.seasonal import STL

    values = np.asarray(train, dtype=np.float64)
    if season < 2 or len(values) < 2 * season + 1 or np.ptp(values) == 0:
        return 0.0
    fit = STL(values, period=season, robust=True).fit()
    remainder, seasonal = np.asarray(fit.resid), np.asarray(fit.seasonal)
    spread = np.var(seasonal + remainder)
    return float(max(0.0, 1 - np.var(remainder) / spread)) if spread > 0 else 0.0


def amplitude_grows_with_level(train: np.ndarray, season: int) -> bool:
    """Whether the series' spread grows in proportion to its level, so that a log makes it additive.

    The training part is cut into whole cycles (blocks of ``season`` rows, 2 for a series without season, as in
    Guerrero's method); log(standard deviation) is regressed on log(mean) across the blocks (scipy's
    ``linregress``). Multiplicative: a slope > :data:`LOG_SLOPE` that is significant. Only for values > 0.
    """
    from scipy.stats import linregress

    values = np.asarray(train, dtype=np.float64)
    block = max(season, 2)
    cycles = len(values) // block
    if cycles < MIN_LEVEL_CYCLES or values.min() <= 0:
        return False
    blocks = values[len(values) - cycles * block :].reshape(cycles, block)  # the latest whole cycles
    level, spread = blocks.mean(axis=1), blocks.std(axis=1, ddof=1)
    if spread.min() <= 0 or np.ptp(np.log(level)) < 1e-9:
        return False
    fit = linregress(np.log(level), np.log(spread))
    return bool(fit.slope > LOG_SLOPE and fit.pvalue < LEVEL_P_VALUE)


def level_is_stationary(train: np.ndarray) -> bool:
    """Whether both tests find the level stationary at 5%: KPSS (statsmodels' ``kpss``, level, automatic lags) keeps
    stationarity and the augmented Dickey-Fuller test (``adfuller``, lags by BIC) rejects a unit root. KPSS alone
    kept about a quarter of simulated 96-point random walks as stationary, and a network cannot extrapolate a level
    that wanders out of its training range (benchmarks/RESULTS.md); the two together keep few. A constant or a
    series too short to test counts as stationary (nothing to difference)."""
    import warnings

    from statsmodels.tools.sm_exceptions import InterpolationWarning
    from statsmodels.tsa.stattools import adfuller, kpss

    values = np.asarray(train, dtype=np.float64)
    if values.size < 8 or np.ptp(values) == 0:
        return True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InterpolationWarning)  # p-values beyond the table's 1-10% are clipped
        if kpss(values, regression="c", nlags="auto", result_object=True).pvalue < KPSS_P_VALUE:
            return False
    return bool(adfuller(values, autolag="BIC", result_object=True).pvalue < ADF_P_VALUE)
