"""train-head: a classifier trained on the cached features only (no backbone forward).

The two-stage path: epochs cost milliseconds because the backbone ran once, in
extract-features. Changing a parameter here re-runs only this stage, evaluate and report.
Run through `dvc repro`; by hand: ``python stages/train_head.py``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

import torch

from transferlab import layout
from transferlab.cli import run_stage
from transferlab.config import load_params
from transferlab.data import class_names, manifest_fingerprint, read_manifest
from transferlab.features import FeatureStore
from transferlab.models import count_parameters, make_head
from transferlab.runtime import configure_threads, resolve_device, seed_everything
from transferlab.strategies import head_param_groups
from transferlab.tracking import CurveLogger, finish_run, training_summary
from transferlab.training import TensorBatches, fit


def main(args: argparse.Namespace) -> None:
    p = load_params(args.params, "base", "backbone", "train_head")
    base, bcfg, cfg = p["base"], p["backbone"], p["train_head"]
    configure_threads(base.num_threads)
    device = resolve_device(base.device)
    generator = seed_everything(base.seed)
    manifest = read_manifest(layout.MANIFEST)
    store = FeatureStore.open(
        layout.FEATURES,
        expect={
            "backbone": bcfg.name,
            "image_size": bcfg.image_size,
            "manifest_sha256": manifest_fingerprint(manifest),
        },
    )
    x_train, y_train, _ = store.load("train")
    x_val, y_val, _ = store.load("val")
    classes = class_names(manifest)
    head = make_head(cfg.head, x_train.shape[1], len(classes)).to(device)
    optimizer = torch.optim.AdamW(head_param_groups(head, cfg.lr, cfg.weight_decay))
    logger = CurveLogger(layout.results_dir(layout.FEATURES_MODEL))
    result = fit(
        head,
        optimizer,
        TensorBatches(x_train, y_train, cfg.batch_size, shuffle=True, generator=generator),
        TensorBatches(x_val, y_val, 4096),
        cfg,
        device,
        on_epoch=logger,
        desc="train-head",
    )
    logger.close()
    trainable, total = count_parameters(head)
    meta = {
        "kind": "head",
        "head": cfg.head.model_dump(),
        "in_features": int(x_train.shape[1]),
        "classes": classes,
        "fingerprint": store.fingerprint,
    }
    summary = training_summary(
        result,
        model=layout.FEATURES_MODEL,
        n_train=len(x_train),
        trainable_params=trainable,
        total_params=total,
        device=device,
    )
    finish_run(layout.FEATURES_MODEL, head.cpu(), result, meta, summary)


if __name__ == "__main__":
    run_stage(main, argparse.ArgumentParser(description=__doc__))
