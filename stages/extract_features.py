"""extract-features: the frozen backbone's pooled features of every image, into Zarr.

Computed once; every head trained on them (train-head) reuses the store, and DVC re-runs
this stage only when the images, the backbone, its weights or its preprocessing change.
Run through `dvc repro`; by hand: ``python stages/extract_features.py``.
"""

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

import numpy as np
import torch
from torch.utils.data import ConcatDataset

from transferlab import layout
from transferlab._io import write_json
from transferlab.cli import run_stage
from transferlab.config import Params, load_params
from transferlab.data.images import (
    BatchTransform,
    DecodedCache,
    ImageDataset,
    Preprocess,
    SeededItems,
    Shift,
    eval_transform,
    train_transform,
)
from transferlab.data.manifest import (
    SplitView,
    every_image,
    manifest_fingerprint,
    read_manifest,
    split_columns,
)
from transferlab.features import transferability
from transferlab.features.backbone_choice import arms_backbone
from transferlab.features.backbones import create_backbone
from transferlab.features.store import (
    AUGMENTED,
    IMAGES,
    ExtractionStats,
    FeatureStore,
    Fingerprint,
    Group,
    extract_features,
    owned_rows,
    row_ranges,
    shifted_group,
)
from transferlab.runtime import (
    close_ranks,
    configure_runtime,
    environment,
    init_ranks,
    peak_rss_bytes,
    resolve_device,
    resolve_workers,
)


def build_groups(
    p: Params, manifest: Any, images: SplitView, decoded: ImageDataset, pre: Preprocess, loader_kwargs: dict
) -> dict[str, Group]:
    """What the store holds, one group each: every image once; K augmented views of every
    image that trains in some splitting; every test image under each shift (params: shift)."""
    cfg, aug = p.extract_features, p.augment
    groups = {
        IMAGES: Group(
            images.rows,
            row_ranges(decoded, collate_fn=BatchTransform(eval_transform(pre)), **loader_kwargs),
        )
    }
    if cfg.augment_views:
        # View k of all of them before view k + 1: random per image, each item under its own
        # seed, so the views are the same however many processes or workers extract them.
        picked = np.flatnonzero(_in_some_splitting(manifest, "train")[images.rows])
        augmented = torch.utils.data.Subset(
            decoded.with_transform(
                train_transform(
                    pre, crop_scale=aug.crop_scale, rotation_degrees=aug.rotation_degrees, hflip=aug.hflip
                )
            ),
            picked.tolist(),
        )
        groups[AUGMENTED] = Group(
            np.tile(images.rows[picked], cfg.augment_views),
            row_ranges(
                SeededItems(ConcatDataset([augmented] * cfg.augment_views), p.base.seed), **loader_kwargs
            ),
        )
    # The robustness view: the heads score these like the clean test images.
    tested = np.flatnonzero(_in_some_splitting(manifest, "test")[images.rows])
    for kind in p.shift.kinds:
        shift = Shift(kind, p.shift.severity, pre.image_size, p.base.seed)
        groups[shifted_group(kind)] = Group(
            images.rows[tested],
            row_ranges(
                torch.utils.data.Subset(decoded, tested.tolist()),
                collate_fn=BatchTransform(eval_transform(pre, shift)),
                **loader_kwargs,
            ),
        )
    return groups


def _in_some_splitting(manifest: Any, split: str) -> np.ndarray:
    """Per manifest row: whether it is in ``split`` in any splitting (base.splits)."""
    inside = np.zeros(manifest.height, dtype=bool)
    for column in split_columns(manifest):
        inside |= (manifest[column] == split).to_numpy()
    return inside


