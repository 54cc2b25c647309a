"""Every data source and every bad-data case, on files the tests make."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import struct
import subprocess
import sys
import tarfile
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image

from transferlab.data.images import load_rgb
from transferlab.data.sources import (
    archive_root,
    check_splits,
    cross_split_duplicates,
    download,
    extract_archive,
    label_conflicts,
    resolve_problems,
    scan_folder,
    write_torchvision,
)
from transferlab.data.splitting import build_manifest
from transferlab.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def img(path: Path, mode: str = "RGB", size=(10, 10), value=128, fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Seeded from the path's last parts (split/class/file): the same image in every process,
    # different images for different files. (hash() is salted per process.)
    rng = np.random.default_rng(zlib.crc32("/".join(path.parts[-3:]).encode()))
    if mode == "I;16":
        im = Image.fromarray(np.full(size, value, dtype=np.uint16))
        assert im.mode == "I;16"
    elif mode == "P":
        im = Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).convert("P")
    else:
        channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
        im = Image.fromarray(rng.integers(0, 255, (*size, channels), dtype=np.uint8).squeeze())
        assert im.mode == mode
    im.save(path, format=fmt)
    return path


def folder(root: Path, classes=("cat", "dog"), n=5, split=None) -> Path:
    for c in classes:
        for i in range(n):
            img((root / split / c if split else root / c) / f"{i}.png")
    return root


# ------------------------------------------------------------------------------ decoding


def test_every_format_decodes_to_the_same_kind_of_rgb(tmp_path):
    paths = [
        img(tmp_path / "a.jpg", fmt="JPEG"),
        img(tmp_path / "b.png"),
        img(tmp_path / "c.webp", fmt="WEBP"),
        img(tmp_path / "d.png", mode="L"),
        img(tmp_path / "e.png", mode="RGBA"),
        img(tmp_path / "f.png", mode="P"),
        img(tmp_path / "g.png", mode="I;16", value=65535),
        img(tmp_path / "h.bmp", fmt="BMP"),
    ]
    for p in paths:
        im = load_rgb(p)
        assert im.mode == "RGB" and im.size == (10, 10), p


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    half = np.asarray(load_rgb(img(tmp_path / "h.png", mode="I;16", value=32896)))
    assert half.max() == half.min() == 128  # 32896 / 257; PIL's own conversion gives 255


def test_transparency_is_composited_on_white(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)  # transparent black
    Image.fromarray(arr).save(tmp_path / "t.png")
    assert np.asarray(load_rgb(tmp_path / "t.png")).min() == 255


# ------------------------------------------------------------------------------ folders


def test_class_folder_layout(tmp_path):
    found = scan_folder(folder(tmp_path / "src", n=6))
    assert not found.problems
    assert len(found.items) == 12 and {c for _, c, _ in found.items} == {"cat", "dog"}
    m = build_manifest(tmp_path / "src", found.items, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert sorted(m["split"].unique()) == ["test", "train", "val"]


def test_split_folder_layout_keeps_splits_and_carves_val_from_train(tmp_path):
    src = tmp_path / "src"
    folder(src, n=10, split="train")
    folder(src, n=3, split="test")
    found = scan_folder(src)
    m = build_manifest(src, found.items, val_fraction=0.2, test_fraction=0.2, seed=0)
    by = dict(m.group_by("split").len().iter_rows())
    assert by == {"train": 16, "val": 4, "test": 6}
    assert all(p.startswith("test/") for p in m.filter(m["split"] == "test")["path"])
    assert all(p.startswith("train/") for p in m.filter(m["split"] != "test")["path"])


def test_class_subset_and_cap(tmp_path):
    found = scan_folder(folder(tmp_path / "src", classes=("a", "b", "c"), n=8))
    m = build_manifest(
        tmp_path / "src",
        found.items,
        val_fraction=0.2,
        test_fraction=0.2,
        seed=0,
        classes=["a", "c"],
        max_per_class=5,
    )
    assert sorted(m["class_name"].unique()) == ["a", "c"] and m.height == 10
    with pytest.raises(DataError, match=r"download.classes: no images of class\(es\) \['zebra'\]"):
        build_manifest(
            tmp_path / "src", found.items, val_fraction=0.2, test_fraction=0.2, seed=0, classes=["a", "zebra"]
        )


# ------------------------------------------------------------------------------ bad data


@pytest.fixture
def messy(tmp_path) -> Path:
    src = folder(tmp_path / "src", n=5)
    (src / "cat" / "notes.txt").write_text("not an image")
    (src / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = (src / "dog" / "0.png").read_bytes()
    (src / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (src / "bird").mkdir()
    (src / "stray.jpg").write_bytes(b"")
    return src


def test_each_bad_file_is_named(messy):
    found = scan_folder(messy)
    reasons = {Path(p).name: why for p, why in found.problems}
    assert reasons["notes.txt"].startswith("not an image file")
    assert reasons["broken.png"].startswith("not a readable image")
    assert reasons["truncated.png"].startswith("not a readable image")
    assert reasons["bird"] == "empty class folder"
    assert reasons["stray.jpg"] == "file outside any class folder"
    with pytest.raises(DataError) as err:
        resolve_problems(found, "fail", "download.path src")
    assert "5 bad file(s)" in str(err.value) and "truncated.png" in str(err.value)
    assert "download.on_bad: skip" in str(err.value)


def test_skip_leaves_bad_files_out(messy):
    found = scan_folder(messy)
    items = resolve_problems(found, "skip", "src")
    assert len(items) == 10 and not any("broken" in p or "truncated" in p for p, _, _ in items)


def test_one_class_is_refused(tmp_path):
    found = scan_folder(folder(tmp_path / "src", classes=("only",)))
    with pytest.raises(DataError, match="found 1 class"):
        build_manifest(tmp_path / "src", found.items, val_fraction=0.2, test_fraction=0.2, seed=0)


def test_labels_that_disagree_with_folders(tmp_path):
    src = tmp_path / "src"
    folder(src, n=4, split="train")
    folder(src, classes=("cat", "fox"), n=2, split="test")
    problems = check_splits(src, scan_folder(src).items)
    assert len(problems) == 2 and all(
        "class 'fox' has test images but no training images" in w for _, w in problems
    )


def test_duplicates_across_splits(tmp_path):
    src = tmp_path / "src"
    folder(src, n=4, split="train")
    folder(src, n=2, split="test")
    (src / "test" / "cat" / "copy.png").write_bytes((src / "train" / "cat" / "1.png").read_bytes())
    m = build_manifest(src, scan_folder(src).items, val_fraction=0.25, test_fraction=0.2, seed=0)
    dups = cross_split_duplicates(m, src)
    assert dups == [(str(src / "test/cat/copy.png"), f"same image as {src / 'train/cat/1.png'} (train)")] or (
        len(dups) == 1 and dups[0][0].endswith("test/cat/copy.png")
    )


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        scan_folder(tmp_path / "nope")


# ------------------------------------------------------------------------------ archives over HTTP


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with byte-range support (resumable downloads)."""

    ranges: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        type(self).ranges.append(rng or "")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(root), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _RangeHandler.ranges = []
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _zip_of(folder_path: Path, out: Path, prefix="dataset/") -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for f in sorted(folder_path.rglob("*")):
            if f.is_file():
                zf.write(f, prefix + f.relative_to(folder_path).as_posix())
    return out


