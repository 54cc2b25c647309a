"""``transferlab plan`` (``make plan``): how long ``dvc repro`` will take on this machine, before
it starts, without training anything.

The estimate multiplies measured unit costs by the configured amount of work:

- one stage's fixed start-up: a fresh interpreter importing what a training stage imports
  (torch, torchvision, the store, dvclive), timed here;
- the backbone's inference pace (images per second at extraction's batch size), timed on a
  few batches at the configured input size: extraction (every image and every augmented
  view), every run's validation passes and its scoring (val, test, shifted test);
- each end-to-end strategy's training pace: a few optimizer steps at the budget's batch size
  with the strategy's trainable set (progressive at its first epoch's), on random images of
  the input size. Times its images, epochs, learning rates, seeds and learning-curve points;
- the linear probe: L-BFGS iterations on features of the backbone's width, timed, times rows,
  iterations (``ITERATIONS``, what the default's probes took) and the L2 grid;
- evaluate, report and export: start-up plus what they took on the default (``AGGREGATES``).

Decoding and augmenting images are not timed (on the default, and on photos up to 224 px on
a CPU, they are a small part of a training step); nor are DVC's own bookkeeping between
stages. The README states how close the estimate came to a real ``make repro``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from transferlab import layout, registry
from transferlab.config import Params, load_params

# What a stage imports before its work (a fresh interpreter: nothing is cached).
STAGE_IMPORTS = (
    "import torch, torchvision, polars, zarr, dvclive, transferlab.features.store, transferlab.training.loop"
)
# L-BFGS iterations per grid point: the default's probes took 43 (features) and 104 (with
# augmented views) at the picked strength; weaker L2 takes longer, so the larger is assumed.
ITERATIONS = 100
# Seconds of work after start-up measured on the default (2-core CPU): evaluate's paired
# bootstraps, the report's figures, export's TorchScript and ONNX conversion and checks.
AGGREGATES = {"evaluate": 6.0, "report": 8.0, "export": 25.0}
TIMED_STEPS = 3  # after one untimed warm-up step


@dataclass
class Estimate:
    """Seconds per stage kind, and how many stages of each kind the pipeline runs."""

    rows: list[tuple[str, int, float]] = field(default_factory=list)  # (what, stages, seconds)
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, stages: int, seconds: float) -> None:
        if stages:
            self.rows.append((what, stages, seconds))

    @property
    def total(self) -> float:
        return sum(s for _, _, s in self.rows)

    def text(self) -> str:
        width = max(len(w) for w, _, _ in self.rows)
        lines = [f"{'stage':<{width}}  stages  estimated"]
        lines += [f"{w:<{width}}  {n:>6}  {_clock(s):>9}" for w, n, s in self.rows]
        lines.append(f"{'total':<{width}}  {sum(n for _, n, _ in self.rows):>6}  {_clock(self.total):>9}")
        return "\n".join(lines + [""] + self.notes) + "\n"


def _clock(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def startup_seconds() -> float:
    """A training stage's fixed cost: a fresh interpreter importing what the stages import."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", STAGE_IMPORTS], check=True, capture_output=True)
    return time.perf_counter() - t


def _timed(fn: Any, repeats: int) -> float:
    fn()  # warm-up: allocations, kernel selection
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def inference_pace(backbone: torch.nn.Module, size: int, batch: int) -> float:
    """Seconds per image of the backbone's forward pass, in eval mode without gradients."""
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    backbone.eval()

    def step() -> None:
        with torch.inference_mode():
            backbone(x)

    return _timed(step, TIMED_STEPS) / batch


def training_pace(p: Params, strategy: str, classes: int) -> float:
    """Seconds per image of one optimizer step of ``strategy`` at its batch size."""
    from transferlab.features.backbones import create_backbone
    from transferlab.training.models import TransferModel, make_head
    from transferlab.training.strategies import apply_strategy, param_groups

    cfg = p.finetune.strategy(strategy)
    spec = registry.get(strategy)
    backbone = create_backbone(
        p.backbone.name,
        p.backbone.image_size,
        p.backbone.weights,
        pretrained=spec.pretrained,
        crop_pct=p.backbone.crop_pct,
    )
    model = TransferModel(backbone, make_head(p.finetune.head, backbone.num_features, classes))
    apply_strategy(model, strategy, cfg)
    model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(param_groups(model, cfg, cfg.lr[0]))
    size, batch = p.backbone.image_size, cfg.batch_size
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return _timed(step, TIMED_STEPS) / batch


