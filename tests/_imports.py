"""Which transferlab modules a file imports, directly or through other transferlab modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "transferlab"


def _direct(path: Path) -> set[str]:
    mods: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "transferlab":
                mods.update(f"transferlab.{a.name}" for a in node.names)
            elif node.module.startswith("transferlab."):
                mods.add(node.module)
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names if a.name.startswith("transferlab"))
    return {m for m in mods if (PKG / f"{m.split('.', 1)[1]}.py").exists()}


def module_closure(script: Path) -> set[str]:
    """Paths (relative to the project root) of every transferlab module ``script`` needs."""
    seen: set[str] = set()
    todo = list(_direct(script))
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        todo.extend(_direct(PKG / f"{mod.split('.', 1)[1]}.py"))
    return {f"src/transferlab/{m.split('.', 1)[1]}.py" for m in seen}
