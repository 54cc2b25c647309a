"""finetune-<strategy>@<seed>-<lr>: backbone + head trained end to end from augmented images.

One DVC stage per strategy, seed and point of the strategy's learning-rate grid
(``finetune.<strategy>.lr``); evaluate picks each strategy's rate on validation. Each stage
depends on its own params section only, so tuning one strategy never re-runs another.
``lp-ft`` trains with ``full``'s recipe from train-head's linear probe of the same seed.
With ``--size`` the stage ``curve-finetune@<strategy>-<seed>-<size>``: one learning-curve
point (params: curve.models, curve.sizes), the whole grid trained on that subset.
Run through `dvc repro`; by hand: ``python stages/finetune.py full --seed 0 --lr 0.001``.
"""

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

import torch
from torch.utils.data import DataLoader

from transferlab import layout, registry
from transferlab._io import write_json
from transferlab.cli import run_stage
from transferlab.config import HeadConfig, Params, ProgressiveConfig, StrategyConfig, load_params
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
from transferlab.data.subsets import training_subset
from transferlab.errors import ConfigError, FingerprintMismatch
from transferlab.features.backbone_choice import arms_backbone
from transferlab.features.backbones import backbone_fingerprint, create_backbone
from transferlab.runtime import (
    Ranks,
    close_ranks,
    configure_runtime,
    init_ranks,
    place,
    resolve_device,
    resolve_workers,
    seed_everything,
)
from transferlab.selection import AllDiverged, Scored, best_index
from transferlab.training import lora, wise
from transferlab.training.distributed import EpochSampler, per_rank_batch, replicate, sync_batchnorm
from transferlab.training.loop import class_weights, fit, predict
from transferlab.training.models import CheckpointMeta, TransferModel, load_checkpoint, make_head
from transferlab.training.strategies import ProgressiveUnfreezer, apply_strategy, param_groups
from transferlab.training.tracking import CurveLogger, finish_run, run_cost, training_summary
from transferlab.verdict.scoring import split_record, write_curve_point, write_predictions


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


def build_model(
    p: Params, strategy: str, seed: int, classes: list[str], manifest_sha256: str
) -> tuple[TransferModel, HeadConfig, dict[str, str], dict[str, Any]]:
    """The backbone + head this run starts from, how each was initialized, and the fingerprint
    of the features the backbone makes (a probe lp-ft starts from must match it)."""
    spec = registry.get(strategy)
    arms = arms_backbone(p.backbone)  # backbone.name, or the screen's pick (choose-backbone)
    backbone = create_backbone(
        arms["name"],
        arms["image_size"],
        arms["weights"],
        pretrained=spec.pretrained,
        crop_pct=p.backbone.crop_pct,
    )
    fingerprint = {**backbone_fingerprint(backbone), "manifest_sha256": manifest_sha256}
    pretrained = f"pretrained weights {backbone.weights_sha256}"
    if spec.from_probe:
        head, head_cfg = probe_head(fingerprint, classes, seed)
        probe = str(layout.checkpoint(layout.run_name(layout.FEATURES_MODEL, seed)))
        init = {"backbone": pretrained, "head": "linear probe", "probe": probe}
    else:
        head_cfg = p.finetune.head
        head = make_head(head_cfg, backbone.num_features, len(classes))
        random = f"random (torch seed {seed})"
        init = {"backbone": pretrained if spec.pretrained else random, "head": random}
    return TransferModel(backbone, head), head_cfg, init, fingerprint


class Data:
    """The run's splits, its decoded-image cache and its loaders. One cache under
    base.image_cache_mb for the three splits: what fits is decoded once per run, the rest per
    epoch, and memory never grows with the data."""

    def __init__(
        self,
        p: Params,
        manifest: Any,
        column: str,
        pre: Preprocess,
        workers: int,
        subset: Callable[[SplitView], SplitView] | None = None,
    ) -> None:
        self.p, self.pre, self.workers = p, pre, workers
        self.paths = manifest["path"].to_list()
        self.train, self.val, self.test = (
            split_view(manifest, layout.RAW, s, column) for s in ("train", "val", "test")
        )
        if subset is not None:  # a learning-curve point: a nested subset of the training split
            self.train = subset(self.train)
        self.cache = DecodedCache(p.base.image_cache_mb * 2**20)
        self.cache.fill(self.train.paths + self.val.paths + self.test.paths)
        aug = p.augment
        self.train_ds = ImageDataset(
            self.train.paths,
            self.train.labels,
            train_transform(
                pre, crop_scale=aug.crop_scale, rotation_degrees=aug.rotation_degrees, hflip=aug.hflip
            ),
            cache=self.cache,
        )

    def train_loader(
        self, cfg: StrategyConfig, batch: int, sampler: EpochSampler, device: torch.device
    ) -> DataLoader:
        """The run's training batches. The last, incomplete one is dropped (the order is
        reshuffled every epoch, so no image is left out for good): BatchNorm that trains
        never sees a batch of one image."""
        return DataLoader(
            SeededItems(self.train_ds, sampler.seed),
            batch_size=batch,
            sampler=sampler,
            drop_last=len(self.train_ds) > cfg.batch_size,
            num_workers=self.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=self.workers > 0,
        )

    def eval_loader(
        self, view: SplitView, cfg: StrategyConfig, shift: Shift | None = None, pin: bool = False
    ):
        return eval_loader(
            view.paths,
            view.labels,
            self.pre,
            cfg.batch_size * 2,
            num_workers=self.workers,
            pin_memory=pin,
            cache=self.cache,
            shift=shift,
        )


