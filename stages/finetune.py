"""finetune@<strategy>: backbone + head trained end to end from augmented images.

One DVC stage per strategy in ``finetune.strategies`` (and ``finetune-from-head@lp-ft`` for
the strategies in ``finetune.from_head``, which start from train-head's checkpoint); each
depends on its own params section only, so tuning one strategy never re-runs another.
One stage per strategy and seed (``finetune@frozen-0``).
Run through `dvc repro`; by hand: ``python stages/finetune.py frozen --seed 0``.
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
from transferlab.config import STRATEGIES, HeadConfig, ProgressiveConfig, load_params
from transferlab.data import (
    ImageDataset,
    class_names,
    eval_loader,
    read_manifest,
    split_view,
    train_transform,
)
from transferlab.errors import FingerprintMismatch
from transferlab.models import TransferModel, count_parameters, load_checkpoint, make_head
from transferlab.runtime import configure_threads, memory_format, resolve_device, seed_everything
from transferlab.strategies import ProgressiveUnfreezer, apply_strategy, param_groups
from transferlab.tracking import CurveLogger, finish_run, training_summary
from transferlab.training import class_weights, fit


def probe_head(backbone, classes: list[str], seed: int) -> tuple[torch.nn.Module, HeadConfig]:
    """train-head's linear probe of the same seed, checked to come from this backbone and classes."""
    ckpt = layout.checkpoint(layout.run_name(layout.FEATURES_MODEL, seed))
    state, meta = load_checkpoint(ckpt)
    fp = meta["fingerprint"]
    expected = {
        "backbone": backbone.name,
        "image_size": backbone.preprocess.image_size,
        "weights_sha256": backbone.weights_sha256,
    }
    diffs = [f"{k}: head has {fp.get(k)!r}, backbone {v!r}" for k, v in expected.items() if fp.get(k) != v]
    if diffs or meta["classes"] != classes:
        raise FingerprintMismatch(
            f"{ckpt}: trained on other features ({'; '.join(diffs) or 'classes'}); re-run train-head"
        )
    head_cfg = HeadConfig(**meta["head"])
    head = make_head(head_cfg, meta["in_features"], len(classes))
    head.load_state_dict(state)
    return head, head_cfg


def main(args: argparse.Namespace) -> None:
    p = load_params(args.params, "base", "backbone", "augment", "finetune")
    base, bcfg, aug, ft = p["base"], p["backbone"], p["augment"], p["finetune"]
    strategy = args.strategy
    cfg = ft.strategy(strategy)
    check_backbone_name(bcfg.name)
    configure_threads(base.num_threads)
    device = resolve_device(base.device)
    run = layout.run_name(strategy, args.seed)
    generator = seed_everything(args.seed)
    manifest = read_manifest(layout.MANIFEST)
    classes = class_names(manifest)

    backbone = create_backbone(
        bcfg.name, bcfg.image_size, bcfg.weights, pretrained=strategy != "scratch", crop_pct=bcfg.crop_pct
    )
    if strategy == "lp-ft":
        head, head_cfg = probe_head(backbone, classes, args.seed)
    else:
        head_cfg = ft.head
        head = make_head(head_cfg, backbone.num_features, len(classes))
    model = TransferModel(backbone, head)
    apply_strategy(model, strategy, cfg)
    model.to(device, memory_format=memory_format(device))

    pre = backbone.preprocess
    train, val = (split_view(manifest, layout.RAW, s) for s in ("train", "val"))
    train_ds = ImageDataset(
        train.paths,
        train.labels,
        train_transform(
            pre, crop_scale=aug.crop_scale, rotation_degrees=aug.rotation_degrees, hflip=aug.hflip
        ),
    )
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
    val_loader = eval_loader(
        val.paths,
        val.labels,
        pre,
        cfg.batch_size * 2,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )

    optimizer = torch.optim.AdamW(param_groups(model, cfg))
    unfreezer = ProgressiveUnfreezer(model, cfg) if isinstance(cfg, ProgressiveConfig) else None
    logger = CurveLogger(layout.results_dir(run))
    result = fit(
        model,
        optimizer,
        train_loader,
        val_loader,
        cfg,
        device,
        on_epoch=logger,
        on_epoch_start=unfreezer,
        loss_weights=class_weights(train_ds.labels, len(classes)) if cfg.class_balance == "loss" else None,
        desc=f"finetune@{strategy}",
    )
    logger.close()
    # Counted at the end: progressive unfreezing grows the trainable set during the run.
    trainable, total = count_parameters(model)
    meta = {
        "kind": "transfer",
        "strategy": strategy,
        "backbone": bcfg.name,
        "image_size": bcfg.image_size,
        "crop_pct": pre.crop_pct,
        "weights_sha256": backbone.weights_sha256,
        "head": head_cfg.model_dump(),
        "classes": classes,
    }
    summary = training_summary(
        result,
        model=strategy,
        n_train=len(train_ds),
        trainable_params=trainable,
        total_params=total,
        device=device,
        extra={"bn": cfg.bn, "seed": args.seed},
    )
    finish_run(run, model.cpu(), result, meta, summary)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("strategy", choices=STRATEGIES, help="an end-to-end strategy (see params: finetune)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (one of params: base.seeds)")
    run_stage(main, parser)
