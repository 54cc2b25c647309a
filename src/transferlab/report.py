"""The comparison a practitioner decides from, as Markdown and as a self-contained HTML page.

Input is what the evaluate stage wrote (metrics and details) and the params behind them;
nothing here trains or scores. The document is built once as a list of blocks and rendered
twice, so the two formats cannot drift apart. Figures are PNGs: files next to the Markdown,
embedded (base64) in the HTML so it opens offline.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from transferlab.recommend import GAP_THRESHOLD, recommend  # noqa: E402

DESCRIPTIONS = {
    "features": "two-stage: head on cached features, no augmentation",
    "features-augmented": "two-stage: head on cached features of K augmented views per image",
    "frozen": "end to end, backbone frozen, augmented images",
    "partial": "end to end, last blocks unfrozen",
    "full": "end to end, everything trainable, backbone at a lower rate",
    "progressive": "end to end, blocks unfrozen top-down over epochs, deeper at lower rates",
    "lp-ft": "end to end from the linear probe's head, everything trainable",
    "scratch": "same architecture from random weights, everything trainable",
}
TWO_STAGE = ("features", "features-augmented")


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def comparison_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model, best test accuracy first (ties: faster first)."""
    rows = [{"model": k, **v} for k, v in metrics.items() if k != "extract"]
    return sorted(rows, key=lambda r: (-r["test_acc"], r["train_time_s"]))


def total_time(row: dict[str, Any], extract: dict[str, Any]) -> float:
    """Training time plus what the model needed first (extraction; lp-ft: the probe too)."""
    return row["total_time_s"]


def _grid_text(protocol: dict[str, Any]) -> tuple[str, str]:
    """(the grid searched, the value validation picked) in words."""
    grid = protocol["grid"]
    key = next(iter(grid))
    values = ", ".join(f"{v:g}" for v in grid[key])
    picked = protocol["picked"]
    if key in picked:
        return f"{key} ∈ {{{values}}}", f"{key} {picked[key]:g}"
    per_seed = sorted({f"{v[key]:g}" for v in picked.values()})
    return f"{key} ∈ {{{values}}}", f"{key} {', '.join(per_seed)} (per seed)"


def _budget_text(budget: dict[str, Any]) -> str:
    if "iterations" in budget:
        return (
            f"L-BFGS to convergence: {budget['iterations']} iterations, "
            f"{budget['images_seen']:,} feature rows seen"
        )
    return (
        f"{budget['epochs']} epochs"
        + (f" ({budget['warmup_epochs']} warm-up)" if budget.get("warmup_epochs") else "")
        + f", {budget['steps']:,} steps of {budget.get('batch_size', '?')}, {budget['images_seen']:,} images seen"
    )


