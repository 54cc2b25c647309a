"""The report's first screen: the verdict card (what to use, why, how sure, what it costs)
and the forest plot of every model against the best one, so that a reader who stops there
has the answer. Everything below them in the report is the evidence."""

from __future__ import annotations

from typing import Any

from transferlab import registry
from transferlab.report.figures import plot_forest
from transferlab.report.format import Document, _d, _fmt_s
from transferlab.verdict.stats import pair_of, separable

FOREST = "verdict.png"


def _what_trains(name: str) -> str:
    return registry.get(name).description


def _times(a: float, b: float) -> str:
    """How many times ``b`` costs ``a``, in words a reader compares at a glance."""
    ratio = b / max(a, 1e-9)
    return f"{ratio:,.0f}x cheaper" if ratio >= 1.5 else "about as costly"


def forest_rows(r: Any) -> list[dict[str, Any]]:
    """Every model against the best on validation (model minus best, family-wise interval),
    the best first, then by difference; each with its total time and whether it ties."""
    best = r.best
    rows = [
        {
            "model": best,
            "diff": 0.0,
            "ci": (0.0, 0.0),
            "tie": True,
            "time_s": r.by[best]["total_time_s"],
            "best": True,
        }
    ]
    for name in r.by:
        if name == best:
            continue
        pair = pair_of(r.comparisons, name, best)
        rows.append(
            {
                "model": name,
                "diff": pair["diff"],
                "ci": tuple(pair["ci_family"]),
                "tie": not separable(pair),
                "time_s": r.by[name]["total_time_s"],
                "best": False,
            }
        )
    rows[1:] = sorted(rows[1:], key=lambda row: -row["diff"])
    return rows


def verdict_card(doc: Document, r: Any, recommended: str) -> None:
    """What to use, in four lines and a two-column cost table, then the forest plot."""
    best, by = r.best, r.by
    rec = by[recommended]
    ties = list(r.verdict["tie_set"])
    n_test = len(r.details.get("test_ids", [])) or r.sizes.get("test", 0)
    where = f"the {n_test:,} pooled test images" if r.folds else f"these {n_test:,} test images"
    use = (
        f"**Use {recommended}** ({_what_trains(recommended)}): test accuracy {rec['test_acc']:.4f} "
        f"[{rec['test_acc_ci_lo']:.3f}, {rec['test_acc_ci_hi']:.3f}]."
    )
    if recommended != best:
        why = (
            f"*Why*: {best} is best on validation (test {by[best]['test_acc']:.4f}), and on {where} it "
            f"cannot be told apart from {recommended}, the cheapest of the {len(ties)} models that tie with "
            f"it: {_fmt_s(rec['total_time_s'])} against {_fmt_s(by[best]['total_time_s'])} in total, "
            f"{_times(rec['total_time_s'], by[best]['total_time_s'])}."
        )
    elif len(ties) > 1:
        why = (
            f"*Why*: best on validation, and the cheapest of the {len(ties)} models that tie on {where} "
            f"({_fmt_s(rec['total_time_s'])} in total)."
        )
    else:
        why = f"*Why*: best on validation, and every other model is separably worse on {where}."
    doc.add("card_begin")
    doc.add("h2", "Verdict")
    doc.add("p", use)
    doc.add("p", why)
    doc.add("p", _how_sure(r, recommended, ties, n_test))
    unsettled = r.verdict.get("unsettled") or {}
    if unsettled:
        rests = [m for m in dict.fromkeys([recommended, best]) if m in unsettled]
        doc.add(
            "p",
            (
                "*Provisional*: this verdict rests on "
                + " and ".join(rests)
                + ", whose result may not be its best. "
                if rests
                else "*Not settled*: "
            )
            + "; ".join(f"{m}: {'; '.join(why)}" for m, why in unsettled.items())
            + ".",
        )
    names = {recommended: "use"} | ({best: "best on validation"} if best != recommended else {})
    doc.add(
        "table",
        ["", "test accuracy", "total time", "peak memory", "trainable params", "checkpoint"],
        [
            [
                f"{m} ({role})",
                f"{by[m]['test_acc']:.4f}",
                _fmt_s(by[m]["total_time_s"]),
                f"{by[m]['peak_rss_mb']:.0f} MB",
                f"{by[m]['trainable_params']:,}",
                f"{by[m].get('checkpoint_mb', 0.0):.1f} MB",
            ]
            for m, role in names.items()
        ],
    )
    doc.add("card_end")
    doc.figures[FOREST] = plot_forest(forest_rows(r), best=best, recommended=recommended)
    doc.add(
        "img",
        FOREST,
        f"every model's test accuracy minus {best}'s with family-wise 95% intervals, ties shaded, "
        "and each model's total time",
    )


def _how_sure(r: Any, recommended: str, ties: list[str], n_test: int) -> str:
    """The tie set, and what it would take to separate the recommendation from the best."""
    worse = [m for m in r.by if m not in ties]
    if len(ties) > 1:
        text = f"*How sure*: {len(ties)} models tie ({', '.join(ties)})"
        text += f"; separably worse: {', '.join(worse)}." if worse else "; none is separably worse."
    else:
        text = f"*How sure*: every other model is separably worse ({', '.join(worse)})."
    gap = next((u for u in r.verdict["unresolved"] if u["model"] == recommended), None)
    if gap is not None:
        need = gap["images_to_separate"]
        text += (
            f" {r.best} minus {recommended} is {_d(gap['diff'])} [{_d(gap['ci_family'][0])}, "
            f"{_d(gap['ci_family'][1])}] (family-wise 95%)"
            + (
                f"; a difference this size would take about {need:,} test images to separate (5% level, "
                f"power 0.8, before the correction for {len(r.comparisons['pairs'])} comparisons; there are {n_test:,})."
                if need
                else "; they predict the same, no test set separates them."
            )
        )
    return text
