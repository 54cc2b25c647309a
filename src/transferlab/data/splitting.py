"""Building the manifest: stratified, seeded splits (download-time only).

Only the download stage imports this module: changing how images are split re-runs
download, and the training stages re-run only if the manifest it writes changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from transferlab._io import parallel_map, sha256_file
from transferlab.data.manifest import MANIFEST_SCHEMA, fold_column
from transferlab.errors import DataError


def stratified_split(
    labels: Sequence[int] | np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> list[str]:
    """Assign each item to train/val/test, per class, reproducibly from ``seed``.

    Each class contributes round(n * fraction) items to val and test, and at least one to each
    split whose fraction is non-zero, so rare classes are present in every split; a class too
    small for that is an error rather than a class the test split silently lacks.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=object)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        n_test = max(int(round(n * test_fraction)), 1 if test_fraction > 0 else 0)
        n_val = max(int(round(n * val_fraction)), 1 if val_fraction > 0 else 0)
        if n - n_test - n_val < 1:
            raise DataError(
                f"class {cls} has only {n} image(s): too few for a train/val/test split "
                f"(it needs {n_test + n_val + 1})"
            )
        out[idx[:n_test]] = "test"
        out[idx[n_test : n_test + n_val]] = "val"
        out[idx[n_test + n_val :]] = "train"
    return out.tolist()


