"""Where the images come from: the embedded digits, a folder, an archive URL, torchvision.

Every source ends the same way: image files under ``data/raw/`` and a list of items
``(path relative to data/raw, class name, split or None)``; :func:`transferlab.data.splitting.build_manifest`
turns that into the manifest. Files are kept as delivered (a JPEG stays a JPEG) and decoded
consistently when read (:func:`transferlab.data.images.load_rgb`).

Bad data is found here, before anything is trained: unreadable or truncated images, files
that are not images, empty class folders, classes the training split lacks, the same image
in two splits. Each problem names its files; ``on_bad: fail`` stops, ``on_bad: skip`` leaves
the files out and lists them in the stage's output.
"""

from __future__ import annotations

import shutil
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import polars as pl
from PIL import Image

from transferlab._io import parallel_map, sha256_file
from transferlab.data.manifest import IMAGE_SUFFIXES, SPLITS, split_columns
from transferlab.errors import DataError, image_too_large

Item = tuple[str, str, str | None]  # (path relative to the raw root, class name, split or None)


@dataclass
class Collected:
    items: list[Item] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, what is wrong)


def check_image(path: Path) -> str | None:
    """None if ``path`` decodes completely, else what is wrong with it."""
    try:
        with Image.open(path) as im:
            im.load()  # decodes all pixels: a truncated file fails here, not at verify()
    except Image.DecompressionBombError as err:
        return image_too_large(err)
    except Exception as err:  # PIL raises many types for broken files
        return f"not a readable image ({type(err).__name__}: {err})"
    return None


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")  # .DS_Store, .gitkeep, editor files


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))


def scan_folder(root: Path) -> Collected:
    """Items of ``root/<class>/*`` or ``root/{train,val,test}/<class>/*`` (splits kept).

    Paths are relative to ``root``. Every image is fully decoded once.
    """
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    top = _class_dirs(root)
    names = {p.name for p in top}
    split_layout = bool(top) and names <= set(SPLITS) and "train" in names
    if names & set(SPLITS) and not split_layout:
        splits, classes = sorted(names & set(SPLITS)), sorted(names - set(SPLITS))
        raise DataError(
            f"{root}: mixes two layouts: split folder(s) {', '.join(s + '/' for s in splits)} beside "
            + (f"class folder(s) {', '.join(classes[:5])}" if classes else "no train/ folder")
            + "; use either <class>/* or train/<class>/* (with optional val/, test/)"
        )
    out = Collected()
    for stray in sorted(p for p in root.iterdir() if p.is_file() and _visible(p)):
        out.problems.append((str(stray), "file outside any class folder"))
    candidates: list[tuple[Path, str, str | None]] = []
    for split_dir in top if split_layout else [root]:
        split = split_dir.name if split_layout else None
        for cls_dir in _class_dirs(split_dir):
            files = sorted(p for p in cls_dir.rglob("*") if p.is_file() and _visible(p))
            if not files:
                out.problems.append((str(cls_dir), "empty class folder"))
            for f in files:
                if f.is_symlink():
                    out.problems.append((str(f), "symbolic link (not followed)"))
                elif f.suffix.lower() not in IMAGE_SUFFIXES:
                    out.problems.append((str(f), f"not an image file (suffix {f.suffix or 'none'!r})"))
                else:
                    candidates.append((f, cls_dir.name, split))
    reasons = parallel_map(check_image, [f for f, _, _ in candidates], desc="checking images")
    for (f, cls, split), reason in zip(candidates, reasons, strict=True):
        if reason:
            out.problems.append((str(f), reason))
        else:
            out.items.append((f.relative_to(root).as_posix(), cls, split))
    return out


def check_splits(root: Path, items: list[Item]) -> list[tuple[str, str]]:
    """Labels that disagree with the folders: val/test classes that train does not have."""
    train_classes = {c for _, c, s in items if s in (None, "train")}
    return [
        (str(root / path), f"class {cls!r} has {split} images but no training images")
        for path, cls, split in items
        if split not in (None, "train") and cls not in train_classes
    ]


def label_conflicts(manifest: pl.DataFrame, root: Path) -> list[tuple[str, str]]:
    """Files with exactly the same bytes under different classes: one image, two labels.

    Every copy is a problem (which label is right cannot be told), and copies in different
    splits would also leak. ``root`` is how the files are named to the user.
    """
    problems = []
    by_digest = manifest.group_by("sha256").agg(pl.col("path"), pl.col("class_name"))
    for _, paths, classes in sorted(by_digest.iter_rows(), key=lambda r: r[1][0]):
        if len(set(classes)) > 1:
            others = ", ".join(f"{root / p} ({c})" for p, c in zip(paths, classes, strict=True))
            for p, c in zip(paths, classes, strict=True):
                problems.append(
                    (str(root / p), f"same bytes under different classes: {others} (class {c!r} here)")
                )
    return problems


