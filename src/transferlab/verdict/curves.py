"""Learning curves: would more (or less) data change the answer?

Every curve point (params: curve) trained on a nested, stratified subset of its run's
training split and was scored on the same test images as the main run, so points pair with
each other and with the main runs image by image, as the models do in the verdict. This
module reads them and says, per size:

- each model's test accuracy with its interval;
- the best fine-tuned model (picked on validation at that size) against the two-stage head
  ``features``: the paired test of the verdict, Holm-adjusted over the sizes; the crossover
  is the smallest measured size from which fine-tuning is separably ahead at every larger
  size;
- the rules of thumb on size, answered yes / no / cannot tell at that size.

And per model, a saturating power law acc(n) = a - b n^-c fitted to the points (n: training
images per class), its prediction at 2x and 4x today's training set with a bootstrap band
over test images, and a back-test: the law fitted without the largest size, predicting it.
Such extrapolations are biased (Mahmood et al., CVPR 2022; Hestness et al. 2017 measured
exponents between 0.07 and 0.35), so the back-test's error stands next to every
extrapolated number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from transferlab import layout
from transferlab._io import read_json
from transferlab.data.manifest import class_names, manifest_fingerprint
from transferlab.data.subsets import unfit_sizes
from transferlab.errors import ConfigError
from transferlab.verdict.evaluation import ALPHA, Tests, read_aligned
from transferlab.verdict.stats import accuracy_interval, holm, paired_test, separable

PROBE = "features"
FULL = 1.0  # the main run's size: the whole training split
MIN_FIT = 3  # sizes the power law needs (it has three parameters)
BOOT = 300  # bootstrap draws of the extrapolation band
SCALES = (2, 4)  # extrapolated to these multiples of today's training set

# The seeds' rules of thumb on size alone: (upper bound on training images, what to use).
RULES = (
    (1000, "feature extraction", ("features", "features-augmented")),
    (10000, "progressive unfreezing", ("progressive",)),
    (float("inf"), "end to end", ("full", "progressive")),
)
RULE_TEXT = (
    "fewer than 1,000 training images: feature extraction only; 1,000 to 10,000: progressive "
    "unfreezing; more than 10,000: end to end"
)


class FitRefused(ConfigError):
    """Too few sizes to fit the power law, or a fit that did not converge."""


def power_law(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a - b * np.power(n, -c)


C_BOUNDS = (0.01, 3.0)  # the exponent's range: a curve that rises and saturates
_C_GRID = np.geomspace(*C_BOUNDS, 400)


def _profile(n: np.ndarray, acc: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each exponent in ``c``: the least-squares a and b (the law is linear in them for
    a fixed c), held to b >= 0 and a <= 1, and the sum of squared errors."""
    x = np.power(n[None, :], -c[:, None])  # (exponents, sizes)
    xm, ym = x.mean(axis=1), acc.mean()
    sxx = ((x - xm[:, None]) ** 2).sum(axis=1)
    sxy = ((x - xm[:, None]) * (acc - ym)).sum(axis=1)
    b = np.maximum(-sxy / np.maximum(sxx, 1e-300), 0.0)
    a = ym + b * xm
    over = a > 1  # the ceiling held at 1: b alone by least squares
    if over.any():
        a = np.where(over, 1.0, a)
        b_at_1 = np.maximum(((1 - acc) * x).sum(axis=1) / np.maximum((x * x).sum(axis=1), 1e-300), 0.0)
        b = np.where(over, b_at_1, b)
    sse = ((a[:, None] - b[:, None] * x - acc) ** 2).sum(axis=1)
    return a, b, sse


def fit_power_law(n: list[float] | np.ndarray, acc: list[float] | np.ndarray) -> tuple[float, float, float]:
    """(a, b, c) of acc(n) = a - b n^-c by least squares, a <= 1 (an accuracy's ceiling),
    b >= 0 and c in [0.01, 3] (the curve rises and saturates). For a fixed c the law is
    linear in a and b, so the fit profiles c: the best of a log-spaced grid, refined by a
    bounded scalar search around it (milliseconds, so the bootstrap band can refit hundreds
    of times). At least three sizes; fewer is a one-line error."""
    from scipy.optimize import minimize_scalar

    n, acc = np.asarray(n, dtype=float), np.asarray(acc, dtype=float)
    if len(n) < MIN_FIT:
        raise FitRefused(
            f"curve.sizes: a power law needs at least {MIN_FIT} measured sizes (the full split "
            f"counts as one), got {len(n)}; add sizes"
        )
    if len(set(n.tolist())) < MIN_FIT:
        raise FitRefused(f"curve: the sizes give fewer than {MIN_FIT} distinct numbers of images per class")
    i = int(np.argmin(_profile(n, acc, _C_GRID)[2]))
    lo, hi = _C_GRID[max(i - 1, 0)], _C_GRID[min(i + 1, len(_C_GRID) - 1)]
    res = minimize_scalar(
        lambda c: float(_profile(n, acc, np.array([c]))[2][0]),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-7},
    )
    c = float(res.x)
    a, b, _ = _profile(n, acc, np.array([c]))
    return float(a[0]), float(b[0]), c


