"""The learning-rate search every end-to-end run owns (transferlab.training.search), the
step-budget Trainer it pauses and resumes, and the plateau rule that says a run converged."""

import math

import pytest
import torch

from transferlab.selection import AllDiverged
from transferlab.serve.plan import search_steps
from transferlab.training.loop import EpochRecord, FitResult, Schedule, TensorBatches, Trainer
from transferlab.training.search import search

CPU = torch.device("cpu")


class FakeRun:
    """A Trainer's interface over a made-up validation curve: the loss falls with the steps
    towards a floor set by how far the rate is from ``best`` (in decades); rates above
    ``blows_up`` diverge."""

    def __init__(self, lr: float, best: float, every: int, total: int, blows_up: float = math.inf):
        self.lr, self.best, self.every, self.total, self.blows_up = lr, best, every, total, blows_up
        self.result = FitResult()
        self.finished = self.closed = False

    def advance(self, until: int) -> FitResult:
        while self.result.steps < min(until, self.total) and not self.result.diverged:
            step = self.result.steps + self.every
            if self.lr > self.blows_up:
                loss = math.nan
                self.result.diverged = True
            else:
                loss = 0.1 + abs(math.log10(self.lr / self.best)) + 1.0 / step
            acc = 1.0 - loss / 4 if math.isfinite(loss) else 0.0
            self.result.history.append(
                EpochRecord(len(self.result.history), loss, acc, loss, acc, 1.0, 1.0, {}, step)
            )
            self.result.steps = step
            self.result.seconds += 1.0
        return self.result

    def finish(self) -> FitResult:
        self.finished = True
        return self.result

    def close(self) -> None:
        self.closed = True


def _search(
    grid,
    best,
    *,
    total=30,
    every=5,
    first_rung=0.34,
    keep=1,
    max_extend=2,
    blows_up=math.inf,
    rungs="continued",
):
    """The search over FakeRuns; ``runs`` holds each rate's latest run, ``started`` every
    (rate, steps) a run was started for."""
    runs: dict[float, FakeRun] = {}
    started: list[tuple[float, int]] = []

    def start(lr: float, steps: int) -> FakeRun:
        runs[lr] = FakeRun(lr, best, every, steps, blows_up)
        started.append((lr, steps))
        return runs[lr]

    found = search(
        grid,
        total,
        start,
        first_rung=first_rung,
        keep=keep,
        max_extend=max_extend,
        eval_every=every,
        rungs=rungs,
    )
    found.started = started
    return found, runs


def test_an_interior_best_is_picked_without_extending():
    found, runs = _search([1e-3, 3e-3, 1e-2], best=3e-3)
    assert found.picked.lr == 3e-3 and not found.extended and found.cap_hit is None
    assert found.at_edge is None
    # only the picked rate trained the whole budget; the others stopped at the first rung
    assert runs[3e-3].result.steps == 30 and runs[3e-3].finished
    assert runs[1e-3].result.steps == runs[1e-2].result.steps == found.rung_steps == 10
    assert runs[1e-3].closed and runs[1e-2].closed


def test_a_best_rate_at_an_edge_extends_the_grid_by_its_own_ratio():
    found, runs = _search([1e-3, 3e-3, 1e-2], best=3e-2)
    # 1e-2 x (1e-2 / 3e-3); then 0.0333 is at the edge in turn, and 0.111 above it loses
    assert found.extended == [0.0333, 0.111]
    assert found.picked.lr == 0.0333 and found.at_edge is None and found.cap_hit is None
    found, runs = _search([1e-3, 1e-2, 1e-1], best=1e-4, max_extend=3)
    assert found.extended == [1e-4, 1e-5] and found.picked.lr == 1e-4 and found.at_edge is None
    assert found.cap_hit is None