def probe_pace(width: int, classes: int, rows: int = 2048) -> float:
    """Seconds per row and L-BFGS iteration of the probe on features ``width`` wide."""
    x, y = torch.randn(rows, width), torch.randint(0, classes, (rows,))
    w = torch.zeros(width, classes, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=10, tolerance_grad=0, tolerance_change=0, history_size=10)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w, y) + 1e-3 * w.square().sum()
        loss.backward()
        return loss

    return _timed(lambda: opt.step(closure), 1) / (10 * rows)


def plan(p: Params, counts: dict[str, int], classes: int) -> Estimate:
    """The estimate for params ``p`` on splits of ``counts`` images (train, val, test)."""
    from transferlab.features.backbones import create_backbone

    torch.set_num_threads(p.base.num_threads or torch.get_num_threads())
    est = Estimate()
    seeds, views = len(p.base.seeds), p.extract_features.augment_views
    n_train, n_val, n_test = counts["train"], counts["val"], counts["test"]
    start = startup_seconds()
    backbone = create_backbone(
        p.backbone.name, p.backbone.image_size, p.backbone.weights, crop_pct=p.backbone.crop_pct
    )
    infer = inference_pace(backbone, p.backbone.image_size, p.extract_features.batch_size)
    shifts = len(p.shift.kinds)
    score = (n_val + n_test * (1 + shifts)) * infer  # one run's predictions on val, test, shifted test

    est.add("download", 1, start)
    est.add("extract-features", 1, start + (n_train * (1 + views) + n_val + n_test * (1 + shifts)) * infer)
    probe = probe_pace(backbone.num_features, classes)
    grid = len(p.train_head.linear.l2)
    head_rows = {"features": n_train, "features-augmented": n_train * (1 + views)}
    models = [m for m in p.train_head.models if m in head_rows]
    fit = {m: head_rows[m] * ITERATIONS * grid * probe for m in models}
    est.add("train-head", len(models) * seeds, sum(start + fit[m] + score for m in models) * seeds)
    sizes = list(p.curve.sizes)
    if sizes:
        est.add("curve-head", seeds, seeds * (start + sum(fit[m] * f for m in models for f in sizes)))
    budget_notes = []
    for strategy in registry.names("end-to-end"):
        cfg = p.finetune.strategy(strategy)
        rates = len(cfg.lr)
        curve = strategy in p.curve.models
        if not rates:
            continue
        step = training_pace(p, strategy, classes)
        epoch = n_train * step + n_val * infer
        run = cfg.epochs * epoch + score
        est.add(f"finetune-{strategy}", rates * seeds, rates * seeds * (start + run))
        if curve:
            points = sum(rates * (cfg.epochs * (f * n_train * step + n_val * infer) + score) for f in sizes)
            est.add(f"curve-finetune {strategy}", len(sizes) * seeds, seeds * (len(sizes) * start + points))
        budget_notes.append(f"{strategy} {step * 1000:.1f} ms")
    for stage, seconds in AGGREGATES.items():
        est.add(stage, 1, start + seconds)
    est.notes = [
        f"Measured here: stage start-up {start:.1f} s; inference {infer * 1000:.2f} ms/image at "
        f"{p.backbone.image_size} px; a training step per image: {', '.join(budget_notes) or 'none'}; "
        f"the probe {probe * 1e6:.2f} us per row and iteration.",
        f"Work: {n_train:,} training, {n_val:,} validation, {n_test:,} test images, {seeds} seed(s), "
        f"{views} augmented view(s) per training image, {shifts} shift(s) of the test split.",
        "Not counted: decoding and augmenting images, DVC's bookkeeping between stages, stages "
        "already up to date (the estimate is for a run from scratch).",
    ]
    if est.total > 3600 and not torch.cuda.is_available():
        est.notes.append(
            "Over an hour on this CPU: the README's GPU profile, download.max_per_class (fewer "
            "images per class) or a smaller backbone.image_size cut it."
        )
    return est


def split_counts(manifest_path: Path) -> tuple[dict[str, int], int]:
    """Images per split of the base splitting (with base.folds, of the first fold's run, as
    the manifest's ``split`` column holds it) and the number of classes, from the download
    stage's manifest."""
    from transferlab.data.manifest import read_manifest

    m = read_manifest(manifest_path)
    counts = {s: int((m["split"] == s).sum()) for s in ("train", "val", "test")}
    return counts, int(m["label"].n_unique())


def run_plan(params: Path) -> str:
    """The estimate as text, for the params file ``params`` and the manifest download wrote."""
    counts, classes = split_counts(layout.MANIFEST)
    return plan(load_params(params), counts, classes).text()
