import pytest
import torch

from transferlab.config import OptimConfig, StrategyConfig
from transferlab.training.loop import TensorBatches, WarmupCosine, class_weights, fit

CPU = torch.device("cpu")


def _problem(seed=0, n=200):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def _fit(cfg, seed=0, lr=0.05):
    torch.manual_seed(seed)
    x, y = _problem()
    model = torch.nn.Linear(5, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    res = fit(
        model,
        opt,
        TensorBatches(x[:150], y[:150], 16, shuffle=True, generator=g),
        TensorBatches(x[150:], y[150:], 64),
        cfg,
        CPU,
    )
    return model, res


def test_fit_learns_and_keeps_the_best_epoch():
    model, res = _fit(OptimConfig(epochs=15))
    assert res.best.val_acc > 0.9
    best = min(range(len(res.history)), key=lambda i: res.history[i].val_loss)
    assert res.best_epoch == best
    x, y = _problem()
    loss = torch.nn.functional.cross_entropy(model(x[150:]), y[150:]).item()
    assert loss == pytest.approx(res.best.val_loss, rel=1e-5)  # best weights restored


def test_same_seed_same_run():
    _, a = _fit(OptimConfig(epochs=3))
    _, b = _fit(OptimConfig(epochs=3))
    assert [r.val_loss for r in a.history] == [r.val_loss for r in b.history]


def test_early_stopping():
    _, res = _fit(OptimConfig(epochs=200, early_stopping_patience=2), lr=0.5)
    assert res.stopped_early and len(res.history) < 200
    assert len(res.history) - 1 - res.best_epoch == 2


def test_warmup_then_cosine():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = WarmupCosine(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[-1] < 0.05 and all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))


def test_tensor_batches_cover_everything_once():
    x = torch.arange(10).float().unsqueeze(1)
    got = torch.cat(
        [
            b
            for b, _ in TensorBatches(
                x, x.squeeze(1), 3, shuffle=True, generator=torch.Generator().manual_seed(0)
            )
        ]
    )
    assert sorted(got.squeeze(1).tolist()) == list(range(10))


def test_groups_added_later_get_their_own_warmup_and_decay():
    """A block joining at step 5 of 10 must reach its nominal rate, not inherit the global
    cosine position (which would start it at half its rate and keep it below that)."""
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 1.0, "name": "head"}])
    sched = WarmupCosine(opt, total_steps=10, warmup_steps=0, join_warmup_steps=2)
    lrs = []
    for step in range(10):
        if step == 5:
            opt.add_param_group({"params": [b], "lr": 0.5, "base_lr": 0.5, "name": "block"})
            sched.apply()
        if step >= 5:
            lrs.append(opt.param_groups[1]["lr"])
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] < 0.05  # the head decayed to ~0 over the whole run
    assert lrs[0] == pytest.approx(0.25) and lrs[1] == pytest.approx(0.5)  # own warm-up
    assert max(lrs) == pytest.approx(0.5)  # reaches its nominal rate
    assert all(x >= y for x, y in zip(lrs[1:], lrs[2:], strict=False)) and lrs[-1] < 0.2  # then decays
    rates = sched.rates()
    assert rates["block"]["nominal"] == 0.5 and rates["block"]["joined_step"] == 5
    assert rates["block"]["peak"] == pytest.approx(0.5)
    assert rates["block"]["mean"] > 0.25  # trained near its nominal rate, not a fraction of it
    assert rates["head"]["first"] == pytest.approx(1.0)


def test_fit_reports_nominal_and_effective_rates():
    _, res = _fit(OptimConfig(epochs=3))
    (rates,) = res.lr_schedule.values()
    assert rates["nominal"] == pytest.approx(0.05) and rates["first"] == pytest.approx(0.05)
    assert 0 < rates["last"] < rates["mean"] < rates["nominal"]


def test_class_weights_are_inverse_frequency():
    w = class_weights(torch.tensor([0, 0, 0, 1]), 2)
    assert w.tolist() == pytest.approx([4 / 6, 2.0])
    assert class_weights(torch.tensor([0, 1, 2]), 3).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_bf16_autocast_trains():
    _, res = _fit(StrategyConfig(steps=5 * 13, eval_every=13, warmup_steps=13, amp=True))
    assert res.best.val_acc > 0.85


def test_the_plan_line_estimates_from_the_batches_after_the_first(capsys):
    """The first batch is timed apart (one-time costs); the rest at the pace of the next three."""
    from transferlab.runtime import Plan

    plan = Plan("full-s0", images=640, batches=10, epochs=5)
    for i, seconds in enumerate([2.0, 2.5, 3.0, 3.5, 4.0, 4.5], start=1):  # 2 s, then 0.5 s each
        plan(16 * i, seconds)
    (line,) = capsys.readouterr().out.splitlines()  # printed once, after the fourth batch
    assert line.startswith("plan: full-s0: 640 training images, 10 batches/epoch x 5 epochs;")
    assert "first batch 2.00 s, then 0.50 s/batch (over 3): about 26.5 s of training" in line  # 2 + 0.5 x 49


def test_the_plan_line_of_a_one_batch_run():
    from transferlab.runtime import Plan

    plan = Plan("frozen", images=20, batches=1, epochs=3)
    plan(20, 0.4)
    assert plan.done and plan.first == 0.4  # printed after its only batch, not waiting for more


def test_the_plan_line_of_a_fit_counts_images_whatever_batches_them(capsys):
    """fit's plan line names the images an epoch trains on: a DataLoader's dataset, or the
    in-memory and streamed batchers' own count (their len is in batches)."""
    import numpy as np

    from transferlab.features.store import StreamedBatches

    x, y = _problem()
    loaders = {
        "tensor": TensorBatches(x[:150], y[:150], 16),
        "dataloader": torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x[:150], y[:150]), batch_size=16
        ),
        "streamed": StreamedBatches(
            [(x[:150].numpy(), y[:150].numpy(), np.arange(150) < 150)], 16, block_rows=64
        ),
    }
    for name, loader in loaders.items():
        model = torch.nn.Linear(5, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        fit(model, opt, loader, TensorBatches(x[150:], y[150:], 64), OptimConfig(epochs=1), CPU, plan=name)
        (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("plan:")]
        assert line.startswith(f"plan: {name}: 150 training images, {len(loader)} batches"), line


def test_dvclive_is_imported_only_by_a_run_that_logs_curves(tmp_path):
    """Learning-curve points import the tracking module but log no curves: dvclive (and the
    part of DVC it brings, about a second of start-up) stays out until a CurveLogger opens."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from transferlab.training import tracking\n"
        "assert 'dvclive' not in sys.modules, 'imported with the module'\n"
        f"tracking.CurveLogger({str(tmp_path / 'run')!r}).close()\n"
        "assert 'dvclive' in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
