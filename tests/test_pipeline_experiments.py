"""`dvc exp run --queue` and `dvc exp show` on the real pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dvc_project import (
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
        # the two kinds of two-stage head: the L-BFGS probe and the MLP over its rate grid
        dvc(
            project,
            "exp",
            "run",
            "--queue",
            "-S",
            "train_head.head=linear,mlp",
            "-S",
            "train_head.mlp.epochs=3",
        )
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
            if th.get("mlp", {}).get("epochs") == 3:
                heads[th.get("head")] = acc.get("features", {}).get("test_acc")
        assert set(heads) == {"linear", "mlp"}, json.dumps(show)[:2000]
        assert all(isinstance(v, float) for v in heads.values())
