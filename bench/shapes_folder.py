"""A held-out image folder for trying the pipeline on data that is not its default: drawn
shapes (circle, square, triangle, cross, ring, bar) in random sizes, places, angles and
colours on cluttered, noisy backgrounds, ``--per-class`` PNGs per class in ``<class>/``.

    python bench/shapes_folder.py /tmp/shapes --per-class 300
    dvc exp run -S download.source=folder -S download.path=/tmp/shapes ...

Seeded: the same arguments write the same images. Small shapes on busy backgrounds keep a
pretrained backbone's probe well below perfect at 64 px, so the strategies have room to
differ, and the learning curves have room to rise.
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


def draw(kind: str, rng: np.random.Generator, size: int) -> Image.Image:
    bg = tuple(int(v) for v in rng.integers(60, 200, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):  # clutter: lines and blobs in other colours
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, 4))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 4)))
        else:
            d.ellipse((min(x0, x1), min(y0, y1), min(x0, x1) + 6, min(y0, y1) + 6), fill=colour)
    r = float(rng.uniform(0.12, 0.3)) * size
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
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 18, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="the folder to write <class>/<n>.png into (must not exist)")
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists: give a new folder")
    rng = np.random.default_rng(args.seed)
    for kind in CLASSES:
        (args.out / kind).mkdir(parents=True)
        for i in range(args.per_class):
            draw(kind, rng, args.size).save(args.out / kind / f"{i:04d}.png")
    print(f"{args.out}: {len(CLASSES)} classes x {args.per_class} images, {args.size} px")


if __name__ == "__main__":
    main()
