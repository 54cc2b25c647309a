"""The statistics behind every claim the report makes: paired, on the same test images.

Two models scored on the same images are compared image by image, never through their
marginal accuracies: most images are right (or wrong) for both, and only the images where
they disagree carry information about which is better.

* :func:`wilson` - the interval of one accuracy (never reaches 1.0 when there are errors).
* :func:`mcnemar_exact` - two-sided exact McNemar test: a binomial test on the discordant
  images (those exactly one of the two models gets right).
* :func:`paired_test` - one comparison. ``correct_a`` and ``correct_b`` are (seeds, images)
  arrays of 0/1 on the same images. The point estimate is the difference of mean accuracies.
  The 95% interval is a paired bootstrap: images resampled (and, with several seeds, seeds
  too: a hierarchical bootstrap, so seed-to-seed variation widens the interval). The p-value
  comes from a sign-flip test on the per-image differences averaged over seeds: under the
  null the two models are exchangeable on every image. With one seed the per-image
  differences are -1, 0 or +1 and the sign-flip test *is* McNemar's exact test, computed
  exactly; with several it is computed exactly for up to 20 informative images and by
  Monte Carlo (fixed seed) beyond.
* :func:`holm` - Holm's step-down adjustment over all pairs of a report. Its interval
  counterpart is ``ci_family``: the same bootstrap at level 1 - 0.05/m for m pairs
  (Bonferroni), so that all m intervals hold together with 95% probability. A pair is
  *separable* only when its Holm p is below 0.05 *and* its family-wise interval excludes 0:
  an interval shown next to the verdict never contradicts it.
* :func:`corrected_resampled_t` - with k-fold cross-validation, the conservative
  cross-check of the pooled test: a t-test on the per-fold accuracy differences whose
  variance is inflated for the overlap of the folds' training sets (Nadeau and Bengio,
  Machine Learning 2003; for repeated k-fold, Bouckaert and Frank, PAKDD 2004).
* :func:`variance_components` - with k-fold cross-validation (repeated or not), the
  verdict's test of the *procedures*: the per-image difference D_im of fold model m on image
  i is mu + a_i + b_m + e_im, so the estimate's variance counts the images' noise and the
  fold models' own variation (tau^2, from the fold-level means), and the estimate is
  referred to a t with M - 1 degrees of freedom (M fold models). With one hold-out split it
  is the paired t on the per-image differences (tau^2 is not estimable from one model).
* :func:`noninferior` - whether a model is *shown* to be at most a margin below another:
  the one-sided test of mu <= -margin on the same estimate (the half of the two one-sided
  tests that decides whether a cheaper model is as good; being better is no reason not to
  use it). Not separable is not equivalent: this is the test that says "as good as".
* :func:`spread_components` - how much of the seed-to-seed spread of a score comes from
  the splitting and how much from the training seed (one-way random-effects ANOVA).
* :func:`images_to_separate` - roughly how many test images a paired test would need to
  separate a difference of the observed size (Connor's 1987 sample size for McNemar's test,
  alpha 0.05, power 0.8).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Z95 = 1.959963984540054
Z80 = 0.8416212335729143


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``correct`` successes in ``n`` trials."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: ``b`` images only A gets right, ``c`` only B."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def _sign_flip_p(d: np.ndarray, rng: np.random.Generator, draws: int) -> float:
    """Two-sided sign-flip test of sum(d) = 0 (d: per-image differences)."""
    d = d[d != 0]
    if len(d) == 0:
        return 1.0
    observed = abs(d.sum())
    if len(d) <= 20:  # exact: every sign pattern
        signs = ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1) * 2 - 1
        stats = np.abs(signs @ d)
        return float(np.mean(stats >= observed - 1e-12))
    flips = rng.choice([-1.0, 1.0], size=(draws, len(d)))
    stats = np.abs(flips @ d)
    return float((1 + np.sum(stats >= observed - 1e-12)) / (draws + 1))


def _bootstrap_means(values: np.ndarray, boot: int, rng: np.random.Generator) -> np.ndarray:
    """``boot`` bootstrap means of (seeds, images) ``values``: images resampled and, with
    several seeds, seeds too (hierarchical). In chunks: memory stays at chunk x seeds x
    images whatever the number of draws."""
    seeds, n = values.shape
    samples = []
    for start in range(0, boot, 256):
        k = min(256, boot - start)
        s_idx = rng.integers(0, seeds, size=(k, seeds)) if seeds > 1 else np.zeros((k, 1), dtype=int)
        i_idx = rng.integers(0, n, size=(k, n))
        samples.append(values[s_idx[:, :, None], i_idx[:, None, :]].mean(axis=(1, 2)))
    return np.concatenate(samples)


def paired_test(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    *,
    boot: int = 4000,
    draws: int = 20000,
    seed: int = 0,
    family: int = 1,
) -> dict[str, float | list[float] | int]:
    """Compare two models on the same images; arrays are (seeds, images) of 0/1.

    ``family`` is the number of comparisons the report makes: ``ci_family`` is the interval
    at level 1 - 0.05/family. Its tails lie at 0.025/family, so the bootstrap draws at least
    800 x family samples (20 beyond each bound) for them to be more than a few draws."""
    a = np.atleast_2d(np.asarray(correct_a, dtype=float))
    b = np.atleast_2d(np.asarray(correct_b, dtype=float))
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {b.shape}")
    seeds, n = a.shape
    rng = np.random.default_rng(seed)
    diff_si = a - b  # (seeds, images)
    diff = float(diff_si.mean())
    tail = 2.5 / family
    means = _bootstrap_means(diff_si, max(boot, 800 * family), rng)
    lo, hi, flo, fhi = np.percentile(means, [2.5, 97.5, tail, 100 - tail])
    if seeds == 1:
        only_a = int(np.sum((a[0] == 1) & (b[0] == 0)))
        only_b = int(np.sum((a[0] == 0) & (b[0] == 1)))
        p = mcnemar_exact(only_a, only_b)
    else:
        p = _sign_flip_p(diff_si.mean(axis=0), rng, draws)
    return {
        "n": n,
        "acc_a": float(a.mean()),
        "acc_b": float(b.mean()),
        "diff": diff,
        "ci95": [float(lo), float(hi)],
        "ci_family": [float(flo), float(fhi)],
        "family": family,
        "p": float(p),
        "discordant": float(np.mean(diff_si != 0)),
    }


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def images_to_separate(
    diff: float, discordant: float, alpha_z: float = Z95, power_z: float = Z80
) -> int | None:
    """Test images a paired (McNemar) test needs to detect ``diff`` at 5% / power 80%, given
    the fraction of ``discordant`` images; None when the difference is zero."""
    d = abs(diff)
    if d == 0 or discordant <= 0:
        return None
    pd = max(discordant, d)
    n = (alpha_z * math.sqrt(pd) + power_z * math.sqrt(max(pd - d * d, 0.0))) ** 2 / (d * d)
    return math.ceil(n)


def accuracy_interval(correct: np.ndarray, *, boot: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95% interval of a mean accuracy from (seeds, images) 0/1 outcomes: Wilson's with one
    seed; with several, a hierarchical bootstrap (seeds, then images), never an average of
    per-seed bounds."""
    c = np.atleast_2d(np.asarray(correct, dtype=float))
    if c.shape[0] == 1:
        return wilson(int(c.sum()), c.shape[1])
    lo, hi = np.percentile(_bootstrap_means(c, boot, np.random.default_rng(seed)), [2.5, 97.5])
    return float(lo), float(hi)


