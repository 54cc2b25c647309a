"""Every trained model on the test split, next to what it cost to train.

The two-stage model is scored on the test features in the store (the same frozen backbone,
run once); end-to-end models are rebuilt from their checkpoints and run on the test images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from transferlab import layout
from transferlab._io import read_json
from transferlab.backbones import create_backbone
from transferlab.config import HeadConfig
from transferlab.data import eval_loader, manifest_fingerprint, split_view
from transferlab.errors import FingerprintMismatch
from transferlab.features import FeatureStore
from transferlab.metrics import classification_metrics, per_class_f1
from transferlab.models import TransferModel, load_checkpoint, make_head
from transferlab.runtime import memory_format
from transferlab.selection import best_index
from transferlab.training import TensorBatches, predict

MB = 1024 * 1024


def _head_from(meta: dict[str, Any], num_classes: int, in_features: int) -> torch.nn.Module:
    return make_head(HeadConfig(**meta["head"]), in_features, num_classes)


Checkpoint = tuple[dict[str, torch.Tensor], dict[str, Any]]


def _check_manifest(ckpt: Path, meta: dict[str, Any], manifest_sha256: str) -> None:
    """A model trained on another manifest would be scored on images it may have trained on."""
    have = meta.get("manifest_sha256") or meta.get("fingerprint", {}).get("manifest_sha256")
    if have != manifest_sha256:
        raise FingerprintMismatch(
            f"{ckpt}: trained on manifest {str(have)[:12]}, but data/manifest.parquet is "
            f"{manifest_sha256[:12]}; re-run the pipeline (dvc repro)"
        )


def score_head(ckpt: Path, loaded: Checkpoint, store: FeatureStore, device: torch.device) -> dict[str, Any]:
    """A head checkpoint (already loaded from ``ckpt``) on the store's test features."""
    state, meta = loaded
    if meta.get("fingerprint") != store.fingerprint:
        raise FingerprintMismatch(f"{ckpt}: trained on other features than {store.path}; re-run train-head")
    head = _head_from(meta, len(meta["classes"]), meta["in_features"])
    head.load_state_dict(state)
    x, y, _ = store.load("test")
    logits, labels = predict(head.to(device), TensorBatches(x, y, 4096), device)
    return classification_metrics(logits, labels, len(meta["classes"]))


def score_transfer(
    loaded: Checkpoint, manifest: pl.DataFrame, device: torch.device, batch_size: int
) -> dict[str, Any]:
    """An end-to-end checkpoint, rebuilt and run on the test images."""
    state, meta = loaded
    fp = meta["fingerprint"]
    backbone = create_backbone(fp["backbone"], fp["image_size"], pretrained=False, crop_pct=fp["crop_pct"])
    model = TransferModel(backbone, _head_from(meta, len(meta["classes"]), backbone.num_features))
    model.load_state_dict(state)
    test = split_view(manifest, layout.RAW, "test")
    loader = eval_loader(test.paths, test.labels, backbone.preprocess, batch_size)
    logits, labels = predict(model.to(device, memory_format=memory_format(device)), loader, device)
    return classification_metrics(logits, labels, len(meta["classes"]))


@dataclass
class GridPoint:
    """One learning rate of an end-to-end strategy, over the seeds: validation only."""

    lr: float
    runs: dict[int, str]  # seed -> run name
    val_acc: float  # mean over seeds of each run's best-epoch validation accuracy
    val_loss: float
    seconds: float  # mean over seeds


def grid_runs(strategy: str, grid: list[float], seeds: list[int]) -> list[GridPoint]:
    """The trained runs of every point of ``strategy``'s grid, found by their folder names
    (DVC spells the rate in them), each point averaged over the seeds."""
    found: dict[tuple[int, float], str] = {}
    for d in layout.MODELS.glob(f"{strategy}-s*-lr*"):
        model, seed, lr = layout.parse_run(d.name)
        if model == strategy and lr is not None:
            found[(seed, lr)] = d.name
    points = []
    for lr in grid:
        runs = {}
        for seed in seeds:
            name = found.get((seed, float(lr)))
            if name is None or not layout.checkpoint(name).is_file():
                raise FileNotFoundError(
                    f"{layout.MODELS}/{strategy}-s{seed}-lr{lr}: no checkpoint for this point of "
                    f"finetune.{strategy}.lr; run dvc repro"
                )
            runs[seed] = name
        summaries = [read_json(layout.train_summary(n)) for n in runs.values()]
        points.append(
            GridPoint(
                lr=float(lr),
                runs=runs,
                val_acc=float(np.mean([t["val_acc"] for t in summaries])),
                val_loss=float(np.mean([t["val_loss"] for t in summaries])),
                seconds=float(np.mean([t["train_time_s"] for t in summaries])),
            )
        )
    return points


