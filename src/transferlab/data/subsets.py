"""Training subsets for the learning curves (params: curve).

A learning-curve point trains on a fraction of each class's training images and is scored
on the same validation and test images as the main run, so every point of a curve, and
every model at one size, is compared on the same images. The subsets are

- stratified: each class keeps round(fraction x its training images), so the class
  balance of the training split is kept at every size;
- nested: one seeded order of the training images is drawn per run, and each class keeps
  a prefix of it, so the 10% subset lies inside the 25% one (a curve measures more data,
  not other data);
- seeded by the run: every model of one seed trains on the same subset at a size, and
  another seed draws another one.
"""

from __future__ import annotations

import numpy as np

from transferlab.data.manifest import SplitView
from transferlab.errors import ConfigError

MIN_PER_CLASS = 2  # a class with one training image has nothing to generalise from


class SizeTooSmall(ConfigError):
    """A learning-curve size leaves a class too few training images: the curve skips that
    size (and the report says so) rather than stop the pipeline."""


SALT = 0x6375  # keeps the subsets' draw apart from the other draws made with the same seed


def kept_per_class(n: int, fraction: float) -> int:
    """round(fraction * n), halves rounded up: monotone in ``fraction``, so subsets nest."""
    return int(np.floor(fraction * n + 0.5))


def subset_mask(
    labels: np.ndarray, fraction: float, seed: tuple[int, int], classes: list[str] | None = None
) -> np.ndarray:
    """Which of the training images (``labels``, one per image) the subset at ``fraction``
    keeps; ``seed``: (base.seed, the run's seed). A class left with fewer than two images is
    :class:`SizeTooSmall`, one line naming it."""
    labels = np.asarray(labels)
    order = np.random.default_rng([SALT, *seed]).permutation(len(labels))
    keep = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        of_class = order[labels[order] == c]
        k = kept_per_class(len(of_class), fraction)
        if k < MIN_PER_CLASS:
            name = classes[int(c)] if classes is not None else str(int(c))
            raise SizeTooSmall(too_small_text(fraction, name, k, len(of_class)))
        keep[of_class[:k]] = True
    return keep


def training_subset(
    view: SplitView, fraction: float, seed: tuple[int, int], classes: list[str] | None = None
) -> SplitView:
    """The subset of a run's training split at ``fraction``, in the split's own order."""
    keep = subset_mask(view.labels, fraction, seed, classes)
    return SplitView(
        view.rows[keep], [p for p, k in zip(view.paths, keep, strict=True) if k], view.labels[keep]
    )


def too_small_text(fraction: float, name: str, kept: int, of: int) -> str:
    return (
        f"curve.sizes: {fraction:g} leaves class {name!r} {kept} training image(s) of {of} "
        f"(each class needs {MIN_PER_CLASS})"
    )


def unfit_sizes(
    sizes: list[float], train_labels: list[np.ndarray], classes: list[str] | None = None
) -> dict[float, str]:
    """The sizes that leave some class fewer than MIN_PER_CLASS training images in any of
    the runs' training splits (``train_labels``: one array per run), each with the reason:
    what every curve stage skips, and the report names. Depends on the counts alone, so the
    stages and evaluate agree without reading each other."""
    out: dict[float, str] = {}
    for fraction in sizes:
        for labels in train_labels:
            values, counts = np.unique(np.asarray(labels), return_counts=True)
            low = [
                (int(c), n)
                for c, n in zip(values, counts, strict=True)
                if kept_per_class(n, fraction) < MIN_PER_CLASS
            ]
            if low:
                c, n = low[0]
                name = classes[c] if classes is not None else str(c)
                out[fraction] = too_small_text(fraction, name, kept_per_class(n, fraction), n)
                break
    return out
