"""The two-stage path's training: a head fitted on the cached features only (no backbone
forward), its grid searched and picked on validation, scored image by image.

What ``stages/train_head.py`` (train-head@<model>-<seed>) and ``stages/curve_head.py`` (the
learning curves) call: :func:`head_data` opens the store checked against this backbone and
manifest and gathers one seed's splitting, :func:`fit_head` fits the probe (L-BFGS over the
L2 grid) or the MLP head (AdamW over its rates) on any training rows, :func:`score_head`
scores it on val, test and the shifted test groups. Features too large for
train_head.memory_budget_mb are streamed from the store block by block. Writing the outputs
is the stages' job.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from transferlab import layout, registry
from transferlab.config import TrainHeadConfig
from transferlab.data.manifest import (
    class_names,
    manifest_fingerprint,
    read_manifest,
    split_column,
    split_view,
)
from transferlab.errors import ConfigError
from transferlab.features.backbone_choice import arms_backbone
from transferlab.features.backbones import backbone_fingerprint, create_backbone
from transferlab.features.store import AUGMENTED, IMAGES, FeatureStore, StreamedBatches, shifted_group
from transferlab.selection import AllDiverged, Scored, best_index
from transferlab.training.loop import TensorBatches, class_weights, fit, predict
from transferlab.training.models import make_head
from transferlab.training.probe import fit_linear_probe
from transferlab.training.strategies import head_param_groups
from transferlab.training.tracking import CurveLogger, training_summary

# Rows per chunk when the in-memory features are standardized for the probe: bounds the
# temporary copy, not the data.
CHUNK = 65536


def fit_linear(
    cfg: TrainHeadConfig, chunks, x_val, y_val, n_classes, weight, device, run, log=True, streamed=False
):
    """The probe's L2 grid, picked on validation; dvclive logs one step per grid point
    (``log``: not for a learning-curve point, whose folder holds no dvclive run)."""
    res = fit_linear_probe(
        chunks,
        x_val,
        y_val,
        n_classes,
        cfg.linear.l2,
        max_iter=cfg.linear.max_iter,
        class_weight=weight,
        device=device,
        keep_standardized=not streamed,  # in memory: one standardized copy beside them
    )
    if log:
        logger = CurveLogger(layout.results_dir(run))
        for pt in res.grid:
            logger.log_point(
                {
                    "grid/l2": pt.l2,
                    "train/loss": pt.train_loss,
                    "train/acc": pt.train_acc,
                    "val/loss": pt.val_loss,
                    "val/acc": pt.val_acc,
                }
            )
        logger.close()
    best = res.best
    passes = sum(p.function_evals for p in res.grid)
    summary = {
        "model": run.rsplit("-s", 1)[0],
        "solver": "lbfgs",
        "val_acc": best.val_acc,
        "val_loss": best.val_loss,
        "best_epoch": None,
        "epochs_run": best.function_evals,
        "stopped_early": False,
        "train_time_s": best.seconds,
        "search_time_s": res.seconds,
        # one "epoch" of a full-batch solver: one pass over the training features
        "time_per_epoch_s": best.seconds / max(best.function_evals, 1),
        "train_images_per_s": res.n_train * best.function_evals / max(best.seconds, 1e-9),
        "protocol": {
            "selection": "validation accuracy, ties to lower validation loss",
            "grid": {"l2": [p.l2 for p in res.grid]},
            "picked": {"l2": best.l2},
            # L-BFGS stopped by its iteration or evaluation cap, not by its tolerances: the
            # picked probe is not the optimum the protocol promises (the report flags it)
            "converged": best.converged,
            "points": [p.to_json() for p in res.grid],
            "budget": {
                "solver": "full-batch L-BFGS to convergence",
                "max_iter": cfg.linear.max_iter,
                "iterations": best.iterations,
                "images_seen": res.n_train * best.function_evals,
                "search_images_seen": res.n_train * passes,
            },
        },
    }
    return res.head, summary


def fit_mlp(
    cfg: TrainHeadConfig,
    make_batches,
    val_batches,
    in_features,
    n_train,
    n_classes,
    weight,
    device,
    run,
    seed,
    log=True,
):
    """The MLP head by mini-batch AdamW, one run per rate in the grid, picked on validation.
    Every rate starts from the same initialization (the run's seed): only the rate differs."""
    mcfg = cfg.mlp
    runs = []
    for lr in mcfg.lr:
        torch.manual_seed(seed)
        head = make_head(cfg.head_config, in_features, n_classes).to(device)
        optimizer = torch.optim.AdamW(head_param_groups(head, lr, mcfg.weight_decay))
        result = fit(
            head,
            optimizer,
            make_batches(),
            val_batches,
            mcfg,
            device,
            loss_weights=weight,
            desc=f"train-head lr={lr:g}",
        )
        runs.append((lr, head, result))
    try:
        picked = best_index([Scored(r[2].best.val_acc, r[2].best.val_loss, r[2].diverged) for r in runs])
    except AllDiverged:
        raise ConfigError(
            f"train_head.mlp.lr: every rate of the grid {list(mcfg.lr)} diverged (the training loss "
            "became non-finite); lower the rates"
        ) from None
    lr, head, result = runs[picked]
    if log:
        logger = CurveLogger(layout.results_dir(run))
        for rec in result.history:
            logger(rec)
        logger.close()
    steps = len(make_batches()) * len(result.history)
    summary = training_summary(result, model=run.rsplit("-s", 1)[0], n_train=n_train)
    summary.update(
        {
            "solver": "adamw",
            "search_time_s": sum(r[2].seconds for r in runs),
            "protocol": {
                "selection": "validation accuracy, ties to lower validation loss",
                "grid": {"lr": list(mcfg.lr)},
                "picked": {"lr": lr},
                "points": [
                    {
                        "lr": r[0],
                        "val_acc": r[2].best.val_acc,
                        "val_loss": r[2].best.val_loss,
                        "seconds": r[2].seconds,
                        "diverged": r[2].diverged,
                    }
                    for r in runs
                ],
                "budget": {"epochs": mcfg.epochs, "steps": steps, "images_seen": steps * mcfg.batch_size},
            },
        }
    )
    return head, summary


def training_features(
    store: FeatureStore, groups: list[str], train_rows: np.ndarray, cfg: TrainHeadConfig, generator
):
    """The training split's features of ``groups`` as mini-batches and as chunks for the
    probe: in memory while they fit train_head.memory_budget_mb, else streamed from the store
    block by block. Returns (make_batches, chunks, y_train, n_train, streamed)."""
    keep = {g: store.select(g, train_rows) for g in groups}
    n_train = sum(int(k.sum()) for k in keep.values())
    # the probe holds a standardized copy beside the features it fits: twice their size
    copies = 2 if cfg.head == "linear" else 1
    streamed = copies * sum(store.nbytes(g, keep[g]) for g in groups) > cfg.memory_budget_mb * 2**20
    y_train = torch.cat([torch.from_numpy(np.asarray(store.arrays(g)[1][:])[keep[g]]) for g in groups])
    sources = [(*store.arrays(g), keep[g]) for g in groups]
    if streamed:

        def make_batches(batch_size=cfg.mlp.batch_size, shuffle=True):
            return StreamedBatches(sources, batch_size, shuffle=shuffle, generator=generator)

        def chunks():
            return StreamedBatches(sources, CHUNK, shuffle=False)
    else:
        x_train = torch.cat([store.load(g, keep[g])[0] for g in groups])

        def make_batches(batch_size=cfg.mlp.batch_size, shuffle=True):
            return TensorBatches(x_train, y_train, batch_size, shuffle=shuffle, generator=generator)

        def chunks():
            return ((x_train[i : i + CHUNK], y_train[i : i + CHUNK]) for i in range(0, n_train, CHUNK))

    return make_batches, chunks, y_train, n_train, streamed


def score_head(
    head, store: FeatureStore, split_rows: dict, paths: list[str], device, shifts=True
) -> dict[str, tuple]:
    """The chosen head on val, test and (``shifts``) each shifted test group, image by image."""
    scored = {}
    shifted = [(k, shifted_group(k)) for k in store.shifts()] if shifts else []
    for split, group in (("val", IMAGES), ("test", IMAGES), *shifted):
        rows_of = split_rows["test" if group != IMAGES else split]
        x, y, rows = store.load(group, store.select(group, rows_of))
        logits, labels = predict(head.to(device), TensorBatches(x, y, 4096), device)
        scored[split] = (logits, labels, [paths[r] for r in rows])
    return scored


def open_store(p, manifest) -> FeatureStore:
    """The store, checked to come from exactly this backbone (weights, size, crop,
    normalization) and this manifest: the whole fingerprint, not a few fields."""
    arms = arms_backbone(p.backbone)  # backbone.name, or the screen's pick (choose-backbone)
    backbone = create_backbone(
        arms["name"], arms["image_size"], arms["weights"], crop_pct=p.backbone.crop_pct
    )
    expect = {**backbone_fingerprint(backbone), "manifest_sha256": manifest_fingerprint(manifest)}
    return FeatureStore.open(layout.FEATURES, expect=expect)


@dataclass
class HeadData:
    """What every fit of one model and seed shares: the store, this seed's splitting and its
    validation features."""

    store: FeatureStore
    groups: list[str]
    column: str
    split_rows: dict[str, np.ndarray]
    x_val: torch.Tensor
    y_val: torch.Tensor
    classes: list[str]
    paths: list[str]
    labels: np.ndarray  # every manifest row's class


def head_data(p, model: str, seed: int) -> HeadData:
    manifest = read_manifest(layout.MANIFEST)
    store = open_store(p, manifest)
    # This seed's splitting (base.splits): its train, val and test rows of the one store.
    column = split_column(seed, p.base.splittings)
    split_rows = {s: split_view(manifest, layout.RAW, s, column).rows for s in ("train", "val", "test")}
    groups = [IMAGES]
    if registry.get(model).augmented_views:
        if AUGMENTED not in store.groups():
            raise ConfigError(
                f"train_head.models: {model} needs augmented views, but extract_features.augment_views is 0"
            )
        groups.append(AUGMENTED)
    x_val, y_val, _ = store.load(IMAGES, store.select(IMAGES, split_rows["val"]))
    classes = class_names(manifest)
    labels = manifest["label"].to_numpy().astype(np.int64)
    return HeadData(
        store, groups, column, split_rows, x_val, y_val, classes, manifest["path"].to_list(), labels
    )


def fit_head(cfg: TrainHeadConfig, d: HeadData, train_rows, device, run, seed, generator, log=True):
    """The head of ``cfg`` fitted on the features of ``train_rows`` (its grid searched and
    picked on validation). Returns (head, summary, n_train, streamed)."""
    make_batches, chunks, y_train, n_train, streamed = training_features(
        d.store, d.groups, train_rows, cfg, generator
    )
    weight = class_weights(y_train, len(d.classes)) if cfg.class_balance == "loss" else None
    if cfg.head == "linear":
        head, summary = fit_linear(
            cfg, chunks, d.x_val, d.y_val, len(d.classes), weight, device, run, log, streamed
        )
    else:
        head, summary = fit_mlp(
            cfg,
            make_batches,
            TensorBatches(d.x_val, d.y_val, 4096),
            d.store.arrays(IMAGES)[0].shape[1],
            n_train,
            len(d.classes),
            weight,
            device,
            run,
            seed,
            log,
        )
    return head, summary, n_train, streamed
