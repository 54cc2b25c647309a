"""The report's section "If you had more (or less) data": the learning curves evaluate
measured (details.json ``curves``, from :mod:`transferlab.verdict.curves`)."""

from __future__ import annotations

from typing import Any

from transferlab.report.figures import plot_size_curves
from transferlab.report.format import Document
from transferlab.verdict.curves import RULE_TEXT


def _pct(x: float) -> str:
    return f"{x:.4f}"


def _per_class(x: float) -> str:
    return f"{x:g}"


def crossover_text(curves: dict[str, Any]) -> str:
    """The crossover in one sentence: from which measured size fine-tuning is separably
    ahead of the two-stage head, or that it is not within the measured range."""
    comps = curves["comparisons"]
    if curves["probe"] is None:
        return "No crossover is measured: train_head.models does not list `features`, the head it is measured against."
    if not comps:
        return (
            "No end-to-end strategy has a curve, so the crossover is not measured: add one, e.g. "
            "`dvc exp run -S 'curve.models=[full]'`, to see from which size fine-tuning overtakes the "
            "linear probe."
        )
    c = curves["crossover"]
    n = len(comps)
    if c is None:
        largest = comps[-1]
        behind = [r for r in comps if r["separable"] and r["diff"] < 0]
        probe_ahead = (
            " The probe is separably ahead at "
            + ", ".join(
                f"{_per_class(r['per_class'])} per class ({r['finetuned']} − probe {r['diff']:+.4f})"
                for r in behind
            )
            + "."
            if behind
            else ""
        )
        return (
            f"Fine-tuning is **not separably ahead** of the linear probe within the measured range "
            f"({_per_class(comps[0]['per_class'])} to {_per_class(largest['per_class'])} training images "
            f"per class; paired on the same test images, Holm over the {n} sizes; at "
            f"{_per_class(largest['per_class'])} per class {largest['finetuned']} − probe is "
            f"{largest['diff']:+.4f}, p (Holm) {largest['p_holm']:.3g}).{probe_ahead}"
        )
    row = next(r for r in comps if r["size"] == c["size"])
    return (
        f"Fine-tuning overtakes the linear probe from **{_per_class(c['per_class'])} training images per "
        f"class** on this data: from that size on, the best fine-tuned model on validation "
        f"({c['model']} there) is separably ahead at every measured size (there {row['diff']:+.4f}, "
        f"family-wise interval [{row['ci_family'][0]:+.4f}, {row['ci_family'][1]:+.4f}], p (Holm over "
        f"{n} sizes) {row['p_holm']:.3g})."
    )


def _extrapolation_rows(curves: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name in curves["curve_models"]:
        fit = curves["models"][name].get("fit") or {}
        if "params" not in fit:
            rows.append([name, fit.get("refused", "no fit"), "", "", "", ""])
            continue
        bt = fit["back_test"]
        bt_text = (
            f"{bt['error']:+.4f} (fitted up to {_per_class(bt['fitted_on_per_class'][-1])}/class, "
            f"predicted {_pct(bt['predicted'])} at {_per_class(bt['per_class'])}, measured {_pct(bt['measured'])})"
            if "error" in bt
            else "not back-tested: " + bt["refused"]
        )
        cells = [
            f"{_pct(q['test_acc'])} [{_pct(q['band95'][0])}, {_pct(q['band95'][1])}] at {_per_class(q['per_class'])}/class"
            for q in fit["predicted"]
        ]
        p = fit["params"]
        rows.append([name, f"{p['a']:.4f}", f"{p['c']:.3f}", *cells, bt_text])
    return rows


def size_section(doc: Document, curves: dict[str, Any]) -> None:
    """Accuracy against training-set size per model, the crossover of fine-tuning over the
    probe, the extrapolation to more data with its back-tested error, and the size rules."""
    doc.add("h2", "If you had more (or less) data")
    skipped = curves.get("skipped") or {}
    if skipped:
        doc.add(
            "p",
            "Sizes skipped on this data (a class would keep too few training images to learn "
            "from): "
            + "; ".join(
                f"{size}: {why.removeprefix(f'curve.sizes: {size} ')}" for size, why in skipped.items()
            )
            + ".",
        )
    if "models" not in curves:  # every size skipped: no curve to draw
        return
    doc.figures["size_curves.png"] = plot_size_curves(curves)
    doc.add("img", "size_curves.png", "test accuracy against training images per class, per model")
    doc.add("p", crossover_text(curves))
    sizes = curves["sizes"]
    models = curves["curve_models"]
    header = ["size", "images per class", *models]
    if curves["comparisons"]:
        header += ["best fine-tuned − probe [family-wise interval]", "p (Holm)"]
    by_size = {r["size"]: r for r in curves["comparisons"]}
    rows = []
    for size in sizes:
        cells = []
        per_class = None
        for m in models:
            pt = next((p for p in curves["models"][m]["points"] if p["size"] == size), None)
            if pt is None:
                cells.append("")
                continue
            per_class = pt["per_class"]
            cells.append(f"{_pct(pt['test_acc'])} [{_pct(pt['ci95'][0])}, {_pct(pt['ci95'][1])}]")
        row = [f"{size:g}" + (" (main run)" if size == 1.0 else ""), _per_class(per_class or 0), *cells]
        if curves["comparisons"]:
            c = by_size.get(size)
            row += (
                [
                    f"{c['finetuned']}: {c['diff']:+.4f} [{c['ci_family'][0]:+.4f}, {c['ci_family'][1]:+.4f}]"
                    + (" separable" if c["separable"] else ""),
                    f"{c['p_holm']:.3g}",
                ]
                if c
                else ["", ""]
            )
        rows.append(row)
    doc.add("table", header, rows)
    doc.add(
        "p",
        "Every point is scored on the same test images; the curve's points trained on nested "
        "subsets (the smaller inside the larger), each with its own grid search on validation. "
        "Between points, the intervals say how far a difference may be the test split's noise. "
        "An end-to-end point trains as many optimizer steps as its strategy's main run "
        "(finetune.budget is in steps) and searches its own learning rate, so a smaller point "
        "is not a shorter schedule: it sees its fewer images more often.",
    )
    doc.add("h2", "What more data would buy (extrapolated)")
    doc.add(
        "p",
        "A saturating power law acc(n) = a − b·n^−c fitted to each curve (n: training images per "
        "class), predicting 2x and 4x today's training set, with a 95% band over the test images. "
        "Such extrapolations are often off (Mahmood et al., CVPR 2022; Hestness et al. 2017 found "
        "exponents c between 0.07 and 0.35): the back-test fits the law without the largest "
        "measured size and predicts it, and its error is the one to expect of each number here.",
    )
    doc.add(
        "table",
        ["model", "ceiling a", "exponent c", "at 2x", "at 4x", "back-test error (predicted − measured)"],
        _extrapolation_rows(curves),
    )
    if curves["rules"]:
        doc.add("p", "The rules of thumb on size (" + RULE_TEXT + "), at each measured size:")
        doc.add(
            "list",
            [
                f"{_per_class(c['n_train'])} training images (size {c['size']:g}): the rule says "
                f"{c['says']}; **{c['answer']}**: {c['why']}"
                + (f" (best on validation: {c['best']})" if c["answer"] != "cannot tell" else "")
                for c in curves["rules"]
            ],
        )