@dataclass
class Point:
    """One size of one model: its outcomes on the test images and what it trained on."""

    size: float
    per_class: float  # training images per class, mean over classes and seeds
    n_train: float  # training images, mean over seeds
    correct: np.ndarray  # (seeds or repeats, images) 0/1, paired as the verdict's
    val_acc: float
    val_loss: float
    picked: dict[str, Any]  # what the point's own grid search picked (per seed)
    seconds: float  # its training time, summed over seeds

    @property
    def acc(self) -> float:
        return float(self.correct.mean())

    def to_json(self) -> dict[str, Any]:
        lo, hi = accuracy_interval(self.correct)
        return {
            "size": self.size,
            "per_class": round(self.per_class, 1),
            "n_train": round(self.n_train, 1),
            "test_acc": round(self.acc, 4),
            "ci95": [round(lo, 4), round(hi, 4)],
            "val_acc": round(self.val_acc, 4),
            "picked": self.picked,
            "train_time_s": round(self.seconds, 2),
        }


def _read_point(model: str, size: float, t: Tests, manifest_sha: str) -> Point:
    preds, vals, losses, picked, n, per_class, seconds = {}, [], [], {}, [], [], 0.0
    for seed, column in t.columns.items():
        run = layout.curve_point(model, seed, str(size))
        pred, align = read_aligned(run, manifest_sha, column, t.index[column])
        meta = read_json(layout.results_dir(run) / "point.json")
        preds[seed] = align(pred["test"])
        vals.append(pred["val"]["accuracy"])
        losses.append(pred["val"]["nll"])
        picked[str(seed)] = meta["picked"]
        n.append(meta["n_train"])
        per_class.append(float(np.mean(meta["per_class"])))
        seconds += float(meta["search_time_s"] or meta["train_time_s"])
    return Point(
        size,
        float(np.mean(per_class)),
        float(np.mean(n)),
        t.paired(preds),
        float(np.mean(vals)),
        float(np.mean(losses)),
        picked,
        seconds,
    )


def _main_point(model: str, details: dict[str, Any], t: Tests, manifest: pl.DataFrame) -> Point:
    """The main run of ``model`` (the full training split) as a curve point."""
    d = details["models"][model]
    runs = {int(s): r for s, r in d["runs"].items()}
    # images (not augmented views) in each run's training split, in all and per class
    counts = [manifest.filter(pl.col(t.columns[s]) == "train").group_by("label").len()["len"] for s in runs]
    n = [float(c.sum()) for c in counts]
    per_class = [float(c.sum()) / len(c) for c in counts]
    return Point(
        FULL,
        float(np.mean(per_class)),
        float(np.mean(n)),
        t.paired({s: r["predictions"] for s, r in runs.items()}),
        float(np.mean([r["val"]["accuracy"] for r in runs.values()])),
        float(np.mean([r["val"]["nll"] for r in runs.values()])),
        d["protocol"].get("picked") or {},
        float(sum(r["train"]["search_time_s"] or r["train"]["train_time_s"] for r in runs.values())),
    )


