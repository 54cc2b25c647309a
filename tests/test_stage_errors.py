"""Every stage script, run as DVC runs it, on edge values a user can set: one line naming the
key or file, exit 1, no traceback. The config loader's own tests (tests/test_config.py)
cannot catch an error that a stage raises after loading (a device, a weights file)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml
from dvc_project import TINY, _merge, make_project, run

pytestmark = pytest.mark.slow

# Each stage's command as dvc.yaml spells it, for the first seed and rate of the tiny project.
STAGES = {
    "download": ["stages/download.py"],
    "extract-features": ["stages/extract_features.py"],
    "train-head": ["stages/train_head.py", "features", "--seed", "0"],
    "finetune": ["stages/finetune.py", "full", "--seed", "0", "--lr", "0.001"],
    "screen-backbone": [
        "stages/screen_backbone.py",
        "candidate0",
        "--name",
        "efficientnet_lite0",
        "--image-size",
        "32",
        "--weights",
        "pretrained",
    ],
    "choose-backbone": ["stages/choose_backbone.py"],
    "evaluate": ["stages/evaluate.py"],
    "report": ["stages/report.py"],
    "export": ["stages/export.py"],
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The tiny project with its images downloaded: later stages get past reading them."""
    project = make_project(tmp_path_factory.mktemp("edges"))
    run(project, sys.executable, "stages/download.py")
    (project / "garbage.pt").write_bytes(os.urandom(2048))
    return project


def _fails_in_one_line(project: Path, stage: str, over: dict, *expected: str) -> None:
    params = project / f"edge-{abs(hash(repr(over)))}.yaml"
    params.write_text(yaml.safe_dump(_merge(TINY, over), sort_keys=False))
    res = run(project, sys.executable, *STAGES[stage], "--params", str(params), check=False)
    assert res.returncode == 1, f"{stage} {over}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr, f"{stage} {over}:\n{res.stderr}"
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, f"{stage} {over}:\n{res.stderr}"
    for words in expected:
        assert words in errors[0], f"{stage} {over}: {errors[0]}"


BN_OF_ONE = (
    {"finetune": {"budget": {"batch_size": 1}, "full": {"bn": "train"}}},
    "finetune.full",
    "batch_size: 1 with bn: train",
)
CUDA = ({"base": {"device": "cuda"}}, "base.device: 'cuda'", "no CUDA device")
GARBAGE_WEIGHTS = ({"backbone": {"weights": "garbage.pt"}}, "garbage.pt: not a loadable state dict")
UNKNOWN_BACKBONE = ({"backbone": {"name": "no_such_net"}}, "backbone.name", "no_such_net")

# Every stage at least once, with the edge values that reach it: a mistake anywhere in
# params stops whichever stage runs first, in the same words (BN_OF_ONE); the device and
# the weights file are read by the stages that run a network.
MATRIX = [
    ("download", BN_OF_ONE),
    ("extract-features", CUDA),
    ("extract-features", GARBAGE_WEIGHTS),
    ("train-head", GARBAGE_WEIGHTS),
    ("train-head", UNKNOWN_BACKBONE),
    ("finetune", CUDA),
    ("finetune", BN_OF_ONE),
    ("screen-backbone", CUDA),
    ("choose-backbone", UNKNOWN_BACKBONE),
    ("evaluate", BN_OF_ONE),
    ("report", BN_OF_ONE),
]
NO_CUDA = not __import__("torch").cuda.is_available()


@pytest.mark.parametrize(
    ("stage", "case"), MATRIX, ids=[f"{stage}-{i}" for i, (stage, _) in enumerate(MATRIX)]
)
def test_edge_values_end_in_one_line_naming_the_key(project, stage, case):
    if case is CUDA and not NO_CUDA:
        pytest.skip("needs a machine without CUDA")
    over, *expected = case
    _fails_in_one_line(project, stage, over, *expected)


def test_export_before_evaluate_names_the_missing_file(project):
    res = run(project, sys.executable, *STAGES["export"], check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "error: results/evaluate/recommended.json: not found; run dvc repro"
    )


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [("--size", "abc", "--size 'abc' is not a number"), ("--lr", "1e-3x", "--lr '1e-3x' is not a number")],
)
def test_a_command_line_number_that_is_not_one(project, flag, value, expected):
    """The rate or size comes from dvc.yaml's matrix; typed by hand it can be anything."""
    args = ["stages/finetune.py", "frozen", "--seed", "0", flag, value]
    res = run(project, sys.executable, *args, check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1] == f"error: finetune.py: {expected}"
