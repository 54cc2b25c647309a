"""The linear probe, fitted as the transfer-learning literature fits one.

A linear head trained for a fixed number of mini-batch epochs at one learning rate is a
poor estimate of what cached features are worth: it under-fits early and over-fits late,
and which of the two depends on the data. Kornblith et al. (2019) and CLIP (Radford et al.
2021) instead fit multinomial logistic regression to convergence with L-BFGS and choose its
L2 strength on held-out data. That is what :func:`fit_linear_probe` does:

* features are standardized with the training split's mean and standard deviation (so one
  grid of strengths suits every backbone), and the scaling is folded back into the weights:
  the result is a plain ``nn.Linear`` on the raw features;
* the objective is mean cross-entropy + ``l2 / 2 * ||W||^2`` (the bias is not penalized),
  minimized by full-batch L-BFGS with a strong-Wolfe line search;
* the grid runs from the strongest penalty to the weakest, each fit warm-started from the
  previous solution, and :func:`transferlab.selection.best_index` picks on validation.

The training features come as an iterable of (x, y) chunks, re-iterated for every function
evaluation, so the same code fits in-memory tensors and stores streamed block by block:
memory is bounded by one block either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from transferlab.selection import best_index

Chunks = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class ProbePoint:
    """One fit of the grid."""

    l2: float
    val_acc: float
    val_loss: float
    train_loss: float
    train_acc: float
    iterations: int
    function_evals: int  # full passes over the training features
    seconds: float
    # stopped by L-BFGS's tolerances (the optimum, to them), not by max_iter or max_eval
    converged: bool = True

    def to_json(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class ProbeResult:
    head: nn.Linear  # on raw features: the standardization is folded in
    grid: list[ProbePoint]
    picked: int
    n_train: int

    @property
    def best(self) -> ProbePoint:
        return self.grid[self.picked]

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.grid)


def feature_moments(chunks: Chunks) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean and standard deviation of every feature over all chunks (float64 sums)."""
    n, s, ss = 0, None, None
    for x, _ in chunks():
        x = x.double()
        s = x.sum(0) if s is None else s + x.sum(0)
        ss = (x * x).sum(0) if ss is None else ss + (x * x).sum(0)
        n += len(x)
    if n == 0 or s is None or ss is None:
        raise ValueError("no training features")
    mean = s / n
    var = (ss / n - mean * mean).clamp(min=0)
    std = var.sqrt()
    std[std < 1e-6] = 1.0  # constant features: leave them unscaled
    return mean.float(), std.float(), n


class _Objective:
    """Penalized mean cross-entropy over every chunk, gradients accumulated chunk by chunk."""

    def __init__(
        self,
        chunks: Chunks,
        mean: torch.Tensor,
        std: torch.Tensor,
        n: int,
        weight: torch.Tensor | None,
        device: torch.device,
        keep: bool = False,
    ) -> None:
        self.chunks, self.mean, self.std, self.n = chunks, mean.to(device), std.to(device), n
        self.weight = weight.to(device) if weight is not None else None
        self.device = device
        self.evals = 0
        # keep: the standardized chunks computed once and kept (a second copy of the
        # features), instead of once per function evaluation: the same numbers, and the
        # elementwise pass that dominated each evaluation is gone
        self.kept = [(self._standardize(x), y.to(device)) for x, y in chunks()] if keep else None

    def _standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.device) - self.mean) / self.std

    def standardized(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        if self.kept is not None:
            return self.kept
        return ((self._standardize(x), y.to(self.device)) for x, y in self.chunks())

    def value_and_grad(self, w: torch.Tensor, b: torch.Tensor, l2: float) -> torch.Tensor:
        self.evals += 1
        w.grad, b.grad = None, None
        total = 0.0
        for z, y in self.standardized():
            loss = F.cross_entropy(z @ w.T + b, y, weight=self.weight, reduction="sum") / self.n
            loss.backward()
            total += loss.item()
        penalty = 0.5 * l2 * (w * w).sum()
        penalty.backward()
        return torch.tensor(total + penalty.item())

    @torch.no_grad()
    def scores(self, w: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) on the training chunks, unpenalized."""
        loss, correct = 0.0, 0
        for z, y in self.standardized():
            logits = z @ w.T + b
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
        return loss / self.n, correct / self.n


def fit_linear_probe(
    chunks: Chunks,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    num_classes: int,
    l2_grid: list[float],
    *,
    max_iter: int = 500,
    class_weight: torch.Tensor | None = None,
    device: torch.device | None = None,
    keep_standardized: bool = False,
) -> ProbeResult:
    """Fit one probe per L2 strength in ``l2_grid`` and keep the one validation picks.
    ``keep_standardized``: hold a standardized copy of the training features for the whole
    fit (features that are in memory anyway; the same result, in less time)."""
    device = device or torch.device("cpu")
    mean, std, n = feature_moments(chunks)
    dim = mean.numel()
    objective = _Objective(chunks, mean, std, n, class_weight, device, keep=keep_standardized)
    w = torch.zeros(num_classes, dim, device=device, requires_grad=True)
    b = torch.zeros(num_classes, device=device, requires_grad=True)
    zv = ((x_val.to(device) - mean.to(device)) / std.to(device)).float()
    yv = y_val.to(device)
    grid: list[ProbePoint] = []
    states: list[tuple[torch.Tensor, torch.Tensor]] = []
    for l2 in sorted(l2_grid, reverse=True):  # strongest first: each fit warm-starts the next
        t0 = time.perf_counter()
        evals0 = objective.evals
        max_eval = max_iter * 5 // 4  # torch's default cap on function evaluations
        opt = torch.optim.LBFGS(
            [w, b],
            lr=1.0,
            max_iter=max_iter,
            max_eval=max_eval,
            history_size=20,
            tolerance_grad=1e-6,
            tolerance_change=1e-10,
            line_search_fn="strong_wolfe",
        )
        opt.step(lambda l2=l2: objective.value_and_grad(w, b, l2))
        iterations = int(opt.state[w].get("n_iter", 0))
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            logits = zv @ w.T + b
            val_loss = F.cross_entropy(logits, yv).item()
            val_acc = (logits.argmax(1) == yv).float().mean().item()
        train_loss, train_acc = objective.scores(w, b)
        grid.append(
            ProbePoint(
                l2=float(l2),
                val_acc=val_acc,
                val_loss=val_loss,
                train_loss=train_loss,
                train_acc=train_acc,
                iterations=iterations,
                function_evals=objective.evals - evals0,
                seconds=seconds,
                converged=iterations < max_iter and objective.evals - evals0 < max_eval,
            )
        )
        states.append((w.detach().clone(), b.detach().clone()))
    picked = best_index(grid)
    w_std, b_std = states[picked]
    head = nn.Linear(dim, num_classes)
    with torch.no_grad():  # fold the standardization in: logits = W (x - m) / s + b
        w_raw = w_std.cpu() / std
        head.weight.copy_(w_raw)
        head.bias.copy_(b_std.cpu() - w_raw @ mean)
    return ProbeResult(head=head, grid=grid, picked=picked, n_train=n)
