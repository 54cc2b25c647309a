"""finetune-<strategy>@<seed>-<lr>: backbone + head trained end to end from augmented images.

One DVC stage per strategy, seed and point of the strategy's learning-rate grid
(``finetune.<strategy>.lr``); evaluate picks each strategy's rate on validation. Each stage
depends on its own params section only, so tuning one strategy never re-runs another.
``lp-ft`` trains with ``full``'s recipe from train-head's linear probe of the same seed.
Run through `dvc repro`; by hand: ``python stages/finetune.py full --seed 0 --lr 0.001``.
"""

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

import torch
from torch.utils.data import DataLoader

from transferlab import layout, registry
from transferlab._io import write_json
from transferlab.cli import run_stage
from transferlab.config import HeadConfig, ProgressiveConfig, StrategyConfig, load_params
from transferlab.data.images import (
    DecodedCache,
    ImageDataset,
    Preprocess,
    SeededItems,
    Shift,
    eval_loader,
    train_transform,
)
from transferlab.data.manifest import (
    SplitView,
    class_names,
    manifest_fingerprint,
    read_manifest,
    split_column,
    split_view,
)
from transferlab.errors import ConfigError, FingerprintMismatch
from transferlab.features.backbone_choice import arms_backbone
from transferlab.features.backbones import backbone_fingerprint, create_backbone
from transferlab.runtime import (
    close_ranks,
    configure_runtime,
    init_ranks,
    place,
    resolve_device,
    resolve_workers,
    seed_everything,
)
from transferlab.training import lora, wise
from transferlab.training.distributed import EpochSampler, per_rank_batch, replicate, sync_batchnorm
from transferlab.training.loop import class_weights, fit, predict
from transferlab.training.models import CheckpointMeta, TransferModel, load_checkpoint, make_head
from transferlab.training.strategies import ProgressiveUnfreezer, apply_strategy, param_groups
from transferlab.training.tracking import CurveLogger, finish_run, run_cost, training_summary
from transferlab.verdict.scoring import split_record, write_predictions


def probe_head(expected: dict, classes: list[str], seed: int) -> tuple[torch.nn.Module, HeadConfig]:
    """train-head's probe of the same seed, checked to come from exactly this backbone,
    preprocessing and manifest (the whole fingerprint) and these classes."""
    ckpt = layout.checkpoint(layout.run_name(layout.FEATURES_MODEL, seed))
    state, meta = load_checkpoint(ckpt)
    fp = meta.fingerprint
    diffs = [f"{k}: probe has {fp.get(k)!r}, expected {v!r}" for k, v in expected.items() if fp.get(k) != v]
    if meta.classes != classes:
        diffs.append("classes differ")
    if diffs:
        raise FingerprintMismatch(
            f"{ckpt}: probe made from other features ({'; '.join(diffs)}); re-run train-head"
        )
    head = make_head(meta.head, meta.in_features, len(classes))
    head.load_state_dict(state)
    return head, meta.head


