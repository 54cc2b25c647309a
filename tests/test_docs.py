"""The README and docs/ say only what works: every `-S` override they show is a valid params
change, every `make` target they name exists, and every link between the pages resolves.
(tests/test_pipeline.py runs the README's experiment commands themselves, as typed.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from transferlab.config import load_params

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands(page: Path) -> list[str]:
    """The shell commands in the page's ```sh blocks, continuation lines joined."""
    text = page.read_text()
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line:
                out.append(line)
    return out


def _overrides(command: str) -> list[list[tuple[str, object]]]:
    """The params each `dvc exp run ... -S k=v` makes: one list per variation (a queued
    `-S 'k=a,b,c'` is three, as DVC expands it)."""
    words = shlex.split(command)
    sets = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "-S"]
    variations: list[list[tuple[str, object]]] = [[]]
    for item in sets:
        key, value = item.split("=", 1)
        values = [value] if value.startswith("[") or "--queue" not in words else value.split(",")
        variations = [v + [(key, yaml.safe_load(x))] for v in variations for x in values]
    return variations


EXP_RUNS = [
    (page.relative_to(ROOT).as_posix(), cmd)
    for page in PAGES
    for cmd in _commands(page)
    if cmd.startswith("dvc exp run") and " -S " in cmd
]


def test_the_pages_show_experiments():
    assert len(EXP_RUNS) >= 8  # the README's and the docs' sweeps, profiles and opt-ins


@pytest.mark.parametrize(("page", "command"), EXP_RUNS, ids=[f"{p}:{i}" for i, (p, _) in enumerate(EXP_RUNS)])
def test_every_override_shown_is_a_valid_params_change(tmp_path, page, command):
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    for variation in _overrides(command):
        params = yaml.safe_load(yaml.safe_dump(base))
        for key, value in variation:
            node = params
            *path, leaf = key.split(".")
            for part in path:
                assert part in node, f"{page}: {command}: {key}: no section {part!r} in params.yaml"
                node = node[part]
            node[leaf] = value
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        load_params(tmp_path / "params.yaml")  # raises ConfigError naming the key


def test_make_targets_named_exist():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    for page in PAGES:
        for cmd in _commands(page):
            if cmd.startswith("make "):
                assert cmd.split()[1] in targets, f"{page.name}: {cmd}"


def test_links_between_pages_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: link to {target}"


def test_the_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
