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
    for name in ("extract-features", "finetune"):
        stage = PIPELINE[name].get("do", PIPELINE[name])
        assert not any(p.startswith("train_head") for p in stage["params"])
        assert "data/models/features" not in stage["deps"]


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
