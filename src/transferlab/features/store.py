"""The feature store: pooled backbone features of every image, computed once, in Zarr v3.

Layout::

    data/features/                 attrs: {"fingerprint": {...}}
        images/features  float32 (N, D)   every image of the manifest; chunked, sharded
        images/labels    int64   (N,)
        images/row       int64   (N,)     row number in the manifest
        augmented/...    (K*M rows)       K augmented views of each of the M images that
                                          train in some splitting, when
                                          extract_features.augment_views = K > 0

The store holds images, not splits: a reader selects the rows of the split it needs
(:meth:`FeatureStore.select`) from the manifest's splitting column, so re-splitting the data
(``base.splits``) reuses the one store. Cached features are not condemned to go without
augmentation: ``augmented`` holds K views per training image, extracted once at K times the
cost of the training images, and the ``features-augmented`` head trains on them next to the
originals.

Rows are written in a seeded random order, not in manifest order, which is sorted by path
and so by class: a head streamed block by block from a large store then sees every block
as a random sample of all classes, as a full shuffle would give it, whatever subset of
rows it selects. ``row`` maps each store row back to the manifest.

The fingerprint says what the features are: backbone, SHA-256 of its weights, input size,
normalization, crop and the manifest's content hash. A reader states what it expects and
:meth:`FeatureStore.open` refuses a store made from anything else, naming the differences.

Rows are written batch by batch through a buffer aligned to shard boundaries, so memory is
bounded by one shard and every shard is written exactly once.

On a GPU, extraction keeps the backbone busy: batches are decoded and transformed ahead of
the forward pass (in DataLoader workers, or in a prefetch thread when there are none) and
written to the store by a writer thread, each through a queue of ``PIPELINE_DEPTH`` batches,
so that memory stays bounded and the forward pass never waits for a write. On a CPU the
forward pass itself uses every core, and the same steps run in series (see
:func:`extract_features`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, Dataset, Subset

from transferlab._io import move_into_place, remove
from transferlab.errors import DataError, FingerprintMismatch
from transferlab.features.backbones import Backbone, backbone_fingerprint
from transferlab.runtime import Plan, Ranks, memory_format, place, sync

STORE_FORMAT = 3  # 3: one group of all images (and one of views), splits selected by readers
IMAGES, AUGMENTED = "images", "augmented"
SHIFTED = "shifted-"  # + a shift kind: the test images under that shift (params: shift)


def shifted_group(kind: str) -> str:
    return SHIFTED + kind


CHUNK_ROWS = 1024
SHARD_ROWS = 16384
PIPELINE_DEPTH = 4  # batches in flight ahead of the forward pass, and behind it to the writer


@dataclass(frozen=True)
class Fingerprint:
    backbone: str
    weights_sha256: str | None
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    interpolation: str
    manifest_sha256: str
    # Augmented views of each training image in the "augmented" group, and how they were made.
    augment_views: int = 0
    augment: dict[str, Any] | None = None
    # The robustness view's shifted test images (params: shift), one group per kind.
    shift: dict[str, Any] | None = None
    format: int = STORE_FORMAT

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def of(
        cls,
        backbone: Backbone,
        manifest_sha256: str,
        augment_views: int = 0,
        augment: dict[str, Any] | None = None,
        shift: dict[str, Any] | None = None,
    ) -> Fingerprint:
        fp = backbone_fingerprint(backbone)
        fp["mean"], fp["std"] = tuple(fp["mean"]), tuple(fp["std"])
        return cls(
            **fp,
            manifest_sha256=manifest_sha256,
            augment_views=augment_views,
            augment=augment if augment_views else None,
            shift=shift,
        )


def geometry(n: int, shard_rows: int = SHARD_ROWS) -> tuple[int, int]:
    """(chunk, shard) rows of a group of ``n`` rows: a shard holds whole chunks. It depends on
    ``n`` and ``shard_rows`` only, never on how many processes write, so the store is the
    same whoever wrote it and an interrupted run can resume with any number of them."""
    shard = min(shard_rows, max(n, 1))
    chunk = min(CHUNK_ROWS, shard)
    return chunk, -(-shard // chunk) * chunk


def _create_group_arrays(group: zarr.Group, name: str, n: int, dim: int, shard_rows: int) -> None:
    chunk, shard = geometry(n, shard_rows)
    group.create_array(
        f"{name}/features", shape=(n, dim), dtype="float32", chunks=(chunk, dim), shards=(shard, dim)
    )
    group.create_array(f"{name}/labels", shape=(n,), dtype="int64", chunks=(chunk,), shards=(shard,))
    group.create_array(f"{name}/row", shape=(n,), dtype="int64", chunks=(chunk,), shards=(shard,))


class _ShardWriter:
    """Writes rows ``[start, end)`` of one group, whole shards at a time, and reports each
    finished shard (``done(index)``). ``start`` is on a shard boundary and ``end`` is one or
    the group's end, so every shard file is written once, by one writer: zarr-python has no
    locks, and two processes writing into one shard lose rows."""

    def __init__(self, group: zarr.Group, name: str, shard: int, start: int, end: int, done: Any) -> None:
        self.arrays: tuple[Any, ...] = tuple(group[f"{name}/{a}"] for a in ("features", "labels", "row"))
        self.shard, self.written, self.end, self.done = shard, start, end, done
        self._buf: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._buffered = 0

    def append(self, feats: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> None:
        self._buf.append((feats, labels, rows))
        self._buffered += len(feats)
        if self._buffered >= self.shard:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        parts = [np.concatenate(p) for p in zip(*self._buf, strict=True)]
        taken = 0
        while taken < len(parts[0]):
            size = min(self.shard, self.end - self.written)
            if len(parts[0]) - taken < size:
                break  # not a whole shard yet
            for array, part in zip(self.arrays, parts, strict=True):
                array[self.written : self.written + size] = part[taken : taken + size]
            self.done(self.written // self.shard)
            self.written += size
            taken += size
        self._buf = [tuple(p[taken:] for p in parts)] if taken < len(parts[0]) else []  # type: ignore[list-item]
        self._buffered = len(parts[0]) - taken

    def close(self) -> None:
        self._flush()
        if self.written != self.end or self._buffered:
            raise RuntimeError(
                f"wrote rows up to {self.written} (+{self._buffered} left), expected {self.end}"
            )


@dataclass
class ExtractionStats:
    images: int
    seconds: float
    forward_seconds: float
    split_seconds: dict[str, float]
    split_images: dict[str, int]
    # per split: whether its input ran in the prefetch thread (see extract_features)
    prefetched: dict[str, bool] = field(default_factory=dict)
    # rows found already written by an interrupted earlier run, per group
    resumed: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def forward_images_per_s(self) -> float:
        return self.images / self.forward_seconds if self.forward_seconds else 0.0

    @classmethod
    def of_job(cls, per_rank: list[ExtractionStats]) -> ExtractionStats:
        """One process's stats, or the job's from every process's (torchrun): images summed,
        times the slowest process's (what the job waited for), so a process that owned no
        shard neither divides by zero nor hides the others' work."""
        if len(per_rank) == 1:
            return per_rank[0]
        names = list(per_rank[0].split_images)
        return cls(
            images=sum(s.images for s in per_rank),
            seconds=max(s.seconds for s in per_rank),
            forward_seconds=max(s.forward_seconds for s in per_rank),
            split_seconds={k: max(s.split_seconds[k] for s in per_rank) for k in names},
            split_images={k: sum(s.split_images[k] for s in per_rank) for k in names},
            prefetched={k: any(s.prefetched[k] for s in per_rank) for k in names},
            resumed={k: sum(s.resumed[k] for s in per_rank) for k in names},
        )