def main(args: argparse.Namespace) -> None:
    p = load_params(args.params)
    base, aug, ft = p.base, p.augment, p.finetune
    arms = arms_backbone(p.backbone)  # backbone.name, or the screen's pick (choose-backbone)
    strategy = args.strategy
    spec = registry.get(strategy)
    cfg = ft.strategy(strategy)
    lr = float(args.lr)
    if lr not in cfg.lr:
        raise ConfigError(f"finetune.{strategy}.lr: {args.lr} is not in the grid {cfg.lr}")
    device = resolve_device(base.device)
    workers = resolve_workers(cfg.num_workers, device)
    configure_runtime(base.num_threads, device, channels_last=base.channels_last, workers=workers)
    # under torchrun: data-parallel over the ranks, the batch shared among them (distributed.py)
    ranks, device = init_ranks(device, base.num_threads)
    batch = per_rank_batch(cfg.batch_size, ranks, f"finetune.{strategy}.batch_size")
    run = layout.run_name(strategy, args.seed, args.lr)
    seed_everything(args.seed)  # the same initial weights on every rank
    manifest = read_manifest(layout.MANIFEST)
    classes = class_names(manifest)

    pretrained = spec.pretrained
    backbone = create_backbone(
        arms["name"], arms["image_size"], arms["weights"], pretrained=pretrained, crop_pct=p.backbone.crop_pct
    )
    fingerprint = {**backbone_fingerprint(backbone), "manifest_sha256": manifest_fingerprint(manifest)}
    if spec.from_probe:
        head, head_cfg = probe_head(fingerprint, classes, args.seed)
        init = {
            "backbone": f"pretrained weights {backbone.weights_sha256}",
            "head": "linear probe",
            "probe": str(layout.checkpoint(layout.run_name(layout.FEATURES_MODEL, args.seed))),
        }
    else:
        head_cfg = ft.head
        head = make_head(head_cfg, backbone.num_features, len(classes))
        init = {
            "backbone": f"pretrained weights {backbone.weights_sha256}"
            if pretrained
            else f"random (torch seed {args.seed})",
            "head": f"random (torch seed {args.seed})",
        }
    model = TransferModel(backbone, head)
    apply_strategy(model, strategy, cfg)
    alphas = ft.section(strategy).wise_alphas if spec.from_probe else []
    start = {k: v.detach().clone() for k, v in model.state_dict().items()} if alphas else None
    bn_synced = cfg.bn == "train" and sync_batchnorm(model, ranks, device)
    place(model, device)

    pre = backbone.preprocess
    column = split_column(args.seed, base.splits)  # this seed's splitting (base.splits)
    train, val, test = (split_view(manifest, layout.RAW, s, column) for s in ("train", "val", "test"))
    # One decoded-image cache under base.image_cache_mb for the run's three splits: what
    # fits is decoded once per run, the rest per epoch, and memory never grows with the data.
    cache = DecodedCache(base.image_cache_mb * 2**20)
    cache.fill(train.paths + val.paths + test.paths)
    train_ds = ImageDataset(
        train.paths,
        train.labels,
        train_transform(
            pre, crop_scale=aug.crop_scale, rotation_degrees=aug.rotation_degrees, hflip=aug.hflip
        ),
        cache=cache,
    )
    loader_kw: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
    }
    # One seeded order per epoch, each rank taking its slice of it, and every image's
    # augmentation drawn from (seed, epoch, index): the same run on 1 process or N.
    sampler = EpochSampler(len(train_ds), ranks, args.seed)
    train_loader = DataLoader(
        SeededItems(train_ds, args.seed),
        batch_size=batch,
        sampler=sampler,
        drop_last=len(train_ds) > cfg.batch_size,
        **loader_kw,
    )
    val_loader = eval_loader(
        val.paths,
        val.labels,
        pre,
        cfg.batch_size * 2,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        cache=cache,
    )

    optimizer = torch.optim.AdamW(param_groups(model, cfg, lr))
    unfreezer = ProgressiveUnfreezer(model, cfg, lr) if isinstance(cfg, ProgressiveConfig) else None
    logger = CurveLogger(layout.results_dir(run)) if ranks.main else None

    def on_epoch_start(epoch: int, optimizer: torch.optim.Optimizer) -> list[str]:
        sampler.set_epoch(epoch)
        return unfreezer(epoch, optimizer) if unfreezer is not None else []

    result = fit(
        model,
        optimizer,
        train_loader,
        val_loader,
        cfg,
        device,
        on_epoch=logger,
        on_epoch_start=on_epoch_start,
        loss_weights=class_weights(train_ds.labels, len(classes)) if cfg.class_balance == "loss" else None,
        desc=f"finetune-{strategy} lr={args.lr}",
        replicate=(lambda m: replicate(m, device)) if ranks.size > 1 else None,
    )
    close_ranks(ranks)
    if logger is None:  # not rank 0: rank 0 scores and writes the run
        return
    logger.close()
    # Score the best epoch's weights on val and test, image by image.
    paths = manifest["path"].to_list()
    loaders = {
        "val": (val, val_loader),
        "test": (
            test,
            eval_loader(test.paths, test.labels, pre, cfg.batch_size * 2, num_workers=workers, cache=cache),
        ),
    }
    # the robustness view (params: shift): the test images under each fixed shift
    shifted = {
        kind: eval_loader(
            test.paths,
            test.labels,
            pre,
            cfg.batch_size * 2,
            num_workers=workers,
            cache=cache,
            shift=Shift(kind, p.shift.severity, pre.image_size, base.seed),
        )
        for kind in p.shift.kinds
    }

    def score(m: torch.nn.Module) -> dict[str, Any]:
        scored = {}
        for name, (view, loader) in loaders.items():
            logits, labels = predict(m, loader, device, amp=cfg.amp)
            scored[name] = (logits, labels, [paths[r] for r in view.rows])
        return scored

    scored = score(model)
    for kind, loader in shifted.items():
        logits, labels = predict(model, loader, device, amp=cfg.amp)
        scored[kind] = (logits, labels, [paths[r] for r in test.rows])
    write_predictions(
        run,
        manifest_sha256=fingerprint["manifest_sha256"],
        classes=classes,
        val=scored["val"],
        test=scored["test"],
        split=column,
        shifted={k: scored[k] for k in shifted},
    )
    meta = CheckpointMeta(
        kind="end-to-end",
        model=strategy,
        head=head_cfg,
        in_features=backbone.num_features,
        classes=classes,
        fingerprint=fingerprint,
        init=init,
        lr=lr,
    )
    steps = len(train_loader) * len(result.history)
    summary = training_summary(
        result,
        model=strategy,
        n_train=len(train_ds),
        extra={
            "bn": cfg.bn,
            "num_workers": workers,
            # torchrun processes sharing each batch, and whether BatchNorm statistics were
            # synchronised across them (distributed.py)
            "ranks": ranks.size,
            "bn_synced": bn_synced,
            "seed": args.seed,
            "split": column,
            "lr": lr,
            "init": init,
            "protocol": {
                "budget": {
                    "epochs": cfg.epochs,
                    "warmup_epochs": cfg.warmup_epochs,
                    "batch_size": cfg.batch_size,
                    "steps": steps,
                    "images_seen": steps * cfg.batch_size,
                },
            },
            **run_cost(model, device),
        },
    )
    if cfg.bn == "train":  # re-estimated running statistics belong to the task too
        summary["trained_bytes"] += sum(
            b.numel() * b.element_size()
            for m in model.backbone.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            for b in m.buffers()
        )
    if spec.from_probe:
        summary["probe_train_time_s"] = read_probe_cost(args.seed)
    # LoRA: the checkpoint holds the adapters merged into the weights, an ordinary model
    # for evaluate, export and predict (trained_bytes says what the adapters alone take).
    lora.merge(model)
    if start is not None:
        write_wise(run, model, start, alphas, score, cfg.bn == "train", train, pre, cfg, device)
    finish_run(run, model.cpu(), meta, summary)


