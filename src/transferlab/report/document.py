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
import math
import re
from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from transferlab import registry  # noqa: E402
from transferlab.report import screen as screening
from transferlab.verdict.recommend import (  # noqa: E402
    FINE_TUNING,
    GAP_THRESHOLD,
    answer_better,
    answer_similar,
    recommend,
)
from transferlab.verdict.stats import pair_of, separable  # noqa: E402

DESCRIPTIONS = {spec.name: spec.description for spec in registry.all_models()}


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def comparison_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model, best test accuracy first (ties: faster first)."""
    rows = [{"model": k, **v} for k, v in metrics.items() if k != "extract"]
    return sorted(rows, key=lambda r: (-r["test_acc"], r["train_time_s"]))


def _grid_text(protocol: dict[str, Any]) -> tuple[str, str]:
    """(the grid searched, the value validation picked) in words."""
    grid = protocol["grid"]
    key = next(iter(grid))
    values = ", ".join(f"{v:g}" for v in grid[key])
    picked = protocol["picked"]
    if key in picked:
        edge = len(grid[key]) > 1 and picked[key] in (min(grid[key]), max(grid[key]))
        return f"{key} ∈ {{{values}}}", f"{key} {picked[key]:g}" + (
            " (edge of the grid: widen it)" if edge else ""
        )
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
        if prot.get("not_converged"):
            picked += (
                f" (not converged for seed(s) {', '.join(map(str, prot['not_converged']))}: "
                "raise train_head.linear.max_iter)"
            )
        if prot.get("diverged"):
            picked += f" (diverged, never picked: lr {', '.join(f'{v:g}' for v in prot['diverged'])})"
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


def plot_cost(rows: list[dict[str, Any]]) -> bytes:
    """Test accuracy against total training time, with the Pareto front."""
    points = {r["model"]: (max(r["total_time_s"], 1e-3), r["test_acc"]) for r in rows}
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
    """Blocks: ("h1"|"h2"|"p"|"pre", text), ("list", items), ("table", header, rows),
    ("img", name, alt). Text may use Markdown's **bold**, *emphasis* and `code`."""

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
            elif kind == "list":
                out.extend(f"- {item}" for item in b[1])
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
            elif kind == "list":
                body.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in b[1]) + "</ul>")
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
    """Markdown's `code`, **bold** and *emphasis* in HTML; everything else escaped. Code
    spans are cut out first, so a * inside one stays literal."""
    out = []
    for i, part in enumerate(html.escape(text).split("`")):
        if i % 2:
            out.append(f"<code>{part}</code>")
            continue
        part = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", part)
        part = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", part)
        out.append(part)
    return "".join(out)


def _d(x: float) -> str:
    """A signed difference; +0.0 added so that a bootstrap's -0.0 prints as +0.0000."""
    return f"{x + 0.0:+.4f}"


def _pair_text(pair: dict[str, Any]) -> str:
    lo, hi = pair["ci_family"]
    return (
        f"{pair['a']} {pair['acc_a']:.4f} vs {pair['b']} {pair['acc_b']:.4f}, difference {_d(pair['diff'])} "
        f"[{_d(lo)}, {_d(hi)}] (family-wise 95%), Holm-adjusted p = {pair['p_holm']:.3g}"
    )


def _sd(x: float | None) -> str:
    return "cannot tell" if x is None else f"{x:.4f}"


def spread_rows(details: dict[str, Any]) -> list[list[str]]:
    """Per model: the spread of test accuracy over runs, split into seeds and splittings."""
    rows = []
    for name, d in details["models"].items():
        s = d.get("spread")
        if s is None:
            continue
        rows.append(
            [
                name,
                str(s["runs"]),
                str(s["splittings"]),
                _sd(s["total_sd"]),
                _sd(s["seed_sd"]),
                _sd(s["split_sd"]),
            ]
        )
    return rows


