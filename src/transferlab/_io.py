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
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from transferlab.errors import DataError

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
    move_into_place(tmp, path)


def move_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished ``tmp`` to ``path``, replacing what was there."""
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
    """A JSON file a stage wrote (or a user edited): unreadable, it is a one-line error
    naming the file, not a traceback from the decoder."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(
            f"{path}: not valid JSON ({err}); re-run the stage that writes it (dvc repro)"
        ) from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# Per-item time below which threads cost more than they give: work this short is mostly
# Python (opening a tiny file, a small PNG) and holds the GIL, so a second thread only adds
# contention and futures; measured on the digits' 8x8 PNGs, decoding ran 2x slower threaded.
SERIAL_BELOW_S = 0.5e-3
PROBE_ITEMS = 8


def parallel_map(fn: Callable[[T], R], items: Sequence[T], desc: str) -> list[R]:
    """``[fn(x) for x in items]`` in order, with a progress bar, on a thread per core when
    the work pays for threads.

    For per-file work that releases the GIL (hashing, decoding large images): on tens of
    thousands of files the download stage's checks then run at the disk's and the cores'
    speed, in time linear in the data. The first items run in series and are timed; when
    each takes under ``SERIAL_BELOW_S`` the rest stay in series (see there). Threads take
    items in chunks, so a future's overhead is paid per chunk, not per file. The bar (tqdm)
    is silent when the output is not a terminal.
    """
    from tqdm import tqdm

    workers = min(32, os.cpu_count() or 1)
    with tqdm(total=len(items), desc=desc, disable=None, leave=False) as bar:
        probe = items[:PROBE_ITEMS]
        start = time.perf_counter()
        results = [fn(x) for x in probe]
        bar.update(len(probe))
        rest = items[len(probe) :]
        if workers == 1 or not rest or (time.perf_counter() - start) / max(len(probe), 1) < SERIAL_BELOW_S:
            for x in rest:
                results.append(fn(x))
                bar.update()
            return results
        size = max(1, min(64, len(rest) // (4 * workers)))

        def run(chunk: Sequence[T]) -> list[R]:
            return [fn(x) for x in chunk]

        with ThreadPoolExecutor(max_workers=workers) as pool:
            chunks = [rest[i : i + size] for i in range(0, len(rest), size)]
            for part in pool.map(run, chunks):
                results.extend(part)
                bar.update(len(part))
        return results


# What "the code" is: a run's own outputs (dvc.lock, results/, reports/ — rewritten while
# `dvc repro` runs) and params (recorded next to every result) do not make it dirty.
CODE_PATHS = ("src", "stages", "dvc.yaml", "pyproject.toml", "requirements.lock")


def code_version() -> str:
    """The git commit, marked dirty when the code (CODE_PATHS) differs from it."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
