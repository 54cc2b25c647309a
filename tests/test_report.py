import re

import numpy as np
import pytest

from transferlab.report.document import build
from transferlab.report.figures import pareto_front
from transferlab.report.sections import comparison_rows
from transferlab.verdict.evaluation import compare_all, verdict
from transferlab.verdict.stats import pair_of

MODELS = ["features", "features-augmented", "frozen", "partial", "full", "progressive", "lp-ft", "scratch"]


def _protocol(model):
    if model.startswith("features"):
        return {
            "grid": {"l2": [0.01, 0.1]},
            "picked": {"0": {"l2": 0.1}},
            "budget": {"iterations": 12, "images_seen": 1200},
            "depends_on": ["extract-features"],
        }
    return {
        "kind": "end to end",
        "grid": {"lr": [0.001, 0.003, 0.01]},
        "picked": {"0": {"lr": 0.003}},
        "tried": {"0": [0.001, 0.003, 0.01]},
        "budget": {
            "steps": 300,
            "eval_every": 25,
            "warmup_steps": 25,
            "batch_size": 32,
            "epochs": 7.62,
            "steps_run": 300,
            "images_seen": 9600,
        },
        "depends_on": ["extract-features", "train-head@features"] if model == "lp-ft" else [],
    }


def _inputs(models, seeds=(0,)):
    metrics = {
        m: {
            "test_acc": round(0.5 + 0.05 * i, 4),
            "test_acc_std": 0.01 * (len(seeds) > 1),
            "test_acc_ci_lo": 0.45 + 0.05 * i,
            "test_acc_ci_hi": 0.55 + 0.05 * i,
            "macro_f1": 0.5,
            "macro_f1_std": 0.0,
            "balanced_acc": 0.5,
            "nll": 1.0,
            "ece": 0.05,
            "train_time_s": 10.0 + i,
            "total_time_s": 10.0 + i + (7.0 if m.startswith("features") else 0.0),
            "search_time_s": 20.0 + i,
            "time_per_epoch_s": 0.01 if m.startswith("features") else 2.0,
            "images_per_s": 100.0,
            "epochs": 3,
            "trainable_params": 1000 * (i + 1),
            "total_params": 10_000,
            "peak_rss_mb": 900.0 + i,
            "peak_gpu_mb": 0.0,
            "seeds": len(seeds),
        }
        for i, m in enumerate(models)
    }
    metrics["extract"] = {"time_s": 7.0, "augment_time_s": 20.0, "images_per_s": 230.0, "store_mb": 3.0}
    rng = np.random.default_rng(0)
    correct = {m: (rng.random((len(seeds), 40)) < 0.5 + 0.05 * i).astype(float) for i, m in enumerate(models)}
    comparisons = compare_all(correct, list(seeds))
    val = {m: (float(c.mean()), 0.5) for m, c in correct.items()}
    curves = {"val/acc": [0.5, 0.6, 0.7], "val/loss": [1.0, 0.8, 0.7], "train/loss": [1.1, 0.9, 0.6]}
    run = {"train": {"environment": {"torch": "x", "cpu_count": 2}}}
    details = {
        "models": {
            m: {
                "curves": curves,
                "confusion": [[3, 1], [0, 4]],
                "per_class_f1": [0.8, 0.9],
                "runs": {str(s): run for s in seeds},
                "protocol": _protocol(m),
            }
            for m in models
        },
        "fingerprint": {
            "manifest_sha256": "a" * 64,
            "backbone": "efficientnet_lite0",
            "image_size": 64,
            "weights_sha256": "b" * 64,
        },
        "split_sizes": {"train": 10, "val": 3, "test": 3},
        "classes": ["0", "1"],
        "seeds": list(seeds),
        "rank_flips": [],
        "test_ids": [f"img{i}.png" for i in range(40)],
        "verdict": verdict(val, comparisons, {m: metrics[m]["total_time_s"] for m in models}),
    }
    return metrics, details, comparisons


@pytest.mark.parametrize("models", [MODELS, ["features"], ["frozen", "full"], ["features", "scratch"]])
def test_report_renders_any_subset(models):
    metrics, details, comparisons = _inputs(models)
    doc = build(metrics, details, comparisons, title="T", code_version="abc", params_text="base: {}")
    md, page = doc.markdown(), doc.html("T")
    for m in models:
        assert re.search(rf"\| (\*\*)?{re.escape(m)}(\*\*)? \|", md), m
        assert f">{m}<" in page or f"<strong>{m}</strong>" in page
    recommended = details["verdict"]["recommended"]  # chosen on validation, cheapest of the ties
    assert (
        f"| **{recommended}** |" in md and "## Recommendation" in md and "## What the data cannot tell" in md
    )
    assert ("Two-stage trains faster per epoch" in md) == ({"features", "frozen"} <= set(models))
    assert ("Pretraining is worth it" in md) == ("scratch" in models and len(models) > 1)
    for name, png in doc.figures.items():
        assert png.startswith(b"\x89PNG") and len(png) > 5000, name
        assert f"]({name})" in md
    # self-contained: every image is embedded, nothing is fetched
    assert page.count("data:image/png;base64,") == len(doc.figures)
    assert not re.search(r"(src|href)=\"(https?:)?//", page)


