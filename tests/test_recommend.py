"""The recommendation and the rule-of-thumb answers, on constructed per-image predictions."""

import numpy as np
import pytest

from transferlab.report.sections import claims
from transferlab.verdict.evaluation import compare_all, verdict
from transferlab.verdict.recommend import answer_better, answer_similar, domain_of, recommend
from transferlab.verdict.stats import pair_of, paired_test


def _correct(acc: dict[str, float], n: int, seed: int = 0, shared: float = 0.8) -> dict[str, np.ndarray]:
    """0/1 outcomes on n images: models share a common 'easy image' component, as real
    models on one test set do, so pairs are correlated like real ones."""
    rng = np.random.default_rng(seed)
    ease = rng.random(n)
    out = {}
    for m, a in acc.items():
        own = rng.random(n)
        score = shared * ease + (1 - shared) * own
        out[m] = (score >= np.quantile(score, 1 - a)).astype(float)[None, :]
    return out


def _setup(acc, n=4000, train_images=1000, times=None, val=None, seed=0):
    correct = _correct(acc, n, seed)
    comparisons = compare_all(correct, [0])
    val = val or {m: (float(c.mean()), 0.1) for m, c in correct.items()}
    times = times or {}
    cost = {m: times.get(m, 100.0) for m in acc}
    v = verdict(val, comparisons, cost)
    metrics = {
        m: {"test_acc": float(correct[m].mean()), "total_time_s": cost[m], "train_time_s": cost[m]}
        for m in acc
    }
    ft = max(
        (m for m in acc if m in ("full", "lp-ft", "progressive", "partial")),
        key=lambda m: val[m][0],
        default=None,
    )
    gap = pair_of(comparisons, ft, "features") if ft and "features" in acc else None
    return recommend(metrics, v, gap, train_images=train_images, num_classes=10), v, comparisons


@pytest.mark.parametrize(
    ("train_images", "acc", "scenario", "domain"),
    [
        (2_000, {"features": 0.95, "full": 0.952, "frozen": 0.90}, 1, "similar"),
        (50_000, {"features": 0.90, "full": 0.905, "partial": 0.85}, 2, "similar"),
        (1_000, {"features": 0.60, "partial": 0.80, "full": 0.85}, 3, "different"),
        (200_000, {"features": 0.50, "full": 0.90, "scratch": 0.85}, 4, "different"),
    ],
)
def test_four_scenarios_from_paired_intervals(train_images, acc, scenario, domain):
    r, _, _ = _setup(acc, train_images=train_images)
    assert (r.scenario, r.domain) == (scenario, domain)
    assert f"Scenario {scenario}," in r.text and "paired 95% interval" in r.text


def test_a_gap_whose_interval_straddles_the_threshold_cannot_tell():
    r, _, _ = _setup({"features": 0.90, "full": 0.92}, n=300)
    assert r.domain == "cannot tell" and r.scenario is None
    assert "the data cannot tell whether the domain is similar" in r.text and "Scenario 1 or 3" in r.text


def test_identical_models_rarely_look_like_a_different_domain():
    """Five models of identical true accuracy 0.95 on 269 test images: the old rule
    (largest fine-tuned point estimate - probe > 0.02) fired 25-32% of the time. Choosing the
    fine-tuned model on validation and requiring the paired interval to clear the threshold
    must keep false alarms near the test's level."""
    rng = np.random.default_rng(1)
    fired = old_fired = 0
    sims = 200
    for _ in range(sims):
        test = {
            m: (rng.random(269) < 0.95).astype(float)
            for m in ("features", "full", "lp-ft", "partial", "progressive")
        }
        val = {m: float((rng.random(269) < 0.95).mean()) for m in test}
        tuned = max(("full", "lp-ft", "partial", "progressive"), key=lambda m: val[m])
        pair = paired_test(test[tuned][None], test["features"][None], boot=500)
        fired += domain_of({**pair, "a": tuned, "b": "features"}) == "different"
        old_fired += (
            max(test[m].mean() for m in ("full", "lp-ft", "partial", "progressive")) - test["features"].mean()
            > 0.02
        )
    assert fired / sims <= 0.03, fired
    assert old_fired / sims > 0.1  # the old rule on the same draws: the test has teeth


