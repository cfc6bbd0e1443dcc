"""The `search` section: an Optuna study's settings and its space, one entry per searched key.

Whether each space key fits the pipeline is checked with the pipeline itself, in :mod:`lstmflow.config.pipeline`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lstmflow.config.base import Strict
from lstmflow.config.tasks import Direction

#: The top-level sections a search may vary: the data are prepared once per search, the rest does not train.
SEARCHABLE_SECTIONS = ("model", "train")

# Aliases defined out of the class: a field named `int` or `float` shadows the builtin inside its class body.
Whole = int
Number = float


class SearchParam(Strict):
    """One searched key: exactly one of `int`, `float` or `categorical`, e.g. `{int: [16, 128], log: true}`."""

    int: list[Whole] | None = Field(None, description="`[low, high]`: whole numbers from low to high, both included.")
    float: list[Number] | None = Field(None, description="`[low, high]`: numbers from low to high.")
    categorical: list[Any] | None = Field(
        None, min_length=1, description="The values to choose from: numbers, text, true/false or null."
    )
    log: bool = Field(
        False,
        description=(
            "`int` and `float`: sample evenly on a log scale (low must be > 0), as for learning rates and layer sizes."
        ),
    )
    step: Number | None = Field(
        None,
        gt=0,
        description=(
            "`int` and `float`: only low, low + step, low + 2 × step, … (a whole number for `int`; default 1 for "
            "`int`, any number for `float`). Not with `log`."
        ),
    )

    @model_validator(mode="after")
    def _one_kind(self) -> SearchParam:
        given = [kind for kind in ("int", "float", "categorical") if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of int, float and categorical, got {given or 'none'}")
        if self.categorical is not None:
            if self.log or self.step is not None:
                raise ValueError("log and step apply to int and float ranges, not to categorical")
            bad = [choice for choice in self.categorical if not isinstance(choice, (bool, int, float, str, type(None)))]
            if bad:
                raise ValueError(f"categorical choices must be numbers, text, true/false or null, got {bad[0]!r}")
            return self
        if len(getattr(self, given[0])) != 2:
            raise ValueError(f"{given[0]}: give [low, high], got {getattr(self, given[0])}")
        low, high = self.bounds
        if low >= high:
            raise ValueError(f"{given[0]}: low must be below high, got [{low}, {high}]")
        if self.log and low <= 0:
            raise ValueError(f"log needs low > 0, got {low}")
        if self.log and self.step is not None:
            raise ValueError("give log or step, not both")
        if self.int is not None and self.step is not None and self.step != round(self.step):
            raise ValueError(f"step of an int range must be a whole number, got {self.step}")
        return self

    @property
    def bounds(self) -> tuple[Any, Any]:
        """``(low, high)`` of a range."""
        given = self.int if self.int is not None else self.float
        assert given is not None, "a categorical entry has no bounds"
        low, high = given
        return low, high

    def probe_values(self) -> list[Any]:
        """Values that stand for the whole entry when checking it against the pipeline: both ends, or every choice."""
        return list(self.categorical) if self.categorical is not None else list(self.bounds)

    def grid_values(self) -> list[Any] | None:
        """Every value of the entry, for `sampler: grid`; None for a range that has no finite grid."""
        if self.categorical is not None:
            return list(self.categorical)
        if self.log or (self.float is not None and self.step is None):
            return None
        low, high = self.bounds
        step = self.step or 1
        count = int((high - low) / step + 1e-9) + 1  # the tolerance keeps high when float division falls just short
        return [type(low)(low + index * step) for index in range(count)]


class SearchSpec(Strict):
    """A hyperparameter search (Optuna): trials train with sampled values of `space`, the best is registered."""

    trials: int = Field(
        20,
        gt=0,
        description=(
            "Trials the study runs in all, over every call: completed, pruned and failed trials count (an interrupted "
            "one is run again and counts once). Raise it to continue a finished search."
        ),
    )
    timeout: float | None = Field(
        None,
        gt=0,
        description=(
            "Seconds for this call: no trial starts after it and running ones finish; the next call continues the "
            "study."
        ),
    )
    sampler: Literal["tpe", "random", "grid", "cmaes"] = Field(
        "tpe",
        description=(
            "How values are chosen: `tpe` (Bayesian, Optuna's default), `random`, `grid` (every combination, in random "
            "order; needs `categorical`, `int` or stepped `float` entries; `trials` is capped at the grid's size) or "
            "`cmaes` (CMA-ES, for numeric entries). Seeded from `train.seed` and each trial's number: the same search "
            "draws the same values."
        ),
    )
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median",
        description=(
            "Stops unpromising trials from the per-epoch `metric`: `median` (worse than the median of completed trials "
            "at the same epoch), `hyperband` or `none`."
        ),
    )
    startup_trials: int = Field(5, ge=0, description="`median`: trials that must complete before any is pruned.")
    min_epochs: int = Field(
        1, ge=1, description="Epochs every trial trains before it may be pruned (`hyperband`: its smallest budget)."
    )
    metric: str = Field(
        "val_loss",
        description=(
            "The per-epoch validation metric to optimise: `val_loss` for every task, `val_accuracy` (classify), "
            "`val_perplexity` (language_model), `val_token_accuracy` (translate) or `val_cer` (transcribe). A "
            "trial's value is the metric at its best epoch (lowest val_loss: the weights it keeps)."
        ),
    )
    direction: Literal["minimize", "maximize"] | None = Field(
        None, description="Whether `metric` should go down or up. Default: up for accuracy, down for the rest."
    )
    parallel: int = Field(
        1,
        ge=1,
        description=(
            "Trials training at once on this machine, each in its own process (each uses `train.threads` cores)."
        ),
    )
    storage: str | None = Field(
        None,
        description=(
            "Where the study lives: null for a journal file in the project (`runs/NAME/optuna.journal`, safe for "
            "several local processes), `team` for the Optuna database of the team stack this checkout started "
            "(`lstmflow up --team`) or joined (`lstmflow connect`), or an SQLAlchemy URL (e.g. "
            "`postgresql://user:pass@host/db`) that workers on several machines share."
        ),
    )
    space: dict[str, SearchParam] = Field(
        min_length=1,
        description=(
            "The searched keys, each a key of the pipeline as `--set` writes it (`model.layers[0].lstm.units`, "
            "`train.optimizer.lr`; `model.` and `train.` keys only) mapped to `{int: [low, high]}`, `{float: [low, "
            "high]}` or `{categorical: [a, b, …]}`, with `log: true` or `step:` for ranges."
        ),
    )

    @field_validator("storage")
    @classmethod
    def _a_url(cls, value: str | None) -> str | None:
        if value is not None and value != "team" and "://" not in value:
            raise ValueError(
                "must be `team` or an SQLAlchemy URL such as postgresql://user:pass@host/db or sqlite:///path, got "
                f"{value!r}"
            )
        return value

    @model_validator(mode="after")
    def _grid_is_finite(self) -> SearchSpec:
        if self.sampler == "grid":
            endless = [key for key, param in self.space.items() if param.grid_values() is None]
            if endless:
                raise ValueError(
                    f"sampler grid needs a finite set of values for every key; give {endless[0]} choices, an int range "
                    "or a float step (and no log)"
                )
        return self

    def resolved_direction(self) -> Direction:
        """The given direction, else the one the metric improves in."""
        return self.direction or ("maximize" if self.metric.endswith("accuracy") else "minimize")

    def grid(self) -> dict[str, list[Any]]:
        """Every value of every key, for `sampler: grid`."""
        return {key: param.grid_values() or [] for key, param in self.space.items()}