def cross_split_duplicates(manifest: pl.DataFrame, root: Path) -> list[tuple[str, str]]:
    """Images whose exact bytes are also in an earlier split (train < val < test), in any
    of the manifest's splittings.

    A test image that is also a training image measures memory, not generalization.
    """
    order = {s: i for i, s in enumerate(SPLITS)}
    problems: dict[str, str] = {}
    for column in split_columns(manifest):
        first: dict[str, tuple[int, str]] = {}
        rows = sorted(
            manifest.select("path", column, "sha256").iter_rows(), key=lambda r: (order[r[1]], r[0])
        )
        for path, split, digest in rows:
            if digest in first and first[digest][0] < order[split]:
                split0, path0 = first[digest]
                problems.setdefault(str(root / path), f"same image as {root / path0} ({SPLITS[split0]})")
            first.setdefault(digest, (order[split], path))
    return list(problems.items())


def resolve_problems(collected: Collected, on_bad: str, source: str) -> list[Item]:
    """Fail with every problem named, or drop the bad files and return what remains."""
    if collected.problems and on_bad == "fail":
        listing = "; ".join(f"{p}: {why}" for p, why in collected.problems[:10])
        more = len(collected.problems) - 10
        raise DataError(
            f"{source}: {len(collected.problems)} bad file(s): {listing}"
            + (f"; and {more} more" if more > 0 else "")
            + " (set download.on_bad: skip to leave them out)"
        )
    bad = {p for p, _ in collected.problems}
    return [it for it in collected.items if it[0] not in bad]


def copy_items(src: Path, items: list[Item], dst: Path) -> None:
    for parent in sorted({(dst / rel).parent for rel, _, _ in items}):
        parent.mkdir(parents=True, exist_ok=True)
    parallel_map(lambda rel: shutil.copy2(src / rel, dst / rel), [rel for rel, _, _ in items], desc="copying")


# ------------------------------------------------------------------------------ URL archives

MAX_ARCHIVE_MEMBERS = 1_000_000
MAX_EXTRACTED_BYTES = 64 * 1024**3
# Images barely compress (JPEG, PNG are compressed already; raw TIFF or BMP a few times):
# a member that claims to expand more than this is a decompression bomb, refused unread.
MAX_COMPRESSION_RATIO = 200


def download(
    url: str, dest: Path, sha256: str, *, progress: Callable[[int, int | None], None] | None = None
) -> Path:
    """Fetch ``url`` to ``dest``, resuming a partial download, and verify its SHA-256.

    The file is written to ``dest.part`` and renamed only once its hash matches.
    """
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            if have and resp.status != 206:  # the server ignored the range: start over
                have = 0
            total = resp.headers.get("Content-Length")
            total_bytes = int(total) + have if total is not None else None
            with open(part, "ab" if have else "wb") as f:
                done = have
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total_bytes)
    except OSError as err:
        raise DataError(f"{url}: download failed ({err}); run again to resume") from None
    digest = sha256_file(part)
    if digest != sha256:
        part.unlink()
        raise DataError(f"{url}: SHA-256 is {digest}, expected {sha256} (download.sha256); file discarded")
    part.rename(dest)
    return dest


def _safe_member(name: str, dest: Path) -> Path:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or name.startswith(("/", "\\")) or ":" in p.parts[0]:
        raise DataError(f"archive member {name!r} would escape the extraction folder")
    target = (dest / p).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise DataError(f"archive member {name!r} would escape the extraction folder")
    return target


def extract_archive(archive: Path, dest: Path) -> None:
    """Extract a zip, tar or tar.gz into ``dest``: regular files and folders only.

    Refuses absolute paths, ``..``, links, device files and archives whose members or
    total size exceed the limits (a "zip bomb").
    """
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members: list[tuple] = []
            for info in zf.infolist():
                mode = (info.external_attr >> 16) & 0o170000
                regular = mode in (0, 0o100000, 0o040000)  # 0: made on a system without modes
                ratio = info.file_size / max(info.compress_size, 1)
                if info.file_size > 1 << 20 and ratio > MAX_COMPRESSION_RATIO:
                    raise DataError(
                        f"{archive}: member {info.filename!r} would expand {ratio:,.0f}x "
                        f"({info.compress_size:,} to {info.file_size:,} bytes; limit "
                        f"{MAX_COMPRESSION_RATIO}x): refused as a decompression bomb, nothing extracted"
                    )
                members.append(
                    (info.filename, info.is_dir(), regular, info.file_size, lambda i=info: zf.open(i))
                )
            _extract_members(archive, members, dest)
        return
    try:
        tf = tarfile.open(archive)
    except tarfile.TarError:
        raise DataError(f"{archive}: neither a zip nor a tar archive") from None
    with tf:
        members = [
            (m.name, m.isdir(), m.isfile() or m.isdir(), m.size, lambda m=m: tf.extractfile(m)) for m in tf
        ]
        declared, packed = sum(m[3] for m in members), archive.stat().st_size
        if declared > 1 << 20 and declared > packed * MAX_COMPRESSION_RATIO:
            raise DataError(
                f"{archive}: declares {declared:,} bytes in {packed:,} ({declared / packed:,.0f}x; limit "
                f"{MAX_COMPRESSION_RATIO}x): refused as a decompression bomb, nothing extracted"
            )
        _extract_members(archive, members, dest)


