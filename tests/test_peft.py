"""The parameter-efficient strategies: bitfit, norm and lora (transferlab.training.lora)."""

import io

import pytest
import torch
from helpers import tiny_backbone
from torch import nn

from transferlab.config import load_params
from transferlab.features.backbones import create_backbone
from transferlab.training import lora
from transferlab.training.models import TransferModel, make_head
from transferlab.training.strategies import NORMS, apply_strategy, param_groups

PARAMS = load_params("params.yaml").finetune


def _model(backbone, classes=10):
    return TransferModel(backbone, make_head(PARAMS.head, backbone.num_features, classes))


def _trainable(model):
    return {n for n, p in model.backbone.named_parameters() if p.requires_grad}


def test_bitfit_trains_every_bias_and_nothing_else_at_most_0_2_percent_of_resnet50():
    model = _model(create_backbone("resnet50", 64, None, pretrained=False, crop_pct=None))
    apply_strategy(model, "bitfit", PARAMS.strategy("bitfit"))
    names = _trainable(model)
    assert names and all(n.endswith(".bias") for n in names)
    assert names == {n for n, _ in model.backbone.named_parameters() if n.endswith(".bias")}
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)  # head included
    assert trained / total <= 0.002, f"{trained:,} of {total:,}"
    assert all(p.requires_grad for p in model.head.parameters())


def test_norm_trains_exactly_the_normalisation_layers():
    model = _model(create_backbone("resnet18", 64, None, pretrained=False, crop_pct=None))
    apply_strategy(model, "norm", PARAMS.strategy("norm"))
    want = {
        f"{name}.{p}"
        for name, m in model.backbone.named_modules()
        if isinstance(m, NORMS)
        for p in ("weight", "bias")
    }
    assert _trainable(model) == want


def test_lora_adds_nothing_at_initialisation_on_the_pretrained_backbone():
    backbone = create_backbone("efficientnet_lite0", 64, None, pretrained=True, crop_pct=1.0)
    model = _model(backbone).eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x)
    apply_strategy(model, "lora", PARAMS.strategy("lora"))
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(before, after, atol=1e-6, rtol=0), (before - after).abs().max()
    names = _trainable(model)
    assert names and all(n.endswith((".lora_a", ".lora_b")) for n in names)
    # every pointwise convolution is adapted, no depthwise or 3x3 one
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    pointwise = [m for m in convs if m.kernel_size == (1, 1) and m.groups == 1]
    adapted = [m for m in convs if hasattr(m, "parametrizations")]
    assert pointwise and adapted == pointwise


def test_lora_trains_only_adapters_and_merges_into_an_ordinary_model():
    torch.manual_seed(0)
    model = _model(tiny_backbone(), classes=3)
    model.backbone.body[0][0] = nn.Conv2d(3, 8, 1)  # a pointwise convolution to adapt
    cfg = PARAMS.strategy("lora").model_copy(update={"lr": [1e-2]})
    apply_strategy(model, "lora", cfg)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "original" in k}
    opt = torch.optim.AdamW(param_groups(model, cfg, 1e-2))
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    model.train()
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for k, v in frozen.items():  # the pretrained weights under the adapters never move
        assert torch.equal(model.state_dict()[k], v), k
    adapters = lora.adapter_state(model)
    assert adapters and any(v.abs().sum() > 0 for k, v in adapters.items() if k.endswith("lora_b"))
    model.eval()
    with torch.no_grad():
        adapted = model(x)
    assert lora.merge(model) == 1
    with torch.no_grad():
        merged = model(x)
    assert torch.allclose(adapted, merged, atol=1e-5)
    # the merged state loads into a freshly built model of the same architecture
    fresh = _model(tiny_backbone(), classes=3)
    fresh.backbone.body[0][0] = nn.Conv2d(3, 8, 1)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), merged)


def test_lora_adapts_attention_projections_of_a_transformer():
    from torchvision.models import VisionTransformer

    vit = VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    vit.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = vit(x)
    names = lora.add_lora(vit, rank=2, alpha=4.0)
    assert any(n.endswith("self_attention.in_proj_weight") for n in names)
    assert any(n.endswith("self_attention.out_proj.weight") for n in names)
    with torch.no_grad():
        assert torch.allclose(vit(x), before, atol=1e-6)
    vit.train()
    vit(x).sum().backward()
    grads = {n for n, p in vit.named_parameters() if p.grad is not None}
    assert grads and all(n.endswith(("lora_a", "lora_b")) for n in grads)


def test_lora_refuses_a_model_without_weights_to_adapt_and_a_bad_rank():
    with pytest.raises(ValueError, match="no linear layer or 1x1 convolution"):
        lora.add_lora(nn.Sequential(nn.Conv2d(3, 3, 3)), rank=4, alpha=8)
    with pytest.raises(ValueError, match="rank must be at least 1"):
        lora.add_lora(nn.Linear(3, 3), rank=0, alpha=8)


def test_peft_arms_are_opt_in_by_default():
    assert not {"bitfit", "norm", "lora"} & set(PARAMS.runs)
