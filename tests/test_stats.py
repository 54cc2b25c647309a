"""The paired statistics, against hand-computed cases and scipy."""

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from transferlab.verdict.stats import holm, images_to_separate, mcnemar_exact, paired_test, wilson


def test_wilson_by_hand_and_never_reaching_one_with_errors():
    lo, hi = wilson(8, 10)
    # (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.96
    z = 1.959963984540054
    c = (0.8 + z * z / 20) / (1 + z * z / 10)
    h = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    assert (lo, hi) == pytest.approx((c - h, c + h))
    assert wilson(268, 269)[1] < 1.0  # one error: the interval stays below 1
    assert wilson(269, 269)[1] == pytest.approx(1.0) and wilson(269, 269)[0] < 1.0


@pytest.mark.parametrize(("b", "c"), [(0, 0), (1, 0), (5, 1), (10, 2), (3, 3), (30, 12), (0, 9)])
def test_mcnemar_exact_is_the_binomial_test_on_discordant_pairs(b, c):
    want = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(want)


def test_mcnemar_by_hand():
    # b=5, c=1: 2 * P(X <= 1 | n=6, 1/2) = 2 * 7/64
    assert mcnemar_exact(5, 1) == pytest.approx(14 / 64)


def _pair(both, only_a, only_b, neither):
    a = [1] * both + [1] * only_a + [0] * only_b + [0] * neither
    b = [1] * both + [0] * only_a + [1] * only_b + [0] * neither
    return np.array([a]), np.array([b])


def test_one_seed_paired_test_is_mcnemar_on_those_predictions():
    a, b = _pair(200, 12, 3, 15)
    r = paired_test(a, b)
    assert r["n"] == 230 and r["diff"] == pytest.approx(9 / 230)
    assert r["p"] == pytest.approx(binomtest(3, 15, 0.5).pvalue)
    lo, hi = r["ci95"]
    assert lo < r["diff"] < hi and lo > 0  # 12 vs 3 discordant: the interval clears zero


def test_identical_models_tie():
    a, b = _pair(250, 0, 0, 19)
    r = paired_test(a, b)
    assert r["diff"] == 0 and r["p"] == 1.0 and r["ci95"] == [0.0, 0.0]


def test_several_seeds_pool_and_reduce_to_the_sign_test_when_seeds_agree():
    a1, b1 = _pair(100, 8, 2, 10)
    a, b = np.vstack([a1, a1, a1]), np.vstack([b1, b1, b1])
    r = paired_test(a, b)
    assert r["p"] == pytest.approx(binomtest(2, 10, 0.5).pvalue, abs=0.01)  # exact for 10 informative images
    assert r["acc_a"] == pytest.approx(108 / 120)


def test_seed_noise_widens_the_interval():
    rng = np.random.default_rng(0)
    base = (rng.random((1, 300)) < 0.9).astype(float)
    stable = paired_test(np.vstack([base] * 3), np.vstack([np.roll(base, 1, axis=1)] * 3))
    noisy_a = np.vstack([base, (rng.random((1, 300)) < 0.8), (rng.random((1, 300)) < 0.95)]).astype(float)
    noisy = paired_test(noisy_a, np.vstack([np.roll(base, 1, axis=1)] * 3))
    assert noisy["ci95"][1] - noisy["ci95"][0] > stable["ci95"][1] - stable["ci95"][0]


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([]) == []


def test_images_to_separate_grows_as_the_difference_shrinks():
    small, large = images_to_separate(0.005, 0.03), images_to_separate(0.02, 0.03)
    assert small > large > 0 and images_to_separate(0.0, 0.03) is None
    # Connor (1987): n = (z_a sqrt(pd) + z_b sqrt(pd - d^2))^2 / d^2
    pd, d = 0.05, 0.02
    want = (1.959964 * math.sqrt(pd) + 0.841621 * math.sqrt(pd - d * d)) ** 2 / d**2
    assert images_to_separate(d, pd) == math.ceil(want)


def test_spread_components_by_hand():
    from transferlab.verdict.stats import spread_components

    # two splittings, two seeds each: within-splitting deviations +-0.01, splitting means
    # 0.90 and 0.80.
    scores = {0: 0.91, 2: 0.89, 1: 0.81, 3: 0.79}
    out = spread_components(scores, {s: s % 2 for s in scores})
    # MS within = 4 * 0.01^2 / (4 - 2); MS between = 2 * 2 * 0.05^2 / 1; n0 = 2
    ms_w, ms_b = 4 * 1e-4 / 2, 2 * 2 * 0.05**2
    assert out["seed_sd"] == pytest.approx(ms_w**0.5)
    assert out["split_sd"] == pytest.approx(((ms_b - ms_w) / 2) ** 0.5)
    assert out["total_sd"] == pytest.approx(np.std(list(scores.values()), ddof=1))
    assert (out["runs"], out["splittings"]) == (4, 2)


def test_spread_components_say_what_the_layout_cannot_tell():
    from transferlab.verdict.stats import spread_components

    one_splitting = spread_components({0: 0.9, 1: 0.8, 2: 0.85}, {0: 0, 1: 0, 2: 0})
    assert one_splitting["split_sd"] is None
    assert one_splitting["seed_sd"] == pytest.approx(np.std([0.9, 0.8, 0.85], ddof=1))
    confounded = spread_components({0: 0.9, 1: 0.8}, {0: 0, 1: 1})
    assert confounded["seed_sd"] is None and confounded["split_sd"] is None
    assert confounded["total_sd"] == pytest.approx(np.std([0.9, 0.8], ddof=1))
    # splittings that differ less than the seeds within them: the split part is 0, not negative
    noisy = spread_components({0: 0.9, 2: 0.8, 1: 0.91, 3: 0.79}, {0: 0, 2: 0, 1: 1, 3: 1})
    assert noisy["split_sd"] == 0.0


def test_spread_separates_simulated_split_and_seed_noise():
    """Many splittings, several seeds each, known variances: the estimates find them."""
    from transferlab.verdict.stats import spread_components

    rng = np.random.default_rng(0)
    k, per = 200, 4
    split_eff = rng.normal(0, 0.02, k)
    scores, splitting = {}, {}
    for s in range(k * per):
        scores[s] = 0.9 + split_eff[s % k] + rng.normal(0, 0.005)
        splitting[s] = s % k
    out = spread_components(scores, splitting)
    assert out["split_sd"] == pytest.approx(0.02, rel=0.15)
    assert out["seed_sd"] == pytest.approx(0.005, rel=0.1)


def test_family_wise_interval_widens_with_the_family_and_governs_separability():
    from transferlab.verdict.stats import separable

    # 14 vs 4 discordant of 269: the pair's own 95% interval clears 0 and p = 0.03; among
    # 28 comparisons (8 models) that is not evidence enough, and the report must not show an
    # interval that excludes 0 next to the word "tie".
    a, b = _pair(240, 14, 4, 11)
    alone = paired_test(a, b)
    among = paired_test(a, b, family=28)
    assert alone["ci_family"] == pytest.approx(alone["ci95"], abs=2e-3)  # family of one
    lo, hi = among["ci95"]
    flo, fhi = among["ci_family"]
    assert lo > 0 and flo < lo and fhi > hi and flo < 0  # wider, and straddles 0
    among["p_holm"] = 0.03  # were Holm to pass it, the interval still holds it back
    assert not separable(among)
    clear = paired_test(*_pair(240, 25, 2, 2), family=28)
    clear["p_holm"] = 1e-4
    assert clear["ci_family"][0] > 0 and separable(clear)
