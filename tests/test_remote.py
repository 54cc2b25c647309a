"""Beyond one machine: a shared DVC remote and DVC's run cache carry every stage between
clones, through `make ci-repro` (the target CI runs, .github/workflows/repro.yml)."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc_project import ONE_RATE, ROOT, TINY, _merge, _stages_run, command_env, dvc, make_project, run

pytestmark = pytest.mark.slow

# One end-to-end strategy next to the two heads: every kind of stage, in a minute.
FEW_ARMS = _merge(
    TINY,
    {
        "finetune": {"strategies": ["full"], "from_probe": [], "full": ONE_RATE},
        "curve": {"models": []},  # the heads' curves only: curve-head is cached like the rest
    },
)
EXPENSIVE = {  # every DVC-cached stage (choose-backbone is cheap, but cached like the others)
    "download",
    "choose-backbone",
    "extract-features",
    "train-head@features-0",
    "train-head@features-augmented-0",
    "finetune@full-0",
    "curve-head@0",
}
AGGREGATES = {"evaluate", "report"}  # outputs tracked by git, not by DVC: seconds to re-run


def ci_repro(project: Path, remote: Path) -> subprocess.CompletedProcess:
    """`make ci-repro` as CI runs it, with this interpreter's environment as the venv (``-o``:
    never re-install it from the test)."""
    venv = Path(sys.prefix)
    cmd = ["make", "-o", f"{venv}/.installed", "ci-repro", f"VENV={venv}", f"REMOTE={remote}", "BASE=HEAD"]
    res = subprocess.run(cmd, cwd=project, env=command_env(), capture_output=True, text=True)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    return res


def restored(output: str) -> set[str]:
    return {
        line.split("'")[1]
        for line in output.splitlines()
        if line.endswith("is cached - skipping run, checking out outputs")
    }


def same_results(a: Path, b: Path) -> None:
    """Byte for byte, timings included: a stage that ran again would have written new ones."""
    files = sorted(
        p.relative_to(a) for p in (a / "results").rglob("*") if p.is_file() and "ci" not in p.parts
    )
    assert files
    match, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Machine A runs the pipeline through `make ci-repro` against a local-directory remote
    and commits what git tracks; ``before`` is a clone taken before that run."""
    root = tmp_path_factory.mktemp("machines")
    remote = root / "remote"
    a = make_project(root / "a", FEW_ARMS)
    before = root / "before"
    run(root, "git", "clone", "-q", str(a), str(before))
    first = ci_repro(a, remote)
    run(a, "git", "add", "-A")
    run(a, "git", "commit", "-qm", "results")
    return {"remote": remote, "a": a, "before": before, "first": first, "root": root}


def test_first_run_runs_everything_and_shares_it(shared):
    assert _stages_run(shared["first"].stdout) == EXPENSIVE | AGGREGATES | {"export", "model-card"}
    assert any((shared["remote"] / "runs").rglob("*")), "no run cache pushed"
    diff = (shared["a"] / "results/ci/diff.md").read_text()
    assert "## Metrics against HEAD" in diff and "full.test_acc" in diff
    assert "## Params against HEAD" in diff


def test_fresh_clone_pulls_everything_and_runs_no_stage(shared):
    b = shared["root"] / "b"
    run(shared["root"], "git", "clone", "-q", str(shared["a"]), str(b))
    res = ci_repro(b, shared["remote"])
    assert _stages_run(res.stdout) == set(), res.stdout
    same_results(shared["a"], b)
    assert (b / "models/recommended/model.onnx").is_file()
    assert "changed" not in dvc(b, "status").stdout


def test_clone_without_the_lock_file_restores_every_costly_stage_from_the_run_cache(shared):
    """The commit before the run has no dvc.lock: only DVC's run cache, pulled from the
    remote, knows these stages ran. Everything that extracts or trains comes back from it;
    evaluate and report, whose outputs git tracks, re-run on the restored inputs and write
    the same files."""
    before = shared["before"]
    assert not (before / "dvc.lock").exists()
    res = ci_repro(before, shared["remote"])
    assert _stages_run(res.stdout) == AGGREGATES, res.stdout
    assert restored(res.stdout) == EXPENSIVE | {"export", "model-card"}
    same_results(shared["a"], before)


def test_ci_workflow_runs_the_tested_target():
    workflow = yaml.safe_load((ROOT / ".github/workflows/repro.yml").read_text())
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    commands = "\n".join(s.get("run", "") for s in steps)
    assert "make ci-repro" in commands and "BASE=" in commands
    assert "results/ci/diff.md" in commands  # published: job summary and PR comment
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads and "reports/" in uploads[0]["with"]["path"]
    with_history = [s for s in steps if s.get("uses", "").startswith("actions/checkout")]
    assert with_history[0]["with"]["fetch-depth"] == 0  # the base revision must be there
