"""train-head@<model>: a classifier trained on the cached features only (no backbone forward).

The two-stage path: epochs cost milliseconds because the backbone ran once, in
extract-features. ``features`` trains on the training images' features; ``features-augmented``
also on the K augmented views extract-features stored. Changing a parameter here re-runs only
these stages, evaluate and report.
One stage per model and seed (``train-head@features-0``).
Run through `dvc repro`; by hand: ``python stages/train_head.py features --seed 0``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

import numpy as np
import torch

from transferlab import layout
from transferlab.cli import run_stage
from transferlab.config import HEAD_MODELS, load_params
from transferlab.data import class_names, manifest_fingerprint, read_manifest
from transferlab.errors import ConfigError
from transferlab.features import FeatureStore, StreamedBatches
from transferlab.models import count_parameters, make_head
from transferlab.runtime import configure_threads, resolve_device, seed_everything
from transferlab.strategies import head_param_groups
from transferlab.tracking import CurveLogger, finish_run, training_summary
from transferlab.training import TensorBatches, class_weights, fit


def main(args: argparse.Namespace) -> None:
    p = load_params(args.params, "base", "backbone", "train_head")
    base, bcfg, cfg = p["base"], p["backbone"], p["train_head"]
    configure_threads(base.num_threads)
    device = resolve_device(base.device)
    run = layout.run_name(args.model, args.seed)
    generator = seed_everything(args.seed)
    manifest = read_manifest(layout.MANIFEST)
    store = FeatureStore.open(
        layout.FEATURES,
        expect={
            "backbone": bcfg.name,
            "image_size": bcfg.image_size,
            "manifest_sha256": manifest_fingerprint(manifest),
        },
    )
    splits = ["train"]
    if args.model == "features-augmented":
        if "train_aug" not in store.splits():
            raise ConfigError(
                "train_head.models: features-augmented needs augmented views, but "
                "extract_features.augment_views is 0"
            )
        splits.append("train_aug")
    n_train = sum(store.arrays(s)[1].shape[0] for s in splits)
    in_features = store.arrays("train")[0].shape[1]
    streamed = sum(store.nbytes(s) for s in splits) > cfg.memory_budget_mb * 2**20
    if streamed:
        train_batches = StreamedBatches(
            [store.arrays(s) for s in splits], cfg.batch_size, shuffle=True, generator=generator
        )
        y_train = torch.cat([torch.from_numpy(np.asarray(store.arrays(s)[1][:])) for s in splits])
    else:
        parts = [store.load(s) for s in splits]
        x_train = torch.cat([p[0] for p in parts])
        y_train = torch.cat([p[1] for p in parts])
        train_batches = TensorBatches(x_train, y_train, cfg.batch_size, shuffle=True, generator=generator)
    x_val, y_val, _ = store.load("val")
    classes = class_names(manifest)
    head = make_head(cfg.head, in_features, len(classes)).to(device)
    optimizer = torch.optim.AdamW(head_param_groups(head, cfg.lr, cfg.weight_decay))
    logger = CurveLogger(layout.results_dir(run))
    result = fit(
        head,
        optimizer,
        train_batches,
        TensorBatches(x_val, y_val, 4096),
        cfg,
        device,
        on_epoch=logger,
        loss_weights=class_weights(y_train, len(classes)) if cfg.class_balance == "loss" else None,
        desc=f"train-head@{args.model}",
    )
    logger.close()
    trainable, total = count_parameters(head)
    meta = {
        "kind": "head",
        "head": cfg.head.model_dump(),
        "in_features": int(in_features),
        "classes": classes,
        "fingerprint": store.fingerprint,
    }
    summary = training_summary(
        result,
        model=args.model,
        extra={"seed": args.seed, "streamed": streamed},
        n_train=n_train,
        trainable_params=trainable,
        total_params=total,
        device=device,
    )
    finish_run(run, head.cpu(), result, meta, summary)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", choices=HEAD_MODELS, help="a model listed in params: train_head.models")
    parser.add_argument("--seed", type=int, default=0, help="training seed (one of params: base.seeds)")
    run_stage(main, parser)
