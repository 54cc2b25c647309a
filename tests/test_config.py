from pathlib import Path

import pytest
import yaml

from transferlab.config import SECTIONS, ConfigError, load_params, parse_section

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_project_params_are_valid():
    params = load_params(ROOT / "params.yaml", *SECTIONS)
    assert params["backbone"].name == "efficientnet_lite0"
    ft = params["finetune"]
    assert ft.runs == ["frozen", "partial", "full", "progressive", "scratch", "lp-ft"]
    assert ft.strategy("lp-ft").epochs == 8  # the hyphenated section is read


def test_strategy_defaults_survive_partial_overrides():
    # Overriding one key of `scratch` must keep scratch's own defaults, not the base class's.
    ft = parse_section("finetune", {"scratch": {"epochs": 3}, "progressive": {"epochs": 9}})
    assert ft.scratch.bn == "train" and ft.scratch.backbone_lr_mult == 1.0 and ft.scratch.epochs == 3
    assert ft.progressive.unfreeze_epochs == [1, 2, 3, 4]
    assert ft.frozen.bn == "frozen"


def test_yaml_exponent_strings_are_numbers(tmp_path):
    # PyYAML reads 1e-3 as a string; users (and `dvc exp run -S lr=1e-3`) write it anyway.
    p = tmp_path / "params.yaml"
    p.write_text("train_head:\n  lr: 1e-3\n")
    assert load_params(p, "train_head")["train_head"].lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"train_head": {"learning_rate": 0.1}}, "train_head.learning_rate: unknown key"),
        ({"train_head": {"lr": -1}}, "train_head.lr: Input should be greater than 0"),
        ({"train_head": {"epochs": "many"}}, "train_head.epochs: Input should be a valid integer"),
        ({"train_head": {"head": {"kind": "svm"}}}, "train_head.head.kind: Input should be"),
        ({"finetune": {"strategies": ["frozen", "magic"]}}, "finetune.strategies.1: Input should be"),
        ({"download": {"val_fraction": 0.6, "test_fraction": 0.5}}, "val_fraction + test_fraction"),
        ({"trian_head": {}}, "unknown section 'trian_head'"),
        ({"finetune": {"strategies": ["lp-ft"]}}, "finetune.strategies.0: Input should be"),
        ({"finetune": {"progressive": {"epochs": 4, "unfreeze_epochs": [2, 1]}}}, "strictly increasing"),
        (
            {"finetune": {"progressive": {"epochs": 4, "unfreeze_epochs": [2, 4]}}},
            "not before the last epoch",
        ),
        (
            {"finetune": {"partial": {"unfreeze_blocks": 0}}},
            "finetune.partial.unfreeze_blocks: Input should be",
        ),
        ({"train_head": {"epochs": 2, "warmup_epochs": 2}}, "warmup_epochs (2) must be < epochs (2)"),
        ({"augment": {"crop_scale": [0.9, 0.5]}}, "augment: Value error, crop_scale"),
    ],
)
def test_bad_params_name_the_key(tmp_path, data, message):
    with pytest.raises(ConfigError) as err:
        load_params(write(tmp_path, data), *SECTIONS)
    text = str(err.value)
    assert message in text
    assert "\n" not in text
    assert text.startswith(str(tmp_path / "params.yaml"))


def test_missing_section_means_defaults():
    assert parse_section("evaluate", None).batch_size == 256


def test_unknown_strategy_lookup():
    ft = parse_section("finetune", {})
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        ft.strategy("nope")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml", "base")