def _extract_members(archive: Path, members: list[tuple], dest: Path) -> None:
    """Check every member (name, is_dir, is_regular, size, opener) first, then write them."""
    if len(members) > MAX_ARCHIVE_MEMBERS:
        raise DataError(f"{archive}: more than {MAX_ARCHIVE_MEMBERS} members")
    total = 0
    targets = []
    for name, _, regular, size, _ in members:
        targets.append(_safe_member(name, dest))
        if not regular:
            raise DataError(f"{archive}: member {name!r} is a link or special file")
        total += size
        if total > MAX_EXTRACTED_BYTES:
            raise DataError(f"{archive}: extracts to more than {MAX_EXTRACTED_BYTES} bytes")
    for (name, is_dir, _, size, opener), target in zip(members, targets, strict=True):
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with opener() as src, open(target, "wb") as out:
            _copy_at_most(src, out, size, archive, name)


def _copy_at_most(src, out, size: int, archive: Path, name: str) -> None:
    """Copy a member, refusing one that yields more bytes than its header declared."""
    written = 0
    while chunk := src.read(1 << 20):
        written += len(chunk)
        if written > size:
            raise DataError(f"{archive}: member {name!r} is larger than its header says; refused")
        out.write(chunk)


def archive_root(folder: Path) -> Path:
    """The image folder inside an extracted archive: descend through lone wrapper folders
    (``dataset-v2/`` around the classes), but never into a split folder."""
    while True:
        entries = [p for p in folder.iterdir() if _visible(p)]
        if len(entries) == 1 and entries[0].is_dir() and entries[0].name not in SPLITS:
            folder = entries[0]
            continue
        return folder


# ----------------------------------------------------------------------- torchvision data sets

# name -> (class, how to ask for each split). Splits not listed are carved from train.
TORCHVISION: dict[str, tuple[str, dict[str, dict]]] = {
    "CIFAR10": ("CIFAR10", {"train": {"train": True}, "test": {"train": False}}),
    "CIFAR100": ("CIFAR100", {"train": {"train": True}, "test": {"train": False}}),
    "MNIST": ("MNIST", {"train": {"train": True}, "test": {"train": False}}),
    "FashionMNIST": ("FashionMNIST", {"train": {"train": True}, "test": {"train": False}}),
    "Flowers102": (
        "Flowers102",
        {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}},
    ),
    "OxfordIIITPet": ("OxfordIIITPet", {"train": {"split": "trainval"}, "test": {"split": "test"}}),
    "EuroSAT": ("EuroSAT", {"train": {}}),
    "DTD": ("DTD", {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}),
    "Food101": ("Food101", {"train": {"split": "train"}, "test": {"split": "test"}}),
    "STL10": ("STL10", {"train": {"split": "train"}, "test": {"split": "test"}}),
}


def _class_names(ds, n_labels: int) -> list[str]:
    names = getattr(ds, "classes", None)
    if names and len(names) >= n_labels:
        return [str(c).replace("/", "_") for c in names]
    return [str(i) for i in range(n_labels)]


def write_torchvision(name: str, root: Path | None, download_ok: bool, dst: Path) -> list[Item]:
    """Write a torchvision data set's images as ``dst/<split>/<class>/<index>.png``.

    ``root`` is where the data set is (or is downloaded to); ``download_ok`` lets torchvision
    fetch it when missing.
    """
    import torchvision.datasets as tvd

    if name not in TORCHVISION:
        raise DataError(
            f"download.dataset: unknown torchvision data set {name!r}; known: {', '.join(TORCHVISION)}"
        )
    cls_name, splits = TORCHVISION[name]
    cls = getattr(tvd, cls_name)
    root = root or Path.home() / ".cache" / "torchvision"
    items: list[Item] = []
    for split, kwargs in splits.items():
        try:
            ds = cls(root=str(root), download=download_ok, **kwargs)
        except (RuntimeError, OSError) as err:
            hint = "" if download_ok else " (set download.download: true to fetch it)"
            raise DataError(f"download.root: {name} not usable at {root}: {err}{hint}") from None
        labels = (
            [int(ds[i][1]) for i in range(len(ds))]
            if not hasattr(ds, "targets")
            else list(map(int, ds.targets))
        )
        names = _class_names(ds, max(labels) + 1)
        for i in range(len(ds)):
            img, _ = ds[i]
            rel = f"{split}/{names[labels[i]]}/{i:06d}.png"
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            img.save(dst / rel)
            items.append((rel, names[labels[i]], split))
    return items


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