def stratified_folds(labels: Sequence[int] | np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each item's fold 0..folds-1: per class a seeded permutation dealt out in turn, each
    class starting where the last one stopped, so every fold holds each class's share
    (within one image) and the folds' sizes differ by at most one."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=np.int64)
    start = 0
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        out[idx] = (start + np.arange(len(idx))) % folds
        start = (start + len(idx)) % folds
    return out


def fold_splits(
    labels: Sequence[int] | np.ndarray,
    fold: np.ndarray,
    test_fold: int,
    val_fraction: float,
    seed: int,
    names: Sequence[str],
) -> list[str]:
    """The splitting of cross-validation run ``test_fold``: that fold is its test split, and
    its validation split is carved, stratified, from the other folds (``val_fraction`` of
    them), so every choice the run makes (rates, L2 strengths, epochs) sees no test image."""
    labels = np.asarray(labels)
    out = np.full(len(labels), "test", dtype=object)
    rest = np.flatnonzero(fold != test_fold)
    for cls in np.unique(labels):
        kept = int(np.sum(labels[rest] == cls))
        needs = 2 if val_fraction > 0 else 1
        if kept < needs:
            raise DataError(
                f"base.folds: class {names[int(cls)]} has only {int(np.sum(labels == cls))} "
                f"image(s), too few for {int(fold.max()) + 1} folds: fold {test_fold}'s training "
                f"part keeps {kept}, and needs a training{' and a validation' if needs == 2 else ''} "
                "image of every class; use fewer folds"
            )
    out[rest] = stratified_split(labels[rest], val_fraction, 0.0, seed + test_fold)
    return out.tolist()


def cap_per_class(paths: list[str], classes: list[str], cap: int | None, seed: int) -> list[int]:
    """Indices keeping at most ``cap`` items of each class, chosen reproducibly."""
    if cap is None:
        return list(range(len(paths)))
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    by_class: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        by_class.setdefault(c, []).append(i)
    for idx in by_class.values():
        idx = sorted(idx, key=lambda i: paths[i])
        chosen = rng.permutation(len(idx))[:cap]
        keep.extend(idx[j] for j in chosen)
    return sorted(keep)


def build_manifest(
    root: Path,
    items: list[tuple[str, str]] | list[tuple[str, str, str | None]],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    max_per_class: int | None = None,
    classes: list[str] | None = None,
    source: str | None = None,
    splits: int = 1,
    folds: int = 1,
    repeats: int = 1,
) -> pl.DataFrame:
    """The manifest of ``items`` (paths relative to ``root``), hashed and split.

    ``source`` names the data in errors the way the user knows it (their folder, their URL),
    since ``root`` is a staging folder they never saw.

    Items are ``(path, class)`` or ``(path, class, split)``. Splits that items bring (a
    ``train/val/test`` folder layout, a data set's official test set) are kept; what has no
    split is divided stratified and seeded; a missing validation split is carved from train.
    ``classes`` keeps only those classes; ``max_per_class`` caps each class (per given split).
    ``splits`` > 1 adds re-drawn splittings ``split_1`` ... (seeds ``seed + j``): splits the
    source brings stay fixed in every one, what was drawn is drawn again.

    ``folds`` > 1 is k-fold cross-validation instead: a ``fold`` column (stratified, seeded)
    and one splitting per fold, ``split`` testing fold 0 and ``split_j`` fold j, each with
    its validation split carved from the other folds (``test_fraction`` is unused). A source
    that brings its own splits is refused: its test split is not for folds to re-draw.
    ``repeats`` > 1 re-draws the partition: partition r's folds are in column ``fold_r``
    (``fold`` for r = 0) and its splittings are ``split_{r*folds + j}``.
    """
    rows = sorted((it[0], it[1], it[2] if len(it) > 2 else None) for it in items)
    if classes is not None:
        unknown = sorted(set(classes) - {c for _, c, _ in rows})
        if unknown:
            raise DataError(f"download.classes: no images of class(es) {unknown} in {source or root}")
        rows = [r for r in rows if r[1] in set(classes)]
    groups: dict[str | None, list[tuple[str, str, str | None]]] = {}
    for r in rows:
        groups.setdefault(r[2], []).append(r)
    rows = []
    for _, group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        keep = cap_per_class([p for p, _, _ in group], [c for _, c, _ in group], max_per_class, seed)
        rows += [group[i] for i in keep]
    rows.sort()
    paths = [p for p, _, _ in rows]
    class_list = [c for _, c, _ in rows]
    class_names = sorted(set(class_list), key=_natural_key)
    if len(class_names) < 2:
        raise DataError(f"{source or root}: found {len(class_names)} class(es); need at least 2")
    label_of = {c: i for i, c in enumerate(class_names)}
    labels = [label_of[c] for c in class_list]
    given = [s for _, _, s in rows]
    if folds > 1:
        if any(s is not None for s in given):
            raise DataError(
                f"base.folds: {folds} re-draws every split, but {source or root} brings its own "
                "(train/val/test folders, or a data set's official test split); use base.folds: 1, "
                "or give the images as <class>/ folders"
            )
        return _fold_manifest(
            root, paths, labels, class_list, class_names, folds, val_fraction, seed, repeats
        )

    def draw(split_seed: int) -> list[str]:
        if all(s is None for s in given):
            return stratified_split(labels, val_fraction, test_fraction, split_seed)
        return _complete_splits(labels, given, val_fraction, split_seed)

    manifest = pl.DataFrame(
        {
            "path": paths,
            "label": labels,
            "class_name": class_list,
            "split": draw(seed),
            "sha256": parallel_map(sha256_file, [root / p for p in paths], desc="hashing"),
        },
        schema=MANIFEST_SCHEMA,
    )
    return manifest.with_columns(
        pl.Series(f"split_{j}", draw(seed + j), dtype=pl.String) for j in range(1, splits)
    )


def _fold_manifest(
    root: Path,
    paths: list[str],
    labels: list[int],
    class_list: list[str],
    class_names: list[str],
    folds: int,
    val_fraction: float,
    seed: int,
    repeats: int = 1,
) -> pl.DataFrame:
    # partition r (base.repeats) is drawn with its own seed; partition 0 with the data's seed,
    # so a 5-fold manifest is the same whether or not repeats follow it
    parts = [stratified_folds(labels, folds, partition_seed(seed, r)) for r in range(repeats)]
    columns = [
        fold_splits(labels, fold, j, val_fraction, partition_seed(seed, r), class_names)
        for r, fold in enumerate(parts)
        for j in range(folds)
    ]
    manifest = pl.DataFrame(
        {
            "path": paths,
            "label": labels,
            "class_name": class_list,
            "split": columns[0],
            "sha256": parallel_map(sha256_file, [root / p for p in paths], desc="hashing"),
        },
        schema=MANIFEST_SCHEMA,
    )
    return manifest.with_columns(
        *(pl.Series(f"split_{j}", columns[j], dtype=pl.String) for j in range(1, len(columns))),
        *(pl.Series(fold_column(r), fold, dtype=pl.Int64) for r, fold in enumerate(parts)),
    )


def partition_seed(seed: int, repeat: int) -> int:
    """The seed of partition ``repeat`` of repeated k-fold (0: the data's own seed)."""
    return seed if repeat == 0 else seed + 7919 * repeat


def _complete_splits(labels: list[int], given: list[str | None], val_fraction: float, seed: int) -> list[str]:
    """Keep the given splits; items without one, and a missing val split, come from train."""
    splits = list(given)
    pool = [i for i, s in enumerate(splits) if s in (None, "train")]
    carve_val = "val" not in splits
    sub = (
        stratified_split([labels[i] for i in pool], val_fraction if carve_val else 0.0, 0.0, seed)
        if pool
        else []
    )
    for i, s in zip(pool, sub, strict=True):
        splits[i] = s
    missing = {s for s in ("train", "test") if s not in splits}
    if missing:
        raise DataError(f"the data set has no {' or '.join(sorted(missing))} images")
    complete = [s for s in splits if s is not None]
    assert len(complete) == len(splits), "an item was left without a split"
    return complete


def _natural_key(name: str) -> tuple:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)
