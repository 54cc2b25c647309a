"""The report's first screen: the verdict card (what to use, why, how sure, what it costs)
and the forest plot of every model against the best one, so that a reader who stops there
has the answer. Everything below them in the report is the evidence."""

from __future__ import annotations

from typing import Any

from transferlab import registry
from transferlab.report.figures import plot_forest
from transferlab.report.format import Document, _fmt_s
from transferlab.verdict.stats import pair_of, room_above, separable

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


def _pts(x: float) -> str:
    """An accuracy difference in points, signed."""
    return f"{x * 100 + 0.0:+.1f}"


def _trade(r: Any, m: str, outcome: dict[str, Any]) -> str:
    """What choosing the best over ``m`` buys and costs, in the units that decide it: accuracy
    points (family-wise interval), training seconds once, the prediction cost, and what must
    be kept per task when one backbone serves many; then what would settle the question."""
    best, by = r.best, r.by
    lo, hi = outcome["ci_family"]  # m minus the best
    backbone = r.details.get("fingerprint", {})
    net = f"{backbone.get('backbone', 'the backbone')} at {backbone.get('image_size', '?')} px"
    text = (
        f"*The trade*: {best} gives {_pts(-outcome['diff'])} points [{_pts(-hi)}, {_pts(-lo)}] "
        f"(family-wise 95%) over {m}, the cheapest undecided, for "
        f"{_fmt_s(by[best]['total_time_s'] - by[m]['total_time_s'])} more training, once; the same "
        f"prediction cost ({net}, then a head); {by[best].get('trained_mb', 0.0):.2f} MB instead of "
        f"{by[m].get('trained_mb', 0.0):.2f} MB per task beside a shared backbone."
    )
    settle = outcome.get("to_settle") or {}
    margin = r.verdict["margin"]
    if settle.get("images"):
        text += (
            f" Showing {m} within {margin * 100:g} points would take about {settle['images']:,} test images"
        )
        if settle.get("fold_models"):
            text += f" or {settle['fold_models']} fold models (`base.repeats`)"
        text += "."
    elif outcome["diff"] <= -margin:
        text += " More test images would more likely show it worse."
    return text


def verdict_card(doc: Document, r: Any, recommended: str) -> None:
    """What to use, why, what the cheaper undecided models would trade, then the forest plot."""
    best, by = r.best, r.by
    rec = by[recommended]
    v = r.verdict
    margin = v["margin"]
    n_test = len(r.details.get("test_ids", [])) or r.sizes.get("test", 0)
    where = f"the {n_test:,} pooled test images" if r.folds else f"these {n_test:,} test images"
    use = (
        f"**Use {recommended}** ({_what_trains(recommended)}): test accuracy {rec['test_acc']:.4f} "
        f"[{rec['test_acc_ci_lo']:.3f}, {rec['test_acc_ci_hi']:.3f}]."
    )
    cheaper_open = [m for m in v["open"] if m in by]
    if recommended != best:
        o = v["outcomes"][recommended]
        why = (
            f"*Why*: {best} is best on validation (test {by[best]['test_acc']:.4f}), and {where} show "
            f"{recommended} within {margin * 100:g} points of it (`verdict.margin`): {_pts(o['diff'])} points, "
            f"family-wise lower bound {_pts(o['lower_family'])}; {recommended} costs "
            f"{_fmt_s(rec['total_time_s'])} against {_fmt_s(by[best]['total_time_s'])} in total, "
            f"{_times(rec['total_time_s'], by[best]['total_time_s'])}."
        )
    elif cheaper_open:
        why = (
            f"*Why*: best on validation. A cheaper model replaces it only when {where} show it within "
            f"{margin * 100:g} points (`verdict.margin`); none is, and not told apart is not as good."
        )
    elif v["equivalent"]:
        why = (
            f"*Why*: best on validation; {', '.join(v['equivalent'])} shown within {margin * 100:g} points "
            f"of it on {where}, none of them cheaper."
        )
    else:
        why = f"*Why*: best on validation, and every cheaper model is separably worse on {where}."
    doc.add("card_begin")
    doc.add("h2", "Verdict")
    doc.add("p", use)
    doc.add("p", why)
    cheapest_open = min(cheaper_open, key=lambda m: by[m]["total_time_s"]) if cheaper_open else None
    if cheapest_open:
        doc.add("p", _trade(r, cheapest_open, v["outcomes"][cheapest_open]))
    # the audit (docs/verdict.md) found the verdict's losses where a few validation images
    # chose and the test left another model room to be better: "How sure" says so
    upside = room_above(r.comparisons, recommended, list(r.by), r.verdict["margin"])
    doc.add("p", _how_sure(r, n_test) + _upside_text(r, recommended, upside))
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
    names = (
        {recommended: "use"}
        | ({best: "best on validation"} if best != recommended else {})
        | ({cheapest_open: "cheapest undecided"} if cheapest_open else {})
    )
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
    doc.figures[FOREST] = plot_forest(forest_rows(r), best=best, recommended=recommended, margin=margin)
    doc.add(
        "img",
        FOREST,
        f"every model's test accuracy minus {best}'s with family-wise 95% intervals, ties shaded, "
        "the margin dashed, and each model's total time",
    )


def _how_sure(r: Any, n_test: int) -> str:
    """Every other model's outcome against the best, in one line."""
    v = r.verdict
    parts = []
    for key, label in (
        ("equivalent", f"shown within {v['margin'] * 100:g} points"),
        ("undecided", "undecided"),
        ("worse", "separably worse"),
    ):
        if v[key]:
            parts.append(f"{label}: {', '.join(v[key])}")
    ties = len(v["tie_set"])
    text = f"*How sure*: against {r.best}, " + "; ".join(parts)
    if ties > 1:
        text += (
            f"; {ties} cannot be told apart on {n_test:,}{' pooled' if r.folds else ''} test images (tie set)"
        )
    return text + "."


def _upside_text(r: Any, recommended: str, upside: dict[str, float]) -> str:
    """The card's words for the models the test leaves room to be better than the
    recommended one by more than the margin (:func:`transferlab.verdict.stats.room_above`):
    who, by how much at most, and how many validation images made the choice; empty when
    none. A clause of "How sure", so that the card keeps to the first screen."""
    if not upside:
        return ""
    names = list(upside)[:3] + ([f"{len(upside) - 3} more"] if len(upside) > 3 else [])
    who = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    bounds = ", ".join(_pts(u) for u in list(upside.values())[:3])
    n_val = r.sizes.get("val", 0)
    chose = (
        f"validation splits of about {n_val:,} images chose"
        if r.folds
        else f"{n_val:,} validation images chose"
    )
    return (
        f" *Could another be better?* The test leaves room for {who} to beat {recommended} by more than "
        f"the margin (up to {bounds} points, family-wise); {chose}."
    )
