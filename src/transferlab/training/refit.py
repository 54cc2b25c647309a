"""export.refit: the recommended strategy trained again on every image, the model that ships.

The verdict rests on runs that held images out (validation chose their hyper-parameters and
their step, test scored them). Once the strategy is chosen, those images are worth more as
training data: the refit trains the recommended strategy on every image of the data set
(every split of the splitting, or every fold) at exactly what its run chose on validation,
its learning rate (or L2 strength) and its step count, on the same schedule, so that the
refit replays the validated run on more data. No image is left to score it: what the report
says about accuracy is the validated run's (with folds, the procedure's), which the refit
is expected to meet or beat, and the model card says so.

* two-stage heads: the probe at the picked L2 strength on every image's cached features (and
  the augmented views the store holds, for ``features-augmented``); the MLP head at its
  picked rate for its picked number of epochs;
* end-to-end strategies: the same backbone, head, recipe and budget schedule at the picked
  rate, stopped at the step of the validated run's best round; ``lp-ft`` starts from the
  probe refitted first on every image.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab import layout, registry
from transferlab._io import read_json
from transferlab.config import Params, ProgressiveConfig
from transferlab.data.manifest import (
    SplitView,
    class_names,
    manifest_fingerprint,
    read_manifest,
    split_column,
)
from transferlab.errors import FingerprintMismatch
from transferlab.features.store import IMAGES
from transferlab.runtime import (
    Ranks,
    configure_runtime,
    place,
    resolve_device,
    resolve_workers,
    seed_everything,
)
from transferlab.training.distributed import EpochSampler
from transferlab.training.endtoend import Data, build_model
from transferlab.training.heads import fit_head, head_data
from transferlab.training.loop import Schedule, Trainer, class_weights
from transferlab.training.models import CheckpointMeta, save_checkpoint
from transferlab.training.strategies import ProgressiveUnfreezer, apply_strategy, param_groups


def _summary(run: str) -> dict[str, Any]:
    path = layout.train_summary(run)
    if not path.is_file():
        raise FingerprintMismatch(f"{path}: the recommended run's summary is missing; re-run dvc repro")
    return read_json(path)


def best_step(summary: dict[str, Any]) -> int:
    """The optimizer step of a validated end-to-end run's best round (its kept weights):
    rounds end every eval_every steps and at the end (best_epoch counts rounds from 1)."""
    budget = summary["protocol"]["budget"]
    return int(min(summary["best_epoch"] * budget["eval_every"], budget["steps_run"]))


def _refit_head(p: Params, model: str, seed: int, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """A two-stage head on every image's features at the picked hyper-parameter."""
    chosen = _summary(layout.run_name(model, seed))
    cfg = p.train_head
    picked = chosen["protocol"]["picked"]
    if cfg.head == "linear":
        cfg = cfg.model_copy(update={"linear": cfg.linear.model_copy(update={"l2": [picked["l2"]]})})
    else:
        epochs = int(chosen["best_epoch"] or cfg.mlp.epochs)
        mlp = cfg.mlp.model_copy(
            update={"lr": [picked["lr"]], "epochs": epochs, "early_stopping_patience": 0}
        )
        cfg = cfg.model_copy(update={"mlp": mlp})
    d = head_data(p, model, seed)
    every = np.arange(len(d.paths), dtype=np.int64)
    generator = seed_everything(seed)
    head, _, n_train, _ = fit_head(
        cfg, d, every, device, layout.run_name(model, seed), seed, generator, log=False
    )
    facts = {
        "images": len(every),
        "rows_trained": n_train,  # with augmented views: the images and their views
        "picked": picked,
        **({"epochs": int(cfg.mlp.epochs)} if cfg.head != "linear" else {}),
    }
    meta = CheckpointMeta(
        kind="head",
        model=model,
        head=cfg.head_config,
        in_features=int(d.store.arrays(IMAGES)[0].shape[1]),
        classes=d.classes,
        fingerprint=d.store.fingerprint,
        init={"head": "random, trained on the cached features of every image (export.refit)"},
    )
    return head.cpu(), {"meta": meta, **facts}


