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
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from transferlab.config import OptimConfig
from transferlab.runtime import Plan, memory_format, sync

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

    @property
    def images(self) -> int:
        """Rows per epoch (``len`` counts batches), as a DataLoader's dataset would."""
        return len(self.x)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        for i in range(0, n, self.batch_size):
            if order is None:
                yield self.x[i : i + self.batch_size], self.y[i : i + self.batch_size]
            else:
                idx = order[i : i + self.batch_size]
                yield self.x[idx], self.y[idx]


class WarmupCosine:
    """Every group's rate is its ``base_lr`` x a factor: linear warm-up, then cosine to 0.

    Each group follows the schedule *from the step it joined*: a group present from the
    start warms up over ``warmup_steps``; a group added later (progressive unfreezing) gets
    its own warm-up of ``join_warmup_steps`` from the step it joins and then decays to zero
    at the end of the run. (Inheriting the global position instead would start a late block
    far below its nominal rate and leave it there.) ``torch.optim.lr_scheduler.LambdaLR``
    records its groups once at construction, which is why this is written here.

    :meth:`rates` reports, per named group, its nominal rate next to the rates it actually
    trained at, so the schedule can be checked rather than assumed.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int,
        join_warmup_steps: int | None = None,
    ) -> None:
        self.optimizer, self.total, self.warmup = optimizer, total_steps, warmup_steps
        self.join_warmup = warmup_steps if join_warmup_steps is None else join_warmup_steps
        self.step_count = 0
        self._trained: dict[str, list[float]] = {}
        self.apply()

    def factor(self, step: int, start: int = 0) -> float:
        """Factor at ``step`` for a group that joined at ``start``."""
        warmup = self.warmup if start == 0 else self.join_warmup
        local = step - start
        if local < warmup:
            return (local + 1) / warmup
        progress = (local - warmup) / max(1, self.total - start - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def apply(self) -> None:
        """Set the rates for the current step (call it after adding a group, too)."""
        for g in self.optimizer.param_groups:
            g.setdefault("base_lr", g["lr"])
            g.setdefault("start_step", self.step_count)
            g["lr"] = g["base_lr"] * self.factor(self.step_count, g["start_step"])

    def step(self) -> None:
        """After an optimizer step: record the rates it used, then move to the next step."""
        for g in self.optimizer.param_groups:
            self._trained.setdefault(_group_name(g), []).append(g["lr"])
        self.step_count += 1
        self.apply()

    def rates(self) -> dict[str, dict[str, float]]:
        """Per group: nominal rate, step joined, and the first, peak, mean and last rates used."""
        out: dict[str, dict[str, float]] = {}
        for g in self.optimizer.param_groups:
            name = _group_name(g)
            used = self._trained.get(name, [])
            if name in out or not used:
                continue
            out[name] = {
                "nominal": g["base_lr"],
                "joined_step": g["start_step"],
                "first": used[0],
                "peak": max(used),
                "mean": sum(used) / len(used),
                "last": used[-1],
            }
        return out


def _group_name(g: dict) -> str:
    """Decay and no-decay halves of a group share its name and its rate."""
    return str(g.get("name", "group")).split("/")[0]


def _progress(loader: Iterable, desc: str) -> Iterable:
    # disable=None: a bar with ETA on a terminal, nothing in CI logs or DVC's captured output.
    return tqdm(loader, desc=desc, leave=False, disable=None, dynamic_ncols=True)


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Images in the memory format the device runs fastest; anything else as it is."""
    if x.dim() == 4:
        return x.to(device, non_blocking=True, memory_format=memory_format(device))
    return x.to(device, non_blocking=True)


def _autocast(device: torch.device, enabled: bool) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupCosine | None,
    device: torch.device,
    *,
    desc: str = "train",
    amp: bool = False,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    clock: Callable[[int, float], None] | None = None,
) -> tuple[float, float]:
    """One pass over ``loader``; returns (mean loss, accuracy).

    ``forward`` replaces ``model(x)`` (a compiled version of the model, say); ``model`` is
    still what is put in train mode. ``clock(batches, seconds)``, if given, hears after every
    batch how many have trained and the seconds since the pass started (:class:`Plan`).
    """
    model.train()
    forward = forward if forward is not None else model
    total_loss, correct, seen = 0.0, 0, 0
    t0 = time.perf_counter()
    for x, y in _progress(loader, desc):
        x, y = _to(x, device), y.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = forward(x).float()
        loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        if clock is not None:
            clock(seen, time.perf_counter() - t0)
    return total_loss / max(seen, 1), correct / max(seen, 1)


@torch.no_grad()
def predict(
    model: nn.Module, loader: Iterable[Batch], device: torch.device, *, amp: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every batch, on the CPU."""
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        with _autocast(device, amp):
            logits.append(model(_to(x, device)).float().cpu())
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    criterion: nn.Module,
    device: torch.device,
    *,
    amp: bool = False,
) -> tuple[float, float]:
    """(mean loss, accuracy) on ``loader`` in eval mode."""
    logits, labels = predict(model, loader, device, amp=amp)
    return criterion(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalized so that a balanced data set gets all ones."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    return counts.sum() / (num_classes * counts)


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
    # The loss became non-finite (NaN or inf): training stopped there, and the run is never
    # picked on validation (transferlab.selection.usable), whatever weights it kept.
    diverged: bool = False
    # Per parameter group: nominal rate against the rates it trained at (WarmupCosine.rates).
    lr_schedule: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def best(self) -> EpochRecord:
        return self.history[self.best_epoch]


def _group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Effective learning rate per named group (decay/no-decay halves share one rate)."""
    out: dict[str, float] = {}
    for g in optimizer.param_groups:
        out.setdefault(_group_name(g), g["lr"])
    return out


def _mean_over_ranks(loss: float, acc: float, device: torch.device) -> tuple[float, float]:
    """Training loss and accuracy averaged over the ranks: each trained on an equal shard
    (DistributedSampler), so the mean of the means is the mean."""
    means = torch.tensor([loss, acc], device=device)
    torch.distributed.all_reduce(means)
    loss, acc = (means / torch.distributed.get_world_size()).tolist()
    return loss, acc


def _scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int, cfg: OptimConfig) -> WarmupCosine:
    """Warm-up then cosine over the run; groups that join mid-run (progressive unfreezing)
    warm up over one epoch, or the configured warm-up if longer."""
    return WarmupCosine(
        optimizer,
        steps_per_epoch * cfg.epochs,
        steps_per_epoch * cfg.warmup_epochs,
        join_warmup_steps=steps_per_epoch * max(1, cfg.warmup_epochs),
    )


