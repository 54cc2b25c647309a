"""Classifier heads, the backbone + head model, and checkpoints.

A checkpoint is a plain dict of tensors and its :class:`CheckpointMeta` (as JSON-like
values), saved atomically and loaded with ``weights_only=True``: loading one never runs code
from the file. The metadata is validated on load, so a checkpoint from an older layout is a
clear error, not a ``KeyError`` deep inside a stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from transferlab._io import publish
from transferlab.config import HeadConfig
from transferlab.errors import DataError, FingerprintMismatch
from transferlab.features.backbones import Backbone, TensorFileError, load_tensors


def make_head(cfg: HeadConfig, in_features: int, num_classes: int) -> nn.Module:
    """``linear``: one layer (a linear probe). ``mlp``: Dense(hidden) -> ReLU -> Dropout -> Dense."""
    if cfg.kind == "linear":
        return nn.Linear(in_features, num_classes)
    return nn.Sequential(
        nn.Linear(in_features, cfg.hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(cfg.dropout),
        nn.Linear(cfg.hidden, num_classes),
    )


class TransferModel(nn.Module):
    """Backbone features -> head logits, trained end to end.

    ``train()`` keeps every backbone group with no trainable parameter in eval mode: a frozen
    block must not update BatchNorm running statistics or apply stochastic depth, or it is
    not frozen at all even though its weights never change. With ``bn_stats_frozen`` every
    backbone BatchNorm stays in eval mode too (its affine parameters may still train).
    """

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.bn_stats_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        if mode:
            for group in self.backbone.groups:
                if not any(p.requires_grad for p in group.parameters()):
                    group.eval()
            if self.bn_stats_frozen:
                for m in self.backbone.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


class CheckpointMeta(BaseModel):
    """What a checkpoint is, enough to rebuild and check it without the params that made it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # "head": a head on cached features (train-head); "end-to-end": backbone + head.
    kind: Literal["head", "end-to-end"]
    model: str  # the registered model (transferlab.registry)
    head: HeadConfig
    in_features: int  # the backbone's feature width, the head's input
    classes: list[str]  # the head's outputs, in order
    # backbone, weights, preprocessing and manifest (backbones.backbone_fingerprint): what
    # the features it was trained on depend on
    fingerprint: dict[str, Any]
    init: dict[str, str]  # where each part's starting weights came from
    lr: float | None = None  # end-to-end: the learning rate of this run

    @property
    def manifest_sha256(self) -> str:
        return str(self.fingerprint["manifest_sha256"])


def save_checkpoint(path: Path, model: nn.Module, meta: CheckpointMeta) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with publish(path) as tmp:
        torch.save({"state_dict": state, "meta": meta.model_dump(mode="json")}, tmp)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = load_tensors(path)
    except TensorFileError as err:
        raise DataError(f"{path}: not a transferlab checkpoint: {err}") from None
    if not isinstance(ckpt, dict) or not {"meta", "state_dict"} <= set(ckpt):
        raise DataError(f"{path}: not a transferlab checkpoint (no 'meta' and 'state_dict' in it)")
    try:
        meta = CheckpointMeta.model_validate(ckpt["meta"])
    except (KeyError, TypeError, ValidationError) as err:
        first = str(err).splitlines()[:3]
        raise FingerprintMismatch(
            f"{path}: not a checkpoint of this version ({' '.join(first)}); re-run its stage (dvc repro)"
        ) from None
    return ckpt["state_dict"], meta