def _refit_end_to_end(p: Params, model: str, seed: int, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The strategy's recipe on every image, at the picked rate, to the validated run's best step."""
    run = layout.run_name(model, seed)
    chosen = _summary(run)
    lr, steps = float(chosen["lr"]), best_step(chosen)
    cfg = p.finetune.strategy(model)
    manifest = read_manifest(layout.MANIFEST)
    classes = class_names(manifest)
    sha = manifest_fingerprint(manifest)
    column = split_column(seed, p.base.splittings)
    probe = None
    if registry.get(model).from_probe:  # the probe it starts from, refitted on every image first
        probe, _ = _refit_head(p, layout.FEATURES_MODEL, seed, device)
    seed_everything(seed)
    net, head_cfg, init, fingerprint = build_model(p, model, seed, classes, sha)
    if probe is not None:
        net.head.load_state_dict(probe.state_dict())
        init = {**init, "head": "linear probe refitted on every image (export.refit)"}
    workers = resolve_workers(cfg.num_workers, device)
    every = SplitView(
        rows=np.arange(manifest.height, dtype=np.int64),
        paths=[layout.RAW / x for x in manifest["path"].to_list()],
        labels=manifest["label"].to_numpy().astype(np.int64),
    )
    data = Data(p, manifest, column, net.backbone.preprocess, workers, subset=lambda _: every)
    apply_strategy(net, model, cfg)
    place(net, device)
    sampler = EpochSampler(len(data.train_ds), Ranks(), seed)
    # the validated run's schedule (warm-up, cosine over the whole budget), cut at its best step
    schedule = dataclasses.replace(Schedule.of(cfg, 0), patience=0)
    weights = class_weights(data.train_ds.labels, len(classes)) if cfg.class_balance == "loss" else None
    trainer = Trainer(
        net,
        torch.optim.AdamW(param_groups(net, cfg, lr)),
        data.train_loader(cfg, cfg.batch_size, sampler, device),
        # rounds are scored on the old validation images, now training images: a trace of the
        # training, not a selection (the step is fixed)
        data.eval_loader(data.val, cfg),
        schedule,
        device,
        label_smoothing=cfg.label_smoothing,
        amp=cfg.amp,
        on_step=ProgressiveUnfreezer(net, cfg, lr) if isinstance(cfg, ProgressiveConfig) else None,
        on_epoch=sampler.set_epoch,
        loss_weights=weights,
        desc=f"refit {model} lr={lr:g}",
    )
    result = trainer.advance(steps)
    trainer.close()
    meta = CheckpointMeta(
        kind="end-to-end",
        model=model,
        head=head_cfg,
        in_features=net.backbone.num_features,
        classes=classes,
        fingerprint=fingerprint,
        init=init,
        lr=lr,
    )
    facts = {
        "images": manifest.height,
        "rows_trained": manifest.height,
        "picked": {"lr": lr},
        "steps": result.steps,
        "budget_steps": schedule.steps,
    }
    return net.cpu(), {"meta": meta, **facts}


def refit(p: Params, rec: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train the recommended model (``rec``: evaluate's recommended_run.json) again on every
    image and write its checkpoint to ``out``; returns what the model card says about it."""
    model, seed = rec["model"], int(_summary(rec["run"])["seed"])
    device = resolve_device(p.base.device)
    configure_runtime(p.base.num_threads, device)
    if registry.get(model).two_stage:
        net, facts = _refit_head(p, model, seed, device)
    else:
        net, facts = _refit_end_to_end(p, model, seed, device)
    save_checkpoint(out, net, facts.pop("meta"))
    return {"from_run": rec["run"], "seed": seed, **facts}
