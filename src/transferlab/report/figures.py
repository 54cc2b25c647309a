"""The report's figures: PNG bytes, drawn headless (files next to the Markdown, embedded in
the HTML)."""

from __future__ import annotations

import io
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Models no other model beats on both cost (lower) and accuracy (higher), cheapest first."""
    front = [
        k
        for k, (c, a) in points.items()
        if not any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for k2, (c2, a2) in points.items() if k2 != k)
    ]
    return sorted(front, key=lambda k: points[k][0])


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def plot_curves(details: dict[str, Any]) -> bytes:
    """Validation accuracy and train/validation loss of every model trained by mini-batches,
    per validation round (end to end: every eval_every steps; a mini-batch head: every
    epoch), on shared axes (first seed, picked rate). Probes fitted by L-BFGS have no rounds:
    their grid is in the protocol table instead."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for i, (name, d) in enumerate(details["models"].items()):
        c, color = d["curves"], f"C{i % 10}"
        if "grid/l2" in c:
            continue
        epochs = range(1, len(c.get("val/acc", [])) + 1)
        ax_acc.plot(epochs, c.get("val/acc", []), color=color, marker="o", ms=3, label=name)
        ax_loss.plot(epochs, c.get("val/loss", []), color=color, marker="o", ms=3)
        ax_loss.plot(epochs, c.get("train/loss", []), color=color, ls="--", alpha=0.7)
        kept = _kept_epoch(d)
        if kept is not None and kept <= len(c.get("val/acc", [])):
            ax_acc.plot(kept, c["val/acc"][kept - 1], "*", color=color, ms=12, mec="k", mew=0.6)
            ax_loss.plot(kept, c["val/loss"][kept - 1], "*", color=color, ms=12, mec="k", mew=0.6)
    ax_acc.set(
        xlabel="validation round",
        ylabel="validation accuracy",
        title="Validation accuracy (star: the round kept)",
    )
    ax_loss.set(
        xlabel="validation round", ylabel="cross-entropy", title="Loss (solid: validation, dashed: training)"
    )
    ax_loss.set_yscale("log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    return _png(fig)


def _kept_epoch(model: dict[str, Any]) -> int | None:
    """The round (1-based) whose weights the first seed's run kept: its lowest validation loss."""
    runs: dict[str, Any] = model.get("runs") or {}
    first: dict[str, Any] = next(iter(runs.values()), {})
    return first.get("train", {}).get("best_epoch")


def plot_cost(rows: list[dict[str, Any]]) -> bytes:
    """Test accuracy (with its 95% interval) against total training time, with the Pareto
    front of the point estimates."""
    points = {r["model"]: (max(r["total_time_s"], 1e-3), r["test_acc"]) for r in rows}
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for i, r in enumerate(rows):
        x, y = points[r["model"]]
        err = [[y - r.get("test_acc_ci_lo", y)], [r.get("test_acc_ci_hi", y) - y]]
        ax.errorbar(x, y, yerr=err, fmt="o", color=f"C{i % 10}", capsize=3)
        ax.annotate(r["model"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.plot([points[k][0] for k in front], [points[k][1] for k in front], "k--", lw=1, label="Pareto front")
    _accuracy_against_seconds(
        ax,
        "total time, s (own training + extraction / probe it needs)",
        "test accuracy",
        "Accuracy against cost",
    )
    ax.legend(fontsize=8)
    return _png(fig)


def _accuracy_against_seconds(ax: plt.Axes, xlabel: str, ylabel: str, title: str) -> None:
    """Seconds on a log scale against an accuracy shown with its 95% interval."""
    ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=f"{ylabel} (95% interval)", title=title)
    ax.grid(alpha=0.3, which="both")


def plot_confusions(details: dict[str, Any]) -> bytes:
    models = list(details["models"])
    cols = min(4, len(models))
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 3.2 * rows), constrained_layout=True, squeeze=False
    )
    classes = details["classes"]
    for ax, name in zip(axes.flat, models, strict=False):
        cm = np.asarray(details["models"][name]["confusion"], dtype=float)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
        ticks = range(len(classes)) if len(classes) <= 20 else []
        ax.set_xticks(list(ticks), [classes[i] for i in ticks], fontsize=6, rotation=90)
        ax.set_yticks(list(ticks), [classes[i] for i in ticks], fontsize=6)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    for ax in list(axes.flat)[len(models) :]:
        ax.axis("off")
    return _png(fig)


