"""export.refit through the real pipeline, on a copy of the shared first run: the recommended
strategy trained again on every image at what its run chose on validation, and shipped."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from dvc_project import _stages_run, copy_of_base, dvc, run, set_params

pytestmark = pytest.mark.slow

REFIT_BOTH = """
import json, sys
from pathlib import Path
sys.path.insert(0, "src")
import torch
from transferlab.config import load_params
from transferlab.serve.inference import load_classifier
from transferlab.training.refit import refit
p = load_params("params.yaml")
out = {}
for model in ("features", "lp-ft"):
    facts = refit(p, {"model": model, "run": model + "-s0"}, Path("refit-" + model + ".pt"))
    new = torch.load("refit-" + model + ".pt", weights_only=False)["state_dict"]
    old = torch.load("data/models/" + model + "-s0/model.pt", weights_only=False)["state_dict"]
    facts["changed"] = any(not torch.equal(new[k], old[k]) for k in old if old[k].is_floating_point())
    facts["loads"] = load_classifier(Path("refit-" + model + ".pt")).meta.model == model
    out[model] = facts
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return copy_of_base(tmp_path_factory, "refit")


def _read(project: Path, rel: str) -> dict:
    return json.loads((project / rel).read_text())


def test_refit_replays_the_validated_choice_on_every_image(project):
    """A head (the probe at its picked L2) and an end-to-end strategy (lp-ft, whose probe is
    refitted first) trained on every image of the manifest, to the step the validated run
    kept, and loadable as ordinary checkpoints."""
    import polars as pl

    res = run(project, sys.executable, "-c", REFIT_BOTH)
    facts = json.loads(res.stdout.strip().splitlines()[-1])
    n = pl.read_parquet(project / "data/manifest.parquet").height
    probe = _read(project, "results/features-s0/train.json")
    assert facts["features"]["images"] == n and facts["features"]["picked"] == probe["protocol"]["picked"]
    lp = _read(project, "results/lp-ft-s0/train.json")
    budget = lp["protocol"]["budget"]
    assert facts["lp-ft"]["picked"] == {"lr": lp["lr"]} and facts["lp-ft"]["images"] == n
    assert facts["lp-ft"]["steps"] == min(lp["best_epoch"] * budget["eval_every"], budget["steps_run"])
    assert facts["lp-ft"]["budget_steps"] == budget["steps"]
    for model in ("features", "lp-ft"):
        assert facts[model]["loads"] and facts[model]["changed"], model  # more data, other weights


def test_export_refit_ships_the_refit_and_the_card_says_so(project):
    set_params(project, {"export": {"refit": True}})
    res = dvc(project, "repro")
    done = _stages_run(res.stdout)  # the report re-runs too: it prints every param
    assert {"export", "model-card"} <= done <= {"export", "model-card", "report"}, res.stdout
    exported = _read(project, "models/recommended/exports.json")
    rec = _read(project, "results/evaluate/recommended_run.json")
    refit = exported["refit"]
    assert refit["from_run"] == rec["run"] and refit["images"] > 0
    assert exported["validated_checkpoint_sha256"] == rec["checkpoint_sha256"]
    assert exported["checkpoint_sha256"] != rec["checkpoint_sha256"]
    card = (project / "models/recommended/model_card.md").read_text()
    assert f"Shipped: not run {rec['run']} itself but its strategy trained again on every image" in card
    assert _read(project, "models/recommended/model_card.json")["refit"] == refit
    # back to the validated run: export ships its checkpoint again
    set_params(project, {"export": {"refit": False}})
    dvc(project, "repro")
    exported = _read(project, "models/recommended/exports.json")
    assert exported["refit"] is None and exported["checkpoint_sha256"] == rec["checkpoint_sha256"]
