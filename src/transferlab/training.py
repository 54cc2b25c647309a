"""The training loop, shared by the head on cached features and the end-to-end strategies.

Plain functions: :func:`train_one_epoch`, :func:`evaluate`, and :func:`fit`, which adds the
schedule (linear warm-up, cosine decay), early stopping with the best weights restored, and
per-epoch records (losses, accuracies, seconds, the learning rate of every group).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from transferlab.config import OptimConfig
from transferlab.runtime import sync

Batch = tuple[torch.Tensor, torch.Tensor]


class TensorBatches:
    """Mini-batches of in-memory tensors: no per-sample Dataset overhead for cached features."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.generator = shuffle, generator

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        for i in range(0, n, self.batch_size):
            if order is None:
                yield self.x[i : i + self.batch_size], self.y[i : i + self.batch_size]
            else:
                idx = order[i : i + self.batch_size]
                yield self.x[idx], self.y[idx]


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> LambdaLR:
    """Scale every group's base rate: linear warm-up from ~0, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return LambdaLR(optimizer, factor)


def _progress(loader: Iterable, desc: str) -> Iterable:
    # disable=None: a bar with ETA on a terminal, nothing in CI logs or DVC's captured output.
    return tqdm(loader, desc=desc, leave=False, disable=None, dynamic_ncols=True)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR | None,
    device: torch.device,
    *,
    desc: str = "train",
) -> tuple[float, float]:
    """One pass over ``loader``; returns (mean loss, accuracy)."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in _progress(loader, desc):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return total_loss / max(seen, 1), correct / max(seen, 1)


@torch.no_grad()
def predict(
    model: nn.Module, loader: Iterable[Batch], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every batch, on the CPU."""
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        logits.append(model(x.to(device, non_blocking=True)).float().cpu())
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def evaluate(
    model: nn.Module, loader: Iterable[Batch], criterion: nn.Module, device: torch.device
) -> tuple[float, float]:
    """(mean loss, accuracy) on ``loader`` in eval mode."""
    logits, labels = predict(model, loader, device)
    return criterion(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    train_seconds: float  # the training pass alone
    seconds: float  # training pass + validation
    lrs: dict[str, float]


@dataclass
class FitResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    stopped_early: bool = False

    @property
    def best(self) -> EpochRecord:
        return self.history[self.best_epoch]


def _group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Effective learning rate per named group (decay/no-decay halves share one rate)."""
    out: dict[str, float] = {}
    for i, g in enumerate(optimizer.param_groups):
        name = str(g.get("name", f"group{i}")).split("/")[0]
        out.setdefault(name, g["lr"])
    return out


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: Iterable[Batch],
    val_loader: Iterable[Batch],
    cfg: OptimConfig,
    device: torch.device,
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    desc: str = "",
) -> FitResult:
    """Train for ``cfg.epochs`` (or until early stopping) and leave the best weights loaded.

    "Best" is the epoch with the lowest validation loss.
    """
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    eval_criterion = nn.CrossEntropyLoss()  # report the plain NLL whatever the training loss
    steps = len(train_loader) * cfg.epochs  # type: ignore[arg-type]
    scheduler = warmup_cosine(optimizer, steps, len(train_loader) * cfg.warmup_epochs)  # type: ignore[arg-type]
    result = FitResult()
    best_loss, best_state, bad_epochs = math.inf, None, 0
    t_fit = time.perf_counter()
    for epoch in range(cfg.epochs):
        lrs = _group_lrs(optimizer)  # the rates this epoch starts with
        t0 = time.perf_counter()
        tr_loss, tr_acc = train_one_epoch(
            model,
            train_loader,
            criterion,
            optimizer,
            scheduler,
            device,
            desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}".strip(),
        )
        sync(device)
        t_train = time.perf_counter() - t0
        va_loss, va_acc = evaluate(model, val_loader, eval_criterion, device)
        rec = EpochRecord(epoch, tr_loss, tr_acc, va_loss, va_acc, t_train, time.perf_counter() - t0, lrs)
        result.history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)
        if va_loss < best_loss:
            best_loss, bad_epochs, result.best_epoch = va_loss, 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
            if cfg.early_stopping_patience and bad_epochs >= cfg.early_stopping_patience:
                result.stopped_early = True
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - t_fit
    return result
