"""Write, then publish: outputs appear at their final path only once complete.

An interrupted stage must never leave something a later stage could mistake for a result.
Everything here writes next to the destination (same file system, so the final rename is
atomic for files) and moves into place only after the writer returned without error.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def remove(path: Path) -> None:
    """Delete a file or directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def publish(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; move it to ``path`` if the block succeeds.

    Works for files and directories. On error the temporary is removed and whatever was at
    ``path`` before is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    remove(tmp)
    try:
        yield tmp
    except BaseException:
        remove(tmp)
        raise
    if not tmp.exists():
        raise RuntimeError(f"{path}: the writer produced nothing")
    if path.is_dir() and not path.is_symlink():
        # A non-empty directory cannot be replaced in one rename: move the old one aside first.
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        remove(old)
        path.rename(old)
        tmp.rename(path)
        remove(old)
    else:
        os.replace(tmp, path)


def write_json(path: str | Path, obj: Any) -> None:
    with publish(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def parallel_map(fn: Callable[[T], R], items: Sequence[T], desc: str) -> list[R]:
    """``[fn(x) for x in items]`` on a thread per core, in order, with a progress bar.

    For per-file work that releases the GIL (hashing, image decoding): on tens of thousands
    of files the download stage's checks then run at the disk's and the cores' speed, in time
    linear in the data. The bar (tqdm) is silent when the output is not a terminal.
    """
    from tqdm import tqdm

    workers = min(32, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(fn, items) if workers > 1 else map(fn, items)
        return list(tqdm(results, total=len(items), desc=desc, disable=None, leave=False))


def code_version() -> str:
    """The git commit, marked dirty when tracked files differ from it."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
