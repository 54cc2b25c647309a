"""Images on disk, the manifest that describes them, and how they become tensors.

The manifest (``data/manifest.parquet``) is the contract between ``download`` and every later
stage: one row per image with its path (relative to the data root), integer label, class
name, split and SHA-256 of the file. Every stage reads images through it, in its row order,
so all strategies see exactly the same train/val/test images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from transferlab.errors import DataError

SPLITS = ("train", "val", "test")
MANIFEST_SCHEMA = {
    "path": pl.String,
    "label": pl.Int64,
    "class_name": pl.String,
    "split": pl.String,
    "sha256": pl.String,
}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_digits(root: Path) -> list[tuple[str, str]]:
    """Write scikit-learn's digits (1,797 8x8 scans, 10 classes) as ``root/<class>/<id>.png``.

    Returns (relative path, class name) pairs. Pixel values 0..16 are scaled to 0..255.
    """
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    items = []
    for i, (img, target) in enumerate(zip(images, digits.target, strict=True)):
        cls = str(int(target))
        rel = Path(cls) / f"digit_{i:04d}.png"
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(root / rel, optimize=False)
        items.append((rel.as_posix(), cls))
    return items


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB, the same way for every format.

    16-bit and 32-bit integer images are scaled to 0..255 (PIL's own conversion would clip
    them to white); transparency (RGBA, LA, palette with a transparent colour) is composited
    over white rather than dropped, which would leave whatever colour the transparent pixels
    happen to hold.
    """
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.int64)
        top = 65535 if im.mode.startswith("I;16") or arr.max() <= 65535 else int(arr.max())
        im = Image.fromarray((np.clip(arr, 0, top) * 255 // max(top, 1)).astype(np.uint8), mode="L")
    elif im.mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64))
        lo, hi = float(arr.min()), float(arr.max())
        im = Image.fromarray(np.rint((arr - lo) * 255 / (hi - lo or 1)).astype(np.uint8), mode="L")
    if im.mode == "P" and "transparency" in im.info or im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert("RGB")


def load_rgb(path: Path) -> Image.Image:
    """Decode ``path`` fully to RGB (see :func:`to_rgb`), or say which file failed."""
    # PIL rather than torchvision.io, whose decoders are deprecated since torchvision 0.29.
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataError(f"{path}: cannot decode image: {err}") from None


def stratified_split(
    labels: Sequence[int], val_fraction: float, test_fraction: float, seed: int
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
) -> pl.DataFrame:
    """The manifest of ``items`` (paths relative to ``root``), hashed and split.

    ``source`` names the data in errors the way the user knows it (their folder, their URL),
    since ``root`` is a staging folder they never saw.

    Items are ``(path, class)`` or ``(path, class, split)``. Splits that items bring (a
    ``train/val/test`` folder layout, a data set's official test set) are kept; what has no
    split is divided stratified and seeded; a missing validation split is carved from train.
    ``classes`` keeps only those classes; ``max_per_class`` caps each class (per given split).
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
    if all(s is None for s in given):
        splits = stratified_split(labels, val_fraction, test_fraction, seed)
    else:
        splits = _complete_splits(labels, given, val_fraction, seed)
    classes = class_list
    return pl.DataFrame(
        {
            "path": paths,
            "label": labels,
            "class_name": classes,
            "split": splits,
            "sha256": [sha256_file(root / p) for p in paths],
        },
        schema=MANIFEST_SCHEMA,
    )


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
    return splits


def _natural_key(name: str) -> tuple:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def manifest_fingerprint(manifest: pl.DataFrame) -> str:
    """SHA-256 of the manifest's content (not of its Parquet bytes, which embed versions)."""
    h = hashlib.sha256()
    for row in manifest.select(list(MANIFEST_SCHEMA)).iter_rows():
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


def split_view(manifest: pl.DataFrame, root: Path, split: str) -> SplitView:
    df = manifest.with_row_index("row").filter(pl.col("split") == split)
    return SplitView(
        rows=df["row"].to_numpy().astype(np.int64),
        paths=[root / p for p in df["path"].to_list()],
        labels=df["label"].to_numpy().astype(np.int64),
    )


@dataclass(frozen=True)
class Preprocess:
    """How a backbone wants its input: the registry fills this per backbone."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Evaluation resizes the short side to image_size / crop_pct, then centre-crops.
    crop_pct: float = 0.875
    interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR


def eval_transform(pre: Preprocess) -> v2.Transform:
    """Deterministic: resize, centre-crop to the backbone's input size, scale, normalize."""
    resize = round(pre.image_size / pre.crop_pct)
    return v2.Compose(
        [
            v2.Resize(resize, interpolation=pre.interpolation, antialias=True),
            v2.CenterCrop(pre.image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(pre.mean, pre.std),
        ]
    )


def train_transform(
    pre: Preprocess, *, crop_scale: tuple[float, float], rotation_degrees: float, hflip: bool
) -> v2.Transform:
    """Random crop-and-resize, small rotations and optional flips, then as :func:`eval_transform`."""
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop(
            pre.image_size, scale=crop_scale, interpolation=pre.interpolation, antialias=True
        )
    ]
    if rotation_degrees > 0:
        steps.append(v2.RandomRotation(rotation_degrees, interpolation=pre.interpolation))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]
    return v2.Compose(steps)


class BatchTransform:
    """A collate function that transforms a whole batch at once.

    Images of one size (most data sets after decoding, all of them after a fixed resize) are
    stacked as uint8 and go through ``transform`` in one call: one resize kernel launch per
    batch instead of one per image. Mixed sizes fall back to per-image transforms. Only for
    deterministic transforms: a random one would draw the same parameters for the batch.
    """

    def __init__(self, transform: v2.Transform) -> None:
        self.transform = transform

    def __call__(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = zip(*items, strict=True)
        if all(im.shape == images[0].shape for im in images):
            x = self.transform(torch.stack(images))
        else:
            x = torch.stack([self.transform(im) for im in images])
        return x, torch.stack(labels)


def eval_loader(
    paths: list[Path],
    labels: np.ndarray,
    pre: Preprocess,
    batch_size: int,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    dataset: ImageDataset | None = None,
) -> DataLoader:
    """Deterministic batches of ``paths`` in order, preprocessed as the backbone wants."""
    ds = dataset.with_transform(None) if dataset is not None else ImageDataset(paths, labels, None)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=BatchTransform(eval_transform(pre)),
    )


class ImageDataset(Dataset):
    """Decodes images to uint8 RGB tensors and applies ``transform`` (None: leave them uint8,
    for :class:`BatchTransform`).

    Grayscale, palette and RGBA inputs all come out as 3-channel RGB, the input every
    ImageNet backbone expects. Small data sets are decoded once and kept in memory
    (``cache=True``): decoding is then paid once per run, not once per epoch.
    """

    def __init__(
        self, paths: list[Path], labels: np.ndarray, transform: v2.Transform | None, *, cache: bool = True
    ) -> None:
        self.paths = paths
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.transform = transform
        self._cache: list[torch.Tensor] | None = [self._decode(p) for p in paths] if cache else None

    @staticmethod
    def _decode(path: Path) -> torch.Tensor:
        return v2.functional.pil_to_tensor(load_rgb(path))

    def with_transform(self, transform: v2.Transform | None) -> ImageDataset:
        """The same images (and decoded cache) under another transform."""
        other = object.__new__(ImageDataset)
        other.__dict__.update(self.__dict__)
        other.transform = transform
        return other

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self._cache[i] if self._cache is not None else self._decode(self.paths[i])
        return (self.transform(img) if self.transform is not None else img), self.labels[i]
