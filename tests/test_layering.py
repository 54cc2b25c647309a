"""The library's folders follow the pipeline, and imports only ever point back along it.

    core (transferlab/*.py: errors, config, registry, layout, runtime, selection, cli, _io)
      <- data <- features <- training <- verdict <- report, serve

A module may import the shared core, its own subpackage and the subpackages before its own;
never one after it (report and serve, the two ends, not each other). So there is no cycle
between subpackages, and a reader can take them in order.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "transferlab"
ORDER = {"core": 0, "data": 1, "features": 2, "training": 3, "verdict": 4, "report": 5, "serve": 5}


def _layer(module: str) -> str:
    """``transferlab.a.b`` -> ``a`` for a subpackage, ``core`` for the top-level modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (PKG / parts[-1]).is_dir() else "core"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):  # lazy imports inside functions too
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("transferlab"):
            if node.module == "transferlab":
                found |= {f"transferlab.{a.name}" for a in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("transferlab.")}
    return found


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        out.append((".".join(["transferlab", *rel.parts]), path))
    return out


def test_every_subpackage_is_in_the_order():
    subpackages = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subpackages == set(ORDER) - {"core"}


def test_imports_point_back_along_the_pipeline():
    wrong = []
    for module, path in _modules():
        if module == "transferlab.__init__":
            continue
        mine = _layer(module)
        for imported in _imports(path):
            theirs = _layer(imported)
            if theirs == mine:
                continue
            if ORDER[theirs] >= ORDER[mine]:
                wrong.append(f"{module} ({mine}) imports {imported} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_subpackage_inits_import_nothing():
    """Importing transferlab.training.records must not pull in torch through
    training/__init__.py: evaluate reads run summaries without the training code."""
    for pkg in set(ORDER) - {"core"}:
        tree = ast.parse((PKG / pkg / "__init__.py").read_text())
        assert all(isinstance(n, ast.Expr) for n in tree.body), pkg
