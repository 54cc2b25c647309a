from __future__ import annotations

import os

# One CPU thread per process, set before torch starts its thread pool: pytest-xdist runs one
# worker per core, and each worker's stage processes run beside another's. Two processes of
# two threads each on two cores spin against each other: a pair of tiny fine-tuning stages
# took 17 to 27 s that way against 9 to 10 s with one thread each (measured here). The stage
# processes inherit it (tests/dvc_project.py: command_env); `make repro` keeps every core.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import make_image_folder  # noqa: E402


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def image_folder(tmp_path: Path) -> tuple[Path, list]:
    root = tmp_path / "raw"
    return root, make_image_folder(root)


@pytest.fixture(scope="session")
def lite0_32():
    """The real pretrained backbone at a small input size: fast enough for unit tests."""
    from transferlab.features.backbones import create_backbone

    return create_backbone("efficientnet_lite0", 32, crop_pct=1.0)


# The order test files start in (make test keeps it: --no-loadscope-reorder). The file that
# builds the shared first run starts first, the slow files that do not need it next, so
# both workers are busy while it builds; the files that copy it follow, the quick ones last.
FIRST = [
    "test_pipeline.py",
    "test_remote.py",
    "test_distributed.py",
    "test_stage_errors.py",
    "test_bench.py",
    "test_pipeline_folds.py",
    "test_pipeline_views.py",
    "test_pipeline_experiments.py",
    "test_pipeline_reruns.py",
    "test_pipeline_arms.py",
    "test_pipeline_refit.py",
    "test_audit_small.py",
]


def pytest_collection_modifyitems(items: list) -> None:
    def rank(item) -> int:
        name = Path(str(item.fspath)).name
        return FIRST.index(name) if name in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: tests keep their order within a file
