"""The learning-rate search every end-to-end run owns: successive halving over a grid that
grows past whichever end validation prefers.

Why this shape. A best rate at the edge of a grid means the grid was too small (the tuning
playbook's rule), so the search does not stop there: it adds the next rate past that end, by
the grid's own ratio, until validation prefers an interior rate or ``max_extend`` rates were
added (the record says when the cap was hit). Training every rate to the whole budget would
cost the grid's length in budgets; instead every rate trains a first rung (a fraction of the
budget), and only the ``keep`` best train the whole budget: three rates, a rung of a third
and one survivor cost two budgets.

How a rung is trained matters more than its length. Ranked in the middle of the whole
schedule (``rungs: continued``, the survivor carrying on), a high rate has not annealed yet
and loses to a lower one that will end worse: on the default data, full ranked 1e-3 first at
a third of its budget, where 1e-2 ended best on validation. The default (``annealed``) trains
each rung as a whole short run, its own warm-up and cosine decay to zero at the rung's end,
and starts a survivor again on the whole budget, at the price of one rung: docs/protocol.md
gives the measurement. ``first_rung: 1.0`` trains every rate to the end, the exhaustive grid
a search is measured against.

Rates are compared by the selection rule of the whole project (transferlab.selection): the
kept round's validation accuracy, ties to lower validation loss; a diverged rate never wins,
but it does bound the search (the rate below it is interior).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transferlab.selection import AllDiverged, Scored, best_index
from transferlab.training.loop import FitResult, Trainer


@dataclass
class Tried:
    """One rate of the search and how far it went."""

    lr: float
    trainer: Trainer  # its first-rung run, then (a survivor) its whole-budget run
    origin: str  # "grid", or "extended below" / "extended above"
    rung1: Scored | None = None  # its kept round after the first rung
    result: FitResult | None = None  # set when it trained the whole budget
    seconds: float = 0.0  # every run of this rate together
    steps: int = 0  # optimizer steps of every run of this rate together

    def score(self) -> Scored:
        r = self.trainer.result
        if not r.history:
            return Scored(0.0, math.inf, True)
        best = min(range(len(r.history)), key=lambda i: (r.history[i].val_loss, i))
        rec = r.history[best]
        return Scored(rec.val_acc, rec.val_loss, r.diverged, name=str(self.lr))


@dataclass
class SearchResult:
    """The picked rate's finished run and what the search did to find it."""

    picked: Tried
    tried: list[Tried]
    rung_steps: int
    budget_steps: int
    rungs: str
    extended: list[float] = field(default_factory=list)
    cap_hit: str | None = None  # "below" / "above": validation still preferred that end

    @property
    def seconds(self) -> float:
        """Every step the search trained, all rates together."""
        return sum(t.seconds for t in self.tried)

    @property
    def steps(self) -> int:
        return sum(t.steps for t in self.tried)

    @property
    def at_edge(self) -> str | None:
        """Which end of what was tried the pick sits on (None: interior, or one rate only)."""
        rates = sorted(t.lr for t in self.tried)
        if len(rates) < 2:
            return None
        if self.picked.lr == rates[0]:
            return "below"
        if self.picked.lr == rates[-1]:
            return "above"
        return None

    def record(self) -> dict[str, Any]:
        """The search as the run's protocol records it (train.json, the report's table)."""
        points = []
        for t in sorted(self.tried, key=lambda t: t.lr):
            s = t.score()
            r1 = t.rung1
            points.append(
                {
                    "lr": t.lr,
                    "origin": t.origin,
                    "steps": t.trainer.result.steps,  # of its last run: the rung, or the budget
                    "trained_steps": t.steps,
                    "val_acc": s.val_acc,
                    "val_loss": s.val_loss if math.isfinite(s.val_loss) else None,
                    "rung1_val_acc": r1.val_acc if r1 else None,
                    "rung1_val_loss": r1.val_loss if r1 and math.isfinite(r1.val_loss) else None,
                    "diverged": t.trainer.result.diverged,
                    "converged": t.result.converged if t.result is not None else None,
                    "seconds": round(t.seconds, 2),
                    "picked": t is self.picked,
                }
            )
        return {
            "grid": sorted(t.lr for t in self.tried if t.origin == "grid"),
            "tried": [p["lr"] for p in points],
            "extended": self.extended,
            "cap_hit": self.cap_hit,
            "at_edge": self.at_edge,
            "rungs": self.rungs,
            "rung_steps": self.rung_steps,
            "budget_steps": self.budget_steps,
            "steps": self.steps,
            "points": points,
            "search_time_s": round(self.seconds, 2),
        }


