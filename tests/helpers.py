"""Small builders the tests share (on the test path through pytest's ``pythonpath``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image


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


def tiny_backbone():
    """A two-block convolutional backbone: the strategies' mechanics at unit-test speed."""
    from torch import nn

    from transferlab.data.images import Preprocess
    from transferlab.features.backbones import Backbone

    b1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    b2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
    body = nn.Sequential(b1, b2, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Backbone("tiny", body, [b1, b2], 16, Preprocess(8, (0.5,) * 3, (0.5,) * 3), None)


def write_huge_png(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A valid PNG of a few dozen bytes whose header declares ``width`` x ``height`` pixels
    (900 megapixels by default): what a decompression bomb looks like before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def save_head_checkpoint(root: Path, classes: list[str]):
    """A linear head on the real pretrained backbone's features at 32 px, saved as
    train-head saves it at ``root/features-s0/model.pt``; returns (path, backbone, head)."""
    import torch

    from transferlab.config import HeadConfig
    from transferlab.features.backbones import backbone_fingerprint, create_backbone
    from transferlab.training.models import CheckpointMeta, make_head, save_checkpoint

    bb = create_backbone("efficientnet_lite0", 32, crop_pct=1.0)
    torch.manual_seed(1)
    head = make_head(HeadConfig(kind="linear"), bb.num_features, len(classes))
    meta = CheckpointMeta(
        kind="head",
        model="features",
        head=HeadConfig(kind="linear"),
        in_features=bb.num_features,
        classes=classes,
        fingerprint={**backbone_fingerprint(bb), "manifest_sha256": "m" * 64},
        init={"head": "test"},
    )
    path = root / "features-s0" / "model.pt"
    save_checkpoint(path, head, meta)
    return path, bb, head


def bench_module(name: str) -> ModuleType:
    """bench/<name>.py imported as module ``name`` (bench/ is scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