def _flipped(p: dict) -> dict:
    """A comparison (or one of its nested tests) seen from the other side: the difference
    negated, its intervals mirrored, the two accuracies swapped."""
    out = dict(p)
    if "diff" in p:
        out["diff"] = -p["diff"]
    for key in ("ci95", "ci_family"):
        if key in p:
            lo, hi = p[key]
            out[key] = [-hi, -lo]
    if "acc_a" in p:
        out["acc_a"], out["acc_b"] = p["acc_b"], p["acc_a"]
    for key in ("vc", "pooled"):
        if key in p:
            out[key] = _flipped(p[key])
    return out


def pair_of(comparisons: dict, a: str, b: str) -> dict:
    """The comparison of ``a`` against ``b`` from a comparisons.json structure, oriented so
    that diff = acc_a - acc_b (and the intervals, the nested tests' too, flipped
    accordingly). Every pair of compared models is there: a missing one is a KeyError."""
    for p in comparisons["pairs"]:
        if (p["a"], p["b"]) == (a, b):
            return p
        if (p["a"], p["b"]) == (b, a):
            return {**_flipped(p), "a": a, "b": b}
    raise KeyError(f"comparisons hold no pair of {a!r} and {b!r}")


def separable(pair: dict, alpha: float = 0.05) -> bool:
    """Whether the test split tells two models apart: Holm-adjusted p below ``alpha`` and a
    family-wise paired interval (all pairs at once) that excludes zero."""
    lo, hi = pair["ci_family"]
    return pair["p_holm"] < alpha and (lo > 0 or hi < 0)


