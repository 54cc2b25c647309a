"""CrossRankBatchNorm: BatchNorm over all ranks' batches, on CPU process groups too."""

import pytest
import torch
from torch import nn

from transferlab.runtime import Ranks
from transferlab.training.distributed import CrossRankBatchNorm, sync_batchnorm


@pytest.fixture
def one_rank_group():
    """A real (gloo) process group of one rank: the all-reduce runs, and sums over one rank."""
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def test_equals_batchnorm_forward_backward_and_running_statistics(one_rank_group):
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(5, momentum=0.3)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-1, 1)
    ours = CrossRankBatchNorm.convert(nn.Sequential(ref.__class__(5, momentum=0.3)))[0]
    ours.load_state_dict(ref.state_dict())
    assert isinstance(ours, CrossRankBatchNorm)
    x = torch.randn(6, 5, 4, 3) * 3 + 2
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ref(xa), ours(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), rtol=1e-5, atol=1e-6)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x))


def test_conversion_keeps_parameters_and_mode():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    net[2][0].eval()
    weight = net[1].weight
    holder = nn.Module()
    holder.net = net
    assert sync_batchnorm(holder, Ranks(0, 2), torch.device("cpu"))
    assert isinstance(net[1], CrossRankBatchNorm) and net[1].weight is weight  # the optimizer's tensor
    assert isinstance(net[2][0], CrossRankBatchNorm) and not net[2][0].training
    assert not sync_batchnorm(holder, Ranks(), torch.device("cpu"))  # one process: nothing to do
