from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make_image_folder(root: Path, classes: int = 3, per_class: int = 6, size: int = 12) -> list:
    """root/<class>/<i>.png with class-dependent patterns; returns (rel path, class) pairs."""
    rng = np.random.default_rng(0)
    items = []
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size), dtype=np.uint8)
            img[:, c * size // classes : (c + 1) * size // classes] = 255  # class = stripe position
            rel = f"c{c}/{i:03d}.png"
            Image.fromarray(img, mode="L").save(root / rel)
            items.append((rel, f"c{c}"))
    return items


@pytest.fixture
def image_folder(tmp_path: Path) -> tuple[Path, list]:
    root = tmp_path / "raw"
    return root, make_image_folder(root)


@pytest.fixture(scope="session")
def lite0_32():
    """The real pretrained backbone at a small input size: fast enough for unit tests."""
    from transferlab.backbones import create_backbone

    return create_backbone("efficientnet_lite0", 32, crop_pct=1.0)


def tiny_backbone():
    """A two-block convolutional backbone: the strategies' mechanics at unit-test speed."""
    from torch import nn

    from transferlab.backbones import Backbone, Preprocess

    b1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    b2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
    body = nn.Sequential(b1, b2, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Backbone("tiny", body, [b1, b2], 16, Preprocess(8, (0.5,) * 3, (0.5,) * 3), None)
