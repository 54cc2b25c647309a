"""Every trained model on the test split, next to what it cost to train.

The two-stage model is scored on the test features in the store (the same frozen backbone,
run once); end-to-end models are rebuilt from their checkpoints and run on the test images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch.utils.data import DataLoader

from transferlab import layout
from transferlab._io import read_json
from transferlab.backbones import create_backbone
from transferlab.config import HeadConfig
from transferlab.data import ImageDataset, eval_transform, split_view
from transferlab.features import FeatureStore
from transferlab.metrics import classification_metrics, per_class_f1
from transferlab.models import TransferModel, load_checkpoint, make_head
from transferlab.training import TensorBatches, predict

MB = 1024 * 1024


def _head_from(meta: dict[str, Any], num_classes: int, in_features: int) -> torch.nn.Module:
    return make_head(HeadConfig(**meta["head"]), in_features, num_classes)


def score_head(ckpt: Path, store: FeatureStore, device: torch.device) -> dict[str, Any]:
    state, meta = load_checkpoint(ckpt)
    if meta.get("fingerprint") != store.fingerprint:
        raise ValueError(f"{ckpt}: trained on other features than {store.path}; re-run train-head")
    head = _head_from(meta, len(meta["classes"]), meta["in_features"])
    head.load_state_dict(state)
    x, y, _ = store.load("test")
    logits, labels = predict(head.to(device), TensorBatches(x, y, 4096), device)
    return classification_metrics(logits, labels, len(meta["classes"]))


def score_transfer(
    ckpt: Path, manifest: pl.DataFrame, device: torch.device, batch_size: int
) -> dict[str, Any]:
    state, meta = load_checkpoint(ckpt)
    backbone = create_backbone(
        meta["backbone"], meta["image_size"], pretrained=False, crop_pct=meta["crop_pct"]
    )
    model = TransferModel(backbone, _head_from(meta, len(meta["classes"]), backbone.num_features))
    model.load_state_dict(state)
    test = split_view(manifest, layout.RAW, "test")
    loader = DataLoader(
        ImageDataset(test.paths, test.labels, eval_transform(backbone.preprocess)),
        batch_size=batch_size,
    )
    logits, labels = predict(model.to(device), loader, device)
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


def headline(name: str, scores: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """The numbers ``dvc exp show`` lists per model: short names, rounded, no lists."""
    return {
        "test_acc": round(scores["accuracy"], 4),
        "macro_f1": round(scores["macro_f1"], 4),
        "nll": round(scores["nll"], 4),
        "train_time_s": round(train["train_time_s"], 2),
        "time_per_epoch_s": round(train["time_per_epoch_s"], 3),
        "epochs": train["epochs_run"],
        "trainable_params": train["trainable_params"],
        "peak_rss_mb": round(train["peak_rss_bytes"] / MB, 1),
    }


def evaluate_all(
    models: list[str],
    manifest: pl.DataFrame,
    store: FeatureStore,
    device: torch.device,
    batch_size: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (metrics for DVC, details for the report)."""
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {"models": {}}
    classes: list[str] | None = None
    for name in models:
        ckpt = layout.checkpoint(name)
        _, meta = load_checkpoint(ckpt)
        if meta["kind"] == "head":
            scores = score_head(ckpt, store, device)
        else:
            scores = score_transfer(ckpt, manifest, device, batch_size)
        train = read_json(layout.train_summary(name))
        metrics[name] = headline(name, scores, train)
        classes = meta["classes"]
        cm = torch.tensor(scores["confusion"]).numpy()
        details["models"][name] = {
            "scores": scores,
            "per_class_f1": per_class_f1(cm).round(4).tolist(),
            "train": train,
            "curves": read_curves(layout.results_dir(name)),
        }
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
    counts = manifest.group_by("split").len()
    details["split_sizes"] = dict(counts.iter_rows())
    return metrics, details