def read_curves(results: Path) -> dict[str, list[float]]:
    """dvclive's per-epoch TSVs of one run as {metric: values by epoch}."""
    curves: dict[str, list[float]] = {}
    root = results / "plots" / "metrics"
    for tsv in sorted(root.rglob("*.tsv")):
        name = tsv.relative_to(root).with_suffix("").as_posix()
        df = pl.read_csv(tsv, separator="\t")
        curves[name] = df[df.columns[-1]].cast(pl.Float64).to_list()
    return curves


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def headline(runs: dict[int, dict[str, Any]], depends_s: float = 0.0) -> dict[str, Any]:
    """The numbers ``dvc exp show`` lists per model: means over seeds (with the spread of the
    two main scores), short names, rounded, no lists.

    ``depends_s`` is what the model needed before its own training (extraction for the
    two-stage models; extraction and the probe for lp-ft): ``total_time_s`` includes it.
    """
    scores = [r["scores"] for r in runs.values()]
    train = [r["train"] for r in runs.values()]
    acc, acc_sd = _mean_std([s["accuracy"] for s in scores])
    f1, f1_sd = _mean_std([s["macro_f1"] for s in scores])

    def mean(key: str, src: list[dict[str, Any]]) -> float:
        return float(np.mean([x[key] for x in src]))

    return {
        "test_acc": round(acc, 4),
        "test_acc_std": round(acc_sd, 4),
        "test_acc_ci_lo": round(float(np.mean([s["accuracy_ci95"][0] for s in scores])), 4),
        "test_acc_ci_hi": round(float(np.mean([s["accuracy_ci95"][1] for s in scores])), 4),
        "macro_f1": round(f1, 4),
        "macro_f1_std": round(f1_sd, 4),
        "balanced_acc": round(mean("balanced_accuracy", scores), 4),
        "nll": round(mean("nll", scores), 4),
        "ece": round(mean("ece", scores), 4),
        "train_time_s": round(mean("train_time_s", train), 2),
        "total_time_s": round(mean("train_time_s", train) + depends_s, 2),
        "search_time_s": round(mean("search_time_s", train), 2),
        "time_per_epoch_s": round(mean("time_per_epoch_s", train), 3),
        "images_per_s": round(mean("train_images_per_s", train), 1),
        "epochs": round(mean("epochs_run", train), 1),
        "trainable_params": train[0]["trainable_params"],
        "total_params": train[0]["total_params"],
        "peak_rss_mb": round(max(t["peak_rss_bytes"] for t in train) / MB, 1),
        "peak_gpu_mb": round(max(t["peak_gpu_bytes"] or 0 for t in train) / MB, 1),
        "seeds": len(runs),
    }


def rank_flips(acc: dict[str, dict[int, float]]) -> list[dict[str, Any]]:
    """Pairs of models whose order by test accuracy differs between seeds."""
    flips = []
    models = sorted(acc)
    for i, a in enumerate(models):
        for b in models[i + 1 :]:
            seeds = sorted(set(acc[a]) & set(acc[b]))
            ahead = [s for s in seeds if acc[a][s] > acc[b][s]]
            behind = [s for s in seeds if acc[a][s] < acc[b][s]]
            if ahead and behind:
                flips.append({"models": [a, b], f"{a}_ahead_seeds": ahead, f"{b}_ahead_seeds": behind})
    return flips


def _run_record(run: str, manifest_sha: str, manifest, store, device, batch_size) -> dict[str, Any]:
    ckpt = layout.checkpoint(run)
    loaded = load_checkpoint(ckpt)  # read once: its kind decides how to score it
    _check_manifest(ckpt, loaded[1], manifest_sha)
    if loaded[1]["kind"] == "head":
        scores = score_head(ckpt, loaded, store, device)
    else:
        scores = score_transfer(loaded, manifest, device, batch_size)
    return {
        "run": run,
        "scores": scores,
        "train": read_json(layout.train_summary(run)),
        "curves": read_curves(layout.results_dir(run)),
        "classes": loaded[1]["classes"],
    }


