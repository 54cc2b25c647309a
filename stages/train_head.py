"""train-head@<model>: a classifier trained on the cached features only (no backbone forward).

The two-stage path: epochs cost milliseconds because the backbone ran once, in
extract-features. ``features`` trains on the training images' features; ``features-augmented``
also on the K augmented views extract-features stored. Changing a parameter here re-runs only
these stages, evaluate and report.
One stage per model and seed (``train-head@features-0``). The learning curves' stage
``curve-head@<seed>`` (stages/curve_head.py) trains every two-stage model on each nested
subset of params: curve.sizes with :func:`curves` below.
Run through `dvc repro`; by hand: ``python stages/train_head.py features --seed 0``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

from transferlab import layout, registry
from transferlab.cli import run_stage
from transferlab.config import Params, load_params
from transferlab.data.subsets import SizeTooSmall, subset_mask
from transferlab.features.store import IMAGES
from transferlab.runtime import configure_runtime, resolve_device, seed_everything
from transferlab.training.heads import HeadData, fit_head, head_data, score_head
from transferlab.training.models import CheckpointMeta
from transferlab.training.tracking import finish_run, run_cost
from transferlab.verdict.scoring import write_curve_point, write_predictions


def write_scored(run: str, d: HeadData, scored: dict[str, tuple], shifts: list[str]) -> None:
    """A run's (or curve point's) per-image predictions on val, test and the ``shifts``."""
    write_predictions(
        run,
        manifest_sha256=d.store.fingerprint["manifest_sha256"],
        classes=d.classes,
        val=scored["val"],
        test=scored["test"],
        split=d.column,
        shifted={k: scored[k] for k in shifts},
    )


def main(args: argparse.Namespace) -> None:
    p = load_params(args.params)
    base, cfg = p.base, p.train_head
    device = resolve_device(base.device)
    configure_runtime(base.num_threads, device)
    run = layout.run_name(args.model, args.seed)
    generator = seed_everything(args.seed)
    d = head_data(p, args.model, args.seed)
    head, summary, n_train, streamed = fit_head(
        cfg, d, d.split_rows["train"], device, run, args.seed, generator
    )
    # Score the chosen head on val and test, image by image: the verdict's raw material.
    write_scored(run, d, score_head(head, d.store, d.split_rows, d.paths, device), d.store.shifts())
    meta = CheckpointMeta(
        kind="head",
        model=args.model,
        head=cfg.head_config,
        in_features=int(d.store.arrays(IMAGES)[0].shape[1]),
        classes=d.classes,
        fingerprint=d.store.fingerprint,
        init={"head": "random, trained on the cached features"},
    )
    summary.update(
        {
            "seed": args.seed,
            "split": d.column,
            "streamed": streamed,
            "n_train": n_train,
            **run_cost(head, device),
        }
    )
    finish_run(run, head.cpu(), meta, summary)


def curves(p: Params, seed: int) -> None:
    """curve-head@<seed> (stages/curve_head.py): every two-stage model of train_head.models
    trained again on each nested subset of this seed's training split (params: curve.sizes),
    scored on the same val and test images; one process for all of them (each point takes
    seconds)."""
    device = resolve_device(p.base.device)
    configure_runtime(p.base.num_threads, device)
    for model in p.train_head.models:
        curve(p, head_data(p, model, seed), model, seed, device)


def curve(p, d: HeadData, model: str, seed: int, device) -> None:
    """One model's points: the main run's recipe and grid search on each subset."""
    train_rows = d.split_rows["train"]
    for size in p.curve.sizes:
        try:
            keep = subset_mask(d.labels[train_rows], size, (p.base.seed, seed), d.classes)
        except SizeTooSmall as err:  # small data: the curve skips the size, the report says so
            print(f"{model}: skipped: {err}")
            continue
        point = layout.curve_point(model, seed, str(size))
        generator = seed_everything(seed)  # every point starts as the main run did
        head, summary, _, _ = fit_head(
            p.train_head, d, train_rows[keep], device, point, seed, generator, log=False
        )
        write_scored(point, d, score_head(head, d.store, d.split_rows, d.paths, device, shifts=False), [])
        write_curve_point(
            point,
            model=model,
            seed=seed,
            size=size,
            labels=d.labels[train_rows[keep]],
            ids=[d.paths[r] for r in train_rows[keep]],
            classes=d.classes,
            summary=summary,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "model", choices=registry.names("two-stage"), help="a model listed in params: train_head.models"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (one of params: base.seeds)")
    run_stage(main, parser)
