"""The operations sections, `schedule` and `promote`: when a pipeline retrains and when its new model becomes the
champion. They do not change what trains, so they stay out of the spec's hash."""

from __future__ import annotations

import datetime
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lstmflow.config.base import Strict
from lstmflow.config.tasks import PROMOTE_METRICS, PROMOTE_TESTS, Direction

#: Sections that say when a pipeline runs and what happens to its model afterwards, not what it trains.
OPERATIONS = {"schedule", "promote"}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(value: Any) -> float:
    """Seconds in ``3600``, ``"90m"``, ``"6h"``, ``"1d"`` or ``"1w"``; a ValueError naming the value otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match.group(1)) * _DURATION_SECONDS[match.group(2)]
    else:
        raise ValueError(f"must be seconds or a number with a unit s, m, h, d or w (e.g. '6h', '1d'), got {value!r}")
    if seconds < 60:
        raise ValueError(f"must be at least one minute, got {value!r}")
    return seconds


class ScheduleSpec(Strict):
    """Keras users schedule nothing; a production pipeline retrains as new data arrive: a Prefect deployment."""

    cron: str | None = Field(
        None,
        description=(
            "Cron expression of the retraining times, e.g. `0 3 * * 1` (Mondays at 03:00), read in `timezone`. Give "
            "`cron` or `interval`."
        ),
    )
    interval: float | None = Field(
        None,
        description=(
            "Time between retrainings: seconds, or a number with a unit, e.g. `6h`, `1d`, `1w` (at least a minute). "
            "Give `cron` or `interval`."
        ),
    )
    timezone: str = Field(
        "UTC",
        description=(
            "IANA time zone of the schedule, e.g. `Europe/Berlin` (cron times follow its daylight-saving changes)."
        ),
    )
    active: bool = Field(True, description="False deploys the schedule paused (resume it in the Prefect UI).")
    pool: str = Field(
        "local",
        description=(
            "The Prefect work pool whose worker runs the retraining: `local` is the one `lstmflow up` starts; `gpu` "
            "for GPU machines."
        ),
    )

    @field_validator("interval", mode="before")
    @classmethod
    def _interval_seconds(cls, value: Any) -> Any:
        return None if value is None else duration_seconds(value)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from cronsim import CronSim, CronSimError

        try:
            CronSim(value, datetime.datetime(2026, 1, 1))
        except CronSimError as exc:
            raise ValueError(f"not a valid cron expression {value!r}: {exc}") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as 'UTC' or 'Europe/Berlin'"
            ) from None
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduleSpec:
        if (self.cron is None) == (self.interval is None):
            raise ValueError("give exactly one of cron (e.g. '0 3 * * 1') or interval (e.g. '1d')")
        return self


class PromoteSpec(Strict):
    """The retraining gate: a new model version replaces the champion only when it is better on the same test data,
    and (``beat_baseline``) better than its run's baselines."""

    alias: str = Field(
        "champion", description="The MLflow model alias the gate moves; `lstmflow serve NAME` serves it."
    )
    metric: str | None = Field(
        None,
        description=(
            "Test metric that decides. Default per task: `mae` (forecast; also `rmse`, `smape`, `mase`), `accuracy` "
            "(classify; also `macro_f1`, `log_loss`), `cross_entropy` (language_model; also `perplexity`, "
            "`bits_per_character`), `chrf` (translate; also `bleu`), `cer` (transcribe; also `wer`)."
        ),
    )
    min_gain: float = Field(
        0.0,
        ge=0.0,
        description="Smallest relative improvement over the champion's value that promotes, e.g. 0.02 for 2%.",
    )
    test: Literal["auto", "mcnemar", "diebold_mariano", "sign", "none"] = Field(
        "auto",
        description=(
            "Significance test on the paired test predictions: `auto` is McNemar's for classification, "
            "Diebold–Mariano's for forecasts and the sign test on each test sentence's chrF (translation) or each "
            "utterance's character error rate (speech recognition); language models have none. `none` decides on "
            "the metric alone."
        ),
    )
    alpha: float = Field(
        0.05, gt=0.0, lt=1.0, description="Significance level: the new version must be better with p below it."
    )
    beat_baseline: bool = Field(
        True,
        description=(
            "Promote a version only when its test `metric` beats the baselines its own run logged on the same test "
            "part: strictly better than the naive one (seasonal naive, majority class, unigram), at least as good as "
            "the classical one (`test_baseline_*`) where the task has one; the first version too. A version that "
            "does not is registered but not promoted (tag `lstmflow.gate.verdict: below_baseline`) and the run ends "
            "with a warning. `false`: only the comparison with the champion decides, and a first version is always "
            "promoted. Default `true`."
        ),
    )

    def resolved_metric(self, task: str) -> str:
        return self.metric or next(iter(PROMOTE_METRICS[task]))

    def resolved_direction(self, task: str) -> Direction:
        return PROMOTE_METRICS[task][self.resolved_metric(task)]

    def resolved_test(self, task: str) -> str:
        return PROMOTE_TESTS[task] if self.test == "auto" else self.test
