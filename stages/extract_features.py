"""extract-features: the frozen backbone's pooled features of every image, into Zarr.

Computed once; every head trained on them (train-head) reuses the store, and DVC re-runs
this stage only when the images, the backbone, its weights or its preprocessing change.
Run through `dvc repro`; by hand: ``python stages/extract_features.py``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

import numpy as np
from torch.utils.data import ConcatDataset, DataLoader

from transferlab import layout
from transferlab._io import write_json
from transferlab.backbones import check_backbone_name, create_backbone
from transferlab.cli import run_stage
from transferlab.config import load_params
from transferlab.data import (
    SPLITS,
    ImageDataset,
    eval_loader,
    manifest_fingerprint,
    read_manifest,
    split_view,
    train_transform,
)
from transferlab.features import FeatureStore, Fingerprint, extract_features
from transferlab.runtime import (
    configure_runtime,
    environment,
    peak_rss_bytes,
    resolve_device,
    seed_everything,
)


def main(args: argparse.Namespace) -> None:
    p = load_params(args.params, "base", "backbone", "augment", "extract_features")
    bcfg, cfg, aug = p["backbone"], p["extract_features"], p["augment"]
    check_backbone_name(bcfg.name)
    device = resolve_device(p["base"].device)
    configure_runtime(p["base"].num_threads, device)
    manifest = read_manifest(layout.MANIFEST)
    backbone = create_backbone(bcfg.name, bcfg.image_size, bcfg.weights, crop_pct=bcfg.crop_pct)
    pre = backbone.preprocess
    views = {s: split_view(manifest, layout.RAW, s) for s in SPLITS}
    # Training rows in a seeded random order: streamed heads then see mixed-class blocks.
    views["train"] = views["train"].permuted(p["base"].seed)
    pin = device.type == "cuda"
    decoded = {s: ImageDataset(v.paths, v.labels, None) for s, v in views.items()}
    loaders = {
        s: eval_loader(
            v.paths,
            v.labels,
            pre,
            cfg.batch_size,
            num_workers=cfg.num_workers,
            pin_memory=pin,
            dataset=decoded[s],
        )
        for s, v in views.items()
    }
    rows = {s: v.rows for s, v in views.items()}
    if cfg.augment_views:
        # K augmented views of every training image: random per image, so transformed one
        # by one, drawn from a seeded generator.
        augmented = decoded["train"].with_transform(
            train_transform(
                pre, crop_scale=aug.crop_scale, rotation_degrees=aug.rotation_degrees, hflip=aug.hflip
            )
        )
        loaders["train_aug"] = DataLoader(
            ConcatDataset([augmented] * cfg.augment_views),
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            pin_memory=pin,
            generator=seed_everything(p["base"].seed),
        )
        rows["train_aug"] = np.tile(views["train"].rows, cfg.augment_views)
    fingerprint = Fingerprint.of(
        backbone, manifest_fingerprint(manifest), cfg.augment_views, aug.model_dump(mode="json")
    )
    stats = extract_features(backbone, loaders, rows, layout.FEATURES, fingerprint, device)
    store = FeatureStore.open(layout.FEATURES)
    plain = [s for s in SPLITS if s in stats.split_seconds]
    summary = {
        "images": sum(stats.split_images[s] for s in plain),
        # the one-time cost of the two-stage path: every image once, without augmentation
        "extract_time_s": sum(stats.split_seconds[s] for s in plain),
        "augment_views": cfg.augment_views,
        "augment_images": stats.split_images.get("train_aug", 0),
        "augment_time_s": stats.split_seconds.get("train_aug", 0.0),
        "total_time_s": stats.seconds,
        "forward_time_s": stats.forward_seconds,
        "images_per_s": stats.images_per_s,
        "forward_images_per_s": stats.images / stats.forward_seconds,
        "feature_dim": backbone.num_features,
        "store_bytes": store.nbytes_on_disk(),
        "store_files": sum(1 for f in layout.FEATURES.rglob("*") if f.is_file()),
        "peak_rss_bytes": peak_rss_bytes(),
        "device": str(device),
        "environment": environment(),
        "fingerprint": fingerprint.to_json(),
    }
    write_json(layout.results_dir("extract") / "extract.json", summary)
    print(
        f"extract-features: {stats.images} images in {stats.seconds:.1f}s "
        f"({stats.images_per_s:.0f} img/s) -> {layout.FEATURES}"
    )


if __name__ == "__main__":
    run_stage(main, argparse.ArgumentParser(description=__doc__))
