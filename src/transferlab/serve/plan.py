"""``transferlab plan`` (``make plan``): how long ``dvc repro`` will take on this machine, before
it starts, without training anything.

The estimate multiplies measured unit costs by the configured amount of work:

- one stage's fixed start-up: a fresh interpreter importing what a training stage imports
  (torch, torchvision, the store, dvclive), timed here;
- the backbone's inference pace (images per second at extraction's batch size), timed on a
  few batches at the configured input size: extraction (every image and every augmented
  view), every run's validation passes and its scoring (val, test, shifted test);
- each end-to-end strategy's training pace: a few optimizer steps at the budget's batch size
  with the strategy's trainable set (progressive at its first round's), on random images of
  the input size. Times the steps its learning-rate search trains (before any extension of
  the grid), its validation rounds, its seeds and learning-curve points;
- the linear probe: L-BFGS iterations on features of the backbone's width, timed, times rows,
  iterations (``ITERATIONS``, what the default's grids averaged) and the L2 grid;
- the input pipeline: decoding a sample of the manifest's own images (every image stage
  decodes its images once into its cache) and augmenting them (every image of every step: on
  a CPU without loader workers it runs in series with the step);
- evaluate, report and export: start-up plus what they took on the default (``AGGREGATES``),
  and per stage what a run does besides its work (``STAGE_EXTRA``); the model card's whole
  process (``MODEL_CARD``: it imports no torch).

The README states how close the estimate came to a real ``make repro``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch

from transferlab import layout, registry
from transferlab.config import Params, load_params
from transferlab.data.images import Preprocess
from transferlab.training.search import rung_length

# What a stage imports before its work (a fresh interpreter: nothing is cached), the way the
# stages import it: torchvision without torch's compiler (transferlab.startup).
STAGE_IMPORTS = (
    "import torch; from transferlab.startup import without_compiler; without_compiler(); "
    "import torchvision, polars, zarr, dvclive, transferlab.features.store, transferlab.training.loop"
)
# L-BFGS iterations per point of the L2 grid, on average: the default's whole grids took
# 3.4 s (features, 1,259 rows) and 16.2 s (augmented views, 6,295 rows) for 11 points, about
# 20 iterations each at this module's measured pace per row (the picked strengths alone took
# 43 and 104: strong regularisation converges in a few).
ITERATIONS = 20
# Seconds of work after start-up measured on the default (2-core CPU): evaluate's paired
# bootstraps, the report's figures, export's TorchScript and ONNX conversion and checks.
AGGREGATES = {"evaluate": 6.0, "report": 8.0, "export": 25.0}
# The model card's whole process (JSON in and out, no torch): 0.11 to 0.13 s on the default.
MODEL_CARD = 0.2
TIMED_STEPS = 3  # after one untimed warm-up step
# Seconds each stage spends besides its imports and its work, measured on the default (a
# profiled `frozen` run): dvclive opening the repository (1.1 s), the environment record
# (0.5 s), building the network, writing checkpoint and predictions, DVC hashing and locking.
STAGE_EXTRA = 3.0
SAMPLE = 32  # images decoded and augmented to time the input pipeline


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


def training_pace(p: Params, arms: dict[str, Any], strategy: str, classes: int) -> float:
    """Seconds per image of one optimizer step of ``strategy`` at its batch size, on the
    arms' backbone ``arms`` (name, image_size, weights)."""
    from transferlab.features.backbones import create_backbone
    from transferlab.training.models import TransferModel, make_head
    from transferlab.training.strategies import apply_strategy, param_groups

    cfg = p.finetune.strategy(strategy)
    spec = registry.get(strategy)
    backbone = create_backbone(
        arms["name"],
        arms["image_size"],
        arms["weights"],
        pretrained=spec.pretrained,
        crop_pct=p.backbone.crop_pct,
    )
    model = TransferModel(backbone, make_head(p.finetune.head, backbone.num_features, classes))
    apply_strategy(model, strategy, cfg)
    model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(param_groups(model, cfg, cfg.lr[0]))
    size, batch = arms["image_size"], cfg.batch_size
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