def test_the_cap_stops_the_search_and_says_so():
    found, _ = _search([1e-3, 3e-3, 1e-2], best=1.0, max_extend=2)
    assert len(found.extended) == 2 and found.cap_hit == "above" and found.at_edge == "above"
    record = found.record()
    assert record["cap_hit"] == "above" and record["tried"] == sorted(record["tried"])
    assert [p["origin"] for p in record["points"]].count("extended above") == 2
    found, _ = _search([1e-3, 3e-3, 1e-2], best=1.0, max_extend=0)
    assert found.extended == [] and found.cap_hit == "above"


def test_a_diverged_rate_bounds_the_search_and_is_never_picked():
    found, runs = _search([1e-3, 3e-3, 1e-2], best=1.0, blows_up=0.02)
    # 1e-2 is best, 3.33e-2 diverges: 1e-2 is interior now and wins
    assert found.picked.lr == 1e-2 and runs[0.0333].result.diverged and found.at_edge is None
    with pytest.raises(AllDiverged, match="every rate tried"):
        _search([1e-3, 3e-3], best=1e-3, blows_up=1e-4)


def test_the_cost_is_the_rungs_plus_the_survivors_as_the_plan_counts():
    for keep in (1, 2):
        found, runs = _search([1e-3, 3e-3, 1e-2], best=3e-3, keep=keep)
        assert sum(r.result.steps for r in runs.values()) == search_steps(3, 30, 5, 0.34, keep, "continued")
        assert found.steps == search_steps(3, 30, 5, 0.34, keep, "continued")
        found, _ = _search([1e-3, 3e-3, 1e-2], best=3e-3, keep=keep, rungs="annealed")
        assert found.steps == search_steps(3, 30, 5, 0.34, keep, "annealed")
    assert search_steps(3, 30, 5, 0.34, 1, "continued") == 3 * 10 + 20  # 1.67 budgets
    assert search_steps(3, 30, 5, 0.34, 1, "annealed") == 3 * 10 + 30  # 2 budgets
    # exhaustive: every rate the whole budget, each judged
    found, runs = _search([1e-3, 3e-3, 1e-2], best=3e-3, first_rung=1.0)
    assert all(r.result.steps == 30 and r.finished for r in runs.values())
    assert sum(r.result.steps for r in runs.values()) == search_steps(3, 30, 5, 1.0, 1)
    assert found.started == [(1e-3, 30), (3e-3, 30), (1e-2, 30)]  # no rung, in either mode
    # one rate: the user's fixed choice, the whole budget, nothing searched
    found, runs = _search([3e-3], best=1.0)
    assert list(runs) == [3e-3] and runs[3e-3].result.steps == 30 and found.at_edge is None


def _record(step: int, val_loss: float, val_acc: float) -> EpochRecord:
    return EpochRecord(0, 0.0, 0.0, val_loss, val_acc, 0.0, 0.0, {}, step)


def _result(losses: list[float], every: int = 10, accs: list[float] | None = None, **kw) -> FitResult:
    """A run's rounds; accuracy rising with every round unless given."""
    accs = accs or [0.5 + 0.05 * i for i in range(len(losses))]
    r = FitResult(
        history=[_record(every * (i + 1), v, a) for i, (v, a) in enumerate(zip(losses, accs, strict=True))],
        **kw,
    )
    r.steps = every * len(losses)
    return r


def test_the_plateau_rule():
    s = Schedule(steps=80, eval_every=10, converge_tol=0.05)
    # the last quarter (steps 70, 80) bought 1% of loss: converged, however late the best round
    assert s.converged(_result([1.0, 0.6, 0.4, 0.3, 0.25, 0.22, 0.219, 0.218])) is True
    # still falling by a fifth, accuracy still rising: not converged
    assert s.converged(_result([1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.26, 0.24])) is False
    # the loss falls on but no image more is right: a settled classifier growing confident
    flat = [0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.97, 0.96]
    assert s.converged(_result([1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.26, 0.24], accs=flat)) is True
    assert s.converged(_result([1.0, 0.5], stopped_early=True)) is True  # patience ended it
    assert s.converged(_result([1.0, math.nan], diverged=True)) is False
    assert s.converged(_result([1.0, 0.5, 0.4])) is None  # cut short by a search: not judged
    assert Schedule(steps=80, eval_every=10).converged(_result([1.0] * 8)) is None  # no rule set


