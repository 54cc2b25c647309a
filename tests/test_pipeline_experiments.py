"""`dvc exp run --queue` and `dvc exp show` on the real pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dvc_project import (
    command_env,
    copy_of_base,
    dvc,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the first run."""
    return copy_of_base(tmp_path_factory, "experiments")


class TestExperiments:
    """Queued experiments on a copy of the first run."""

    def test_queued_experiments_compare_in_exp_show(self, project):
        # the two kinds of two-stage head: the L-BFGS probe (the first run's own params:
        # every stage of that experiment is restored, none trains) and the MLP
        dvc(project, "exp", "run", "--queue", "-S", "train_head.head=linear,mlp")
        dvc(project, "exp", "run", "--run-all")
        show = json.loads(dvc(project, "exp", "show", "--json").stdout)
        exps = [
            e for branch in show for e in (branch.get("experiments") or []) for e in (e.get("revs") or [e])
        ]
        heads = {}
        for e in exps:
            data = e.get("data") or {}
            th = data.get("params", {}).get("params.yaml", {}).get("data", {}).get("train_head", {})
            acc = data.get("metrics", {}).get("results/evaluate/metrics.json", {}).get("data", {})
            heads[th.get("head")] = acc.get("features", {}).get("test_acc")
        assert len(exps) == 2 and set(heads) == {"linear", "mlp"}, json.dumps(show)[:2000]
        assert all(isinstance(v, float) for v in heads.values())

    def test_exp_show_fits_a_terminal_and_json_keeps_everything(self, project):
        """`make exp-show` after the sweep above: the headline and the changed params within
        160 columns (measured with no width limit imposed, COLUMNS=10000, so that a narrow
        default cannot hide a wide table), and `dvc exp show --json` still carries every
        model's metrics (metrics.json) beside the headline."""
        venv = Path(sys.executable).parent.parent
        env = {**command_env(), "COLUMNS": "10000"}
        res = subprocess.run(
            ["make", "-s", "-o", "setup", "exp-show", f"VENV={venv}"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        lines = [line for line in res.stdout.splitlines() if line.strip()]
        assert "recommended" in res.stdout and "tie_set" in res.stdout and "train_head.head" in res.stdout
        assert max(len(line) for line in lines) <= 160, res.stdout
        wide = subprocess.run(
            ["make", "-s", "-o", "setup", "exp-show", f"VENV={venv}", "ALL=1"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
        assert "features.test_acc" in wide.stdout  # ALL=1: every model's metrics
        show = json.loads(dvc(project, "exp", "show", "--json").stdout)
        files = show[0]["data"]["metrics"]
        assert {"results/evaluate/headline.json", "results/evaluate/metrics.json"} <= set(files)
        assert (
            files["results/evaluate/headline.json"]["data"]["recommended"]
            in files["results/evaluate/metrics.json"]["data"]
        )
