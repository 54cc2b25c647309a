"""finetune@<strategy>: backbone + head trained end to end from augmented images.

One DVC stage per strategy listed in ``finetune.strategies``; each depends on its own params
section only, so tuning one strategy never re-runs another.
Run through `dvc repro`; by hand: ``python stages/finetune.py frozen``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

import torch
from torch.utils.data import DataLoader

from transferlab import layout
from transferlab.backbones import check_backbone_name, create_backbone
from transferlab.cli import run_stage
from transferlab.config import load_params
from transferlab.data import (
    ImageDataset,
    class_names,
    eval_transform,
    read_manifest,
    split_view,
    train_transform,
)
from transferlab.models import TransferModel, count_parameters, make_head
from transferlab.runtime import configure_threads, resolve_device, seed_everything
from transferlab.strategies import apply_strategy, param_groups
from transferlab.tracking import CurveLogger, finish_run, training_summary
from transferlab.training import fit


def main(args: argparse.Namespace) -> None:
    p = load_params(args.params, "base", "backbone", "finetune")
    base, bcfg, ft = p["base"], p["backbone"], p["finetune"]
    cfg = ft.strategy(args.strategy)
    check_backbone_name(bcfg.name)
    configure_threads(base.num_threads)
    device = resolve_device(base.device)
    generator = seed_everything(base.seed)
    manifest = read_manifest(layout.MANIFEST)
    classes = class_names(manifest)

    backbone = create_backbone(bcfg.name, bcfg.image_size, bcfg.weights, crop_pct=bcfg.crop_pct)
    model = TransferModel(backbone, make_head(ft.head, backbone.num_features, len(classes)))
    apply_strategy(model, args.strategy, bn=cfg.bn)
    trainable, total = count_parameters(model)
    print(f"finetune@{args.strategy}: {trainable:,} of {total:,} parameters trainable")
    model.to(device)

    pre = backbone.preprocess
    aug = ft.augment
    train, val = (split_view(manifest, layout.RAW, s) for s in ("train", "val"))
    train_ds = ImageDataset(
        train.paths,
        train.labels,
        train_transform(
            pre, crop_scale=aug.crop_scale, rotation_degrees=aug.rotation_degrees, hflip=aug.hflip
        ),
    )
    val_ds = ImageDataset(val.paths, val.labels, eval_transform(pre))
    loader_kw = {
        "num_workers": cfg.num_workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": cfg.num_workers > 0,
    }
    train_loader = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=generator,
        drop_last=len(train_ds) > cfg.batch_size,
        **loader_kw,
    )
    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size * 2, **loader_kw)

    optimizer = torch.optim.AdamW(param_groups(model, cfg))
    logger = CurveLogger(layout.results_dir(args.strategy))
    result = fit(
        model,
        optimizer,
        train_loader,
        val_loader,
        cfg,
        device,
        on_epoch=logger,
        desc=f"finetune@{args.strategy}",
    )
    logger.close()
    meta = {
        "kind": "transfer",
        "strategy": args.strategy,
        "backbone": bcfg.name,
        "image_size": bcfg.image_size,
        "crop_pct": pre.crop_pct,
        "weights_sha256": backbone.weights_sha256,
        "head": ft.head.model_dump(),
        "classes": classes,
    }
    summary = training_summary(
        result,
        model=args.strategy,
        n_train=len(train_ds),
        trainable_params=trainable,
        total_params=total,
        device=device,
    )
    finish_run(args.strategy, model.cpu(), result, meta, summary)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("strategy", help="a strategy listed in params: finetune.strategies")
    run_stage(main, parser)
