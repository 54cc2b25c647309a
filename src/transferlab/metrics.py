"""Classification metrics computed from logits, checked against scikit-learn in the tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[i, j]`` counts items of true class ``i`` predicted as ``j``."""
    idx = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)  # 2TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, 0.0)


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes that occur in the labels or the predictions."""
    present = (cm.sum(0) + cm.sum(1)) > 0
    return float(per_class_f1(cm)[present].mean()) if present.any() else 0.0


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    y = labels.numpy()
    pred = logits.argmax(1).numpy()
    cm = confusion_matrix(y, pred, num_classes)
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": macro_f1(cm),
        "nll": float(F.cross_entropy(logits.float(), labels).item()),
        "confusion": cm.tolist(),
    }
