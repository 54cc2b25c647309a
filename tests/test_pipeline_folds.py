"""Cross-validation through the real pipeline: `base.folds: 2` on a tiny project with two
models (the probe and `full` over a two-rate grid), every image a test image once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from dvc_project import TINY, _merge, make_project, repro

from transferlab.verdict.stats import mcnemar_exact, variance_components, vc_test

pytestmark = pytest.mark.slow

FOLDS = _merge(
    TINY,
    {
        "base": {"folds": 2, "seeds": [0, 1]},
        "train_head": {"models": ["features"]},
        "finetune": {
            "strategies": ["full"],
            "from_probe": [],
            "full": {"lr": [1e-3, 3e-3]},  # a grid: each fold must pick on its own validation
        },
        # each fold's training part holds 2 images per class: round(0.75 x 2) = 2 keeps them
        # all, so the curve's point must equal the main run, pooled over the folds
        "curve": {"sizes": [0.75], "models": []},
    },
)
BUDGET_STEPS = 2  # TINY's finetune.budget.steps: full's, in every fold


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    dst = make_project(tmp_path_factory.mktemp("folds") / "project", FOLDS)
    repro(dst)
    return dst


def _read(project: Path, rel: str) -> dict:
    return json.loads((project / rel).read_text())


class TestFolds:
    def test_every_image_is_tested_exactly_once(self, project):
        manifest = pl.read_parquet(project / "data/manifest.parquet")
        details = _read(project, "results/evaluate/details.json")
        assert sorted(details["test_ids"]) == sorted(manifest["path"].to_list())
        assert len(details["test_ids"]) == len(set(details["test_ids"])) == manifest.height
        fold_of = dict(zip(manifest["path"].to_list(), manifest["fold"].to_list(), strict=True))
        assert details["folds"]["of_image"] == [fold_of[i] for i in details["test_ids"]]
        for name, model in details["models"].items():
            (row,) = model["pooled_predictions"]  # one repeat: one prediction per image
            assert len(row) == manifest.height and min(row) >= 0, name
            for seed, run in model["runs"].items():  # each from the run that never saw it
                fold = details["folds"]["of_seed"][seed]
                ids = details["splits"]["tests"][run["split"]]["test_ids"]
                assert {fold_of[i] for i in ids} == {fold}
                pred = json.loads((project / "results" / run["run"] / "predictions.json").read_text())
                assert not set(ids) & set(pred["val"]["ids"])

    def test_the_verdicts_test_and_the_pooled_mcnemar_recompute_from_details(self, project):
        """The verdict's test is the variance-components t over the two fold models (one
        degree of freedom), recomputed from the pooled predictions and the folds; the exact
        McNemar test of the trained models stands beside it (pair["pooled"])."""
        details = _read(project, "results/evaluate/details.json")
        comparisons = _read(project, "results/evaluate/comparisons.json")
        labels = np.asarray(details["test_labels"])
        fold = np.asarray(details["folds"]["of_image"])
        right = {m: np.asarray(d["pooled_predictions"][0]) == labels for m, d in details["models"].items()}
        assert comparisons["pairs"]
        for pair in comparisons["pairs"]:
            a, b = right[pair["a"]], right[pair["b"]]
            assert pair["n"] == len(labels)
            assert pair["pooled"]["p"] == mcnemar_exact(int(np.sum(a & ~b)), int(np.sum(~a & b)))
            d = a.astype(float) - b.astype(float)
            vc = variance_components([(np.flatnonzero(fold == f), d[fold == f]) for f in (0, 1)])
            assert pair["test"] == "variance-components t" and pair["vc"]["df"] == 1
            assert pair["p"] == pytest.approx(vc_test(vc, len(comparisons["pairs"]))["p"])
            assert pair["vc"]["tau"] == pytest.approx(vc["tau"])
            t = pair["corrected_t"]  # the cross-check, over the two folds
            assert t["runs"] == 2 and 0 <= t["p_holm"] <= 1
            assert isinstance(pair["tests_disagree"], bool)
        metrics = _read(project, "results/evaluate/metrics.json")
        for m, r in right.items():
            assert metrics[m]["test_acc"] == round(float(r.mean()), 4)  # pooled accuracy

    def test_each_fold_picks_its_rate_on_its_own_validation(self, project):
        details = _read(project, "results/evaluate/details.json")
        prot = details["models"]["full"]["protocol"]
        assert set(prot["picked"]) == {"0", "1"}
        for seed, picked in prot["picked"].items():
            run = _read(project, f"results/full-s{seed}/train.json")
            # the fold's own search: its first rung ranked the rates on its own validation
            points = run["protocol"]["search"]["points"]
            rung = {p["lr"]: (p["rung1_val_acc"], p["rung1_val_loss"]) for p in points}
            assert picked["lr"] == min(rung, key=lambda lr: (-rung[lr][0], rung[lr][1])) == run["lr"]
            # every fold trained the same number of steps as the hold-out run would
            budget = run["protocol"]["budget"]
            assert budget["steps"] == budget["steps_run"] == BUDGET_STEPS
            assert details["models"]["full"]["runs"][seed]["run"] == f"full-s{seed}"

    def test_report_and_model_card_say_what_was_compared_and_shipped(self, project):
        report = (project / "reports/report.md").read_text()
        assert "2-fold cross-validation" in report
        assert "procedures" in report and "variance-components t" in report
        assert "corrected t-test p (Holm)" in report and "pooled McNemar p (Holm)" in report
        card = (project / "models/recommended/model_card.md").read_text()
        assert "of 2-fold cross-validation, the fold model best on its own validation" in card

    def test_learning_curves_pool_over_the_folds(self, project):
        """A curve point under cross-validation is scored like the verdict: each fold's run
        on its own fold, pooled over every image. Here the subset keeps every training
        image (round(0.75 x 2) = 2 per class), so the point is the main run exactly."""
        details = _read(project, "results/evaluate/details.json")
        points = details["curves"]["models"]["features"]["points"]
        assert [p["size"] for p in points] == [0.75, 1.0] and points[0]["per_class"] == 2
        metrics = _read(project, "results/evaluate/metrics.json")
        assert points[0]["test_acc"] == points[1]["test_acc"] == metrics["features"]["test_acc"]
        for seed in (0, 1):
            meta = _read(project, f"results/curve/heads-s{seed}/features/f0.75/point.json")
            pred = _read(project, f"results/curve/heads-s{seed}/features/f0.75/predictions.json")
            assert pred["split"] == ("split_1" if seed else "split")  # fold s mod 2
            assert len(meta["train_ids"]) == 20  # 2 of each of the 10 classes
