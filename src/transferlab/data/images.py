"""Images as tensors: decoding, the backbone's preprocessing, augmentation, datasets.

What the image stages (extract-features, finetune) need and download does not: editing a
transform re-runs only the stages that transform images. Compare torchvision's
``references/classification/presets.py``, which keeps the same split.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, get_worker_info

from transferlab.errors import DataError, image_too_large

if TYPE_CHECKING:
    from torchvision.transforms import v2

# torchvision is imported where a transform is built, not here: its import pulls in
# torch._dynamo (about 3 s of every stage's start-up on a laptop CPU), and the stages that
# only read preprocessing settings (train-head, choose-backbone) never transform an image.


@dataclass(frozen=True)
class Preprocess:
    """How a backbone wants its input: the registry fills this per backbone."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Evaluation resizes the short side to image_size / crop_pct, then centre-crops.
    crop_pct: float = 0.875
    interpolation: str = "bilinear"  # a torchvision InterpolationMode's value


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
    except Image.DecompressionBombError as err:  # not an OSError: PIL's own class
        raise DataError(f"{path}: {image_too_large(err)}") from None
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataError(f"{path}: cannot decode image: {err}") from None


# The robustness view's shifts (params: shift), at ImageNet-C's strengths (Hendrycks and
# Dietterich, ICLR 2019) for severities 1..5: Gaussian blur sigma in pixels at 224 px (scaled
# with the input size), Gaussian noise std on [0, 1] pixels, contrast kept, rotation degrees.
SHIFT_STRENGTHS: dict[str, tuple[float, ...]] = {
    "blur": (1.0, 2.0, 3.0, 4.0, 6.0),
    "noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "rotation": (5.0, 10.0, 15.0, 20.0, 30.0),
}


class Shift(torch.nn.Module):
    """One fixed distribution shift of preprocessed [0, 1] images, (C, H, W) or (N, C, H, W).

    Deterministic, so a shifted test split is the same for every model, batch size and
    process: blur, contrast and rotation have no randomness, and the noise of each image is
    drawn from a generator seeded with ``seed`` and a hash of the image itself.
    """

    def __init__(self, kind: str, severity: int, image_size: int, seed: int = 0) -> None:
        super().__init__()
        if kind not in SHIFT_STRENGTHS:
            raise ValueError(f"unknown shift {kind!r}; known: {', '.join(SHIFT_STRENGTHS)}")
        self.kind, self.seed = kind, seed
        self.strength = SHIFT_STRENGTHS[kind][severity - 1]
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        if self.kind == "blur":
            sigma = self.strength * self.image_size / 224
            k = 2 * math.ceil(3 * sigma) + 1
            return F.gaussian_blur(x, [k, k], [sigma, sigma])
        if self.kind == "contrast":
            return F.adjust_contrast(x, self.strength)
        if self.kind == "rotation":
            return F.rotate(x, self.strength, interpolation=InterpolationMode.BILINEAR)
        batch = x if x.ndim == 4 else x[None]
        noisy = torch.stack([im + self.strength * self._noise(im) for im in batch]).clamp(0, 1)
        return noisy if x.ndim == 4 else noisy[0]

    def _noise(self, image: torch.Tensor) -> torch.Tensor:
        pixels = (image * 255).round().to(torch.uint8).numpy().tobytes()
        key = int.from_bytes(hashlib.blake2b(pixels, digest_size=8).digest(), "little")
        g = torch.Generator().manual_seed((key ^ self.seed) & (2**63 - 1))
        return torch.randn(image.shape, generator=g)


def eval_transform(pre: Preprocess, shift: Shift | None = None) -> v2.Transform:
    """Deterministic: resize, centre-crop to the backbone's input size, scale, (shift,) normalize."""
    from torchvision.transforms import v2

    resize = round(pre.image_size / pre.crop_pct)
    return v2.Compose(
        [
            v2.Resize(resize, interpolation=v2.InterpolationMode(pre.interpolation), antialias=True),
            v2.CenterCrop(pre.image_size),
            v2.ToDtype(torch.float32, scale=True),
            *([shift] if shift is not None else []),
            v2.Normalize(pre.mean, pre.std),
        ]
    )


def train_transform(
    pre: Preprocess, *, crop_scale: tuple[float, float], rotation_degrees: float, hflip: bool
) -> v2.Transform:
    """Random crop-and-resize, small rotations and optional flips, then as :func:`eval_transform`."""
    from torchvision.transforms import v2

    mode = v2.InterpolationMode(pre.interpolation)
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop(pre.image_size, scale=crop_scale, interpolation=mode, antialias=True)
    ]
    if rotation_degrees > 0:
        steps.append(v2.RandomRotation(rotation_degrees, interpolation=mode))
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
    cache: DecodedCache | None = None,
    shift: Shift | None = None,
) -> DataLoader:
    """Deterministic batches of ``paths`` in order, preprocessed as the backbone wants
    (and shifted by ``shift``, for the robustness view)."""
    ds = (
        dataset.with_transform(None)
        if dataset is not None
        else ImageDataset(paths, labels, None, cache=cache)
    )
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=BatchTransform(eval_transform(pre, shift)),
    )