def room_above(comparisons: dict, model: str, others: Sequence[str], margin: float) -> dict[str, float]:
    """The models the test images leave room to be better than ``model`` by more than
    ``margin``: each one's family-wise upper bound of (other minus ``model``), largest first.
    The test split takes no part in any choice, so its interval is an honest check of one
    made on validation."""
    out = {}
    for name in others:
        if name != model:
            upper = pair_of(comparisons, name, model)["ci_family"][1]
            if upper > margin:
                out[name] = upper
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def spread_components(scores: dict[int, float], splitting: dict[int, int]) -> dict[str, float | int | None]:
    """Split the spread of one model's runs into a splitting part and a seed part.

    ``scores`` maps each training seed to its run's score, ``splitting`` each seed to the
    splitting it used. The estimate is the one-way random-effects ANOVA (method of moments,
    unequal group sizes): the seed variance is the mean square within splittings, the split
    variance what the mean square between them exceeds it by (clipped at 0). It needs at
    least two splittings and a splitting run with two seeds; otherwise only the total spread
    is known, and the part that cannot be told apart is None. The split part includes the
    change of test images, which is part of what a new splitting changes.
    """
    seeds = sorted(scores)
    values = np.asarray([scores[s] for s in seeds], dtype=float)
    total = float(values.std(ddof=1)) if len(values) > 1 else None
    groups: dict[int, list[float]] = {}
    for s in seeds:
        groups.setdefault(splitting[s], []).append(scores[s])
    k, n = len(groups), len(values)
    within_df = n - k
    ss_within = sum(float(np.sum((np.asarray(g) - np.mean(g)) ** 2)) for g in groups.values())
    seed_var = ss_within / within_df if within_df > 0 else None
    split_var = None
    if k > 1 and seed_var is not None:
        grand = float(values.mean())
        ms_between = sum(len(g) * (float(np.mean(g)) - grand) ** 2 for g in groups.values()) / (k - 1)
        n0 = (n - sum(len(g) ** 2 for g in groups.values()) / n) / (k - 1)
        split_var = max(0.0, (ms_between - seed_var) / n0)
    return {
        "runs": n,
        "splittings": k,
        "total_sd": total,
        "seed_sd": math.sqrt(seed_var) if seed_var is not None else None,
        "split_sd": math.sqrt(split_var) if split_var is not None else None,
    }


def corrected_resampled_t(
    diffs: Sequence[float], n_train: float, n_test: float
) -> dict[str, float | int | None]:
    """Nadeau and Bengio's corrected resampled t-test of ``diffs``, one accuracy difference
    per cross-validation run (k folds times r repeats).

    The runs' training sets overlap, so their differences are correlated and the plain
    t-test's variance is too small; the correction multiplies it by 1/J + n_test/n_train
    instead of 1/J (J runs), with t on J - 1 degrees of freedom. It asks whether the
    *procedures* differ on data sets of this size, counting training-set variation, which
    the image-level pooled test does not; with 5 or 10 runs it is much less powerful.
    """
    from scipy import stats as sps

    d = np.asarray(diffs, dtype=float)
    runs = len(d)
    if runs < 2:
        return {"t": None, "df": 0, "p": 1.0, "runs": runs}
    mean, var = float(d.mean()), float(d.var(ddof=1))
    scale = (1 / runs + n_test / n_train) * var
    if scale <= 0:  # every run the same difference
        return {"t": None, "df": runs - 1, "p": 1.0 if mean == 0 else 0.0, "runs": runs}
    t = mean / math.sqrt(scale)
    return {"t": t, "df": runs - 1, "p": float(2 * sps.t.sf(abs(t), runs - 1)), "runs": runs}


def _t_sf(x: float, df: float) -> float:
    from scipy import stats as sps

    return float(sps.t.sf(x, df))


def _t_ppf(q: float, df: float) -> float:
    from scipy import stats as sps

    return float(sps.t.ppf(q, df))


def half_counted_var(sq_dev: Any, mu: Any, n: int) -> Any:
    """The variance of n per-image differences with Agresti and Min's half count per cell of
    the paired 2x2 table: pseudo-images +1 and -1 at weight 1/2 and 0 at weight 1, around
    the unshrunk mean ``mu``; ``sq_dev`` is the images' sum of squared deviations from it.
    Floats or numpy arrays (the calibration's vectorised copy uses it per data set)."""
    return (sq_dev + 0.5 * (1 - mu) ** 2 + 0.5 * (1 + mu) ** 2 + mu**2) / (n + 1)