def spread_text(details: dict[str, Any]) -> str:
    """How the runs were laid out, and so what their spread can say."""
    count = details.get("splits", {}).get("count", 1)
    seeds = details.get("seeds", [0])
    if count == 1:
        return (
            f"All {len(seeds)} runs of a model share one splitting of the data: their spread is the "
            "seeds' alone (initialisation, order, augmentation) and says nothing of how much "
            "another draw of train, val and test would move the scores. `base.splits: k` re-draws "
            "the splitting k times (seed s uses splitting s mod k); with two or more seeds per "
            "splitting the table separates the two sources."
        )
    per = len(seeds) / count
    if all(n < 2 for n in _seeds_per_splitting(details).values()):
        return (
            f"Each of the {count} splittings ran one seed: splitting and seed varied together, "
            "which estimates the total spread well (Bouthillier et al. 2021) but cannot say how "
            "much of it each source made. Give every splitting two or more seeds (for example "
            f"`base.seeds` with {2 * count} seeds) to separate them."
        )
    return (
        f"{len(seeds)} runs per model on {count} splittings (about {per:.1f} seeds each). The spread "
        "is split by a one-way random-effects analysis of variance: 'due to seeds' is the spread "
        "within a splitting, 'due to splits' what the splittings add on top (which includes "
        "drawing other test images). With this few runs both are rough; 0 means the splittings "
        "differed no more than the seeds within them did."
    )


