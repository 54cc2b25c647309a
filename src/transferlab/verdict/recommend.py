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
than ``GAP_THRESHOLD``, the features did not fit.

Every judgement is statistical. The gap is the *paired* difference between the best
fine-tuned model (chosen on validation) and the probe on the same test images: "different"
only when its 95% interval lies entirely above the threshold, "similar" only when it lies
entirely below, and otherwise the report says the data cannot tell. The best model is
chosen on validation; the recommendation is the cheapest of it and the models the test data
*show* within verdict.margin of it (see :func:`transferlab.verdict.evaluation.verdict`), and
the rule of thumb "agrees" when one of its strategies is among those (None: its strategies
are undecided against the best, neither shown as good nor separably worse).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transferlab import registry
from transferlab.verdict.stats import separable

LARGE_DATASET = 10_000  # training images; "small" below, "large" from here on
GAP_THRESHOLD = 0.02  # accuracy the best fine-tuning must gain over the probe for "different"

FEATURE_EXTRACTION = registry.in_family("feature-extraction")
FINE_TUNING = registry.in_family("fine-tuning")

# Each scenario's models are those the registry says follow its advice (ModelSpec.scenarios).
SCENARIOS: dict[int, tuple[str, str, tuple[str, ...]]] = {
    1: ("small data, similar domain", "feature extraction: train only a head", registry.advised_in(1)),
    2: ("large data, similar domain", "fine-tune everything at a low learning rate", registry.advised_in(2)),
    3: (
        "small data, different domain",
        "freeze early layers, fine-tune the last blocks",
        registry.advised_in(3),
    ),
    4: ("large data, different domain", "fine-tune the whole network", registry.advised_in(4)),
}


@dataclass(frozen=True)
class Recommendation:
    scenario: int | None  # None: the data cannot tell which column of the matrix
    train_images: int
    images_per_class: float
    gap: dict[str, Any] | None  # paired best-fine-tuned minus probe: diff, ci95, p_holm
    domain: str  # "similar" | "different" | "cannot tell" | "not measured"
    predicted: tuple[str, ...]
    best: str  # chosen on validation
    tie_set: tuple[str, ...]
    recommended: str
    agrees: bool | None  # None: the rule's strategies are undecided against the best
    text: str


def domain_of(gap: dict[str, Any] | None, threshold: float = GAP_THRESHOLD) -> str:
    """Similarity from the paired interval of (best fine-tuned - probe)."""
    if gap is None:
        return "not measured"
    lo, hi = gap["ci95"]
    if lo > threshold:
        return "different"
    if hi < threshold:
        return "similar"
    return "cannot tell"


def _similarity_text(gap: dict[str, Any] | None, domain: str) -> str:
    """The measured domain similarity in words: the paired gap of fine-tuning over the probe."""
    if gap is None:
        return "similarity not measured (needs both the features model and a fine-tuned one)"
    lo, hi = gap["ci95"]
    text = (
        f"the best fine-tuned model ({gap['a']}) minus the linear probe is {gap['diff'] + 0.0:+.4f} "
        f"test accuracy, paired 95% interval [{lo + 0.0:+.4f}, {hi + 0.0:+.4f}]"
    )
    return (
        text
        + {
            "different": f", entirely above {GAP_THRESHOLD:.2f}: a different domain for this backbone",
            "similar": f", entirely below {GAP_THRESHOLD:.2f}: a similar domain for this backbone",
            "cannot tell": f", which straddles {GAP_THRESHOLD:.2f}: the data cannot tell whether the domain is similar",
        }[domain]
    )