def _extrapolate(points: list[Point]) -> dict[str, Any]:
    """The power law on ``points`` (sorted by size), its prediction at 2x and 4x the full
    split with a bootstrap band over test images, and the back-test."""
    n = np.array([p.per_class for p in points])
    acc = np.array([p.acc for p in points])
    out: dict[str, Any] = {}
    try:
        a, b, c = fit_power_law(n, acc)
    except FitRefused as err:
        return {"refused": str(err)}
    out["params"] = {"a": round(a, 4), "b": round(b, 4), "c": round(c, 4)}
    rng = np.random.default_rng(0)
    n_images = points[0].correct.shape[1]
    boots = []
    for _ in range(BOOT):
        idx = rng.integers(0, n_images, n_images)
        try:
            boots.append(fit_power_law(n, [p.correct[:, idx].mean() for p in points]))
        except FitRefused:
            continue
    full = n[-1]
    out["predicted"] = []
    for k in SCALES:
        at = [float(power_law(np.array(k * full), *ab)) for ab in boots]
        lo, hi = np.percentile(at, [2.5, 97.5]) if at else (np.nan, np.nan)
        out["predicted"].append(
            {
                "scale": k,
                "per_class": round(float(k * full), 1),
                "test_acc": round(float(power_law(np.array(k * full), a, b, c)), 4),
                "band95": [round(float(lo), 4), round(float(hi), 4)],
            }
        )
    out["bootstrap_fits"] = len(boots)
    out["back_test"] = back_test(n, acc)
    return out


def back_test(n: np.ndarray, acc: np.ndarray) -> dict[str, Any]:
    """The law fitted on every size but the largest, predicting the largest: the error an
    extrapolation of one step made on this very curve (predicted - measured)."""
    try:
        a, b, c = fit_power_law(n[:-1], acc[:-1])
    except FitRefused as err:
        return {
            "refused": str(err).replace("a power law needs", "the back-test needs one size more than a fit:")
        }
    predicted = float(power_law(np.array(n[-1]), a, b, c))
    return {
        "fitted_on_per_class": [round(float(x), 1) for x in n[:-1]],
        "per_class": round(float(n[-1]), 1),
        "predicted": round(predicted, 4),
        "measured": round(float(acc[-1]), 4),
        "error": round(predicted - float(acc[-1]), 4),
    }


def _best_on_val(points: dict[str, Point], among: list[str]) -> str | None:
    have = [m for m in among if m in points]
    return max(have, key=lambda m: (points[m].val_acc, -points[m].val_loss)) if have else None


def learning_curves(
    details: dict[str, Any],
    heads: list[str],
    curve_models: list[str],
    sizes: list[float],
    seeds: list[int],
    manifest: pl.DataFrame,
    splits: int = 1,
    folds: int = 1,
    repeats: int = 1,
) -> dict[str, Any] | None:
    """details.json's ``curves``: every curve point read and compared (see the module's
    docstring). None when params: curve.sizes is empty."""
    if not sizes:
        return None
    t = Tests.of(manifest, seeds, splits, folds, repeats)
    # sizes that leave a class too few images in some run's training split: every curve
    # stage skipped them (the same rule, on the same counts), the report names them
    train = [manifest.filter(pl.col(c) == "train")["label"].to_numpy() for c in set(t.columns.values())]
    skipped = unfit_sizes(sorted(sizes), train, class_names(manifest))
    sizes = [s for s in sizes if s not in skipped]
    if not sizes:
        return {"skipped": {f"{k:g}": v for k, v in skipped.items()}}
    sha = manifest_fingerprint(manifest)
    models = [m for m in [*heads, *curve_models] if m in details["models"]]
    by_size: dict[float, dict[str, Point]] = {s: {} for s in [*sorted(sizes), FULL]}
    for m in models:
        for s in sorted(sizes):
            by_size[s][m] = _read_point(m, s, t, sha)
    for m in details["models"]:  # every model has its full-split point: its main run
        by_size[FULL][m] = _main_point(m, details, t, manifest)
    out = summarize(by_size, models, [m for m in curve_models if m in models])
    out["skipped"] = {f"{k:g}": v for k, v in skipped.items()}
    return out


