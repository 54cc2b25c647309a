"""screen-backbone@candidate<i>: one entry of backbone.candidates, screened at the cost of a
linear probe.

Extracts the candidate's features of every image (no augmented views) into its own store,
data/screen/<key>, fits the same linear probe as train-head (train_head.linear: the L2
strength picked on validation) on the base splitting, scores val and test, and computes the
transferability scores (LogME, H-score, k-NN accuracy) on the training features. Writes
results/screen/<key>.json: what the report's backbone table and its Kendall's tau between
scores and measured accuracy are made of. The end-to-end arms are not run here: they run on
backbone.name.

Run through `dvc repro`; by hand:
``python stages/screen_backbone.py candidate0 --name resnet18 --image-size 64 --weights random``.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

import torch

from transferlab import layout
from transferlab._io import write_json
from transferlab.cli import run_stage
from transferlab.config import CandidateConfig, load_params
from transferlab.data.images import BatchTransform, DecodedCache, ImageDataset, eval_transform
from transferlab.data.manifest import (
    class_names,
    every_image,
    manifest_fingerprint,
    read_manifest,
    split_view,
)
from transferlab.errors import ConfigError
from transferlab.features import transferability
from transferlab.features.backbones import create_backbone
from transferlab.features.store import IMAGES, FeatureStore, Fingerprint, Group, extract_features, row_ranges
from transferlab.runtime import configure_runtime, resolve_device, resolve_workers, seed_everything
from transferlab.training.probe import fit_linear_probe
from transferlab.verdict.stats import wilson


def extract_candidate(p, cand: CandidateConfig, key: str, device, workers: int):
    """The candidate's own store of every image (data/screen/<key>): the backbone, the store,
    the extraction stats and the decoding seconds."""
    ext = p.extract_features
    pretrained = cand.weights != "random"
    weights = None if cand.weights in ("pretrained", "random") else cand.weights
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"backbone.candidates: {cand.name}: weights file {weights} not found")
    backbone = create_backbone(
        cand.name, cand.image_size, weights, pretrained=pretrained, crop_pct=p.backbone.crop_pct
    )
    manifest = read_manifest(layout.MANIFEST)
    images = every_image(manifest, layout.RAW, p.base.seed)
    decoded = ImageDataset(
        images.paths, images.labels, None, cache=DecodedCache(p.base.image_cache_mb * 2**20)
    )
    t = time.perf_counter()
    decoded.cache.fill(images.paths)
    decode_s = time.perf_counter() - t
    loader = row_ranges(
        decoded,
        collate_fn=BatchTransform(eval_transform(backbone.preprocess)),
        batch_size=ext.batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    out = layout.SCREEN_DATA / key
    stats = extract_features(
        backbone,
        {IMAGES: Group(images.rows, loader)},
        out,
        Fingerprint.of(backbone, manifest_fingerprint(manifest)),
        device,
        amp=ext.amp,
        shard_rows=ext.shard_rows,
    )
    return backbone, FeatureStore.open(out), stats, decode_s


def probe_candidate(p, cand: CandidateConfig, store: FeatureStore, manifest):
    """The linear probe on the candidate's features, as train-head fits it; (result, 0/1
    test correctness, test image ids)."""
    budget = p.train_head.memory_budget_mb
    if store.nbytes(IMAGES) > budget * 2**20:
        raise ConfigError(
            f"backbone.candidates: {cand.name}'s features ({store.nbytes(IMAGES) / 2**20:,.0f} MB) exceed "
            f"train_head.memory_budget_mb ({budget}); the screening probe holds them in memory: raise it"
        )
    data = {}
    for split in ("train", "val", "test"):
        data[split] = store.load(IMAGES, store.select(IMAGES, split_view(manifest, layout.RAW, split).rows))
    x_train, y_train, _ = data["train"]
    probe_cfg = p.train_head.linear
    res = fit_linear_probe(
        lambda: iter([(x_train, y_train)]),
        *data["val"][:2],
        len(class_names(manifest)),
        probe_cfg.l2,
        max_iter=probe_cfg.max_iter,
    )
    with torch.no_grad():
        pred = res.head(data["test"][0]).argmax(1)
    correct = (pred == data["test"][1]).numpy().astype(int)
    paths = manifest["path"].to_list()
    return res, correct, [paths[int(r)] for r in data["test"][2]]


def main(args: argparse.Namespace) -> None:
    p = load_params(args.params)
    cand = CandidateConfig(name=args.name, image_size=args.image_size, weights=args.weights)
    device = resolve_device(p.base.device)
    workers = resolve_workers(p.extract_features.num_workers, device)
    configure_runtime(p.base.num_threads, device, channels_last=p.base.channels_last, workers=workers)
    seed_everything(p.base.seed)  # random weights are drawn from the data seed: reproducible
    backbone, store, stats, decode_s = extract_candidate(p, cand, args.key, device, workers)
    manifest = read_manifest(layout.MANIFEST)
    res, correct, test_ids = probe_candidate(p, cand, store, manifest)
    scored = transferability.score_store(store, manifest, p.base.seed)  # as for the main store
    write_json(
        layout.SCREEN / f"{args.key}.json",
        {
            "key": args.key,
            "candidate": cand.model_dump(mode="json"),
            "weights_sha256": backbone.weights_sha256,
            "params": sum(q.numel() for q in backbone.parameters()),
            "feature_dim": backbone.num_features,
            "extract_time_s": round(decode_s + stats.split_seconds[IMAGES], 3),
            "images_per_s": round(stats.images_per_s, 1),
            "store_bytes": store.nbytes_on_disk(),
            "probe": {
                "l2": res.best.l2,
                "val_acc": res.best.val_acc,
                "val_loss": res.best.val_loss,
                "test_acc": float(correct.mean()),
                "test_ci95": list(wilson(int(correct.sum()), len(correct))),
                "fit_time_s": round(res.seconds, 3),
            },
            "scores": scored["scores"],
            "score_time_s": scored["seconds"],
            "test_ids": test_ids,
            "test_correct": correct.tolist(),
            "device": str(device),
        },
    )
    sc = scored["scores"]
    print(
        f"screen-backbone {args.key} ({cand.name} at {cand.image_size}, {cand.weights}): probe val "
        f"{res.best.val_acc:.4f} test {correct.mean():.4f}; LogME {sc['logme']:.3f}, "
        f"H-score {sc['h_score']:.2f}, k-NN {sc['knn_val_acc']:.4f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("key", help="the stage's matrix key (candidate0, candidate1, ...): names its outputs")
    parser.add_argument("--name", required=True, help="a registered backbone")
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--weights", required=True, help="pretrained, random or a state-dict file")
    run_stage(main, parser)
