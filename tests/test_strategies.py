import pytest
import torch
from helpers import tiny_backbone

from transferlab.config import (
    FrozenConfig,
    FullConfig,
    HeadConfig,
    PartialConfig,
    ProgressiveConfig,
    StrategyConfig,
)
from transferlab.errors import ConfigError
from transferlab.features.backbones import create_backbone
from transferlab.training.loop import TensorBatches, fit
from transferlab.training.models import TransferModel, count_parameters, make_head
from transferlab.training.strategies import ProgressiveUnfreezer, apply_strategy, param_groups

CPU = torch.device("cpu")


def _model(strategy: str, cfg: StrategyConfig) -> TransferModel:
    bb = create_backbone("efficientnet_lite0", 32, crop_pct=1.0)
    m = TransferModel(bb, make_head(HeadConfig(kind="mlp", hidden=16), bb.num_features, 3))
    apply_strategy(m, strategy, cfg)
    return m


def _bn(model):
    return [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def _train_steps(model, optimizer, steps=3, size=32):
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        model.train()
        x, y = torch.randn(8, 3, size, size, generator=g), torch.randint(0, 3, (8,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_frozen_backbone_is_bit_for_bit_unchanged_and_bn_stays_in_eval():
    cfg = StrategyConfig(lr=[1e-2], bn="train")  # even with bn=train: frozen blocks stay in eval
    m = _model("frozen", cfg)
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}  # includes BN statistics
    head_before = [p.clone() for p in m.head.parameters()]
    _train_steps(m, torch.optim.AdamW(param_groups(m, cfg, cfg.lr[0])))
    after = m.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(b.training for b in _bn(m))
    assert m.head.training
    assert any(not torch.equal(a, b) for a, b in zip(head_before, m.head.parameters(), strict=True))


def test_optimizer_holds_only_trainable_parameters():
    m = _model("frozen", FrozenConfig())
    opt = torch.optim.AdamW(param_groups(m, FrozenConfig(), 1e-3))
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in m.head.parameters()}
    _train_steps(m, opt, steps=1)
    assert all(id(p) in held for p in opt.state)  # no momentum buffers for frozen weights


def test_full_trains_backbone_at_a_lower_rate_without_decay_on_norms():
    cfg = FullConfig(lr=[1e-3], backbone_lr_mult=0.1, weight_decay=0.05)
    m = _model("full", cfg)
    trainable, total = count_parameters(m)
    assert trainable == total
    groups = param_groups(m, cfg, cfg.lr[0])
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


def test_partial_trains_exactly_the_last_blocks():
    cfg = PartialConfig(unfreeze_blocks=2, lr=[1e-2])
    m = _model("partial", cfg)
    groups = m.backbone.groups
    frozen_before = [{k: v.clone() for k, v in g.state_dict().items()} for g in groups[:-2]]
    last_before = [p.clone() for p in groups[-1].parameters()]
    _train_steps(m, torch.optim.AdamW(param_groups(m, cfg, cfg.lr[0])), steps=2)
    for before, g in zip(frozen_before, groups[:-2], strict=True):
        assert all(torch.equal(v, g.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(a, b) for a, b in zip(last_before, groups[-1].parameters(), strict=True))
    trainable, _ = count_parameters(m)
    assert trainable == sum(p.numel() for g in groups[-2:] for p in g.parameters()) + sum(
        p.numel() for p in m.head.parameters()
    )


def test_partial_with_more_blocks_than_the_backbone_has():
    with pytest.raises(ConfigError, match="unfreeze_blocks: 12 but efficientnet_lite0 has 9 blocks"):
        _model("partial", PartialConfig(unfreeze_blocks=12))


@pytest.mark.parametrize("strategy", ["frozen", "full"])
def test_bn_statistics_frozen_by_default_while_affine_trains(strategy):
    cfg = FullConfig(lr=[1e-2])
    m = _model(strategy, cfg)
    stats = [(b.running_mean.clone(), b.running_var.clone()) for b in _bn(m)]
    scale = _bn(m)[-1].weight.clone()
    _train_steps(m, torch.optim.AdamW(param_groups(m, cfg, cfg.lr[0])), steps=2)
    assert all(
        torch.equal(mu, b.running_mean) and torch.equal(v, b.running_var)
        for (mu, v), b in zip(stats, _bn(m), strict=True)
    )
    assert torch.equal(scale, _bn(m)[-1].weight) == (strategy == "frozen")


def test_bn_train_mode_updates_statistics_of_trainable_blocks():
    cfg = FullConfig(bn="train")
    m = _model("full", cfg)
    before = _bn(m)[-1].running_mean.clone()
    _train_steps(m, torch.optim.AdamW(param_groups(m, cfg, cfg.lr[0])), steps=1)
    assert not torch.equal(before, _bn(m)[-1].running_mean)


def _progressive(compile_: bool = False):
    torch.manual_seed(0)
    # 4 rounds of 4 steps (32 images in batches of 8: a round is an epoch here); blocks join
    # at a quarter and a half of the budget, the starts of rounds 1 and 2
    cfg = ProgressiveConfig(
        steps=16,
        eval_every=4,
        warmup_steps=0,
        lr=[0.01],
        backbone_lr_mult=0.5,
        lr_decay=0.5,
        unfreeze_at=[0.25, 0.5],
        batch_size=8,
        compile=compile_,
    )
    m = TransferModel(tiny_backbone(), torch.nn.Linear(16, 3))
    apply_strategy(m, "progressive", cfg)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
    opt = torch.optim.AdamW(param_groups(m, cfg, cfg.lr[0]))
    b1, b2 = (next(blk.parameters()) for blk in m.backbone.groups)  # each block's conv weight
    snapshots = []
    seen_groups = []

    def on_epoch(rec):
        snapshots.append((b1.detach().clone(), b2.detach().clone()))
        seen_groups.append(rec.lrs)

    unfreezer = ProgressiveUnfreezer(m, cfg, cfg.lr[0])
    fit(
        m,
        opt,
        TensorBatches(x, y, 8, shuffle=True, generator=g),
        TensorBatches(x, y, 32),
        cfg,
        CPU,
        on_epoch=on_epoch,
        on_step=unfreezer,
    )
    return m, opt, snapshots, seen_groups, (b1, b2)


def test_progressive_unfreezes_top_down_with_discriminative_rates():
    m, opt, snaps, lrs, (b1, b2) = _progressive()
    # epoch 0: head only; epoch 1: the top block (b2) joins; epoch 2: b1 joins.
    assert list(lrs[0]) == ["head"]
    assert list(lrs[1]) == ["head", "block-1"] and list(lrs[2]) == ["head", "block-1", "block-0"]
    # nominal rates: the top block at backbone_lr_mult x lr, each deeper one lr_decay x that
    nominal = {g["name"]: g["base_lr"] for g in opt.param_groups}
    assert nominal["block-1"] == pytest.approx(0.01 * 0.5) and nominal["block-0"] == pytest.approx(
        0.01 * 0.25
    )
    # a joining block starts its own warm-up (one round = 4 steps here): 1/4 of its rate
    assert lrs[1]["block-1"] == pytest.approx(0.005 / 4) and lrs[2]["block-0"] == pytest.approx(0.0025 / 4)
    init = snaps[0]
    assert torch.equal(snaps[0][1], init[1])  # b2 untouched during epoch 0 ...
    assert not torch.equal(snaps[1][1], snaps[0][1])  # ... trained from epoch 1
    assert torch.equal(snaps[1][0], init[0])  # b1 untouched until epoch 2
    assert not torch.equal(snaps[2][0], snaps[1][0])
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in m.parameters() if p.requires_grad}


def test_progressive_with_more_steps_than_blocks():
    cfg = ProgressiveConfig(unfreeze_at=[i / 11 for i in range(1, 11)])
    with pytest.raises(ConfigError, match="10 steps but efficientnet_lite0 has 9 blocks"):
        _model("progressive", cfg)


@pytest.mark.slow
def test_compiled_model_trains_blocks_unfrozen_mid_run():
    """torch.compile must not keep a graph in which the newly unfrozen block had no grad."""
    _, _, snaps, _, _ = _progressive(compile_=True)
    assert not torch.equal(snaps[1][1], snaps[0][1])
    assert not torch.equal(snaps[2][0], snaps[1][0])


def test_bn_momentum_applies_only_when_statistics_train():
    from transferlab.config import ScratchConfig

    trained = _model("full", FullConfig(bn="train", bn_momentum=0.2))
    assert {b.momentum for b in _bn(trained)} == {0.2}
    assert ScratchConfig().bn == "train" and ScratchConfig().bn_momentum == 0.1
    kept = _model("full", FullConfig())
    assert {b.momentum for b in _bn(kept)} == {0.010000000000000009}  # the port's own, untouched
