"""Per-image predictions: what each training run leaves for the verdict.

Every run scores itself on the validation and test images as its last step and writes
``results/<run>/predictions.json``: for each split the image ids (manifest paths), true
labels, predicted classes and the predicted class's probability, plus that run's test
metrics. Scoring is part of the run's own DVC stage, so a change to a head re-scores only
the heads, and evaluate only aggregates: it never loads a model. Anyone holding these files
can recompute every comparison in the report.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from transferlab import layout
from transferlab._io import write_json
from transferlab.verdict.metrics import classification_metrics

Scored = tuple[torch.Tensor, torch.Tensor, list[str]]  # logits, labels, image ids


def split_record(logits: torch.Tensor, labels: torch.Tensor, ids: list[str]) -> dict[str, Any]:
    """Per-image outcome of one split, aligned with ``ids``."""
    probs = F.softmax(logits.float(), dim=1)
    top, pred = probs.max(dim=1)
    return {
        "ids": list(ids),
        "labels": labels.tolist(),
        "pred": pred.tolist(),
        "prob": [round(float(p), 5) for p in top],
        "accuracy": float((pred == labels).float().mean()),
        "nll": float(F.cross_entropy(logits.float(), labels)),
    }


def write_predictions(
    run: str,
    *,
    manifest_sha256: str,
    classes: list[str],
    val: Scored,
    test: Scored,
    split: str = "split",
    shifted: dict[str, Scored] | None = None,
) -> dict[str, Any]:
    """Write ``results/<run>/predictions.json`` and return its test metrics. ``split`` names
    the manifest column (the splitting) that ``val`` and ``test`` come from; ``shifted`` holds
    the test images under each shift of the robustness view (params: shift), if any."""
    test_metrics = classification_metrics(test[0], test[1], len(classes))
    write_json(
        layout.predictions(run),
        {
            "run": run,
            "manifest_sha256": manifest_sha256,
            "split": split,
            "classes": classes,
            "val": split_record(*val),
            "test": split_record(*test),
            "test_metrics": test_metrics,
            "shifted": {kind: split_record(*scored) for kind, scored in (shifted or {}).items()},
        },
    )
    return test_metrics


def write_curve_point(
    point: str,
    *,
    model: str,
    seed: int,
    size: float,
    labels: Any,
    ids: list[str],
    classes: list[str],
    summary: dict[str, Any],
) -> None:
    """``results/<point>/point.json`` beside a learning-curve point's predictions: the
    fraction, the images it trained on (in all and per class), and what its own grid search
    on validation picked."""
    per_class = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    write_json(
        layout.results_dir(point) / "point.json",
        {
            "model": model,
            "seed": seed,
            "size": size,
            "n_train": int(per_class.sum()),
            "per_class": per_class.tolist(),
            "train_ids": list(ids),  # the subset's images (manifest paths): nested, seeded
            "val_acc": summary["val_acc"],
            "val_loss": summary["val_loss"],
            "train_time_s": summary["train_time_s"],
            "search_time_s": summary.get("search_time_s"),
            "grid": summary["protocol"]["grid"],
            "picked": summary["protocol"]["picked"],
            # end to end: the optimizer steps the picked run took (the main run's budget) and
            # whether it converged; a head's point has neither
            "steps": summary.get("steps"),
            "converged": summary.get("converged"),
        },
    )
