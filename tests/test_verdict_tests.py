"""The verdict's tests of procedures and of equivalence: the variance-components t, the
non-inferiority test at the margin, repeated k-fold, and their calibration (docs/verdict.md)."""

import math

import numpy as np
import pytest
from helpers import make_image_folder
from scipy import stats as sps

from transferlab.config import BaseConfig
from transferlab.data.manifest import fold_column, split_column
from transferlab.data.splitting import build_manifest
from transferlab.verdict import calibration, evaluation
from transferlab.verdict.stats import noninferior, variance_components, vc_test


def adjusted_var(d_i):
    """The images' variance with Agresti and Min's half count per cell: pseudo-images +1 and
    -1 at weight 1/2 and 0 at weight 1, around the unshrunk mean."""
    mu = d_i.mean()
    dev = ((d_i - mu) ** 2).sum() + 0.5 * (1 - mu) ** 2 + 0.5 * (1 + mu) ** 2 + mu**2
    return dev / (len(d_i) + 1)


def test_one_group_is_the_paired_t_on_the_images():
    rng = np.random.default_rng(0)
    d = rng.choice([-1.0, 0.0, 1.0], size=200, p=[0.05, 0.88, 0.07])
    vc = variance_components([(np.arange(200), d)])
    assert vc["models"] == 1 and vc["df"] == 199 and vc["tau"] == 0.0
    assert vc["diff"] == pytest.approx(d.mean())
    assert vc["se"] == pytest.approx(math.sqrt(adjusted_var(d) / 200))
    # the half counts barely move a test with two dozen discordant images
    assert vc_test(vc)["p"] == pytest.approx(sps.ttest_1samp(d, 0.0).pvalue, rel=0.1)


def test_agreement_on_a_few_test_images_is_not_equivalence():
    """Two models right and wrong on the same 18 images have no variance to show; the half
    counts keep the test from calling them equivalent (at 2 points) on so little, while
    agreement on 1,000 images is enough."""
    few = variance_components([(np.arange(18), np.zeros(18))])
    assert few["se"] > 0.04 and noninferior(few, 0.02)["p"] > 0.05
    assert vc_test(variance_components([(np.arange(18), np.ones(18))]))["p"] < 1e-6  # 18 of 18 wins
    many = variance_components([(np.arange(1000), np.zeros(1000))])
    assert noninferior(many, 0.02)["p"] < 0.01


def test_fold_models_variance_enters_by_moments():
    """Five fold models of 40 images each: tau^2 is the variance of the fold means less the
    images' share of it, and Var(mu) = s^2(D_i)/N + tau^2/M on M - 1 degrees of freedom."""
    rng = np.random.default_rng(1)
    offsets = [0.2, -0.1, 0.15, -0.2, 0.05]
    groups = []
    for m, off in enumerate(offsets):
        d = np.clip(np.round(rng.normal(off, 0.4, 40)), -1, 1)
        groups.append((np.arange(40 * m, 40 * (m + 1)), d))
    vc = variance_components(groups)
    means = [g[1].mean() for g in groups]
    within = np.mean([g[1].var(ddof=1) / 40 for g in groups])
    tau2 = max(0.0, np.var(means, ddof=1) - within)
    d_all = np.concatenate([g[1] for g in groups])
    assert vc["tau"] == pytest.approx(math.sqrt(tau2))
    assert vc["se"] == pytest.approx(math.sqrt(adjusted_var(d_all) / 200 + tau2 / 5))
    assert vc["df"] == 4 and vc["images"] == 200
    assert tau2 > 0  # the offsets are far larger than the images' noise over 40 images
    # the fold models' variance widens the test beyond the images' own
    naive = variance_components([(np.arange(200), d_all)])
    assert vc_test(vc)["p"] > vc_test(naive)["p"]


def test_repeats_average_each_image_over_its_partitions():
    """With two partitions every image has two differences; D_i averages them, so the
    images count once (N), not once per partition."""
    d0 = np.array([1.0, 0.0, 0.0, -1.0])
    d1 = np.array([1.0, 1.0, 0.0, 0.0])
    vc = variance_components(
        [
            (np.array([0, 1]), d0[:2]),
            (np.array([2, 3]), d0[2:]),
            (np.array([1, 3]), d1[[1, 3]]),
            (np.array([0, 2]), d1[[0, 2]]),
        ]
    )
    d_i = (d0 + d1) / 2
    assert vc["images"] == 4 and vc["models"] == 4 and vc["diff"] == pytest.approx(d_i.mean())
    assert vc["s_images"] == pytest.approx(math.sqrt(adjusted_var(d_i)))


