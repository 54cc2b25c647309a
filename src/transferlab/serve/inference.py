"""Using a trained model on new images, from its checkpoint alone.

A checkpoint's :class:`~transferlab.training.models.CheckpointMeta` says which backbone, input size,
crop, normalization and interpolation its features came from, its head and its classes.
:func:`load_classifier` rebuilds the whole image -> logits network from that: for an
end-to-end model every weight is in the checkpoint; for a two-stage head the backbone's
pretrained weights are loaded as extraction loaded them and checked against the SHA-256 the
checkpoint recorded, so a head is never put on top of other features than it was trained on.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from transferlab import layout
from transferlab.data.images import BatchTransform, Preprocess, decode, eval_transform
from transferlab.data.manifest import IMAGE_SUFFIXES
from transferlab.errors import DataError, FingerprintMismatch
from transferlab.features.backbones import Backbone, backbone_fingerprint, create_backbone
from transferlab.runtime import memory_format, place
from transferlab.training.models import CheckpointMeta, TransferModel, load_checkpoint, make_head

# The fields of backbone_fingerprint that fix the preprocessing and the features.
_CHECKED = ("backbone", "weights_sha256", "image_size", "mean", "std", "crop_pct", "interpolation")


@dataclass
class Classifier:
    """Normalized images (N, 3, S, S) -> logits, with what it needs to be fed correctly."""

    network: nn.Module
    meta: CheckpointMeta
    preprocess: Preprocess
    checkpoint: Path

    @property
    def classes(self) -> list[str]:
        return self.meta.classes


def resolve_checkpoint(model: str) -> Path:
    """``recommended``, a run name (``full-s0``, ``features-s0``), a run folder or a
    checkpoint file, as a checkpoint path."""
    if model == "recommended":
        path = layout.RECOMMENDED / "checkpoint.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no exported model; run dvc repro (the export stage) first")
        return path
    candidate = Path(model)
    if candidate.is_file():
        return candidate
    if candidate.is_dir() and (candidate / "model.pt").is_file():
        return candidate / "model.pt"
    run = layout.checkpoint(model)
    if run.is_file():
        return run
    raise FileNotFoundError(
        f"model {model!r}: not 'recommended', a checkpoint file, or a trained run in {layout.MODELS}/"
    )


def load_classifier(checkpoint: Path, *, weights: str | Path | None = None) -> Classifier:
    """The network of ``checkpoint``, in eval mode on the CPU. ``weights``: the backbone's
    weights file, for a head trained on features of a local weights file (backbone.weights)."""
    state, meta = load_checkpoint(checkpoint)
    fp = meta.fingerprint
    pretrained = meta.kind == "head"  # an end-to-end checkpoint holds every backbone weight
    backbone = create_backbone(
        fp["backbone"], int(fp["image_size"]), weights, pretrained=pretrained, crop_pct=float(fp["crop_pct"])
    )
    have = backbone_fingerprint(backbone)
    checked = _CHECKED if pretrained else tuple(k for k in _CHECKED if k != "weights_sha256")
    diffs = [
        f"{k}: checkpoint has {fp.get(k)!r}, rebuilt {have[k]!r}" for k in checked if fp.get(k) != have[k]
    ]
    if diffs:
        raise FingerprintMismatch(
            f"{checkpoint}: cannot rebuild the network it was trained with ({'; '.join(diffs)})"
            + ("; pass the backbone's weights file" if pretrained else "")
        )
    head = make_head(meta.head, meta.in_features, len(meta.classes))
    network: nn.Module
    if meta.kind == "head":
        head.load_state_dict(state)
        network = _Stacked(backbone, head)
    else:
        network = TransferModel(backbone, head)
        network.load_state_dict(state)
    return Classifier(network.eval(), meta, backbone.preprocess, checkpoint)


class _Stacked(nn.Module):
    """A backbone and a head trained on its cached features, as one image -> logits network."""

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (every image file below, by suffix) and glob patterns, in the given
    order, each folder's and pattern's matches sorted; a path named twice is kept once."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(item):
            found += sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        else:
            raise FileNotFoundError(f"{item}: no such file, folder or matching files")
    return list(dict.fromkeys(found))  # first occurrence of each, in order


@dataclass
class Prediction:
    path: Path
    top: list[tuple[str, float]]  # (class, probability), most probable first


def classify(
    clf: Classifier,
    paths: list[Path],
    *,
    top_k: int = 5,
    batch_size: int = 64,
    device: torch.device | None = None,
    on_bad: str = "fail",
    skipped: list[tuple[Path, str]] | None = None,
) -> Iterator[Prediction]:
    """Predictions for ``paths`` in order, batch by batch, preprocessed exactly as in training's
    evaluation (resize, centre crop, normalize). An unreadable file stops with an error naming it
    (``on_bad="fail"``) or is left out and recorded in ``skipped`` (``"skip"``)."""
    device = device or torch.device("cpu")
    place(clf.network, device)
    collate = BatchTransform(eval_transform(clf.preprocess))
    k = min(top_k, len(clf.classes))
    for start in range(0, len(paths), batch_size):
        batch, images = [], []
        for path in paths[start : start + batch_size]:
            try:
                img = decode(path)
            except DataError as err:
                if on_bad != "skip":
                    raise
                if skipped is not None:
                    skipped.append((path, str(err).split(": ", 1)[-1]))
                continue
            images.append((img, torch.tensor(0)))
            batch.append(path)
        if not batch:
            continue
        x, _ = collate(images)
        with torch.inference_mode():
            logits = clf.network(x.to(device, memory_format=memory_format(device)))
        probs, idx = F.softmax(logits.float(), dim=1).topk(k, dim=1)
        for path, p_row, i_row in zip(batch, probs.tolist(), idx.tolist(), strict=True):
            yield Prediction(path, [(clf.classes[i], p) for i, p in zip(i_row, p_row, strict=True)])
