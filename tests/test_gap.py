"""The predictor of fine-tuning's gain over the probe (transferlab.verdict.gap): judged on
held-out data sets against the trivial policies, and shown by the plan only when it beat them."""

import json
import math

import numpy as np
import pytest
from helpers import bench_module

from transferlab.errors import DataError
from transferlab.serve import plan as plan_mod
from transferlab.verdict import gap


def audited_rows(n: int, informative: bool, seed: int = 0) -> list[dict]:
    """Rows shaped like bench/audit.py's: signals, images per class, the truth gap and the
    regret of the policies. Informative: the gap grows with the images per class and falls
    with the k-NN accuracy (fine-tuning pays on large sets the frozen features serve badly)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        per_class = int(rng.choice([20, 60, 200]))
        knn = float(rng.uniform(0.3, 0.9))
        if informative:
            g = 0.04 * (math.log2(per_class) - math.log2(60)) - 0.1 * (knn - 0.6) + rng.normal(0, 0.005)
        else:
            g = float(rng.normal(-0.02, 0.01))
        probe_regret, full_regret = max(g, 0.0), max(-g, 0.0)
        rows.append(
            {
                "per_class": per_class,
                "signals": {
                    "knn_val_acc": knn,
                    "logme": float(rng.normal(0.5, 0.1)),
                    "h_score": float(rng.normal(5, 1)),
                },
                "truth_gap_finetuned_minus_probe": g,
                "regret": {
                    "verdict": min(probe_regret, full_regret) + 0.002,
                    "always the probe": probe_regret,
                    "always full": full_regret,
                },
            }
        )
    return rows


def test_an_informative_predictor_beats_both_trivial_policies_held_out():
    model = gap.from_audit(audited_rows(30, informative=True), fitted_on="constructed")
    assert model is not None and model.shown
    cv = model.cv
    assert cv["datasets"] == 30 and cv["mae"] < 0.5 * cv["mae_constant"]
    r = cv["regret"]
    assert r["acting on the prediction"] < min(r["always the probe"], r["always full"])
    assert model.residual_p10 < 0 < model.residual_p90


def test_a_predictor_of_noise_is_not_shown():
    """The gap is always negative and unrelated to the signals: always the probe is never
    beaten (its regret is zero), so the model is not shown, whatever its error."""
    model = gap.from_audit(audited_rows(30, informative=False), fitted_on="constructed")
    assert model is not None and not model.shown
    assert model.cv["regret"]["always the probe"] == 0.0
    assert gap.plan_line(model, {"knn_val_acc": 0.5, "logme": 0.5, "h_score": 5.0}, 60) is None


def test_too_few_data_sets_fit_nothing():
    assert gap.from_audit(audited_rows(7, informative=True), fitted_on="x") is None


def test_the_plan_prints_a_shown_model_with_its_interval_and_the_price(tmp_path, monkeypatch):
    model = gap.from_audit(audited_rows(30, informative=True), fitted_on="30 constructed data sets")
    monkeypatch.setattr(gap.GapModel, "load", classmethod(lambda cls, path=None: model))
    est = plan_mod.Estimate()
    est.add("finetune full", 1, 600.0)
    est.add("train-head", 1, 30.0)
    extract = tmp_path / "extract.json"
    assert "run `dvc repro extract-features`" in plan_mod.gap_line(est, 60, extract)
    scores = {"knn_val_acc": 0.4, "logme": 0.5, "h_score": 5.0}
    extract.write_text(json.dumps({"transferability": {"scores": scores}}))
    line = plan_mod.gap_line(est, 200, extract)
    g = model.predict(gap.signals_of(scores, 200))
    assert f"{g * 100:+.1f} points" in line and g > 0.03  # large set, poor features: fine-tune
    assert "fitted on 30 constructed data sets" in line and "about 10.0 min here" in line
    model.shown = False
    assert plan_mod.gap_line(est, 200, extract) is None


def test_missing_signals_are_named():
    with pytest.raises(ValueError, match=r"\['h_score'\]"):
        gap.signals_of({"knn_val_acc": 0.5, "logme": 0.1}, 20)


def _audit_json(path, rows, distance=None, params=None):
    """An audit's JSON around constructed rows; without a distance, as audits wrote it before
    rows kept theirs."""
    for i, row in enumerate(rows):
        row.update(
            difficulty=0.3,
            rep=i,
            arm_covered={"features": True},
            pair_covered=[True],
            separations=0,
            wrong_separations=0,
            equivalences=0,
            wrong_equivalences=[],
        )
    args = {"reps": "4", "truth_per_class": "2000", "source_desc": "constructed rows"}
    if distance is not None:
        args |= {
            "distance": str(distance),
            "folder": "None",
            "source_desc": f"shapes (distance {distance:g})",
        }
    data = {"params": params or {}, "args": args, "seconds": 60, "command": f"audit {distance}"}
    data["cells"] = {"all": {"rows": rows}}
    path.write_text(json.dumps(data))
    return path


def test_the_audit_rereads_its_json_and_adds_the_predictor(tmp_path, monkeypatch):
    audit = bench_module("audit")
    src = _audit_json(tmp_path / "audit-old.json", audited_rows(12, informative=True))
    monkeypatch.setattr(
        "sys.argv", ["audit.py", "--reread", str(src), "--out", str(tmp_path / "bench" / "results")]
    )
    audit.main()
    text = (tmp_path / "bench" / "results" / "audit-old.md").read_text()
    assert "## Predicting fine-tuning's gain" in text and "12 data sets" in text
    out = json.loads((tmp_path / "bench" / "results" / "audit-old.json").read_text())
    assert out["gap_model"]["cv"]["datasets"] == 12 and len(out["cells"]) == 3  # 20, 60, 200 per class


def test_audits_of_two_distances_reread_as_one_table_and_one_predictor(tmp_path, monkeypatch):
    audit = bench_module("audit")
    near = _audit_json(tmp_path / "audit-near.json", audited_rows(12, True, seed=1), 0.0)
    far = _audit_json(tmp_path / "audit-far.json", audited_rows(12, True, seed=2), 0.75)
    out = tmp_path / "out"
    argv = ["audit.py", "--reread", str(near), str(far), "--out", str(out)]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit, match="needs --name"):
        audit.main()
    monkeypatch.setattr("sys.argv", [*argv, "--name", "both"])
    audit.main()
    data = json.loads((out / "audit-both.json").read_text())
    distances = {c["distance"] for c in data["cells"].values()}
    assert distances == {0.0, 0.75} and len(data["cells"]) == 6  # 3 sizes x 2 distances
    assert data["gap_model"]["cv"]["datasets"] == 24 and data["seconds"] == 120
    text = (out / "audit-both.md").read_text()
    assert "| distance | per class | difficulty |" in text
    assert "| 0.75 | 20 | 0.3 |" in text and "| 0 | 200 | 0.3 |" in text
    assert "shapes (distance 0) and shapes (distance 0.75)" in text
    # one audit alone keeps its table without the column
    monkeypatch.setattr("sys.argv", ["audit.py", "--reread", str(far), "--out", str(out)])
    audit.main()
    assert "| per class | difficulty |" in (out / "audit-far.md").read_text()
    # audits of two protocols are not one table
    other = _audit_json(tmp_path / "audit-other.json", audited_rows(12, True), 0.5, {"a": 1})
    monkeypatch.setattr("sys.argv", [*argv[:-2], str(other), "--name", "x", "--out", str(out)])
    with pytest.raises(SystemExit, match="audit-other.json: ran other params"):
        audit.main()


def test_a_corrupt_model_file_is_named(tmp_path):
    bad = tmp_path / "gap_model.json"
    bad.write_text('{"mean": [0.1]')
    with pytest.raises(DataError, match=r"gap_model.json: not a gap model"):
        gap.GapModel.load(bad)
    bad.write_text('{"unexpected": 1}')
    with pytest.raises(DataError, match="not a gap model"):
        gap.GapModel.load(bad)