def input_paces(p: Params, pre: Preprocess, paths: list[Path]) -> tuple[float, float]:
    """Seconds per image to decode one of ``paths`` (a sample of the data) and to augment a
    decoded one as training does (crop, rotation, flip, normalization; ``pre``: the
    backbone's preprocessing)."""
    from transferlab.data.images import decode, train_transform

    sample = paths[:SAMPLE]
    if not sample:
        return 0.0, 0.0
    decode(sample[0])  # warm-up: the first call imports torchvision
    t = time.perf_counter()
    images = [decode(path) for path in sample]
    decoding = (time.perf_counter() - t) / len(sample)
    aug = p.augment
    transform = train_transform(
        pre, crop_scale=aug.crop_scale, rotation_degrees=aug.rotation_degrees, hflip=aug.hflip
    )
    transform(images[0])  # warm-up
    t = time.perf_counter()
    for image in images:
        transform(image)
    return decoding, (time.perf_counter() - t) / len(images)


def plan(p: Params, counts: dict[str, int], classes: int, paths: list[Path] | None = None) -> Estimate:
    """The estimate for params ``p`` on splits of ``counts`` images (train, val, test), its
    input pipeline timed on ``paths`` (a sample of the data's images)."""
    from transferlab.features.backbone_choice import choose
    from transferlab.features.backbones import create_backbone

    if p.base.num_threads:
        torch.set_num_threads(p.base.num_threads)
    arms = choose(p.backbone)  # backbone.name, or with best-probe the screens' pick
    est = Estimate()
    seeds, views = len(p.base.seeds), p.extract_features.augment_views
    n_train, n_val, n_test = counts["train"], counts["val"], counts["test"]
    start = startup_seconds() + STAGE_EXTRA
    backbone = create_backbone(
        arms["name"], arms["image_size"], arms["weights"], crop_pct=p.backbone.crop_pct
    )
    decoding, augmenting = input_paces(p, backbone.preprocess, paths or [])
    n_all = n_train + n_val + n_test
    fill = n_all * decoding  # an image stage's cache: every image of its splits, once
    infer = inference_pace(backbone, arms["image_size"], p.extract_features.batch_size)
    shifts = len(p.shift.kinds)
    score = (n_val + n_test * (1 + shifts)) * infer  # one run's predictions on val, test, shifted test

    est.add("download", 1, start)
    est.add(
        "extract-features",
        1,
        start
        + fill
        + (n_train * (1 + views) + n_val + n_test * (1 + shifts)) * infer
        + n_train * views * augmenting,
    )
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
    search = p.finetune.search
    for strategy in p.finetune.runs:
        cfg = p.finetune.strategy(strategy)
        steps = search_steps(
            len(cfg.lr), cfg.steps, cfg.eval_every, search.first_rung, search.keep, search.rungs
        )
        step = training_pace(p, arms, strategy, classes) + augmenting
        # every step's batch, validation every eval_every steps of every rate trained
        run = fill + steps * cfg.batch_size * step + steps / cfg.eval_every * n_val * infer + score
        est.add(f"finetune {strategy}", seeds, seeds * (start + run))
        if strategy in p.curve.models:  # a point trains as many steps as the main run
            points = sum(run - score + (n_val + n_test) * infer for _ in sizes)
            est.add(f"curve-finetune {strategy}", len(sizes) * seeds, seeds * (len(sizes) * start + points))
        budget_notes.append(f"{strategy} {(step - augmenting) * 1000:.1f} ms")
    for stage, seconds in AGGREGATES.items():
        est.add(stage, 1, start + seconds)
    est.add("model-card", 1, MODEL_CARD)
    est.notes = [
        f"Measured here: stage start-up {start - STAGE_EXTRA:.1f} s (+ {STAGE_EXTRA:.0f} s per stage besides "
        f"its work); decoding {decoding * 1000:.2f} ms and augmenting {augmenting * 1000:.2f} ms per image; "
        f"inference {infer * 1000:.2f} ms/image ({arms['name']} at "
        f"{arms['image_size']} px); a training step per image: {', '.join(budget_notes) or 'none'}; "
        f"the probe {probe * 1e6:.2f} us per row and iteration.",
        f"Work: {n_train:,} training, {n_val:,} validation, {n_test:,} test images, {seeds} seed(s), "
        f"{views} augmented view(s) per training image, {shifts} shift(s) of the test split.",
        "The estimate is for a run from scratch: stages already up to date cost DVC a moment.",
    ]
    if est.total > 3600 and not torch.cuda.is_available():
        est.notes.append(
            "Over an hour on this CPU: the README's GPU profile, a smaller backbone.image_size, "
            "fewer finetune.strategies or finetune.budget.steps cut it (download.max_per_class "
            "cuts extraction and scoring: the end-to-end budget is in steps, whatever the images)."
        )
    return est