def test_seeds_show_mean_and_spread_and_flips():
    metrics, details, comparisons = _inputs(["features", "frozen"], seeds=(0, 1, 2))
    details["rank_flips"] = [
        {"models": ["features", "frozen"], "features_ahead_seeds": [1], "frozen_ahead_seeds": [0, 2]}
    ]
    md = build(metrics, details, comparisons, title="T", code_version="abc", params_text="").markdown()
    assert "test acc (mean ± sd) [95% CI]" in md and "0.5000 ± 0.0100" in md
    assert "Rankings that flip between seeds: features vs frozen (seeds [1] vs [0, 2])" in md


def test_spread_table_says_what_the_layout_can_separate():
    from transferlab.verdict.stats import spread_components

    metrics, details, comparisons = _inputs(["features", "frozen"], seeds=(0, 1, 2, 3))
    acc = {0: 0.91, 1: 0.81, 2: 0.89, 3: 0.79}
    # one splitting: the seeds' spread alone
    for m in details["models"].values():
        m["spread"] = spread_components(acc, dict.fromkeys(acc, 0))
    details["splits"] = {"count": 1, "of_seed": dict.fromkeys(map(str, acc), "split")}
    md = build(metrics, details, comparisons, title="T", code_version="abc", params_text="").markdown()
    assert "## Where the spread comes from" in md and "share one splitting" in md
    assert "| features | 4 | 1 | 0.0589 | 0.0589 | cannot tell |" in md
    # two splittings, two seeds each: both parts estimated
    of_seed = {s: s % 2 for s in acc}
    for m in details["models"].values():
        m["spread"] = spread_components(acc, of_seed)
    details["splits"] = {"count": 2, "of_seed": {str(s): ["split", "split_1"][j] for s, j in of_seed.items()}}
    md = build(metrics, details, comparisons, title="T", code_version="abc", params_text="").markdown()
    assert "on 2 splittings of the data" in md and "random-effects" in md
    assert "| features | 4 | 2 | 0.0589 | 0.0141 | 0.0700 |" in md
    # one seed per splitting: the two sources cannot be told apart, and the report says so
    for m in details["models"].values():
        m["spread"] = spread_components(acc, {s: s for s in acc})
    details["splits"] = {"count": 4, "of_seed": {str(s): f"split_{s}" for s in acc}}
    md = build(metrics, details, comparisons, title="T", code_version="abc", params_text="").markdown()
    assert "ran one seed" in md and "| features | 4 | 4 | 0.0589 | cannot tell | cannot tell |" in md


def test_pareto_front_by_hand():
    pts = {"a": (1.0, 0.90), "b": (10.0, 0.95), "c": (5.0, 0.80), "d": (100.0, 0.95)}
    assert pareto_front(pts) == ["a", "b"]  # c is dominated by a, d by b


def test_rows_sorted_by_accuracy_then_time():
    metrics, _, _ = _inputs(["features", "frozen"])
    metrics["frozen"]["test_acc"] = metrics["features"]["test_acc"]
    assert [r["model"] for r in comparison_rows(metrics)] == ["features", "frozen"]


def test_what_the_data_cannot_tell_says_whether_folds_would_help():
    metrics, details, comparisons = _inputs(MODELS)
    md = build(metrics, details, comparisons, title="T", code_version="abc", params_text="").markdown()
    n_all = sum(details["split_sizes"].values())
    unresolved = [u for u in details["verdict"]["unresolved"] if u["images_to_separate"]]
    assert unresolved
    for u in unresolved:
        if u["images_to_separate"] <= n_all:
            expected = f"cross-validation would test all {n_all:,} images (`base.folds`), enough for this one"
        else:
            expected = f"more than even cross-validation's {n_all:,} (every image) would give"
        line = next(x for x in md.splitlines() if f"against {u['model']}: difference" in x)
        assert expected in line, line
    assert "Cross-validation (`base.folds: 5`" in md