def test_url_zip_download_verify_extract(tmp_path, server):
    www, base = server
    archive = _zip_of(folder(tmp_path / "src", n=4), www / "data.zip")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    got = download(f"{base}/data.zip", tmp_path / "dl" / "data.zip", sha)
    extract_archive(got, tmp_path / "x")
    root = archive_root(tmp_path / "x")
    assert root.name == "dataset" and len(scan_folder(root).items) == 8


def test_url_download_resumes(tmp_path, server):
    www, base = server
    payload = os.urandom(300_000)
    (www / "big.tar").write_bytes(payload)
    dest = tmp_path / "dl" / "big.tar"
    dest.parent.mkdir()
    dest.with_name("big.tar.part").write_bytes(payload[:100_000])
    download(f"{base}/big.tar", dest, hashlib.sha256(payload).hexdigest())
    assert dest.read_bytes() == payload
    assert _RangeHandler.ranges == ["bytes=100000-"]


def test_url_wrong_sha256_is_refused_and_discarded(tmp_path, server):
    www, base = server
    (www / "a.zip").write_bytes(b"x" * 100)
    dest = tmp_path / "a.zip"
    with pytest.raises(DataError, match="SHA-256 is .* expected 0{64}"):
        download(f"{base}/a.zip", dest, "0" * 64)
    assert not dest.exists() and not dest.with_name("a.zip.part").exists()


def test_url_unreachable(tmp_path, server):
    _, base = server
    with pytest.raises(DataError, match="download failed"):
        download(f"{base}/missing.zip", tmp_path / "m.zip", "0" * 64)


