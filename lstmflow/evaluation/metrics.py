"""Test scores, always beside the naive baseline they must beat: forecasts (seasonal-naive) and classifiers
(the majority class).

Evaluation and the gate share these definitions. For forecasts, MASE divides by the in-sample MAE of the
seasonal-naive forecast on the training part (Hyndman & Koehler, 2006), which makes scores comparable across series
of different scales; with several targets one pooled scale is used. Classification rates come from scikit-learn;
the confusion matrix and log loss stay here (see their docstrings for why).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from lstmflow.training.scores import accuracy_and_macro_f1


def _pair(y: np.ndarray, yhat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, yhat = np.asarray(y, dtype=np.float64), np.asarray(yhat, dtype=np.float64)
    if y.shape != yhat.shape:
        raise ValueError(f"truth and forecast must have the same shape, got {y.shape} and {yhat.shape}")
    if y.size == 0:
        raise ValueError("cannot score an empty forecast")
    return y, yhat


def mse(y: np.ndarray, yhat: np.ndarray) -> float:
    y, yhat = _pair(y, yhat)
    return float(np.mean((y - yhat) ** 2))


def rmse(y: np.ndarray, yhat: np.ndarray) -> float:
    return float(np.sqrt(mse(y, yhat)))


def mae(y: np.ndarray, yhat: np.ndarray) -> float:
    y, yhat = _pair(y, yhat)
    return float(np.mean(np.abs(y - yhat)))


def smape(y: np.ndarray, yhat: np.ndarray) -> float:
    """Symmetric MAPE in percent (0 to 200); a point where truth and forecast are both 0 counts as 0 error."""
    y, yhat = _pair(y, yhat)
    denominator = np.abs(y) + np.abs(yhat)
    ratio = np.divide(2.0 * np.abs(y - yhat), denominator, out=np.zeros_like(y), where=denominator > 0)
    return float(100.0 * np.mean(ratio))


def seasonal_naive(history: np.ndarray, origins: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Repeat the last observed season before each origin.

    Step j from origin t0 forecasts ``history[t0 + j - season * (j // season + 1)]``, always a row before t0,
    so the baseline has no look-ahead. ``history`` is (T, k) (or (T,)); the result is (N, horizon, k)
    (or (N, horizon)).
    """
    if season < 1 or horizon < 1:
        raise ValueError(f"season and horizon must be >= 1, got season {season} and horizon {horizon}")
    origins = np.asarray(origins, dtype=np.intp)
    steps = np.arange(horizon)
    lags = season * (steps // season + 1)
    index = origins[:, None] + steps[None, :] - lags[None, :]  # (N, horizon)
    if index.size and index.min() < 0:
        raise ValueError(f"origin {origins.min()} is too early for season {season}: it needs {season} earlier rows")
    return np.asarray(history)[index]


def mase_scale(train: np.ndarray, season: int) -> float:
    """In-sample MAE of the seasonal-naive forecast at lag ``season`` on the training values (all columns pooled)."""
    train = np.asarray(train, dtype=np.float64)
    if len(train) <= season:
        raise ValueError(f"the MASE scale needs more than season {season} training rows, got {len(train)}")
    return float(np.mean(np.abs(train[season:] - train[:-season])))


def forecast_metrics(
    y: np.ndarray, yhat: np.ndarray, naive: np.ndarray, scale: float, baseline: np.ndarray | None = None
) -> dict[str, float]:
    """MSE, RMSE, MAE, sMAPE and MASE of the model, of the naive forecast (``naive_*``) and, when given, of the
    strong baseline's (``baseline_*``); MASE is NaN when the scale is 0."""
    metrics: dict[str, float] = {}
    forecasts = [("", yhat), ("naive_", naive)] + ([("baseline_", baseline)] if baseline is not None else [])
    for prefix, forecast in forecasts:
        error = mae(y, forecast)
        metrics[f"{prefix}mse"] = mse(y, forecast)
        metrics[f"{prefix}rmse"] = rmse(y, forecast)
        metrics[f"{prefix}mae"] = error
        metrics[f"{prefix}smape"] = smape(y, forecast)
        metrics[f"{prefix}mase"] = error / scale if scale > 0 else float("nan")
    return metrics


# ------------------------------------------------------------------------------------------------ classification
#
# Per-class rates follow scikit-learn's ``zero_division=0``: a class never predicted has precision 0 and a class
# absent from the truth has recall 0, silently, since both are ordinary on a small test part. Macro-F1 averages
# only over classes that occur in the truth or the predictions (scikit-learn's default label set): a class absent
# from both says nothing about the model, and counting it as F1 = 0 (or 1) would move the score with the number of
# labels the training part held. scikit-learn is imported where it is used: it costs seconds, and forecasts and
# the CLI never need it.

_METRIC_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes) int64: row = true class, column = predicted class.

    One ``bincount`` rather than scikit-learn's ``confusion_matrix``, which would replace no line here: the labels
    must be checked first either way, as scikit-learn drops a label outside ``labels`` without a word.
    """
    y_true, y_pred = _label_pair(y_true, y_pred, n_classes)
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """accuracy, macro_f1, and ``precision_<class>`` / ``recall_<class>`` per class.

    Class names become part of MLflow metric keys, which allow only letters, digits and ``_ - . / space``: any
    other character turns into ``_`` (a name that then collides with another gets ``_<class index>`` appended).
    """
    from sklearn.metrics import precision_recall_fscore_support

    y_true, y_pred = _label_pair(y_true, y_pred, len(class_names))
    metrics = accuracy_and_macro_f1(y_true, y_pred)
    precision, recall, _, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(len(class_names)), zero_division=0
    )
    for name, class_precision, class_recall in zip(metric_names(class_names), precision, recall, strict=True):
        metrics[f"precision_{name}"] = float(class_precision)
        metrics[f"recall_{name}"] = float(class_recall)
    return metrics


def majority_baseline(train_labels: np.ndarray, y_true: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 of always predicting the most frequent training class (the lowest index on a tie).

    The class is chosen on the training part, never the test part, so the baseline cannot peek at what it scores.
    """
    train_labels = _labels(train_labels, n_classes, "training label")
    if train_labels.size == 0:
        raise ValueError("the majority baseline needs at least one training label")
    majority = int(np.argmax(np.bincount(train_labels, minlength=n_classes)))
    y_true = np.asarray(y_true)
    summary = accuracy_and_macro_f1(*_label_pair(y_true, np.full(y_true.shape, majority), n_classes))
    return {"majority_accuracy": summary["accuracy"], "majority_macro_f1": summary["macro_f1"]}


