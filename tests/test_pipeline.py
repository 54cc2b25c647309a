"""The real `dvc repro` on a temporary git copy of the project, with tiny params: the first
run, shared by every pipeline test file (tests/dvc_project.py: base_run), checked whole."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from dvc_project import (
    ALL_MODELS,
    CURVE_POINTS,
    CURVES,
    END_TO_END,
    HEADS,
    LP_FT,
    ROOT,
    _stages_run,
    base_run,
    dvc,
    ran,
    run,
)

from transferlab import layout

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, str]:
    """The shared first run (dvc_project.base_run): read here, never changed."""
    return base_run(tmp_path_factory)


class TestFirstRun:
    """Every stage, every model, the verdict and its raw material, predict and the README."""

    def test_repro_runs_every_stage(self, base):
        project, stdout = base
        assert ran(stdout) == {
            "download",
            "choose-backbone",
            "extract-features",
            *HEADS,
            *END_TO_END,
            LP_FT,
            *CURVES,
            *CURVE_POINTS,
            "evaluate",
            "report",
        }
        metrics = json.loads((project / "results/evaluate/metrics.json").read_text())
        assert set(metrics) == ALL_MODELS | {"extract"}
        for name in ALL_MODELS:
            m = metrics[name]
            assert 0.0 <= m["test_acc"] <= 1.0 and 0.0 <= m["macro_f1"] <= 1.0
            assert m["train_time_s"] > 0 and m["trainable_params"] > 0 and m["peak_rss_mb"] > 0
        trainable = {name: metrics[name]["trainable_params"] for name in ALL_MODELS}
        assert trainable["frozen"] == trainable["features"] == trainable["features-augmented"]
        assert trainable["frozen"] < trainable["partial"] < trainable["full"]
        assert trainable["full"] == trainable["lp-ft"] == trainable["scratch"]
        assert trainable["frozen"] < trainable["progressive"] < trainable["full"]
        details = json.loads((project / "results/evaluate/details.json").read_text())
        # full's rate was chosen on validation by its own search, by the project's one rule:
        # every rate tried has its curves and its point, the picked one trained the whole
        # budget, and its checkpoint is the one scored
        prot = details["models"]["full"]["protocol"]
        assert prot["grid"] == {"lr": [0.001, 0.003]}
        full_run = json.loads((project / "results/full-s0/train.json").read_text())
        search = full_run["protocol"]["search"]
        assert search["grid"] == [0.001, 0.003] and len(search["tried"]) in (2, 3)  # max_extend 1
        assert search["rung_steps"] == 1 and search["budget_steps"] == 2
        points = {pt["lr"]: pt for pt in search["points"]}
        (picked,) = [lr for lr, pt in points.items() if pt["picked"]]
        assert points[picked]["steps"] == 2 and all(
            pt["steps"] == 1 for lr, pt in points.items() if lr != picked
        )
        # the first rung's rule picked the survivor
        rung = {lr: (pt["rung1_val_acc"], pt["rung1_val_loss"]) for lr, pt in points.items()}
        assert picked == min(rung, key=lambda lr: (-rung[lr][0], rung[lr][1]))
        assert prot["picked"] == {"0": {"lr": picked}} and full_run["lr"] == picked
        assert prot["tried"] == {"0": search["tried"]}
        # annealed rungs (the default): every rate's short run has its curves, and the
        # picked rate's whole-budget run too, published as the run's own
        curves = project / "results/full-s0/search"
        for lr in search["tried"]:
            assert (curves / f"rung/lr{lr:g}/plots/metrics/val/acc.tsv").is_file()
        assert (curves / f"lr{picked:g}/plots/metrics/val/acc.tsv").is_file()
        published = project / "results/full-s0/plots/metrics/val/acc.tsv"
        assert published.read_text() == (curves / f"lr{picked:g}/plots/metrics/val/acc.tsv").read_text()
        assert points[picked]["trained_steps"] == 1 + 2  # its rung, then the whole budget afresh
        assert details["models"]["full"]["runs"]["0"]["run"] == "full-s0"
        # per-epoch figures are per pass over the training split, not per validation round
        n_train = full_run["n_train"]
        assert full_run["epochs_run"] == max(1, round(2 * 16 / n_train))
        assert full_run["time_per_epoch_s"] * full_run["train_images_per_s"] == pytest.approx(n_train)
        # a curve point trains as many steps as its strategy's main run, whatever its size
        for size in ("0.5", "0.75"):
            point = json.loads((project / f"results/curve/frozen-s0/f{size}/point.json").read_text())
            frozen = json.loads((project / "results/frozen-s0/train.json").read_text())
            assert point["steps"] == frozen["protocol"]["budget"]["steps_run"] == 2
        # the verdict's raw material: per-image predictions aligned with test_ids, and every
        # pair of models compared on them, recomputable by anyone holding details.json
        comparisons = json.loads((project / "results/evaluate/comparisons.json").read_text())
        assert len(comparisons["pairs"]) == len(ALL_MODELS) * (len(ALL_MODELS) - 1) // 2
        ids, labels = details["test_ids"], details["test_labels"]
        assert len(ids) == len(labels) == 10 and len(set(ids)) == 10
        from scipy.stats import binomtest

        for pair in comparisons["pairs"]:
            a = details["models"][pair["a"]]["runs"]["0"]["predictions"]
            b = details["models"][pair["b"]]["runs"]["0"]["predictions"]
            only_a = sum(x == y != z for x, z, y in zip(a, b, labels, strict=True))
            only_b = sum(z == y != x for x, z, y in zip(a, b, labels, strict=True))
            exact = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
            assert abs(pair["p"] - exact) < 1e-9 and pair["p_holm"] >= pair["p"]
            assert {
                "a",
                "b",
                "n",
                "acc_a",
                "acc_b",
                "diff",
                "ci95",
                "ci_family",
                "p",
                "p_holm",
                "seeds",
            } <= set(pair)
        v = details["verdict"]
        assert v["best_on_val"] in v["tie_set"] and v["recommended"] in [v["best_on_val"], *v["equivalent"]]
        # every other model has one outcome against the best, and headline.json carries them
        others = set(ALL_MODELS) - {v["best_on_val"]}
        assert set(v["equivalent"]) | set(v["undecided"]) | set(v["worse"]) == others
        assert {o["outcome"] for o in v["outcomes"].values()} <= {"equivalent", "undecided", "worse"}
        head = json.loads((project / "results/evaluate/headline.json").read_text())
        assert (head["equivalent"], head["undecided"], head["margin"]) == (
            v["equivalent"],
            v["undecided"],
            0.02,
        )
        assert all("vc" in pair and pair["vc"]["df"] >= 1 for pair in comparisons["pairs"])
        # lp-ft pays for the extraction and the probe it starts from
        assert metrics["lp-ft"]["total_time_s"] > metrics["lp-ft"]["train_time_s"]
        assert details["models"]["lp-ft"]["protocol"]["depends_on"] == [
            "extract-features",
            "train-head@features",
        ]
        # WiSE-FT: alpha 1 is lp-ft's own weights, alpha 0 the probe on the pretrained
        # backbone: the two ends reproduce what the two runs stored, image by image
        wise = json.loads((project / "results/lp-ft-s0/wise.json").read_text())
        assert wise["alphas"] == [round(0.1 * i, 1) for i in range(11)]
        lpft = json.loads((project / "results/lp-ft-s0/predictions.json").read_text())
        probe = json.loads((project / "results/features-s0/predictions.json").read_text())
        order = {image: i for i, image in enumerate(wise["test_ids"])}
        for point, stored in ((wise["points"][-1], lpft), (wise["points"][0], probe)):
            assert [point["test_pred"][order[i]] for i in stored["test"]["ids"]] == stored["test"]["pred"]
            assert point["val_acc"] == stored["val"]["accuracy"]
        curve = details["models"]["lp-ft"]["wise"]
        assert curve["test_acc"][-1] == metrics["lp-ft"]["test_acc"]
        assert curve["test_acc"][0] == metrics["features"]["test_acc"]
        assert curve["picked_alpha"] in curve["alphas"] and "vs_end" in curve and "vs_start" in curve
        # the two comparisons of the picked alpha are one family, Holm-adjusted like the models'
        from transferlab.verdict.stats import holm

        ends = [curve["vs_end"]["p"], curve["vs_start"]["p"]]
        assert [curve["vs_end"]["p_holm"], curve["vs_start"]["p_holm"]] == holm(ends)
        assert "weight-space interpolation" in (project / "reports/report.md").read_text()
        # the robustness view: every model scored on the shifted test images, paired
        rob = details["robustness"]
        assert rob["kinds"] == ["blur", "noise"] and set(rob["accuracy"]) == ALL_MODELS
        assert len(rob["comparisons"]["pairs"]) == len(comparisons["pairs"])
        assert all(0 <= metrics[m]["shifted_acc"] <= 1 for m in ALL_MODELS)
        assert any(metrics[m]["shifted_acc"] != metrics[m]["test_acc"] for m in ALL_MODELS)
        for m in ("features", "full"):  # a head scores the store's shifted group, a strategy its own loader
            run_name = details["models"][m]["runs"]["0"]["run"]
            stored = json.loads((project / f"results/{run_name}/predictions.json").read_text())
            assert set(stored["shifted"]) == {"blur", "noise"}
            assert sorted(stored["shifted"]["blur"]["ids"]) == sorted(ids)
        assert "## Robustness: the test split, shifted" in (project / "reports/report.md").read_text()
        # how every run started, and the exact environment, travel with it
        scratch = json.loads((project / "results/scratch-s0/train.json").read_text())
        assert scratch["init"]["backbone"].startswith("random")
        full = json.loads((project / "results/full-s0/train.json").read_text())
        assert full["init"]["backbone"].startswith("pretrained weights ")
        pins = dict(
            line.split("==") for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line
        )
        assert full["environment"]["packages"]["torch"] == pins["torch"] == "2.14.1"
        # the store holds every image once, in a seeded random order, not class order
        import zarr

        rows = zarr.open_group(project / "data/features", mode="r")["images"]["row"][:]
        assert sorted(rows.tolist()) == list(range(60)) and rows.tolist() != sorted(rows.tolist())
        report = (project / "reports/report.md").read_text()
        assert "## Protocol" in report and "chosen on validation" in report
        assert "| model |" in report
        assert all(re.search(rf"\| (\*\*)?{re.escape(m)}(\*\*)? \|", report) for m in ALL_MODELS)
        assert (project / "reports/learning_curves.png").stat().st_size > 10_000
        page = (project / "reports/report.html").read_text()
        # the verdict's forest plot, lp-ft's WiSE-FT curve, the size curves, cost, learning
        # curves, confusions, per-class F1
        assert page.count("data:image/png;base64,") == 7 and "Recommendation" in page
        assert (project / "reports/verdict.png").is_file() and (project / "reports/wise_lp-ft.png").is_file()
        # the recommended model, exported: checkpoint, TorchScript, ONNX, model card
        assert {"export", "model-card"} <= _stages_run(stdout)
        rec = json.loads((project / "results/evaluate/recommended.json").read_text())
        assert rec["model"] == v["recommended"] and rec["run"] in {
            r["run"] for r in details["models"][rec["model"]]["runs"].values()
        }
        exported = project / "models/recommended"
        assert {p.name for p in exported.iterdir() if p.name != ".gitignore"} == {
            "checkpoint.pt",
            "model.ts",
            "model.onnx",
            "exports.json",
            "model_card.md",
            "model_card.json",
        }
        card = json.loads((exported / "model_card.json").read_text())
        assert card["run"] == rec["run"] and card["classes"] == details["classes"]
        assert card["exports"]["model.ts"]["max_abs_logit_diff"] <= 1e-3
        assert "changed" not in dvc(project, "status").stdout  # everything up to date

    def test_learning_curves_pair_every_point_on_the_same_test_images(self, base):
        """Every curve point trained on its nested subset and was scored on the main run's
        test images; evaluate reads them, compares, and the report has its section."""
        project, _ = base
        details = json.loads((project / "results/evaluate/details.json").read_text())
        curves = details["curves"]
        assert curves["sizes"] == [0.5, 0.75, 1.0]
        assert curves["curve_models"] == ["features", "features-augmented", "frozen"]
        for size, per_class in ((0.5, 2), (0.75, 3)):
            for model in curves["curve_models"]:
                point = project / "results" / layout.curve_point(model, 0, str(size))
                meta = json.loads((point / "point.json").read_text())
                assert meta["per_class"] == [per_class] * 10  # stratified: every class alike
                pred = json.loads((point / "predictions.json").read_text())
                assert sorted(pred["test"]["ids"]) == sorted(details["test_ids"])
        # nested (size 0.5's images among 0.75's), and every model of the seed on one subset
        ids = {
            (m, s): json.loads(
                (project / "results" / layout.curve_point(m, 0, str(s)) / "point.json").read_text()
            )["train_ids"]
            for m in curves["curve_models"]
            for s in (0.5, 0.75)
        }
        assert set(ids["features", 0.5]) < set(ids["features", 0.75])
        assert all(ids[m, s] == ids["features", s] for m, s in ids)
        full = curves["models"]["frozen"]["points"][-1]
        assert (
            full["size"] == 1.0
            and full["test_acc"] == details["models"]["frozen"]["runs"]["0"]["scores"]["accuracy"]
        )
        # one fine-tuned curve: one comparison per size, Holm over the three
        assert [c["size"] for c in curves["comparisons"]] == [0.5, 0.75, 1.0]
        assert all(c["finetuned"] == "frozen" and c["family"] == 3 for c in curves["comparisons"])
        assert len(curves["rules"]) == 3
        report = (project / "reports/report.md").read_text()
        assert "## If you had more (or less) data" in report and "size_curves.png" in report
        assert (project / "reports/size_curves.png").stat().st_size > 0

    def test_predict_recommended_as_the_pipeline_scored_it(self, base, tmp_path):
        project, _ = base
        """`transferlab predict recommended` on the test images, through the console script
        `make setup` installs: the classes the recommended run's scoring recorded."""
        rec = json.loads((project / "results/evaluate/recommended.json").read_text())
        scored = json.loads((project / f"results/{rec['run']}/predictions.json").read_text())
        out = tmp_path / "preds.csv"
        exe = Path(sys.executable).parent / "transferlab"
        images = [str(project / "data/raw" / i) for i in scored["test"]["ids"]]
        run(project, str(exe), "predict", "recommended", *images, "--out", str(out), "--top-k", "2")
        import csv

        rows = list(csv.DictReader(out.open()))
        assert [r["path"] for r in rows] == images
        assert [r["class_1"] for r in rows] == [scored["classes"][c] for c in scored["test"]["pred"]]
        probs = [float(r["prob_1"]) for r in rows]
        assert max(abs(a - b) for a, b in zip(probs, scored["test"]["prob"], strict=True)) < 1e-3
        # a folder of the user's own images, as the README shows it
        res = run(project, str(exe), "predict", "recommended", str(project / "data/raw"), "--top-k", "1")
        n_files = sum(1 for f in (project / "data/raw").rglob("*.png"))  # the capped digits
        assert res.stdout.startswith("path,class_1,prob_1\n") and res.stdout.count("\n") == n_files + 1