def test_noninferiority_bound_and_test_agree():
    vc = {"diff": -0.01, "se": 0.006, "df": 14}
    for family in (1, 3, 5):
        ni = noninferior(vc, 0.02, family)
        assert (ni["lower_family"] > -0.02) == (ni["p"] < 0.05 / family)
        assert ni["p"] == pytest.approx(sps.t.sf((-0.01 + 0.02) / 0.006, 14))
    assert noninferior({"diff": 0.0, "se": 0.0, "df": 1}, 0.02)["p"] == 0.0  # same predictions
    assert noninferior({"diff": -0.05, "se": 0.0, "df": 1}, 0.02)["p"] == 1.0


def test_repeats_need_folds_and_a_seed_per_fold_model():
    assert BaseConfig(folds=5, repeats=3, seeds=list(range(15))).splittings == 15
    with pytest.raises(
        ValueError, match=r"3 partitions of 5 folds \(15 fold models\).*leave splitting\(s\) \[5, 6"
    ):
        BaseConfig(folds=5, repeats=3, seeds=[0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"repeats: 2 re-draws the partition of k-fold .* needs folds >= 2"):
        BaseConfig(repeats=2)


def test_repeated_folds_redraw_the_partition_and_each_tests_every_image_once(tmp_path):
    root = tmp_path / "imgs"
    items = make_image_folder(root, classes=3, per_class=10)
    kw = {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0, "folds": 3}
    once = build_manifest(root, items, **kw)
    m = build_manifest(root, items, **kw, repeats=2)
    # partition 0 is the un-repeated manifest's; partition 1 is a fresh one
    assert m[fold_column(0)].to_list() == once[fold_column(0)].to_list()
    assert m[fold_column(1)].to_list() != m[fold_column(0)].to_list()
    for r in range(2):
        for j in range(3):
            col = split_column(r * 3 + j, 6)
            assert ((m[col] == "test") == (m[fold_column(r)] == j)).all()
    seeds = list(range(6))
    t = evaluation.Tests.of(m, seeds, splits=1, folds=3, repeats=2)
    assert t.repeat == {0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 1}
    rng = np.random.default_rng(0)
    preds = {s: rng.integers(0, 3, len(t.tests[t.columns[s]]["test_ids"])).tolist() for s in seeds}
    assert not np.isnan(t.paired(preds)).any() and t.paired(preds).shape == (2, m.height)
    groups = t.by_fold_model(preds)
    assert len(groups) == 6
    covered = np.concatenate([t.positions(c) for c in groups])
    assert sorted(covered.tolist()) == sorted(list(range(m.height)) * 2)  # each image once per partition


def test_with_folds_the_verdict_test_is_variance_components_and_pooled_moves_aside(tmp_path):
    root = tmp_path / "imgs"
    items = make_image_folder(root, classes=3, per_class=20)
    m = build_manifest(root, items, val_fraction=0.2, test_fraction=0.2, seed=0, folds=3)
    seeds = [0, 1, 2]
    t = evaluation.Tests.of(m, seeds, splits=1, folds=3)
    rng = np.random.default_rng(2)
    labels = {s: t.tests[t.columns[s]]["test_labels"] for s in seeds}
    preds = {
        name: {s: [y if rng.random() < acc else (y + 1) % 3 for y in labels[s]] for s in seeds}
        for name, acc in (("a", 0.9), ("b", 0.6))
    }
    runs = evaluation.FoldRuns({n: {s: 0.5 for s in seeds} for n in preds}, n_train=30.0, n_test=20.0)
    c = evaluation.compare_all(
        {n: t.paired(p) for n, p in preds.items()},
        seeds,
        runs,
        {n: t.by_fold_model(p) for n, p in preds.items()},
        {col: t.positions(col) for col in t.tests},
    )
    (pair,) = c["pairs"]
    assert pair["test"] == "variance-components t" and pair["vc"]["df"] == 2
    assert pair["p"] == pair["vc"]["p"] and pair["ci_family"] == pair["vc"]["ci_family"]
    assert pair["pooled"]["p"] != pair["p"]  # McNemar's, kept as the trained models' view
    assert pair["diff"] == pytest.approx(pair["vc"]["diff"])


# Calibration (docs/verdict.md's table): 1,000 simulated data sets per cell, seeded.
SIMS = 1000
MC = math.sqrt(0.05 * 0.95 / SIMS)


@pytest.mark.slow
@pytest.mark.parametrize("design", calibration.DESIGNS, ids=lambda d: d.name)
def test_the_verdicts_tests_hold_their_error_rates_at_every_fold_model_sd(design):
    power = []
    for tau in (0.0, 0.2, 0.3, 0.5):
        r = calibration.rates(design, tau, margin=0.02, gap=0.03, sims=SIMS, pooled=False)
        print(design.name, tau, r)
        assert r["false_separation"] <= 0.05 + 2 * MC, (tau, r)
        assert r["false_equivalence"] <= 0.05 + 2 * MC, (tau, r)
        power.append(r["power_separation"])
    if design.folds > 1:  # fold models that vary cost power, never calibration
        assert power[0] >= power[-1]


@pytest.mark.slow
def test_more_fold_models_give_more_power_and_pooled_mcnemar_does_not_hold():
    five, fifteen = calibration.DESIGNS[1], calibration.DESIGNS[2]
    a = calibration.rates(five, 0.3, margin=0.02, gap=0.03, sims=400, seed=1)
    b = calibration.rates(fifteen, 0.3, margin=0.02, gap=0.03, sims=400, seed=1, pooled=False)
    assert b["power_separation"] > a["power_separation"] + 0.2
    assert b["power_equivalence"] > a["power_equivalence"]
    assert a["pooled"] > 0.15  # the trained-models test, read as a test of procedures


def test_the_simulated_world_is_the_one_the_table_describes():
    """About 86% accuracy and 6-8% discordant images, and skill_for_gap hits its gap."""
    rng = np.random.default_rng(0)
    a, b, _ = calibration._outcomes(rng, 200, calibration.DESIGNS[1], (0.0, 0.0), 0.0)
    assert 0.83 < a.mean() < 0.89 and 0.05 < (a != b).mean() < 0.09
    s = calibration.skill_for_gap(0.03, 0.3)
    assert calibration.true_accuracy(0.0, 0.3) - calibration.true_accuracy(s, 0.3) == pytest.approx(
        0.03, abs=1e-6
    )
    assert a.mean() == pytest.approx(calibration.true_accuracy(0.0, 0.0), abs=0.01)


@pytest.mark.parametrize("design", calibration.DESIGNS, ids=lambda d: d.name)
def test_the_calibrations_vectorised_estimate_is_the_pipelines(design):
    """bench/calibration.py measures the rates of stats.variance_components through a
    vectorised copy: the same mean and standard error on simulated data sets."""
    rng = np.random.default_rng(3)
    a, b, fold = calibration._outcomes(rng, 3, design, (0.0, 0.1), 0.3)
    mu, se, df = calibration._vc(a - b, fold, design.folds)
    for j in range(3):
        groups = []
        for r in range(design.repeats):
            for f in range(design.folds):
                idx = np.flatnonzero(fold[j, r] == f)
                groups.append((idx, (a - b)[j, r, idx]))
        vc = variance_components(groups)
        assert vc["diff"] == pytest.approx(mu[j]) and vc["se"] == pytest.approx(se[j]) and vc["df"] == df


def test_one_seed_on_a_hold_out_split_takes_the_paired_t_intervals():
    """On a few dozen test images the percentile bootstrap is too narrow (the audit); with
    one seed the pair's intervals are the half-counted paired t's, the bootstrap's kept
    beside; with several seeds the hierarchical bootstrap stays (it counts the seeds)."""
    rng = np.random.default_rng(4)
    correct = {m: (rng.random((1, 18)) < q).astype(float) for m, q in (("a", 0.8), ("b", 0.4), ("c", 0.6))}
    pairs = evaluation.compare_all(correct, [0])["pairs"]
    for pair in pairs:
        assert pair["ci_family"] == pair["vc"]["ci_family"] and pair["ci95"] == pair["vc"]["ci95"]
        assert set(pair["bootstrap"]) == {"ci95", "ci_family"}
        lo, hi = pair["bootstrap"]["ci_family"]
        assert pair["ci_family"][1] - pair["ci_family"][0] > hi - lo  # wider on 18 images
    two = {m: np.vstack([v, v]) for m, v in correct.items()}
    assert all("bootstrap" not in p for p in evaluation.compare_all(two, [0, 1])["pairs"])
