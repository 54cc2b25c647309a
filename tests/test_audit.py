"""bench/audit.py's scoring of the recommendation rules, on constructed runs (the audit itself
runs the real pipeline: `make audit`)."""

import pytest
from helpers import bench_module

audit = bench_module("audit")


def test_each_rule_picks_from_what_evaluate_wrote():
    details = {
        "verdict": {
            "val_acc": {"features": 0.90, "full": 0.95, "lp-ft": 0.94},
            "best_on_val": "full",
            "tie_set": ["full", "lp-ft", "features"],
            "recommended": "full",
        }
    }
    metrics = {
        "features": {"total_time_s": 3.0},
        "full": {"total_time_s": 100.0},
        "lp-ft": {"total_time_s": 90.0},
    }
    picks = audit.rule_picks(details, metrics, {})
    assert picks == {
        "verdict": "full",
        "best on validation": "full",
        "cheapest of the tie set": "features",
        "always the probe": "features",
        "always full": "full",
    }


def test_summary_counts_regret_coverage_and_wrong_claims():
    rows = [
        {
            "regret": {"verdict": 0.0, "best on validation": 0.02},
            "arm_covered": {"a": True, "b": False},
            "pair_covered": [True],
            "separations": 2,
            "wrong_separations": 1,
            "equivalences": 1,
            "wrong_equivalences": [],
            "truth_gap_finetuned_minus_probe": 0.03,
        },
        {
            "regret": {"verdict": 0.04, "best on validation": 0.0},
            "arm_covered": {"a": True, "b": True},
            "pair_covered": [False],
            "separations": 0,
            "wrong_separations": 0,
            "equivalences": 1,
            "wrong_equivalences": ["b"],
            "truth_gap_finetuned_minus_probe": -0.01,
        },
    ]
    s = audit.summarize(rows)
    assert s["regret"]["verdict"]["mean"] == pytest.approx(0.02) and s["regret"]["verdict"]["worst"] == 0.04
    assert s["arm_coverage"] == pytest.approx(0.75) and s["pair_coverage"] == pytest.approx(0.5)
    assert s["wrong_separation_share"] == pytest.approx(0.5) and s[
        "wrong_equivalence_share"
    ] == pytest.approx(0.5)
    assert s["truth_gap_mean"] == pytest.approx(0.01)