def score_run(
    model: torch.nn.Module,
    loaders: dict[str, tuple[SplitView, Any]],
    device: torch.device,
    amp: bool,
    paths: list[str],
) -> dict[str, Any]:
    """Logits, labels and image ids of every named loader: the run's per-image predictions."""
    scored = {}
    for name, (view, loader) in loaders.items():
        logits, labels = predict(model, loader, device, amp=amp)
        scored[name] = (logits, labels, [paths[r] for r in view.rows])
    return scored


def run_summary(
    result: Any,
    strategy: str,
    cfg: StrategyConfig,
    ft: Any,
    extra: dict[str, Any],
    steps: int,
    model: Any,
    device: torch.device,
) -> dict[str, Any]:
    """train.json: the outcome, the budget it trained on (and its deviations), its cost."""
    summary = training_summary(
        result,
        model=strategy,
        n_train=extra.pop("n_train"),
        extra={
            **extra,
            "bn": cfg.bn,
            "protocol": {
                "budget": {
                    "epochs": cfg.epochs,
                    "warmup_epochs": cfg.warmup_epochs,
                    "batch_size": cfg.batch_size,
                    "steps": steps,
                    "images_seen": steps * cfg.batch_size,
                    # keys of finetune.budget this strategy trained on otherwise (its own
                    # finetune.<s>.budget): the report shows them as deviations
                    "deviations": ft.deviations(strategy),
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
    return summary


@dataclass
class Job:
    """One run of the grid: the strategy, its recipe and rate, where and on how many processes."""

    p: Params
    strategy: str
    seed: int
    lr: float
    lr_text: str  # the rate as DVC spells it in the run's name
    device: torch.device
    ranks: Ranks
    workers: int

    @property
    def spec(self) -> Any:
        return registry.get(self.strategy)

    @property
    def cfg(self) -> StrategyConfig:
        return self.p.finetune.strategy(self.strategy)

    @property
    def run(self) -> str:
        return layout.run_name(self.strategy, self.seed, self.lr_text)


def _number(text: str, flag: str) -> float:
    """A command-line number; the text itself stays the run's name (DVC's spelling of it)."""
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"finetune.py: {flag} {text!r} is not a number") from None


def start_job(args: argparse.Namespace) -> Job:
    """Params checked for this run, the device and threads set, torchrun's ranks joined."""
    p = load_params(args.params)
    cfg = p.finetune.strategy(args.strategy)
    if args.size is not None:
        if args.lr is not None:
            raise ConfigError("finetune.py: --size trains the whole lr grid; drop --lr")
        if not 0 < _number(args.size, "--size") < 1:
            raise ConfigError(f"finetune.py: --size {args.size} is not a fraction between 0 and 1")
        args.lr = str(cfg.lr[0])  # each rate of the grid in turn (curve_point)
    elif args.lr is None:
        raise ConfigError("finetune.py: --lr (a rate of the grid) or --size (a curve point) is required")
    if _number(args.lr, "--lr") not in cfg.lr:
        raise ConfigError(f"finetune.{args.strategy}.lr: {args.lr} is not in the grid {cfg.lr}")
    device = resolve_device(p.base.device)
    workers = resolve_workers(cfg.num_workers, device)
    configure_runtime(
        p.base.num_threads, device, channels_last=p.base.channels_last, workers=workers, compiles=cfg.compile
    )
    # under torchrun: data-parallel over the ranks, the batch shared among them (distributed.py)
    ranks, device = init_ranks(device, p.base.num_threads)
    return Job(p, args.strategy, args.seed, float(args.lr), args.lr, device, ranks, workers)


def train(
    job: Job, model: TransferModel, data: Data, classes: list[str], log: bool = True
) -> tuple[Any, DataLoader, Any]:
    """Fit the model on the run's training images; (result, train loader, val loader).
    ``log``: the dvclive curves of the run (not for a learning-curve point)."""
    cfg, ft, strategy = job.cfg, job.p.finetune, job.strategy
    where = (
        f"finetune.{job.spec.recipe_of or strategy}.budget"
        if "batch_size" in ft.deviations(strategy)
        else "finetune.budget"
    )
    batch = per_rank_batch(cfg.batch_size, job.ranks, f"{where}.batch_size")
    # One seeded order per epoch, each rank taking its slice of it, and every image's
    # augmentation drawn from (seed, epoch, index): the same run on 1 process or N.
    sampler = EpochSampler(len(data.train_ds), job.ranks, job.seed)
    train_loader = data.train_loader(cfg, batch, sampler, job.device)
    val_loader = data.eval_loader(data.val, cfg, pin=job.device.type == "cuda")
    optimizer = torch.optim.AdamW(param_groups(model, cfg, job.lr))
    unfreezer = ProgressiveUnfreezer(model, cfg, job.lr) if isinstance(cfg, ProgressiveConfig) else None
    logger = CurveLogger(layout.results_dir(job.run)) if job.ranks.main and log else None

    def on_epoch_start(epoch: int, optimizer: torch.optim.Optimizer) -> list[str]:
        sampler.set_epoch(epoch)
        return unfreezer(epoch, optimizer) if unfreezer is not None else []

    result = fit(
        model,
        optimizer,
        train_loader,
        val_loader,
        cfg,
        job.device,
        on_epoch=logger,
        on_epoch_start=on_epoch_start,
        loss_weights=class_weights(data.train_ds.labels, len(classes))
        if cfg.class_balance == "loss"
        else None,
        desc=f"finetune-{strategy} lr={job.lr_text}",
        replicate=(lambda m: replicate(m, job.device)) if job.ranks.size > 1 else None,
        plan=(job.run if log else f"{job.run} on a learning-curve subset") if job.ranks.main else None,
    )
    if logger is not None:
        logger.close()
    return result, train_loader, val_loader


def main(args: argparse.Namespace) -> None:
    job = start_job(args)
    if args.size is not None:
        return curve_point(job, args.size)
    cfg, base, seed = job.cfg, job.p.base, job.seed
    seed_everything(seed)  # the same initial weights on every rank
    manifest = read_manifest(layout.MANIFEST)
    classes = class_names(manifest)
    model, head_cfg, init, fingerprint = build_model(
        job.p, job.strategy, seed, classes, manifest_fingerprint(manifest)
    )
    apply_strategy(model, job.strategy, cfg)
    alphas = job.p.finetune.section(job.strategy).wise_alphas if job.spec.from_probe else []
    start = {k: v.detach().clone() for k, v in model.state_dict().items()} if alphas else None
    bn_synced = cfg.bn == "train" and sync_batchnorm(model, job.ranks, job.device)
    place(model, job.device)
    column = split_column(seed, base.splittings)  # this seed's splitting (base.splits or base.folds)
    data = Data(job.p, manifest, column, model.backbone.preprocess, job.workers)
    result, train_loader, val_loader = train(job, model, data, classes)
    close_ranks(job.ranks)
    if not job.ranks.main:  # rank 0 scores and writes the run
        return
    # The best epoch's weights on val and test, image by image, and on the test images under
    # each fixed shift (params: shift), the robustness view.
    loaders = {"val": (data.val, val_loader), "test": (data.test, data.eval_loader(data.test, cfg))}
    shift_of: dict[str, Shift] = {
        k: Shift(k, job.p.shift.severity, data.pre.image_size, base.seed) for k in job.p.shift.kinds
    }
    shifted = {k: (data.test, data.eval_loader(data.test, cfg, shift=s)) for k, s in shift_of.items()}
    scored = score_run(model, {**loaders, **shifted}, job.device, cfg.amp, data.paths)
    write_predictions(
        job.run,
        manifest_sha256=fingerprint["manifest_sha256"],
        classes=classes,
        val=scored["val"],
        test=scored["test"],
        split=column,
        shifted={k: scored[k] for k in shifted},
    )
    extra = {
        "n_train": len(data.train_ds),
        "num_workers": job.workers,
        # torchrun processes sharing each batch, and whether BatchNorm statistics were
        # synchronised across them (distributed.py)
        "ranks": job.ranks.size,
        "bn_synced": bn_synced,
        "seed": seed,
        "split": column,
        "lr": job.lr,
        "init": init,
    }
    steps = len(train_loader) * len(result.history)
    summary = run_summary(result, job.strategy, cfg, job.p.finetune, extra, steps, model, job.device)
    if job.spec.from_probe:
        summary["probe_train_time_s"] = read_probe_cost(seed)
    # LoRA: the checkpoint holds the adapters merged into the weights, an ordinary model
    # for evaluate, export and predict (trained_bytes says what the adapters alone take).
    lora.merge(model)
    if start is not None:

        def score(m: torch.nn.Module) -> dict[str, Any]:
            return score_run(m, loaders, job.device, cfg.amp, data.paths)

        write_wise(
            job.run, model, start, alphas, score, cfg.bn == "train", data.train, data.pre, cfg, job.device
        )
    meta = CheckpointMeta(
        kind="end-to-end",
        model=job.strategy,
        head=head_cfg,
        in_features=model.backbone.num_features,
        classes=classes,
        fingerprint=fingerprint,
        init=init,
        lr=job.lr,
    )
    finish_run(job.run, model.cpu(), meta, summary)


def curve_point(job: Job, size: str) -> None:
    """curve-finetune@<strategy>-<seed>-<size>: the strategy trained on the nested subset at
    ``size`` of this seed's training split, once per rate of its grid, the rate picked on
    validation at that size (the best rate depends on the number of images); its val and
    test predictions and point.json (no checkpoint: a curve point is measured, not used)."""
    if job.ranks.size > 1:
        raise ConfigError("curve points train on one process; run curve-finetune stages without torchrun")
    p, seed = job.p, job.seed
    manifest = read_manifest(layout.MANIFEST)
    classes = class_names(manifest)
    column = split_column(seed, p.base.splittings)
    point = layout.curve_point(job.strategy, seed, size)
    data: Data | None = None
    runs = []
    for lr in job.cfg.lr:
        run = dataclasses.replace(job, lr=float(lr), lr_text=str(lr))
        seed_everything(seed)  # every rate from the same initial weights, as the main runs
        model, _, _, fingerprint = build_model(p, run.strategy, seed, classes, manifest_fingerprint(manifest))
        apply_strategy(model, run.strategy, run.cfg)
        place(model, run.device)
        if data is None:  # one decoded-image cache for the whole grid

            def subset(view: SplitView) -> SplitView:
                return training_subset(view, float(size), (p.base.seed, seed), classes)

            data = Data(p, manifest, column, model.backbone.preprocess, run.workers, subset)
        result, _, val_loader = train(run, model, data, classes, log=False)
        loaders = {"val": (data.val, val_loader), "test": (data.test, data.eval_loader(data.test, run.cfg))}
        scored = score_run(model, loaders, run.device, run.cfg.amp, data.paths)
        runs.append((float(lr), result, scored, fingerprint))
    assert data is not None
    try:
        picked = best_index([Scored(r[1].best.val_acc, r[1].best.val_loss, r[1].diverged) for r in runs])
    except AllDiverged:
        raise ConfigError(
            f"finetune.{job.strategy}.lr: every rate diverged on the curve point at {size}; lower the rates"
        ) from None
    lr, result, scored, fingerprint = runs[picked]
    write_predictions(
        point,
        manifest_sha256=fingerprint["manifest_sha256"],
        classes=classes,
        val=scored["val"],
        test=scored["test"],
        split=column,
    )
    summary = {
        "val_acc": result.best.val_acc,
        "val_loss": result.best.val_loss,
        "train_time_s": result.seconds,
        "search_time_s": sum(r[1].seconds for r in runs),
        "protocol": {"grid": {"lr": list(job.cfg.lr)}, "picked": {"lr": lr}},
    }
    write_curve_point(
        point,
        model=job.strategy,
        seed=seed,
        size=float(size),
        labels=data.train.labels,
        ids=[data.paths[r] for r in data.train.rows],
        classes=classes,
        summary=summary,
    )
    print(
        f"{point}: {len(data.train.rows)} training images, lr {lr:g} picked, val acc {result.best.val_acc:.4f}"
    )


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
        "--lr", help="a learning rate of the strategy's grid (params: finetune.<strategy>.lr)"
    )
    parser.add_argument(
        "--size", help="a learning-curve point (one of params: curve.sizes): the whole grid on that subset"
    )
    run_stage(main, parser)
