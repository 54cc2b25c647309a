"""One end-to-end run: a strategy, a seed, its learning-rate search, its best checkpoint.

What ``stages/finetune.py`` calls. :func:`start_job` reads the params and sets up the device
(and torchrun's ranks); :func:`run_strategy` builds the backbone + head for every rate the
search tries (transferlab.training.search), trains them on the run's splits on the step
budget of ``finetune.budget``, and returns the picked rate's model, scored image by image on
val and test (and the shifted test images of the robustness view), with its summary. A
learning-curve point (:func:`run_curve_point`) is the same search on a nested subset of the
training split, on the same number of steps. Writing the outputs is the stage's job.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from transferlab import layout, registry
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
from transferlab.selection import AllDiverged
from transferlab.training import lora
from transferlab.training.distributed import EpochSampler, per_rank_batch, replicate, sync_batchnorm
from transferlab.training.loop import Schedule, Trainer, class_weights, predict
from transferlab.training.models import CheckpointMeta, TransferModel, load_checkpoint, make_head
from transferlab.training.search import SearchResult, search
from transferlab.training.strategies import ProgressiveUnfreezer, apply_strategy, param_groups
from transferlab.training.tracking import CurveLogger, run_cost, training_summary

# logits, labels and image ids of one split
Scored = tuple[torch.Tensor, torch.Tensor, list[str]]


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
    base.image_cache_mb for the three splits: what fits is decoded once per run (and shared
    by every rate the search tries), the rest as read, and memory never grows with the data."""

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
    ) -> Any:
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
) -> dict[str, Scored]:
    """Logits, labels and image ids of every named loader: the run's per-image predictions."""
    scored = {}
    for name, (view, loader) in loaders.items():
        logits, labels = predict(model, loader, device, amp=amp)
        scored[name] = (logits, labels, [paths[r] for r in view.rows])
    return scored


@dataclass
class Job:
    """One stage's run: the strategy, its recipe, where and on how many processes."""

    p: Params
    strategy: str
    seed: int
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
        return layout.run_name(self.strategy, self.seed)

    @property
    def schedule(self) -> Schedule:
        return Schedule.of(self.cfg, 0)


def start_job(params: str | Path, strategy: str, seed: int, size: str | None = None) -> Job:
    """Params checked for this run, the device and threads set, torchrun's ranks joined."""
    p = load_params(params)
    cfg = p.finetune.strategy(strategy)
    if not cfg.lr:
        raise ConfigError(f"finetune.{strategy}.lr: the grid is empty, so the strategy does not run")
    if size is not None:
        try:
            fraction = float(size)
        except ValueError:
            raise ConfigError(f"finetune.py: --size {size!r} is not a number") from None
        if not 0 < fraction < 1:
            raise ConfigError(f"finetune.py: --size {size} is not a fraction between 0 and 1")
    device = resolve_device(p.base.device)
    workers = resolve_workers(cfg.num_workers, device)
    configure_runtime(
        p.base.num_threads, device, channels_last=p.base.channels_last, workers=workers, compiles=cfg.compile
    )
    # under torchrun: data-parallel over the ranks, the batch shared among them (distributed.py)
    ranks, device = init_ranks(device, p.base.num_threads)
    return Job(p, strategy, seed, device, ranks, workers)


@dataclass
class Searched:
    """The picked rate's model (best round's weights loaded) and the search behind it."""

    model: TransferModel
    search: SearchResult
    head_cfg: HeadConfig
    init: dict[str, str]
    fingerprint: dict[str, Any]
    bn_synced: bool
    start_state: dict[str, torch.Tensor] | None  # lp-ft with WiSE: the weights it started from

    @property
    def lr(self) -> float:
        return self.search.picked.lr


def _lr_dir(run: str, lr: float, rung: bool = False) -> Path:
    """Where one rate's dvclive curves go: results/<run>/search/lr<rate> for a run of the
    whole budget, results/<run>/search/rung/lr<rate> for an annealed first rung."""
    return layout.results_dir(run) / "search" / ("rung" if rung else "") / f"lr{lr:g}"


