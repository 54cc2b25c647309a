"""What each transfer strategy trains, and at which learning rate.

* ``frozen``: the whole backbone frozen (and in eval mode), only the head learns, on
  augmented images end to end. Same model as the two-stage path, but it can augment.
* ``full``: everything trainable; the backbone at ``backbone_lr_mult`` times the head's rate,
  so pretrained features are adjusted, not overwritten.

The optimizer only ever receives trainable parameters: no momentum buffers or weight decay
are spent on frozen weights. Norm weights and biases get no weight decay.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from transferlab.config import StrategyConfig
from transferlab.models import TransferModel


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


def apply_strategy(model: TransferModel, strategy: str, *, bn: str = "frozen") -> None:
    """Set ``requires_grad`` on every parameter as ``strategy`` prescribes.

    ``bn="frozen"`` keeps the backbone's BatchNorm statistics at their pretrained values in
    training too (see :class:`transferlab.config.StrategyConfig`).
    """
    model.bn_stats_frozen = bn == "frozen"
    set_trainable(model.head, True)
    if strategy == "frozen":
        set_trainable(model.backbone, False)
    elif strategy == "full":
        set_trainable(model.backbone, True)
    else:
        raise ValueError(f"unknown strategy {strategy!r}")


def _split_decay(params: list[tuple[str, nn.Parameter]]) -> tuple[list, list]:
    """Weights of matrices/convolutions decay; biases and norm scales (1-D) do not."""
    decay = [p for _, p in params if p.ndim > 1]
    no_decay = [p for _, p in params if p.ndim <= 1]
    return decay, no_decay


def param_groups(model: TransferModel, cfg: StrategyConfig) -> list[dict[str, Any]]:
    """Optimizer groups of the trainable parameters: head at ``lr``, backbone at a fraction."""
    groups: list[dict[str, Any]] = []
    for name, module, lr in (
        ("head", model.head, cfg.lr),
        ("backbone", model.backbone, cfg.lr * cfg.backbone_lr_mult),
    ):
        trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        decay, no_decay = _split_decay(trainable)
        if decay:
            groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": cfg.weight_decay})
        if no_decay:
            groups.append({"name": f"{name}/no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    return groups


def head_param_groups(head: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = _split_decay(list(head.named_parameters()))
    groups = [{"name": "head", "params": decay, "lr": lr, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"name": "head/no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    return groups
