"""What each transfer strategy trains, and at which learning rate.

* ``frozen``: the whole backbone frozen (and in eval mode), only the head learns, on
  augmented images end to end. Same model as the two-stage path, but it can augment.
* ``partial``: the last ``unfreeze_blocks`` backbone groups train, the rest stays frozen.
* ``full``: everything trainable; the backbone at ``backbone_lr_mult`` times the head's rate,
  so pretrained features are adjusted, not overwritten.
* ``progressive``: head first; at each fraction of the budget in ``unfreeze_at`` the next
  group from the top joins, each deeper group at ``lr_decay`` times the rate of the one above.
* ``lp-ft``: as ``full``, but the head starts from train-head's linear probe, so the first
  gradients reaching the backbone come from a sensible head instead of a random one.
* ``scratch``: as ``full`` from random weights: the baseline that prices pretraining.
* ``bitfit``, ``norm``, ``lora``: parameter-efficient. The backbone is frozen but for every
  bias (BitFit), every normalisation scale and shift, or low-rank adapters added to its
  linear and 1x1-convolution weights (:mod:`transferlab.training.lora`); all at ``backbone_lr_mult``
  times the head's rate.

The optimizer only ever holds trainable parameters: no momentum buffers or weight decay are
spent on frozen weights. A group unfrozen later is added to the optimizer when it joins,
with its own rate. Norm weights and biases get no weight decay.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from transferlab import registry
from transferlab.config import LoraConfig, PartialConfig, ProgressiveConfig, StrategyConfig
from transferlab.errors import ConfigError
from transferlab.training import lora
from transferlab.training.models import TransferModel

# The normalisation layers whose scale and shift the ``norm`` strategy trains.
NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


def unfreeze_last_blocks(model: TransferModel, n: int) -> None:
    """Freeze the backbone, then make its last ``n`` parameter groups trainable."""
    groups = model.backbone.groups
    set_trainable(model.backbone, False)
    for group in groups[len(groups) - n :]:
        set_trainable(group, True)


def apply_strategy(model: TransferModel, strategy: str, cfg: StrategyConfig) -> None:
    """Set ``requires_grad`` on every parameter as ``strategy`` prescribes at the start."""
    model.bn_stats_frozen = cfg.bn == "frozen"
    if cfg.bn == "train":
        for m in model.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg.bn_momentum
    set_trainable(model.head, True)
    n_groups = len(model.backbone.groups)
    try:
        unfreeze = registry.get(strategy).unfreeze
    except KeyError:
        raise ConfigError(f"finetune: unknown strategy {strategy!r}") from None
    if isinstance(cfg, ProgressiveConfig) and len(cfg.unfreeze_at) > n_groups:
        raise ConfigError(
            f"finetune.{strategy}.unfreeze_at: {len(cfg.unfreeze_at)} steps but "
            f"{model.backbone.name} has {n_groups} blocks"
        )
    if unfreeze == "none":  # frozen; progressive until its first unfreeze step
        set_trainable(model.backbone, False)
    elif unfreeze == "last-blocks":
        assert isinstance(cfg, PartialConfig)
        if cfg.unfreeze_blocks > n_groups:
            raise ConfigError(
                f"finetune.{strategy}.unfreeze_blocks: {cfg.unfreeze_blocks} but "
                f"{model.backbone.name} has {n_groups} blocks"
            )
        unfreeze_last_blocks(model, cfg.unfreeze_blocks)
    elif unfreeze == "biases":
        set_trainable(model.backbone, False)
        for name, p in model.backbone.named_parameters():
            if name.rsplit(".", 1)[-1] == "bias":
                p.requires_grad_(True)
    elif unfreeze == "norms":
        set_trainable(model.backbone, False)
        for m in model.backbone.modules():
            if isinstance(m, NORMS):
                set_trainable(m, True)
    elif unfreeze == "lora":
        assert isinstance(cfg, LoraConfig)
        try:
            lora.add_lora(model.backbone, cfg.rank, cfg.alpha)
        except ValueError as err:  # an architecture without linear layers or 1x1 convolutions
            raise ConfigError(f"finetune.{strategy}: {model.backbone.name}: {err}") from None
    else:
        set_trainable(model.backbone, True)
    if unfreeze in ("biases", "norms") and not any(p.requires_grad for p in model.backbone.parameters()):
        raise ConfigError(f"finetune.{strategy}: {model.backbone.name} has no {unfreeze} to train")


def _group(name: str, params: list[nn.Parameter], lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups for ``params``: matrices/convolutions decay, biases and norm scales do not."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    out = []
    if decay:
        out.append({"name": name, "params": decay, "lr": lr, "base_lr": lr, "weight_decay": weight_decay})
    if no_decay:
        out.append(
            {"name": f"{name}/no_decay", "params": no_decay, "lr": lr, "base_lr": lr, "weight_decay": 0.0}
        )
    return out


def head_param_groups(head: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    return _group("head", list(head.parameters()), lr, weight_decay)


def block_lr(cfg: StrategyConfig, lr: float, depth_from_top: int) -> float:
    """Rate of the backbone group ``depth_from_top`` (1 = last) under ``cfg``, head rate ``lr``."""
    decay = cfg.lr_decay if isinstance(cfg, ProgressiveConfig) else 1.0
    return lr * cfg.backbone_lr_mult * decay ** (depth_from_top - 1)


def param_groups(model: TransferModel, cfg: StrategyConfig, lr: float) -> list[dict[str, Any]]:
    """Optimizer groups of the currently trainable parameters.

    The head trains at ``lr`` (one point of the strategy's grid). Strategies with a uniform
    backbone rate get one ``backbone`` group; progressive unfreezing gets one group per
    block (``block-<i>``) at its own rate.
    """
    groups = head_param_groups(model.head, lr, cfg.weight_decay)
    blocks = model.backbone.groups
    if isinstance(cfg, ProgressiveConfig):
        for depth, i in enumerate(reversed(range(len(blocks))), start=1):
            groups += _group(
                f"block-{i}", list(blocks[i].parameters()), block_lr(cfg, lr, depth), cfg.weight_decay
            )
    else:
        groups += _group(
            "backbone", list(model.backbone.parameters()), block_lr(cfg, lr, 1), cfg.weight_decay
        )
    return groups


class ProgressiveUnfreezer:
    """Unfreezes backbone groups from the top at the fractions of the budget in
    ``cfg.unfreeze_at`` (at the start of the first round from that step on).

    Each joining group is made trainable and added to the optimizer as new param groups with
    ``base_lr`` set, so the schedule (:class:`transferlab.training.loop.WarmupCosine`) gives it
    its own warm-up and decay from the step it joins; its Adam moments start from zero, as
    for a fresh parameter.
    """

    def __init__(self, model: TransferModel, cfg: ProgressiveConfig, lr: float) -> None:
        self.model, self.cfg, self.lr = model, cfg, lr
        self.joined = 0

    def __call__(self, step: int, optimizer: torch.optim.Optimizer) -> list[str]:
        """Called at the start of every round (``step``: steps done); returns the names of
        the groups that joined."""
        added: list[str] = []
        at = self.cfg.unfreeze_steps()
        while self.joined < len(at) and at[self.joined] <= step:
            self.joined += 1
            blocks = self.model.backbone.groups
            i = len(blocks) - self.joined
            set_trainable(blocks[i], True)
            for g in _group(
                f"block-{i}",
                list(blocks[i].parameters()),
                block_lr(self.cfg, self.lr, self.joined),
                self.cfg.weight_decay,
            ):
                optimizer.add_param_group(g)
                added.append(g["name"])
        return added
