"""How every arm's hyper-parameters are chosen: on the validation split, never on test.

One rule for the whole project, so that no arm is picked more generously than another: the
highest validation accuracy wins; equal accuracies (common on small validation splits,
where accuracy moves in steps of one image) go to the lower validation loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Candidate(Protocol):
    val_acc: float
    val_loss: float


def best_index(candidates: Sequence[Candidate]) -> int:
    """Index of the candidate the rule above picks."""
    if not candidates:
        raise ValueError("nothing to choose from")
    return min(range(len(candidates)), key=lambda i: (-candidates[i].val_acc, candidates[i].val_loss))