def train_searched(
    job: Job,
    data: Data,
    classes: list[str],
    manifest_sha256: str,
    *,
    log_dir: str | None,
    keep_start: bool = False,
    desc: str = "",
) -> Searched:
    """The search over the strategy's grid, every rate from the same initial weights and the
    same data order; ``log_dir``: the run whose results folder gets every rate's curves."""
    cfg, ft, strategy = job.cfg, job.p.finetune, job.strategy
    where = (
        f"finetune.{job.spec.recipe_of or strategy}.budget"
        if "batch_size" in ft.deviations(strategy)
        else "finetune.budget"
    )
    batch = per_rank_batch(cfg.batch_size, job.ranks, f"{where}.batch_size")
    weights = class_weights(data.train_ds.labels, len(classes)) if cfg.class_balance == "loss" else None
    val_loader = data.eval_loader(data.val, cfg, pin=job.device.type == "cuda")
    built: dict[float, tuple[TransferModel, HeadConfig, dict[str, str], dict[str, Any], bool]] = {}
    loggers: dict[tuple[float, bool], Any] = {}
    start_state: list[dict[str, torch.Tensor]] = []

    def start(lr: float, steps: int) -> Trainer:
        seed_everything(job.seed)  # every rate from the same initial weights, on every rank
        model, head_cfg, init, fingerprint = build_model(job.p, strategy, job.seed, classes, manifest_sha256)
        apply_strategy(model, strategy, cfg)
        if keep_start and not start_state:
            start_state.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        synced = cfg.bn == "train" and sync_batchnorm(model, job.ranks, job.device)
        place(model, job.device)
        built[lr] = (model, head_cfg, init, fingerprint, synced)  # the rate's latest run
        # One seeded order per epoch, each rank taking its slice of it, and every image's
        # augmentation drawn from (seed, epoch, index): the same run on 1 process or N.
        sampler = EpochSampler(len(data.train_ds), job.ranks, job.seed)
        unfreezer = ProgressiveUnfreezer(model, cfg, lr) if isinstance(cfg, ProgressiveConfig) else None
        logger = None
        if log_dir is not None and job.ranks.main:
            rung = steps < cfg.steps  # an annealed first rung: a short run of its own
            where = _lr_dir(log_dir, lr, rung)
            logger = loggers[(lr, rung)] = CurveLogger(where)
        schedule = job.schedule
        if steps < schedule.steps:  # the budget's schedule on the rung's length
            schedule = dataclasses.replace(
                schedule, steps=steps, warmup_steps=min(schedule.warmup_steps, steps // 2), converge_tol=None
            )
        return Trainer(
            model,
            torch.optim.AdamW(param_groups(model, cfg, lr)),
            data.train_loader(cfg, batch, sampler, job.device),
            val_loader,
            schedule,
            job.device,
            label_smoothing=cfg.label_smoothing,
            amp=cfg.amp,
            compile_=cfg.compile,
            on_round=logger,
            on_step=unfreezer,
            on_epoch=sampler.set_epoch,
            loss_weights=weights,
            desc=f"{desc or strategy} lr={lr:g}",
            replicate=(lambda m: replicate(m, job.device)) if job.ranks.size > 1 else None,
            plan=f"{desc or job.run} lr={lr:g}" if job.ranks.main and not built.keys() - {lr} else None,
        )

    if log_dir is not None and job.ranks.main:  # no curves of an earlier search left behind
        shutil.rmtree(layout.results_dir(log_dir) / "search", ignore_errors=True)
    s = job.p.finetune.search
    try:
        found = search(
            list(cfg.lr),
            cfg.steps,
            start,
            first_rung=s.first_rung,
            keep=s.keep,
            max_extend=s.max_extend,
            eval_every=cfg.eval_every,
            rungs=s.rungs,
            what=f"finetune.{strategy}.lr",
        )
    except AllDiverged as err:
        raise ConfigError(str(err)) from None
    finally:
        for logger in loggers.values():
            logger.close()
    model, head_cfg, init, fingerprint, synced = built[found.picked.lr]
    return Searched(
        model, found, head_cfg, init, fingerprint, synced, start_state[0] if start_state else None
    )


def run_summary(job: Job, searched: Searched, n_train: int, split: str) -> dict[str, Any]:
    """train.json: the outcome, the budget it trained on (and its deviations), the search, its cost."""
    cfg, result = job.cfg, searched.search.picked.result
    assert result is not None
    model = searched.model
    record = searched.search.record()
    summary = training_summary(
        result,
        model=job.strategy,
        n_train=n_train,
        extra={
            "num_workers": job.workers,
            # torchrun processes sharing each batch, and whether BatchNorm statistics were
            # synchronised across them (distributed.py)
            "ranks": job.ranks.size,
            "bn_synced": searched.bn_synced,
            "seed": job.seed,
            "split": split,
            "lr": searched.lr,
            "init": searched.init,
            "bn": cfg.bn,
            "search_time_s": record["search_time_s"],
            "protocol": {
                "budget": {
                    "steps": cfg.steps,
                    "eval_every": cfg.eval_every,
                    "warmup_steps": cfg.warmup_steps,
                    "batch_size": cfg.batch_size,
                    "steps_run": result.steps,  # fewer when early stopping ended the run
                    "images_seen": result.steps * cfg.batch_size,
                    "epochs": round(cfg.steps * cfg.batch_size / max(n_train, 1), 2),
                    "converge_tol": cfg.converge_tol,
                    # keys of finetune.budget this strategy trained on otherwise (its own
                    # finetune.<s>.budget): the report shows them as deviations
                    "deviations": job.p.finetune.deviations(job.strategy),
                },
                "search": {k: v for k, v in record.items() if k != "search_time_s"},
                "converged": result.converged,
            },
            **run_cost(model, job.device),
        },
    )
    # A round is eval_every steps, not an epoch: the per-epoch figures the report compares
    # with the heads' (time per pass over the training split) come from the steps themselves.
    seen = result.steps * cfg.batch_size
    train_s = sum(r.train_seconds for r in result.history)
    summary["epochs_run"] = max(1, round(seen / max(n_train, 1)))
    summary["time_per_epoch_s"] = train_s * n_train / max(seen, 1)
    summary["train_images_per_s"] = seen / max(train_s, 1e-9)
    if cfg.bn == "train":  # re-estimated running statistics belong to the task too
        summary["trained_bytes"] += sum(
            b.numel() * b.element_size()
            for m in model.backbone.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            for b in m.buffers()
        )
    return summary


@dataclass
class RunOutputs:
    """What the stage writes for one run."""

    model: TransferModel
    meta: CheckpointMeta
    summary: dict[str, Any]
    scored: dict[str, Scored]  # val, test, and each shift's name
    shifted: list[str]
    classes: list[str]
    manifest_sha256: str
    split: str
    wise: Callable[[], dict[str, Any]] | None  # lp-ft: the WiSE-FT curve, computed on demand


def run_strategy(job: Job) -> RunOutputs | None:
    """The stage's whole run: search, pick, score; None on the ranks that do not write."""
    cfg, base, seed = job.cfg, job.p.base, job.seed
    manifest = read_manifest(layout.MANIFEST)
    classes = class_names(manifest)
    manifest_sha = manifest_fingerprint(manifest)
    column = split_column(seed, base.splittings)  # this seed's splitting (base.splits or base.folds)
    pre = build_model(job.p, job.strategy, seed, classes, manifest_sha)[0].backbone.preprocess
    data = Data(job.p, manifest, column, pre, job.workers)
    alphas = job.p.finetune.section(job.strategy).wise_alphas if job.spec.from_probe else []
    searched = train_searched(job, data, classes, manifest_sha, log_dir=job.run, keep_start=bool(alphas))
    close_ranks(job.ranks)
    if not job.ranks.main:  # rank 0 scores and writes the run
        return None
    _publish_curves(job.run, searched.lr)
    model = searched.model
    # The best round's weights on val and test, image by image, and on the test images under
    # each fixed shift (params: shift), the robustness view.
    loaders = {
        "val": (data.val, data.eval_loader(data.val, cfg)),
        "test": (data.test, data.eval_loader(data.test, cfg)),
    }
    shifted: dict[str, tuple[SplitView, Any]] = {
        k: (
            data.test,
            data.eval_loader(data.test, cfg, shift=Shift(k, job.p.shift.severity, pre.image_size, base.seed)),
        )
        for k in job.p.shift.kinds
    }
    scored = score_run(model, {**loaders, **shifted}, job.device, cfg.amp, data.paths)
    summary = run_summary(job, searched, len(data.train_ds), column)
    if job.spec.from_probe:
        summary["probe_train_time_s"] = _probe_cost(seed)
    # LoRA: the checkpoint holds the adapters merged into the weights, an ordinary model
    # for evaluate, export and predict (trained_bytes says what the adapters alone take).
    lora.merge(model)
    wise_curve = None
    if searched.start_state is not None:
        start_state = searched.start_state

        def wise_curve() -> dict[str, Any]:
            return wise_points(model, start_state, alphas, loaders, data, cfg, job.device)

    meta = CheckpointMeta(
        kind="end-to-end",
        model=job.strategy,
        head=searched.head_cfg,
        in_features=model.backbone.num_features,
        classes=classes,
        fingerprint=searched.fingerprint,
        init=searched.init,
        lr=searched.lr,
    )
    return RunOutputs(model, meta, summary, scored, list(shifted), classes, manifest_sha, column, wise_curve)


def _publish_curves(run: str, lr: float) -> None:
    """The picked rate's curves where a run's curves live (results/<run>/plots, metrics.json),
    beside every rate's own under results/<run>/search."""
    src, dst = _lr_dir(run, lr), layout.results_dir(run)
    # the curves alone: plots/ may hold files that are not the run's (DVC's .gitignore)
    shutil.rmtree(dst / "plots" / "metrics", ignore_errors=True)
    if (src / "plots" / "metrics").is_dir():
        shutil.copytree(src / "plots" / "metrics", dst / "plots" / "metrics")
    if (src / "metrics.json").is_file():
        shutil.copy2(src / "metrics.json", dst / "metrics.json")


def wise_points(
    model: TransferModel,
    start: dict[str, torch.Tensor],
    alphas: list[float],
    loaders: dict[str, tuple[SplitView, Any]],
    data: Data,
    cfg: StrategyConfig,
    device: torch.device,
) -> dict[str, Any]:
    """The weights mixed between the run's start (probe on the pretrained backbone) and its
    end at each alpha, scored on val and test (transferlab.training.wise); raw logits, for
    the stage to write."""
    from transferlab.training import wise

    t0 = time.perf_counter()
    end = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_loader = eval_loader(
        data.train.paths, data.train.labels, data.pre, cfg.batch_size * 2, num_workers=0
    )

    def bn(m: torch.nn.Module) -> None:
        wise.reestimate_bn(m, (x for x, _ in train_loader), device)

    def point(m: torch.nn.Module) -> dict[str, Any]:
        return score_run(m, loaders, device, cfg.amp, data.paths)

    points = wise.curve(model, start, end, alphas, point, reestimate=bn if cfg.bn == "train" else None)
    return {
        "points": points,
        "bn_reestimated": cfg.bn == "train",
        "time_s": round(time.perf_counter() - t0, 2),
    }


@dataclass
class CurvePoint:
    point: str
    scored: dict[str, Scored]
    summary: dict[str, Any]
    train: SplitView
    classes: list[str]
    manifest_sha256: str
    split: str
    paths: list[str]


def run_curve_point(job: Job, size: str) -> CurvePoint:
    """curve-finetune@<strategy>-<seed>-<size>: the strategy's search on the nested subset at
    ``size`` of this seed's training split, on the same step budget as its main run (the
    best rate depends on the number of images, so the point searches its own)."""
    if job.ranks.size > 1:
        raise ConfigError("curve points train on one process; run curve-finetune stages without torchrun")
    p, seed = job.p, job.seed
    manifest = read_manifest(layout.MANIFEST)
    classes = class_names(manifest)
    manifest_sha = manifest_fingerprint(manifest)
    column = split_column(seed, p.base.splittings)
    point = layout.curve_point(job.strategy, seed, size)
    pre = build_model(p, job.strategy, seed, classes, manifest_sha)[0].backbone.preprocess

    def subset(view: SplitView) -> SplitView:
        return training_subset(view, float(size), (p.base.seed, seed), classes)

    data = Data(p, manifest, column, pre, job.workers, subset)
    searched = train_searched(
        job, data, classes, manifest_sha, log_dir=None, desc=f"{point} on a learning-curve subset"
    )
    cfg, result = job.cfg, searched.search.picked.result
    assert result is not None
    loaders = {
        "val": (data.val, data.eval_loader(data.val, cfg)),
        "test": (data.test, data.eval_loader(data.test, cfg)),
    }
    scored = score_run(searched.model, loaders, job.device, cfg.amp, data.paths)
    record = searched.search.record()
    summary = {
        "val_acc": result.best.val_acc,
        "val_loss": result.best.val_loss,
        "train_time_s": result.seconds,
        "search_time_s": record["search_time_s"],
        "steps": result.steps,
        "converged": result.converged,
        "protocol": {"grid": {"lr": record["tried"]}, "picked": {"lr": searched.lr}, "search": record},
    }
    return CurvePoint(point, scored, summary, data.train, classes, manifest_sha, column, data.paths)


def _probe_cost(seed: int) -> float:
    """Seconds the probe lp-ft starts from cost (its whole grid search): lp-ft pays for it."""
    from transferlab.training.records import read_summary

    return read_summary(layout.train_summary(layout.run_name(layout.FEATURES_MODEL, seed))).search_s
