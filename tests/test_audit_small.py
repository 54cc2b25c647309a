"""The audit as a regression test: bench/audit.py run the way a user runs it, on a small
design (four data sets of 20 images per class, 32 px, the probe against full on a 60-step
budget, a truth pool ten times larger), asserting the bounds docs/verdict.md states for it.
A change to the protocol or the recommendation rule that makes the verdict worse on the
truth fails here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# The small audit's params over the audit's own (bench/audit.py AUDIT_PARAMS): two arms, no
# augmented views, a short budget. Its bounds, as docs/verdict.md states them: what the
# verdict must keep on these four data sets.
SMALL = {
    "extract_features": {"augment_views": 0},
    "train_head": {"models": ["features"]},
    "finetune": {
        "budget": {"steps": 60, "eval_every": 10, "warmup_steps": 6},
        "strategies": ["full"],
        "from_probe": [],
    },
}
# Measured: mean regret 4.6 points (one data set in four lost 18.5 to a probe picked on 18
# validation images), every arm and pair interval covering.
MAX_MEAN_REGRET = 0.08  # the verdict's mean regret against the truly best arm
MIN_ARM_COVERAGE = 0.75  # the stated 95% intervals of the arms' accuracy containing the truth
MIN_PAIR_COVERAGE = 0.75  # the family-wise intervals of the difference (the bootstrap's: 50%)


@pytest.mark.slow
def test_the_small_audit_keeps_the_verdicts_regret_and_coverage(tmp_path):
    params = tmp_path / "small.yaml"
    params.write_text(yaml.safe_dump(SMALL))
    cmd = [sys.executable, "bench/audit.py", "--sizes", "20", "--reps", "4", "--difficulties", "0.3"]
    cmd += ["--truth-per-class", "200", "--params", str(params), "--name", "small", "--out", str(tmp_path)]
    env = dict(os.environ, DVC_NO_ANALYTICS="1", TMPDIR=str(tmp_path))
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads((tmp_path / "audit-small.json").read_text())
    (cell,) = data["cells"].values()
    rows, s = cell["rows"], cell["summary"]
    assert len(rows) == 4 and all(set(r["true_acc"]) == {"features", "full"} for r in rows)
    # every arm really scored on the 1,200 truth images: accuracies are multiples of 1/1200
    assert all(abs(a * 1200 - round(a * 1200)) < 1e-6 for r in rows for a in r["true_acc"].values())
    assert s["regret"]["verdict"]["mean"] <= MAX_MEAN_REGRET, s["regret"]
    assert s["regret"]["verdict"]["mean"] < s["regret"]["always the probe"]["mean"], s["regret"]
    assert s["arm_coverage"] >= MIN_ARM_COVERAGE, s
    assert s["pair_coverage"] >= MIN_PAIR_COVERAGE, s
    assert s["wrong_equivalence_share"] in (None, 0.0), [r["wrong_equivalences"] for r in rows]
    assert "| 20 | 0.3 | 4 |" in (tmp_path / "audit-small.md").read_text()
