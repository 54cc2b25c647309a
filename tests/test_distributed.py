"""Beyond one machine: the stages under torchrun, 2 processes on CPU (gloo), against 1."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from dvc_project import TINY, _merge, dvc, make_project, run

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
        TINY, {"base": {"num_threads": 1}, "extract_features": {"batch_size": 8, "shard_rows": 16}}
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
