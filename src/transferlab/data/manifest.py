"""The manifest: the contract between ``download`` and every later stage.

``data/manifest.parquet`` holds one row per image: its path (relative to data/raw), integer
label, class name, split and SHA-256 of the file. Every stage reads images through it, in
its row order, so all strategies see exactly the same train/val/test images. This module is
what readers need; building a manifest is download's alone (:mod:`transferlab.data.splitting`),
so editing how data is split or fetched never re-runs a training stage through this module.

With ``base.splits: k > 1`` the manifest carries k splittings: ``split`` (the first, from
``base.seed``) and ``split_1`` .. ``split_{k-1}`` (re-drawn from ``base.seed + j``). A run
with training seed ``s`` trains and is scored on splitting ``s mod k`` (:func:`split_column`),
so the seeds vary the split, the initialisation and the order together, and seeds that
share a splitting tell the spread due to seeds from the spread due to splits.

With ``base.folds: k > 1`` (k-fold cross-validation) the k splittings are the folds'
instead: splitting j tests fold j and trains (and validates) on the others, and a ``fold``
column says which fold tests each image, so every image is tested exactly once per repeat.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from transferlab.errors import DataError

SPLITS = ("train", "val", "test")
# Files taken as images, by suffix (case-insensitive): in a data folder and by `transferlab predict`.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# With base.folds > 1: each image's cross-validation fold (the run of seed s tests fold
# s mod folds, on splitting split_column(s, folds)).
FOLD = "fold"


def fold_column(repeat: int) -> str:
    """The manifest column holding partition ``repeat``'s fold of every image (repeated
    k-fold, base.repeats): ``fold`` for the first, ``fold_1`` ... for the re-drawn ones."""
    return FOLD if repeat == 0 else f"{FOLD}_{repeat}"


MANIFEST_SCHEMA = {
    "path": pl.String,
    "label": pl.Int64,
    "class_name": pl.String,
    "split": pl.String,
    "sha256": pl.String,
}


def split_column(seed: int, splits: int) -> str:
    """The manifest column holding the splitting that training seed ``seed`` uses."""
    j = seed % splits
    return "split" if j == 0 else f"split_{j}"


def split_columns(manifest: pl.DataFrame) -> list[str]:
    """Every splitting the manifest carries, the base one first."""
    extra = sorted((c for c in manifest.columns if c.startswith("split_")), key=lambda c: int(c[6:]))
    return ["split", *extra]


def manifest_fingerprint(manifest: pl.DataFrame) -> str:
    """SHA-256 of the manifest's content (not of its Parquet bytes, which embed versions)."""
    h = hashlib.sha256()
    for row in manifest.select(list(MANIFEST_SCHEMA) + split_columns(manifest)[1:]).iter_rows():
        h.update("\t".join(map(str, row)).encode())
        h.update(b"\n")
    return h.hexdigest()


def read_manifest(path: Path) -> pl.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: manifest not found (run the download stage first)")
    df = pl.read_parquet(path)
    missing = set(MANIFEST_SCHEMA) - set(df.columns)
    if missing:
        raise DataError(f"{path}: manifest lacks column(s) {sorted(missing)}")
    return df


def class_names(manifest: pl.DataFrame) -> list[str]:
    pairs = manifest.select("label", "class_name").unique().sort("label")
    return pairs["class_name"].to_list()


@dataclass(frozen=True)
class SplitView:
    """The rows of one split, in manifest order, with their manifest row numbers."""

    rows: np.ndarray  # int64 row numbers into the manifest
    paths: list[Path]
    labels: np.ndarray  # int64

    def permuted(self, seed: int) -> SplitView:
        """The same rows in a seeded random order (the manifest is sorted by class)."""
        order = np.random.default_rng(seed).permutation(len(self.rows))
        return SplitView(self.rows[order], [self.paths[i] for i in order], self.labels[order])


def every_image(manifest: pl.DataFrame, root: Path, seed: int) -> SplitView:
    """Every image once, in a seeded random order: what a feature store holds. Any split's
    rows, read in store order, then come in mixed-class blocks for streamed heads."""
    return SplitView(
        rows=np.arange(manifest.height, dtype=np.int64),
        paths=[root / p for p in manifest["path"].to_list()],
        labels=manifest["label"].to_numpy().astype(np.int64),
    ).permuted(seed)


def split_view(manifest: pl.DataFrame, root: Path, split: str, column: str = "split") -> SplitView:
    """The images of ``split`` in the splitting ``column`` (see :func:`split_column`)."""
    if column not in manifest.columns:
        raise DataError(
            f"data/manifest.parquet has no splitting {column!r}: it was made with fewer "
            "base.splits or base.folds; re-run download (dvc repro)"
        )
    df = manifest.with_row_index("row").filter(pl.col(column) == split)
    return SplitView(
        rows=df["row"].to_numpy().astype(np.int64),
        paths=[root / p for p in df["path"].to_list()],
        labels=df["label"].to_numpy().astype(np.int64),
    )
