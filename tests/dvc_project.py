"""A temporary git copy of the project with tiny params, and `dvc` run in it: what the
tests that run the real pipeline share (tests/test_pipeline.py, tests/test_remote.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

ONE_RATE = {"lr": [1e-3]}  # a fixed rate: nothing to search
TINY = {
    "download": {"max_per_class": 6, "val_fraction": 0.2, "test_fraction": 0.2},
    "backbone": {"image_size": 32},
    "extract_features": {"batch_size": 32, "augment_views": 2},
    "train_head": {"linear": {"l2": [0.01, 1.0]}},
    "finetune": {
        # every arm's: two steps of 16 (36 training images), validation after each
        "budget": {"steps": 2, "eval_every": 1, "warmup_steps": 0, "batch_size": 16},
        "search": {"max_extend": 1},
        "strategies": ["frozen", "partial", "full", "progressive", "scratch"],
        "from_probe": ["lp-ft"],
        **{s: ONE_RATE for s in ("partial", "scratch")},
        "frozen": {**ONE_RATE, "budget": {"steps": None}},  # without its default deviation
        "full": {"lr": [1e-3, 3e-3]},  # a real grid: the search must pick on val
        "lp-ft": {"lr": [1e-3]},
        # a deviation from the common budget, as the report must show one
        "progressive": {**ONE_RATE, "budget": {"steps": 4}, "unfreeze_at": [0.5]},
    },
    "shift": {"kinds": ["blur", "noise"]},  # the robustness view, on every test project
    # 4 training images per class: 2 and 3 at these sizes (0.1 would leave none); frozen,
    # the cheapest end-to-end arm, has a curve too
    "curve": {"sizes": [0.5, 0.75], "models": ["frozen"]},
}
HEADS = {"train-head@features-0", "train-head@features-augmented-0"}
END_TO_END = {f"finetune@{s}-0" for s in ("frozen", "partial", "full", "progressive", "scratch")}
LP_FT = "finetune-from-probe@lp-ft-0"
CURVES = {"curve-head@0"}  # every two-stage model's curve of seed 0, one process
CURVE_POINTS = {"curve-finetune@frozen-0-0.5", "curve-finetune@frozen-0-0.75"}
ALL_MODELS = {
    "features",
    "features-augmented",
    "frozen",
    "partial",
    "full",
    "progressive",
    "scratch",
    "lp-ft",
}


def command_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # stages call `python`
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")  # one thread per stage process (tests/conftest.py)
    for who in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{who}_NAME"] = "transferlab tests"
        env[f"GIT_{who}_EMAIL"] = "tests@transferlab.invalid"
    return env


def run(project: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=project, env=command_env(), capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(project, sys.executable, "-m", "dvc", *args, check=check)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return out


def set_params(project: Path, over: dict) -> None:
    p = project / "params.yaml"
    p.write_text(yaml.safe_dump(_merge(yaml.safe_load(p.read_text()), over), sort_keys=False))


def _stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


# Checked by :func:`repro` on every run, so left out of :func:`ran`.
RECOMMENDED_STAGES = {"export", "model-card"}


def ran(output: str) -> set[str]:
    """The stages `dvc repro` ran, but export and model-card, which :func:`repro` checks."""
    return _stages_run(output) - RECOMMENDED_STAGES


def repro(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`dvc repro`, checking that the recommended model was converted again exactly when
    the checkpoint it names changed (recommended_run.json), and its card rewritten exactly
    when the verdict around it changed (recommended.json): a new tie set or new metrics for
    the same checkpoint re-run the card alone."""
    files = {
        "export": project / "results/evaluate/recommended_run.json",
        "model-card": project / "results/evaluate/recommended.json",
    }
    before = {stage: f.read_bytes() if f.is_file() else None for stage, f in files.items()}
    res = dvc(project, "repro", *args, check=check)
    if res.returncode == 0:
        for stage, f in files.items():
            after = f.read_bytes() if f.is_file() else None
            # run, or restored from DVC's run cache (a recommendation seen before)
            done = stage in _stages_run(res.stdout) or f"Stage '{stage}' is cached" in res.stdout
            assert done == (before[stage] != after), f"{stage}:\n{res.stdout}"
    return res


def make_project(dst: Path, params: dict | None = None) -> Path:
    """A fresh clone's worth of files at ``dst``: what git tracks, nothing built, committed."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for rel in filter(None, tracked.stdout.split("\0")):
        if (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    for generated in ("dvc.lock", "results", "reports"):
        path = dst / generated
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    # placeholders a clone always has (results/screen: the report's dependency on screens;
    # results/curve: evaluate's on the learning curves)
    for placeholder in ("results/screen", "results/curve"):
        (dst / placeholder).mkdir(parents=True)
        (dst / placeholder / ".gitkeep").touch()
    set_params(dst, TINY if params is None else params)
    run(dst, "git", "init", "-q")
    run(dst, "git", "add", "-A")
    run(dst, "git", "commit", "-qm", "tiny project")
    return dst


def _shared_root(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this test run sees (their base temp folders'
    parent, named by the run's id); without xdist, this session's own base temp folder."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    base = tmp_path_factory.getbasetemp()
    return base.parent / f"shared-{run_id}" if run_id else base


def base_run(tmp_path_factory) -> tuple[Path, str]:
    """The tiny project after its first `dvc repro`, committed: built once per test run and
    shared by every pipeline test file (the first worker to need it builds it under a file
    lock; the others wait, then reuse it). Returns (path, that repro's stdout). Tests that
    change anything work on :func:`copy_of_base`, never on this folder."""
    from filelock import FileLock

    root = _shared_root(tmp_path_factory)
    root.mkdir(parents=True, exist_ok=True)
    base, out, done = root / "tiny-base", root / "tiny-base.stdout", root / "tiny-base.done"
    with FileLock(str(root / "tiny-base.lock")):
        if not done.is_file():
            if base.exists():
                shutil.rmtree(base)  # a build that failed half-way in this run
            base.mkdir()
            make_project(base)
            res = repro(base)
            run(base, "git", "add", "-A")
            run(base, "git", "commit", "-qm", "first repro")
            out.write_text(res.stdout)
            done.touch()
    return base, out.read_text()


def copy_of_base(tmp_path_factory, name: str) -> Path:
    """A copy of :func:`base_run`'s project (git history, DVC cache and outputs included) for
    a test file to change as it likes."""
    base, _ = base_run(tmp_path_factory)
    dst = tmp_path_factory.mktemp(name) / "project"
    shutil.copytree(base, dst, symlinks=True)
    return dst
