"""Classification metrics computed from logits, checked against scikit-learn in the tests.

torch is imported only where logits are scored (the training stages): evaluate and report
read confusion matrices and never pay torch's import (seconds per stage).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from transferlab.verdict.stats import wilson

if TYPE_CHECKING:
    import torch


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[i, j]`` counts items of true class ``i`` predicted as ``j``."""
    idx = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), 0.0)


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of every class (0 where undefined)."""
    tp = np.diag(cm).astype(float)
    predicted, actual = cm.sum(0), cm.sum(1)
    return {
        "precision": _ratio(tp, predicted),
        "recall": _ratio(tp, actual),
        "f1": _ratio(2 * tp, predicted + actual),
        "support": actual,
    }


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    return per_class(cm)["f1"]


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes that occur in the labels or the predictions."""
    present = (cm.sum(0) + cm.sum(1)) > 0
    return float(per_class_f1(cm)[present].mean()) if present.any() else 0.0


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the classes present in the labels."""
    actual = cm.sum(1)
    present = actual > 0
    return float((np.diag(cm)[present] / actual[present]).mean()) if present.any() else 0.0


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width confidence bins
    weighted by how many predictions fall in each."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def bootstrap_ci(
    y: np.ndarray, pred: np.ndarray, num_classes: int, *, resamples: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of accuracy and macro-F1 over test-set resamples.

    They say how much of a difference between two models the test split's size can resolve.
    """
    rng = np.random.default_rng(seed)
    n = len(y)
    idx = rng.integers(0, n, size=(resamples, n))
    accs = (y[idx] == pred[idx]).mean(1)
    f1s = np.array([macro_f1(confusion_matrix(y[i], pred[i], num_classes)) for i in idx])
    q = [2.5, 97.5]
    (acc_lo, acc_hi), (f1_lo, f1_hi) = np.percentile(accs, q), np.percentile(f1s, q)
    return {"accuracy": (float(acc_lo), float(acc_hi)), "macro_f1": (float(f1_lo), float(f1_hi))}


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, num_classes: int, *, bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    from torch.nn import functional as F

    y = labels.numpy()
    probs = F.softmax(logits.float(), dim=1).numpy()
    pred = probs.argmax(1)
    cm = confusion_matrix(y, pred, num_classes)
    pc = per_class(cm)
    out: dict[str, Any] = {
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": balanced_accuracy(cm),
        "macro_f1": macro_f1(cm),
        "nll": float(F.cross_entropy(logits.float(), labels).item()),
        "ece": expected_calibration_error(probs, y),
        "confusion": cm.tolist(),
        "per_class": {k: v.tolist() for k, v in pc.items()},
    }
    # Wilson's interval for the accuracy: exact enough at any n, and never [x, 1.0] when
    # there are errors (a percentile bootstrap of 268/269 right would reach 1.0).
    out["accuracy_ci95"] = list(wilson(int((pred == y).sum()), len(y)))
    if bootstrap:
        ci = bootstrap_ci(y, pred, num_classes, resamples=bootstrap, seed=seed)
        out["macro_f1_ci95"] = list(ci["macro_f1"])
    return out
