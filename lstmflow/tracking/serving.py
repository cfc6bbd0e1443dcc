"""MLflow's pyfunc wrapper around a bundle's predictor, and the guard it puts before MLflow's scoring server.

Every registered model names this module (``lstmflow.tracking.serving.LstmflowModel``) in the file MLflow logs as its
code, so it stays at this path: models registered by any earlier lstmflow load with the current one.

What a caller gets back for a request the model cannot answer is one line, never a stack trace: the predictor's
:class:`BadRequest` is MLflow's invalid-parameter error (HTTP 400) with its message, and anything else that fails in
the model is an internal error (500) whose one line names the exception; its traceback goes to the server's log.

MLflow's scoring server (``mlflow models serve``, and ``lstmflow serve``, which runs it) reads the body and parses
its JSON before any model code runs: a body nested 100,000 levels deep crashes that parser (a 500 without a
message), and every error it answers carries the whole request in its message. Loading the model therefore wraps
the server's request handler (:func:`guard_scoring_server`), in the serving process only and where the handler has
the shape this was written against: the raw body is checked first (:func:`lstmflow.serving.limits.check_body`: size
413, nesting 400, true/false cells 400, each bound set by an environment variable), and error answers are cut to one
line without the request or a stack trace. What stays out of reach: the body is already in memory when the check
runs (a reverse proxy's body limit bounds that), and a server whose MLflow handler differs runs unguarded, with a
warning in its log. See :mod:`lstmflow.serving.limits` for the bounds and :mod:`lstmflow.serving.files` for which
files a request may name.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

from lstmflow.serving.limits import TooLarge, check_body, check_no_booleans, check_rows
from lstmflow.serving.predictors import BadRequest, load_predictor

_logger = logging.getLogger(__name__)
#: The longest message an error answer carries; the rest is cut.
MESSAGE_LIMIT = 1000


class LstmflowModel(PythonModel):
    """MLflow's wrapper around the bundle's :class:`Forecaster`, :class:`Classifier` or :class:`Generator`."""

    def load_context(self, context: Any) -> None:
        self.predictor = load_predictor(Path(context.artifacts["bundle"]))
        guard_scoring_server()

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """The predictor's answer; a bad request is MLflow's invalid-parameter error (HTTP 400), anything else that
        fails an internal error (500), each with a one-line message."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

        try:
            frame = pd.DataFrame(model_input)
            check_rows(len(frame))
            return self.predictor.predict(frame)
        except BadRequest as exc:
            raise _one_line_error(str(exc), INVALID_PARAMETER_VALUE) from None
        except MlflowException:
            raise
        except Exception as exc:
            _logger.exception("the model failed on a request")
            message = (
                f"the model failed on this request ({type(exc).__name__}: {exc}); the server's log has the details"
            )
            raise _one_line_error(message, INTERNAL_ERROR) from None


def one_line(message: str) -> str:
    """An error message as a caller gets it: MLflow's wrapping (the request echoed back, the schema) taken off,
    one line, at most :data:`MESSAGE_LIMIT` characters."""
    if message.startswith("Failed to predict data '") and "\nError: " in message:
        message = message.rpartition("\nError: ")[2]
    if message.startswith("Failed to enforce schema of data '") and ". Error: " in message:
        message = message.rpartition(". Error: ")[2]
    message = message.partition("\nInput: ")[0]  # the JSON parser's error echoes the whole body after it
    message = message.partition(" IMPORTANT: ")[0]  # MLflow's note on its 2.0 protocol change, after the reason
    message = re.sub(r"\s+", " ", message).strip()
    return message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 1] + "…"


def _one_line_error(message: str, error_code: int) -> Any:
    from mlflow.exceptions import MlflowException

    error = MlflowException(one_line(message), error_code=error_code)
    error.lstmflow_message = error.message  # type: ignore[attr-defined]  # MLflow's server rewrites .message
    return error


def guard_scoring_server() -> bool:
    """Wrap MLflow's scoring-server request handler with lstmflow's checks (once per process); whether it is
    guarded. Harmless outside a server: the handler is only called for HTTP requests."""
    try:
        from mlflow.pyfunc import scoring_server
    except ImportError:  # pragma: no cover - MLflow without its server extras
        return False
    handler = getattr(scoring_server, "invocations", None)
    if getattr(handler, "lstmflow_guard", False):
        return True
    response_type = getattr(scoring_server, "InvocationsResponse", None)
    if (
        handler is None
        or response_type is None
        or getattr(response_type, "_fields", None)
        != (
            "response",
            "status",
            "mimetype",
        )
    ):
        _logger.warning(
            "this MLflow's scoring server differs from the one lstmflow guards: request size and nesting limits are "
            "off, and errors may carry stack traces"
        )
        return False
    scoring_server.invocations = _guarded(handler, response_type)
    return True


def _guarded(handler: Any, response_type: Any) -> Any:
    from mlflow.exceptions import MlflowException

    def invocations(data: Any, content_type: Any, model: Any, input_schema: Any) -> Any:
        def refuse(message: str, status: int, code: str) -> Any:
            body = json.dumps({"error_code": code, "message": one_line(message)})
            return response_type(response=body, status=status, mimetype="application/json")

        try:
            if isinstance(data, (bytes, bytearray, str)):
                raw = data.encode() if isinstance(data, str) else bytes(data)
                check_body(raw)
                if "json" in str(content_type or "").lower():
                    check_no_booleans(raw)
        except TooLarge as exc:
            return refuse(str(exc), 413, "REQUEST_LIMIT_EXCEEDED")
        except BadRequest as exc:
            return refuse(str(exc), 400, "BAD_REQUEST")
        try:
            return handler(data, content_type, model, input_schema)
        except MlflowException as exc:
            message = getattr(exc, "lstmflow_message", None) or exc.message
            from mlflow.protos.databricks_pb2 import ErrorCode

            raise MlflowException(one_line(message), error_code=ErrorCode.Value(exc.error_code)) from None
        except Exception as exc:  # a parser's crash on what the caller sent (the model's own are caught above)
            _logger.exception("the request could not be read")
            return refuse(f"the request could not be read ({type(exc).__name__}: {exc})", 400, "BAD_REQUEST")

    invocations.lstmflow_guard = True  # type: ignore[attr-defined]
    return invocations