def test_tar_gz_extracts(tmp_path):
    src = folder(tmp_path / "src", n=2)
    out = tmp_path / "a.tar.gz"
    with tarfile.open(out, "w:gz") as tf:
        tf.add(src, arcname="imgs")
    extract_archive(out, tmp_path / "x")
    assert len(scan_folder(archive_root(tmp_path / "x")).items) == 4


@pytest.mark.parametrize("name", ["../evil.png", "/abs/evil.png", "a/../../evil.png"])
def test_zip_members_cannot_escape(tmp_path, name):
    out = tmp_path / "evil.zip"
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr(name, b"x")
    with pytest.raises(DataError, match="would escape"):
        extract_archive(out, tmp_path / "x")
    assert not (tmp_path / "evil.png").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_tar_links_and_devices_are_refused(tmp_path, kind):
    out = tmp_path / "evil.tar"
    with tarfile.open(out, "w") as tf:
        info = tarfile.TarInfo("imgs/link")
        info.type = kind
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(DataError, match="link or special file"):
        extract_archive(out, tmp_path / "x")


def test_not_an_archive(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"hello")
    with pytest.raises(DataError, match="neither a zip nor a tar"):
        extract_archive(tmp_path / "x.zip", tmp_path / "x")


# ------------------------------------------------------------------------------ torchvision


def _idx(path: Path, arr: np.ndarray) -> None:
    magic = {1: 0x801, 3: 0x803}[arr.ndim]
    path.write_bytes(
        struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()
    )


def test_torchvision_fashion_mnist_from_a_local_copy(tmp_path):
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 6)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 2).astype(np.uint8))
    items = write_torchvision("FashionMNIST", tmp_path / "tv", False, tmp_path / "out")
    assert len(items) == 26
    assert {c for _, c, _ in items} == {"T-shirt_top", "Trouser"}
    assert sum(s == "test" for _, _, s in items) == 6
    m = build_manifest(tmp_path / "out", items, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert dict(m.group_by("split").len().iter_rows()) == {"train": 16, "val": 4, "test": 6}


def test_torchvision_missing_copy_without_download(tmp_path):
    with pytest.raises(DataError, match="set download.download: true"):
        write_torchvision("FashionMNIST", tmp_path, False, tmp_path / "out")


def test_torchvision_unknown_name(tmp_path):
    with pytest.raises(DataError, match="unknown torchvision data set 'ImageNet22k'"):
        write_torchvision("ImageNet22k", tmp_path, False, tmp_path / "out")


# ------------------------------------------------------------------------------ the stage


def _stage(tmp_path: Path, download: dict) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"download": download}))
    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / "download.py")], cwd=tmp_path, capture_output=True, text=True
    )


def test_stage_fails_cleanly_on_bad_data_and_skips_on_request(tmp_path, messy):
    res = _stage(tmp_path, {"source": "folder", "path": str(messy)})
    assert res.returncode == 1
    assert res.stderr.startswith("error: download.path") and "Traceback" not in res.stderr
    assert not (tmp_path / "data" / "raw").exists() and not (tmp_path / "data" / "manifest.parquet").exists()

    res = _stage(tmp_path, {"source": "folder", "path": str(messy), "on_bad": "skip"})
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "results" / "download" / "download.json").read_text())
    assert report["images"] == 10 and len(report["skipped"]) == 5
    assert (tmp_path / "data" / "raw" / "cat" / "0.png").is_file()
    assert not (tmp_path / "data" / "raw" / "cat" / "broken.png").exists()


def test_stage_keeps_in_raw_only_the_images_the_manifest_lists(tmp_path):
    """download.classes and download.max_per_class: data/raw holds the manifest's images and
    nothing else (every stage reads through the manifest; DVC would cache and re-walk the
    rest), the user's folder untouched."""
    src = folder(tmp_path / "src", classes=("cat", "dog", "owl"), n=9)
    before = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    proj = tmp_path / "proj"
    proj.mkdir()
    res = _stage(proj, {"source": "folder", "path": str(src), "classes": ["cat", "dog"], "max_per_class": 5})
    assert res.returncode == 0, res.stderr
    manifest = pl.read_parquet(proj / "data" / "manifest.parquet")
    raw = proj / "data" / "raw"
    assert manifest.height == 10
    assert sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file()) == sorted(
        manifest["path"].to_list()
    )
    assert not (raw / "owl").exists()  # no empty folder left for a class not kept
    assert sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()) == before


