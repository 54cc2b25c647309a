"""How every arm's hyper-parameters are chosen: on the validation split, never on test.

One rule for the whole project, so that no arm is picked more generously than another: the
highest validation accuracy wins; equal accuracies (common on small validation splits,
where accuracy moves in steps of one image) go to the lower validation loss. A candidate
that diverged (its loss became non-finite at some point) is never picked, whatever its
validation scores: its kept weights are an accident of when it blew up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from transferlab.errors import ConfigError


class Candidate(Protocol):
    @property
    def val_acc(self) -> float: ...

    @property
    def val_loss(self) -> float: ...


@dataclass(frozen=True)
class Scored:
    """A candidate as the rule sees it (grid points, models and backbones all come to this)."""

    val_acc: float
    val_loss: float
    diverged: bool = False
    name: str = ""


class AllDiverged(ConfigError):
    """Every candidate diverged: there is nothing the rule may pick."""


def usable(candidate: Candidate) -> bool:
    """Whether the rule may pick ``candidate``: it did not diverge and its loss is finite."""
    return not getattr(candidate, "diverged", False) and math.isfinite(candidate.val_loss)


def best_index(candidates: Sequence[Candidate]) -> int:
    """Index of the candidate the rule above picks, among the usable ones."""
    if not candidates:
        raise ValueError("nothing to choose from")
    pool = [i for i, c in enumerate(candidates) if usable(c)]
    if not pool:
        raise AllDiverged(f"all {len(candidates)} candidate(s) diverged (their loss became non-finite)")
    return min(pool, key=lambda i: (-candidates[i].val_acc, candidates[i].val_loss))
