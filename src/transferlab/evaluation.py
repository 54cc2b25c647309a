"""Every trained model on the test split, next to what it cost to train.

The two-stage model is scored on the test features in the store (the same frozen backbone,
run once); end-to-end models are rebuilt from their checkpoints and run on the test images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from transferlab import layout
from transferlab._io import read_json
from transferlab.backbones import create_backbone
from transferlab.config import HeadConfig
from transferlab.data import eval_loader, split_view
from transferlab.features import FeatureStore
from transferlab.metrics import classification_metrics, per_class_f1
from transferlab.models import TransferModel, load_checkpoint, make_head
from transferlab.runtime import memory_format
from transferlab.training import TensorBatches, predict

MB = 1024 * 1024


def _head_from(meta: dict[str, Any], num_classes: int, in_features: int) -> torch.nn.Module:
    return make_head(HeadConfig(**meta["head"]), in_features, num_classes)


Checkpoint = tuple[dict[str, torch.Tensor], dict[str, Any]]


def score_head(ckpt: Path, loaded: Checkpoint, store: FeatureStore, device: torch.device) -> dict[str, Any]:
    """A head checkpoint (already loaded from ``ckpt``) on the store's test features."""
    state, meta = loaded
    if meta.get("fingerprint") != store.fingerprint:
        raise ValueError(f"{ckpt}: trained on other features than {store.path}; re-run train-head")
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
    backbone = create_backbone(
        meta["backbone"], meta["image_size"], pretrained=False, crop_pct=meta["crop_pct"]
    )
    model = TransferModel(backbone, _head_from(meta, len(meta["classes"]), backbone.num_features))
    model.load_state_dict(state)
    test = split_view(manifest, layout.RAW, "test")
    loader = eval_loader(test.paths, test.labels, backbone.preprocess, batch_size)
    logits, labels = predict(model.to(device, memory_format=memory_format(device)), loader, device)
    return classification_metrics(logits, labels, len(meta["classes"]))


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


def headline(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The numbers ``dvc exp show`` lists per model: means over seeds (with the spread of the
    two main scores), short names, rounded, no lists."""
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


def evaluate_all(
    models: list[str],
    seeds: list[int],
    manifest: pl.DataFrame,
    store: FeatureStore,
    device: torch.device,
    batch_size: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every model's every seed on the test split. Returns (metrics for DVC, details)."""
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {"models": {}, "seeds": seeds}
    classes: list[str] | None = None
    for name in models:
        runs: dict[int, dict[str, Any]] = {}
        for seed in seeds:
            run = layout.run_name(name, seed)
            ckpt = layout.checkpoint(run)
            loaded = load_checkpoint(ckpt)  # read once: its kind decides how to score it
            meta = loaded[1]
            if meta["kind"] == "head":
                scores = score_head(ckpt, loaded, store, device)
            else:
                scores = score_transfer(loaded, manifest, device, batch_size)
            runs[seed] = {
                "scores": scores,
                "train": read_json(layout.train_summary(run)),
                "curves": read_curves(layout.results_dir(run)),
            }
            classes = meta["classes"]
        metrics[name] = headline(runs)
        confusion = np.sum([np.asarray(r["scores"]["confusion"]) for r in runs.values()], axis=0)
        details["models"][name] = {
            "runs": {str(s): r for s, r in runs.items()},
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
    extract = read_json(layout.results_dir("extract") / "extract.json")
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
