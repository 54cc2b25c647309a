"""Real data sizes: decoded images held under a byte budget, extraction overlapped with the
forward pass through bounded queues, workers chosen by default, download checks in parallel.

Speed and memory at scale are measured in the benchmark (bench/bench.py); these tests check
the mechanisms: what is held, what order comes out, what happens on errors.
"""

import os
import threading
import time

import numpy as np
import pytest
import torch
from helpers import make_image_folder
from torch.utils.data import DataLoader

from transferlab._io import parallel_map
from transferlab.data.images import DecodedCache, ImageDataset, Preprocess, eval_loader
from transferlab.features import store as F
from transferlab.features.store import FeatureStore, Fingerprint, extract_features, prefetch
from transferlab.runtime import resolve_workers

CPU = torch.device("cpu")


@pytest.fixture
def pictures(tmp_path):
    root = tmp_path / "img"
    items = make_image_folder(root, classes=2, per_class=5, size=16)  # 16x16 gray -> RGB 768 bytes
    return [root / rel for rel, _ in items], np.array([int(c[1:]) for _, c in items])


def test_cache_keeps_what_fits_and_decodes_the_rest_every_time(pictures):
    paths, labels = pictures
    one = 16 * 16 * 3
    cache = DecodedCache(budget_bytes=3 * one + 10)  # room for three images
    ds = ImageDataset(paths, labels, None, cache=cache)
    first = [ds[i][0] for i in range(len(ds))]
    assert cache.used == 3 * one <= cache.budget
    assert (cache.hits, cache.misses) == (0, 10)
    second = [ds[i][0] for i in range(len(ds))]
    assert (cache.hits, cache.misses) == (3, 17)  # the three kept ones hit; the rest decode again
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert cache.used == 3 * one  # it did not grow


def test_results_do_not_depend_on_the_budget(pictures):
    paths, labels = pictures
    pre = Preprocess(8, (0.5,) * 3, (0.5,) * 3)
    batches = [
        torch.cat([x for x, _ in eval_loader(paths, labels, pre, 4, cache=DecodedCache(budget))])
        for budget in (0, 10**9)
    ]
    assert torch.equal(batches[0], batches[1])


def test_workers_share_the_budget_and_see_the_same_images(pictures):
    """Each of two worker processes takes half of what is left; batches equal the in-process ones."""
    paths, labels = pictures
    cache = DecodedCache(budget_bytes=4 * 768)
    ds = ImageDataset(paths, labels, None, cache=cache)
    ds[0]  # the parent holds one image, which forked workers inherit

    def held(_):
        info = torch.utils.data.get_worker_info()
        assert info is not None
        c = info.dataset.cache
        return torch.tensor([c.budget, c.used])

    probe = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=held)
    for budget, used in (b.tolist() for b in probe):
        assert budget == 768 + (3 * 768) // 2  # inherited + half of the rest
        assert used <= budget
    inline = [x for x, _ in DataLoader(ds, batch_size=3)]
    workers = [x for x, _ in DataLoader(ds, batch_size=3, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(inline, workers, strict=True))


def test_a_pickled_cache_travels_empty(pictures):
    import pickle

    paths, labels = pictures
    cache = DecodedCache(10**6)
    cache.get(paths[0])
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.used == 0 and copy.budget == 10**6 and cache.used > 0


def test_prefetch_keeps_order_and_bounds_what_is_ahead():
    produced = []

    def items():
        for i in range(20):
            produced.append(i)
            yield i

    seen = []
    for i in prefetch(items(), depth=2):
        time.sleep(0.002)
        # the producer is never more than the queue (2) plus the item in its hand ahead
        assert len(produced) - len(seen) <= 4
        seen.append(i)
    assert seen == list(range(20))


def test_prefetch_raises_the_producers_error_and_stops_when_abandoned():
    def broken():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetch(broken()))
    before = threading.active_count()
    gen = prefetch(iter(range(10**6)), depth=2)
    assert next(gen) == 0
    gen.close()  # the consumer stops early: the thread must finish, not block on a full queue
    time.sleep(0.2)
    assert threading.active_count() <= before


def _extract(backbone, batches, n: int, out, **kw):
    """One group ``images`` of ``n`` rows, 0..n-1, from ``batches``."""
    group = F.Group.from_loader(np.arange(n), batches)
    return extract_features(backbone, {"images": group}, out, Fingerprint.of(backbone, "m"), CPU, **kw)