def test_stage_url_source(tmp_path, server):
    www, base = server
    archive = _zip_of(folder(tmp_path / "src", n=6), www / "imgs.zip")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    res = (
        _stage(tmp_path / "proj", {"source": "url", "url": f"{base}/imgs.zip", "sha256": sha})
        if ((tmp_path / "proj").mkdir() or True)
        else None
    )
    assert res.returncode == 0, res.stderr
    assert "12 images, 2 classes" in res.stdout
    assert not list((tmp_path / "proj" / "data").glob(".*extract*"))


# ------------------------------------------------------------------------------ more bad data


def test_mixed_layouts_are_refused_naming_the_folder(tmp_path):
    src = folder(tmp_path / "src", n=3)  # cat/, dog/
    folder(src, classes=("cat",), n=2, split="train")  # and train/cat/ beside them
    with pytest.raises(
        DataError, match=r"src: mixes two layouts: split folder\(s\) train/ beside class folder\(s\) cat, dog"
    ):
        scan_folder(src)


def test_same_bytes_under_two_classes_is_a_label_conflict(tmp_path):
    src = folder(tmp_path / "src", n=4)
    (src / "dog" / "copy.png").write_bytes((src / "cat" / "1.png").read_bytes())
    m = build_manifest(src, scan_folder(src).items, val_fraction=0.25, test_fraction=0.25, seed=0)
    problems = label_conflicts(m, src)
    assert sorted(p for p, _ in problems) == [str(src / "cat/1.png"), str(src / "dog/copy.png")]
    assert all("same bytes under different classes" in why for _, why in problems)
    assert label_conflicts(m.filter(~m["path"].is_in(["dog/copy.png"])), src) == []


def test_stage_names_label_conflicts_and_skips_every_copy(tmp_path):
    src = folder(tmp_path / "src", n=6)
    (src / "dog" / "copy.png").write_bytes((src / "cat" / "1.png").read_bytes())
    proj = tmp_path / "proj"
    proj.mkdir()
    res = _stage(proj, {"source": "folder", "path": str(src)})
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"{src / 'cat/1.png'}: same bytes under different classes" in res.stderr  # the user's path
    assert not (proj / "data" / "manifest.parquet").exists()
    res = _stage(proj, {"source": "folder", "path": str(src), "on_bad": "skip"})
    assert res.returncode == 0, res.stderr
    report = json.loads((proj / "results" / "download" / "download.json").read_text())
    assert report["images"] == 11 and {Path(s["path"]).name for s in report["skipped"]} == {
        "1.png",
        "copy.png",
    }


def test_one_class_error_names_the_users_folder_not_the_staging_one(tmp_path):
    src = folder(tmp_path / "mine", classes=("only",), n=6)
    proj = tmp_path / "proj"
    proj.mkdir()
    res = _stage(proj, {"source": "folder", "path": str(src)})
    assert res.returncode == 1
    assert f"error: download.path {src}: found 1 class(es); need at least 2" in res.stderr
    assert "raw" not in res.stderr.split("need at least")[0].replace(str(src), "")


def test_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cat/0.png", b"\0" * (64 << 20))  # 64 MiB of zeros: about 64 KiB packed
    dest = tmp_path / "out"
    with pytest.raises(
        DataError, match=r"cat/0.png' would expand [\d,]+x .* refused as a decompression bomb"
    ):
        extract_archive(bomb, dest)
    assert not any(p.is_file() for p in dest.rglob("*"))


def test_tar_gz_bomb_is_refused_before_anything_is_written(tmp_path):
    bomb = tmp_path / "bomb.tar.gz"
    payload = tmp_path / "zeros"
    payload.write_bytes(b"\0" * (64 << 20))
    with tarfile.open(bomb, "w:gz") as tf:
        tf.add(payload, arcname="cat/0.png")
    dest = tmp_path / "out"
    with pytest.raises(DataError, match="refused as a decompression bomb"):
        extract_archive(bomb, dest)
    assert not any(p.is_file() for p in dest.rglob("*"))


def test_skipping_every_copy_must_leave_a_data_set(tmp_path):
    """Every image of a class duplicated in the other: skipping the copies leaves no class
    at all, which is one line naming the folder, and no manifest a later stage could read."""
    src = folder(tmp_path / "src", n=4)
    for image in (src / "cat").glob("*.png"):
        (src / "dog" / f"copy-{image.name}").write_bytes(image.read_bytes())
    proj = tmp_path / "proj"
    proj.mkdir()
    res = _stage(proj, {"source": "folder", "path": str(src), "on_bad": "skip"})
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: download.path {src}: 8 bad file(s) skipped leave 1 class(es)")
    )
    assert not (proj / "data" / "manifest.parquet").exists() and not (proj / "data" / "raw").exists()
