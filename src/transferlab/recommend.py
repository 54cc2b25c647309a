"""The recommendation: the rule of thumb, placed with measured quantities, against the data.

The decision matrix practitioners quote has two axes, dataset size and similarity to the
backbone's source domain, and four scenarios:

1. small, similar   -> feature extraction: train only a head
2. large, similar   -> fine-tune everything at a low learning rate
3. small, different -> freeze early layers, fine-tune the last blocks
4. large, different -> fine-tune the whole network from the pretrained weights

Here both axes are measured. Size is the number of training images (the threshold, 10,000,
is the one the rule of thumb itself uses). Similarity is how far the linear probe on frozen
features falls behind the best fine-tuned model: when frozen ImageNet features already
separate the classes, the domains are similar for this task; when fine-tuning gains more
than ``gap_threshold``, the features did not fit. The rule's prediction is then checked
against the measured ranking, and where they disagree the measurement wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LARGE_DATASET = 10_000  # training images; "small" below, "large" from here on
GAP_THRESHOLD = 0.02  # accuracy the best fine-tuning must gain over the probe for "different"

FEATURE_EXTRACTION = ("features", "features-augmented", "frozen")
FINE_TUNING = ("full", "lp-ft", "progressive", "partial")

SCENARIOS: dict[int, tuple[str, str, tuple[str, ...]]] = {
    1: ("small data, similar domain", "feature extraction: train only a head", FEATURE_EXTRACTION),
    2: (
        "large data, similar domain",
        "fine-tune everything at a low learning rate",
        ("full", "lp-ft", "progressive"),
    ),
    3: (
        "small data, different domain",
        "freeze early layers, fine-tune the last blocks",
        ("partial", "progressive"),
    ),
    4: ("large data, different domain", "fine-tune the whole network", ("full", "lp-ft", "progressive")),
}


@dataclass(frozen=True)
class Recommendation:
    scenario: int
    train_images: int
    images_per_class: float
    probe_gap: float | None  # best fine-tuned accuracy minus the linear probe's
    predicted: tuple[str, ...]
    best: str
    agrees: bool
    cheapest_near_best: str  # fastest model within `tolerance` of the best
    text: str


def recommend(
    metrics: dict[str, Any],
    *,
    train_images: int,
    num_classes: int,
    tolerance: float = 0.005,
) -> Recommendation:
    """Place the run in the decision matrix and compare the rule with the measurements.

    ``metrics`` is evaluate's output: per model ``test_acc``, ``train_time_s``, and
    ``extract`` with ``time_s`` / ``augment_time_s``.
    """
    models = {k: v for k, v in metrics.items() if k != "extract"}
    if not models:
        raise ValueError("no models to compare")
    acc = {k: v["test_acc"] for k, v in models.items()}
    best = max(acc, key=lambda k: (acc[k], -models[k]["train_time_s"]))

    tuned = [acc[k] for k in FINE_TUNING if k in acc]
    probe = acc.get("features")
    gap = round(max(tuned) - probe, 6) if tuned and probe is not None else None
    large = train_images >= LARGE_DATASET
    different = gap is not None and gap > GAP_THRESHOLD
    scenario = {(False, False): 1, (True, False): 2, (False, True): 3, (True, True): 4}[(large, different)]
    where, rule, predicted = SCENARIOS[scenario]
    agrees = best in predicted

    def cost(k: str) -> float:
        return models[k]["total_time_s"]  # its own training plus what it needed first

    near = [k for k in models if acc[k] >= acc[best] - tolerance]
    cheapest = min(near, key=cost)

    size = f"{train_images:,} training images ({train_images / num_classes:,.0f} per class)"
    if gap is None:
        similarity = "similarity not measured (needs both the features model and a fine-tuned one)"
    else:
        similarity = (
            f"the best fine-tuned model {'beats' if gap >= 0 else 'trails'} the linear probe by "
            f"{abs(gap):.4f} test accuracy "
            f"({'more' if different else 'no more'} than {GAP_THRESHOLD:.2f}: "
            f"{'a different' if different else 'a similar'} domain for this backbone)"
        )
    lines = [
        f"Scenario {scenario}, {where}: {size}; {similarity}.",
        f"The rule of thumb says: {rule} ({', '.join(predicted)}).",
    ]
    if agrees:
        lines.append(f"The measurements agree: the best model is {best} ({acc[best]:.4f}).")
    else:
        lines.append(
            f"The measurements disagree, and they win: the best model is {best} ({acc[best]:.4f}), "
            f"ahead of the rule's best pick "
            + (
                f"{max((k for k in predicted if k in acc), key=lambda k: acc[k])} "
                f"({max(acc[k] for k in predicted if k in acc):.4f})."
                if any(k in acc for k in predicted)
                else "(none of its strategies ran)."
            )
        )
    if cheapest != best:
        lines.append(
            f"Within {tolerance:.3f} of the best, {cheapest} costs least: "
            f"{cost(cheapest):.1f} s against {cost(best):.1f} s (extraction included for the two-stage models, extraction and probe for lp-ft)."
        )
    return Recommendation(
        scenario=scenario,
        train_images=train_images,
        images_per_class=train_images / num_classes,
        probe_gap=gap,
        predicted=predicted,
        best=best,
        agrees=agrees,
        cheapest_near_best=cheapest,
        text=" ".join(lines),
    )
