"""transferlab benchmark: how close the pipeline runs to the hardware, against the obvious
alternatives, measured side by side in one run on the machine at hand.

    make bench                    # or: .venv/bin/python bench/bench.py [--image-size 64]

Writes bench/results/<machine>.md and .json. The figures:

1. extraction efficiency: images/s of extraction end to end (decode, transform, forward,
   Zarr write) / images/s of the bare backbone forward on pre-made tensors (same batch,
   size, dtype, memory format)                                       target >= 0.9
2. two-stage speed-up: one head epoch on cached features vs one `frozen` end-to-end epoch
   on the same images                                                target >= 100x (CPU)
3. fine-tuning efficiency: images/s of a `full` epoch (loader, augmentation, step) / the
   bare forward+backward+step on pre-made tensors                    target >= 0.85
4. never pay twice: `dvc repro` after a head-only change vs the whole pipeline; the
   re-run must not extract
5. scale: extraction and train-head time and peak memory at 1x, 4x, 16x the data, with
   train-head in memory and streamed under a memory budget
6. feature store: bytes per image, files, read throughput vs the same array in memory

Every timing is wall-clock after a warm-up, the best of two repeats where the run is short
(this machine shares its cores), on the default backbone (EfficientNet-Lite0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from transferlab.backbones import create_backbone  # noqa: E402
from transferlab.config import FullConfig, HeadConfig  # noqa: E402
from transferlab.features import FeatureStore, Fingerprint, StreamedBatches, extract_features  # noqa: E402
from transferlab.images import ImageDataset, eval_loader, train_transform  # noqa: E402
from transferlab.manifest import split_view  # noqa: E402
from transferlab.models import TransferModel, make_head  # noqa: E402
from transferlab.runtime import environment, memory_format, place, resolve_device, sync  # noqa: E402
from transferlab.sources import write_digits  # noqa: E402
from transferlab.splitting import build_manifest  # noqa: E402
from transferlab.strategies import apply_strategy, head_param_groups, param_groups  # noqa: E402
from transferlab.training import TensorBatches, train_one_epoch  # noqa: E402

MB = 2**20


def _status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> float:
    """Start a new peak-memory window (Linux: clear_refs 5 resets VmHWM); returns RSS now.

    ru_maxrss cannot do this: it is a lifetime high-water mark, which importing torch
    already sets higher than most of what the measured phases allocate.
    """
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def best_of(n: int, fn, *args, **kw) -> float:
    """The fastest of ``n`` timed calls: the least disturbed by other work on the machine."""
    return min(timed(fn, *args, **kw)[1] for _ in range(n))


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def digits(root: Path, factor: int = 1) -> tuple[list[Path], np.ndarray]:
    """The digits as PNG files, ``factor`` times over (copies under other names)."""
    items = write_digits(root / "raw")
    m = build_manifest(root / "raw", items, val_fraction=0.15, test_fraction=0.15, seed=0)
    view = split_view(m, root / "raw", "train")
    paths, labels = list(view.paths), view.labels
    for k in range(1, factor):
        for p in view.paths:
            q = p.with_name(f"{p.stem}-r{k}{p.suffix}")
            shutil.copyfile(p, q)
            paths.append(q)
        labels = np.concatenate([labels, view.labels])
    return paths, labels


# -------------------------------------------------------------------------------- 1. extraction


def bare_forward_ips(backbone, size: int, batch: int, n: int, device) -> float:
    x = torch.randn(batch, 3, size, size, device=device)
    if device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    backbone.eval().to(device)
    steps = max(1, n // batch)

    def run() -> None:
        for _ in range(steps):
            backbone(x)
        sync(device)

    with torch.inference_mode():
        backbone(x)  # warm-up
        return steps * batch / best_of(2, run)


def extraction(paths, labels, size: int, batch: int, device, tmp: Path) -> dict:
    backbone = create_backbone("efficientnet_lite0", size, crop_pct=1.0)
    ds, t_decode = timed(ImageDataset, paths, labels, None)
    loader = eval_loader(paths, labels, backbone.preprocess, batch, dataset=ds)
    fp = Fingerprint.of(backbone, "bench")
    bare = bare_forward_ips(backbone, size, batch, len(paths), device)
    stats, t_total = timed(
        extract_features,
        backbone,
        {"train": loader},
        {"train": np.arange(len(paths))},
        tmp / "store",
        fp,
        device,
    )
    e2e = len(paths) / (t_decode + t_total)
    return {
        "images": len(paths),
        "image_size": size,
        "batch": batch,
        "end_to_end_images_per_s": e2e,
        "bare_forward_images_per_s": bare,
        "efficiency": e2e / bare,
        "profile_s": {
            "decode": t_decode,
            "forward": stats.forward_seconds,
            "transform_and_write": t_total - stats.forward_seconds,
        },
    }


# -------------------------------------------------------------------------------- 2, 3. epochs


def two_stage_speedup(paths, labels, size: int, device, tmp: Path) -> dict:
    store = FeatureStore.open(tmp / "store")
    x, y, _ = store.load("train")
    head = make_head(HeadConfig(), x.shape[1], 10).to(device)
    opt = torch.optim.AdamW(head_param_groups(head, 1e-3, 1e-4))
    crit = torch.nn.CrossEntropyLoss()
    batches = TensorBatches(x, y, 64, shuffle=True, generator=torch.Generator().manual_seed(0))
    train_one_epoch(head, batches, crit, opt, None, device)  # warm-up
    _, t_head = timed(train_one_epoch, head, batches, crit, opt, None, device)

    bb = create_backbone("efficientnet_lite0", size, crop_pct=1.0)
    model = TransferModel(bb, make_head(HeadConfig(), bb.num_features, 10))
    apply_strategy(model, "frozen", FullConfig())
    place(model, device)
    ds = ImageDataset(
        paths, labels, train_transform(bb.preprocess, crop_scale=(0.8, 1.0), rotation_degrees=10, hflip=False)
    )
    loader = DataLoader(ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(param_groups(model, FullConfig(), 1e-3))
    t_frozen = best_of(2, train_one_epoch, model, loader, crit, opt, None, device)
    return {"head_epoch_s": t_head, "frozen_epoch_s": t_frozen, "speedup": t_frozen / t_head}


def finetune_efficiency(paths, labels, size: int, device, batch: int = 64) -> dict:
    bb = create_backbone("efficientnet_lite0", size, crop_pct=1.0)
    model = TransferModel(bb, make_head(HeadConfig(), bb.num_features, 10))
    cfg = FullConfig()
    apply_strategy(model, "full", cfg)
    place(model, device)
    crit = torch.nn.CrossEntropyLoss()
    opt = torch.optim.AdamW(param_groups(model, cfg, 1e-3))
    # bare: the same model, step and batch on pre-made tensors
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format(device))
    yb = torch.randint(0, 10, (batch,), device=device)
    model.train()

    def step():
        loss = crit(model(x), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    sync(device)
    steps = max(1, len(paths) // batch)
    t_bare = best_of(2, lambda: [step() for _ in range(steps)])
    sync(device)
    bare = steps * batch / t_bare
    ds = ImageDataset(
        paths, labels, train_transform(bb.preprocess, crop_scale=(0.8, 1.0), rotation_degrees=10, hflip=False)
    )
    loader = DataLoader(
        ds, batch_size=batch, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0)
    )
    t_epoch = best_of(2, train_one_epoch, model, loader, crit, opt, None, device)
    e2e = steps * batch / t_epoch
    return {"epoch_images_per_s": e2e, "bare_step_images_per_s": bare, "efficiency": e2e / bare}


# -------------------------------------------------------------------------------- 4. dvc


def never_pay_twice(tmp: Path) -> dict:
    """The real pipeline on a copy: whole run, then a head-only change."""
    import yaml

    proj = tmp / "project"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for rel in filter(None, tracked.stdout.split("\0")):
        src = ROOT / rel
        if (
            src.is_file()
            and not rel.startswith(("results/", "reports/", "bench/results/"))
            and rel != "dvc.lock"
        ):
            (proj / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, proj / rel)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    for s in ("partial", "progressive", "scratch", "lp-ft"):
        params["finetune"][s]["lr"] = []  # an empty grid skips a strategy
    for s in ("frozen", "full"):
        params["finetune"][s].update({"epochs": 1, "warmup_epochs": 0, "lr": params["finetune"][s]["lr"][:1]})
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "b@b",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "b@b",
    }

    def sh(*cmd):
        return subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, check=True)

    sh("git", "init", "-q")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "bench")
    dvc = [sys.executable, "-m", "dvc", "repro"]
    full, t_full = timed(sh, *dvc)
    params["train_head"]["linear"]["l2"] = [v * 2 for v in params["train_head"]["linear"]["l2"]]
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again, t_again = timed(sh, *dvc)
    rerun = sorted(
        line.split("'")[1] for line in again.stdout.splitlines() if line.startswith("Running stage")
    )
    return {
        "pipeline": "default params, strategies frozen and full at 1 epoch and one rate, one seed",
        "full_repro_s": t_full,
        "head_change_repro_s": t_again,
        "ratio": t_again / t_full,
        "stages_rerun": rerun,
        "extraction_rerun": "extract-features" in rerun,
    }


# -------------------------------------------------------------------------------- 5. scale


def _scale_worker(args) -> None:
    """One step of a scale point in a fresh process, so that its peak memory is its own:
    ``extract`` writes the store, ``head`` trains one epoch from it (in memory or streamed)."""
    tmp = Path(args.tmp)
    device = resolve_device(args.device)
    if args.step == "extract":
        paths, labels = digits(tmp, args.factor)
        base = reset_peak()
        ex = extraction(paths, labels, args.image_size, 64, device, tmp)
        print(
            json.dumps(
                {
                    "images": len(paths),
                    "extract_s": sum(ex["profile_s"].values()),
                    "extract_images_per_s": ex["end_to_end_images_per_s"],
                    "extract_peak_rss_mb": _status_mb("VmHWM"),
                    "extract_rss_growth_mb": _status_mb("VmHWM") - base,
                }
            )
        )
        return
    store = FeatureStore.open(tmp / "store")
    feats, ys = store.arrays("train")
    head = make_head(HeadConfig(), feats.shape[1], 10)
    opt = torch.optim.AdamW(head_param_groups(head, 1e-3, 1e-4))
    crit = torch.nn.CrossEntropyLoss()
    base = reset_peak()
    g = torch.Generator().manual_seed(0)
    batches: StreamedBatches | TensorBatches
    if args.streamed:
        batches = StreamedBatches([(feats, ys)], 64, shuffle=True, generator=g, block_rows=4096)
    else:
        x, y, _ = store.load("train")
        batches = TensorBatches(x, y, 64, shuffle=True, generator=g)
    _, t = timed(train_one_epoch, head, batches, crit, opt, None, device)
    print(
        json.dumps(
            {
                "head_epoch_s": t,
                "head_rss_growth_mb": _status_mb("VmHWM") - base,
                "features_mb": feats.shape[0] * feats.shape[1] * 4 / MB,
            }
        )
    )


def scale(factors, image_size: int, device: str) -> list[dict]:
    out = []
    for f in factors:
        with tempfile.TemporaryDirectory() as tmp:

            def step(*extra: str, f: int = f, tmp: str = tmp) -> dict:
                cmd = [
                    sys.executable,
                    __file__,
                    "_scale",
                    "--factor",
                    str(f),
                    "--tmp",
                    tmp,
                    "--image-size",
                    str(image_size),
                    "--device",
                    device,
                    *extra,
                ]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                return json.loads(res.stdout.strip().splitlines()[-1])

            point = {"factor": f, **step("--step", "extract")}
            point["memory"] = step("--step", "head")
            point["streamed"] = step("--step", "head", "--streamed")
            out.append(point)
    return out


# -------------------------------------------------------------------------------- levers


def levers(size: int, device, tmp: Path) -> dict:
    """Each speed lever the pipeline uses, on and off, in the same run."""
    bb = create_backbone("efficientnet_lite0", size, crop_pct=1.0).eval().to(device)
    out: dict[str, dict[str, float]] = {}
    if device.type == "cpu":
        x = torch.randn(128, 3, size, size)
        with torch.inference_mode():
            rates = {}
            for name, fmt in (
                ("contiguous", torch.contiguous_format),
                ("channels_last", torch.channels_last),
            ):
                m, xx = bb.to(memory_format=fmt), x.contiguous(memory_format=fmt)
                m(xx)
                _, t = timed(lambda m=m, xx=xx: [m(xx) for _ in range(3)])
                rates[name] = 3 * 128 / t
        out["channels_last_forward_images_per_s"] = rates
    if device.type == "cpu":
        rates = {}
        for name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
            torch.manual_seed(0)
            tm = TransferModel(
                create_backbone("efficientnet_lite0", size, crop_pct=1.0), make_head(HeadConfig(), 1280, 10)
            )
            apply_strategy(tm, "full", FullConfig())
            tm.to(memory_format=fmt).train()
            xb = torch.randn(64, 3, size, size).contiguous(memory_format=fmt)
            yb = torch.randint(0, 10, (64,))
            opt = torch.optim.AdamW(param_groups(tm, FullConfig(), 1e-3))

            def step(m=tm, xb=xb, yb=yb, opt=opt) -> None:
                loss = torch.nn.functional.cross_entropy(m(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            step()
            rates[name] = 6 * 64 / best_of(2, lambda step=step: [step() for _ in range(6)])
        out["channels_last_train_images_per_s"] = rates
    out["extraction_batch_images_per_s"] = {
        str(b): bare_forward_ips(bb, size, b, 1024, device) for b in (64, 128)
    }
    store = FeatureStore.open(tmp / "store")
    xf, yf, _ = store.load("train")
    head = make_head(HeadConfig(), xf.shape[1], 10)
    opt = torch.optim.AdamW(head_param_groups(head, 1e-3, 1e-4))
    crit = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    tb = TensorBatches(xf, yf, 64, shuffle=True, generator=g)
    dl = DataLoader(torch.utils.data.TensorDataset(xf, yf), batch_size=64, shuffle=True, generator=g)
    train_one_epoch(head, tb, crit, opt, None, device)
    _, t_tb = timed(train_one_epoch, head, tb, crit, opt, None, device)
    _, t_dl = timed(train_one_epoch, head, dl, crit, opt, None, device)
    out["head_epoch_s"] = {"tensor_batches": t_tb, "dataloader_tensordataset": t_dl}
    return out


# -------------------------------------------------------------------------------- 6. store


def store_stats(tmp: Path) -> dict:
    path = tmp / "store"
    store = FeatureStore.open(path)
    feats, _ = store.arrays("train")
    n = feats.shape[0]
    files = [f for f in path.rglob("*") if f.is_file()]
    nbytes = sum(f.stat().st_size for f in files)
    _, t_read = timed(lambda: np.asarray(feats[:]))
    arr = np.asarray(feats[:])
    _, t_mem = timed(lambda: arr.copy())
    return {
        "images": n,
        "bytes_per_image": nbytes / n,
        "raw_bytes_per_image": feats.shape[1] * 4,
        "files": len(files),
        "read_mb_per_s": arr.nbytes / MB / t_read,
        "memory_copy_mb_per_s": arr.nbytes / MB / t_mem,
    }


# -------------------------------------------------------------------------------- report


def markdown(r: dict) -> str:
    e, s, f, d = r["extraction"], r["two_stage"], r["finetune"], r["never_pay_twice"]
    st = r["store"]
    lines = [
        f"# Benchmark: {r['machine']['device']}",
        "",
        f"Machine: {r['machine']['platform']}, {r['machine']['cpu_count']} CPUs, torch {r['machine']['torch']}, "
        f"device {r['machine']['device']}. EfficientNet-Lite0 at {e['image_size']} px, digits. "
        f"Run: `{r['command']}`, {r['date']}.",
        "",
        "| measure | value | target | met |",
        "|---|---:|---:|:---:|",
        f"| extraction end to end, images/s | {e['end_to_end_images_per_s']:.0f} | | |",
        f"| bare forward, images/s (batch {e['batch']}) | {e['bare_forward_images_per_s']:.0f} | | |",
        f"| **extraction efficiency** | **{e['efficiency']:.2f}** | 0.90 | {'yes' if e['efficiency'] >= 0.9 else 'no'} |",
        f"| head epoch on cached features | {s['head_epoch_s'] * 1000:.0f} ms | | |",
        f"| `frozen` end-to-end epoch | {s['frozen_epoch_s']:.1f} s | | |",
        f"| **two-stage speed-up** | **{s['speedup']:.0f}x** | 100x | {'yes' if s['speedup'] >= 100 else 'no'} |",
        f"| `full` fine-tuning epoch, images/s | {f['epoch_images_per_s']:.0f} | | |",
        f"| bare forward+backward+step, images/s | {f['bare_step_images_per_s']:.0f} | | |",
        f"| **fine-tuning efficiency** | **{f['efficiency']:.2f}** | 0.85 | {'yes' if f['efficiency'] >= 0.85 else 'no'} |",
        f"| `dvc repro`, whole pipeline | {d['full_repro_s']:.0f} s | | |",
        f"| `dvc repro` after a head-only change | {d['head_change_repro_s']:.0f} s | | |",
        f"| **never pay twice**: re-run / whole, extraction re-run | **{d['ratio']:.2f}**, {'yes' if d['extraction_rerun'] else 'no'} | extraction: no | {'no' if d['extraction_rerun'] else 'yes'} |",
        f"| feature store, bytes per image (raw float32: {st['raw_bytes_per_image']}) | {st['bytes_per_image']:.0f} | | |",
        f"| feature store files ({st['images']} images) | {st['files']} | | |",
        f"| store read / in-memory copy, MB/s | {st['read_mb_per_s']:.0f} / {st['memory_copy_mb_per_s']:.0f} | | |",
        "",
        f"Re-run after a head-only change ran: {', '.join(d['stages_rerun'])}.",
        "",
        "Where extraction time goes (s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in e["profile_s"].items())
        + ".",
        "",
        "## Levers, on and off",
        "",
    ]
    lv = r.get("levers", {})
    if "channels_last_forward_images_per_s" in lv:
        c = lv["channels_last_forward_images_per_s"]
        lines.append(
            f"- channels-last (CPU forward, batch 128): {c['channels_last']:.0f} images/s against "
            f"{c['contiguous']:.0f} contiguous ({c['channels_last'] / c['contiguous']:.2f}x)."
        )
    if "channels_last_train_images_per_s" in lv:
        c = lv["channels_last_train_images_per_s"]
        lines.append(
            f"- channels-last (CPU `full` train step, batch 64): {c['channels_last']:.0f} images/s against "
            f"{c['contiguous']:.0f} contiguous ({c['channels_last'] / c['contiguous']:.2f}x)."
        )
    if "extraction_batch_images_per_s" in lv:
        b = lv["extraction_batch_images_per_s"]
        lines.append(f"- extraction batch: {b['128']:.0f} images/s at 128 against {b['64']:.0f} at 64.")
    if "head_epoch_s" in lv:
        h = lv["head_epoch_s"]
        lines.append(
            f"- head epoch on in-memory tensors: {h['tensor_batches'] * 1000:.0f} ms with slicing (TensorBatches) "
            f"against {h['dataloader_tensordataset'] * 1000:.0f} ms through DataLoader(TensorDataset)."
        )
    lines += [
        "",
        "## Scale",
        "",
        "Train-head in memory loads every feature; streamed reads 4,096-row blocks from the store. "
        "Memory growth: peak resident memory of the phase (Linux VmHWM, reset at its start) minus "
        "resident memory at its start; extraction's includes building the backbone.",
        "",
        "| data | images | extraction s | images/s | extraction peak RSS MB / growth | features MB "
        "| head epoch s, in memory | RSS growth MB | head epoch s, streamed | RSS growth MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in r["scale"]:
        m, st_ = p["memory"], p["streamed"]
        lines.append(
            f"| {p['factor']}x | {p['images']} | {p['extract_s']:.1f} | {p['extract_images_per_s']:.0f} "
            f"| {p['extract_peak_rss_mb']:.0f} / {p['extract_rss_growth_mb']:.0f} | {m['features_mb']:.0f} | {m['head_epoch_s']:.3f} "
            f"| {m['head_rss_growth_mb']:.0f} | {st_['head_epoch_s']:.3f} | {st_['head_rss_growth_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="all", choices=["all", "_scale"])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--factors", default="1,4,16")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--factor", type=int, default=1)
    ap.add_argument("--tmp")
    ap.add_argument("--streamed", action="store_true")
    ap.add_argument("--step", choices=["extract", "head"], default="extract")
    args = ap.parse_args()
    if args.mode == "_scale":
        _scale_worker(args)
        return
    device = resolve_device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        paths, labels = digits(tmp)
        print("extraction ...", flush=True)
        ex = extraction(paths, labels, args.image_size, 64, device, tmp)
        print("two-stage speed-up ...", flush=True)
        ts = two_stage_speedup(paths, labels, args.image_size, device, tmp)
        print("fine-tuning efficiency ...", flush=True)
        ft = finetune_efficiency(paths, labels, args.image_size, device)
        st = store_stats(tmp)
        print("levers ...", flush=True)
        lv = levers(args.image_size, device, tmp)
        print("never pay twice (dvc repro) ...", flush=True)
        npt = never_pay_twice(tmp)
    print("scale ...", flush=True)
    sc = scale([int(f) for f in args.factors.split(",")], args.image_size, args.device)
    env = environment()
    device_name = (
        env["cuda"] if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    )
    result = {
        "machine": {**env, "platform": platform.platform(), "device": device_name},
        "command": " ".join(["python", "bench/bench.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "extraction": ex,
        "two_stage": ts,
        "finetune": ft,
        "never_pay_twice": npt,
        "store": st,
        "levers": lv,
        "scale": sc,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{'cuda' if device.type == 'cuda' else 'cpu'}-{env['cpu_count']}cores"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