def summarize(
    by_size: dict[float, dict[str, Point]], models: list[str], curve_models: list[str]
) -> dict[str, Any]:
    """The curves' verdict from their points (``by_size``: size -> model -> point, sizes
    ascending, the full split last): ``models`` have a curve, ``curve_models`` are the
    end-to-end ones among them."""
    everyone = list(by_size[FULL])
    curves = {m: [by_size[s][m] for s in by_size if m in by_size[s]] for m in everyone}
    out: dict[str, Any] = {
        "sizes": list(by_size),
        "probe": PROBE if PROBE in everyone else None,
        "models": {
            m: {
                "points": [p.to_json() for p in pts],
                "fit": _extrapolate(pts) if len(pts) > 1 else None,
            }
            for m, pts in curves.items()
        },
        "curve_models": models,
    }
    out["comparisons"] = _finetuned_vs_probe(by_size, curve_models)
    out["crossover"] = _crossover(out["comparisons"])
    out["rules"] = _rules(by_size)
    out["method"] = (
        "Each point trained on a nested, stratified subset of its run's training split (round("
        "fraction x each class's images), one seeded order per run), validation and test "
        "images unchanged; size 1 is the main run. Test accuracy with its 95% interval (Wilson; "
        "several seeds: hierarchical bootstrap). At each size the end-to-end model of "
        "curve.models with the best validation accuracy at that size against the two-stage "
        "head 'features', paired on the same test images (exact McNemar, or sign-flip with "
        "several seeds; Holm over the sizes; separable when p_holm < 0.05 and the interval at "
        "level 1 - 0.05/sizes excludes 0). Crossover: the smallest measured size from which "
        "fine-tuning is separably ahead at that and every larger size. Power law acc(n) = a - "
        f"b n^-c (n: training images per class) by least squares; band: {BOOT} bootstrap "
        "draws of the test images (the same images at every size), refitted; back-test: the "
        "law fitted without the largest size, predicting it (error = predicted - measured)."
    )
    return out


def _finetuned_vs_probe(
    by_size: dict[float, dict[str, Point]], curve_models: list[str]
) -> list[dict[str, Any]]:
    rows = []
    for size, points in by_size.items():
        best = _best_on_val(points, curve_models)
        if best is None or PROBE not in points:
            continue
        rows.append((size, best, points[best], points[PROBE]))
    family = max(len(rows), 1)
    out: list[dict[str, Any]] = []
    for size, best, p_ft, p_probe in rows:
        r = paired_test(p_ft.correct, p_probe.correct, family=family)
        out.append(
            {"size": size, "per_class": round(p_ft.per_class, 1), "finetuned": best, "probe": PROBE, **r}
        )
    for row, adj in zip(out, holm([r["p"] for r in out]), strict=True):
        row["p_holm"] = adj
        row["separable"] = separable(row)
        row["ahead"] = row["separable"] and row["diff"] > 0
    return out


def _crossover(comparisons: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The smallest measured size from which fine-tuning is separably ahead at every larger
    size too; None when it is nowhere (or nothing fine-tuned has a curve)."""
    start = None
    for row in reversed(comparisons):  # from the largest size down
        if not row["ahead"]:
            break
        start = row
    return (
        None
        if start is None
        else {"size": start["size"], "per_class": start["per_class"], "model": start["finetuned"]}
    )


def _rules(by_size: dict[float, dict[str, Point]]) -> list[dict[str, Any]]:
    """The rules of thumb on size, at each measured size: does the model they name tie with
    the best model on validation at that size? yes / no / cannot tell (what they name, or a
    competitor, was not measured at that size)."""
    checks: list[dict[str, Any]] = []
    for size, points in by_size.items():
        n = float(np.mean([p.n_train for p in points.values()]))
        bound, says, names = next(r for r in RULES if n < r[0])
        best = _best_on_val(points, list(points))
        named = [m for m in names if m in points]
        others = [m for m in points if m not in names]
        checks.append(
            {
                "size": size,
                "n_train": round(n, 1),
                "says": says,
                "best": best,
                "named": named,
                "others": others,
            }
        )
    pairs = [(c, m) for c in checks if c["named"] and c["others"] for m in c["named"] if m != c["best"]]
    tested: list[dict[str, Any]] = []
    for c, m in pairs:
        points = by_size[c["size"]]
        tested.append(paired_test(points[c["best"]].correct, points[m].correct, family=max(len(pairs), 1)))
    for r, adj in zip(tested, holm([r["p"] for r in tested]), strict=True):
        r["p_holm"] = adj
    behind: dict[float, list[bool]] = {}
    for (c, _), r in zip(pairs, tested, strict=True):
        behind.setdefault(c["size"], []).append(separable(r))
    for c in checks:
        if not c["named"] or not c["others"]:
            c["answer"] = "cannot tell"
            c["why"] = (
                f"no {c['says']} model measured at this size"
                if not c["named"]
                else "no other kind of model measured at this size"
            )
        elif c["best"] in c["named"] or not all(behind.get(c["size"], [True])):
            c["answer"] = "yes"
            c["why"] = "what it names is the best on validation, or ties with it on the test images"
        else:
            c["answer"] = "no"
            c["why"] = f"what it names is separably behind {c['best']} on the test images"
    return checks


__all__ = ["ALPHA", "FitRefused", "back_test", "fit_power_law", "learning_curves", "power_law"]
