"""The comparison a practitioner reads: a Markdown table and learning curves of every model.

Input is what the evaluate stage wrote (metrics and details); nothing here trains or scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt  # noqa: E402

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


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def comparison_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model, best test accuracy first."""
    rows = [{"model": k, **v} for k, v in metrics.items() if k != "extract"]
    return sorted(rows, key=lambda r: (-r["test_acc"], r["train_time_s"]))


def plot_curves(details: dict[str, Any], path: Path) -> None:
    """Validation accuracy and train/validation loss of every model on shared axes."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for i, (name, d) in enumerate(details["models"].items()):
        c = d["curves"]
        color = f"C{i}"
        epochs = range(1, len(c.get("val/acc", [])) + 1)
        ax_acc.plot(epochs, c.get("val/acc", []), color=color, marker="o", ms=3, label=name)
        ax_loss.plot(epochs, c.get("val/loss", []), color=color, marker="o", ms=3, label=f"{name} val")
        ax_loss.plot(epochs, c.get("train/loss", []), color=color, ls="--", alpha=0.7, label=f"{name} train")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss (solid: val, dashed: train)")
    ax_loss.set_yscale("log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    ax_acc.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_markdown(
    metrics: dict[str, Any],
    details: dict[str, Any],
    *,
    title: str,
    code_version: str,
    curves_png: str,
) -> str:
    rows = comparison_rows(metrics)
    fp = details["fingerprint"]
    extract = metrics["extract"]
    sizes = details["split_sizes"]
    lines = [
        f"# {title}",
        "",
        f"Data: {sum(sizes.values())} images, {len(details['classes'])} classes "
        f"(train {sizes.get('train', 0)}, val {sizes.get('val', 0)}, test {sizes.get('test', 0)}); "
        f"manifest `{fp['manifest_sha256'][:12]}`.  ",
        f"Backbone: `{fp['backbone']}` at {fp['image_size']} px, weights "
        f"`{(fp['weights_sha256'] or 'random')[:12]}`; code `{code_version}`.",
        "",
        "| model | what trains | test acc | macro-F1 | train time | time / epoch | epochs "
        "| trainable params | peak RSS |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {DESCRIPTIONS.get(r['model'], '')} | {r['test_acc']:.4f} "
            f"| {r['macro_f1']:.4f} | {_fmt_s(r['train_time_s'])} | {_fmt_s(r['time_per_epoch_s'])} "
            f"| {r['epochs']} | {r['trainable_params']:,} | {r['peak_rss_mb']:.0f} MB |"
        )
    lines += [
        "",
        f"The two-stage path paid once for extraction: {_fmt_s(extract['time_s'])} for every "
        f"image, plus {_fmt_s(extract.get('augment_time_s', 0.0))} for the augmented views, "
        f"into a {extract['store_mb']:.2f} MB feature store; its heads then train in the time "
        "shown above, and re-train without re-extracting when only head parameters change.",
    ]
    by = {r["model"]: r for r in rows}
    if "features" in by and "frozen" in by:
        ratio = by["frozen"]["time_per_epoch_s"] / max(by["features"]["time_per_epoch_s"], 1e-9)
        diff = by["frozen"]["test_acc"] - by["features"]["test_acc"]
        lines.append(
            f"An epoch on cached features took {ratio:,.0f}x less time than an end-to-end epoch "
            f"with the backbone frozen; augmentation changed test accuracy by {diff:+.4f}."
        )
    if "features" in by and "features-augmented" in by:
        diff = by["features-augmented"]["test_acc"] - by["features"]["test_acc"]
        lines.append(
            f"Cached features can be augmented: {extract.get('augment_time_s', 0.0):.1f} s of extra "
            f"extraction for the augmented views changed the head's test accuracy by {diff:+.4f}."
        )
    if "scratch" in by:
        best_pre = max(
            (r for r in rows if r["model"] != "scratch"), key=lambda r: r["test_acc"], default=None
        )
        if best_pre is not None:
            lines.append(
                f"Pretraining is worth {best_pre['test_acc'] - by['scratch']['test_acc']:+.4f} test accuracy "
                f"here: {best_pre['model']} against the same architecture trained from scratch."
            )
    best = rows[0]
    lines += [
        "",
        f"Best on the test split: **{best['model']}** ({best['test_acc']:.4f}).",
        "",
        f"![learning curves]({curves_png})",
        "",
    ]
    return "\n".join(lines)
