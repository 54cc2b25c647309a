"""k-fold cross-validation (base.folds): the folds, the splittings they give, the pooled
outcomes the paired tests compare, and the corrected resampled t-test next to them."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from helpers import make_image_folder
from scipy import stats as sps

from transferlab.config import BaseConfig
from transferlab.data.manifest import FOLD, split_column, split_columns
from transferlab.data.splitting import build_manifest, fold_splits, stratified_folds
from transferlab.errors import DataError
from transferlab.verdict import evaluation
from transferlab.verdict.stats import corrected_resampled_t, mcnemar_exact, paired_test


@pytest.mark.parametrize("k", [2, 3, 5, 10])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_folds_are_stratified_balanced_and_seeded(k, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, size=503)
    fold = stratified_folds(labels, k, seed)
    assert set(fold.tolist()) == set(range(k))
    sizes = np.bincount(fold, minlength=k)
    assert sizes.max() - sizes.min() <= 1  # the folds' sizes
    for cls in np.unique(labels):  # and every class's share of each fold
        per = np.bincount(fold[labels == cls], minlength=k)
        assert per.max() - per.min() <= 1, (cls, per)
    assert np.array_equal(fold, stratified_folds(labels, k, seed))
    assert not np.array_equal(fold, stratified_folds(labels, k, seed + 1))


def test_a_folds_splitting_tests_that_fold_and_validates_on_the_others():
    labels = np.repeat(np.arange(4), 30)
    fold = stratified_folds(labels, 5, 0)
    for j in range(5):
        split = np.asarray(fold_splits(labels, fold, j, 0.2, 0, list("abcd")))
        assert np.array_equal(split == "test", fold == j)
        for cls in range(4):  # validation carved per class from the other folds
            rest = (fold != j) & (labels == cls)
            assert np.sum(split[rest] == "val") == round(rest.sum() * 0.2)
            assert np.sum(split[rest] == "train") >= 1


def test_a_class_too_small_for_the_folds_is_named(tmp_path):
    labels = np.array([0] * 20 + [1] * 2)
    fold = stratified_folds(labels, 3, 0)
    with pytest.raises(
        DataError, match=r"^base.folds: class rare has only 2 image\(s\), too few for 3 folds"
    ):
        fold_splits(labels, fold, 0, 0.2, 0, ["common", "rare"])


def _manifest(tmp_path, folds, per_class=12):
    root = tmp_path / "imgs"
    items = make_image_folder(root, classes=3, per_class=per_class)
    return build_manifest(root, items, val_fraction=0.2, test_fraction=0.2, seed=0, folds=folds)


def test_the_manifest_tests_every_image_exactly_once(tmp_path):
    m = _manifest(tmp_path, folds=4)
    assert split_columns(m) == ["split", "split_1", "split_2", "split_3"]
    tested = np.zeros(m.height, dtype=int)
    for j, column in enumerate(split_columns(m)):
        test = (m[column] == "test").to_numpy()
        assert np.array_equal(test, (m[FOLD] == j).to_numpy())
        tested += test
        assert split_column(j, 4) == column  # seed j is tested on fold j
    assert (tested == 1).all()


def test_a_source_with_its_own_splits_is_refused(tmp_path):
    root = tmp_path / "imgs"
    items = [(rel, c, "train") for rel, c in make_image_folder(root, classes=2)]
    with pytest.raises(DataError, match=r"^base.folds: 3 re-draws every split, but my-folder brings its own"):
        build_manifest(root, items, val_fraction=0.2, test_fraction=0.2, seed=0, folds=3, source="my-folder")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"folds": 5, "seeds": [0, 1, 2]}, r"seeds \[0, 1, 2\] leave fold\(s\) \[3, 4\] untested"),
        ({"folds": 2, "seeds": [0, 1, 2]}, r"seeds \[0, 1, 2\] test the folds \[2, 1\] times"),
        ({"folds": 2, "splits": 2, "seeds": [0, 1]}, r"folds: 2 and splits: 2 cannot be combined"),
    ],
)
def test_folds_without_a_seed_per_fold_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        BaseConfig(**kw)
    assert BaseConfig(folds=2, seeds=[0, 1, 2, 3]).splittings == 2  # every fold twice


def test_pooled_outcomes_put_every_image_once_per_repeat(tmp_path):
    m = _manifest(tmp_path, folds=3)
    seeds = [0, 1, 2, 3, 4, 5]  # two repeats of three folds
    t = evaluation.Tests.of(m, seeds, splits=1, folds=3)
    assert t.ids == m["path"].to_list()
    assert t.repeat == {0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 1}
    rng = np.random.default_rng(0)
    preds = {s: rng.integers(0, 3, len(t.tests[t.columns[s]]["test_ids"])).tolist() for s in seeds}
    correct = t.paired(preds)
    assert correct.shape == (2, m.height)
    label = dict(zip(m["path"].to_list(), m["label"].to_list(), strict=True))
    pooled = t.pooled_predictions(preds)
    for s in seeds:  # every seed's prediction lands on its own images, in its repeat's row
        for image, p in zip(t.tests[t.columns[s]]["test_ids"], preds[s], strict=True):
            i = t.ids.index(image)
            assert pooled[t.repeat[s]][i] == p
            assert correct[t.repeat[s], i] == float(p == label[image])
    assert all(p >= 0 for row in pooled for p in row)


def test_the_corrected_t_test_is_nadeau_and_bengios():
    d = [0.01, 0.02, 0.03, 0.0, 0.04]
    # without the correction (n_test / n_train -> 0) it is the one-sample t-test
    plain = corrected_resampled_t(d, n_train=1e12, n_test=1.0)
    assert plain["p"] == pytest.approx(sps.ttest_1samp(d, 0.0).pvalue, rel=1e-6)
    # with it: variance x (1/5 + 200/800), t on 4 degrees of freedom
    r = corrected_resampled_t(d, n_train=800, n_test=200)
    t = 0.02 / math.sqrt((1 / 5 + 0.25) * np.var(d, ddof=1))
    assert r["t"] == pytest.approx(t)
    assert r["df"] == 4
    assert r["p"] == pytest.approx(2 * sps.t.sf(t, 4))
    assert r["p"] > plain["p"]  # the correction is conservative
    assert corrected_resampled_t([0.01], 800, 200)["p"] == 1.0  # one run: nothing to test


def _null_pooled(sim: int, n: int, k: int, fold_sd: float) -> bool:
    """One data set on which two procedures have the same expected accuracy: per image a
    difficulty shared by both, per fold each model a skill offset drawn from the same
    distribution (two seeds of one procedure). Whether the pooled test separates them."""
    rng = np.random.default_rng(sim)
    difficulty = rng.normal(2.0, 1.5, n)
    fold = stratified_folds(np.zeros(n, dtype=int), k, sim)
    outcomes = []
    for _ in range(2):
        skill = rng.normal(0.0, fold_sd, k)[fold]
        outcomes.append(rng.random(n) < 1 / (1 + np.exp(-(difficulty + skill))))
    a, b = (o.astype(float)[None] for o in outcomes)
    if mcnemar_exact(int(np.sum(a > b)), int(np.sum(a < b))) >= 0.05:
        return False  # the rule needs p < 0.05 first: the bootstrap cannot change this
    r = paired_test(a, b, boot=400)
    lo, hi = r["ci_family"]  # type: ignore[misc]
    return bool(r["p"] < 0.05 and (lo > 0 or hi < 0))  # type: ignore[operator]


@pytest.mark.parametrize("fold_sd", [0.0, 0.1])
def test_the_pooled_test_calls_equal_procedures_different_at_most_5_percent(fold_sd):
    """The measured false-separation rate of the pooled test under the null, with its
    Monte Carlo error: 600 data sets of 900 images in 5 folds (README: the number)."""
    sims = 600
    rate = np.mean([_null_pooled(i, 900, 5, fold_sd) for i in range(sims)])
    mc = math.sqrt(0.05 * 0.95 / sims)
    print(f"fold_sd {fold_sd}: false-separation rate {rate:.3f} (Monte Carlo error {mc:.3f})")
    assert rate <= 0.05 + 2 * mc


def test_mcnemar_recomputes_from_pooled_outcomes(tmp_path):
    m = _manifest(tmp_path, folds=3)
    t = evaluation.Tests.of(m, [0, 1, 2], splits=1, folds=3)
    rng = np.random.default_rng(1)
    a = t.paired({s: rng.integers(0, 3, len(t.tests[t.columns[s]]["test_ids"])).tolist() for s in range(3)})
    b = t.paired({s: rng.integers(0, 3, len(t.tests[t.columns[s]]["test_ids"])).tolist() for s in range(3)})
    only_a, only_b = int(np.sum((a[0] == 1) & (b[0] == 0))), int(np.sum((a[0] == 0) & (b[0] == 1)))
    assert paired_test(a, b)["p"] == mcnemar_exact(only_a, only_b)
    assert paired_test(a, b)["n"] == m.height


def test_fold_columns_round_trip_parquet(tmp_path):
    m = _manifest(tmp_path, folds=2)
    m.write_parquet(tmp_path / "m.parquet")
    back = pl.read_parquet(tmp_path / "m.parquet")
    assert back[FOLD].to_list() == m[FOLD].to_list()