def _seeds_per_splitting(details: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for column in details.get("splits", {}).get("of_seed", {}).values():
        counts[column] = counts.get(column, 0) + 1
    return counts


def best_of(models: tuple[str, ...] | list[str], val: dict[str, float]) -> str | None:
    """The model of ``models`` with the best validation accuracy (choices are made on val)."""
    present = [m for m in models if m in val]
    return max(present, key=lambda m: val[m]) if present else None


def claims(
    by: dict[str, dict[str, Any]], extract: dict[str, Any], comparisons: dict[str, Any], val: dict[str, float]
) -> list[str]:
    """The source documents' claims, each answered yes, no or cannot tell, with the paired
    numbers that answer it (accuracy claims) or the measured costs (cost claims)."""
    out = []
    m = GAP_THRESHOLD

    def line(claim: str, answer: str, why: str) -> None:
        out.append(f"*{claim}*: **{answer}**: {why}.")

    if "features" in by and "frozen" in by:
        f, z = by["features"], by["frozen"]
        ratio = z["time_per_epoch_s"] / max(f["time_per_epoch_s"], 1e-9)
        line(
            "Two-stage trains faster per epoch",
            "yes" if ratio > 1 else "no",
            f"{ratio:,.0f}x ({_fmt_s(f['time_per_epoch_s'])} against {_fmt_s(z['time_per_epoch_s'])} per pass over "
            f"the training set), after a one-time extraction of {_fmt_s(extract['time_s'])}",
        )
        pair = pair_of(comparisons, "frozen", "features")
        line(
            "Both reach similar accuracy",
            answer_similar(pair, m),
            f"within ±{m:.2f} counts as similar; {_pair_text(pair)}",
        )
    if "features" in by and "features-augmented" in by:
        pair = pair_of(comparisons, "features-augmented", "features")
        line(
            "Augmentation helps the frozen path",
            answer_better(pair, m),
            f"compared on equal terms (the same probe, fitted to convergence, with and without "
            f"{extract.get('augment_time_s', 0.0):.1f} s of augmented views); {_pair_text(pair)}",
        )
        line(
            "Cached features cannot use augmentation",
            "no",
            f"they can: K augmented views per training image are extracted once, at "
            f"{_fmt_s(extract.get('augment_time_s', 0.0))} of extra extraction",
        )
    tuned = best_of(FINE_TUNING, val)
    if tuned and "features" in by:
        pair = pair_of(comparisons, tuned, "features")
        line(
            "Fine-tuning beats frozen features",
            answer_better(pair, m),
            f"the best fine-tuned model on validation against the linear probe; {_pair_text(pair)}",
        )
    pretrained = best_of([k for k in by if registry.get(k).pretrained], val)
    if "scratch" in by and pretrained:
        pair = pair_of(comparisons, pretrained, "scratch")
        line(
            "Pretraining is worth it",
            answer_better(pair, m),
            f"the best pretrained model on validation against the same network from random weights; "
            f"{_pair_text(pair)}",
        )
    if "full" in by and "frozen" in by:
        more = by["full"]["peak_rss_mb"] > by["frozen"]["peak_rss_mb"]
        line(
            "Fine-tuning needs more memory",
            "yes" if more else "no",
            f"peak resident memory {by['full']['peak_rss_mb']:.0f} MB for full fine-tuning against "
            f"{by['frozen']['peak_rss_mb']:.0f} MB with the backbone frozen",
        )
    return out


def wise_section(doc: Document, name: str, w: dict[str, Any]) -> None:
    """The WiSE-FT curve of ``name``: weights mixed between its start and its end."""
    doc.add("h2", f"Between the probe and {name}: weight-space interpolation")
    picked = w["picked_alpha"]
    doc.add(
        "table",
        ["alpha", "val acc", "test acc"],
        [
            [f"**{a:g}**" if a == picked else f"{a:g}", f"{v:.4f}", f"{t:.4f}"]
            for a, v, t in zip(w["alphas"], w["val_acc"], w["test_acc"], strict=True)
        ],
    )
    text = (
        f"Each row scores the weights (1 - alpha) x start + alpha x end, where the start is the "
        f"linear probe on the pretrained backbone (alpha 0) and the end the fine-tuned {name} "
        f"run (alpha 1): evaluations only, {w['time_s']:.1f} s per run"
        + (
            "; BatchNorm statistics re-estimated on the training images at every interior alpha"
            if w["bn_reestimated"]
            else ""
        )
        + f". Validation picks alpha {picked:g} (bold)."
    )
    for key in ("vs_end", "vs_start"):
        if key in w and w[key]["a"] != w[key]["b"]:
            pair = w[key]
            lo, hi = pair["ci_family"]
            verdict = "separable" if pair["p"] * 2 < 0.05 and (lo > 0 or hi < 0) else "not separable"
            text += (
                f" Against {pair['b']}: {_d(pair['diff'])} test accuracy, 95% interval [{_d(lo)}, {_d(hi)}] "
                f"(Bonferroni over these two comparisons), p = {pair['p']:.3g}: {verdict}."
            )
    doc.add("p", text)


def robustness_section(
    doc: Document, r: dict[str, Any], by: dict[str, dict[str, Any]], val: dict[str, float]
) -> None:
    """Accuracy on the shifted test split, and what the paired tests on it say."""
    kinds = r["kinds"]
    doc.add("h2", "Robustness: the test split, shifted")
    names = sorted(r["accuracy"], key=lambda m: -by[m]["shifted_acc"])
    doc.add(
        "table",
        ["model", "test acc", *kinds, "all shifts", "drop"],
        [
            [
                m,
                f"{by[m]['test_acc']:.4f}",
                *(f"{r['accuracy'][m][k]:.4f}" for k in kinds),
                f"{by[m]['shifted_acc']:.4f}",
                _d(by[m]["shifted_acc"] - by[m]["test_acc"]),
            ]
            for m in names
        ],
    )
    comps = r["comparisons"]
    text = (
        "The same test images under fixed shifts (params `shift`: ImageNet-C's strengths at the "
        "given severity, noise seeded per image), scored by every model: nothing trained on them. "
        "Paired tests pool the shifts like seeds (each image's outcome averaged over them); "
        "intervals are family-wise over all pairs."
    )
    best = max(r["accuracy"], key=lambda m: val.get(m, 0.0))
    for a, b, why in (
        ("lp-ft", "full", "Kumar et al. (ICLR 2022) report LP-FT ahead of fine-tuning out of distribution"),
        (best, "features", "the best model on validation against the probe"),
    ):
        if a in r["accuracy"] and b in r["accuracy"] and a != b:
            pair = pair_of(comps, a, b)
            text += f" {why}: {_pair_text(pair)}: " + (
                "separable." if separable(pair) else "the shifted split cannot tell them apart."
            )
    doc.add("p", text)


def backbone_section(doc: Document, details: dict[str, Any], screens: list[dict[str, Any]]) -> None:
    """Transferability scores of the arms' store and, with backbone.candidates, the screen."""
    t = details.get("extract", {}).get("transferability")
    if not t and not screens:
        return
    doc.add("h2", "Backbones: predicted before training, then measured")
    if t:
        sc, sec = t["scores"], t["seconds"]
        doc.add(
            "p",
            f"Scores of the arms' store (`{details['fingerprint']['backbone']}`, training images of the "
            f"base splitting): LogME {sc['logme']:.3f} ({sec['logme']:.2f} s), H-score "
            f"{sc['h_score']:.3f} ({sec['h_score']:.2f} s), k-NN validation accuracy {sc['knn_val_acc']:.4f} "
            f"({sec['knn_val_acc']:.2f} s). Higher is better for each; alone they say little, next to "
            "another backbone's they are a guess at which will transfer better.",
        )
    if not screens:
        doc.add(
            "p",
            "No candidates were screened: list some in `backbone.candidates` to compare backbones "
            "by linear probe and score (README, Choosing the backbone).",
        )
        return
    summary = screening.summarise(screens)
    doc.add("table", screening.HEADER, screening.rows(screens))
    best = summary["best"]
    others = [n for n in summary["tie_set"] if n != best]
    text = (
        f"Every candidate: features of every image in its own store, then the linear probe of "
        f"train-head (L2 strength chosen on validation), on the same splits. Best probe on validation: "
        f"**{best}**."
    )
    if others:
        text += f" The test split cannot separate it from {', '.join(others)} (paired, family-wise)."
    elif summary["paired"]:
        text += " Every other candidate's probe is separably worse on the test split."
    for name, pair in summary["paired"].items():
        lo, hi = pair["ci_family"]
        text += f" Against {name}: {_d(pair['diff'])} [{_d(lo)}, {_d(hi)}], Holm p = {pair['p_holm']:.3g}."
    text += (
        " The arms ran on `backbone.name`; to run them on another candidate: "
        "`dvc exp run -S backbone.name=<name> -S backbone.image_size=<size>`."
    )
    doc.add("p", text)
    n = len(screens)
    tau_rows = [
        [
            screening.SCORES[k],
            *("n/a" if v[m] is None else f"{v[m]:+.2f}" for m in ("val_acc", "test_acc")),
        ]
        for k, v in summary["tau"].items()
    ]
    doc.add("table", ["score", "Kendall's tau with probe val acc", "with probe test acc"], tau_rows)
    doc.add(
        "p",
        f"Kendall's tau over {n} candidates: +1 when a score ranks them exactly as the probes did, "
        "-1 when exactly reversed. "
        + (
            "With fewer than 5 candidates a perfect ranking happens by chance often (1 in "
            f"{math.factorial(n)}): read it as an illustration. "
            if n < 5
            else ""
        )
        + "Published studies find these scores unstable predictors of fine-tuned accuracy "
        "(Agostinelli et al., ECCV 2022) and a plain k-NN competitive with the rest "
        "(Sorkhei et al., 2025); the probe accuracies above are measured, not predicted.",
    )


def build(
    metrics: dict[str, Any],
    details: dict[str, Any],
    comparisons: dict[str, Any],
    *,
    title: str,
    code_version: str,
    params_text: str,
    screens: list[dict[str, Any]] | None = None,
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
        f"Seeds: {', '.join(map(str, seeds))}"
        + (
            f", on {details['splits']['count']} splittings of the data (seed s on splitting s mod "
            f"{details['splits']['count']}, `base.splits`)"
            if details.get("splits", {}).get("count", 1) > 1
            else ""
        )
        + f". Code: `{code_version}`.",
    )

    verdict = details["verdict"]
    val = verdict["val_acc"]
    tuned = best_of(FINE_TUNING, val)
    gap = pair_of(comparisons, tuned, "features") if tuned and "features" in val else None
    rec = recommend(
        metrics, verdict, gap, train_images=sizes.get("train", 0), num_classes=len(details["classes"])
    )
    doc.add("h2", "Recommendation")
    doc.add("p", rec.text)
    doc.add("h2", "What the data cannot tell")
    n_test = len(details.get("test_ids", [])) or sizes.get("test", 0)
    if verdict["unresolved"]:
        items = []
        for u in verdict["unresolved"]:
            lo, hi = u["ci_family"]
            need = u["images_to_separate"]
            items.append(
                f"{verdict['best_on_val']} against {u['model']}: difference {_d(u['diff'])}, "
                f"family-wise 95% interval [{_d(lo)}, {_d(hi)}], Holm-adjusted p = {u['p_holm']:.3g}. "
                + (
                    f"A difference this size would take about {need:,} test images to separate at "
                    f"the 5% level with power 0.8, before the correction for "
                    f"{len(comparisons['pairs'])} comparisons (this split has {n_test:,})."
                    if need
                    else "They make the same predictions: no test set separates them."
                )
            )
        doc.add("list", items)
        doc.add(
            "p",
            "These models tie on this test split: the data cannot tell which is better, and a "
            "ranking among them would be noise. More test images, more seeds (`base.seeds`), "
            "re-drawn splits (`base.splits`) or more data would separate differences this small; "
            "until then, choose among them on cost.",
        )
    else:
        doc.add(
            "p", f"Nothing: every model is separably worse than {verdict['best_on_val']} on the test split."
        )

    doc.add("h2", "Comparison")
    multi = len(seeds) > 1
    header = [
        "model",
        "what trains",
        "val acc",
        "test acc" + (" (mean ± sd) [95% CI]" if multi else " [95% CI]"),
        "macro-F1",
        "balanced acc",
        "NLL",
        "ECE",
        "train time",
        "time / epoch",
        "train img/s",
        "trainable / total params",
        "trained / checkpoint MB",
        "peak RSS",
    ]
    table = []
    for r in rows:
        acc = (
            f"{r['test_acc']:.4f} ± {r['test_acc_std']:.4f} " if multi else f"{r['test_acc']:.4f} "
        ) + f"[{r['test_acc_ci_lo']:.3f}, {r['test_acc_ci_hi']:.3f}]"
        name = f"**{r['model']}**" if r["model"] == rec.recommended else r["model"]
        table.append(
            [
                name,
                DESCRIPTIONS.get(r["model"], ""),
                f"{val.get(r['model'], float('nan')):.4f}",
                acc,
                f"{r['macro_f1']:.4f}",
                f"{r['balanced_acc']:.4f}",
                f"{r['nll']:.3f}",
                f"{r['ece']:.3f}",
                _fmt_s(r["train_time_s"]),
                _fmt_s(r["time_per_epoch_s"]),
                f"{r['images_per_s']:,.0f}",
                f"{r['trainable_params']:,} / {r['total_params']:,}",
                f"{r.get('trained_mb', 0.0):.2f} / {r.get('checkpoint_mb', 0.0):.1f}",
                f"{r['peak_rss_mb']:.0f} MB"
                + (f" (GPU {r['peak_gpu_mb']:.0f} MB)" if r.get("peak_gpu_mb") else ""),
            ]
        )
    doc.add("table", header, table)
    doc.add(
        "p",
        "Bold: the recommended model. Rows are sorted by test accuracy for reading only; every "
        "choice (learning rates, L2 strengths, the best model) was made on validation. Test "
        "intervals: "
        + ("Wilson's." if not multi else "hierarchical bootstrap over seeds and images.")
        + " 'Trained MB' is what a task adds to the shared backbone (the tensors the run trained), "
        "'checkpoint MB' the file the model ships as.",
    )
    doc.add("h2", f"Paired comparisons with {verdict['best_on_val']}")
    paired_rows = []
    for r in rows:
        if r["model"] == verdict["best_on_val"]:
            continue
        pair = pair_of(comparisons, verdict["best_on_val"], r["model"])
        lo, hi = pair["ci95"]
        flo, fhi = pair["ci_family"]
        paired_rows.append(
            [
                r["model"],
                _d(pair["diff"]),
                f"[{_d(lo)}, {_d(hi)}]",
                f"[{_d(flo)}, {_d(fhi)}]",
                f"{pair['p']:.3g}",
                f"{pair['p_holm']:.3g}",
                "yes" if separable(pair) else "no: tie",
            ]
        )
    doc.add(
        "table",
        [
            "against",
            f"{verdict['best_on_val']} minus it",
            "95% interval (this pair)",
            f"95% family-wise ({len(comparisons['pairs'])} pairs)",
            "p",
            "p (Holm)",
            "separable",
        ],
        paired_rows,
    )
    doc.add(
        "p",
        "Every pair of models is in `results/evaluate/comparisons.json`, "
        "and `results/evaluate/details.json` holds each run's per-image predictions (`test_ids`, "
        "`test_labels`, `predictions`) to recompute any of them. " + comparisons["method"],
    )
    doc.add("h2", "Protocol")
    doc.add(
        "p",
        "Every model trains on the same splits and seeds. Hyper-parameters are chosen on the "
        "validation split, never on test: each end-to-end strategy trains once per learning rate "
        "of its grid, on the budget in the table below (by default the same for every end-to-end "
        "strategy; warm-up then cosine decay; the epoch with the lowest validation loss is kept), and the rate with the best "
        "validation accuracy (ties: lower validation loss; averaged over seeds) is the one scored "
        "on test. The two-stage heads are fitted to convergence (a head on fixed features costs "
        "seconds, so no step budget limits it) and their L2 strength is chosen the same way. "
        "'Total' is the chosen run plus what it needed first: the extraction for the two-stage "
        "models, the extraction and the probe's whole search for lp-ft. 'Whole grid' is the cost of "
        "searching the arm's own grid, which a user who already knows the best value skips.",
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
    if multi:
        doc.add("h2", "Where the spread comes from")
        doc.add("p", spread_text(details))
        doc.add(
            "table",
            ["model", "runs", "splittings", "sd of test acc", "due to seeds", "due to splits"],
            spread_rows(details),
        )

    for name, model in details["models"].items():
        if "wise" in model:
            wise_section(doc, name, model["wise"])

    if "robustness" in details:
        robustness_section(doc, details["robustness"], by, val)
    backbone_section(doc, details, screens or [])

    checked = claims(by, extract, comparisons, val)
    if checked:
        doc.add("h2", "The rules of thumb, checked on this run")
        doc.add("list", checked)

    doc.figures = {
        "accuracy_vs_time.png": plot_cost(rows),
        "learning_curves.png": plot_curves(details),
        "confusion.png": plot_confusions(details),
        "per_class_f1.png": plot_per_class_f1(details),
    }
    doc.add("h2", "Figures")
    doc.add("img", "accuracy_vs_time.png", "test accuracy against training time, with the Pareto front")
    doc.add(
        "p",
        "Pareto front of the point estimates (no model is both cheaper and more accurate; the "
        "paired comparisons above say which of these differences the test split can resolve): "
        + ", ".join(pareto_front({r["model"]: (r["total_time_s"], r["test_acc"]) for r in rows}))
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
