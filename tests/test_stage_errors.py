"""Every stage script, run as DVC runs it, on edge values a user can set: one line naming the
key or file, exit 1, no traceback. The config loader's own tests (tests/test_config.py)
cannot catch an error that a stage raises after loading (a device, a weights file).

Every case runs in one driver process (DRIVER): each stage script executed as ``__main__``
with its own argv, as ``python stages/<x>.py ...`` would, stderr captured and any exception
other than the stage's own exit recorded as the traceback it would print. One interpreter
start-up instead of one per case: torch's import is most of a failing stage's time."""

from __future__ import annotations

import json
import os
import sys

import pytest
import yaml
from dvc_project import TINY, _merge, make_project, run

pytestmark = pytest.mark.slow

# Each stage's command as dvc.yaml spells it, for the first seed and rate of the tiny project.
STAGES = {
    "download": ["stages/download.py"],
    "extract-features": ["stages/extract_features.py"],
    "train-head": ["stages/train_head.py", "features", "--seed", "0"],
    "curve-head": ["stages/curve_head.py", "--seed", "0"],
    "finetune": ["stages/finetune.py", "full", "--seed", "0"],
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
    "model-card": ["stages/model_card.py"],
}


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
    ("curve-head", CUDA),  # past its own check of curve.sizes, into train-head's code
    ("finetune", CUDA),
    ("finetune", BN_OF_ONE),
    ("screen-backbone", CUDA),
    ("choose-backbone", UNKNOWN_BACKBONE),
    ("evaluate", BN_OF_ONE),
    ("report", BN_OF_ONE),
]
NO_CUDA = not __import__("torch").cuda.is_available()

DRIVER = """
import contextlib, io, json, os, runpy, sys, traceback
out = {}
for key, argv in json.loads(sys.argv[1]).items():
    err, code = io.StringIO(), 0
    saved = list(sys.path)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            sys.argv = argv
            sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))  # as `python <script>`
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        code, _ = 1, err.write(traceback.format_exc())
    sys.path[:] = saved
    out[key] = [code, err.getvalue()]
print(json.dumps(out))
"""


def _case_id(stage: str, i: int) -> str:
    return f"{stage}-{i}"


NUMBERS = [
    ("--size", "abc", "--size 'abc' is not a number"),
    ("--size", "1.5", "--size 1.5 is not a fraction between 0 and 1"),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[int, str]]:
    """The tiny project with its images downloaded (later stages get past reading them), and
    (exit code, stderr) of every case below, each a stage script run on its edge values."""
    project = make_project(tmp_path_factory.mktemp("edges"))
    run(project, sys.executable, "stages/download.py")
    (project / "garbage.pt").write_bytes(os.urandom(2048))
    cases: dict[str, list[str]] = {}
    for i, (stage, (over, *_)) in enumerate(MATRIX):
        assert isinstance(over, dict)
        params = project / f"edge-{i}.yaml"
        params.write_text(yaml.safe_dump(_merge(TINY, over), sort_keys=False))
        cases[_case_id(stage, i)] = [*STAGES[stage], "--params", str(params)]
    cases["export-first"] = list(STAGES["export"])
    cases["card-first"] = list(STAGES["model-card"])
    for flag, value, _ in NUMBERS:
        cases[f"number{flag}{value}"] = ["stages/finetune.py", "frozen", "--seed", "0", flag, value]
    res = run(project, sys.executable, "-c", DRIVER, json.dumps(cases))
    return {k: (code, err) for k, (code, err) in json.loads(res.stdout.splitlines()[-1]).items()}


@pytest.mark.parametrize(
    ("i", "stage", "case"),
    [(i, stage, case) for i, (stage, case) in enumerate(MATRIX)],
    ids=[_case_id(stage, i) for i, (stage, _) in enumerate(MATRIX)],
)
def test_edge_values_end_in_one_line_naming_the_key(outcomes, i, stage, case):
    if case is CUDA and not NO_CUDA:
        pytest.skip("needs a machine without CUDA")
    over, *expected = case
    code, err = outcomes[_case_id(stage, i)]
    assert code == 1, f"{stage} {over}: exit {code}\n{err}"
    assert "Traceback" not in err, f"{stage} {over}:\n{err}"
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, f"{stage} {over}:\n{err}"
    for words in expected:
        assert words in errors[0], f"{stage} {over}: {errors[0]}"


@pytest.mark.parametrize(
    ("case", "missing"), [("export-first", "recommended_run.json"), ("card-first", "recommended.json")]
)
def test_export_and_card_before_evaluate_name_the_missing_file(outcomes, case, missing):
    code, err = outcomes[case]
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"error: results/evaluate/{missing}: not found; run dvc repro"


@pytest.mark.parametrize(("flag", "value", "expected"), NUMBERS)
def test_a_command_line_number_that_is_not_one(outcomes, flag, value, expected):
    """The size comes from dvc.yaml's matrix; typed by hand it can be anything."""
    code, err = outcomes[f"number{flag}{value}"]
    assert code == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == f"error: finetune.py: {expected}"
