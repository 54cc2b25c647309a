"""`transferlab plan` (make plan): the estimate is the configured amount of work times the
measured unit costs. Here the unit costs are fixed, so the arithmetic can be checked by hand;
what they measure is timed by the real command (README: how close it came to make repro)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from dvc_project import TINY, _merge, run

from transferlab.config import load_params
from transferlab.serve import plan as P

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fixed_costs(monkeypatch):
    """1 s to start a stage (nothing besides), 0.1 ms to decode and 0.2 ms to augment an
    image, 1 ms per image inferred, 10 ms per image trained (every strategy), 1 us per probe
    row and iteration, no backbone built."""
    monkeypatch.setattr(P, "startup_seconds", lambda: 1.0)
    monkeypatch.setattr(P, "STAGE_EXTRA", 0.0)
    monkeypatch.setattr(P, "input_paces", lambda *a: (1e-4, 2e-4))
    monkeypatch.setattr(P, "inference_pace", lambda *a: 1e-3)
    monkeypatch.setattr(P, "training_pace", lambda *a: 1e-2)
    monkeypatch.setattr(P, "probe_pace", lambda *a: 1e-6)

    class Net:
        num_features = 8
        preprocess = None  # read only by input_paces, fixed above

    monkeypatch.setattr("transferlab.features.backbones.create_backbone", lambda *a, **k: Net())


def _params(tmp_path: Path, over: dict):
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_merge(_merge(base, TINY), over)))
    return load_params(path)


def test_the_estimate_is_the_work_times_the_measured_costs(tmp_path, fixed_costs):
    p = _params(
        tmp_path,
        {
            "base": {"seeds": [0, 1]},
            "finetune": {"strategies": ["full"], "from_probe": [], "full": {"lr": [1e-3, 3e-3]}},
            "curve": {"sizes": [0.5], "models": ["full"]},
        },
    )
    counts = {"train": 100, "val": 20, "test": 30}
    est = P.plan(p, counts, classes=4, paths=[Path("unused.png")])
    rows = {what: (n, s) for what, n, s in est.rows}
    shifts = len(p.shift.kinds)  # TINY: blur and noise
    score = (20 + 30 * (1 + shifts)) * 1e-3  # one run's val, test and shifted-test predictions
    views = p.extract_features.augment_views
    fill = 150 * 1e-4  # an image stage decodes its 150 images once
    inferred = (100 * (1 + views) + 20 + 30 * (1 + shifts)) * 1e-3
    assert rows["extract-features"] == (1, pytest.approx(1 + fill + inferred + 100 * views * 2e-4))
    grid = len(p.train_head.linear.l2)
    fit = {
        "features": 100 * P.ITERATIONS * grid * 1e-6,
        "features-augmented": 100 * (1 + views) * P.ITERATIONS * grid * 1e-6,
    }
    assert rows["train-head"] == (4, pytest.approx(2 * sum(1 + f + score for f in fit.values())))
    assert rows["curve-head"] == (2, pytest.approx(2 * (1 + 0.5 * sum(fit.values()))))
    cfg = p.finetune.strategy("full")  # TINY: 2 steps of 16, validation after each
    # the search: both rates a first rung of one step (annealed: a short run of its own),
    # then the better one a fresh run of the whole budget
    steps = 2 * 1 + 2
    search = p.finetune.search
    assert search.rungs == "annealed"
    assert P.search_steps(2, cfg.steps, cfg.eval_every, search.first_rung, 1, search.rungs) == steps
    step = 1e-2 + 2e-4  # the optimizer step and the image's augmentation, per image
    run_s = fill + steps * 16 * step + steps * 20 * 1e-3 + score
    assert rows["finetune full"] == (2, pytest.approx(2 * (1 + run_s)))  # one stage per seed
    # a curve point trains as many steps as the main run, scored on val and test alone
    point = run_s - score + (20 + 30) * 1e-3
    assert rows["curve-finetune full"] == (2, pytest.approx(2 * (1 + point)))
    assert not any(w.startswith("finetune frozen") for w in rows)  # not listed, costs nothing
    assert est.total == pytest.approx(sum(s for _, s in rows.values()))
    text = est.text()
    assert text.splitlines()[0].split() == ["stage", "stages", "estimated"]
    assert "total" in text and "from scratch" in text


def test_over_an_hour_on_a_cpu_points_to_the_levers(tmp_path, fixed_costs, monkeypatch):
    monkeypatch.setattr(P, "training_pace", lambda *a: 1.0)  # a second per image: 20,000 photos
    default_budget = {"steps": 500, "eval_every": 25, "warmup_steps": 25, "batch_size": 32}
    est = P.plan(
        _params(
            tmp_path, {"finetune": {"budget": default_budget, "strategies": ["frozen", "partial", "full"]}}
        ),
        {"train": 20_000, "val": 2_000, "test": 2_000},
        classes=10,
    )
    assert est.total > 3600 and "finetune.budget.steps" in est.notes[-1] and "GPU profile" in est.notes[-1]


def test_plan_without_a_manifest_says_what_to_run(tmp_path):
    res = run(tmp_path, sys.executable, "-m", "transferlab.serve.app", "plan", check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: data/manifest.parquet: manifest not found")


def test_the_input_pipeline_is_timed_on_the_datas_own_images(image_folder):
    from transferlab.data.images import Preprocess

    root, items = image_folder
    p, pre = load_params(ROOT / "params.yaml"), Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    decoding, augmenting = P.input_paces(p, pre, [root / rel for rel, _ in items])
    assert 0 < decoding < 1 and 0 < augmenting < 1  # seconds per image, after a warm-up
    assert P.input_paces(p, pre, []) == (0.0, 0.0)  # nothing to time