def plot_per_class_f1(details: dict[str, Any]) -> bytes:
    models = list(details["models"])
    f1 = np.array([details["models"][m]["per_class_f1"] for m in models])
    classes = details["classes"]
    fig, ax = plt.subplots(
        figsize=(max(5, 0.5 * len(classes) + 3), 0.45 * len(models) + 1.5), constrained_layout=True
    )
    im = ax.imshow(f1, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_yticks(range(len(models)), models, fontsize=8)
    if len(classes) <= 40:
        ax.set_xticks(range(len(classes)), classes, fontsize=7, rotation=90)
        for (i, j), v in np.ndenumerate(f1):
            if f1.size <= 400:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
    ax.set(xlabel="class", title="Per-class F1 (test, all seeds pooled)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _png(fig)


def plot_size_curves(curves: dict[str, Any]) -> bytes:
    """Test accuracy against training images per class (log scale), one line per model with
    a curve, its 95% interval at every point; the fitted power law dotted, carried on to 4x
    today's training set, where its predictions stand with their bootstrap band."""
    from transferlab.verdict.curves import power_law

    fig, ax = plt.subplots(figsize=(8, 4.8), constrained_layout=True)
    for i, name in enumerate(curves["curve_models"]):
        c, color = curves["models"][name], f"C{i % 10}"
        pts = c["points"]
        x = np.array([p["per_class"] for p in pts])
        y = np.array([p["test_acc"] for p in pts])
        err = np.array(
            [[p["test_acc"] - p["ci95"][0] for p in pts], [p["ci95"][1] - p["test_acc"] for p in pts]]
        )
        ax.errorbar(x, y, yerr=err, fmt="o-", color=color, capsize=3, ms=4, label=name)
        fit = c.get("fit") or {}
        if "params" in fit:
            grid = np.geomspace(x.min(), 4 * x.max(), 60)
            ax.plot(grid, power_law(grid, **fit["params"]), ":", color=color, lw=1)
            for q in fit["predicted"]:
                lo, hi = q["band95"]
                ax.errorbar(
                    q["per_class"],
                    q["test_acc"],
                    yerr=[[q["test_acc"] - lo], [hi - q["test_acc"]]],
                    fmt="s",
                    mfc="none",
                    color=color,
                    capsize=3,
                    ms=5,
                )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 10, 100: not 10^1
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(
        xlabel="training images per class (log scale)",
        ylabel="test accuracy",
        title="If you had more (or less) data: measured (filled), power law (dotted), extrapolated (open)",
    )
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_forest(
    rows: list[dict[str, Any]], *, best: str, recommended: str, margin: float | None = None
) -> bytes:
    """The verdict as a figure: each model's test accuracy minus the best one's (the best on
    validation, at 0) with its family-wise 95% interval, rows that tie with the best shaded,
    the equivalence margin (-verdict.margin) dashed, and beside it each model's total time
    (log scale), so accuracy and cost read together."""
    n = len(rows)
    fig, (ax, ax_t) = plt.subplots(
        1,
        2,
        figsize=(10, 0.32 * n + 1.3),
        sharey=True,
        gridspec_kw={"width_ratios": [2.2, 1]},
        constrained_layout=True,
    )
    y = np.arange(n)[::-1]  # the best on top
    for yi, row in zip(y, rows, strict=True):
        color = "C0" if row["tie"] else "0.55"
        if row["tie"]:
            for a in (ax, ax_t):
                a.axhspan(yi - 0.45, yi + 0.45, color="C0", alpha=0.08, lw=0)
        lo, hi = row["ci"]
        if row["best"]:
            ax.plot(0, yi, "D", color="C0", ms=7)
        else:
            ax.errorbar(
                row["diff"],
                yi,
                xerr=[[row["diff"] - lo], [hi - row["diff"]]],
                fmt="o",
                color=color,
                capsize=3,
            )
        ax_t.barh(yi, row["time_s"], color="C2" if row["model"] == recommended else "0.7", height=0.6)
        ax_t.annotate(
            f" {row['time_s']:.1f} s" if row["time_s"] >= 1 else f" {row['time_s'] * 1000:.0f} ms",
            (row["time_s"], yi),
            va="center",
            fontsize=8,
        )
    labels = [
        row["model"]
        + (" (best on val)" if row["best"] else "")
        + (" ← use" if row["model"] == recommended else "")
        for row in rows
    ]
    ax.set_yticks(y, labels, fontsize=9)
    for tick, row in zip(ax.get_yticklabels(), rows, strict=True):
        if row["model"] == recommended:
            tick.set_fontweight("bold")
    ax.axvline(0, color="k", lw=1)
    if margin is not None:
        ax.axvline(-margin, color="C3", lw=1, ls="--", label=f"-margin ({margin:g})")
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xlabel(f"test accuracy minus {best}'s (95% family-wise interval)")
    ax.set_title("Against the best on validation (shaded: cannot be told apart)", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    ax_t.set_xscale("log")
    ax_t.set_xlabel("total time, s (log)")
    ax_t.set_title("Cost", fontsize=10)
    ax_t.grid(alpha=0.3, axis="x", which="both")
    hi_t = max(row["time_s"] for row in rows)
    ax_t.set_xlim(min(row["time_s"] for row in rows) / 2, hi_t * 8)  # room for the labels
    return _png(fig)


def plot_wise(name: str, w: dict[str, Any]) -> bytes:
    """The WiSE-FT curve: validation and test accuracy of the weights mixed between the probe
    (alpha 0) and the fine-tuned run (alpha 1), the alpha validation picked marked."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6), constrained_layout=True)
    ax.plot(w["alphas"], w["val_acc"], "o-", ms=4, label="validation")
    ax.plot(w["alphas"], w["test_acc"], "s--", ms=4, label="test")
    ax.axvline(
        w["picked_alpha"], color="k", lw=1, ls=":", label=f"picked on validation: {w['picked_alpha']:g}"
    )
    ax.set(
        xlabel=f"alpha (0: the linear probe, 1: {name} fine-tuned)",
        ylabel="accuracy",
        title=f"Weight-space interpolation towards {name}",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_screen(labels: list[str], screens: list[dict[str, Any]], best: int) -> bytes:
    """The backbone screen: each candidate's probe test accuracy (95% interval) against the
    time its extraction took, the best on validation marked."""
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for i, (name, s) in enumerate(zip(labels, screens, strict=True)):
        probe = s["probe"]
        lo, hi = probe["test_ci95"]
        x, y = max(s["extract_time_s"], 1e-3), probe["test_acc"]
        ax.errorbar(
            x, y, yerr=[[y - lo], [hi - y]], fmt="D" if i == best else "o", color=f"C{i % 10}", capsize=3
        )
        ax.annotate(
            name + (" (best on val)" if i == best else ""),
            (x, y),
            xytext=(5, 4),
            textcoords="offset points",
            fontsize=8,
        )
    _accuracy_against_seconds(
        ax,
        "extraction time of every image, s (log)",
        "linear probe test accuracy",
        "Backbone candidates, screened by a linear probe",
    )
    return _png(fig)
