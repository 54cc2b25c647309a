from collections import Counter

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from transferlab.data.images import ImageDataset, Preprocess, eval_transform, train_transform
from transferlab.data.manifest import manifest_fingerprint, split_column, split_columns, split_view
from transferlab.data.sources import write_digits
from transferlab.data.splitting import build_manifest, stratified_split
from transferlab.errors import DataError


def test_stratified_split_keeps_class_proportions_and_is_seeded():
    labels = [0] * 100 + [1] * 40 + [2] * 10
    a = stratified_split(labels, 0.2, 0.1, seed=3)
    assert a == stratified_split(labels, 0.2, 0.1, seed=3)
    assert a != stratified_split(labels, 0.2, 0.1, seed=4)
    by = Counter(zip(labels, a, strict=True))
    assert (by[(0, "val")], by[(0, "test")], by[(0, "train")]) == (20, 10, 70)
    assert (by[(1, "val")], by[(1, "test")]) == (8, 4)
    assert (by[(2, "val")], by[(2, "test")]) == (2, 1)


def test_rare_class_reaches_every_split():
    splits = stratified_split([0] * 50 + [1] * 3, 0.1, 0.1, seed=0)
    assert sorted(splits[50:]) == ["test", "train", "val"]


def test_class_too_small_to_split_is_an_error():
    with pytest.raises(DataError, match="class 1 has only 1"):
        stratified_split([0] * 20 + [1], 0.2, 0.2, seed=0)


def test_manifest_of_image_folder(image_folder):
    root, items = image_folder
    m = build_manifest(root, items, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert m.columns == ["path", "label", "class_name", "split", "sha256"]
    assert m.height == 18
    assert m["class_name"].unique().sort().to_list() == ["c0", "c1", "c2"]
    assert m.group_by("split").len().sort("split")["len"].to_list() == [3, 12, 3]
    # the hash is of the file's bytes
    import hashlib

    first = m.row(0, named=True)
    assert first["sha256"] == hashlib.sha256((root / first["path"]).read_bytes()).hexdigest()


def test_manifest_fingerprint_is_content_sensitive(image_folder):
    root, items = image_folder
    m = build_manifest(root, items, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert manifest_fingerprint(m) == manifest_fingerprint(m.clone())
    moved = m.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("val")).otherwise("split").alias("split")
    )
    assert manifest_fingerprint(moved) != manifest_fingerprint(m)


def test_resplits_redraw_every_split_with_the_same_class_counts(image_folder):
    root, items = image_folder
    one = build_manifest(root, items, val_fraction=0.2, test_fraction=0.2, seed=0)
    three = build_manifest(root, items, val_fraction=0.2, test_fraction=0.2, seed=0, splits=3)
    assert split_columns(three) == ["split", "split_1", "split_2"]
    assert three.drop("split_1", "split_2").equals(one)  # the base splitting does not move
    assert manifest_fingerprint(three) != manifest_fingerprint(one)
    counts = [Counter(zip(three["label"], three[c], strict=True)) for c in split_columns(three)]
    assert counts[0] == counts[1] == counts[2]  # stratified: as many of each class everywhere
    tests = [set(three.filter(pl.col(c) == "test")["path"]) for c in split_columns(three)]
    assert tests[0] != tests[1] and tests[1] != tests[2]
    # seed s trains on splitting s mod k, and asking for one the manifest lacks says so
    assert [split_column(s, 3) for s in range(5)] == ["split", "split_1", "split_2", "split", "split_1"]
    assert split_view(three, root, "test", "split_2").paths == sorted(
        root / p for p in three.filter(pl.col("split_2") == "test")["path"]
    )
    with pytest.raises(DataError, match="no splitting 'split_1'.*re-run download"):
        split_view(one, root, "test", "split_1")


def test_resplits_keep_the_test_split_a_source_brings(image_folder):
    root, items = image_folder
    given = [(p, c, "test" if int(p[-7:-4]) < 2 else None) for p, c in items]
    m = build_manifest(root, given, val_fraction=0.25, test_fraction=0.0, seed=0, splits=2)
    assert (
        m.filter(pl.col("split") == "test")["path"].to_list()
        == m.filter(pl.col("split_1") == "test")["path"].to_list()
    )
    assert m["split"].to_list() != m["split_1"].to_list()  # val is carved again from train


def test_max_per_class_caps_reproducibly(image_folder):
    root, items = image_folder
    a = build_manifest(root, items, val_fraction=0.2, test_fraction=0.2, seed=0, max_per_class=4)
    b = build_manifest(root, items, val_fraction=0.2, test_fraction=0.2, seed=0, max_per_class=4)
    assert a.height == 12 and a.equals(b)
    assert set(a.group_by("class_name").len()["len"].to_list()) == {4}


def test_one_class_is_an_error(image_folder):
    root, items = image_folder
    only = [it for it in items if it[1] == "c0"]
    with pytest.raises(DataError, match="need at least 2"):
        build_manifest(root, only, val_fraction=0.2, test_fraction=0.2, seed=0)


def test_digits_are_real_and_complete(tmp_path):
    items = write_digits(tmp_path)
    assert len(items) == 1797
    assert Counter(c for _, c in items)["0"] == 178
    img = np.asarray(Image.open(tmp_path / items[0][0]))
    assert img.shape == (8, 8) and img.dtype == np.uint8 and img.max() > 200


def test_dataset_gives_normalized_rgb(image_folder):
    root, items = image_folder
    m = build_manifest(root, items, val_fraction=0.2, test_fraction=0.2, seed=0)
    view = split_view(m, root, "train")
    pre = Preprocess(image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    ds = ImageDataset(view.paths, view.labels, eval_transform(pre))
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert -1.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9  # white stripe maps to +1
    assert torch.equal(x[0], x[1])  # grayscale became three equal channels
    assert int(y) == view.labels[0]
    aug = ImageDataset(
        view.paths, view.labels, train_transform(pre, crop_scale=(0.5, 1.0), rotation_degrees=10, hflip=True)
    )
    assert aug[0][0].shape == (3, 16, 16)


def test_corrupt_image_is_named(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="bad.png: cannot decode image"):
        ImageDataset([bad], np.array([0]), eval_transform(Preprocess(8, (0.5,) * 3, (0.5,) * 3)))[0]


def test_batched_eval_transform_equals_per_image(image_folder):
    from transferlab.data.images import eval_loader

    root, items = image_folder
    m = build_manifest(root, items, val_fraction=0.2, test_fraction=0.2, seed=0)
    view = split_view(m, root, "train")
    pre = Preprocess(image_size=20, mean=(0.5,) * 3, std=(0.25,) * 3, crop_pct=0.875)
    per_image = ImageDataset(view.paths, view.labels, eval_transform(pre))
    batched = torch.cat([x for x, _ in eval_loader(view.paths, view.labels, pre, 5)])
    expected = torch.stack([per_image[i][0] for i in range(len(per_image))])
    torch.testing.assert_close(batched, expected, rtol=0, atol=1e-6)
