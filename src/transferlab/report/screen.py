"""The backbone screen: candidates (backbone.candidates) compared at the cost of a linear
probe, and how well the transferability scores predicted what the probes then measured.

Read by the report from ``results/screen/<key>.json`` (stage screen-backbone). Every
candidate's probe is scored on the same test images, so candidates are compared like the
arms: paired, family-wise (:func:`transferlab.verdict.evaluation.compare_all`), best on validation,
and the tie set of those the test split cannot separate from it.

Kendall's tau between each score and the measured probe accuracy says whether the scores
ranked the candidates as the probes did. With three candidates tau takes only the values
-1, -1/3, 1/3 and 1, and even 1 happens by chance one time in six: it is printed with the
number of candidates and read as an illustration until there are more.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from transferlab.errors import FingerprintMismatch
from transferlab.features.transferability import kendall_tau
from transferlab.selection import Scored, best_index
from transferlab.verdict.evaluation import compare_all
from transferlab.verdict.stats import pair_of, separable

SCORES = {"logme": "LogME", "h_score": "H-score", "knn_val_acc": "k-NN val acc"}


def label(candidate: dict[str, Any]) -> str:
    return f"{candidate['name']} @ {candidate['image_size']} px ({candidate['weights']})"


def summarise(screens: list[dict[str, Any]]) -> dict[str, Any]:
    """Best candidate on validation, paired comparisons with it, the tie set, and Kendall's
    tau of every score against the probes' validation and test accuracy."""
    names = [f"candidate{i}: {label(s['candidate'])}" for i, s in enumerate(screens)]
    ids = screens[0]["test_ids"]
    correct = {}
    for name, s in zip(names, screens, strict=True):
        order = {image: j for j, image in enumerate(s["test_ids"])}
        if sorted(order) != sorted(ids):
            raise FingerprintMismatch("screened candidates were scored on other test images; run dvc repro")
        correct[name] = np.asarray([[s["test_correct"][order[image]] for image in ids]], dtype=float)
    best = names[best_index([Scored(s["probe"]["val_acc"], s["probe"]["val_loss"]) for s in screens])]
    comparisons = compare_all(correct, [0]) if len(screens) > 1 else {"pairs": []}
    paired = {n: pair_of(comparisons, best, n) for n in names if n != best}
    tau = {}
    for key in SCORES:
        scores = [s["scores"][key] for s in screens]
        tau[key] = {
            "val_acc": kendall_tau(scores, [s["probe"]["val_acc"] for s in screens]),
            "test_acc": kendall_tau(scores, [s["probe"]["test_acc"] for s in screens]),
        }
    return {
        "names": names,
        "best": best,
        "paired": paired,
        "tie_set": [best] + [n for n, p in paired.items() if not separable(p)],
        "tau": tau,
    }


def rows(screens: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for i, s in enumerate(screens):
        probe = s["probe"]
        lo, hi = probe["test_ci95"]
        out.append(
            [
                f"candidate{i}",
                label(s["candidate"]),
                f"{s['params']:,}",
                f"{probe['val_acc']:.4f}",
                f"{probe['test_acc']:.4f} [{lo:.3f}, {hi:.3f}]",
                f"{s['extract_time_s']:.1f} s",
                f"{s['images_per_s']:,.0f}",
                f"{s['store_bytes'] / 2**20:.1f} MB",
                *(f"{s['scores'][k]:.3f}" for k in SCORES),
            ]
        )
    return out


HEADER = [
    "key",
    "backbone",
    "parameters",
    "probe val acc",
    "probe test acc [95% CI]",
    "extraction",
    "images/s",
    "store",
    *SCORES.values(),
]
