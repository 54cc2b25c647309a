from pathlib import Path

import pytest
import yaml

from transferlab import registry
from transferlab.config import SECTIONS, ConfigError, load_params, parse_section

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_project_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.backbone.name == "efficientnet_lite0"
    ft = params.finetune
    # the default arms: the probe and features-augmented (train_head), and end to end frozen,
    # a partial unfreezing, full and lp-ft; progressive and scratch on request
    assert ft.runs == ["frozen", "partial", "full", "lp-ft"]
    assert params.train_head.models == ["features", "features-augmented"]
    # lp-ft trains with full's recipe exactly; only its grid is its own
    lpft, full = ft.strategy("lp-ft"), ft.strategy("full")
    assert lpft.model_dump(exclude={"lr"}) == full.model_dump(exclude={"lr"})
    assert lpft.lr == ft.lp_ft.lr  # the hyphenated section is read


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def _settable(section: str, key: str, defaults) -> bool:
    """Keys a config refuses to have set because they would do nothing (frozen's bn, ...)."""
    *path, leaf = key.split(".")
    cfg = defaults
    for part in path:
        cfg = getattr(cfg, part.replace("-", "_"))
    if section == "finetune" and len(path) > 1 and path[-1] == "budget":
        return False  # a strategy's deviations from finetune.budget: none unless wanted
    recipe = (
        registry.get(path[0]).params
        if section == "finetune" and path[0] in registry.names("end-to-end")
        else type(cfg)
    )
    if leaf in getattr(recipe, "_unused", ()):
        return False
    return not (leaf == "bn_momentum" and getattr(cfg, "bn", None) == "frozen")


@pytest.mark.parametrize("section", list(SECTIONS))
def test_params_yaml_lists_every_key_at_its_code_default(section):
    """Defaults live in one place: the code's default of every key a stage reads equals
    params.yaml's value, and params.yaml lists it (so `dvc exp show` shows it)."""
    defaults = parse_section(section, None)
    coded = _flat(defaults.model_dump(by_alias=True))
    listed = _flat(yaml.safe_load((ROOT / "params.yaml").read_text()).get(section) or {})
    missing = [k for k in coded if k not in listed and _settable(section, k, defaults)]
    assert not missing, f"params.yaml: {section} does not list {missing}"
    differ = {k: (listed[k], coded[k]) for k in listed if listed[k] != coded.get(k)}
    assert not differ, f"params.yaml vs code default (yaml, code): {differ}"


def test_every_strategy_gets_the_same_budget_by_default():
    ft = load_params(ROOT / "params.yaml").finetune
    every = registry.names("end-to-end")
    budgets = {
        s: (
            ft.strategy(s).steps,
            ft.strategy(s).batch_size,
            ft.strategy(s).warmup_steps,
            ft.strategy(s).eval_every,
        )
        for s in every
        if not ft.deviations(s)
    }
    assert len(set(budgets.values())) == 1, budgets
    # the one deviation by default, stated in params.yaml and shown by the report: frozen's
    # linear head on augmented images trains more (and cheaper) steps to converge
    assert {s: ft.deviations(s) for s in every if ft.deviations(s)} == {"frozen": {"steps": 1000}}


def test_the_listed_strategies_run():
    ft = parse_section("finetune", {"strategies": ["full", "scratch"], "from_probe": []})
    assert ft.runs == ["full", "scratch"]
    ft = parse_section("finetune", {"strategies": [], "from_probe": ["lp-ft"]})
    assert ft.runs == ["lp-ft"]


def test_strategy_defaults_survive_partial_overrides():
    # Overriding one key of `scratch` must keep scratch's own defaults, not the base class's.
    ft = parse_section("finetune", {"scratch": {"budget": {"steps": 30}}, "progressive": {"lr_decay": 0.7}})
    scratch = ft.strategy("scratch")
    assert scratch.bn == "train" and scratch.backbone_lr_mult == 1.0 and scratch.steps == 30
    assert ft.strategy("progressive").unfreeze_at == [0.2, 0.4, 0.6, 0.8]
    assert ft.strategy("frozen").bn == "frozen"


def test_one_budget_for_every_strategy_and_deviations_said():
    ft = parse_section(
        "finetune",
        {
            "budget": {"steps": 150, "batch_size": 16},
            "progressive": {"budget": {"steps": 200}},
            "frozen": {"budget": {}},  # its default deviation dropped
        },
    )
    for s in ("frozen", "partial", "full", "lp-ft", "scratch"):
        assert (ft.strategy(s).steps, ft.strategy(s).batch_size) == (150, 16) and not ft.deviations(s)
    assert ft.strategy("progressive").steps == 200 and ft.deviations("progressive") == {"steps": 200}
    # lp-ft trains with full's recipe, deviations included
    ft = parse_section("finetune", {"full": {"budget": {"label_smoothing": 0.1}}})
    assert ft.strategy("lp-ft").label_smoothing == 0.1 and ft.deviations("lp-ft") == {"label_smoothing": 0.1}


