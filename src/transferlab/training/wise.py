"""Weight-space interpolation between a fine-tuning run's start and its end (WiSE-FT,
Wortsman et al., 2022): evaluations only, no training.

For ``lp-ft`` the start is the linear probe on the pretrained backbone and the end the
fine-tuned model; both share one architecture, so every weight can be mixed,
``theta(alpha) = (1 - alpha) * theta_start + alpha * theta_end``. ``torch.lerp`` is exact at
the ends (alpha 0 gives the start's tensors, alpha 1 the end's, bit for bit), so the two ends
of the curve reproduce the probe's and the fine-tuned run's stored scores.

BatchNorm statistics: with ``bn: frozen`` (the default) both ends hold the pretrained ones and
so does every mix. With ``bn: train`` the running statistics of a mix are not those of the
mixed network, so they are re-estimated at every interior alpha by a pass over the training
images in eval-transform form (a cumulative average, momentum None); the ends keep theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

Scorer = Callable[[nn.Module], dict[str, Any]]


def interpolate(
    start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """The state at ``alpha`` between two states of one architecture. Floating tensors are
    mixed; integer ones (BatchNorm's batch counters) are the end's."""
    if start.keys() != end.keys():
        missing = sorted(start.keys() ^ end.keys())[:3]
        raise ValueError(f"the two states differ in their tensors ({', '.join(missing)} ...)")
    out = {}
    for k, b in end.items():
        a = start[k]
        out[k] = torch.lerp(a, b, alpha) if b.is_floating_point() else b.clone()
    return out


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device) -> None:
    """Recompute every BatchNorm's running mean and variance as the average over ``batches``."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [(m.momentum, m.training) for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the plain mean over the batches
        m.train()
    for x in batches:
        if len(x) > 1:  # one image has no variance: BatchNorm refuses to train on it
            model(x.to(device))
    for m, (momentum, training) in zip(norms, saved, strict=True):
        m.momentum = momentum
        m.train(training)


def curve(
    model: nn.Module,
    start: dict[str, torch.Tensor],
    end: dict[str, torch.Tensor],
    alphas: Sequence[float],
    score: Scorer,
    *,
    reestimate: Callable[[nn.Module], None] | None = None,
) -> list[dict[str, Any]]:
    """Score ``model`` at every alpha; ``reestimate`` (BatchNorm statistics) runs at interior
    alphas only. The model is left holding ``end``. Both states are copied first: a state
    dict taken from ``model`` itself would otherwise change under the loads."""
    start = {k: v.detach().clone() for k, v in start.items()}
    end = {k: v.detach().clone() for k, v in end.items()}
    points = []
    try:
        for alpha in alphas:
            model.load_state_dict(interpolate(start, end, float(alpha)))
            if reestimate is not None and 0.0 < alpha < 1.0:
                reestimate(model)
            points.append({"alpha": float(alpha), **score(model)})
    finally:
        model.load_state_dict(end)
    return points
