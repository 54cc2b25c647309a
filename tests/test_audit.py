"""bench/audit.py's scoring of the recommendation rules, on constructed runs (the audit itself
runs the real pipeline: `make audit`)."""

import json

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


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_fold_models_are_scored_as_shipped_and_as_a_procedure(tmp_path, monkeypatch):
    """With five fold models per arm, the regret counts the run export ships (the best on its
    own validation) while the stated intervals are checked against the fold models' mean: the
    pooled test's accuracy is the procedure's, not one fold model's."""
    val = {"features": [0.60, 0.70, 0.65, 0.70, 0.62], "full": [0.80, 0.75, 0.90, 0.85, 0.70]}
    nll = {"features": [1.0, 0.9, 1.0, 0.8, 1.0], "full": [0.5] * 5}
    truth = {"features": [0.60, 0.61, 0.62, 0.63, 0.64], "full": [0.70, 0.72, 0.74, 0.76, 0.78]}
    details = {
        "verdict": {
            "val_acc": {m: sum(v) / 5 for m, v in val.items()},
            "best_on_val": "full",
            "tie_set": ["full"],
            "recommended": "full",
            "equivalent": [],
            "margin": 0.02,
        },
        "models": {
            m: {
                "runs": {
                    str(s): {"run": f"{m}-s{s}", "val": {"accuracy": val[m][s], "nll": nll[m][s]}}
                    for s in range(5)
                }
            }
            for m in val
        },
        "split_sizes": {"train": 96},
        "classes": ["a", "b"],
    }
    metrics = {
        "features": {"total_time_s": 1.0, "test_acc": 0.62, "test_acc_ci_lo": 0.58, "test_acc_ci_hi": 0.66},
        "full": {"total_time_s": 9.0, "test_acc": 0.74, "test_acc_ci_lo": 0.73, "test_acc_ci_hi": 0.75},
    }
    pair = {"a": "full", "b": "features", "diff": 0.12, "ci_family": [0.11, 0.13], "p_holm": 0.001}
    ev = tmp_path / "results" / "evaluate"
    _write(ev / "details.json", details)
    _write(ev / "metrics.json", metrics)
    _write(ev / "comparisons.json", {"pairs": [pair]})
    _write(tmp_path / "results" / "extract" / "extract.json", {})

    def acc(project, run, pool):
        model, seed = run.rsplit("-s", 1)
        return truth[model][int(seed)]

    monkeypatch.setattr(audit, "truth_accuracy", acc)
    row = audit.score_dataset(tmp_path, truth=None)
    # shipped: features fold 3 (0.70 like fold 1, at a lower loss), full fold 2 (0.90)
    assert row["true_acc"] == {"features": 0.63, "full": 0.74}
    assert row["regret"]["verdict"] == 0.0 and row["regret"]["always the probe"] == pytest.approx(0.11)
    # the procedure's truth: features 0.62 (inside [0.58, 0.66]), full 0.74 (inside
    # [0.73, 0.75]); the difference 0.12 inside the pair's family-wise interval
    assert row["arm_covered"] == {"features": True, "full": True}
    assert row["pair_covered"] == [True] and row["separations"] == 1 and row["wrong_separations"] == 0
    assert row["true_acc_runs"]["full"]["2"] == 0.74
    assert row["room_above"] == {}  # features minus full is at most -0.11 on the test


def test_the_cards_warning_is_scored_against_the_verdicts_losses():
    def row(regret, room):
        return {
            "regret": {"verdict": regret},
            "arm_covered": {},
            "pair_covered": [],
            "separations": 0,
            "wrong_separations": 0,
            "equivalences": 0,
            "wrong_equivalences": [],
            "room_above": room,
            "margin": 0.02,
        }

    rows = [row(0.10, {"full": 0.3}), row(0.05, {}), row(0.0, {"full": 0.1}), row(0.01, {})]
    w = audit.summarize(rows)["warning"]
    assert w == {
        "data_sets": 4,
        "shown": 2,
        "losses_above_margin": 2,
        "losses_warned": 1,
        "worst_regret_unwarned": 0.05,
    }
    cells = {"20-0.3": {"per_class": 20, "difficulty": 0.3, "summary": {"warning": w}}}
    assert "| 20 | 0.3 | 4 | 2 | 2 | 1 | 5.0 |" in "\n".join(audit.warning_markdown(cells, False))


def test_the_shipped_run_is_the_best_on_validation_then_lower_loss_then_first_seed():
    runs = {
        "0": {"val": {"accuracy": 0.8, "nll": 0.5}},
        "1": {"val": {"accuracy": 0.9, "nll": 0.6}},
        "2": {"val": {"accuracy": 0.9, "nll": 0.4}},
        "3": {"val": {"accuracy": 0.9, "nll": 0.4}},
    }
    assert audit.shipped_seed(runs) == "2"


def _audit(path, regrets, truth_per_class="2000", command="audit"):
    rows = [
        {"per_class": 20, "difficulty": 0.3, "rep": rep, "regret": {"verdict": r}}
        for rep, r in enumerate(regrets)
    ]
    args = {"truth_per_class": truth_per_class, "distance": "0.0", "folder": "None"}
    data = {"args": args, "seconds": 600, "command": command, "cells": {"20-0.3": {"rows": rows}}}
    _write(path, data)
    return path


def test_two_protocols_are_compared_on_the_data_sets_both_ran(tmp_path, monkeypatch):
    hold = _audit(tmp_path / "audit-hold.json", [0.0, 0.05, 0.10, 0.02])
    folds = _audit(tmp_path / "audit-folds.json", [0.0, 0.01, 0.02])  # rep 3 not run
    monkeypatch.setattr("sys.argv", ["audit.py", "--compare", str(hold), str(folds), "--out", str(tmp_path)])
    audit.main()
    text = (tmp_path / "audit-hold-vs-folds.md").read_text()
    # the three shared draws: hold-out 5.0 on average (worst 10.0), folds 1.0 (worst 2.0);
    # folds lost less twice, the same once
    assert "| 20 | 0.3 | 0 | 3 | 5.0 / 10.0 | 1.0 / 2.0 | 0 | 2 | 1 |" in text
    assert "paired difference folds minus hold -4.0 points" in text
    other = _audit(tmp_path / "audit-small.json", [0.0], truth_per_class="200")
    monkeypatch.setattr("sys.argv", ["audit.py", "--compare", str(hold), str(other), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="truth pools of different sizes"):
        audit.main()