def test_yaml_exponent_strings_are_numbers(tmp_path):
    # PyYAML reads 1e-3 as a string; users (and `dvc exp run -S lr=1e-3`) write it anyway.
    p = tmp_path / "params.yaml"
    p.write_text("finetune:\n  full:\n    lr: [1e-3, 3e-3]\n")
    assert load_params(p).finetune.full.lr == pytest.approx([1e-3, 3e-3])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"train_head": {"learning_rate": 0.1}}, "train_head.learning_rate: unknown key"),
        ({"train_head": {"linear": {"l2": [-1]}}}, "train_head.linear.l2.0: Input should be greater than 0"),
        ({"train_head": {"linear": {"l2": []}}}, "l2 must list at least one value"),
        (
            {"train_head": {"mlp": {"epochs": "many"}}},
            "train_head.mlp.epochs: Input should be a valid integer",
        ),
        ({"train_head": {"head": "svm"}}, "train_head.head: Input should be"),
        ({"finetune": {"magic": {"lr": [1e-3]}}}, "finetune.magic: unknown key"),
        ({"download": {"val_fraction": 0.6, "test_fraction": 0.5}}, "val_fraction + test_fraction"),
        ({"download": {"val_fraction": 0}}, "download.val_fraction: Input should be greater than 0"),
        ({"download": {"test_fraction": 0}}, "download.test_fraction: Input should be greater than 0"),
        ({"trian_head": {}}, "unknown section 'trian_head'"),
        (
            {"finetune": {"strategies": ["progressive"], "progressive": {"unfreeze_at": [0.5, 0.25]}}},
            "strictly increasing",
        ),
        (
            {"finetune": {"strategies": ["progressive"], "progressive": {"unfreeze_at": []}}},
            "unfreeze_at must list at least one",
        ),
        (
            {"finetune": {"progressive": {"unfreeze_at": [0.5, 1.0]}}},
            "finetune.progressive.unfreeze_at.1: Input should be less than 1",
        ),
        (
            {"finetune": {"partial": {"unfreeze_blocks": 0}}},
            "finetune.partial.unfreeze_blocks: Input should be",
        ),
        (
            {"finetune": {"budget": {"steps": 20, "warmup_steps": 20}}},
            "warmup_steps (20) must be < steps (20)",
        ),
        (
            {"finetune": {"full": {"budget": {"steps": 10}}}},
            "finetune.full: Value error, warmup_steps (25) must be < steps (10)",
        ),
        ({"finetune": {"budget": {"eval_every": 600}}}, "eval_every (600) must be <= steps (500)"),
        ({"finetune": {"full": {"steps": 3}}}, "finetune.full.steps: unknown key"),
        ({"finetune": {"full": {"epochs": 3}}}, "finetune.full.epochs: unknown key"),
        ({"finetune": {"budget": {"epochs": 3}}}, "finetune.budget.epochs: unknown key"),
        ({"finetune": {"strategies": ["lp-ft"]}}, "strategies: 'lp-ft' is not one of"),
        ({"finetune": {"strategies": ["full", "full"]}}, "strategies lists a strategy twice"),
        ({"finetune": {"full": {"lr": []}}}, "strategies: full runs but finetune.full.lr is empty"),
        (
            {"finetune": {"search": {"first_rung": 0}}},
            "finetune.search.first_rung: Input should be greater than 0",
        ),
        ({"finetune": {"full": {"budget": {"lr": [1.0]}}}}, "finetune.full.budget.lr: unknown key"),
        ({"augment": {"crop_scale": [0.9, 0.5]}}, "augment: Value error, crop_scale"),
        # keys that would do nothing
        ({"finetune": {"strategies": ["scratch"], "scratch": {"bn": "frozen"}}}, "bn must be 'train'"),
        (
            {"finetune": {"frozen": {"backbone_lr_mult": 0.5}}},
            "backbone_lr_mult has no effect on this strategy",
        ),
        ({"finetune": {"frozen": {"bn": "train"}}}, "bn has no effect on this strategy"),
        ({"finetune": {"full": {"bn_momentum": 0.2}}}, "bn_momentum has no effect with bn: frozen"),
        ({"finetune": {"lp-ft": {"steps": 3}}}, "finetune.lp-ft.steps: unknown key"),
        ({"finetune": {"full": {"lr": [1e-3, 0.001]}}}, "lr lists a value twice"),
        ({"base": {"seeds": [0, 1], "splits": 3}}, "no seed in seeds [0, 1] uses splitting(s) [2]"),
        ({"base": {"splits": 0}}, "base.splits: Input should be greater than or equal to 1"),
        # across sections: lp-ft needs the probe
        ({"train_head": {"models": ["features-augmented"]}}, "finetune.lp-ft: starts from the linear probe"),
    ],
)
def test_bad_params_name_the_key(tmp_path, data, message):
    with pytest.raises(ConfigError) as err:
        load_params(write(tmp_path, data))
    text = str(err.value)
    assert message in text
    assert "\n" not in text
    assert text.startswith(str(tmp_path / "params.yaml"))


def test_missing_section_means_defaults():
    assert parse_section("report", None).title == "Transfer strategies compared"


def test_unknown_strategy_lookup():
    ft = parse_section("finetune", {})
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        ft.strategy("nope")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")


def test_the_lock_pins_every_dependency():
    """make setup installs from requirements.lock: every dependency pinned to one version."""
    import re
    import tomllib

    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["dev"]
    for dep in deps:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[ ;]", dep, maxsplit=1)[0].lower())
        assert name in pins, f"{name} is not pinned in requirements.lock"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
