"""How often the verdict's tests are wrong, measured by simulation (docs/verdict.md's table).

A constructed world in which the truth is known: N images, each with a difficulty d_i and
a uniform draw U_i that both procedures share (an easy image is easy for both), and per
trained model m of procedure X

    correct[X, m, i] = U_i < sigmoid(d_i + s_X + b_Xm + e_Xmi)

with s_X the procedure's skill, b_Xm ~ N(0, tau) the fold model's own offset (a seed, a
fold's training set: the *fold-model sd* on the logit scale) and e_Xmi ~ N(0, sigma_e) the
model-image interaction that makes two models disagree on some images (about 6% of them
at the default values, as on the default data). A procedure's true accuracy is the
expectation over d, b and e; a trained model's, over d and e with its b fixed.

Three designs, each with the test the verdict uses for it:

* ``hold-out``: one model per procedure, scored on ``test`` images. The verdict is about
  those two trained models (the one that ships): the null is that they are equally
  accurate (b = 0), separation is the paired exact McNemar test with its bootstrap interval,
  equivalence the paired t (variance_components with one group) at the margin.
* ``5-fold`` and ``3x5-fold``: every image tested once per repeat by the fold model that did
  not train on it, the partition re-drawn per repeat. The verdict is about the procedures:
  separation and equivalence by :func:`transferlab.verdict.stats.variance_components`
  (t with M - 1 degrees of freedom). The pooled McNemar test, which treats the fold models
  as fixed, is measured beside it.

Rates: false separation (two procedures of equal true accuracy called different), false
equivalence (the second a margin and a half below the first called within the margin), and
power (separation at a stated true gap; equivalence at no gap). Seeded; vectorised over
simulated data sets, so thousands take seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from transferlab.verdict.stats import (
    half_counted_var,
    mcnemar_exact,
    paired_test,
    variance_components,
    vc_test,
)

DIFFICULTY = (3.0, 2.0)  # mean and sd of d_i: about 90% accuracy
SIGMA_E = 0.8  # model-image interaction: about 6% discordant images between two models
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(80)


@dataclass(frozen=True)
class Design:
    name: str
    images: int  # test images (hold-out) or all images (folds)
    folds: int = 1  # 1: hold-out
    repeats: int = 1

    @property
    def models(self) -> int:
        return self.folds * self.repeats


DESIGNS = (
    Design("hold-out", images=270),
    Design("5-fold", images=1800, folds=5),
    Design("3x5-fold", images=1800, folds=5, repeats=3),
)


def true_accuracy(skill: float, tau: float) -> float:
    """E[sigmoid(d + skill + b + e)] over d, b and e (Gauss-Hermite): a procedure's accuracy
    (``tau`` its fold-model sd) or, with ``tau`` 0, that of a trained model with b = 0."""
    mean, sd = DIFFICULTY[0] + skill, math.sqrt(DIFFICULTY[1] ** 2 + tau**2 + SIGMA_E**2)
    x = mean + sd * _NODES
    return float(np.sum(_WEIGHTS / (1 + np.exp(-x))) / math.sqrt(2 * math.pi))


def skill_for_gap(gap: float, tau: float) -> float:
    """The skill offset that puts a procedure ``gap`` accuracy below one of skill 0."""
    target = true_accuracy(0.0, tau) - gap
    lo, hi = -5.0, 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if true_accuracy(mid, tau) < target else (lo, mid)
    return (lo + hi) / 2


def _outcomes(rng: np.random.Generator, sims: int, d: Design, skills: tuple[float, float], tau: float):
    """0/1 outcomes of the two procedures, (sims, repeats, images) each, and the fold of every
    (sim, repeat, image)."""
    n, r, k = d.images, d.repeats, d.folds
    diff = rng.normal(*DIFFICULTY, (sims, 1, n))
    u = rng.random((sims, 1, n))
    fold = np.argsort(np.argsort(rng.random((sims, r, n)), axis=2), axis=2) % k
    out = []
    for skill in skills:
        b = np.take_along_axis(rng.normal(0.0, tau, (sims, r, k)), fold, axis=2)
        e = rng.normal(0.0, SIGMA_E, (sims, r, n))
        out.append((u < 1 / (1 + np.exp(-(diff + skill + b + e)))).astype(float))
    return out[0], out[1], fold


def _vc(dmat: np.ndarray, fold: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Vectorised :func:`transferlab.verdict.stats.variance_components`: (mu, se) per
    simulated data set and the degrees of freedom, from (sims, repeats, images) differences."""
    sims, r, n = dmat.shape
    d_i = dmat.mean(axis=1)
    mu = d_i.mean(axis=1)
    s2 = half_counted_var(((d_i - mu[:, None]) ** 2).sum(axis=1), mu, n)
    if k * r == 1:
        return mu, np.sqrt(s2 / n), n - 1
    by_fold = np.take_along_axis(dmat, np.argsort(fold, axis=2, kind="stable"), axis=2).reshape(
        sims, r * k, n // k
    )
    means = by_fold.mean(axis=2)
    within = (by_fold.var(axis=2, ddof=1) / (n // k)).mean(axis=1)
    tau2 = np.maximum(0.0, means.var(axis=1, ddof=1) - within)
    return mu, np.sqrt(s2 / n + tau2 / (r * k)), r * k - 1


def _mcnemar_separates(a: np.ndarray, b: np.ndarray, interval: str = "t") -> np.ndarray:
    """The pipeline's rule for one pair per data set: exact McNemar p < 0.05 and the 95%
    interval excluding 0 (one pair, so family-wise = 95%): the paired t's with half counts
    (a hold-out split, one seed) or the paired bootstrap's (``interval="bootstrap"``: the
    pooled view of k-fold). a, b: (sims, images)."""
    only_a, only_b = np.sum(a > b, axis=1), np.sum(a < b, axis=1)
    out = np.zeros(len(a), dtype=bool)
    for j in range(len(a)):
        if mcnemar_exact(int(only_a[j]), int(only_b[j])) < 0.05:
            if interval == "bootstrap":
                lo, hi = paired_test(a[j][None], b[j][None], boot=400, seed=j)["ci_family"]  # type: ignore[misc]
            else:
                vc = variance_components([(np.arange(a.shape[1]), a[j] - b[j])])
                lo, hi = vc_test(vc)["ci_family"]
            out[j] = lo > 0 or hi < 0
    return out


def rates(
    design: Design,
    tau: float,
    *,
    margin: float,
    gap: float,
    sims: int,
    seed: int = 0,
    chunk: int = 200,
    pooled: bool = True,
) -> dict[str, float]:
    """One row of the calibration table: the verdict's false-separation, false-equivalence
    and power rates for ``design`` at fold-model sd ``tau`` (hold-out: tau is the sd of the
    two shipped models' own offsets, which the null of "equally accurate models" sets to 0),
    plus the pooled McNemar test's false separations (folds) for comparison."""
    rng = np.random.default_rng(seed)
    holdout = design.folds == 1
    world_tau = 0.0 if holdout else tau
    scenarios = {
        "null": (0.0, 0.0),
        "apart": (0.0, skill_for_gap(1.5 * margin, world_tau)),
        "gap": (0.0, skill_for_gap(gap, world_tau)),
    }
    counts = {
        "false_separation": 0,
        "false_equivalence": 0,
        "power_separation": 0,
        "power_equivalence": 0,
        "pooled": 0,
    }
    done = 0
    while done < sims:
        m = min(chunk, sims - done)
        for name, skills in scenarios.items():
            a, b, fold = _outcomes(rng, m, design, skills, world_tau)
            mu, se, df = _vc(a - b, fold, design.folds)
            crit = sps.t.ppf(0.95, df)
            safe = np.where(se > 0, se, np.inf)
            if holdout:
                separates = _mcnemar_separates(a[:, 0], b[:, 0])
            else:
                separates = 2 * sps.t.sf(np.abs(mu) / safe, df) < 0.05
            # the second procedure (the cheaper one, at or below the first) shown within the margin
            equivalent = np.where(se > 0, (margin - mu) / safe > crit, -mu > -margin)
            if name == "null":
                counts["false_separation"] += int(separates.sum())
                counts["power_equivalence"] += int(equivalent.sum())
                if pooled and not holdout and design.repeats == 1:
                    counts["pooled"] += int(_mcnemar_separates(a[:, 0], b[:, 0], "bootstrap").sum())
            elif name == "apart":
                counts["false_equivalence"] += int(equivalent.sum())
            else:
                counts["power_separation"] += int((separates & (mu > 0)).sum())
        done += m
    out = {k: v / sims for k, v in counts.items()}
    if not pooled or holdout or design.repeats > 1:
        out.pop("pooled")
    out["monte_carlo_error"] = math.sqrt(0.05 * 0.95 / sims)
    return out


def holdout_procedure_false_separation(tau: float, *, sims: int, seed: int = 0, images: int = 270) -> float:
    """The hold-out McNemar rule read as a test of the *procedures*: one model each, whose
    own offsets differ with sd ``tau``; how often two equally good procedures are called
    different. Above 5% as soon as tau > 0: a hold-out split speaks for the trained models."""
    rng = np.random.default_rng(seed)
    a, b, _ = _outcomes(rng, sims, Design("hold-out", images=images), (0.0, 0.0), tau)
    return float(_mcnemar_separates(a[:, 0], b[:, 0]).mean())
