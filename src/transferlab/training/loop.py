"""The training loop, shared by the head on cached features and the end-to-end strategies.

Plain functions: :func:`train_one_epoch`, :func:`evaluate`, and :func:`fit`, which adds the
schedule (linear warm-up, cosine decay), early stopping with the best weights restored, and
per-epoch records (losses, accuracies, seconds, the learning rate of every group).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from transferlab.config import OptimConfig, StrategyConfig
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
    """One round of training and its validation scoring. For the heads a round is an epoch;
    for the end-to-end runs it is ``eval_every`` optimizer steps (``step``: steps done)."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    train_seconds: float  # the training pass alone
    seconds: float  # training pass + validation
    lrs: dict[str, float]
    step: int = 0


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
    steps: int = 0  # optimizer steps taken
    # Whether the run reached a plateau (Schedule.converged); None: not judged (cut short
    # by a search, or a schedule with no convergence rule).
    converged: bool | None = None

    @property
    def best(self) -> EpochRecord:
        return self.history[self.best_epoch]


@dataclass(frozen=True)
class Schedule:
    """How long a run trains and when it is scored: ``steps`` optimizer steps in all, the
    validation split scored every ``eval_every`` steps (a round) and at the end, linear
    warm-up over ``warmup_steps`` then cosine decay to zero at ``steps``.

    ``patience``: stop after that many rounds without a lower validation loss (0: never).
    ``converge_tol``: the plateau rule (:meth:`converged`); None: runs are not judged."""

    steps: int
    eval_every: int
    warmup_steps: int = 0
    join_warmup_steps: int = 0
    patience: int = 0
    converge_tol: float | None = None

    @classmethod
    def of(cls, cfg: OptimConfig | StrategyConfig, steps_per_epoch: int) -> Schedule:
        """The schedule a config states: an end-to-end step budget (a group that joins
        mid-run warms up over the run's warm-up, or a round if that is longer), or a head's
        epochs as steps, one round per epoch."""
        if isinstance(cfg, StrategyConfig):
            return cls(
                steps=cfg.steps,
                eval_every=cfg.eval_every,
                warmup_steps=cfg.warmup_steps,
                join_warmup_steps=max(cfg.warmup_steps, cfg.eval_every),
                patience=cfg.early_stopping_patience,
                converge_tol=cfg.converge_tol,
            )
        return cls(
            steps=steps_per_epoch * cfg.epochs,
            eval_every=steps_per_epoch,
            warmup_steps=steps_per_epoch * cfg.warmup_epochs,
            join_warmup_steps=steps_per_epoch * max(1, cfg.warmup_epochs),
            patience=cfg.early_stopping_patience,
        )

    def converged(self, result: FitResult) -> bool | None:
        """The plateau rule for a run trained to the end of its schedule.

        Still improving, so not converged, when the last quarter of the budget both raised
        the best validation accuracy (by one image or more) and lowered the best validation
        loss by at least ``converge_tol`` of the best before it. Under a cosine schedule the
        best round often lands late because the rate anneals, so lateness alone would flag
        every run; what matters is whether the last quarter still *bought* something the
        verdict measures. Accuracy alone moves in steps of one noisy image; loss alone keeps
        falling as a settled classifier grows more confident: both must move. Early
        stopping ended it: converged. Diverged: not."""
        if self.converge_tol is None:
            return None
        if result.diverged:
            return False
        if result.stopped_early:
            return True
        if result.steps < self.steps:
            return None  # cut short (a search's first rung): not judged
        cut = self.steps - self.steps // 4
        before = [r for r in result.history if r.step <= cut]
        after = [r for r in result.history if r.step > cut]
        if not before or not after:
            return None  # too few rounds to tell: eval_every larger than a quarter
        loss_before = min(r.val_loss for r in before)
        better_loss = loss_before - min(r.val_loss for r in after) > self.converge_tol * loss_before
        better_acc = max(r.val_acc for r in after) > max(r.val_acc for r in before)
        return not (better_loss and better_acc)


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


class _BestEpoch:
    """The round with the lowest validation loss so far, a copy of its weights, and the
    rounds since it (early stopping)."""

    def __init__(self) -> None:
        self.loss, self.epoch, self.bad = math.inf, 0, 0
        self.state: dict[str, Any] | None = None

    def stop_after(self, epoch: int, val_loss: float, model: nn.Module, patience: int) -> bool:
        """Record ``epoch``; True when ``patience`` rounds (0: never) passed without a better one."""
        if val_loss < self.loss:
            self.loss, self.epoch, self.bad = val_loss, epoch, 0
            self.state = copy.deepcopy(model.state_dict())
            return False
        self.bad += 1
        return bool(patience) and self.bad >= patience

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


# Called when training reaches a step (a round's start, and every epoch's start for the
# heads' data order); returns the names of the parameter groups it added.
StepHook = Callable[[int, torch.optim.Optimizer], list[str]]


