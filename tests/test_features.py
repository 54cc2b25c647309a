import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from transferlab import features as F
from transferlab.features import FeatureStore, Fingerprint, FingerprintMismatch, extract_features

CPU = torch.device("cpu")


def _data(n: int, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 4, (n,), generator=g)


def _extract(backbone, out, splits, batch_size=4):
    loaders = {s: DataLoader(TensorDataset(x, y), batch_size=batch_size) for s, (x, y) in splits.items()}
    rows = {s: np.arange(len(y)) + 100 * i for i, (s, (_, y)) in enumerate(splits.items())}
    fp = Fingerprint.of(backbone, "m" * 64)
    return extract_features(backbone, loaders, rows, out, fp, CPU), rows


def test_store_holds_the_backbone_features(tmp_path, lite0_32, monkeypatch):
    monkeypatch.setattr(F, "SHARD_ROWS", 4)  # several shards, a partial one at the end
    monkeypatch.setattr(F, "CHUNK_ROWS", 2)
    splits = {"train": _data(11), "val": _data(5, seed=1)}
    stats, rows = _extract(lite0_32, tmp_path / "store", splits, batch_size=3)
    assert stats.images == 16
    store = FeatureStore.open(tmp_path / "store")
    assert store.splits() == ["train", "val"]
    x, y = splits["train"]
    feats, labels, r = store.load("train")
    with torch.no_grad():
        expect = lite0_32.eval()(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(feats, expect, rtol=1e-4, atol=1e-5)
    assert torch.equal(labels, y) and np.array_equal(r, rows["train"])
    assert store.group["train/features"].shards == (4, 1280)


def test_fingerprint_mismatch_is_refused(tmp_path, lite0_32):
    _extract(lite0_32, tmp_path / "store", {"train": _data(2)})
    FeatureStore.open(tmp_path / "store", expect={"backbone": "efficientnet_lite0", "image_size": 32})
    with pytest.raises(FingerprintMismatch, match="image_size: store has 32, expected 64"):
        FeatureStore.open(tmp_path / "store", expect={"image_size": 64})


def test_interrupted_extraction_leaves_nothing(tmp_path, lite0_32):
    out = tmp_path / "store"
    _extract(lite0_32, out, {"train": _data(2)})
    before = FeatureStore.open(out).load("train")[0]

    def broken():
        yield _data(2)
        raise OSError("disk gone")

    with pytest.raises(OSError):
        extract_features(
            lite0_32, {"train": broken()}, {"train": np.arange(4)}, out, Fingerprint.of(lite0_32, "x"), CPU
        )
    assert torch.equal(FeatureStore.open(out).load("train")[0], before)
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_missing_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="run extract-features first"):
        FeatureStore.open(tmp_path / "none")