def test_a_cheaper_model_shown_within_the_margin_replaces_the_best():
    acc = {"features": 0.950, "full": 0.953, "frozen": 0.80}
    # full has the better validation score, features costs a fraction of it
    val = {"features": (0.95, 0.2), "full": (0.96, 0.15), "frozen": (0.8, 0.6)}
    r, v, c = _setup(acc, n=4000, times={"features": 12.0, "full": 300.0, "frozen": 50.0}, val=val)
    assert v["best_on_val"] == "full" and v["equivalent"] == ["features"] and v["worse"] == ["frozen"]
    o = v["outcomes"]["features"]
    # shown: the one-sided family-wise lower bound of features minus full is above -margin
    assert (
        o["outcome"] == "equivalent" and o["lower_family"] > -v["margin"] and o["p_noninferior_holm"] < 0.05
    )
    assert o["diff"] == pytest.approx(pair_of(c, "features", "full")["diff"])
    assert r.recommended == "features" and v["recommended"] == "features"
    assert "within 2 points of it" in r.text and "12.0 s in total" in r.text


def test_a_tie_not_shown_within_the_margin_leaves_the_best_recommended():
    """Not separable is not equivalent: on few images a cheaper model that ties with the
    best is undecided, and the best is recommended."""
    acc = {"features": 0.93, "full": 0.95, "frozen": 0.70}
    val = {"features": (0.93, 0.2), "full": (0.96, 0.15), "frozen": (0.7, 0.6)}
    r, v, _ = _setup(acc, n=300, times={"features": 12.0, "full": 300.0, "frozen": 50.0}, val=val)
    assert set(v["tie_set"]) == {"full", "features"}  # the test split cannot separate them ...
    assert v["undecided"] == ["features"] and v["equivalent"] == []  # ... nor show them alike
    assert v["recommended"] == "full" and r.recommended == "full" and v["open"] == ["features"]
    assert "not being told apart is not being as good" in r.text
    settle = v["outcomes"]["features"]["to_settle"]
    assert settle["images"] is None or settle["images"] > 300
    (u,) = v["unresolved"]
    assert u["model"] == "features" and u["images_to_separate"] > 300


def test_a_clear_winner_is_recommended_alone():
    r, v, _ = _setup({"features": 0.70, "full": 0.95}, n=2000)
    assert v["tie_set"] == ["full"] and r.recommended == "full"
    assert "Every other model is separably worse" in r.text


def test_without_a_probe_similarity_is_not_measured():
    r, _, _ = _setup({"full": 0.9, "frozen": 0.8})
    assert r.gap is None and r.domain == "not measured" and "similarity not measured" in r.text


def _pair(diff, lo, hi, p_holm):
    return {
        "a": "x",
        "b": "y",
        "acc_a": 0.9 + diff,
        "acc_b": 0.9,
        "diff": diff,
        "ci95": [lo, hi],
        "ci_family": [lo, hi],
        "p": p_holm,
        "p_holm": p_holm,
    }


@pytest.mark.parametrize(
    ("pair", "better", "similar"),
    [
        (_pair(0.05, 0.03, 0.07, 0.001), "yes", "no"),  # clearly better, by more than the margin
        (_pair(-0.05, -0.07, -0.03, 0.001), "no", "no"),  # clearly worse
        (_pair(0.002, -0.005, 0.009, 0.6), "no", "yes"),  # equivalent within +-0.02
        (_pair(0.01, -0.02, 0.04, 0.4), "cannot tell", "cannot tell"),  # too uncertain either way
        (_pair(0.01, 0.004, 0.016, 0.01), "yes", "yes"),  # better, but by less than the margin
    ],
)
def test_answers_yes_no_or_cannot_tell(pair, better, similar):
    assert answer_better(pair) == better
    assert answer_similar(pair) == similar


def test_rule_of_thumb_lines_answer_from_the_paired_numbers():
    acc = {"features": 0.90, "features-augmented": 0.95, "frozen": 0.905, "full": 0.97, "scratch": 0.80}
    correct = _correct(acc, 6000)
    comparisons = compare_all(correct, [0])
    val = {m: float(c.mean()) for m, c in correct.items()}
    by = {
        m: {
            "time_per_epoch_s": 0.01 if m.startswith("features") else 3.0,
            "peak_rss_mb": 900.0 + 100 * (m == "full"),
        }
        for m in acc
    }
    lines = claims(by, {"time_s": 5.0, "augment_time_s": 20.0}, comparisons, val)
    answer = {line.split("*")[1]: line.split("**")[1] for line in lines}
    assert answer == {
        "Two-stage trains faster per epoch": "yes",
        "Both reach similar accuracy": "yes",  # frozen vs features: 0.005 apart on 6000 images (10 pairs)
        "Augmentation helps the frozen path": "yes",
        "Cached features cannot use augmentation": "no",
        "Fine-tuning beats frozen features": "yes",
        "Pretraining is worth it": "yes",
        "Fine-tuning needs more memory": "yes",
    }
    small = compare_all(_correct(acc, 60), [0])
    small_lines = claims(by, {"time_s": 5.0, "augment_time_s": 20.0}, small, val)
    assert any("**cannot tell**" in line for line in small_lines)  # 60 images cannot settle it