def write_wise(
    run: str,
    model: torch.nn.Module,
    start: dict[str, torch.Tensor],
    alphas: list[float],
    score: Callable[[torch.nn.Module], dict[str, Any]],
    reestimate: bool,
    train: SplitView,
    pre: Preprocess,
    cfg: StrategyConfig,
    device: torch.device,
) -> None:
    """results/<run>/wise.json: val and test scores of the weights mixed between the run's
    start (probe on the pretrained backbone) and its end, per alpha (transferlab.training.wise)."""
    t0 = time.perf_counter()
    end = {k: v.detach().clone() for k, v in model.state_dict().items()}
    loader = eval_loader(train.paths, train.labels, pre, cfg.batch_size * 2, num_workers=0)

    def bn(m: torch.nn.Module) -> None:
        wise.reestimate_bn(m, (x for x, _ in loader), device)

    def point(m: torch.nn.Module) -> dict[str, Any]:
        s = score(m)
        val, test = split_record(*s["val"]), split_record(*s["test"])
        return {
            "val_acc": val["accuracy"],
            "val_nll": val["nll"],
            "test_acc": test["accuracy"],
            "test_nll": test["nll"],
            "test_pred": test["pred"],
            "test_ids": test["ids"],
        }

    points = wise.curve(model, start, end, alphas, point, reestimate=bn if reestimate else None)
    ids = points[0]["test_ids"]
    write_json(
        layout.results_dir(run) / "wise.json",
        {
            "run": run,
            "alphas": list(alphas),
            "bn_reestimated": reestimate,
            "test_ids": ids,
            "points": [{k: v for k, v in p.items() if k != "test_ids"} for p in points],
            "time_s": round(time.perf_counter() - t0, 2),
        },
    )


def read_probe_cost(seed: int) -> float:
    """Seconds the probe lp-ft starts from cost (its whole grid search): lp-ft pays for it."""
    from transferlab.training.records import read_summary

    return read_summary(layout.train_summary(layout.run_name(layout.FEATURES_MODEL, seed))).search_s


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "strategy", choices=registry.names("end-to-end"), help="an end-to-end strategy (see params: finetune)"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (one of params: base.seeds)")
    parser.add_argument(
        "--lr", required=True, help="a learning rate of the strategy's grid (params: finetune.<strategy>.lr)"
    )
    run_stage(main, parser)
