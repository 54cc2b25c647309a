"""dvc.yaml must name every library module a stage runs, or DVC would skip needed re-runs."""

from pathlib import Path

import pytest
import yaml
from _imports import module_closure

from transferlab.config import SECTIONS

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _stages():
    for name, stage in PIPELINE.items():
        yield name, stage.get("do", stage)


@pytest.mark.parametrize(("name", "stage"), list(_stages()), ids=[n for n, _ in _stages()])
def test_stage_depends_on_the_modules_it_imports(name, stage):
    script = stage["cmd"].split()[1]
    deps = set(stage["deps"])
    assert script in deps
    missing = module_closure(ROOT / script) - deps
    assert not missing, f"{name}: dvc.yaml lacks deps {sorted(missing)}"


@pytest.mark.parametrize(("name", "stage"), list(_stages()), ids=[n for n, _ in _stages()])
def test_stage_params_exist(name, stage):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in stage.get("params", []):
        section, *rest = key.replace("${item.strategy}", "frozen").replace("${item}", "frozen").split(".")
        assert section in SECTIONS
        node = params[section]
        for part in rest:
            assert part in node, f"{name}: params key {key} not in params.yaml"
            node = node[part]


def test_head_params_do_not_reach_extraction_or_finetuning():
    names = ["extract-features"] + [
        n for n in PIPELINE if n.startswith("finetune-") and n != "finetune-lp-ft"
    ]
    assert len(names) == 6  # extraction and the five strategies that do not start from the probe
    for name in names:
        stage = PIPELINE[name]
        assert not any(p.startswith("train_head") for p in stage["params"])
        assert not any(d.startswith("data/models/features") for d in stage["deps"])


def test_every_strategy_has_a_stage_over_its_lr_grid():
    """One stage block per strategy, one run per seed and learning rate of its grid."""
    from transferlab import registry

    for s in registry.names("end-to-end"):
        stage = PIPELINE[f"finetune-{s}"]
        assert stage["matrix"] == {"seed": "${base.seeds}", "lr": f"${{finetune.{s}.lr}}"}
        assert "--lr ${item.lr}" in stage["cmd"] and f" {s} " in stage["cmd"]
        assert f"data/models/{s}-s${{item.seed}}-lr${{item.lr}}" in stage["outs"]


def test_every_interpolated_key_is_in_params_yaml():
    """DVC fills ${...} from params.yaml itself, not from the config's defaults."""
    import re

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    text = (ROOT / "dvc.yaml").read_text()
    for key in set(re.findall(r"\$\{([^}]+)\}", text)):
        if key.startswith("item"):
            continue
        node = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"dvc.yaml uses ${{{key}}}, params.yaml lacks it"
            node = node[part]