def recommend(
    metrics: dict[str, Any],
    verdict: dict[str, Any],
    gap: dict[str, Any] | None,
    *,
    train_images: int,
    num_classes: int,
    tested_on: str = "the test split",
) -> Recommendation:
    """Place the run in the decision matrix and set the rule against the measured verdict.

    ``verdict`` is evaluate's (best on validation, tie set, recommended); ``gap`` the paired
    comparison of the best fine-tuned model against the probe (oriented fine-tuned - probe),
    or None when either is missing.
    """
    models = {k: v for k, v in metrics.items() if k != "extract"}
    if not models:
        raise ValueError("no models to compare")
    best, ties, pick = verdict["best_on_val"], tuple(verdict["tie_set"]), verdict["recommended"]
    large = train_images >= LARGE_DATASET
    domain = domain_of(gap)
    size = f"{train_images:,} training images ({train_images / num_classes:,.0f} per class)"
    similarity = _similarity_text(gap, domain)
    if domain in ("similar", "different"):
        placed = {(False, False): 1, (True, False): 2, (False, True): 3, (True, True): 4}[
            (large, domain == "different")
        ]
        scenario: int | None = placed
        where, rule, predicted = SCENARIOS[placed]
        lines = [
            f"Scenario {scenario}, {where}: {size}; {similarity}.",
            f"The rule of thumb says: {rule} ({', '.join(predicted)}).",
        ]
    else:
        scenario = None
        options = (2, 4) if large else (1, 3)
        predicted = tuple(dict.fromkeys(m for o in options for m in SCENARIOS[o][2]))
        lines = [
            f"Scenario {options[0]} or {options[1]}: {size}; {similarity}.",
            "The rule of thumb says: "
            + " or ".join(f"{SCENARIOS[o][1]} ({', '.join(SCENARIOS[o][2])})" for o in options)
            + ".",
        ]
    margin = verdict.get("margin", GAP_THRESHOLD)
    equivalent = [m for m in verdict.get("equivalent", []) if m in models]
    undecided = [m for m in verdict.get("undecided", []) if m in models]
    worse = [m for m in verdict.get("worse", []) if m in models]
    settled = [best, *equivalent]
    agrees: bool | None = any(m in predicted for m in settled)
    if not agrees and any(m in predicted for m in undecided):
        agrees = None  # its strategies are neither shown as good nor shown worse
    lines.append(
        f"Chosen on validation, the best model is {best} (validation accuracy "
        f"{verdict['val_acc'][best]:.4f}; test {models[best]['test_acc']:.4f})."
    )
    on = tested_on[0].upper() + tested_on[1:]
    if equivalent:
        lines.append(
            f"{on} shows {', '.join(equivalent)} within {margin * 100:g} points of it (one-sided "
            "tests at the margin, Holm-adjusted)"
            + (
                f", so the cheapest is recommended: {pick} ({models[pick]['total_time_s']:.1f} s in total, "
                f"extraction and probe included, against {models[best]['total_time_s']:.1f} s for {best})."
                if pick != best
                else f"; none is cheaper, so {best} is recommended."
            )
        )
    if undecided:
        lines.append(
            f"{', '.join(undecided)}: neither shown within {margin * 100:g} points of {best} nor "
            f"separably worse on {tested_on}; not being told apart is not being as good, so "
            + ("none of them replaces the recommendation." if equivalent else f"{best} is recommended.")
        )
    if worse:
        lines.append(f"Separably worse: {', '.join(worse)}.")
    if not equivalent and not undecided:
        lines.append(f"Every other model is separably worse on {tested_on}: {best} is recommended.")
    if agrees:
        named = ", ".join(m for m in settled if m in predicted)
        lines.append(f"The measurements agree with the rule: its strategies {named} are as good as the best.")
    elif agrees is None:
        lines.append(
            "The measurements cannot yet judge the rule: its strategies "
            f"{', '.join(m for m in undecided if m in predicted)} are undecided against the best."
        )
    else:
        lines.append(
            "The measurements disagree with the rule, and they win: none of its strategies is shown as good as the best."
        )
    return Recommendation(
        scenario=scenario,
        train_images=train_images,
        images_per_class=train_images / num_classes,
        gap=gap,
        domain=domain,
        predicted=predicted,
        best=best,
        tie_set=ties,
        recommended=pick,
        agrees=agrees,
        text=" ".join(lines),
    )


def answer_better(pair: dict[str, Any] | None, margin: float = GAP_THRESHOLD) -> str:
    """ "Is a better than b?": yes when separably better; no when separably worse, or when
    the whole interval lies within +-margin (no gain worth the name); else cannot tell."""
    if pair is None:
        return "not measured"
    lo, hi = pair["ci_family"]
    if separable(pair):
        return "yes" if pair["diff"] > 0 else "no"
    if -margin < lo and hi < margin:
        return "no"
    return "cannot tell"


def answer_similar(pair: dict[str, Any] | None, margin: float = GAP_THRESHOLD) -> str:
    """ "Do a and b reach similar accuracy?": yes when the whole interval lies within
    +-margin; no when they are separable and the interval reaches beyond it; else cannot tell."""
    if pair is None:
        return "not measured"
    lo, hi = pair["ci_family"]
    if -margin < lo and hi < margin:
        return "yes"
    if separable(pair) and (lo >= margin or hi <= -margin or abs(pair["diff"]) >= margin):
        return "no"
    return "cannot tell"
