"""A held-out image folder for trying the pipeline on data that is not its default: drawn
shapes (circle, square, triangle, cross, ring, bar) in random sizes, places, angles and
colours on cluttered, noisy backgrounds, ``--per-class`` PNGs per class in ``<class>/``.

    python bench/shapes_folder.py /tmp/shapes --per-class 300
    dvc exp run -S download.source=folder -S download.path=/tmp/shapes ...

Seeded: the same arguments write the same images. Small shapes on busy backgrounds keep a
pretrained backbone's probe well below perfect at 64 px, so the strategies have room to
differ, and the learning curves have room to rise.

Two knobs cover the two axes of the rules of thumb besides size:

* ``--difficulty`` (0 to 1; 0.5, the default, is the folder above): smaller shapes, more
  clutter and more pixel noise as it grows;
* ``--distance`` from ImageNet (0 to 1; default 0): the pixels inside that share of the
  image's 8 x 8 blocks are rearranged by one fixed permutation (the same for every image at
  that distance, whatever the seed: one domain per distance). The content is all there, in a layout a network can learn, but its local
  statistics are not those of natural photographs that pretrained filters expect: the
  farther, the less the frozen features fit and the more fine-tuning has to do.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle", "cross", "ring", "bar")


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    corners = {"square": 4, "triangle": 3}[kind]
    return [
        (
            cx + r * math.cos(angle + 2 * math.pi * k / corners),
            cy + r * math.sin(angle + 2 * math.pi * k / corners),
        )
        for k in range(corners)
    ]


BLOCK = 8  # side of the blocks --distance rearranges


def draw(kind: str, rng: np.random.Generator, size: int, difficulty: float = 0.5) -> Image.Image:
    """One image of ``kind``; at ``difficulty`` 0.5 the folder's original rendering."""
    bg = tuple(int(v) for v in rng.integers(60, 200, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    clutter = (round(6 * difficulty), max(round(18 * difficulty), round(6 * difficulty) + 1))
    for _ in range(int(rng.integers(*clutter))):  # clutter: lines and blobs in other colours
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, 4))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 4)))
        else:
            d.ellipse((min(x0, x1), min(y0, y1), min(x0, x1) + 6, min(y0, y1) + 6), fill=colour)
    scale = 1.5 - difficulty  # shapes shrink as the difficulty grows
    r = float(rng.uniform(0.12 * scale, 0.3 * scale)) * size
    cx, cy = (float(v) for v in rng.uniform(r, size - r, 2))
    angle = float(rng.uniform(0, 2 * math.pi))
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    if kind in ("square", "triangle"):
        d.polygon(_polygon(kind, cx, cy, r, angle), fill=colour)
    elif kind == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif kind == "ring":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=max(2, int(r / 3)))
    else:
        w = max(2, int(r / 3))
        dx, dy = r * math.cos(angle), r * math.sin(angle)
        d.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=colour, width=w)
        if kind == "cross":
            d.line((cx + dy, cy - dx, cx - dy, cy + dx), fill=colour, width=w)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 36 * difficulty, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


DOMAIN_SEED = 8191  # the rearrangement's generator: one domain per distance, whatever the draw


def scrambler(size: int, distance: float):
    """The rearrangement that defines the domain at ``distance``: a function of an image array
    that permutes the pixels inside a fixed ``distance`` share of its 8 x 8 blocks, all by
    one permutation. It depends on the distance (and image size) alone, never on the draw's
    seed: folders drawn with different seeds at one distance (an audit's user data sets and
    its truth pool) are samples of one domain. Its own generator leaves the images' draws
    unchanged."""
    rng = np.random.default_rng(DOMAIN_SEED)
    n = size // BLOCK
    blocks = rng.permutation(n * n)[: round(distance * n * n)]
    perm = rng.permutation(BLOCK * BLOCK)

    def apply(a: np.ndarray) -> np.ndarray:
        out = a.copy()
        for b in blocks:
            y, x = divmod(int(b), n)
            tile = a[y * BLOCK : (y + 1) * BLOCK, x * BLOCK : (x + 1) * BLOCK].reshape(BLOCK * BLOCK, -1)
            out[y * BLOCK : (y + 1) * BLOCK, x * BLOCK : (x + 1) * BLOCK] = tile[perm].reshape(
                BLOCK, BLOCK, -1
            )
        return out

    return apply


def write_folder(
    out: Path, per_class: int, size: int = 64, seed: int = 0, difficulty: float = 0.5, distance: float = 0.0
) -> None:
    """``per_class`` images of every class in ``out/<class>/``; the same arguments, the same
    files (the knobs at their defaults give the folder this module always wrote)."""
    if not 0 <= difficulty <= 1 or not 0 <= distance <= 1:
        raise ValueError(f"difficulty {difficulty} and distance {distance} must lie in [0, 1]")
    rng = np.random.default_rng(seed)
    scramble = scrambler(size, distance)
    for kind in CLASSES:
        (out / kind).mkdir(parents=True)
        for i in range(per_class):
            a = scramble(np.asarray(draw(kind, rng, size, difficulty)))
            Image.fromarray(a).save(out / kind / f"{i:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="the folder to write <class>/<n>.png into (must not exist)")
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--difficulty", type=float, default=0.5, help="0 (easy) to 1 (hard)")
    parser.add_argument("--distance", type=float, default=0.0, help="from ImageNet: 0 (none) to 1")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists: give a new folder")
    try:
        write_folder(args.out, args.per_class, args.size, args.seed, args.difficulty, args.distance)
    except ValueError as err:
        parser.error(str(err))
    print(
        f"{args.out}: {len(CLASSES)} classes x {args.per_class} images, {args.size} px, "
        f"difficulty {args.difficulty:g}, distance {args.distance:g}"
    )


if __name__ == "__main__":
    main()