def _trainer(lr: float, seed: int = 0) -> Trainer:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 2))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(120, 5, generator=g)
    y = (x[:, 0] > 0).long()
    train = TensorBatches(x[:96], y[:96], 16, shuffle=True, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    return Trainer(
        model,
        opt,
        train,
        TensorBatches(x[96:], y[96:], 64),
        Schedule(steps=20, eval_every=5, warmup_steps=2),
        CPU,
    )


def test_a_paused_run_ends_where_a_straight_run_ends():
    """A search pauses its survivor after the first rung while other rates train (drawing on
    torch's random state for their dropout): resumed, the run is bit for bit the run trained
    straight through, so a search's pick is the run it would have been alone."""
    straight = _trainer(0.01)
    straight.advance(20)
    a = straight.finish()
    paused = _trainer(0.01)
    paused.advance(10)
    other = _trainer(0.05, seed=3)
    other.advance(15)  # another rate trains in between
    torch.rand(100)  # and anything else draws random numbers
    paused.advance(20)
    b = paused.finish()
    assert [r.val_loss for r in a.history] == [r.val_loss for r in b.history]
    assert a.steps == b.steps == 20 and len(a.history) == 4
    for p, q in zip(straight.model.parameters(), paused.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_validation_runs_every_eval_every_steps_and_at_the_end():
    t = Trainer(
        *(lambda tr: (tr.model, tr.optimizer, tr.train_loader, tr.val_loader))(_trainer(0.01)),
        Schedule(steps=12, eval_every=5),
        CPU,
    )
    t.advance(12)
    assert [r.step for r in t.finish().history] == [5, 10, 12]


def test_annealed_rungs_are_short_runs_of_their_own_and_survivors_start_again():
    """rungs: annealed: each first rung is a whole run of the rung's length (its schedule
    ends there); the survivor starts a fresh run of the whole budget."""
    found, runs = _search([1e-3, 3e-3, 1e-2], best=3e-3, rungs="annealed")
    assert found.started == [(1e-3, 10), (3e-3, 10), (1e-2, 10), (3e-3, 30)]
    assert found.picked.lr == 3e-3 and found.picked.result is runs[3e-3].result
    assert runs[3e-3].result.steps == 30 and runs[3e-3].finished
    record = found.record()
    (picked,) = [p for p in record["points"] if p["picked"]]
    assert picked["trained_steps"] == 40 and picked["steps"] == 30 and record["rungs"] == "annealed"
    # continued: the rung is the start of the budget's run, which the survivor carries on
    found, runs = _search([1e-3, 3e-3, 1e-2], best=3e-3, rungs="continued")
    assert found.started == [(1e-3, 30), (3e-3, 30), (1e-2, 30)]


def test_publishing_the_picked_curves_keeps_what_else_is_in_plots(tmp_path, monkeypatch):
    """A stage run by hand replaces the run's curves with the picked rate's, and leaves the
    rest of plots/ (DVC's .gitignore, tracked by git) alone."""
    from transferlab.training import endtoend

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "results/full-s0"
    (run / "plots/metrics/val").mkdir(parents=True)
    (run / "plots/metrics/val/acc.tsv").write_text("old\n")
    (run / "plots/.gitignore").write_text("/metrics\n")
    picked = run / "search/lr0.003/plots/metrics/val"
    picked.mkdir(parents=True)
    (picked / "acc.tsv").write_text("step\tacc\n")
    (run / "search/lr0.003/metrics.json").write_text("{}")
    endtoend._publish_curves("full-s0", 0.003)
    assert (run / "plots/metrics/val/acc.tsv").read_text() == "step\tacc\n"
    assert (run / "plots/.gitignore").read_text() == "/metrics\n"
    assert (run / "metrics.json").read_text() == "{}"
