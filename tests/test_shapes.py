"""bench/shapes_folder.py: the held-out folder and its two knobs, difficulty and distance from
ImageNet (the audit's axes besides size)."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from helpers import bench_module
from PIL import Image

shapes = bench_module("shapes_folder")


def test_the_default_knobs_draw_the_folder_the_docs_measured():
    """Digest of the first three images of every class at the defaults, as drawn before the
    knobs existed: a change here would silently change docs/verdict.md's held-out data."""
    rng = np.random.default_rng(0)
    h = hashlib.sha256()
    for kind in shapes.CLASSES:
        for _ in range(3):
            h.update(np.asarray(shapes.draw(kind, rng, 64)).tobytes())
    assert h.hexdigest() == "e1c42ce2139f91b3a79d5c961272c9702f023c9528a1a97f0d027e87f188ad5e"


def _folder(tmp_path: Path, name: str, **kw) -> dict[str, np.ndarray]:
    shapes.write_folder(tmp_path / name, 2, **kw)
    return {
        str(f.relative_to(tmp_path / name)): np.asarray(Image.open(f))
        for f in sorted((tmp_path / name).rglob("*.png"))
    }


def test_distance_rearranges_pixels_inside_blocks_and_keeps_every_one(tmp_path):
    near, far = _folder(tmp_path, "near"), _folder(tmp_path, "far", distance=1.0)
    half = _folder(tmp_path, "half", distance=0.5)
    assert near.keys() == far.keys() == half.keys()
    b = shapes.BLOCK
    for name, a in near.items():
        assert not np.array_equal(a, far[name])
        changed = 0
        for y in range(0, 64, b):
            for x in range(0, 64, b):
                tile, moved = (
                    a[y : y + b, x : x + b].reshape(-1, 3),
                    far[name][y : y + b, x : x + b].reshape(-1, 3),
                )
                # the same pixels, rearranged: the content is all there
                assert sorted(map(tuple, tile)) == sorted(map(tuple, moved))
                changed += not np.array_equal(a[y : y + b, x : x + b], half[name][y : y + b, x : x + b])
        assert changed <= 32  # half of the 64 blocks at most (a uniform block does not change)


def test_one_distance_is_one_domain_whatever_the_seed(tmp_path):
    """An audit draws its user data sets and its truth pool with different seeds: at one
    distance they must share the rearrangement, or the truth would be another domain."""
    a, b = shapes.scrambler(64, 0.75), shapes.scrambler(64, 0.75)
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert np.array_equal(a(img), b(img)) and not np.array_equal(a(img), img)
    one, other = (
        _folder(tmp_path, "s1", seed=1, distance=0.75),
        _folder(tmp_path, "s2", seed=2, distance=0.75),
    )
    plain = _folder(tmp_path, "s1p", seed=1)
    name = next(iter(one))
    # the seed draws other images; the distance rearranges every draw the same way
    assert not np.array_equal(one[name], other[name])
    assert np.array_equal(a(plain[name]), one[name])


def test_difficulty_adds_noise_and_clutter_and_shrinks_the_shapes():
    def roughness(difficulty: float) -> float:
        rng = np.random.default_rng(1)
        imgs = [np.asarray(shapes.draw(k, rng, 64, difficulty), dtype=float) for k in shapes.CLASSES * 4]
        return float(np.mean([np.abs(np.diff(a, axis=1)).mean() for a in imgs]))

    easy, mid, hard = roughness(0.0), roughness(0.5), roughness(1.0)
    assert easy < mid < hard


def test_knobs_outside_their_range_are_refused(tmp_path):
    with pytest.raises(ValueError, match="must lie in"):
        shapes.write_folder(tmp_path / "x", 1, difficulty=1.5)