_END = object()


def prefetch(items: Iterable[Any], depth: int = PIPELINE_DEPTH) -> Iterator[Any]:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead.

    Decoding (PIL) and torch's transforms release the GIL, so the next batches are prepared
    while the caller runs the forward pass. An exception in the thread is raised here; when
    the caller stops early the thread is told to stop and the queue drained so it can.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                q.put(item)
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as err:  # handed to the consumer, raised there
            q.put(err)

    thread = threading.Thread(target=produce, name="transferlab-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


class _BackgroundWriter:
    """Runs store writes in one thread, in order, with at most ``depth`` pending."""

    def __init__(self, depth: int = PIPELINE_DEPTH) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transferlab-write")
        self._pending: list[Future] = []
        self.depth = depth

    def submit(self, fn: Any, *args: Any) -> None:
        if self.depth == 0:  # in series: here, after what is still pending
            self.drain()
            fn(*args)
            return
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > self.depth:
            self._pending.pop(0).result()  # raises the write's error, if any

    def drain(self) -> None:
        while self._pending:
            self._pending.pop(0).result()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


# overlap=None on CPU: after PROBE_BATCHES batches in series (the first left out: it pays for
# warm-up), prefetch when waiting for input took more than this fraction of the forward time.
PROBE_BATCHES = 4
OVERLAP_WHEN = 0.25

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Group:
    """One group of the store: ``rows`` (the manifest row of each store row, in store order)
    and ``batches(start, end)``, the (images, labels) of store rows ``[start, end)`` in that
    order. A range, not the whole group, so that each process reads only its shards."""

    rows: np.ndarray
    batches: Callable[[int, int], Batches]

    @classmethod
    def from_loader(cls, rows: np.ndarray, loader: Batches) -> Group:
        """A group read by one loader over all its rows, in order: for one process that
        extracts the whole group (no torchrun ranks, no part to resume)."""
        n = len(rows)

        def batches(start: int, end: int) -> Batches:
            if (start, end) != (0, n):
                raise ValueError(
                    f"rows {start}..{end} of {n} asked of a group read by one loader; "
                    "build it with row_ranges to extract part of it"
                )
            return loader

        return cls(np.asarray(rows), batches)


def row_ranges(dataset: Dataset, **loader_kwargs: Any) -> Callable[[int, int], Batches]:
    """``Group.batches`` for a map-style ``dataset`` whose item i is store row i: a
    DataLoader (``loader_kwargs``) over items ``[start, end)``, in order."""

    def batches(start: int, end: int) -> Batches:
        return DataLoader(Subset(dataset, range(start, end)), shuffle=False, **loader_kwargs)

    return batches


def staging_path(out: Path) -> Path:
    """Where the store is built before it appears at ``out``; kept when extraction stops
    half-way, so that the next run resumes it (see :func:`extract_features`)."""
    return out.with_name(f".{out.name}.partial")


def n_shards(n: int, shard_rows: int) -> int:
    """How many shards a group of ``n`` rows has (the last may be short)."""
    _, shard = geometry(n, shard_rows)
    return -(-n // shard)


def owned_shards(count: int, ranks: Ranks) -> range:
    """The shards (of ``count``) that ``ranks`` writes: a contiguous block, as even as can be,
    the lower ranks taking one more where they do not divide. With fewer shards than
    processes the highest ranks own none, never rank 0, which writes the summary."""
    base, extra = divmod(count, ranks.size)
    first = ranks.rank * base + min(ranks.rank, extra)
    return range(first, first + base + (ranks.rank < extra))


def owned_rows(n: int, shard_rows: int, ranks: Ranks) -> range:
    """The rows of a group of ``n`` that ``ranks`` writes: a contiguous block of whole shards
    (empty where this process owns none)."""
    _, shard = geometry(n, shard_rows)
    mine = owned_shards(n_shards(n, shard_rows), ranks)
    return range(min(n, mine.start * shard), min(n, mine.stop * shard))


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Consecutive shard indices as [first, last + 1) ranges."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


@functools.cache
def _code_sha256() -> str:
    """The library's source: a staging store left by other code (an interrupted run, then
    an upgrade) is not resumed, even for the same fingerprint."""
    h = hashlib.sha256()
    package = Path(__file__).parents[1]
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def _prepare_staging(staging: Path, expected: dict[str, Any], groups: Mapping[str, Group], dim: int) -> None:
    """Keep a staging store left by an interrupted run of the same extraction; otherwise
    start a new one, with every array created (empty) and the fingerprint set."""
    done = staging / DONE
    if staging.exists():
        try:
            same = json.loads((done / "expected.json").read_text()) == expected
        except (OSError, ValueError):
            same = False
        if same:
            return
        remove(staging)
    group = zarr.open_group(staging, mode="w")
    group.attrs["fingerprint"] = expected["fingerprint"]
    for name, g in groups.items():
        _create_group_arrays(group, name, len(g.rows), dim, expected["shard_rows"])
    done.mkdir()
    (done / "expected.json").write_text(json.dumps(expected))


DONE = ".done"  # in the staging store: one empty file per finished shard, "<group>-<index>"


@torch.inference_mode()
def _extract_run(
    backbone: Backbone,
    g: Group,
    start: int,
    end: int,
    writer: _ShardWriter,
    background: _BackgroundWriter,
    device: torch.device,
    *,
    amp: bool,
    overlap: bool,
    probe: bool,
    clock: Callable[[int], None] | None = None,
) -> tuple[int, float, bool]:
    """Rows [start, end) of group ``g`` (whole shards) through the backbone into ``writer``.
    Returns (rows written, forward seconds, whether input ran in the prefetch thread).

    ``overlap``: loaders without worker processes run in a prefetch thread (:func:`prefetch`)
    and writes go through a writer thread, so the forward pass does not wait for either. On
    CUDA extraction always overlaps (the CPU is free while the GPU computes); on CPU the
    forward pass already keeps every core busy and an extra thread slows it down (it preempts
    torch's threads, and each parallel op waits for its slowest thread), which pays only when
    input is expensive. So on CPU (``probe``) the first batches are timed in series, and input
    moves to the prefetch thread when waiting for it took more than ``OVERLAP_WHEN`` of the
    forward time: the benchmark measures the prefetch thread slower on the small default
    digits and faster on 512 px JPEGs."""
    loader = g.batches(start, end)
    in_workers = getattr(loader, "num_workers", 0) > 0
    source: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(loader)
    prefetching = overlap and not in_workers
    if prefetching:
        source = prefetch(source)
    background.depth = PIPELINE_DEPTH if overlap else 0
    probing = probe and not in_workers
    waited = computed = fwd = 0.0
    pos, batches = start, 0
    while True:
        t = time.perf_counter()
        try:
            images, labels = next(source)
        except StopIteration:
            break
        t_wait = time.perf_counter() - t
        batches += 1
        images = images.to(device, non_blocking=True, memory_format=memory_format(device))
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            feats = backbone(images).float()
        sync(device)
        dt = time.perf_counter() - t
        fwd += dt
        if batches > 1:  # the first batch pays for warm-up
            waited, computed = waited + t_wait, computed + dt
        k = len(labels)
        background.submit(
            writer.append, feats.cpu().numpy(), labels.numpy().astype(np.int64), g.rows[pos : pos + k]
        )
        pos += k
        if clock is not None:
            clock(k)
        if probing and batches == PROBE_BATCHES:
            probing = False
            if waited > OVERLAP_WHEN * computed:  # input-bound: hide it
                source = prefetch(source)  # the rest of the same iterator
                prefetching = True
                background.depth = PIPELINE_DEPTH
    background.submit(writer.close)
    background.drain()
    return pos - start, fwd, prefetching


def _extract_shards(
    backbone: Backbone,
    store: zarr.Group,
    name: str,
    g: Group,
    pending: list[int],
    shard: int,
    done_dir: Path,
    background: _BackgroundWriter,
    device: torch.device,
    **run: Any,
) -> tuple[int, float, bool]:
    """The ``pending`` shards of group ``name``, each contiguous run of them in one pass, each
    shard marked done in the staging store once written. Returns (rows, forward seconds,
    whether input ran in the prefetch thread)."""
    rows, fwd, prefetched = 0, 0.0, False
    n = len(g.rows)

    def mark(index: int) -> None:
        (done_dir / f"{name}-{index}").touch()

    for first, last in _runs(pending):
        start, end = first * shard, min(n, last * shard)
        writer = _ShardWriter(store, name, shard, start, end, mark)
        written, seconds, prefetching = _extract_run(
            backbone, g, start, end, writer, background, device, **run
        )
        rows, fwd, prefetched = rows + written, fwd + seconds, prefetched or prefetching
    return rows, fwd, prefetched


def _extract_groups(
    backbone: Backbone,
    groups: Mapping[str, Group],
    staging: Path,
    device: torch.device,
    ranks: Ranks,
    shard_rows: int,
    *,
    amp: bool,
    overlap: bool,
    probe: bool,
) -> ExtractionStats:
    """This process's shards of every group (those not already marked done) into the
    staging store; its stats (``seconds`` is set by the caller, publishing included)."""
    store = zarr.open_group(staging, mode="r+")
    done_dir = staging / DONE
    stats = ExtractionStats(images=0, seconds=0.0, forward_seconds=0.0, split_seconds={}, split_images={})
    # writes run in the writer thread only while the input runs in the prefetch thread: on a
    # CPU in series even a short-lived second thread slows the forward pass measurably
    background = _BackgroundWriter(depth=PIPELINE_DEPTH if overlap else 0)
    work = {name: _MyShards.of(name, len(g.rows), shard_rows, ranks, done_dir) for name, g in groups.items()}
    clock = _plan_clock(sum(w.rows(w.pending) for w in work.values())) if ranks.main else None
    try:
        for name, g in groups.items():
            t_split = time.perf_counter()
            w = work[name]
            stats.resumed[name] = w.rows([s for s in w.mine if s not in w.pending])
            rows, seconds, stats.prefetched[name] = _extract_shards(
                backbone,
                store,
                name,
                g,
                w.pending,
                w.shard,
                done_dir,
                background,
                device,
                amp=amp,
                overlap=overlap,
                probe=probe,
                clock=clock,
            )
            stats.split_images[name] = rows
            stats.images += rows
            stats.forward_seconds += seconds
            stats.split_seconds[name] = time.perf_counter() - t_split
    finally:
        background.close()
    return stats


@dataclass(frozen=True)
class _MyShards:
    """This process's shards of one group, and those of them not yet marked done: what the
    plan line counts and what the extraction then writes (one list, read by both)."""

    n: int  # rows of the group
    shard: int  # rows per shard (the last may hold fewer)
    mine: list[int]
    pending: list[int]

    @classmethod
    def of(cls, name: str, n: int, shard_rows: int, ranks: Ranks, done_dir: Path) -> _MyShards:
        _, shard = geometry(n, shard_rows)
        mine = owned_shards(n_shards(n, shard_rows), ranks)
        pending = [s for s in mine if not (done_dir / f"{name}-{s}").exists()]
        return cls(n, shard, list(mine), pending)

    def rows(self, shards: list[int]) -> int:
        return sum(min(self.shard, self.n - s * self.shard) for s in shards)


def _plan_clock(rows: int) -> Callable[[int], None]:
    """The extraction's plan line (:class:`~transferlab.runtime.Plan`) over the ``rows`` this
    process has left to extract (original images and augmented views), timed from here."""
    plan = Plan("extract-features", rows, None, 1, what="rows (images and augmented views)")
    start, seen = time.perf_counter(), 0

    def clock(k: int) -> None:
        nonlocal seen
        seen += k
        plan(seen, time.perf_counter() - start)

    return clock


def _publish(staging: Path, out: Path, groups: Mapping[str, Group], shard_rows: int) -> None:
    """Move the staging store to ``out`` once every shard of every group is marked done;
    otherwise keep it, to resume, and say which shards are missing."""
    done_dir = staging / DONE
    missing = [
        f"{name}-{s}"
        for name, g in groups.items()
        for s in range(n_shards(len(g.rows), shard_rows))
        if not (done_dir / f"{name}-{s}").exists()
    ]
    if missing:  # a process died or was not started: what is there is kept for the next run
        raise DataError(
            f"{staging}: {len(missing)} shard(s) were not written ({', '.join(missing[:4])}"
            f"{', ...' if len(missing) > 4 else ''}); run extraction again to resume"
        )
    remove(done_dir)
    move_into_place(staging, out)


def extract_features(
    backbone: Backbone,
    groups: Mapping[str, Group],
    out: Path,
    fingerprint: Fingerprint,
    device: torch.device,
    *,
    overlap: bool | None = None,
    amp: bool = False,
    shard_rows: int = SHARD_ROWS,
    ranks: Ranks | None = None,
) -> ExtractionStats:
    """Run the frozen ``backbone`` over every group and write the store at ``out``.

    The store is built in :func:`staging_path` and moved to ``out`` only when every shard of
    every group is written. Shards are the unit of work: under torchrun (``ranks``) each
    process takes a contiguous block of every group's shards and writes only those, whole
    (zarr-python 3 has no locks; processes sharing a shard lose rows). A finished shard
    leaves a marker; a run that finds a staging store of the same extraction (fingerprint,
    sizes, ``shard_rows``, library source) skips the shards marked done, so an interrupted
    extraction, on one process or many, resumes where it stopped. The store does not depend on the number
    of processes: rows, geometry and (given deterministic batches) values are the same.

    ``overlap`` (prefetch and writer threads; ``None`` decides per device, see
    :func:`_extract_run`); ``amp`` runs the forward pass under bfloat16 autocast; features
    are stored as float32.
    """
    ranks = ranks or Ranks()
    probe = overlap is None and device.type != "cuda"
    if overlap is None:
        overlap = device.type == "cuda"
    place(backbone.eval(), device)
    staging = staging_path(out)
    expected = {
        "fingerprint": fingerprint.to_json(),
        "code": _code_sha256(),
        "shard_rows": shard_rows,
        "dim": backbone.num_features,
        "rows": {name: len(g.rows) for name, g in groups.items()},
    }
    if ranks.main:
        _prepare_staging(staging, expected, groups, backbone.num_features)
    ranks.barrier()
    t0 = time.perf_counter()
    mine = _extract_groups(
        backbone, groups, staging, device, ranks, shard_rows, amp=amp, overlap=overlap, probe=probe
    )
    ranks.barrier()
    if ranks.main:
        _publish(staging, out, groups, shard_rows)
    ranks.barrier()
    mine.seconds = time.perf_counter() - t0
    return ExtractionStats.of_job(ranks.gather(mine))


class FeatureStore:
    """Read access to a finished store, checked against what the reader expects."""

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = path
        self.group = group

    @classmethod
    def open(cls, path: str | Path, expect: Mapping[str, Any] | None = None) -> FeatureStore:
        """Open ``path``; if ``expect`` is given, every key in it must match the fingerprint."""
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise FileNotFoundError(f"{path}: no feature store (run extract-features first)")
        group = zarr.open_group(path, mode="r")
        store = cls(path, group)
        if expect is not None:
            have = store.fingerprint
            diffs = [
                f"{k}: store has {have.get(k)!r}, expected {v!r}"
                for k, v in expect.items()
                if have.get(k) != v
            ]
            if diffs:
                raise FingerprintMismatch(
                    f"{path}: feature store does not match ({'; '.join(diffs)}); re-run extract-features"
                )
        return store

    @property
    def fingerprint(self) -> dict[str, Any]:
        fp = self.group.attrs["fingerprint"]
        assert isinstance(fp, dict)
        return dict(fp)

    def _array(self, group: str, name: str) -> zarr.Array:
        arr = self.group[f"{group}/{name}"]
        if not isinstance(arr, zarr.Array):
            raise FingerprintMismatch(f"{self.path}: {group}/{name} is not an array; re-run extract-features")
        return arr

    def groups(self) -> list[str]:
        return sorted(name for name, _ in self.group.groups())

    def shifts(self) -> list[str]:
        """The shift kinds whose shifted test images the store holds."""
        return [g[len(SHIFTED) :] for g in self.groups() if g.startswith(SHIFTED)]

    def select(self, group: str, manifest_rows: np.ndarray) -> np.ndarray:
        """Which rows of ``group`` show one of ``manifest_rows``: a boolean mask in store
        order (every view of an image, for ``augmented``)."""
        return np.isin(np.asarray(self._array(group, "row")[:]), manifest_rows)

    def load(
        self, group: str, keep: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Features, labels and manifest rows of ``group`` (only the ``keep`` rows, a mask
        from :meth:`select`), in store order, in memory."""
        features = self._array(group, "features")
        if keep is None:
            sel: slice | np.ndarray = slice(None)
            feats = np.asarray(features[:])
        else:
            sel = np.flatnonzero(keep)
            feats = np.asarray(features.get_orthogonal_selection((sel, slice(None))))
        return (
            torch.from_numpy(feats),
            torch.from_numpy(np.asarray(self._array(group, "labels")[:])[sel]),
            np.asarray(self._array(group, "row")[:])[sel],
        )

    def arrays(self, group: str) -> tuple[zarr.Array, zarr.Array]:
        """The (features, labels) arrays of ``group``, not loaded."""
        return self._array(group, "features"), self._array(group, "labels")

    def nbytes(self, group: str, keep: np.ndarray | None = None) -> int:
        """Size in memory of ``group``'s features (of its ``keep`` rows)."""
        f = self._array(group, "features")
        rows = f.shape[0] if keep is None else int(np.count_nonzero(keep))
        return rows * int(np.prod(f.shape[1:])) * f.dtype.itemsize

    def nbytes_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


class StreamedBatches:
    """Mini-batches read from Zarr arrays block by block: memory bounded by one block.

    For feature sets larger than the memory budget. Each epoch visits the blocks (runs of
    ``block_rows`` rows, aligned to the chunks so every read decodes whole chunks) in a
    shuffled order and shuffles rows within each block: every row once per epoch. Since
    extract-features writes training rows in a random order, each block is a random sample
    of the whole split, and the batches are statistically those of a full shuffle (a store
    written in class order would give nearly single-class batches here).

    A source is ``(features, labels)`` or ``(features, labels, keep)``, ``keep`` a boolean
    mask over its rows (:meth:`FeatureStore.select`): only those rows are served.
    """

    def __init__(
        self,
        sources: Sequence[tuple[Any, ...]],  # (features, labels) or (features, labels, keep)
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        block_rows: int = SHARD_ROWS,
    ) -> None:
        self.sources, self.batch_size = sources, batch_size
        self.shuffle, self.generator = shuffle, generator
        self.keep = [src[2] if len(src) > 2 else None for src in sources]
        blocks = [
            (i, start, min(start + block_rows, src[0].shape[0]))
            for i, src in enumerate(sources)
            for start in range(0, src[0].shape[0], block_rows)
        ]
        self.blocks = [b for b in blocks if self._rows_in(*b) > 0]
        self.n = sum(self._rows_in(*b) for b in self.blocks)

    def _rows_in(self, i: int, start: int, end: int) -> int:
        keep = self.keep[i]
        return end - start if keep is None else int(np.count_nonzero(keep[start:end]))

    @property
    def images(self) -> int:
        """Rows served per epoch (``len`` counts batches)."""
        return self.n

    def __len__(self) -> int:
        # Batches never span blocks: count them per block.
        return sum(-(-self._rows_in(*b) // self.batch_size) for b in self.blocks)

    def __iter__(self):
        order = (
            torch.randperm(len(self.blocks), generator=self.generator).tolist()
            if self.shuffle
            else range(len(self.blocks))
        )
        for b in order:
            i, start, end = self.blocks[b]
            feats, labels = self.sources[i][:2]
            x = torch.from_numpy(np.asarray(feats[start:end]))
            y = torch.from_numpy(np.asarray(labels[start:end]))
            keep = self.keep[i]
            if keep is not None:
                mask = torch.from_numpy(keep[start:end])
                x, y = x[mask], y[mask]
            idx = torch.randperm(len(y), generator=self.generator) if self.shuffle else torch.arange(len(y))
            for k in range(0, len(y), self.batch_size):
                sel = idx[k : k + self.batch_size]
                yield x[sel], y[sel]
