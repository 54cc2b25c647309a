"""dvc.yaml must name every library module a stage runs, or DVC would skip needed re-runs."""

from pathlib import Path

import pytest
import yaml
from _imports import module_closure, stage_scripts

from transferlab import registry
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
    closure = module_closure(ROOT / script)
    missing = closure - deps
    assert not missing, f"{name}: dvc.yaml lacks deps {sorted(missing)}"
    # and no more: a module the stage does not run would re-run it for nothing
    extra = {d for d in deps if d.startswith("src/")} - closure
    assert not extra, f"{name}: dvc.yaml lists deps the stage does not import {sorted(extra)}"


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
    # extraction and every strategy that does not start from the probe
    assert len(names) == 1 + sum(1 for s in registry.all_models() if not s.two_stage and not s.from_probe)
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
        if key.startswith("item") or key == "key":  # a matrix's own names
            continue
        node = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"dvc.yaml uses ${{{key}}}, params.yaml lacks it"
            node = node[part]


def _params_read(script: Path) -> set[str]:
    """The params keys a stage script reads, as ``section`` or ``section.field``: attribute
    chains on the value of ``load_params(...)``, directly (``p.base.seed``) or through a
    name bound to a section (``base = p.base`` ... ``base.seed``)."""
    import ast

    from transferlab.config import parse_section

    tree = ast.parse(script.read_text())
    roots = {
        t.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Call)
        and getattr(node.value.func, "id", None) == "load_params"
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    aliases: dict[str, str] = {}  # name -> section
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        pairs: list[tuple[ast.expr, ast.expr]] = []
        for t in node.targets:
            if isinstance(t, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs += zip(t.elts, node.value.elts, strict=True)
            else:
                pairs.append((t, node.value))
        for target, value in pairs:
            if (
                isinstance(target, ast.Name)
                and isinstance(value, ast.Attribute)
                and getattr(value.value, "id", None) in roots
            ):
                aliases[target.id] = value.attr
    read = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not isinstance(node.value, ast.Name | ast.Attribute):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in aliases:
            section, field = aliases[node.value.id], node.attr
        elif isinstance(node.value, ast.Attribute) and getattr(node.value.value, "id", None) in roots:
            section, field = node.value.attr, node.attr
        elif isinstance(node.value, ast.Name) and node.value.id in roots:
            if node.attr == "sections":  # every section
                read |= set(SECTIONS)
            elif node.attr in SECTIONS:
                read.add(node.attr)
            continue
        else:
            continue
        fields = type(parse_section(section, None)).model_fields
        read.add(f"{section}.{field}" if field in fields else section)
    return read


@pytest.mark.parametrize(("name", "stage"), list(_stages()), ids=[n for n, _ in _stages()])
def test_stage_lists_every_param_its_script_reads(name, stage):
    """A key a stage reads but dvc.yaml does not list would change its output without DVC
    re-running it (and would be missing from `dvc exp show`'s view of that stage)."""
    script = ROOT / stage["cmd"].split()[1]
    listed = [k.replace("lp-ft", "lp_ft") for k in stage.get("params", [])]
    # finetune.py reads finetune.head only for models that do not start from the probe;
    # train_head.py reads curve.sizes and base.seed (the subsets' draw) only in curves(), run
    # by curve-head (stages/curve_head.py, which imports it), not by train-head
    unread = {"finetune-lp-ft": {"finetune.head"}, "train-head": {"curve", "curve.sizes", "base.seed"}}.get(
        name, set()
    )
    read = set().union(*(_params_read(s) for s in stage_scripts(script))) - unread
    assert read or not listed, f"{script} reads none of the params its stage lists?"
    for key in read:
        covered = any(k == key or key.startswith(f"{k}.") or k.startswith(f"{key}.") for k in listed)
        assert covered, f"{name}: {script.name} reads {key}, dvc.yaml params lack it"


def test_params_read_finds_keys_through_names():
    """The checker above sees through aliases: else it would pass by seeing nothing."""
    assert {"base.seed", "base.splits", "download"} <= _params_read(ROOT / "stages/download.py")
    assert {"base.seeds", "train_head.models", "finetune"} <= _params_read(ROOT / "stages/evaluate.py")


@pytest.mark.parametrize(
    ("statement", "module"),
    [
        ("from transferlab.report import sections as S", "src/transferlab/report/sections.py"),
        ("from transferlab import registry", "src/transferlab/registry.py"),
        ("from transferlab.verdict.stats import holm", "src/transferlab/verdict/stats.py"),
        ("import transferlab.training.lora", "src/transferlab/training/lora.py"),
        ("def f():\n    from transferlab.training import wise", "src/transferlab/training/wise.py"),
    ],
)
def test_every_import_form_counts_the_module_it_imports(tmp_path, statement, module):
    """`from package import module` imports the module, not only the package: missing it
    left the report without its sections as deps, and no change to them re-ran it."""
    script = tmp_path / "stage.py"
    script.write_text(statement + "\n")
    assert module in module_closure(script)


def test_a_script_that_imports_the_one_beside_it_depends_on_what_that_one_imports():
    """curve-head's script imports train-head's (stages/curve_head.py: ``import train_head``)
    and trains through it: that script, and every module it imports, are its deps too."""
    closure = module_closure(ROOT / "stages/curve_head.py")
    assert {"stages/train_head.py", "src/transferlab/features/store.py"} <= closure
    assert "curve.sizes" in _params_read(ROOT / "stages/curve_head.py")
    assert {"train_head.head", "base.seed"} <= set().union(
        *(_params_read(s) for s in stage_scripts(ROOT / "stages/curve_head.py"))
    )
