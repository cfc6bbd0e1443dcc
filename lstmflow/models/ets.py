"""Exponential smoothing (statsmodels' ``ETSModel``) as a forecaster's partner: the run's AutoETS baseline, whose
forecasts a network's are averaged with (``train.blend_baseline``), in evaluation and in serving alike.

Its parameters are fitted once, on the training part; a forecast then runs them over the series up to its origin:
the initial states come from the series' first cycles (the heuristic of Hyndman et al., where there are enough
rows) and the state follows the actual values, as the baseline is scored. A served request therefore gives ETS the
same forecast as evaluation when it holds the series from its start.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: An ETS form: (error, trend, damped, seasonal), statsmodels' names.
EtsForm = tuple[str, str | None, bool, str | None]
#: The file beside the network's weights (and in the served bundle) holding a forecast blend's ETS parameters.
ETS_PARTNER_FILE = "ets_partner.json"
#: The network's weight in a forecast blend. Equal weights, not weights chosen on the validation part: with a few
#: dozen validation windows the chosen weight was noise, and did worse than the plain average on 9 of the quality
#: suite's 13 series (the forecast-combination puzzle of the forecasting literature).
NETWORK_WEIGHT = 0.5


def heuristic_rows(season: int) -> int:
    """Rows from which ETS takes its initial states from the first cycles rather than optimising them: two full
    cycles and two rows, and what statsmodels' heuristic itself needs (10 rows and a cycle)."""
    return max(10 + 2 * (season // 2), 2 * season + 2)


def ets_model(series: np.ndarray, form: EtsForm, season: int, heuristic: bool | None = None) -> Any:
    """statsmodels' ETSModel of ``form`` on ``series``; its initial states from the first cycles (far faster than
    optimised with long seasons, the same forms) when ``heuristic`` (default: when the series is long enough)."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    error, trend, damped, seasonal = form
    if heuristic is None:
        heuristic = len(series) >= heuristic_rows(season)
    return ETSModel(
        series,
        error=error,
        trend=trend,
        damped_trend=damped,
        seasonal=seasonal,
        seasonal_periods=season if seasonal else None,
        initialization_method="heuristic" if heuristic else "estimated",
    )


def forecasts_from(smoothed: Any, origins: np.ndarray, horizon: int) -> np.ndarray:
    """(N, horizon) forecasts of a smoothed ETS results object from each origin (a row of the series it smoothed,
    or its length for the steps after it), each from the rows before its origin alone."""
    n_rows = int(smoothed.model.nobs)
    out = np.empty((len(origins), horizon))
    if horizon == 1 and (origins < n_rows).all():  # one step from every row: the fitted values, in one pass
        out[:, 0] = np.asarray(smoothed.fittedvalues)[origins]
        return out
    for i, origin in enumerate(origins):
        out[i] = smoothed.predict(start=int(origin), end=int(origin) + horizon - 1, dynamic=0)
    return out


@dataclass(frozen=True)
class EtsPartner:
    """What a forecast blend needs of ETS: per target its form, fitted parameters and initialisation, the season,
    and the network's weight."""

    forms: list[EtsForm]
    params: list[np.ndarray]
    heuristic: list[bool]
    season: int
    weight: float = NETWORK_WEIGHT

    @property
    def form_names(self) -> list[str]:
        """Hyndman's ETS(error, trend, season) label per target, e.g. ``ETS(M,Ad,M)``."""
        letter = {None: "N", "add": "A", "mul": "M"}
        return [f"ETS({letter[e]},{letter[t]}{'d' if damped else ''},{letter[s]})" for e, t, damped, s in self.forms]

    @property
    def min_rows(self) -> int:
        """Rows a request must hold for every target's initialisation (its first cycles)."""
        return max(heuristic_rows(self.season) if heuristic else 4 for heuristic in self.heuristic)

    def forecasts(self, series: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
        """(N, horizon, targets) ETS forecasts from ``origins`` of ``series`` (rows, targets) in original units."""
        out = np.empty((len(origins), horizon, series.shape[1]))
        for j, (form, params, heuristic) in enumerate(zip(self.forms, self.params, self.heuristic)):
            smoothed = ets_model(series[:, j], form, self.season, heuristic).smooth(params)
            out[:, :, j] = forecasts_from(smoothed, np.asarray(origins, dtype=np.intp), horizon)
        return out

    def blend(self, network: np.ndarray, ets: np.ndarray) -> np.ndarray:
        """The weighted average of the network's forecasts and ETS's (same shapes)."""
        return self.weight * network + (1.0 - self.weight) * ets

    def save(self, folder: Path) -> Path:
        """JSON, not a pickle: the bundle's parameters stay data that loading cannot run."""
        fields = {**dataclasses.asdict(self), "params": [list(map(float, params)) for params in self.params]}
        path = Path(folder) / ETS_PARTNER_FILE
        path.write_text(json.dumps(fields))
        return path


def load_ets_partner(folder: Path) -> EtsPartner | None:
    """The forecast blend saved in ``folder``, or None when its model is the network alone."""
    path = Path(folder) / ETS_PARTNER_FILE
    if not path.is_file():
        return None
    fields = json.loads(path.read_text())
    forms = [(error, trend, bool(damped), seasonal) for error, trend, damped, seasonal in fields.pop("forms")]
    params = [np.asarray(values, dtype=np.float64) for values in fields.pop("params")]
    return EtsPartner(forms=forms, params=params, **fields)