def _images_per_epoch(loader: Any) -> int:
    """What an epoch trains on, for the plan line: a DataLoader's dataset, or the batcher's
    own count (TensorBatches, StreamedBatches: their ``len`` is in batches)."""
    dataset = getattr(loader, "dataset", None)
    return len(dataset) if dataset is not None else int(loader.images)


class Trainer:
    """One training run that can be advanced step by step and paused: what :func:`fit` runs
    whole, and what a learning-rate search (transferlab.training.search) runs in rungs.

    The run's batches come from ``train_loader`` epoch after epoch (``on_epoch(e)`` before
    each, to reseed a sampler); validation is scored every ``schedule.eval_every`` steps and
    at the end; the weights with the lowest validation loss are kept. The torch random state
    is the run's own (saved on pause, restored on resume), so a run paused between rungs
    ends exactly where it would have ended straight through.

    ``replicate`` (several processes: :func:`transferlab.training.distributed.replicate`) wraps
    the model for the training pass, and again whenever ``on_step`` adds groups, since
    DistributedDataParallel averages only the gradients of what trained when it was built.
    Validation runs on the plain model, on every rank over the whole split: the weights are
    the same everywhere, so every rank takes the same decisions without communicating.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_loader: Iterable[Batch],
        val_loader: Iterable[Batch],
        schedule: Schedule,
        device: torch.device,
        *,
        label_smoothing: float = 0.0,
        amp: bool = False,
        compile_: bool = False,
        on_round: Callable[[EpochRecord], None] | None = None,
        on_step: StepHook | None = None,
        on_epoch: Callable[[int], None] | None = None,
        loss_weights: torch.Tensor | None = None,
        desc: str = "",
        replicate: Callable[[nn.Module], nn.Module] | None = None,
        plan: str | None = None,
    ) -> None:
        self.model, self.optimizer, self.schedule, self.device = model, optimizer, schedule, device
        self.train_loader, self.val_loader = train_loader, val_loader
        self.amp, self.compile_, self.replicate = amp, compile_, replicate
        self.on_round, self.on_step, self.on_epoch, self.desc = on_round, on_step, on_epoch, desc
        weight = loss_weights.to(device) if loss_weights is not None else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        self.eval_criterion = nn.CrossEntropyLoss()  # the plain NLL whatever the training loss
        self.scheduler = WarmupCosine(
            optimizer, schedule.steps, schedule.warmup_steps, join_warmup_steps=schedule.join_warmup_steps
        )
        self.result, self.best = FitResult(), _BestEpoch()
        self.forward = self._wrapped()
        per_epoch = len(train_loader)  # type: ignore[arg-type]
        rounds = -(-schedule.steps // schedule.eval_every)
        # the plan line counts rounds: epochs for the heads, eval_every steps end to end
        unit = "epoch" if schedule.eval_every == per_epoch else "round"
        self.clock = (
            Plan(
                plan,
                _images_per_epoch(train_loader),
                min(schedule.eval_every, schedule.steps),
                rounds,
                unit=unit,
            )
            if plan
            else None
        )
        self._batches = self._stream()
        self._rng: torch.Tensor | None = None
        self._cuda_rng: list[torch.Tensor] | None = None
        self._outer: torch.Tensor | None = None
        self.done = False  # the schedule ended, early stopping fired, or the loss diverged

    def _wrapped(self) -> Callable[[torch.Tensor], torch.Tensor]:
        inner = self.replicate(self.model) if self.replicate is not None else self.model
        return torch.compile(inner) if self.compile_ else inner

    def _stream(self) -> Generator[Batch]:
        epoch = 0
        while True:
            if self.on_epoch is not None:
                self.on_epoch(epoch)
            yield from self.train_loader
            epoch += 1

    @property
    def steps(self) -> int:
        return self.result.steps

    def _swap_rng(self, resume: bool) -> None:
        """The run's own torch random state in, or out (dropout masks do not depend on
        which other runs trained in between)."""
        cuda = self.device.type == "cuda"
        if resume:
            if self._rng is not None:
                self._outer = torch.get_rng_state()
                torch.set_rng_state(self._rng)
                if cuda and self._cuda_rng is not None:
                    torch.cuda.set_rng_state_all(self._cuda_rng)
            else:
                self._outer = None
        else:
            self._rng = torch.get_rng_state()
            if cuda:
                self._cuda_rng = torch.cuda.get_rng_state_all()
            if self._outer is not None:
                torch.set_rng_state(self._outer)

    def advance(self, until: int) -> FitResult:
        """Train to step ``until`` (at most the schedule's end), scoring every round."""
        until = min(until, self.schedule.steps)
        self._swap_rng(resume=True)
        try:
            while not self.done and self.result.steps < until:
                end = min(
                    until, (self.result.steps // self.schedule.eval_every + 1) * self.schedule.eval_every
                )
                self._round(end)
        finally:
            self._swap_rng(resume=False)
        return self.result

    def _round(self, end: int) -> None:
        s, model, result = self.schedule, self.model, self.result
        if self.on_step is not None and self.on_step(result.steps, self.optimizer):
            self.scheduler.apply()  # groups that joined start their own warm-up and decay here
            if self.replicate is not None:
                self.forward = self._wrapped()
        lrs = _group_lrs(self.optimizer)  # the rates this round starts with
        t0 = time.perf_counter()
        model.train()
        total_loss, correct, seen = 0.0, 0.0, 0
        n = end - result.steps
        rounds = -(-s.steps // s.eval_every)
        bar = tqdm(
            range(n),
            desc=f"{self.desc} round {len(result.history) + 1}/{rounds}".strip(),
            leave=False,
            disable=None,
            dynamic_ncols=True,
        )
        for _ in bar:
            x, y = next(self._batches)
            x, y = _to(x, self.device), y.to(self.device, non_blocking=True)
            with _autocast(self.device, self.amp):
                logits = self.forward(x).float()
            loss = self.criterion(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if self.clock is not None:
                self.clock(seen, time.perf_counter() - t0)
        self.clock = None
        result.steps = end
        tr_loss, tr_acc = total_loss / max(seen, 1), correct / max(seen, 1)
        sync(self.device)
        if self.replicate is not None:
            tr_loss, tr_acc = _mean_over_ranks(tr_loss, tr_acc, self.device)
        t_train = time.perf_counter() - t0
        # A non-finite loss is checked once per round, after the ranks' means are combined,
        # so that every rank stops together (a rank stopping alone would hang the others).
        if math.isfinite(tr_loss):
            va_loss, va_acc = evaluate(model, self.val_loader, self.eval_criterion, self.device, amp=self.amp)
        else:
            va_loss, va_acc = math.nan, 0.0
        index = len(result.history)
        rec = EpochRecord(
            index, tr_loss, tr_acc, va_loss, va_acc, t_train, time.perf_counter() - t0, lrs, end
        )
        result.history.append(rec)
        result.seconds += rec.seconds
        if self.on_round is not None:
            self.on_round(rec)
        if not (math.isfinite(tr_loss) and math.isfinite(va_loss)):
            result.diverged = self.done = True
        elif self.best.stop_after(index, va_loss, model, s.patience):
            result.stopped_early = self.done = True
        if result.steps >= s.steps:
            self.done = True

    def finish(self) -> FitResult:
        """Load the best round's weights and complete the result (rates used, convergence)."""
        self.best.restore(self.model)
        self.result.best_epoch = self.best.epoch
        self.result.lr_schedule = self.scheduler.rates()
        self.result.converged = self.schedule.converged(self.result)
        self._batches.close()  # DataLoader workers of this run end here
        return self.result

    def close(self) -> None:
        """Drop a run a search cut: its data stream ends, its weights copy goes."""
        self._batches.close()
        self.best.state = None


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: Iterable[Batch],
    val_loader: Iterable[Batch],
    cfg: OptimConfig | StrategyConfig,
    device: torch.device,
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_epoch_start: StepHook | None = None,
    on_step: StepHook | None = None,
    loss_weights: torch.Tensor | None = None,
    desc: str = "",
    replicate: Callable[[nn.Module], nn.Module] | None = None,
    plan: str | None = None,
    schedule: Schedule | None = None,
) -> FitResult:
    """Train a whole schedule (or until early stopping) and leave the best weights loaded.

    ``schedule`` defaults to what ``cfg`` states (:meth:`Schedule.of`): a head's epochs, one
    round per epoch, or an end-to-end step budget. ``on_epoch_start(epoch, optimizer)`` is called at
    the start of every epoch of the data and may change what trains (it returns the names of
    the groups it added); ``on_step(step, optimizer)`` likewise at the start of every round
    (progressive unfreezing). Under ``cfg.compile`` no manual recompilation is needed for that:
    torch.compile's guards cover ``requires_grad``, and tests/test_strategies.py checks that
    blocks unfrozen mid-run do train when compiled. "Best" is the round with the lowest
    validation loss.
    """
    per_epoch = len(train_loader)  # type: ignore[arg-type]
    schedule = schedule or Schedule.of(cfg, per_epoch)

    def at_step(step: int, optimizer: torch.optim.Optimizer) -> list[str]:
        added = on_step(step, optimizer) if on_step is not None else []
        if on_epoch_start is not None and step % per_epoch == 0:  # a round that starts an epoch
            added += on_epoch_start(step // per_epoch, optimizer)
        return added

    trainer = Trainer(
        model,
        optimizer,
        train_loader,
        val_loader,
        schedule,
        device,
        label_smoothing=cfg.label_smoothing,
        amp=getattr(cfg, "amp", False),  # end-to-end options; heads on cached features have neither
        compile_=getattr(cfg, "compile", False),
        on_round=on_epoch,
        on_step=at_step,
        loss_weights=loss_weights,
        desc=desc,
        replicate=replicate,
        plan=plan,
    )
    trainer.advance(schedule.steps)
    return trainer.finish()
