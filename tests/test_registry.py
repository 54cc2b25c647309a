"""Every registered model is complete everywhere the pipeline looks for it.

Parametrized over the registry itself (not a hand-kept list): a strategy added with one
``register`` call but no params section, dvc.yaml block or description fails here by name.
"""

from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_backbone

from transferlab import registry
from transferlab.config import load_params
from transferlab.features.backbones import available_backbones, register_backbone
from transferlab.training.models import TransferModel
from transferlab.training.strategies import apply_strategy

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
END_TO_END = [s.name for s in registry.all_models() if not s.two_stage]
TWO_STAGE = [s.name for s in registry.all_models() if s.two_stage]


def test_registry_lists_both_kinds():
    assert END_TO_END and TWO_STAGE
    assert set(registry.names()) == set(END_TO_END) | set(TWO_STAGE)


@pytest.mark.parametrize("name", registry.names())
def test_every_model_is_described_and_placed(name):
    spec = registry.get(name)
    assert spec.description.strip()
    assert spec.family in ("feature-extraction", "fine-tuning", "baseline")
    assert all(s in (1, 2, 3, 4) for s in spec.scenarios)
    if spec.family == "baseline":
        assert not spec.scenarios, "a baseline is never advice"


@pytest.mark.parametrize("name", END_TO_END)
def test_every_strategy_has_params_section_and_stage(name):
    spec = registry.get(name)
    assert spec.params is not None, "no @strategy_params class"
    assert name in PARAMS["finetune"], f"params.yaml has no finetune.{name}"
    stage = STAGES["finetune-from-probe" if spec.from_probe else "finetune"]
    assert "python stages/finetune.py ${item.strategy} " in stage["cmd"]
    assert "finetune.${item.strategy}" in stage["params"]
    # the stage block that runs it is the one whose matrix list may name it
    key = "from_probe" if spec.from_probe else "strategies"
    assert stage["matrix"]["strategy"] == f"${{finetune.{key}}}"
    if spec.recipe_of:  # trains with another strategy's recipe: depends on that section too
        assert any(f"finetune.{spec.recipe_of}" in str(p) for p in stage["params"])
    if spec.from_probe:
        assert any("features-s" in str(d) for d in stage["deps"]), "no dependency on the probe"
    cfg = load_params(ROOT / "params.yaml").finetune
    assert cfg.strategy(name).lr == cfg.section(name).lr


@pytest.mark.parametrize("name", TWO_STAGE)
def test_every_head_model_is_a_train_head_choice(name):
    assert name in PARAMS["train_head"]["models"]
    assert name in load_params(ROOT / "params.yaml").train_head.models


@pytest.mark.parametrize("name", END_TO_END)
def test_apply_strategy_trains_what_the_registry_says(name):
    """At the start of training: nothing of the backbone (none), its last blocks, all, or a
    part of every block (biases, norms, adapters)."""
    spec = registry.get(name)
    cfg = load_params(ROOT / "params.yaml").finetune.strategy(name)
    bb = tiny_backbone()
    bb.body[0][0] = torch.nn.Conv2d(3, 8, 1)  # a pointwise convolution, for LoRA to adapt
    bb.groups[0][0] = bb.body[0][0]
    model = TransferModel(bb, torch.nn.Linear(bb.num_features, 3))
    fit = {"unfreeze_blocks": 1, "unfreeze_at": [0.5]}  # the tiny backbone has 2 blocks
    cfg = cfg.model_copy(update={k: v for k, v in fit.items() if k in type(cfg).model_fields})
    apply_strategy(model, name, cfg)
    assert all(p.requires_grad for p in model.head.parameters())
    if spec.unfreeze in ("none", "last-blocks", "all"):
        per_group = [all(p.requires_grad for p in g.parameters()) for g in bb.groups]
        expected = {"none": [False, False], "last-blocks": [False, True], "all": [True, True]}[spec.unfreeze]
        assert per_group == expected
    else:  # parameter-efficient: a part of the first block trains, never all of it
        first = [p.requires_grad for p in bb.groups[0].parameters()]
        assert any(first) and not all(first)


def test_duplicate_model_registration_fails():
    first = registry.all_models()[0]
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(first)
    with pytest.raises(ValueError, match="not registered before it"):
        registry.register(
            registry.ModelSpec("new", "end-to-end", "d", "fine-tuning", recipe_of="no-such-model")
        )
    assert "new" not in registry.names()


def test_duplicate_params_section_fails():
    with pytest.raises(ValueError, match="defined twice"):
        registry.attach_params("full", object)
    with pytest.raises(ValueError, match="not an end-to-end strategy"):
        registry.attach_params("features", object)


def test_duplicate_backbone_registration_fails():
    name = available_backbones()[0]
    with pytest.raises(ValueError, match="registered twice"):
        register_backbone(name)(lambda *a: None)
    assert name in available_backbones()
