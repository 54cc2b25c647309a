"""LoRA adapters (Hu et al., 2021) on any backbone, by hand, through torch parametrizations.

A weight ``W`` (out x in) becomes ``W + (alpha / rank) * B @ A`` with ``A`` (rank x in) drawn
like a layer's weights and ``B`` (out x rank) zero: at initialisation the model computes
exactly what the pretrained one did, and only ``A`` and ``B`` train. Adapted are

* ``nn.Linear`` (attention output projections included),
* 1x1 ``nn.Conv2d`` without groups (pointwise convolutions: the bulk of the weights of
  MobileNet/EfficientNet-style and ResNet bottleneck networks),
* ``nn.MultiheadAttention``'s packed query/key/value projection (``in_proj_weight``).

Why parametrizations instead of wrapper modules: the adapted module keeps its type, name and
forward, so every backbone of the registry (torchvision, the EfficientNet-Lite port, timm)
works without knowing its code, and :func:`merge` folds the adapters into plain weights for
the checkpoint, so exported and served models are ordinary ones at no extra latency. The
``peft`` library was not used: it brings ``transformers`` and ``accelerate`` along, and its
convolution and ``MultiheadAttention`` support is the part that would matter here.

The frozen weight under an adapter sits at ``<module>.parametrizations.weight.original``; the
module's ``weight`` attribute is computed on each access.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize


class LoRADelta(nn.Module):
    """The parametrization ``W -> W + scale * (B @ A)`` for a weight of shape ``shape``
    whose first dimension is the output and whose remaining ones flatten to the input."""

    def __init__(self, shape: torch.Size, rank: int, alpha: float) -> None:
        super().__init__()
        out_features, in_features = shape[0], math.prod(shape[1:])
        self.shape = tuple(shape)
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear draws its weight

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = (self.lora_b @ self.lora_a).view(self.shape)
        return weight + self.scale * delta.to(weight.dtype)


def _targets(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(qualified name, module, weight attribute) of every weight LoRA adapts."""
    out: list[tuple[str, nn.Module, str]] = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            out.append((name, m, "weight"))
        elif isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1:
            out.append((name, m, "weight"))
        elif isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            out.append((name, m, "in_proj_weight"))
    return out


def add_lora(model: nn.Module, rank: int, alpha: float) -> list[str]:
    """Freeze ``model`` and give every adaptable weight a trainable LoRA delta; returns the
    adapted weights' names. Raises ValueError when the model has nothing to adapt."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, not {rank}")
    for p in model.parameters():
        p.requires_grad_(False)
    targets = _targets(model)
    if not targets:
        raise ValueError(f"{type(model).__name__} has no linear layer or 1x1 convolution to adapt")
    names = []
    for name, module, attr in targets:
        weight = getattr(module, attr)
        delta = LoRADelta(weight.shape, rank, alpha).to(device=weight.device, dtype=weight.dtype)
        parametrize.register_parametrization(module, attr, delta, unsafe=False)
        getattr(module.parametrizations, attr).original.requires_grad_(False)
        names.append(f"{name}.{attr}" if name else attr)
    return names


def merge(model: nn.Module) -> int:
    """Fold every adapter into its weight (W + scale * B @ A) and remove the parametrization:
    the model is an ordinary one again, with the same outputs. Returns how many were merged."""
    merged = 0
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        lists = cast(nn.ModuleDict, module.parametrizations)
        for attr in list(lists.keys()):
            if any(isinstance(p, LoRADelta) for p in cast(nn.ModuleList, lists[attr])):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
                merged += 1
    return merged


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors (what LoRA adds on top of the shared backbone)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k.endswith((".lora_a", ".lora_b"))}
