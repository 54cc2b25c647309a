import pytest
import torch

from transferlab.backbones import create_backbone
from transferlab.config import HeadConfig, StrategyConfig
from transferlab.models import TransferModel, count_parameters, make_head
from transferlab.strategies import apply_strategy, param_groups


def _model(strategy: str, bn: str = "frozen") -> TransferModel:
    bb = create_backbone("efficientnet_lite0", 32, crop_pct=1.0)
    m = TransferModel(bb, make_head(HeadConfig(kind="mlp", hidden=16), bb.num_features, 3))
    apply_strategy(m, strategy, bn=bn)
    return m


def _bn(model):
    return [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def _train_steps(model, optimizer, steps=3):
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        model.train()
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 3, (8,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_frozen_backbone_is_bit_for_bit_unchanged_and_bn_stays_in_eval():
    m = _model("frozen")
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}  # includes BN statistics
    head_before = [p.clone() for p in m.head.parameters()]
    opt = torch.optim.AdamW(param_groups(m, StrategyConfig(lr=1e-2)))
    _train_steps(m, opt)
    after = m.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(mod.training for mod in m.backbone.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    assert m.head.training
    assert any(not torch.equal(a, b) for a, b in zip(head_before, m.head.parameters(), strict=True))


def test_optimizer_holds_only_trainable_parameters():
    m = _model("frozen")
    opt = torch.optim.AdamW(param_groups(m, StrategyConfig()))
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in m.head.parameters()}
    _train_steps(m, opt, steps=1)
    assert all(id(p) in held for p in opt.state)  # no momentum buffers for frozen weights


def test_full_trains_backbone_at_a_lower_rate_without_decay_on_norms():
    m = _model("full")
    trainable, total = count_parameters(m)
    assert trainable == total
    groups = param_groups(m, StrategyConfig(lr=1e-3, backbone_lr_mult=0.1, weight_decay=0.05))
    by = {g["name"]: g for g in groups}
    assert by["head"]["lr"] == pytest.approx(1e-3)
    assert by["backbone"]["lr"] == pytest.approx(1e-4)
    assert by["backbone/no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim <= 1 for p in by["backbone/no_decay"]["params"])
    assert all(p.ndim > 1 for p in by["backbone"]["params"])
    assert sum(p.numel() for g in groups for p in g["params"]) == total
    before = m.backbone.groups[0][0].weight.clone()
    _train_steps(m, torch.optim.AdamW(groups), steps=1)
    assert not torch.equal(before, m.backbone.groups[0][0].weight)


@pytest.mark.parametrize("strategy", ["frozen", "full"])
def test_bn_statistics_frozen_by_default_while_affine_trains(strategy):
    m = _model(strategy)
    stats = [(b.running_mean.clone(), b.running_var.clone()) for b in _bn(m)]
    scale = _bn(m)[-1].weight.clone()
    _train_steps(m, torch.optim.AdamW(param_groups(m, StrategyConfig(lr=1e-2))), steps=2)
    assert all(torch.equal(mu, b.running_mean) and torch.equal(v, b.running_var)
               for (mu, v), b in zip(stats, _bn(m), strict=True))
    assert torch.equal(scale, _bn(m)[-1].weight) == (strategy == "frozen")


def test_bn_train_mode_updates_statistics_of_trainable_blocks():
    m = _model("full", bn="train")
    before = _bn(m)[-1].running_mean.clone()
    _train_steps(m, torch.optim.AdamW(param_groups(m, StrategyConfig())), steps=1)
    assert not torch.equal(before, _bn(m)[-1].running_mean)
