"""MLflow's pyfunc wrapper around a bundle's predictor.

Every registered model names this module (``lstmflow.tracking.serving.LstmflowModel``) in the file MLflow logs as its
code, so it stays at this path: models registered by any earlier lstmflow load with the current one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

from lstmflow.serving.predictors import BadRequest, load_predictor


class LstmflowModel(PythonModel):
    """MLflow's wrapper around the bundle's :class:`Forecaster`, :class:`Classifier` or :class:`Generator`."""

    def load_context(self, context: Any) -> None:
        self.predictor = load_predictor(Path(context.artifacts["bundle"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """The predictor's answer; a bad request is MLflow's invalid-parameter error (HTTP 400), not a 500."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        try:
            return self.predictor.predict(pd.DataFrame(model_input))
        except BadRequest as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