def test_a_cross_validated_report_names_folds_procedures_and_the_cross_check():
    from transferlab.verdict.evaluation import FoldRuns

    seeds = (0, 1, 2, 3, 4)
    metrics, details, comparisons = _inputs(MODELS, seeds)
    rng = np.random.default_rng(1)
    runs = FoldRuns({m: {s: float(rng.random()) for s in seeds} for m in MODELS}, n_train=90.0, n_test=8.0)
    correct = {m: (rng.random((1, 40)) < 0.6).astype(float) for m in MODELS}
    comparisons = compare_all(correct, list(seeds), runs)
    val = {m: (float(c.mean()), 0.5) for m, c in correct.items()}
    details["verdict"] = verdict(val, comparisons, {m: metrics[m]["total_time_s"] for m in MODELS})
    details["folds"] = {"count": 5, "of_seed": {str(s): s for s in seeds}}
    md = build(metrics, details, comparisons, title="T", code_version="abc", params_text="").markdown()
    assert "5-fold cross-validation: every image tested once per repeat" in md
    assert "What the tests compare are procedures" in md
    assert "| corrected t-test p (Holm) |" in md
    assert all("corrected_t" in p and "tests_disagree" in p for p in comparisons["pairs"])
    cross = details["verdict"]["cross_check"]
    assert {c["model"] for c in cross} == set(MODELS) - {details["verdict"]["best_on_val"]}
    disagree = [c["model"] for c in cross if c["disagree"]]
    assert ("the verdict's test disagree on" in md) == bool(disagree)
    assert "the pooled test has 40: every image" in md or not details["verdict"]["unresolved"]


def test_the_protocol_table_names_extensions_edges_and_unconverged_runs():
    from transferlab.report.sections import protocol_rows

    metrics, details, _ = _inputs(["features", "full"])
    (full_row,) = [row for row in protocol_rows(details, metrics) if row[0] == "full"]
    assert full_row[1].startswith("300 steps of 32 (7.62 epochs), 25 warm-up, validation every 25")
    assert full_row[2] == "lr ∈ {0.001, 0.003, 0.01}" and full_row[3] == "lr 0.003"
    prot = details["models"]["full"]["protocol"]
    prot["tried"] = {"0": [0.001, 0.003, 0.01, 0.0333, 0.111]}
    prot["picked"] = {"0": {"lr": 0.111}}
    prot["at_edge"] = {"0": "above"}
    prot["not_converged"] = [0]
    (full_row,) = [row for row in protocol_rows(details, metrics) if row[0] == "full"]
    assert full_row[2] == "lr ∈ {0.001, 0.003, 0.01}, extended to 0.0333, 0.111"
    assert (
        "at the above end of what was searched for seed(s) 0: raise finetune.search.max_extend" in full_row[3]
    )
    assert (
        "not converged for seed(s) 0: still improving at the end: raise finetune.budget.steps" in full_row[3]
    )


def test_a_verdict_resting_on_an_unconverged_arm_says_it_is_provisional():
    from transferlab.verdict.evaluation import at_a_glance, unsettled

    metrics, details, comparisons = _inputs(["features", "frozen", "full"])
    v = details["verdict"]
    rec = v["recommended"]
    prot = details["models"][rec]["protocol"]
    prot["not_converged"] = [0]
    prot["budget"] = {**prot["budget"], "steps": 300}
    v["unsettled"] = unsettled(details["models"])
    assert list(v["unsettled"]) == [rec]
    md = build(metrics, details, comparisons, title="T", code_version="abc", params_text="").markdown()
    assert f"*Provisional*: this verdict rests on {rec}" in md
    fix = "train_head.linear.max_iter" if rec.startswith("features") else "finetune.budget.steps (now 300)"
    assert f"{rec}: not converged (seed(s) 0): raise {fix}" in md
    glance = at_a_glance(metrics, details)
    assert glance["unsettled"] == 1 and glance["provisional"] is True
    # settled: no such line, and the headline says so
    prot["not_converged"] = []
    v["unsettled"] = unsettled(details["models"])
    md = build(metrics, details, comparisons, title="T", code_version="abc", params_text="").markdown()
    assert "Provisional" not in md and "Not settled" not in md
    assert at_a_glance(metrics, details)["provisional"] is False


