"""The benchmark's measurements run (on a few images) and its table renders: bench/ stays alive."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench", ROOT / "bench" / "bench.py")
assert spec is not None and spec.loader is not None
bench = importlib.util.module_from_spec(spec)
sys.modules["bench"] = bench
spec.loader.exec_module(bench)


@pytest.mark.slow  # two minutes of subprocesses and timed loops: the full suite's
def test_bench_measurements_on_a_few_images(tmp_path):
    paths, labels = bench.digits(tmp_path, factor=2)
    assert len(paths) == 2 * 1259 and len(labels) == len(paths)
    few, few_labels = paths[:40], np.asarray(labels[:40])
    cpu = torch.device("cpu")
    ex = bench.extraction(few, few_labels, 32, 16, cpu, tmp_path)
    # a ratio of two timings on 40 images is noise (it read 8.9 on a loaded machine): the
    # test keeps the measurement code alive; the speed itself is the benchmark's to report
    assert ex["images"] == 40 and np.isfinite(ex["efficiency"]) and ex["efficiency"] > 0
    ts = bench.two_stage_speedup(few, few_labels, 32, cpu, tmp_path)
    assert ts["speedup"] > 1
    ft = bench.finetune_efficiency(few, few_labels, 32, cpu, batch=8)
    assert ft["epoch_images_per_s"] > 0 and ft["bare_step_images_per_s"] > 0
    st = bench.store_stats(tmp_path)
    assert st["images"] == 40 and st["files"] >= 1
    result = {
        "machine": {"device": "CPU", "platform": "test", "cpu_count": 2, "torch": torch.__version__},
        "command": "test",
        "date": "today",
        "extraction": ex,
        "two_stage": ts,
        "finetune": ft,
        "store": st,
        "never_pay_twice": {
            "full_repro_s": 10.0,
            "head_change_repro_s": 1.0,
            "ratio": 0.1,
            "stages_rerun": ["evaluate"],
            "extraction_rerun": False,
        },
        "scale": [
            {
                "factor": 1,
                "images": 40,
                "extract_s": 1.0,
                "extract_images_per_s": 40.0,
                "extract_peak_rss_mb": 1.0,
                "extract_rss_growth_mb": 0.5,
                "memory": {"head_epoch_s": 0.1, "head_rss_growth_mb": 1.0, "features_mb": 0.2},
                "streamed": {"head_epoch_s": 0.1, "head_rss_growth_mb": 0.5},
            }
        ],
    }
    images = bench.image_scale([1, 2], 32, "cpu", budget_mb=1, n=24, side=96)
    one, two = images["points"]
    assert (one["images"], two["images"]) == (24, 48)
    assert two["extract"]["cache_held_mb"] <= 1 and two["finetune"]["images_per_s"] > 0
    assert one["download"]["images_per_s"] > 0 and two["score"]["growth_mb"] >= 0
    workers = bench.workers_and_threads(32, cpu, n=8, side=64)
    assert [w["workers"] for w in workers] == [0, 0, 0, 1, 1]
    assert all(w["extract_images_per_s"] > 0 for w in workers)
    assert "finetune_images_per_s" in workers[2] and "finetune_images_per_s" not in workers[0]
    result |= {"images": images, "workers": workers}
    md = bench.markdown(result)
    assert "**extraction efficiency**" in md and "| 1x | 40 |" in md
    assert "## Image stages at scale" in md and "| 2x | 48 |" in md and "## Workers and threads" in md


def test_overhead_is_wall_time_minus_the_work_the_runs_record(tmp_path):
    """bench/overhead.py: extraction, each head's whole grid, each end-to-end run's whole
    search and each learning-curve point's grid count as work; the rest of the wall time is
    overhead."""
    spec = importlib.util.spec_from_file_location("overhead", ROOT / "bench" / "overhead.py")
    assert spec is not None and spec.loader is not None
    overhead = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overhead)
    import json

    def write(rel: str, data: dict) -> None:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(json.dumps(data))

    write("extract/extract.json", {"total_time_s": 10.0})
    write("features-s0/train.json", {"train_time_s": 0.5, "search_time_s": 4.0})  # a head's grid
    write("full-s0/train.json", {"train_time_s": 30.0, "search_time_s": 51.0, "lr": 0.003})  # its search
    write("frozen-s0/train.json", {"train_time_s": 10.0, "lr": 0.01})  # a record without the search
    write("curve/heads-s0/features/f0.5/point.json", {"train_time_s": 0.1, "search_time_s": 2.0})
    write("curve/full-s0/f0.5/point.json", {"train_time_s": 9.0, "search_time_s": 18.0})
    work = overhead.recorded_work(tmp_path)
    assert work == {
        "extraction": 10.0,
        "probe grids": 4.0,
        "end-to-end training": 61.0,
        "learning-curve points": 20.0,
    }
    text = overhead.section(100.0, work)  # 95 s of work in 100 s: 5% overhead
    assert "| **overhead** (wall minus work) | 5.0 | 5.0% |" in text and "met" in text
    assert "NOT met" in overhead.section(200.0, work)
