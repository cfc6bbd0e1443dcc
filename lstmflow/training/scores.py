"""Classification scores shared by the training loop (its validation part) and evaluation (the test part and the
baselines): numpy only, so a training child that imports them pays for nothing else."""

from __future__ import annotations

import numpy as np


def accuracy_and_macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-averaged F1 over the classes in the truth or the predictions, as scikit-learn's
    ``f1_score(average="macro")``. By hand so that a classifier's training child never imports scikit-learn (a
    second or more of every run's fixed cost) just to score its validation part; evaluation scores with it too."""
    labels, coded = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    truth, predicted = coded[: len(y_true)], coded[len(y_true) :]
    hits = np.bincount(truth[truth == predicted], minlength=len(labels))
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (true count + predicted count), never 0/0 for a class seen in either
    f1 = 2 * hits / (np.bincount(truth, minlength=len(labels)) + np.bincount(predicted, minlength=len(labels)))
    return {"accuracy": float(np.mean(truth == predicted)), "macro_f1": float(f1.mean())}
