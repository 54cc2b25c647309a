"""Fine-tuning on several processes (torchrun) with the optimisation of one.

``finetune.<strategy>.batch_size`` is the batch of all processes together: each of N ranks
takes batch_size / N images per step, DistributedDataParallel averages the gradients, and
the step is the step one process would take on the whole batch. Learning rate, schedule
and budget (steps, images seen) therefore stay as configured whatever N is, and runs on one
machine and on many are comparable; no learning-rate scaling rule is applied.

What a rank sees and draws does not depend on N either: the training order is one seeded
permutation per epoch (torch's DistributedSampler, whose ranks take interleaved slices of
it, so step k covers the same images on 1 or N processes), and each image's augmentation is
drawn under its own seed from (seed, epoch, index) (:class:`transferlab.images.SeededItems`).

BatchNorm: frozen statistics (bn: frozen, and every block that does not train) stay frozen;
where statistics train (bn: train), they are synchronised across ranks with SyncBatchNorm on
GPUs. torch's SyncBatchNorm has no CPU kernel, so on CPU (gloo) each process normalises with
its own share of the batch; the run summary records which of the two happened.
"""

from __future__ import annotations

from collections.abc import Iterator

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
    (index, epoch) keys for a :class:`~transferlab.images.SeededItems` dataset, which seeds
    the augmentation from them. Carrying the epoch in the key keeps this right with
    persistent DataLoader workers, which never see attributes set on the parent's dataset."""

    def __init__(self, n: int, ranks: Ranks, seed: int) -> None:
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


def sync_batchnorm(model: nn.Module, ranks: Ranks, device: torch.device) -> bool:
    """Synchronise BatchNorm statistics across ranks where the hardware allows (GPUs):
    converts the model's BatchNorm layers in place and says whether it did. Layers kept in
    eval mode (frozen statistics) are untouched by this: SyncBatchNorm in eval mode uses
    its running statistics and communicates nothing."""
    if ranks.size == 1 or device.type == "cpu":
        return False
    for name, child in model.named_children():
        setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return True


def replicate(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel for the training forward pass.

    DDP averages the gradients of the parameters that train when it is built; progressive
    unfreezing builds it again when blocks join (transferlab.training.fit does). Buffers
    (running statistics) are broadcast from rank 0 at each step, so every rank keeps the
    same ones."""
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
