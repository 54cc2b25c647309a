"""What a change re-runs, and nothing more: DVC's dependencies are exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dvc_project import (
    CURVE_POINTS,
    CURVES,
    END_TO_END,
    HEADS,
    LP_FT,
    copy_of_base,
    dvc,
    ran,
    repro,
    run,
    set_params,
)

pytestmark = pytest.mark.slow

KEPT = {"features", "features-augmented", "full"}  # the arms the last two tests keep


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the first run, changed by the tests in order."""
    return copy_of_base(tmp_path_factory, "reruns")


class TestReruns:
    """Changes made one after another on one copy of the first run, each committed."""

    def test_head_param_change_reruns_only_heads_evaluate_report(self, project):
        set_params(project, {"train_head": {"linear": {"l2": [0.1, 1.0]}}})
        res = repro(project)
        # lp-ft starts from the head's checkpoint, so it (and no other strategy) follows the
        # head; the heads' curves re-train with it, no end-to-end curve point does
        assert ran(res.stdout) == {*HEADS, *CURVES, LP_FT, "evaluate", "report"}
        assert "Stage 'extract-features' didn't change, skipping" in res.stdout
        for stage in END_TO_END | CURVE_POINTS:
            assert f"Stage '{stage}' didn't change, skipping" in res.stdout
        run(project, "git", "commit", "-qam", "head lr")

    def test_the_common_budget_reaches_every_end_to_end_arm_and_nothing_else(self, project):
        """finetune.budget and finetune.search are one copy each: changing either makes every
        end-to-end stage stale, lp-ft included, and no head, extraction or download (asked
        of `dvc status`, nothing re-trained)."""
        for change, back in (
            ({"budget": {"steps": 3}}, {"budget": {"steps": 2}}),
            ({"search": {"first_rung": 0.5}}, {"search": {"first_rung": 0.34}}),
        ):
            set_params(project, {"finetune": change})
            try:
                stale = set(json.loads(dvc(project, "status", "--json").stdout))
            finally:
                set_params(project, {"finetune": back})
            # evaluate and report read every params section they print or aggregate
            assert stale == END_TO_END | CURVE_POINTS | {LP_FT, "evaluate", "report"}, change
            assert not json.loads(dvc(project, "status", "--json").stdout)
        # progressive's own deviation (TINY: 4 steps) is in its protocol and the report
        prot = json.loads((project / "results/evaluate/details.json").read_text())["models"]
        assert prot["progressive"]["protocol"]["budget"]["deviations"] == {"steps": 4}
        assert prot["full"]["protocol"]["budget"]["deviations"] == {}
        assert "(deviates from finetune.budget: steps 4)" in (project / "reports/report.md").read_text()

    def test_one_strategy_change_reruns_only_that_strategy(self, project):
        """A new grid for partial: its one stage searches again, no other strategy does."""
        set_params(project, {"finetune": {"partial": {"lr": [0.002]}}})
        res = repro(project)
        assert ran(res.stdout) == {"finetune@partial-0", "evaluate", "report"}
        assert json.loads((project / "results/partial-s0/train.json").read_text())["lr"] == 0.002
        run(project, "git", "add", "-A")
        run(project, "git", "commit", "-qm", "partial lr")

    def test_adding_a_size_trains_only_the_new_end_to_end_point(self, project):
        """A new size: the heads' curves re-train (seconds, one process each), of the
        end-to-end curves only the new point, and evaluate reads every point. A size too
        small for the data (0.2 of 4 images per class leaves 1) is skipped by every curve
        stage and named in the report; the pipeline does not stop."""
        set_params(project, {"curve": {"sizes": [0.5, 0.75, 0.6, 0.2]}})
        res = repro(project)
        new = {"curve-finetune@frozen-0-0.6", "curve-finetune@frozen-0-0.2"}
        assert ran(res.stdout) == {*CURVES, *new, "evaluate", "report"}
        curves = json.loads((project / "results/evaluate/details.json").read_text())["curves"]
        assert curves["sizes"] == [0.5, 0.6, 0.75, 1.0]
        assert curves["skipped"] == {
            "0.2": "curve.sizes: 0.2 leaves class '0' 1 training image(s) of 4 (each class needs 2)"
        }
        skipped = json.loads((project / "results/curve/frozen-s0/f0.2/point.json").read_text())
        assert skipped["skipped"] == curves["skipped"]["0.2"]
        assert not (project / "results/curve/heads-s0/features/f0.2").exists()
        report = (project / "reports/report.md").read_text()
        assert (
            "Sizes skipped on this data" in report
            and "0.2: leaves class '0' 1 training image(s) of 4" in report
        )
        per_class = [p["per_class"] for p in curves["models"]["frozen"]["points"]]
        assert per_class == [2, 2, 3, 4]  # round(0.6 x 4) = 2: the TINY split has 4 per class
        # 3 distinct numbers of images per class: the power law is fitted; the back-test,
        # which fits without the largest, has two left and says so in the report
        fit = curves["models"]["features"]["fit"]
        assert "params" in fit and "distinct" in fit["back_test"]["refused"]
        assert "not back-tested" in (project / "reports/report.md").read_text()
        run(project, "git", "add", "-A")
        run(project, "git", "commit", "-qm", "a size")

    def test_dropping_arms_reruns_only_the_aggregates(self, project):
        """Dropping strategies from finetune.strategies and finetune.from_probe, and emptying
        curve.models, removes their stages: nothing trains, evaluate and report re-run on the
        arms left (their params changed)."""
        set_params(project, {"finetune": {"strategies": ["full"], "from_probe": []}, "curve": {"models": []}})
        res = repro(project)
        assert ran(res.stdout) == {"evaluate", "report"}
        metrics = json.loads((project / "results/evaluate/metrics.json").read_text())
        assert set(metrics) - {"extract"} == KEPT
        run(project, "git", "add", "-A")
        run(project, "git", "commit", "-qm", "fewer arms")

    def test_adding_a_seed_runs_only_the_new_seed(self, project):
        """On the arms left above (a head of each kind, full with its search, the heads'
        curves): every stage of seed 1, none of seed 0."""
        set_params(project, {"base": {"seeds": [0, 1]}})
        res = repro(project)
        new = {s[:-1] + "1" for s in HEADS} | {"finetune@full-1", "curve-head@1"}
        assert ran(res.stdout) == new | {"evaluate", "report"}
        for stage in (*HEADS, "finetune@full-0", *CURVES):
            assert f"Stage '{stage}' didn't change, skipping" in res.stdout
        metrics = json.loads((project / "results/evaluate/metrics.json").read_text())
        assert set(metrics) - {"extract"} == KEPT and all(metrics[m]["seeds"] == 2 for m in KEPT)
        assert "test acc (mean ± sd)" in (project / "reports/report.md").read_text()
        run(project, "git", "add", "-A")
        run(project, "git", "commit", "-qm", "two seeds")
