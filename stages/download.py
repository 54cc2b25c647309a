"""download: the images and their manifest (path, label, class, split, SHA-256).

Sources (``download.source``): the embedded ``digits`` (scikit-learn's 1,797 8x8 scans, 10
classes, offline), an image ``folder``, an archive ``url`` pinned by SHA-256, or a
``torchvision`` data set. Images land under data/raw/ as delivered; the manifest splits them,
stratified and seeded, keeping splits the source brings, and data/raw/ keeps the images it
lists (``download.max_per_class`` and ``download.classes`` leave only what the runs use).
Bad files are named, then fail the stage or are skipped (``download.on_bad``) and listed in
results/download/download.json.
Run through `dvc repro`; by hand: ``python stages/download.py``.
"""

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

import polars as pl
from tqdm import tqdm

from transferlab import layout
from transferlab._io import publish, write_json
from transferlab.cli import run_stage
from transferlab.config import load_params
from transferlab.data.manifest import FOLD
from transferlab.data.sources import (
    Collected,
    archive_root,
    check_splits,
    copy_items,
    cross_split_duplicates,
    download,
    extract_archive,
    label_conflicts,
    resolve_problems,
    scan_folder,
    write_digits,
    write_torchvision,
)
from transferlab.data.splitting import build_manifest
from transferlab.errors import DataError

DOWNLOADS = layout.DATA / "downloads"  # kept between runs: a broken download resumes


def collect(cfg, raw: Path) -> tuple[list, list]:
    """Fill ``raw`` with the source's images; return (items, skipped problems)."""
    if cfg.source == "digits":
        return [(p, c, None) for p, c in write_digits(raw)], []
    if cfg.source == "torchvision":
        return write_torchvision(cfg.dataset, Path(cfg.root) if cfg.root else None, cfg.download, raw), []
    if cfg.source == "folder":
        src, label = Path(cfg.path), f"download.path {cfg.path}"
        staging = None
    else:  # url
        name = cfg.url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "archive"
        bar = tqdm(unit="B", unit_scale=True, desc=name, disable=None)

        def progress(done: int, total: int | None) -> None:
            bar.total = total
            bar.update(done - bar.n)

        archive = download(cfg.url, DOWNLOADS / f"{cfg.sha256[:12]}-{name}", cfg.sha256, progress=progress)
        bar.close()
        staging = raw.parent / f".{raw.name}.extract"
        shutil.rmtree(staging, ignore_errors=True)
        extract_archive(archive, staging)
        src, label = archive_root(staging), f"download.url {cfg.url}"
    try:
        found = scan_folder(src)
        found.problems += check_splits(src, found.items)
        items = resolve_problems(found, cfg.on_bad, label)
        copy_items(src, items, raw)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return items, found.problems


def keep_listed(raw: Path, listed: list[str]) -> None:
    """Delete the files (and folders left empty) under ``raw`` that the manifest does not list.

    Every stage reads images through the manifest, so the rest is dead weight that DVC would
    still cache and re-check: data/raw is a dependency of every stage that reads images,
    and each `dvc status` or `dvc repro` walks it once per such stage (digits with
    ``download.max_per_class: 6``: 60 files instead of 1,797)."""
    keep = set(listed)
    for f in [f for f in raw.rglob("*") if f.is_file() and f.relative_to(raw).as_posix() not in keep]:
        f.unlink()
    for d in sorted((d for d in raw.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()


def source_name(cfg) -> str:
    """The data as the user named it in params.yaml."""
    return {
        "folder": f"download.path {cfg.path}",
        "url": f"download.url {cfg.url}",
        "torchvision": f"download.dataset {cfg.dataset}",
    }.get(cfg.source, "scikit-learn digits")


def left_enough(manifest: pl.DataFrame, where: str, skipped: list) -> None:
    """After files are skipped past the split (duplicates across classes or splits), what is
    left must still be a data set: two classes or more, each in train, val and test."""
    classes = manifest["class_name"].unique().sort().to_list()
    if len(classes) < 2:
        raise DataError(
            f"{where}: {len(skipped)} bad file(s) skipped leave {len(classes)} class(es) with images; "
            "need at least 2 (results/download/download.json is not written: fix or remove the files)"
        )
    have = set(manifest.select("class_name", "split").unique().iter_rows())
    for c in classes:
        missing = [s for s in ("train", "val", "test") if (c, s) not in have]
        if missing:
            raise DataError(
                f"{where}: after skipping {len(skipped)} bad file(s), class {c!r} has no "
                f"{'/'.join(missing)} image left; fix or remove the files, or give it more images"
            )


def main(args: argparse.Namespace) -> None:
    p = load_params(args.params)
    cfg = p.download
    with publish(layout.RAW) as raw:
        raw.mkdir()
        items, skipped = collect(cfg, raw)
        manifest = build_manifest(
            raw,
            items,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            seed=p.base.seed,
            max_per_class=cfg.max_per_class,
            classes=cfg.classes,
            source=source_name(cfg),
            splits=p.base.splits,
            folds=p.base.folds,
            repeats=p.base.repeats,
        )
        # Files are named as the user knows them: under their folder, not the staging one.
        shown = Path(cfg.path) if cfg.source == "folder" else layout.RAW
        for check in (label_conflicts, cross_split_duplicates):
            problems = check(manifest, shown)
            if problems:
                resolve_problems(Collected(problems=problems), cfg.on_bad, f"download.source {cfg.source}")
                dropped = {Path(path).relative_to(shown).as_posix() for path, _ in problems}
                manifest = manifest.filter(~pl.col("path").is_in(list(dropped)))
                skipped += problems
                left_enough(
                    manifest, f"download.path {shown}" if cfg.source == "folder" else "download", skipped
                )
        keep_listed(raw, manifest["path"].to_list())
        with publish(layout.MANIFEST) as tmp:
            manifest.write_parquet(tmp)
    counts = dict(manifest.group_by("split").len().sort("split").iter_rows())
    folds = dict(manifest.group_by(FOLD).len().sort(FOLD).iter_rows()) if FOLD in manifest.columns else None
    write_json(
        layout.results_dir("download") / "download.json",
        {
            "source": cfg.source,
            "images": manifest.height,
            "classes": manifest["label"].n_unique(),
            "splits": counts,  # of the first splitting (with base.folds: fold 0's run)
            **({"folds": {str(f): n for f, n in folds.items()}} if folds else {}),
            "skipped": [{"path": path, "reason": why} for path, why in skipped],
        },
    )
    print(
        f"download: {manifest.height} images, {manifest['label'].n_unique()} classes; "
        + (
            f"{len(folds)} folds of {min(folds.values())}-{max(folds.values())} images; fold 0's run: "
            if folds
            else ""
        )
        + ", ".join(f"{s}={counts.get(s, 0)}" for s in ("train", "val", "test"))
        + (
            f"; skipped {len(skipped)} bad file(s), listed in results/download/download.json"
            if skipped
            else ""
        )
    )


if __name__ == "__main__":
    run_stage(main, argparse.ArgumentParser(description=__doc__))