def test_every_rate_a_search_tried_is_in_the_report():
    from transferlab.report.sections import search_rows

    metrics, details, comparisons = _inputs(["features", "full"])
    prot = details["models"]["full"]["protocol"]
    point = {"origin": "grid", "diverged": False, "picked": False, "converged": None}
    prot["points"] = {
        "0": [
            {**point, "lr": 0.001, "steps": 100, "val_acc": 0.9, "rung1_val_acc": 0.9},
            {
                **point,
                "lr": 0.003,
                "steps": 300,
                "val_acc": 0.97,
                "rung1_val_acc": 0.92,
                "picked": True,
                "converged": True,
            },
            {
                **point,
                "lr": 0.0333,
                "origin": "extended above",
                "diverged": True,
                "steps": 100,
                "val_acc": 0.1,
                "rung1_val_acc": 0.1,
            },
        ]
    }
    rows = search_rows(details)
    assert rows == [
        ["full", "0", "0.001", "grid", "0.9000", "", ""],
        ["full", "0", "0.003 (picked)", "grid", "0.9200", "0.9700", "yes"],
        ["full", "0", "0.0333", "extended above, diverged", "0.1000", "", ""],
    ]
    md = build(metrics, details, comparisons, title="T", code_version="abc", params_text="").markdown()
    assert "| full | 0 | 0.003 (picked) | grid | 0.9200 | 0.9700 | yes |" in md


def _card_of(acc_cheap: float, n: int):
    """The card for two models on n test images: `full` best on validation, `features`
    cheaper with true accuracy ``acc_cheap`` against full's 0.95 (correlated outcomes)."""
    metrics, details, _ = _inputs(["features", "full"])
    rng = np.random.default_rng(3)
    ease = rng.random(n)
    correct = {
        "full": (ease > 0.05).astype(float)[None],
        "features": (ease + 0.02 * rng.random(n) > 1 - acc_cheap + 0.01).astype(float)[None],
    }
    comparisons = compare_all(correct, [0])
    val = {"full": (0.96, 0.1), "features": (0.95, 0.2)}
    metrics["features"]["total_time_s"], metrics["full"]["total_time_s"] = 5.0, 120.0
    details["verdict"] = verdict(val, comparisons, {"features": 5.0, "full": 120.0})
    details["test_ids"] = [f"img{i}.png" for i in range(n)]
    md = build(metrics, details, comparisons, title="T", code_version="abc", params_text="").markdown()
    return md.split("\n---\n")[0], details["verdict"]


def test_the_card_recommends_a_cheaper_model_only_when_shown_within_the_margin():
    card, v = _card_of(0.945, 4000)  # half a point below, on many images: shown within 2 points
    assert v["equivalent"] == ["features"] and v["recommended"] == "features"
    assert "**Use features**" in card and "within 2 points of it (`verdict.margin`)" in card
    assert "*The trade*" not in card
    card, v = _card_of(0.93, 300)  # two points below, on few images: undecided
    assert v["undecided"] == ["features"] and v["recommended"] == "full"
    assert "**Use full**" in card and "A cheaper model replaces it only when these 300 test images" in card
    # the trade in the user's units: points with their interval, seconds once, same prediction cost
    trade = next(line for line in card.splitlines() if line.startswith("*The trade*"))
    assert "over features, the cheapest undecided, for 115.0 s more training, once" in trade
    assert "the same prediction cost" in trade and "MB per task" in trade
    assert "| features (cheapest undecided) |" in card


def test_the_card_says_when_the_test_leaves_room_for_another_to_be_better():
    """The audit's failure mode: a few validation images chose the probe while the test
    images, which took no part in the choice, leave room for another model to be far better.
    The card says so, with the bound; on many images that rule it out, it stays silent."""
    card, _ = _card_of(0.945, 4000)
    assert "Could another be better?" not in card
    metrics, details, _ = _inputs(["features", "full"])
    n = 18
    correct = {
        "features": np.array([[1.0] * 6 + [0.0] * 12]),  # 6 of 18
        "full": np.array([[1.0] * 12 + [0.0] * 6]),  # 12 of 18: ahead on the test
    }
    comparisons = compare_all(correct, [0])
    val = {"features": (0.61, 0.9), "full": (0.44, 1.1)}  # validation chose the probe
    metrics["features"]["total_time_s"], metrics["full"]["total_time_s"] = 5.0, 120.0
    details["verdict"] = verdict(val, comparisons, {"features": 5.0, "full": 120.0})
    assert details["verdict"]["recommended"] == "features"
    details["test_ids"] = [f"img{i}.png" for i in range(n)]
    details["split_sizes"] = {"train": 84, "val": 18, "test": 18}
    md = build(metrics, details, comparisons, title="T", code_version="abc", params_text="").markdown()
    card = md.split("\n---\n")[0]
    line = next(x for x in card.splitlines() if x.startswith("*How sure*"))
    upper = pair_of(comparisons, "full", "features")["ci_family"][1]
    assert upper > 0.02 and f"(up to {upper * 100:+.1f} points, family-wise)" in line
    assert "*Could another be better?* The test leaves room for full to beat features" in line
    assert line.endswith("18 validation images chose.")
