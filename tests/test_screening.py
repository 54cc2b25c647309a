"""The backbone screen: candidates compared by probe, scores checked by Kendall's tau."""

import json

import numpy as np
import pytest

from transferlab.errors import FingerprintMismatch
from transferlab.features import backbone_choice as choice
from transferlab.report import screen as screening


def _screen(name, size, acc, val, scores, n=400, seed=0):
    rng = np.random.default_rng(seed)
    correct = (rng.random(n) < acc).astype(int)
    ids = [f"img{i}.png" for i in range(n)]
    order = rng.permutation(n)  # each screen lists the test images in its own order
    return {
        "candidate": {"name": name, "image_size": size, "weights": "pretrained"},
        "params": 1000,
        "extract_time_s": 1.0,
        "images_per_s": 100.0,
        "store_bytes": 2**20,
        "probe": {"val_acc": val, "val_loss": 1 - val, "test_acc": correct.mean(), "test_ci95": [0.0, 1.0]},
        "scores": scores,
        "test_ids": [ids[i] for i in order],
        "test_correct": correct[order].tolist(),
    }


def test_best_on_validation_paired_ties_and_tau():
    screens = [
        _screen("a", 32, 0.95, 0.96, {"logme": 3.0, "h_score": 1.0, "knn_val_acc": 0.9}, seed=1),
        _screen("b", 32, 0.70, 0.71, {"logme": 1.0, "h_score": 2.0, "knn_val_acc": 0.5}, seed=2),
        _screen("c", 64, 0.94, 0.95, {"logme": 2.0, "h_score": 3.0, "knn_val_acc": 0.8}, seed=3),
    ]
    s = screening.summarise(screens)
    assert s["best"].startswith("candidate0: a @ 32 px")
    b, c = s["names"][1], s["names"][2]
    assert b not in s["tie_set"]  # 0.95 vs 0.70 on 400 images: separable
    assert c in s["tie_set"]  # 0.95 vs 0.94: the test split cannot tell
    # LogME and k-NN rank a > c > b as the probes' validation accuracy does; H-score reverses it
    assert s["tau"]["logme"]["val_acc"] == pytest.approx(1.0)
    assert s["tau"]["knn_val_acc"]["val_acc"] == pytest.approx(1.0)
    assert s["tau"]["h_score"]["val_acc"] == pytest.approx(-1 / 3)


def test_read_screens_refuses_missing_and_stale_candidates(tmp_path):
    cands = [{"name": "a", "image_size": 32, "weights": "pretrained"}]
    with pytest.raises(FileNotFoundError, match=r"candidates\[0\] was not screened"):
        choice.read_screens(cands, tmp_path)
    (tmp_path / "candidate0.json").write_text(
        json.dumps({"candidate": {"name": "a", "image_size": 64, "weights": "pretrained"}})
    )
    with pytest.raises(FingerprintMismatch, match="run dvc repro"):
        choice.read_screens(cands, tmp_path)
    assert choice.read_screens([], tmp_path) == []


def test_report_shows_the_screen(tmp_path):
    from test_report import MODELS, _inputs  # the report tests' synthetic evaluation

    from transferlab.report.document import build

    metrics, details, comparisons = _inputs(MODELS)
    details["extract"] = {}
    bare = build(metrics, details, comparisons, title="t", code_version="v", params_text="").markdown()
    assert "Backbones:" not in bare  # nothing to say: no scores, no candidates
    details["extract"]["transferability"] = {
        "scores": {"logme": 0.5, "h_score": 8.9, "knn_val_acc": 0.9},
        "seconds": {"logme": 0.3, "h_score": 0.4, "knn_val_acc": 0.04},
    }
    screens = [
        _screen("a", 32, 0.95, 0.96, {"logme": 3.0, "h_score": 1.0, "knn_val_acc": 0.9}, seed=1),
        _screen("b", 32, 0.70, 0.71, {"logme": 1.0, "h_score": 2.0, "knn_val_acc": 0.5}, seed=2),
    ]
    md = build(
        metrics, details, comparisons, title="t", code_version="v", params_text="", screens=screens
    ).markdown()
    assert "## Backbones: predicted before training, then measured" in md
    assert "LogME 0.500" in md and "| candidate1 | b @ 32 px (pretrained)" in md
    assert "Kendall's tau over 2 candidates" in md and "1 in 2" in md
    alone = build(metrics, details, comparisons, title="t", code_version="v", params_text="").markdown()
    assert "LogME 0.500" in alone and "No candidates were screened" in alone


def test_best_probe_picks_the_best_candidate_with_weights(tmp_path):
    from transferlab.config import BackboneConfig

    screens = [
        _screen("a", 32, 0.90, 0.90, {"logme": 1, "h_score": 1, "knn_val_acc": 0.9}),
        _screen("b", 64, 0.93, 0.93, {"logme": 1, "h_score": 1, "knn_val_acc": 0.9}),
        _screen("r", 32, 0.99, 0.99, {"logme": 1, "h_score": 1, "knn_val_acc": 0.9}),
    ]
    screens[2]["candidate"]["weights"] = "random"  # the best probe, but no weights to keep
    for i, s in enumerate(screens):
        (tmp_path / f"candidate{i}.json").write_text(json.dumps(s))
    cfg = BackboneConfig(name="best-probe", candidates=[s["candidate"] for s in screens])
    picked = choice.choose(cfg, tmp_path)
    assert (picked["name"], picked["image_size"], picked["weights"]) == ("b", 64, None)
    assert picked["chosen_by"] == "best probe on validation: candidate1"
    explicit = choice.choose(BackboneConfig(name="resnet18", image_size=96), tmp_path)
    assert explicit == {"name": "resnet18", "image_size": 96, "weights": None, "chosen_by": "backbone.name"}
    written = tmp_path / "backbone.json"
    # by hand, before choose-backbone ever ran: an explicit name needs no file, best-probe does
    assert choice.arms_backbone(BackboneConfig(name="resnet18", image_size=96), written) == explicit
    with pytest.raises(FileNotFoundError, match="not chosen yet"):
        choice.arms_backbone(cfg, written)
    written.write_text(json.dumps(explicit))
    assert choice.arms_backbone(BackboneConfig(name="resnet18", image_size=96), written) == explicit
    with pytest.raises(FingerprintMismatch, match="run dvc repro"):  # params edited since
        choice.arms_backbone(BackboneConfig(name="resnet18", image_size=64), written)


def test_best_probe_needs_a_candidate_with_weights():
    from pydantic import ValidationError

    from transferlab.config import BackboneConfig

    with pytest.raises(ValidationError, match="none has weights other than random"):
        BackboneConfig(
            name="best-probe", candidates=[{"name": "resnet18", "image_size": 32, "weights": "random"}]
        )
