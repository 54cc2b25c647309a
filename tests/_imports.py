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
            if node.module == "transferlab" or node.module.startswith("transferlab."):
                if node.module != "transferlab":
                    mods.add(node.module)
                # `from transferlab.report import sections` imports the module sections too
                mods.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names if a.name.startswith("transferlab"))
    return {m for m in mods if _file(m).exists()}


def _file(module: str) -> Path:
    """The file of ``transferlab.<...>``: a module, or a subpackage's ``__init__.py``."""
    rel = Path(*module.split(".")[1:])
    return PKG / rel / "__init__.py" if (PKG / rel).is_dir() else PKG / f"{rel}.py"


def _with_packages(module: str) -> set[str]:
    """``module`` and the subpackages Python runs first to import it (transferlab.a.b runs
    transferlab/a/__init__.py), each a dependency of whatever imports it."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts) + 1)}


def stage_scripts(script: Path) -> set[Path]:
    """``script`` and the scripts beside it that it imports (stages/curve_head.py imports
    stages/train_head.py: its folder is on sys.path when it runs), and theirs in turn."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            todo += [path.parent / f"{n}.py" for n in names if (path.parent / f"{n}.py").is_file()]
    return seen


def module_closure(script: Path) -> set[str]:
    """Paths (relative to the project root) of every transferlab module ``script`` needs,
    and of the scripts beside it that it imports."""
    seen: set[str] = set()
    scripts = stage_scripts(script)
    todo = [p for s in scripts for m in _direct(s) for p in _with_packages(m)]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        todo.extend(p for m in _direct(_file(mod)) for p in _with_packages(m))
    beside = {s.resolve().relative_to(ROOT).as_posix() for s in scripts - {script}}
    return {_file(m).relative_to(ROOT).as_posix() for m in seen} | beside
