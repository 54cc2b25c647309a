from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import make_image_folder

os.environ.setdefault("DVC_NO_ANALYTICS", "1")


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
