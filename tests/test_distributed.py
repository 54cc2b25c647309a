"""Beyond one machine: the stages under torchrun, 2 processes on CPU (gloo), against 1."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from dvc_project import TINY, _merge, dvc, make_project, run, set_params

pytestmark = pytest.mark.slow


def torchrun(project: Path, *args: str, n: int = 2) -> str:
    res = run(
        project, sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *args
    )
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Tiny images, downloaded. One torch thread per process, and store shards a multiple of
    the batch: every rank's batches are then the single process's batches, computed the
    same way, so the stores can be compared bit for bit."""
    params = _merge(
        TINY,
        {
            "base": {"num_threads": 1},
            "extract_features": {"batch_size": 8, "shard_rows": 16},
            # bn: frozen (the default): nothing in the model draws random numbers
            "finetune": {"full": {"batch_size": 8, "epochs": 2, "warmup_epochs": 0, "lr": [1e-3]}},
        },
    )
    project = make_project(tmp_path_factory.mktemp("distributed"), params)
    dvc(project, "repro", "download")
    return project


def _arrays(path: Path) -> dict[str, np.ndarray]:
    return {
        f"{g}/{a}": np.asarray(zarr.open_array(path / g / a, mode="r")[:])
        for g in ("images", "augmented")
        for a in ("features", "labels", "row")
    }


def test_two_processes_extract_the_same_store_as_one(project):
    run(project, sys.executable, "stages/extract_features.py")
    one = project / "one-process"
    shutil.move(project / "data/features", one)
    torchrun(project, "stages/extract_features.py")
    two = project / "data/features"
    assert dict(zarr.open_group(two, mode="r").attrs) == dict(zarr.open_group(one, mode="r").attrs)
    a, b = _arrays(one), _arrays(two)
    assert a.keys() == b.keys() and len(a["images/row"]) == 60 and len(a["augmented/row"]) > 16
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    summary = (project / "results/extract/extract.json").read_text()
    assert '"ranks": 2' in summary
    assert not list(project.glob("data/.features*"))  # no staging left behind


def _weights(project: Path) -> dict[str, torch.Tensor]:
    return torch.load(project / "data/models/full-s0-lr0.001/model.pt", weights_only=False)["state_dict"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_two_processes_fine_tune_like_one_with_their_batches_together(project):
    """finetune.full.batch_size 8: one process with batches of 8 against two with 4 each.
    The same images go into every step (one permutation, interleaved slices), each with
    the same augmentation (seeded per image), and DDP averages the two halves' gradients:
    after 2 epochs the weights agree to float rounding. A single process with batches of 4
    (twice the steps) is far from both: the comparison can tell runs apart."""
    stage = ("stages/finetune.py", "full", "--seed", "0", "--lr", "0.001")
    run(project, sys.executable, *stage)
    one = _weights(project)
    torchrun(project, *stage)
    two = _weights(project)
    summary = json.loads((project / "results/full-s0-lr0.001/train.json").read_text())
    assert summary["ranks"] == 2 and summary["bn_synced"] is False
    assert summary["protocol"]["budget"]["batch_size"] == 8
    set_params(project, {"finetune": {"full": {"batch_size": 4}}})
    try:
        run(project, sys.executable, *stage)
    finally:
        set_params(project, {"finetune": {"full": {"batch_size": 8}}})
    small_batches = _weights(project)
    assert _max_diff(one, two) < 1e-4
    assert _max_diff(one, small_batches) > 100 * _max_diff(one, two)


def test_a_batch_that_does_not_split_among_the_processes_is_refused(project):
    set_params(project, {"finetune": {"full": {"batch_size": 7}}})
    try:
        res = run(
            project,
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "stages/finetune.py",
            "full",
            "--seed",
            "0",
            "--lr",
            "0.001",
            check=False,
        )
    finally:
        set_params(project, {"finetune": {"full": {"batch_size": 8}}})
    assert res.returncode != 0
    assert "finetune.full.batch_size: 7 is the batch of all 2 processes together" in res.stderr
