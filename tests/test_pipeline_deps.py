"""dvc.yaml must name every library module a stage runs, or DVC would skip needed re-runs."""

from pathlib import Path

import pytest
import yaml
from _imports import module_closure, stage_scripts

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
    # extraction and every strategy that does not start from the probe
    for name in ("extract-features", "finetune"):
        stage = PIPELINE[name]
        assert not any(p.startswith("train_head") for p in stage["params"])
        assert not any(d.startswith("data/models/features") for d in stage["deps"])
    assert any(d.startswith("data/models/features") for d in PIPELINE["finetune-from-probe"]["deps"])


def test_one_stage_per_strategy_and_seed_owns_its_search():
    """One stage per strategy and seed (not per rate): its own params section, the budget
    and the search settings; the rate is searched inside it, so no rate is in its name."""
    for name, listed in (("finetune", "strategies"), ("finetune-from-probe", "from_probe")):
        stage = PIPELINE[name]
        assert stage["matrix"] == {"strategy": f"${{finetune.{listed}}}", "seed": "${base.seeds}"}
        assert stage["cmd"] == "python stages/finetune.py ${item.strategy} --seed ${item.seed}"
        assert "data/models/${item.strategy}-s${item.seed}" in stage["outs"]
        assert {"finetune.${item.strategy}", "finetune.budget", "finetune.search"} <= set(stage["params"])
        # no other strategy's section: changing one grid re-runs that strategy alone
        others = {p for p in stage["params"] if p.startswith("finetune.")} - {
            "finetune.${item.strategy}",
            "finetune.budget",
            "finetune.search",
            "finetune.head",
        }
        assert others == (
            {"finetune.full.budget", "finetune.full.backbone_lr_mult", "finetune.full.bn"}
            if listed == "from_probe"
            else set()
        )


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
    roots: set[str] = {
        t.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Call)
        and getattr(node.value.func, "id", None) == "load_params"
        for t in node.targets
        if isinstance(t, ast.Name)
    }

    def is_root(e: ast.expr) -> bool:
        """The params object: a name bound to load_params(...), or an attribute of that name
        on another object (``job.p``, where ``p`` holds the params)."""
        return (isinstance(e, ast.Name) and e.id in roots) or (
            isinstance(e, ast.Attribute) and e.attr in roots
        )

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
            if isinstance(target, ast.Name) and isinstance(value, ast.Attribute) and is_root(value.value):
                aliases[target.id] = value.attr
    read = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not isinstance(node.value, ast.Name | ast.Attribute):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in aliases:
            section, field = aliases[node.value.id], node.attr
        elif isinstance(node.value, ast.Attribute) and is_root(node.value.value):
            if node.value.attr not in SECTIONS:
                continue
            section, field = node.value.attr, node.attr
        elif is_root(node.value):
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
    # endtoend.py reads finetune.head only for models that do not start from the probe;
    # train_head.py reads curve.sizes and base.seed (the subsets' draw) only in curves(), run
    # by curve-head (stages/curve_head.py, which imports it), not by train-head
    # and a curve point scores no shifted test images (run_strategy reads shift, run_curve_point not)
    unread = {
        "finetune-from-probe": {"finetune.head"},
        "train-head": {"curve", "curve.sizes", "base.seed"},
        "curve-finetune": {"shift", "shift.kinds", "shift.severity"},
    }.get(name, set())
    read = set().union(*(_params_read(s) for s in _params_readers(script))) - unread
    if name == "export":
        # export.refit trains the recommended run's strategy again from the params that run was
        # trained with (transferlab.training.refit): a change to any of them that matters
        # retrains that run, whose checkpoint recommended_run.json (a dep) names by SHA-256
        read = {k for k in read if k.split(".")[0] == "export"}
    assert read or not listed, f"{script} reads none of the params its stage lists?"
    for key in read:
        covered = any(k == key or key.startswith(f"{k}.") or k.startswith(f"{key}.") for k in listed)
        assert covered, f"{name}: {script.name} reads {key}, dvc.yaml params lack it"


def _params_readers(script: Path) -> list[Path]:
    """The stage script, the scripts beside it that it imports, and the library modules it
    runs that read the params themselves (``load_params``: transferlab.training.endtoend,
    which the thin finetune stage hands its params file to)."""
    library = [
        ROOT / m
        for m in sorted(module_closure(script))
        if m.startswith("src/") and "load_params(" in (ROOT / m).read_text() and not m.endswith("config.py")
    ]
    return [*stage_scripts(script), *library]


def test_params_read_finds_keys_through_names():
    """The checker above sees through aliases: else it would pass by seeing nothing."""
    assert {"base.seed", "base.splits", "download"} <= _params_read(ROOT / "stages/download.py")
    assert {"base.seeds", "train_head.models", "finetune"} <= _params_read(ROOT / "stages/evaluate.py")
    # the finetune stage hands its params to the library, which reads them through the job
    endtoend = ROOT / "src/transferlab/training/endtoend.py"
    assert endtoend in _params_readers(ROOT / "stages/finetune.py")
    assert {"base.device", "base.image_cache_mb", "shift", "augment", "finetune"} <= _params_read(endtoend)


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
    assert {
        "stages/train_head.py",
        "src/transferlab/features/store.py",
        "src/transferlab/training/heads.py",
    } <= closure
    assert "curve.sizes" in _params_read(ROOT / "stages/curve_head.py")
    # train_head.py hands its whole section to the library (transferlab.training.heads)
    assert {"train_head", "base.seed"} <= set().union(
        *(_params_read(s) for s in stage_scripts(ROOT / "stages/curve_head.py"))
    )