def decode(path: Path) -> torch.Tensor:
    """``path`` as a uint8 RGB tensor (3, H, W): the one decoding every stage and predict use."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    return pil_to_tensor(load_rgb(path))


class DecodedCache:
    """Decoded images kept in memory up to a byte budget; beyond it, decoded on every access.

    The first images that fit are kept and never evicted: under random access an LRU policy
    would evict what the next epoch needs, while keeping a fixed set gives a steady hit rate
    of budget / data size. Memory stays bounded by the budget whatever the data size; small
    data sets (the default digits) are decoded once per run.

    In DataLoader worker processes (forked) each worker inherits what the parent holds,
    shared copy-on-write, and takes ``1 / num_workers`` of what is left of the budget, so the
    total stays within it. Pickled (spawned workers), a cache travels empty.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget = max(0, int(budget_bytes))
        self.used = 0
        self.hits = self.misses = 0
        self._images: dict[Path, torch.Tensor] = {}
        self._worker: int | None = None

    def get(self, path: Path) -> torch.Tensor:
        self._share_among_workers()
        img = self._images.get(path)
        if img is not None:
            self.hits += 1
            return img
        self.misses += 1
        img = decode(path)
        size = img.numel() * img.element_size()
        if self.used + size <= self.budget:
            self._images[path] = img
            self.used += size
        return img

    def fill(self, paths: list[Path], chunk: int = 256) -> int:
        """Decode ``paths`` in order, a thread per core, until the budget is full; returns how
        many are held. Called before a stage's main loop: decoding what fits up front keeps
        the long-lived cached images together in memory, where filling the cache between the
        batches' large temporary tensors fragments the heap (the benchmark measured 1.2 GB
        against 0.6 GB of growth for 20,000 small images)."""
        from transferlab._io import parallel_map

        for start in range(0, len(paths), chunk):
            todo = [p for p in paths[start : start + chunk] if p not in self._images]
            for path, img in zip(todo, parallel_map(decode, todo, desc="decoding"), strict=True):
                size = img.numel() * img.element_size()
                if self.used + size > self.budget:
                    return len(self._images)
                self._images[path] = img
                self.used += size
        return len(self._images)

    def _share_among_workers(self) -> None:
        info = get_worker_info()
        if info is not None and self._worker != info.id:
            self._worker = info.id
            self.budget = self.used + (self.budget - self.used) // info.num_workers

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": {}, "used": 0}


class SeededItems(Dataset):
    """``dataset`` with each item drawn under its own random seed.

    A key is an index i, or (i, epoch) from :class:`transferlab.training.distributed.EpochSampler`;
    the seed comes from ``seed``, the epoch and i. Random transforms then give an item the
    same result whichever process, worker or order reads it: the augmented views in the
    feature store and the augmented training images are the same from one process, from
    DataLoader workers or from N torchrun ranks each reading its own rows.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]):  # noqa: ANN204 - whatever ``dataset`` returns
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone (torch.manual_seed also seeds every accelerator, 40x
            # slower); it keeps only the low 32 bits of a seed, so mix all three into those
            torch.default_generator.manual_seed(_mix(self.seed, epoch, i) & 0xFFFFFFFF)
            return self.dataset[i]


_M64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 64-bit hash of ``values`` (SplitMix64 steps): seeds that differ in any of them
    differ in every bit, the low 32 included."""
    h = 0
    for v in values:
        z = (h ^ (v & _M64)) + 0x9E3779B97F4A7C15 & _M64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _M64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _M64
        h = z ^ (z >> 31)
    return h


# Decoded images kept in memory by default, per process (base.image_cache_mb overrides it).
DEFAULT_CACHE_MB = 1024


class ImageDataset(Dataset):
    """Decodes images to uint8 RGB tensors and applies ``transform`` (None: leave them uint8,
    for :class:`BatchTransform`).

    Grayscale, palette and RGBA inputs all come out as 3-channel RGB, the input every
    ImageNet backbone expects. Images are decoded when first read and kept in ``cache`` (a
    :class:`DecodedCache`, which may be shared by several datasets of one process) while its
    byte budget allows: decoding is paid once per run for data that fits, and memory stays
    bounded for data that does not.
    """

    def __init__(
        self,
        paths: list[Path],
        labels: np.ndarray,
        transform: v2.Transform | None,
        *,
        cache: DecodedCache | None = None,
    ) -> None:
        self.paths = paths
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.transform = transform
        self.cache = cache if cache is not None else DecodedCache(DEFAULT_CACHE_MB * 2**20)

    def with_transform(self, transform: v2.Transform | None) -> ImageDataset:
        """The same images (and decoded cache) under another transform."""
        other = object.__new__(ImageDataset)
        other.__dict__.update(self.__dict__)
        other.transform = transform
        return other

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.cache.get(self.paths[i])
        return (self.transform(img) if self.transform is not None else img), self.labels[i]
