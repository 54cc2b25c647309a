"""The README's experiment commands typed as a newcomer would, and re-drawn splits, each on
a copy of the shared first run (tests/dvc_project.py: base_run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dvc_project import (
    ROOT,
    command_env,
    copy_of_base,
    ran,
    repro,
    set_params,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the first run: the README's experiment, then the re-split."""
    return copy_of_base(tmp_path_factory, "views")


class TestViews:
    """What a user runs after the first run: an experiment, another splitting."""

    def test_readme_commands_work_as_written(self, project):
        """The README's "in DVC's own commands" block, typed as written by a newcomer whose
        shell does not have the environment on PATH."""
        venv = Path(sys.executable).parent.parent
        if not (venv / "bin" / "activate").is_file():
            pytest.skip("tests are not running from a virtual environment")
        readme = (ROOT / "README.md").read_text()
        wanted = ["source .venv/bin/activate", "dvc exp run -S extract_features.augment_views=8"]
        blocks = [b.split("```")[0] for b in readme.split("```sh\n")[1:]]
        block = next(b for b in blocks if wanted[1] in b)
        lines = [line.split("#")[0].strip() for line in block.splitlines()]
        assert all(w in lines for w in wanted), lines
        (project / ".venv").symlink_to(venv)
        env = command_env()
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != venv / "bin")
        res = subprocess.run(
            ["bash", "-c", "set -e; " + "; ".join(wanted)],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert "Running stage 'extract-features'" in res.stdout
        assert "finetune@full" not in " ".join(ran(res.stdout))  # end-to-end models reused

    def test_resplits_separate_split_from_seed_spread(self, project):
        """base.splits: 2 with four seeds: seeds 0 and 2 on the base splitting, 1 and 3 on a
        re-drawn one, each scored on its own test images; the report splits the spread."""
        set_params(
            project,
            {
                "base": {"seeds": [0, 1, 2, 3], "splits": 2},
                # one head and one strategy: both paths, at a third of the runs
                "train_head": {"models": ["features"]},
                "extract_features": {"augment_views": 0},
                "finetune": {"strategies": ["full"], "from_probe": [], "full": {"lr": [1e-3]}},
                "curve": {"sizes": [], "models": []},
            },
        )
        res = repro(project)
        assert "Running stage 'download'" in res.stdout  # a new splitting is new data
        details = json.loads((project / "results/evaluate/details.json").read_text())
        splits = details["splits"]
        assert splits["of_seed"] == {"0": "split", "1": "split_1", "2": "split", "3": "split_1"}
        tests = splits["tests"]
        assert set(tests["split"]["test_ids"]) != set(tests["split_1"]["test_ids"])
        assert details["test_ids"] == tests["split"]["test_ids"]
        for name, model in details["models"].items():
            for seed, record in model["runs"].items():
                labels = tests[record["split"]]["test_labels"]
                acc = np.mean(np.asarray(record["predictions"]) == np.asarray(labels))
                assert acc == pytest.approx(record["scores"]["accuracy"]), (name, seed)
            spread = model["spread"]
            assert (spread["runs"], spread["splittings"]) == (4, 2)
            assert spread["seed_sd"] is not None and spread["split_sd"] is not None
        report = (project / "reports/report.md").read_text()
        assert "## Where the spread comes from" in report and "on 2 splittings" in report