def search_steps(
    rates: int, steps: int, eval_every: int, first_rung: float, keep: int, rungs: str = "annealed"
) -> int:
    """Optimizer steps one run's learning-rate search trains (transferlab.training.search),
    before any extension of the grid (each adds a first rung): every rate the first rung,
    then the ``keep`` best the whole budget (annealed rungs: a fresh run) or the rest of it
    (continued rungs)."""
    rung = rung_length(rates, steps, eval_every, first_rung)
    if rung >= steps:
        return rates * steps
    return rates * rung + min(keep, rates) * (steps if rungs == "annealed" else steps - rung)


def split_counts(manifest: pl.DataFrame) -> tuple[dict[str, int], int]:
    """Images per split of the base splitting (with base.folds, of the first fold's run, as
    the manifest's ``split`` column holds it) and the number of classes."""
    counts = {s: int((manifest["split"] == s).sum()) for s in ("train", "val", "test")}
    return counts, int(manifest["label"].n_unique())


def sample_paths(manifest: pl.DataFrame, n: int = SAMPLE) -> list[Path]:
    """``n`` of the data's images, spread over the manifest (every class, not the first one)."""
    paths = manifest["path"].to_list()
    step = max(1, len(paths) // n)
    return [layout.RAW / x for x in paths[::step][:n]]


def run_plan(params: Path) -> str:
    """The estimate as text, for the params file ``params`` and the manifest download wrote
    (read once: the counts and the sample both come from it)."""
    from transferlab.data.manifest import read_manifest

    manifest = read_manifest(layout.MANIFEST)
    counts, classes = split_counts(manifest)
    est = plan(load_params(params), counts, classes, sample_paths(manifest))
    line = gap_line(est, sum(counts.values()) / classes)
    return est.text() + (f"\n{line}\n" if line else "")


def gap_line(est: Estimate, per_class: float, extract_json: Path | None = None) -> str | None:
    """What fine-tuning will add over the probe, from the audit's gap model
    (transferlab.verdict.gap) and extraction's transferability scores: only when the model
    beat always-the-probe and always-full on held-out data sets, and once extract-features
    has run (it computes the signals in seconds). With the end-to-end stages' estimated time,
    the price of finding out."""
    import json

    from transferlab.verdict.gap import GapModel, plan_line

    model = GapModel.load()
    if model is None or not model.shown:
        return None
    path = extract_json or layout.RESULTS / "extract" / "extract.json"
    if not path.is_file():
        return "Fine-tuning's gain over the probe can be predicted: run `dvc repro extract-features`, then plan again."
    scores = json.loads(path.read_text()).get("transferability", {}).get("scores")
    line = plan_line(model, scores, per_class)
    if line is None:
        return None
    e2e = sum(s for what, _, s in est.rows if what.startswith(("finetune", "curve-finetune")))
    return f"{line} The end-to-end arms would take about {_clock(e2e)} here."