def protocol_rows(details: dict[str, Any], metrics: dict[str, Any]) -> list[list[str]]:
    """How every arm was trained and chosen: the table that makes the comparison fair or not."""
    rows = []
    for name, d in details["models"].items():
        prot = d["protocol"]
        grid, picked = _grid_text(prot)
        m = metrics[name]
        rows.append(
            [
                name,
                _budget_text(prot["budget"]),
                grid,
                picked,
                _fmt_s(m["train_time_s"]),
                _fmt_s(m["search_time_s"]),
                _fmt_s(m["total_time_s"])
                + (f" (+ {', '.join(prot['depends_on'])})" if prot["depends_on"] else ""),
            ]
        )
    return rows


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Models no other model beats on both cost (lower) and accuracy (higher), cheapest first."""
    front = [
        k
        for k, (c, a) in points.items()
        if not any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for k2, (c2, a2) in points.items() if k2 != k)
    ]
    return sorted(front, key=lambda k: points[k][0])


# --------------------------------------------------------------------------------- figures


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def plot_curves(details: dict[str, Any]) -> bytes:
    """Validation accuracy and train/validation loss of every model trained by epochs, on
    shared axes (first seed). Probes fitted by L-BFGS have no epochs: their grid is in the
    protocol table instead."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for i, (name, d) in enumerate(details["models"].items()):
        c, color = d["curves"], f"C{i % 10}"
        if "grid/l2" in c:
            continue
        epochs = range(1, len(c.get("val/acc", [])) + 1)
        ax_acc.plot(epochs, c.get("val/acc", []), color=color, marker="o", ms=3, label=name)
        ax_loss.plot(epochs, c.get("val/loss", []), color=color, marker="o", ms=3)
        ax_loss.plot(epochs, c.get("train/loss", []), color=color, ls="--", alpha=0.7)
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss (solid: validation, dashed: training)")
    ax_loss.set_yscale("log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    return _png(fig)


def plot_cost(rows: list[dict[str, Any]], extract: dict[str, Any]) -> bytes:
    """Test accuracy against total training time, with the Pareto front."""
    points = {r["model"]: (max(total_time(r, extract), 1e-3), r["test_acc"]) for r in rows}
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for i, r in enumerate(rows):
        x, y = points[r["model"]]
        ax.errorbar(x, y, yerr=r.get("test_acc_std", 0.0) or None, fmt="o", color=f"C{i % 10}", capsize=3)
        ax.annotate(r["model"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.plot([points[k][0] for k in front], [points[k][1] for k in front], "k--", lw=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set(
        xlabel="total time, s (own training + extraction / probe it needs)",
        ylabel="test accuracy",
        title="Accuracy against cost",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _png(fig)


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


# --------------------------------------------------------------------------------- document


@dataclass
class Document:
    """Blocks: ("h1"|"h2"|"p"|"pre", text), ("table", header, rows), ("img", name, alt)."""

    blocks: list[tuple] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)

    def add(self, *block: Any) -> None:
        self.blocks.append(block)

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            kind = b[0]
            if kind in ("h1", "h2"):
                out.append(("# " if kind == "h1" else "## ") + b[1])
            elif kind == "p":
                out.append(b[1])
            elif kind == "pre":
                out.append("```\n" + b[1].rstrip() + "\n```")
            elif kind == "table":
                header, rows = b[1], b[2]
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
                out += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
            elif kind == "img":
                out.append(f"![{b[2]}]({b[1]})")
            out.append("")
        return "\n".join(out)

    def html(self, title: str) -> str:
        e = html.escape
        body = []
        for b in self.blocks:
            kind = b[0]
            if kind in ("h1", "h2"):
                body.append(f"<{kind}>{e(b[1])}</{kind}>")
            elif kind == "p":
                body.append(f"<p>{_inline(b[1])}</p>")
            elif kind == "pre":
                body.append(f"<pre>{e(b[1])}</pre>")
            elif kind == "table":
                head = "".join(f"<th>{e(h)}</th>" for h in b[1])
                rows = "".join(
                    "<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>" for r in b[2]
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "img":
                data = base64.b64encode(self.figures[b[1]]).decode()
                body.append(f'<figure><img alt="{e(b[2])}" src="data:image/png;base64,{data}"></figure>')
        style = (
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px}"
            "td{text-align:right}td:first-child,td:nth-child(2){text-align:left}th{background:#f3f3f3}"
            "img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}"
        )
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
        )


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` in HTML; everything else escaped."""
    parts = html.escape(text).split("**")
    text = "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _claims(by: dict[str, dict[str, Any]], extract: dict[str, Any], rec_gap: float | None) -> list[str]:
    """The source documents' claims, each checked against this run's numbers."""
    out = []
    if "features" in by and "frozen" in by:
        f, z = by["features"], by["frozen"]
        ratio = z["time_per_epoch_s"] / max(f["time_per_epoch_s"], 1e-9)
        out.append(
            f"*Two-stage trains faster per epoch*: yes, {ratio:,.0f}x ({_fmt_s(f['time_per_epoch_s'])} against "
            f"{_fmt_s(z['time_per_epoch_s'])} per epoch), after a one-time extraction of {_fmt_s(extract['time_s'])}."
        )
        diff = z["test_acc"] - f["test_acc"]
        half = (f.get("test_acc_ci_hi", f["test_acc"]) - f.get("test_acc_ci_lo", f["test_acc"])) / 2
        similar = abs(diff) <= half
        out.append(
            f"*Both reach similar accuracy*: {'yes' if similar else 'no'}: frozen end to end minus two-stage is "
            f"{diff:+.4f}, {'within' if similar else 'outside'} the test set's 95% interval (±{half:.4f})."
        )
        if "features-augmented" in by:
            a = by["features-augmented"]
            d_aug = a["test_acc"] - f["test_acc"]
            out.append(
                f"*Augmentation helps the frozen path*: {'yes' if d_aug > 0 else 'no'}, compared on equal "
                f"terms (the same probe, fitted to convergence, with and without augmented views): "
                f"{a['test_acc']:.4f} against {f['test_acc']:.4f} ({d_aug:+.4f}). Frozen end to end, "
                f"augmented on the fly within its step budget, reached {z['test_acc']:.4f}."
            )
    if "features" in by and "features-augmented" in by:
        d = by["features-augmented"]["test_acc"] - by["features"]["test_acc"]
        out.append(
            f"*Cached features cannot use augmentation*: they can: augmented views cost "
            f"{_fmt_s(extract.get('augment_time_s', 0.0))} of extra extraction and changed test accuracy by {d:+.4f}."
        )
    if rec_gap is not None:
        out.append(
            f"*Fine-tuning helps where frozen features fall short*: "
            f"{'yes' if rec_gap > GAP_THRESHOLD else 'not here'}: the best fine-tuned model "
            f"{'beats' if rec_gap >= 0 else 'trails'} the linear probe by {abs(rec_gap):.4f} test accuracy."
        )
    if "scratch" in by:
        pre = [r for k, r in by.items() if k != "scratch"]
        if pre:
            best = max(pre, key=lambda r: r["test_acc"])
            out.append(
                f"*Pretraining is worth it*: {best['test_acc'] - by['scratch']['test_acc']:+.4f} test accuracy "
                f"({best['model']} against the same architecture from random weights)."
            )
    if "full" in by and "frozen" in by:
        out.append(
            f"*Fine-tuning needs more memory*: peak resident memory {by['full']['peak_rss_mb']:.0f} MB for full "
            f"fine-tuning against {by['frozen']['peak_rss_mb']:.0f} MB with the backbone frozen."
        )
    return out


def build(
    metrics: dict[str, Any],
    details: dict[str, Any],
    *,
    title: str,
    code_version: str,
    params_text: str,
) -> Document:
    rows = comparison_rows(metrics)
    by = {r["model"]: r for r in rows}
    fp, extract, sizes = details["fingerprint"], metrics["extract"], details["split_sizes"]
    seeds = details.get("seeds", [0])
    doc = Document()
    doc.add("h1", title)
    doc.add(
        "p",
        f"Data: {sum(sizes.values())} images, {len(details['classes'])} classes (train {sizes.get('train', 0)}, "
        f"val {sizes.get('val', 0)}, test {sizes.get('test', 0)}), manifest `{fp['manifest_sha256'][:12]}`. "
        f"Backbone: `{fp['backbone']}` at {fp['image_size']} px, weights `{(fp['weights_sha256'] or 'random')[:12]}`. "
        f"Seeds: {', '.join(map(str, seeds))}. Code: `{code_version}`.",
    )

    rec = recommend(metrics, train_images=sizes.get("train", 0), num_classes=len(details["classes"]))
    doc.add("h2", "Recommendation")
    doc.add("p", rec.text)

    doc.add("h2", "Comparison")
    multi = len(seeds) > 1
    header = [
        "model",
        "what trains",
        "test acc" + (" (mean ± sd)" if multi else " [95% CI]"),
        "macro-F1",
        "balanced acc",
        "NLL",
        "ECE",
        "train time",
        "time / epoch",
        "train img/s",
        "trainable / total params",
        "peak RSS",
    ]
    table = []
    for r in rows:
        acc = (
            f"{r['test_acc']:.4f} ± {r['test_acc_std']:.4f}"
            if multi
            else f"{r['test_acc']:.4f} [{r['test_acc_ci_lo']:.3f}, {r['test_acc_ci_hi']:.3f}]"
        )
        name = f"**{r['model']}**" if r["model"] == rec.best else r["model"]
        table.append(
            [
                name,
                DESCRIPTIONS.get(r["model"], ""),
                acc,
                f"{r['macro_f1']:.4f}",
                f"{r['balanced_acc']:.4f}",
                f"{r['nll']:.3f}",
                f"{r['ece']:.3f}",
                _fmt_s(r["train_time_s"]),
                _fmt_s(r["time_per_epoch_s"]),
                f"{r['images_per_s']:,.0f}",
                f"{r['trainable_params']:,} / {r['total_params']:,}",
                f"{r['peak_rss_mb']:.0f} MB"
                + (f" (GPU {r['peak_gpu_mb']:.0f} MB)" if r.get("peak_gpu_mb") else ""),
            ]
        )
    doc.add("table", header, table)
    doc.add("h2", "Protocol")
    doc.add(
        "p",
        "Every model trains on the same splits and seeds. Hyper-parameters are chosen on the "
        "validation split, never on test: each end-to-end strategy trains once per learning rate "
        "of its grid, on the same budget as every other end-to-end strategy (warm-up then cosine "
        "decay; the epoch with the lowest validation loss is kept), and the rate with the best "
        "validation accuracy (ties: lower validation loss; averaged over seeds) is the one scored "
        "on test. The two-stage heads are fitted to convergence (a head on fixed features costs "
        "seconds, so no step budget limits it) and their L2 strength is chosen the same way. "
        "'Total' adds what a model needed first: the extraction for the two-stage models, the "
        "extraction and the probe's whole search for lp-ft.",
    )
    doc.add(
        "table",
        ["model", "budget (chosen run)", "grid", "chosen on validation", "train time", "whole grid", "total"],
        protocol_rows(details, metrics),
    )
    doc.add(
        "p",
        f"The two-stage models paid once for extraction: {_fmt_s(extract['time_s'])} for every image "
        f"({extract['images_per_s']:.0f} images/s overall), plus {_fmt_s(extract.get('augment_time_s', 0.0))} for "
        f"the augmented views, into a {extract['store_mb']:.2f} MB feature store. Their heads then re-train in the "
        "time above whenever only head parameters change.",
    )
    flips = details.get("rank_flips", [])
    if flips:
        doc.add(
            "p",
            "Rankings that flip between seeds: "
            + "; ".join(
                f"{a} vs {b} (seeds {f[f'{a}_ahead_seeds']} vs {f[f'{b}_ahead_seeds']})"
                for f in flips
                for a, b in [f["models"]]
            )
            + ". Differences between these models are within seed noise.",
        )
    elif multi:
        doc.add("p", f"No ranking flips between the {len(seeds)} seeds.")

    claims = _claims(by, extract, rec.probe_gap)
    if claims:
        doc.add("h2", "The rules of thumb, checked on this run")
        for c in claims:
            doc.add("p", "- " + c)

    doc.figures = {
        "accuracy_vs_time.png": plot_cost(rows, extract),
        "learning_curves.png": plot_curves(details),
        "confusion.png": plot_confusions(details),
        "per_class_f1.png": plot_per_class_f1(details),
    }
    doc.add("h2", "Figures")
    doc.add("img", "accuracy_vs_time.png", "test accuracy against training time, with the Pareto front")
    doc.add(
        "p",
        "Pareto front (no model is both cheaper and more accurate): "
        + ", ".join(pareto_front({r["model"]: (total_time(r, extract), r["test_acc"]) for r in rows}))
        + ".",
    )
    doc.add("img", "learning_curves.png", "learning curves of every model")
    doc.add("img", "confusion.png", "confusion matrices, rows normalized")
    doc.add("img", "per_class_f1.png", "per-class F1 of every model")

    doc.add("h2", "Provenance")
    env = next(iter(details["models"].values()))["runs"]
    first_env = next(iter(env.values()))["train"].get("environment", {})
    packages = first_env.get("packages", {})
    shown = {k: v for k, v in first_env.items() if k != "packages"}
    key = ("torch", "torchvision", "numpy", "pillow", "zarr", "dvc")
    doc.add(
        "p",
        "Measured on: "
        + ", ".join(f"{k} {v}" for k, v in shown.items())
        + (
            f"; {len(packages)} packages installed, among them "
            + ", ".join(f"{k} {packages[k]}" for k in key if k in packages)
            + " (every version is in each run's train.json)"
            if packages
            else ""
        )
        + ".",
    )
    doc.add("pre", params_text)
    return doc