def variance_components(groups: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float | int]:
    """The mean difference between two procedures and its variance, counting the fold models.

    ``groups`` holds one entry per fold model m (with several seeds on one fold, their
    per-image differences averaged first): the positions of the images it was tested on
    (indices into one list of every image) and the per-image difference D_im (0/1 accuracy of
    one procedure's model minus the other's, so -1, 0 or +1 with one seed). The model

        D_im = mu + a_i + b_m + e_im

    has an image effect a_i, a fold-model effect b_m with variance tau^2 (the two procedures'
    models differ as a whole: a seed, a fold's training set) and a residual. The estimate
    mu_hat is the mean over images of D_i, each image's difference averaged over the fold
    models that tested it (with folds, one per repeat), and

        Var(mu_hat) ~ s^2(D_i) / N + tau^2 / M,

    with tau^2 estimated by moments from the fold-level means (their variance less what the
    images inside each fold give it, clipped at 0). The statistic is referred to a t with
    M - 1 degrees of freedom: the fold models, not the images, limit what is known about
    tau^2. With one group (a hold-out split) tau^2 is not estimable and the test is the
    paired t on the images (N - 1 degrees of freedom): it is about those two trained models.
    The images' variance counts two pseudo-images (below), so it is never zero.
    """
    if not groups:
        raise ValueError("variance_components needs at least one group")
    n_images = 1 + max(int(np.max(idx)) for idx, _ in groups if len(idx))
    total, count = np.zeros(n_images), np.zeros(n_images)
    means, within = [], []
    for idx, d in groups:
        d = np.asarray(d, dtype=float)
        np.add.at(total, idx, d)
        np.add.at(count, idx, 1.0)
        means.append(float(d.mean()))
        within.append(float(d.var(ddof=1)) / len(d) if len(d) > 1 else 0.0)
    seen = count > 0
    d_i = total[seen] / count[seen]
    n, m = int(seen.sum()), len(groups)
    mu = float(d_i.mean())
    # The images' variance with Agresti and Min's half count in each cell of the paired 2x2
    # table (two pseudo-images: +1 and -1 at weight 1/2, 0 at weight 1): on a few test
    # images two models that agree everywhere have no variance to show, and an unadjusted
    # t would call them equivalent (or separably different) with certainty. The estimate mu
    # itself is left unshrunk.
    s2 = float(half_counted_var(((d_i - mu) ** 2).sum(), mu, n))
    tau2 = max(0.0, float(np.var(means, ddof=1)) - float(np.mean(within))) if m > 1 else 0.0
    var = s2 / n + tau2 / m
    return {
        "diff": mu,
        "se": math.sqrt(var),
        "df": m - 1 if m > 1 else max(n - 1, 1),
        "tau": math.sqrt(tau2),
        "s_images": math.sqrt(s2),
        "models": m,
        "images": n,
    }


def vc_test(vc: dict[str, Any], family: int = 1) -> dict[str, Any]:
    """Two-sided test of mu = 0 on a :func:`variance_components` estimate, with its 95%
    interval and the family-wise one (level 1 - 0.05/family, Bonferroni): the t referred to
    ``vc['df']`` degrees of freedom."""
    mu, se, df = vc["diff"], vc["se"], vc["df"]
    if se <= 0:  # identical outcomes on every image: nothing tells them apart
        return {"p": 1.0 if mu == 0 else 0.0, "ci95": [mu, mu], "ci_family": [mu, mu]}
    half = _t_ppf(0.975, df) * se
    half_f = _t_ppf(1 - 0.025 / family, df) * se
    return {
        "p": min(1.0, 2 * _t_sf(abs(mu) / se, df)),
        "ci95": [mu - half, mu + half],
        "ci_family": [mu - half_f, mu + half_f],
    }


def noninferior(vc: dict[str, Any], margin: float, family: int = 1) -> dict[str, float]:
    """Whether the first procedure of a :func:`variance_components` estimate (diff = first
    minus second) is shown to be at most ``margin`` below the second: the one-sided t-test
    of mu <= -margin (p), and the family-wise lower bound (level 1 - 0.05/family, one-sided:
    above -margin exactly when the Bonferroni-adjusted test rejects)."""
    mu, se, df = vc["diff"], vc["se"], vc["df"]
    if se <= 0:
        p = 0.0 if mu > -margin else 1.0
        return {"p": p, "lower": mu, "lower_family": mu, "margin": margin}
    return {
        "p": _t_sf((mu + margin) / se, df),
        "lower": mu - _t_ppf(0.95, df) * se,
        "lower_family": mu - _t_ppf(1 - 0.05 / family, df) * se,
        "margin": margin,
    }


def images_to_settle(diff: float, discordant: float, margin: float, family: int = 1) -> int | None:
    """Test images a one-sided non-inferiority test at ``margin`` would need (5% / family,
    power 0.8) to show a model whose observed difference to the best is ``diff`` (negative:
    worse) within the margin, given the fraction of ``discordant`` images; None when the
    estimate lies at or beyond the margin (more images would more likely show it worse)."""
    gap = diff + margin
    if gap <= 0:
        return None
    from scipy import stats as sps

    z = float(sps.norm.ppf(1 - 0.05 / family)) + Z80
    var = max(discordant - diff * diff, 1e-6)
    return math.ceil(z * z * var / (gap * gap))
