"""Fine-tuning on several processes (torchrun) with the optimisation of one.

``finetune.<strategy>.batch_size`` is the batch of all processes together: each of N ranks
takes batch_size / N images per step, DistributedDataParallel averages the gradients, and
the step is the step one process would take on the whole batch. Learning rate, schedule
and budget (steps, images seen) therefore stay as configured whatever N is, and runs on one
machine and on many are comparable; no learning-rate scaling rule is applied.

What a rank sees and draws does not depend on N either: the training order is one seeded
permutation per epoch (torch's DistributedSampler, whose ranks take interleaved slices of
it, so step k covers the same images on 1 or N processes), and each image's augmentation is
drawn under its own seed from (seed, epoch, index) (:class:`transferlab.data.images.SeededItems`).

BatchNorm: frozen statistics (bn: frozen, and every block that does not train) stay frozen;
where statistics train (bn: train), every rank normalises with the statistics of the whole
batch: torch's SyncBatchNorm on GPUs, and on CPU (gloo), where SyncBatchNorm has no kernel,
:class:`CrossRankBatchNorm`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Sampler

from transferlab.errors import ConfigError
from transferlab.runtime import Ranks


def per_rank_batch(batch_size: int, ranks: Ranks, param: str) -> int:
    """The share of the global ``batch_size`` each rank takes; it must divide evenly."""
    if batch_size % ranks.size:
        raise ConfigError(
            f"{param}: {batch_size} is the batch of all {ranks.size} processes together and must "
            f"divide evenly among them (use a multiple of {ranks.size})"
        )
    return batch_size // ranks.size


class EpochSampler(Sampler):
    """This rank's indices of a seeded permutation per epoch, each paired with the epoch:
    (index, epoch) keys for a :class:`~transferlab.data.images.SeededItems` dataset, which seeds
    the augmentation from them. Carrying the epoch in the key keeps this right with
    persistent DataLoader workers, which never see attributes set on the parent's dataset."""

    def __init__(self, n: int, ranks: Ranks, seed: int) -> None:
        self.seed = seed
        self.order: DistributedSampler = DistributedSampler(
            range(n),  # type: ignore[arg-type]  # only its length is read
            num_replicas=ranks.size,
            rank=ranks.rank,
            shuffle=True,
            seed=seed,
            drop_last=False,
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((i, self.epoch) for i in self.order)

    def __len__(self) -> int:
        return len(self.order)


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) that autograd differentiates: the gradient of a sum over ranks,
    taken on every rank, is the sum over ranks of the gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        torch.distributed.all_reduce(out)
        return out


class CrossRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of every rank's batch together, on any
    device: per-channel counts and sums, then sums of squared deviations from the common
    mean, are summed across ranks with a differentiable all-reduce, so the backward pass is
    that of one batch norm over the whole batch too. In eval mode, or on one process, it is plain BatchNorm. For CPU process
    groups (gloo), where torch's SyncBatchNorm refuses to run."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.distributed.is_initialized()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        c = x.size(1)
        shape = (1, c) + (1,) * (x.dim() - 2)
        # Statistics in float64, as torch's CPU BatchNorm accumulates them, and in two passes:
        # E[x^2] - E[x]^2 cancels where the mean is large against the spread. Small
        # differences here grow through training (Adam's step is about lr whatever the
        # gradient's size), so matching the single-process kernel matters.
        xd = x.double()
        count = torch.full((1,), x.numel() / c, dtype=xd.dtype, device=x.device)
        totals = _SumOverRanks.apply(torch.cat([xd.sum(dims), count]))
        n = totals[-1]
        mean = totals[:c] / n
        centred = xd - mean.view(shape)
        var = _SumOverRanks.apply((centred * centred).sum(dims)) / n
        del centred
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                tracked = self.num_batches_tracked
                assert tracked is not None  # tracked with the running statistics
                tracked += 1
                factor = self.momentum if self.momentum is not None else 1.0 / float(tracked)
                self.running_mean.lerp_(mean.detach().to(x.dtype), factor)
                self.running_var.lerp_((var.detach() * n / (n - 1).clamp(min=1)).to(x.dtype), factor)
        # y = x * a + b with a = weight / std and b = bias - mean * a, in x's precision: the
        # form (and so the rounding) of torch's CPU kernel
        scale = torch.rsqrt(var + self.eps).to(x.dtype)
        if self.affine:
            scale = scale * self.weight
        shift = -mean.to(x.dtype) * scale
        if self.affine:
            shift = shift + self.bias
        return x * scale.view(shape) + shift.view(shape)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """``module`` with every BatchNorm replaced by this one, sharing its parameters and
        statistics (so an optimizer built before still updates them)."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
            out = cls(
                module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
            )
            out.weight, out.bias = module.weight, module.bias
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.train(module.training)
            return out
        for name, child in module.named_children():
            setattr(module, name, cls.convert(child))
        return module


def sync_batchnorm(model: nn.Module, ranks: Ranks, device: torch.device) -> bool:
    """Make the model's BatchNorm layers normalise with the statistics of all ranks' batches
    together (in place); says whether it did (only under several ranks). Layers kept in eval
    mode (frozen statistics) are untouched by this: in eval mode both kinds use their
    running statistics and communicate nothing."""
    if ranks.size == 1:
        return False
    convert = CrossRankBatchNorm.convert if device.type == "cpu" else nn.SyncBatchNorm.convert_sync_batchnorm
    # both recurse and replace in place below the root, which is no BatchNorm itself
    convert(model)
    return True


def replicate(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel for the training forward pass.

    DDP averages the gradients of the parameters that train when it is built; progressive
    unfreezing builds it again when blocks join (transferlab.training.loop.fit does). Buffers
    (running statistics) are broadcast from rank 0 at each step, so every rank keeps the
    same ones."""
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