@pytest.mark.parametrize("overlap", [True, False])
def test_extraction_through_the_pipeline_equals_a_plain_forward(tmp_path, lite0_32, monkeypatch, overlap):
    """Prefetch thread, writer thread, shards: the store holds the forward's features in order."""
    monkeypatch.setattr(F, "CHUNK_ROWS", 2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(13, 3, 32, 32, generator=g), torch.randint(0, 3, (13,), generator=g)
    loader = DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    out = tmp_path / "store"
    _extract(lite0_32, loader, 13, out, overlap=overlap, shard_rows=4)
    feats, labels, rows = FeatureStore.open(out).load("images")
    with torch.no_grad():
        expect = lite0_32.eval()(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(feats, expect, rtol=1e-4, atol=1e-5)
    assert torch.equal(labels, y) and np.array_equal(rows, np.arange(13))


@pytest.mark.parametrize("overlap", [True, False])
def test_a_failed_write_fails_extraction_and_publishes_nothing(tmp_path, lite0_32, monkeypatch, overlap):
    def full_disk(self, *args):
        raise OSError("no space left on device")

    monkeypatch.setattr(F._ShardWriter, "append", full_disk)
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(
        torch.utils.data.TensorDataset(torch.randn(6, 3, 32, 32, generator=g), torch.zeros(6)), batch_size=3
    )
    with pytest.raises(OSError, match="no space left"):
        _extract(lite0_32, loader, 6, tmp_path / "store", overlap=overlap)
    assert [p.name for p in tmp_path.iterdir()] == [".store.partial"]  # kept to resume, hidden


def test_workers_auto_is_none_on_cpu_and_feeds_a_gpu(monkeypatch):
    assert resolve_workers("auto", CPU) == 0
    assert resolve_workers(3, CPU) == 3
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert resolve_workers("auto", torch.device("cuda")) == 8
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert resolve_workers("auto", torch.device("cuda")) == 1


def test_parallel_map_keeps_order_and_stays_in_series_for_short_work():
    threads = set()

    def square(i):
        threads.add(threading.get_ident())
        return i * i

    assert parallel_map(square, list(range(500)), desc="squares") == [i * i for i in range(500)]
    assert threads == {threading.get_ident()}  # microseconds per item: threads would cost more


def test_parallel_map_threads_long_work_in_order_and_reraises():
    threads = set()

    def slow(i):
        threads.add(threading.get_ident())
        time.sleep(2e-3)
        if i == 77:
            raise ValueError("item 77")
        return -i

    assert parallel_map(slow, list(range(60)), desc="slow") == [-i for i in range(60)]
    if (os.cpu_count() or 1) > 1:
        assert len(threads) > 1
    with pytest.raises(ValueError, match="item 77"):
        parallel_map(slow, list(range(100)), desc="slow")


def test_extraction_under_bf16_autocast_stores_float32_close_to_full_precision(tmp_path, lite0_32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 32, 32, generator=g)
    loader = DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(6, dtype=torch.long)), batch_size=3)
    stores = {}
    for amp in (False, True):
        out = tmp_path / f"store-{amp}"
        _extract(lite0_32, loader, 6, out, amp=amp)
        stores[amp] = FeatureStore.open(out).load("images")[0]
    assert stores[True].dtype == torch.float32
    assert not torch.equal(stores[True], stores[False])  # autocast did run in bfloat16
    cos = torch.nn.functional.cosine_similarity(stores[True], stores[False])
    assert cos.min() > 0.99


def test_channels_last_setting(monkeypatch):
    from transferlab import runtime

    cuda = torch.device("cuda")
    for setting, on_cpu, on_cuda in (
        ("auto", torch.channels_last, torch.contiguous_format),
        (True, torch.channels_last, torch.channels_last),
        (False, torch.contiguous_format, torch.contiguous_format),
    ):
        monkeypatch.setattr(runtime, "_CHANNELS_LAST", setting)
        assert runtime.memory_format(CPU) == on_cpu and runtime.memory_format(cuda) == on_cuda


def _slow_batches(n: int, delay: float, g: torch.Generator):
    for _ in range(n):
        time.sleep(delay)  # an input-bound loader: decoding large images
        yield torch.randn(2, 3, 32, 32, generator=g), torch.zeros(2, dtype=torch.long)


@pytest.mark.parametrize(("delay", "expect"), [(0.0, False), (0.3, True)])
def test_cpu_extraction_prefetches_only_when_input_bound(tmp_path, lite0_32, delay, expect):
    """On CPU the default starts in series and switches to the prefetch thread only when the
    first batches waited for input longer than a quarter of their forward time."""
    n = F.PROBE_BATCHES + 3
    stats = _extract(
        lite0_32, _slow_batches(n, delay, torch.Generator().manual_seed(0)), 2 * n, tmp_path / "store"
    )
    assert stats.prefetched == {"images": expect}
    feats, _, rows = FeatureStore.open(tmp_path / "store").load("images")
    x = torch.cat([b for b, _ in _slow_batches(n, 0.0, torch.Generator().manual_seed(0))])
    with torch.no_grad():
        expect_feats = lite0_32.eval()(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(feats, expect_feats, rtol=1e-4, atol=1e-5)
    assert np.array_equal(rows, np.arange(2 * n))


def test_workers_leave_their_cores_to_them(monkeypatch):
    from transferlab.runtime import configure_runtime

    before = torch.get_num_threads()
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    try:
        configure_runtime(0, CPU, workers=1)
        assert torch.get_num_threads() == 3
        configure_runtime(2, CPU, workers=1)  # an explicit base.num_threads wins
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_fill_decodes_up_front_in_order_until_the_budget_is_full(pictures):
    paths, labels = pictures
    cache = DecodedCache(budget_bytes=4 * 768 + 100)
    assert cache.fill(paths) == 4 and cache.used == 4 * 768
    ds = ImageDataset(paths, labels, None, cache=cache)
    [ds[i] for i in range(len(ds))]
    assert (cache.hits, cache.misses) == (4, 6)  # the first four were held, the rest decode
    assert cache.fill(paths) == 4  # nothing more fits; nothing decoded twice into it


def test_seeded_items_draw_the_same_for_an_item_whatever_the_order_and_leave_the_global_rng():
    from transferlab.data.images import SeededItems

    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.rand(3)

    items = SeededItems(Noise(), seed=7)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    forward = [items[(i, 1)] for i in range(6)]
    backward = [items[(i, 1)] for i in reversed(range(6))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward, strict=True))
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random stream is untouched
    assert not torch.equal(items[(0, 1)], items[(0, 2)])  # another epoch, another draw
    assert not torch.equal(items[(0, 1)], items[(1, 1)])
    assert torch.equal(items[0], items[(0, 0)])  # a plain index is epoch 0
    assert not torch.equal(SeededItems(Noise(), seed=8)[0], items[0])
