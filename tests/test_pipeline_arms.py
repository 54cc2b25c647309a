"""Opt-in arms and views on the real pipeline: parameter-efficient fine-tuning, backbone
screening, the image cache, and a bad param."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from dvc_project import (
    ONE_RATE,
    TINY,
    copy_of_base,
    dvc,
    ran,
    repro,
    run,
    set_params,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the first run."""
    return copy_of_base(tmp_path_factory, "arms")


class TestArms:
    """Each test leaves the copy as it found it (outputs of removed stages deleted)."""

    def test_parameter_efficient_arms_run_when_given_a_grid(self, project):
        """bitfit, norm and lora are off by default; listing one in finetune.strategies adds
        one more finetune stage, compared in evaluate and the report like every other arm."""
        peft = ("bitfit", "lora")  # norm is bitfit's mechanism with another filter (test_peft.py)
        listed = [*TINY["finetune"]["strategies"], *peft]
        set_params(project, {"finetune": {"strategies": listed, **{s: ONE_RATE for s in peft}}})
        res = repro(project)
        assert ran(res.stdout) == {f"finetune@{s}-0" for s in peft} | {"evaluate", "report"}
        metrics = json.loads((project / "results/evaluate/metrics.json").read_text())
        for s in peft:
            m = metrics[s]
            assert m["trainable_params"] < metrics["full"]["trainable_params"]
            # what a task adds is a small part of the model it ships as
            assert 0 < m["trained_mb"] < m["checkpoint_mb"] / 10, (s, m)
        assert metrics["full"]["trained_mb"] > metrics["full"]["checkpoint_mb"] / 2
        comparisons = json.loads((project / "results/evaluate/comparisons.json").read_text())
        assert {"lora", "full"} in [{p["a"], p["b"]} for p in comparisons["pairs"]]
        report = (project / "reports/report.md").read_text()
        assert all(f"| {s} " in report or f"| **{s}** " in report for s in peft)
        # the LoRA checkpoint holds the adapters merged: predict rebuilds it as an ordinary
        # model and gives the classes the stage scored with the adapters in place
        scored = json.loads((project / "results/lora-s0/predictions.json").read_text())
        images = [str(project / "data/raw" / i) for i in scored["test"]["ids"]]
        exe = Path(sys.executable).parent / "transferlab"
        out = run(project, str(exe), "predict", "lora-s0", *images, "--top-k", "1").stdout
        rows = [line.split(",") for line in out.splitlines()[1:]]
        assert [r[1] for r in rows] == [scored["classes"][c] for c in scored["test"]["pred"]]
        # back to the committed state (outputs of stages that no longer exist removed: README)
        run(project, "git", "checkout", "-q", "--", ".")
        for s in peft:
            shutil.rmtree(project / f"data/models/{s}-s0")
            shutil.rmtree(project / f"results/{s}-s0")
        dvc(project, "checkout", "-q")
        assert "changed" not in dvc(project, "status").stdout

    def test_backbone_candidates_are_screened_without_touching_the_arms(self, project):
        """backbone.candidates: one screening stage per entry (own store, probe, scores);
        nothing the arms made re-runs, and editing one entry re-runs that entry alone."""
        cands = [
            {"name": "efficientnet_lite0", "image_size": 32, "weights": "pretrained"},
            {"name": "efficientnet_lite0", "image_size": 48, "weights": "pretrained"},
            {"name": "resnet18", "image_size": 32, "weights": "random"},
        ]
        set_params(project, {"backbone": {"candidates": cands}})
        res = repro(project)
        # choose-backbone reads the screens, keeps backbone.name: the same file, nothing re-runs
        assert ran(res.stdout) == {f"screen-backbone@candidate{i}" for i in range(3)} | {
            "choose-backbone",
            "report",
        }
        screens = [json.loads((project / f"results/screen/candidate{i}.json").read_text()) for i in range(3)]
        assert [s["candidate"] for s in screens] == cands
        assert (project / "data/screen/candidate1").is_dir()
        # candidate 0 is the arms' own backbone: its probe is train-head's probe, on the same store
        probe = json.loads((project / "results/features-s0/predictions.json").read_text())
        assert screens[0]["probe"]["test_acc"] == pytest.approx(probe["test"]["accuracy"])
        extract = json.loads((project / "results/extract/extract.json").read_text())
        assert screens[0]["scores"] == pytest.approx(extract["transferability"]["scores"])
        assert screens[2]["weights_sha256"] is None and screens[2]["params"] > screens[0]["params"]
        report = (project / "reports/report.md").read_text()
        assert "Kendall's tau over 3 candidates" in report and "resnet18 @ 32 px (random)" in report
        assert "![probe test accuracy of every screened backbone" in report  # the screen's figure
        assert (project / "reports/backbones.png").stat().st_size > 10_000
        cands[1] = {**cands[1], "image_size": 40}
        set_params(project, {"backbone": {"candidates": cands}})
        assert ran(repro(project).stdout) == {"screen-backbone@candidate1", "choose-backbone", "report"}
        # backbone.name: best-probe hands the arms to the best probe with weights
        set_params(project, {"backbone": {"name": "best-probe"}})
        repro(project, "choose-backbone")
        chosen = json.loads((project / "results/backbone.json").read_text())
        screens = [json.loads((project / f"results/screen/candidate{i}.json").read_text()) for i in range(3)]
        best = max(screens[:2], key=lambda s: (s["probe"]["val_acc"], -s["probe"]["val_loss"]))
        assert (chosen["name"], chosen["image_size"]) == (
            best["candidate"]["name"],
            best["candidate"]["image_size"],
        )
        status = dvc(project, "status").stdout
        assert "extract-features" in status and "finetune@full-0" in status  # the arms follow
        run(project, "git", "checkout", "-q", "--", ".")
        for d in ("data/screen", "results/screen"):
            for f in (project / d).glob("candidate*"):
                shutil.rmtree(f) if f.is_dir() else f.unlink()
        (project / "results/screen/.gitignore").unlink()  # DVC's, listing the screens
        run(project, "git", "clean", "-fdq", "reports")  # the screen's figure, untracked
        dvc(project, "checkout", "-q")
        assert "changed" not in dvc(project, "status").stdout

    def test_same_params_same_outputs_whatever_the_image_cache(self, project):
        """The image stages re-run with no decoded-image cache at all (the data exceeds the
        budget, as a data set larger than memory would): every image is decoded as it is
        read, and the store and every prediction come out exactly as before. The store (with
        its augmented and shifted groups: the same bytes, so no head needs to re-run) and one
        end-to-end run, not all of them: the others read images through the same code."""
        import yaml

        stages = ["extract-features", "finetune@full-0"]
        runs = ["full-s0"]

        def outputs():
            lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
            store = next(o["md5"] for o in lock["extract-features"]["outs"] if o["path"] == "data/features")
            preds = {r: json.loads((project / f"results/{r}/predictions.json").read_text()) for r in runs}
            return store, {r: (p["val"], p["test"], p["shifted"]) for r, p in preds.items()}

        before = outputs()
        set_params(project, {"base": {"image_cache_mb": 0}})
        res = repro(project, "--single-item", *stages)
        assert ran(res.stdout) == set(stages)
        extract = json.loads((project / "results/extract/extract.json").read_text())
        assert extract["cache"] == {"budget_mb": 0, "held_mb": 0.0}
        assert outputs() == before
        run(project, "git", "checkout", "-q", "--", ".")
        dvc(project, "checkout", "-q")

    def test_bad_param_fails_with_one_clear_line(self, project):
        set_params(project, {"train_head": {"linear": {"l2": [-1]}}})
        res = repro(project, check=False)
        assert res.returncode != 0
        assert (
            "error: params.yaml: train_head.linear.l2.0: Input should be greater than 0 (got -1)"
            in res.stderr
        )
        assert "Traceback" not in res.stderr
        # DVC clears a stage's outputs before running it; the last good ones come back from
        # git (small uncached results) and DVC's cache (data, models).
        run(project, "git", "checkout", "-q", "--", ".")
        dvc(project, "checkout")
        assert (project / "data/models/features-s0/model.pt").is_file()
        assert "changed" not in dvc(project, "status").stdout