def log_loss(y_true: np.ndarray, probabilities: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log-probability of the true class (nats); probabilities are clipped to ``eps`` so that a
    confidently wrong prediction costs about 27.6, not infinity.

    Kept rather than scikit-learn's ``log_loss``, which clips at float64's machine epsilon (a cost of 36.0) and
    cannot be told otherwise, rescales rows that do not sum to 1, and refuses the gate's one-column table (the
    probability each sample's true label got, scored with every label 0).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must be (N, classes), got shape {probabilities.shape}")
    y_true = _labels(y_true, probabilities.shape[1], "truth")
    if y_true.shape != probabilities.shape[:1] or y_true.size == 0:
        raise ValueError(f"need one true label per row of probabilities, got {y_true.shape} and {probabilities.shape}")
    picked = probabilities[np.arange(len(y_true)), y_true]
    return float(-np.mean(np.log(np.clip(picked, eps, 1.0))))


def metric_names(class_names: Sequence[str]) -> list[str]:
    """Class names made safe for MLflow metric keys, one per class and all distinct."""
    safe = [_METRIC_KEY_UNSAFE.sub("_", str(name)) or "_" for name in class_names]
    counts = Counter(safe)
    return [f"{name}_{index}" if counts[name] > 1 else name for index, name in enumerate(safe)]


def _labels(values: np.ndarray, n_classes: int, what: str) -> np.ndarray:
    """Integer class indices as a flat int64 array, each in 0..n_classes-1."""
    array = np.asarray(values)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must hold integer class indices, got dtype {array.dtype}")
    array = array.astype(np.int64).ravel()
    outside = array[(array < 0) | (array >= n_classes)]
    if outside.size:
        raise ValueError(f"{what} holds class index {outside[0]}, outside 0..{n_classes - 1}")
    return array


def _label_pair(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Truth and prediction as checked class indices of the same, non-zero length."""
    y_true, y_pred = _labels(y_true, n_classes, "truth"), _labels(y_pred, n_classes, "prediction")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"truth and prediction must have the same shape, got {y_true.shape} and {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("cannot score an empty set of predictions")
    return y_true, y_pred