class _BestEpoch:
    """The epoch with the lowest validation loss so far, a copy of its weights, and the
    epochs since it (early stopping)."""

    def __init__(self) -> None:
        self.loss, self.epoch, self.bad = math.inf, 0, 0
        self.state: dict[str, Any] | None = None

    def stop_after(self, epoch: int, val_loss: float, model: nn.Module, patience: int) -> bool:
        """Record ``epoch``; True when ``patience`` epochs (0: never) passed without a better one."""
        if val_loss < self.loss:
            self.loss, self.epoch, self.bad = val_loss, epoch, 0
            self.state = copy.deepcopy(model.state_dict())
            return False
        self.bad += 1
        return bool(patience) and self.bad >= patience

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


EpochStartHook = Callable[[int, torch.optim.Optimizer], list[str]]


def _images_per_epoch(loader: Any) -> int:
    """What an epoch trains on, for the plan line: a DataLoader's dataset, or the batcher's
    own count (TensorBatches, StreamedBatches: their ``len`` is in batches)."""
    dataset = getattr(loader, "dataset", None)
    return len(dataset) if dataset is not None else int(loader.images)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: Iterable[Batch],
    val_loader: Iterable[Batch],
    cfg: OptimConfig,
    device: torch.device,
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_epoch_start: EpochStartHook | None = None,
    loss_weights: torch.Tensor | None = None,
    desc: str = "",
    replicate: Callable[[nn.Module], nn.Module] | None = None,
    plan: str | None = None,
) -> FitResult:
    """Train for ``cfg.epochs`` (or until early stopping) and leave the best weights loaded.

    "Best" is the epoch with the lowest validation loss. ``on_epoch_start(epoch, optimizer)``
    may change what trains (progressive unfreezing) and returns the names of the groups it
    added. Under ``cfg.compile`` no manual recompilation is needed for that: torch.compile's
    guards cover ``requires_grad``, and tests/test_strategies.py checks that blocks unfrozen
    mid-run do train when compiled.

    ``replicate`` (several processes: :func:`transferlab.training.distributed.replicate`) wraps the
    model for the training pass, and again whenever ``on_epoch_start`` adds groups, since
    DistributedDataParallel averages only the gradients of what trained when it was built.
    Validation runs on the plain model, on every rank over the whole split: the weights are
    the same everywhere, so every rank takes the same early-stopping and best-epoch decisions
    without communicating. Training loss and accuracy are averaged over the ranks.
    """
    weight = loss_weights.to(device) if loss_weights is not None else None
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    eval_criterion = nn.CrossEntropyLoss()  # report the plain NLL whatever the training loss
    scheduler = _scheduler(optimizer, len(train_loader), cfg)  # type: ignore[arg-type]
    # amp and compile are end-to-end options; heads on cached features have neither.
    amp, compile_ = getattr(cfg, "amp", False), getattr(cfg, "compile", False)

    def wrapped() -> Callable[[torch.Tensor], torch.Tensor]:
        inner = replicate(model) if replicate is not None else model
        return torch.compile(inner) if compile_ else inner

    forward = wrapped()
    clock = Plan(plan, _images_per_epoch(train_loader), len(train_loader), cfg.epochs) if plan else None  # type: ignore[arg-type]
    result, best = FitResult(), _BestEpoch()
    t_fit = time.perf_counter()
    for epoch in range(cfg.epochs):
        if on_epoch_start is not None and on_epoch_start(epoch, optimizer):
            scheduler.apply()  # groups that joined start their own warm-up and decay here
            if replicate is not None:
                forward = wrapped()
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
            amp=amp,
            forward=forward,
            clock=clock if epoch == 0 else None,
        )
        sync(device)
        if replicate is not None:
            tr_loss, tr_acc = _mean_over_ranks(tr_loss, tr_acc, device)
        t_train = time.perf_counter() - t0
        # A non-finite loss is checked once per epoch, after the ranks' means are combined,
        # so that every rank stops together (a rank stopping alone would hang the others).
        if math.isfinite(tr_loss):
            va_loss, va_acc = evaluate(model, val_loader, eval_criterion, device, amp=amp)
        else:
            va_loss, va_acc = math.nan, 0.0
        rec = EpochRecord(epoch, tr_loss, tr_acc, va_loss, va_acc, t_train, time.perf_counter() - t0, lrs)
        result.history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)
        if not (math.isfinite(tr_loss) and math.isfinite(va_loss)):
            result.diverged = True
            break
        if best.stop_after(epoch, va_loss, model, cfg.early_stopping_patience):
            result.stopped_early = True
            break
    best.restore(model)
    result.best_epoch = best.epoch
    result.seconds = time.perf_counter() - t_fit
    result.lr_schedule = scheduler.rates()
    return result