def evaluate_all(
    heads: list[str],
    strategies: dict[str, list[float]],
    seeds: list[int],
    manifest: pl.DataFrame,
    store: FeatureStore,
    device: torch.device,
    batch_size: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every model on the test split. Returns (metrics for DVC, details).

    ``heads`` are the two-stage models; ``strategies`` maps each end-to-end strategy to its
    learning-rate grid. A strategy's rate is chosen on validation (mean over seeds, by
    :func:`transferlab.selection.best_index`), and only that rate's runs are scored on
    test: the test split never takes part in a choice.
    """
    manifest_sha = manifest_fingerprint(manifest)
    extract = read_json(layout.results_dir("extract") / "extract.json")
    probe_s = {}  # seed -> the probe's search time, which lp-ft also pays
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {"models": {}, "seeds": seeds}
    classes: list[str] | None = None
    chosen: dict[str, tuple[dict[int, str], dict[str, Any]]] = {}
    for name in heads:
        runs = {seed: layout.run_name(name, seed) for seed in seeds}
        summaries = {seed: read_json(layout.train_summary(r)) for seed, r in runs.items()}
        if name == layout.FEATURES_MODEL:
            probe_s = {seed: t.get("search_time_s", t["train_time_s"]) for seed, t in summaries.items()}
        first = summaries[seeds[0]]
        chosen[name] = (
            runs,
            {
                "kind": "two-stage head",
                "selection": "validation accuracy, ties to lower validation loss",
                "grid": first["protocol"]["grid"],
                "picked": {str(s): t["protocol"]["picked"] for s, t in summaries.items()},
                "points": {str(s): t["protocol"]["points"] for s, t in summaries.items()},
                "budget": first["protocol"]["budget"],
                "depends_on": ["extract-features"]
                + (["augmented views"] if name == "features-augmented" else []),
            },
        )
    for name, grid in strategies.items():
        points = grid_runs(name, grid, seeds)
        pick = points[best_index(points)]
        first = read_json(layout.train_summary(pick.runs[seeds[0]]))
        chosen[name] = (
            pick.runs,
            {
                "kind": "end to end",
                "selection": "validation accuracy (mean over seeds), ties to lower validation loss",
                "grid": {"lr": [p.lr for p in points]},
                "picked": {"lr": pick.lr},
                "points": [asdict(p) for p in points],
                "budget": first["protocol"]["budget"],
                "search_time_s": round(sum(p.seconds for p in points), 2),
                "depends_on": ["extract-features", "train-head@features"] if name == "lp-ft" else [],
            },
        )
    for name, (run_names, protocol) in chosen.items():
        runs = {
            seed: _run_record(run, manifest_sha, manifest, store, device, batch_size)
            for seed, run in run_names.items()
        }
        classes = runs[seeds[0]].pop("classes")
        for r in runs.values():
            r.pop("classes", None)
        depends = 0.0
        if name in ("features", "features-augmented", "lp-ft"):
            depends += extract["extract_time_s"]
        if name == "features-augmented":
            depends += extract["augment_time_s"]
        if name == "lp-ft":
            depends += float(np.mean([probe_s.get(s, 0.0) for s in seeds]))
        for r in runs.values():
            r["train"].setdefault("search_time_s", protocol.get("search_time_s", r["train"]["train_time_s"]))
        metrics[name] = headline(runs, depends)
        protocol["depends_s"] = round(depends, 2)
        confusion = np.sum([np.asarray(r["scores"]["confusion"]) for r in runs.values()], axis=0)
        details["models"][name] = {
            "runs": {str(s): r for s, r in runs.items()},
            "protocol": protocol,
            "confusion": confusion.tolist(),  # summed over seeds
            "per_class_f1": per_class_f1(confusion).round(4).tolist(),
            "curves": runs[seeds[0]]["curves"],
        }
    details["rank_flips"] = rank_flips(
        {
            m: {int(s): r["scores"]["accuracy"] for s, r in d["runs"].items()}
            for m, d in details["models"].items()
        }
    )
    metrics["extract"] = {
        "time_s": round(extract["extract_time_s"], 2),
        "augment_time_s": round(extract["augment_time_s"], 2),
        "images_per_s": round(extract["images_per_s"], 1),
        "store_mb": round(extract["store_bytes"] / MB, 2),
    }
    details["extract"] = extract
    details["classes"] = classes
    details["fingerprint"] = store.fingerprint
    details["split_sizes"] = dict(manifest.group_by("split").len().iter_rows())
    return metrics, details
