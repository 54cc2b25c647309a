import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from transferlab.errors import DataError
from transferlab.features import store as F
from transferlab.features.store import FeatureStore, Fingerprint, FingerprintMismatch, extract_features

CPU = torch.device("cpu")


def _data(n: int, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 4, (n,), generator=g)


def _extract(backbone, out, splits, batch_size=4, **kw):
    groups = {
        s: F.Group(np.arange(len(y)) + 100 * i, F.row_ranges(TensorDataset(x, y), batch_size=batch_size))
        for i, (s, (x, y)) in enumerate(splits.items())
    }
    fp = Fingerprint.of(backbone, "m" * 64)
    return extract_features(backbone, groups, out, fp, CPU, **kw), {s: g.rows for s, g in groups.items()}


def test_store_holds_the_backbone_features(tmp_path, lite0_32, monkeypatch):
    monkeypatch.setattr(F, "CHUNK_ROWS", 2)
    splits = {"train": _data(11), "val": _data(5, seed=1)}
    # several shards, a partial one at the end
    stats, rows = _extract(lite0_32, tmp_path / "store", splits, batch_size=3, shard_rows=4)
    assert stats.images == 16
    store = FeatureStore.open(tmp_path / "store")
    assert store.groups() == ["train", "val"]
    x, y = splits["train"]
    feats, labels, r = store.load("train")
    with torch.no_grad():
        expect = lite0_32.eval()(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(feats, expect, rtol=1e-4, atol=1e-5)
    assert torch.equal(labels, y) and np.array_equal(r, rows["train"])
    assert store.group["train/features"].shards == (4, 1280)


def test_a_split_is_selected_by_manifest_rows(tmp_path, lite0_32, monkeypatch):
    """Readers take the rows of their split out of the one store, in store order, whole
    in memory or streamed: the same rows either way."""
    from transferlab.features.store import StreamedBatches

    monkeypatch.setattr(F, "CHUNK_ROWS", 2)
    x, y = _data(13)
    out = tmp_path / "store"
    order = np.random.default_rng(0).permutation(13)  # store rows in a shuffled order
    fp = Fingerprint.of(lite0_32, "m" * 64)
    extract_features(
        lite0_32,
        {"images": F.Group(order, F.row_ranges(TensorDataset(x[order], y[order]), batch_size=5))},
        out,
        fp,
        CPU,
        shard_rows=4,
    )
    store = FeatureStore.open(out)
    wanted = np.array([1, 4, 5, 11])
    keep = store.select("images", wanted)
    assert keep.sum() == 4 and store.nbytes("images", keep) == 4 * 1280 * 4
    feats, labels, rows = store.load("images", keep)
    assert sorted(rows) == sorted(wanted) and list(rows) == [r for r in order if r in wanted]
    full, full_labels, full_rows = store.load("images")
    torch.testing.assert_close(feats, full[keep])
    assert torch.equal(labels, y[rows])
    streamed = StreamedBatches([(*store.arrays("images"), keep)], 3, block_rows=4)
    got = torch.cat([b[1] for b in streamed])
    assert torch.equal(got, labels) and len(streamed) == sum(
        -(-int(keep[i : i + 4].sum()) // 3) for i in range(0, 13, 4) if keep[i : i + 4].any()
    )


def test_fingerprint_mismatch_is_refused(tmp_path, lite0_32):
    _extract(lite0_32, tmp_path / "store", {"train": _data(2)})
    FeatureStore.open(tmp_path / "store", expect={"backbone": "efficientnet_lite0", "image_size": 32})
    with pytest.raises(FingerprintMismatch, match="image_size: store has 32, expected 64"):
        FeatureStore.open(tmp_path / "store", expect={"image_size": 64})


def test_interrupted_extraction_leaves_the_store_as_it_was(tmp_path, lite0_32):
    out = tmp_path / "store"
    _extract(lite0_32, out, {"train": _data(2)})
    before = FeatureStore.open(out).load("train")[0]

    def broken(start, end):
        yield _data(2)
        raise OSError("disk gone")

    with pytest.raises(OSError):
        extract_features(
            lite0_32, {"train": F.Group(np.arange(4), broken)}, out, Fingerprint.of(lite0_32, "x"), CPU
        )
    assert torch.equal(FeatureStore.open(out).load("train")[0], before)
    # what was done is kept aside, hidden, for the next run to resume (next test)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".store.partial", "store"]


class _Counted:
    """A dataset that counts the items read and can fail after ``fail_after`` of them."""

    def __init__(self, x, y, fail_after=None):
        self.x, self.y, self.fail_after, self.reads = x, y, fail_after, 0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if self.fail_after is not None and self.reads >= self.fail_after:
            raise OSError("killed")
        self.reads += 1
        return self.x[i], self.y[i]


def test_interrupted_extraction_resumes_from_its_finished_shards(tmp_path, lite0_32):
    """Killed after two of four shards: the next run reads only the other two, and the
    store equals one made in a single go."""
    x, y = _data(14)
    rows = np.arange(14)
    fp = Fingerprint.of(lite0_32, "m" * 64)

    def run(data, out):
        group = F.Group(rows, F.row_ranges(data, batch_size=2))
        return extract_features(lite0_32, {"images": group}, out, fp, CPU, shard_rows=4)

    run(_Counted(x, y), tmp_path / "whole")
    out = tmp_path / "store"
    with pytest.raises(OSError, match="killed"):
        run(_Counted(x, y, fail_after=10), out)  # shards 0 and 1 written, 2 half-way
    assert not out.exists()
    again = _Counted(x, y)
    stats = run(again, out)
    assert again.reads == 6 and stats.resumed == {"images": 8}  # rows 8..13 only
    got, want = FeatureStore.open(out).load("images"), FeatureStore.open(tmp_path / "whole").load("images")
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not F.staging_path(out).exists()


@pytest.mark.parametrize("change", ["fingerprint", "code"])
def test_a_different_extraction_does_not_resume_a_stale_one(tmp_path, lite0_32, monkeypatch, change):
    x, y = _data(8)
    out = tmp_path / "store"
    group = F.Group(np.arange(8), F.row_ranges(_Counted(x, y, fail_after=5), batch_size=2))
    with pytest.raises(OSError):
        extract_features(
            lite0_32, {"images": group}, out, Fingerprint.of(lite0_32, "a" * 64), CPU, shard_rows=4
        )
    assert F.staging_path(out).exists()
    if change == "code":  # the library was upgraded between the two runs
        monkeypatch.setattr(F, "_code_sha256", lambda: "another version")
    fresh = _Counted(x, y)
    group = F.Group(np.arange(8), F.row_ranges(fresh, batch_size=2))
    manifest = "b" * 64 if change == "fingerprint" else "a" * 64
    stats = extract_features(
        lite0_32, {"images": group}, out, Fingerprint.of(lite0_32, manifest), CPU, shard_rows=4
    )
    assert fresh.reads == 8 and stats.resumed == {"images": 0}
    assert FeatureStore.open(out).fingerprint["manifest_sha256"] == manifest


class _Alone(F.Ranks):
    """A rank of a job whose other ranks run before or after it (no process group)."""

    def barrier(self) -> None:
        pass

    def gather(self, value):
        return [value]


@pytest.mark.parametrize("count", range(6))
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_shards_are_shared_evenly_and_rank_0_never_idles_while_there_is_work(count, size):
    owned = [F.owned_shards(count, F.Ranks(rank=r, size=size)) for r in range(size)]
    assert [s for block in owned for s in block] == list(range(count))  # each once, in rank order
    assert max(map(len, owned)) - min(map(len, owned)) <= 1
    assert count == 0 or len(owned[0]) >= 1
    # rows follow the shards: 2 shards of 16 rows over 3 processes on a group of 20 rows
    if (count, size) == (2, 3):
        assert [F.owned_rows(20, 16, F.Ranks(rank=r, size=3)) for r in range(3)] == [
            range(0, 16),
            range(16, 20),
            range(20, 20),
        ]


def test_ranks_write_disjoint_whole_shards_that_make_the_same_store(tmp_path, lite0_32):
    """What torchrun's ranks do, one after another here: each writes its block of whole
    shards into the shared staging store; rank 0 publishes once every shard is there."""
    x, y = _data(14)
    fp = Fingerprint.of(lite0_32, "m" * 64)
    seen = {}

    def run(out, ranks):
        data = _Counted(x, y)
        group = F.Group(np.arange(14), F.row_ranges(data, batch_size=3))
        extract_features(lite0_32, {"images": group}, out, fp, CPU, shard_rows=4, ranks=ranks)
        seen[ranks.rank] = data.reads

    run(tmp_path / "one", F.Ranks())
    out = tmp_path / "two"
    assert [F.owned_rows(14, 4, _Alone(r, 2)) for r in (0, 1)] == [range(0, 8), range(8, 14)]
    with pytest.raises(DataError, match="2 shard\\(s\\) were not written"):
        run(out, _Alone(0, 2))  # rank 0 alone: rank 1's shards are missing, nothing published
    assert not out.exists()
    run(out, _Alone(1, 2))  # rank 1 (not the main rank) writes its shards, publishes nothing
    assert not out.exists()
    run(out, _Alone(0, 2))  # rank 0 again: its shards are done, it only publishes
    assert seen == {0: 0, 1: 6}
    for a, b in zip(
        FeatureStore.open(out).load("images"), FeatureStore.open(tmp_path / "one").load("images"), strict=True
    ):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_missing_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="run extract-features first"):
        FeatureStore.open(tmp_path / "none")


class _Recording:
    """Wraps a zarr array and records the size of every read."""

    def __init__(self, arr, log):
        self.arr, self.log, self.shape = arr, log, arr.shape

    def __getitem__(self, key):
        out = self.arr[key]
        self.log.append(len(out))
        return out


def test_streamed_batches_visit_every_row_once_reading_one_block_at_a_time(tmp_path):
    import zarr

    from transferlab.features.store import StreamedBatches

    g = zarr.open_group(tmp_path / "s", mode="w")
    a = g.create_array("a/features", shape=(50, 3), dtype="float32", chunks=(8, 3))
    a[:] = np.arange(150, dtype="float32").reshape(50, 3)
    la = g.create_array("a/labels", shape=(50,), dtype="int64", chunks=(8,))
    la[:] = np.arange(50)
    b = g.create_array("b/features", shape=(13, 3), dtype="float32", chunks=(8, 3))
    b[:] = np.arange(150, 189, dtype="float32").reshape(13, 3)
    lb = g.create_array("b/labels", shape=(13,), dtype="int64", chunks=(8,))
    lb[:] = np.arange(50, 63)
    reads: list[int] = []
    sources = [(_Recording(a, reads), _Recording(la, reads)), (_Recording(b, reads), _Recording(lb, reads))]
    batches = StreamedBatches(
        sources, 5, shuffle=True, generator=torch.Generator().manual_seed(0), block_rows=16
    )
    for _ in range(2):  # two epochs
        seen = [y for _, ys in batches for y in ys.tolist()]
        assert sorted(seen) == list(range(63))
        assert seen != list(range(63))  # shuffled
    assert max(reads) == 16  # never more than one block in memory
    assert len(batches) == sum(-(-n // 5) for n in (16, 16, 16, 2, 13))
    x, y = next(iter(StreamedBatches(sources, 4)))
    assert torch.equal(x[:, 0], y.float() * 3)  # rows stay with their labels