def _best(tried: list[Tried], scores: list[Scored], what: str) -> int:
    try:
        return best_index(scores)
    except AllDiverged:
        rates = ", ".join(f"{t.lr:g}" for t in tried)
        raise AllDiverged(f"{what}: every rate tried ({rates}) diverged; lower the rates") from None


def rung_length(rates: int, budget_steps: int, eval_every: int, first_rung: float) -> int:
    """The first rung's steps: a whole number of validation rounds (so that its score is
    one the run records), the whole budget when there is nothing to cut."""
    if first_rung >= 1 or rates == 1:
        return budget_steps
    return min(budget_steps, eval_every * max(1, round(first_rung * budget_steps / eval_every)))


def search(
    grid: list[float],
    budget_steps: int,
    start: Callable[[float, int], Trainer],
    *,
    first_rung: float,
    keep: int,
    max_extend: int,
    eval_every: int,
    rungs: str = "annealed",
    what: str = "lr",
) -> SearchResult:
    """Search ``grid`` (sorted, distinct rates) for the run ``start(lr, steps)`` trains: a
    fresh run at a rate whose schedule ends at ``steps`` (same seed, same initial weights,
    same data order).

    ``rungs``: ``annealed`` trains the first rung as a whole short run (warm-up, cosine to
    zero at the rung's end) and a survivor starts again on the whole budget; ``continued``
    trains the first part of the whole-budget run and a survivor carries on (a paused
    :class:`Trainer` resumes exactly where it stopped), cheaper by the rung but ranked
    mid-schedule, before the rate has annealed. A one-rate grid is the user's fixed choice:
    it trains the whole budget, with nothing to search."""
    rates = sorted(float(r) for r in grid)
    rung = rung_length(len(rates), budget_steps, eval_every, first_rung)
    exhaustive = rung >= budget_steps
    tried: list[Tried] = []

    def train_rung(lr: float, origin: str) -> None:
        t = Tried(lr, start(lr, budget_steps if exhaustive or rungs == "continued" else rung), origin)
        t.trainer.advance(rung)
        t.rung1 = t.score()
        tried.append(t)

    for lr in rates:
        train_rung(lr, "grid")
    extended: list[float] = []
    cap_hit = None
    while len(rates) >= 2:
        order = sorted(tried, key=lambda t: t.lr)
        best = order[_best(order, [t.score() for t in order], what)]
        if best is order[0]:
            side, ratio = "below", order[1].lr / order[0].lr
            nxt = best.lr / ratio
        elif best is order[-1]:
            side, ratio = "above", order[-1].lr / order[-2].lr
            nxt = best.lr * ratio
        else:
            break
        if len(extended) >= max_extend:
            cap_hit = side
            break
        nxt = float(f"{nxt:.3g}")  # 1e-2 / 3.33 -> 0.003, not 0.0030000000000000005
        extended.append(nxt)
        train_rung(nxt, f"extended {side}")

    scores = [t.score() for t in tried]
    ranked = sorted(range(len(tried)), key=lambda i: _rank_key(scores[i]))
    _best(tried, scores, what)  # every rate diverged: say so before training on
    # exhaustive (every rate already trained the whole budget): every rate is finished and judged
    n_keep = len(tried) if exhaustive else keep
    survivors = [tried[i] for i in ranked[:n_keep] if _usable(scores[i])]
    for t in tried:
        if t not in survivors:
            t.trainer.close()
            _account(t)
            continue
        if not exhaustive and rungs == "annealed":
            t.trainer.close()
            _account(t)
            t.trainer = start(t.lr, budget_steps)
        t.trainer.advance(budget_steps)
        t.result = t.trainer.finish()
        _account(t)
    final = [t.score() for t in survivors]
    picked = survivors[_best(survivors, final, what)]
    for t in survivors:  # the survivors that lost the final round: their weights go
        if t is not picked:
            t.trainer.close()
    return SearchResult(picked, tried, rung, budget_steps, rungs, extended, cap_hit)


def _account(t: Tried) -> None:
    """Add the run ``t`` holds now to what its rate cost."""
    t.seconds += t.trainer.result.seconds
    t.steps += t.trainer.result.steps


def _usable(s: Scored) -> bool:
    return not s.diverged and math.isfinite(s.val_loss)


def _rank_key(s: Scored) -> tuple[int, float, float]:
    """The selection rule as a sort key (unusable rates last)."""
    return (0 if _usable(s) else 1, -s.val_acc, s.val_loss)