def summary_of(
    p: Params, stats: ExtractionStats, decode_s: float, groups: dict[str, Group], feature_dim: int
) -> dict[str, Any]:
    """What the store cost and holds (the stage adds where and how it ran)."""
    store = FeatureStore.open(layout.FEATURES)
    return {
        "images": len(groups[IMAGES].rows),
        # the one-time cost of the two-stage path: every image once, without augmentation
        "extract_time_s": decode_s + stats.split_seconds[IMAGES],
        "decode_time_s": decode_s,
        "augment_views": p.extract_features.augment_views,
        "augment_images": len(groups[AUGMENTED].rows) if AUGMENTED in groups else 0,
        "augment_time_s": stats.split_seconds.get(AUGMENTED, 0.0),
        "total_time_s": stats.seconds,
        "forward_time_s": stats.forward_seconds,
        "images_per_s": stats.images_per_s,
        "forward_images_per_s": stats.forward_images_per_s,
        "feature_dim": feature_dim,
        "store_bytes": store.nbytes_on_disk(),
        "store_files": sum(1 for f in layout.FEATURES.rglob("*") if f.is_file()),
        "peak_rss_bytes": peak_rss_bytes(),
    }


def main(args: argparse.Namespace) -> None:
    p = load_params(args.params)
    cfg = p.extract_features
    arms = arms_backbone(p.backbone)  # backbone.name, or the screen's pick (choose-backbone)
    device = resolve_device(p.base.device)
    workers = resolve_workers(cfg.num_workers, device)
    configure_runtime(p.base.num_threads, device, channels_last=p.base.channels_last, workers=workers)
    # under torchrun: one rank per process, each extracting its own shards of the store
    ranks, device = init_ranks(device, p.base.num_threads)
    manifest = read_manifest(layout.MANIFEST)
    backbone = create_backbone(
        arms["name"], arms["image_size"], arms["weights"], crop_pct=p.backbone.crop_pct
    )
    pre = backbone.preprocess
    images = every_image(manifest, layout.RAW, p.base.seed)
    # Images are decoded as they are read and kept while base.image_cache_mb allows, so the
    # augmented views reuse them; larger data sets are decoded again, never all held.
    decoded = ImageDataset(
        images.paths, images.labels, None, cache=DecodedCache(p.base.image_cache_mb * 2**20)
    )
    t = time.perf_counter()
    # what fits, decoded up front (see DecodedCache.fill); under torchrun, of this rank's shards
    mine = owned_rows(len(images.paths), cfg.shard_rows, ranks)
    decoded.cache.fill(images.paths[mine.start : mine.stop])
    decode_s = max(ranks.gather(time.perf_counter() - t))  # the slowest process's, under torchrun
    loader_kwargs = {
        "batch_size": cfg.batch_size,
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
    }
    groups = build_groups(p, manifest, images, decoded, pre, loader_kwargs)
    fingerprint = Fingerprint.of(
        backbone,
        manifest_fingerprint(manifest),
        cfg.augment_views,
        p.augment.model_dump(mode="json"),
        shift=p.shift.model_dump(mode="json") if p.shift.kinds else None,
    )
    stats = extract_features(
        backbone,
        groups,
        layout.FEATURES,
        fingerprint,
        device,
        amp=cfg.amp,
        shard_rows=cfg.shard_rows,
        ranks=ranks,
    )
    close_ranks(ranks)
    if not ranks.main:  # rank 0 writes the summary, once the store is complete
        return
    summary = {
        **summary_of(p, stats, decode_s, groups, backbone.num_features),
        "num_workers": workers,
        # torchrun processes (images summed over them, times the slowest one's) and rows an
        # interrupted run had written
        "ranks": ranks.size,
        "resumed_rows": stats.resumed,
        "prefetched": stats.prefetched,
        "amp": cfg.amp,
        "cache": {"budget_mb": p.base.image_cache_mb, "held_mb": round(decoded.cache.used / 2**20, 1)},
        "device": str(device),
        "environment": environment(),
        "fingerprint": fingerprint.to_json(),
    }
    # what the store promises before any head is trained (base splitting; transferability.py)
    store = FeatureStore.open(layout.FEATURES)
    summary["transferability"] = transferability.score_store(store, manifest, p.base.seed)
    write_json(layout.results_dir("extract") / "extract.json", summary)
    print(
        f"extract-features: {stats.images} images in {stats.seconds:.1f}s "
        f"({stats.images_per_s:.0f} img/s) -> {layout.FEATURES}"
    )


if __name__ == "__main__":
    run_stage(main, argparse.ArgumentParser(description=__doc__))
