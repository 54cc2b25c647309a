"""Weight-space interpolation (transferlab.training.wise)."""

import pytest
import torch
from torch import nn

from transferlab.training import wise


def _states():
    torch.manual_seed(0)
    a, b = (
        nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)),
        nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)),
    )
    with torch.no_grad():
        b[1].running_mean.fill_(2.0)
        b[1].num_batches_tracked.fill_(7)
    return a, {k: v.clone() for k, v in a.state_dict().items()}, b.state_dict()


def test_interpolation_is_exact_at_the_ends_and_linear_between():
    _, start, end = _states()
    for k in start:
        assert torch.equal(
            wise.interpolate(start, end, 0.0)[k], start[k] if start[k].is_floating_point() else end[k]
        )
        assert torch.equal(wise.interpolate(start, end, 1.0)[k], end[k])
    mid = wise.interpolate(start, end, 0.3)
    w = "0.weight"
    assert torch.allclose(mid[w], 0.7 * start[w] + 0.3 * end[w])
    assert mid["1.num_batches_tracked"] == 7  # counters are the end's


def test_interpolation_refuses_states_of_different_architectures():
    _, start, end = _states()
    del end["0.bias"]
    with pytest.raises(ValueError, match="differ in their tensors"):
        wise.interpolate(start, end, 0.5)


def test_curve_scores_every_alpha_and_leaves_the_end_in_place():
    model, start, end = _states()
    x = torch.randn(16, 4)
    model.eval()
    seen = []

    def score(m):
        with torch.no_grad():
            return {"out": m(x).sum().item()}

    def reestimate(m):
        seen.append(True)

    points = wise.curve(model, start, end, [0.0, 0.5, 1.0], score, reestimate=reestimate)
    assert [p["alpha"] for p in points] == [0.0, 0.5, 1.0]
    assert len(seen) == 1  # the interior alpha only: the ends keep their own statistics
    for k, v in model.state_dict().items():
        assert torch.equal(v, end[k])
    model.load_state_dict(end)
    assert points[-1]["out"] == score(model)["out"]
    model.load_state_dict(start)
    assert points[0]["out"] == score(model)["out"]


def test_bn_reestimation_is_the_plain_mean_over_the_batches():
    bn = nn.Sequential(nn.BatchNorm1d(2))
    bn[0].momentum = 0.1
    bn.eval()
    batches = [torch.tensor([[0.0, 1.0], [2.0, 3.0]]), torch.tensor([[4.0, 5.0], [6.0, 7.0]])]
    wise.reestimate_bn(bn, batches, torch.device("cpu"))
    assert torch.allclose(bn[0].running_mean, torch.tensor([3.0, 4.0]))  # mean of the batch means
    assert bn[0].momentum == 0.1 and not bn[0].training
