"""The report's sections, one function each, every one adding its blocks to the shared
:class:`~transferlab.report.format.Document` from what evaluate wrote."""

from __future__ import annotations

import math
from typing import Any

from transferlab import registry
from transferlab.report import screen as screening
from transferlab.report.figures import (
    pareto_front,
    plot_confusions,
    plot_cost,
    plot_curves,
    plot_per_class_f1,
    plot_screen,
    plot_wise,
)
from transferlab.report.format import Document, _d, _fmt_s, _sd
from transferlab.verdict.recommend import (
    FINE_TUNING,
    GAP_THRESHOLD,
    answer_better,
    answer_similar,
    recommend,
)
from transferlab.verdict.stats import pair_of, separable

DESCRIPTIONS = {spec.name: spec.description for spec in registry.all_models()}


def comparison_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model, best test accuracy first (ties: faster first)."""
    rows = [{"model": k, **v} for k, v in metrics.items() if k != "extract"]
    return sorted(rows, key=lambda r: (-r["test_acc"], r["train_time_s"]))


def _grid_text(protocol: dict[str, Any]) -> tuple[str, str]:
    """(the grid searched, the value validation picked) in words."""
    grid = protocol["grid"]
    key = next(iter(grid))
    values = ", ".join(f"{v:g}" for v in grid[key])
    searched = f"{key} ∈ {{{values}}}"
    tried = sorted({v for t in (protocol.get("tried") or {}).values() for v in t} - set(grid[key]))
    if tried:
        searched += f", extended to {', '.join(f'{v:g}' for v in tried)}"
    picked = protocol["picked"]
    if key in picked:
        edge = len(grid[key]) > 1 and picked[key] in (min(grid[key]), max(grid[key]))
        return searched, f"{key} {picked[key]:g}" + (" (edge of the grid: widen it)" if edge else "")
    per_seed = sorted({f"{v[key]:g}" for v in picked.values()})
    text = f"{key} {', '.join(per_seed)}" + (" (per seed)" if len(picked) > 1 else "")
    if protocol.get("at_edge"):
        text += (
            f" (at the {'/'.join(sorted(set(protocol['at_edge'].values())))} end of what was searched for "
            f"seed(s) {', '.join(protocol['at_edge'])}: raise finetune.search.max_extend)"
        )
    return searched, text


def _budget_text(budget: dict[str, Any]) -> str:
    if "iterations" in budget:
        return (
            f"L-BFGS to convergence: {budget['iterations']} iterations, "
            f"{budget['images_seen']:,} feature rows seen"
        )
    deviations = budget.get("deviations") or {}
    if "warmup_steps" in budget:  # an end-to-end run: a step budget
        text = (
            f"{budget['steps']:,} steps of {budget['batch_size']} ({budget['epochs']:g} epochs), "
            f"{budget['warmup_steps']} warm-up, validation every {budget['eval_every']}"
        )
    else:  # a head trained by epochs
        text = (
            f"{budget['epochs']} epochs"
            + (f" ({budget['warmup_epochs']} warm-up)" if budget.get("warmup_epochs") else "")
            + f", {budget['steps']:,} steps of {budget.get('batch_size', '?')}, {budget['images_seen']:,} images seen"
        )
    if deviations:
        text += (
            " (deviates from finetune.budget: "
            + ", ".join(f"{k} {v}" for k, v in sorted(deviations.items()))
            + ")"
        )
    return text


def protocol_rows(details: dict[str, Any], metrics: dict[str, Any]) -> list[list[str]]:
    """How every arm was trained and chosen: the table that makes the comparison fair or not."""
    rows = []
    for name, d in details["models"].items():
        prot = d["protocol"]
        grid, picked = _grid_text(prot)
        if prot.get("not_converged"):
            fix = (
                "raise train_head.linear.max_iter"
                if prot.get("kind") == "two-stage head" or "l2" in prot["grid"]
                else "still improving at the end: raise finetune.budget.steps"
            )
            picked += f" (not converged for seed(s) {', '.join(map(str, prot['not_converged']))}: {fix})"
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


def search_rows(details: dict[str, Any]) -> list[list[str]]:
    """One row per rate an end-to-end run's search tried (protocol.points per seed)."""
    rows = []
    for name, d in details["models"].items():
        prot = d["protocol"]
        if prot.get("kind") != "end to end" or not isinstance(prot.get("points"), dict):
            continue
        for seed, points in prot["points"].items():
            for pt in points:
                whole = pt["steps"] >= (prot["budget"].get("steps") or 0) and pt.get("converged") is not None
                rung = pt.get("rung1_val_acc")
                rows.append(
                    [
                        name,
                        seed,
                        f"{pt['lr']:g}" + (" (picked)" if pt.get("picked") else ""),
                        pt["origin"] + (", diverged" if pt.get("diverged") else ""),
                        f"{rung:.4f}" if rung is not None else "",
                        f"{pt['val_acc']:.4f}" if whole else "",
                        {True: "yes", False: "still improving", None: ""}[
                            pt.get("converged") if whole else None
                        ],
                    ]
                )
    return rows


def _pair_text(pair: dict[str, Any]) -> str:
    lo, hi = pair["ci_family"]
    return (
        f"{pair['a']} {pair['acc_a']:.4f} vs {pair['b']} {pair['acc_b']:.4f}, difference {_d(pair['diff'])} "
        f"[{_d(lo)}, {_d(hi)}] (family-wise 95%), Holm-adjusted p = {pair['p_holm']:.3g}"
    )


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
    if "folds" in details:
        k = details["folds"]["count"]
        return (
            f"Each of the {len(seeds)} runs of a model tests another of the {k} folds and trains on "
            "the others: their spread mixes the seed's share with the folds' (other test images, "
            "other training images), and says how much a model of this procedure varies with the "
            "data it gets."
        )
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
    figure = f"wise_{name}.png"
    doc.figures[figure] = plot_wise(name, w)
    doc.add("img", figure, f"validation and test accuracy between the probe and {name}, by alpha")
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
            verdict = "separable" if separable(pair) else "not separable"
            text += (
                f" Against {pair['b']}: {_d(pair['diff'])} test accuracy, 95% interval [{_d(lo)}, {_d(hi)}] "
                f"(Bonferroni over these two comparisons), Holm p = {pair['p_holm']:.3g}: {verdict}."
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
    doc.figures["backbones.png"] = plot_screen(
        [f"candidate{i}" for i in range(len(screens))], screens, summary["names"].index(best)
    )
    doc.add(
        "img", "backbones.png", "probe test accuracy of every screened backbone against its extraction time"
    )
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


class Inputs:
    """What every section reads: evaluate's metrics, details and comparisons, and the few
    views of them that several sections share."""

    def __init__(self, metrics: dict[str, Any], details: dict[str, Any], comparisons: dict[str, Any]) -> None:
        self.metrics, self.details, self.comparisons = metrics, details, comparisons
        self.rows = comparison_rows(metrics)  # best test accuracy first, for reading only
        self.by = {r["model"]: r for r in self.rows}
        self.extract = metrics["extract"]
        self.sizes = details["split_sizes"]
        self.seeds = details.get("seeds", [0])
        self.multi = len(self.seeds) > 1
        self.verdict = details["verdict"]
        self.val = self.verdict["val_acc"]
        self.best = self.verdict["best_on_val"]
        self.folds = details.get("folds", {}).get("count", 0)  # 0: one hold-out splitting


def data_section(doc: Document, r: Inputs, code_version: str) -> None:
    """One line of what was measured: data, backbone, seeds, code."""
    fp, sizes, details = r.details["fingerprint"], r.sizes, r.details
    splits = details.get("splits", {}).get("count", 1)
    layout_text = (
        f"{r.folds}-fold cross-validation: every image tested once per repeat; a run trains on "
        f"{sizes.get('train', 0)}, validates on {sizes.get('val', 0)} and tests its fold of "
        f"about {sizes.get('test', 0)}"
        if r.folds
        else f"train {sizes.get('train', 0)}, val {sizes.get('val', 0)}, test {sizes.get('test', 0)}"
    )
    doc.add(
        "p",
        f"Data: {sum(sizes.values())} images, {len(details['classes'])} classes ({layout_text}), "
        f"manifest `{fp['manifest_sha256'][:12]}`. "
        f"Backbone: `{fp['backbone']}` at {fp['image_size']} px, weights `{(fp['weights_sha256'] or 'random')[:12]}`. "
        f"Seeds: {', '.join(map(str, r.seeds))}"
        + (
            f", on {splits} splittings of the data (seed s on splitting s mod {splits}, `base.splits`)"
            if splits > 1
            else ""
        )
        + f". Code: `{code_version}`.",
    )


def recommendation_section(doc: Document, r: Inputs) -> str:
    """What to use, placed against the rule of thumb; returns the recommended model."""
    tuned = best_of(FINE_TUNING, r.val)
    gap = pair_of(r.comparisons, tuned, "features") if tuned and "features" in r.val else None
    rec = recommend(
        r.metrics,
        r.verdict,
        gap,
        train_images=r.sizes.get("train", 0),
        num_classes=len(r.details["classes"]),
        tested_on=f"the pooled test over all {len(r.details['test_ids']):,} images"
        if r.folds
        else "the test split",
    )
    doc.add("h2", "Recommendation")
    doc.add("p", rec.text)
    return rec.recommended


def unresolved_section(doc: Document, r: Inputs) -> None:
    """The ties: each with its family-wise interval and the test images it would take."""
    doc.add("h2", "What the data cannot tell")
    if not r.verdict["unresolved"]:
        where = "the pooled test" if r.folds else "the test split"
        doc.add("p", f"Nothing: every model is separably worse than {r.best} on {where}.")
        return
    n_test = len(r.details.get("test_ids", [])) or r.sizes.get("test", 0)
    n_all = sum(r.sizes.values())
    where = f"the pooled test has {n_test:,}: every image" if r.folds else f"this split has {n_test:,}"
    items = []
    for u in r.verdict["unresolved"]:
        lo, hi = u["ci_family"]
        need = u["images_to_separate"]
        items.append(
            f"{r.best} against {u['model']}: difference {_d(u['diff'])}, "
            f"family-wise 95% interval [{_d(lo)}, {_d(hi)}], Holm-adjusted p = {u['p_holm']:.3g}. "
            + (
                f"A difference this size would take about {need:,} test images to separate at "
                f"the 5% level with power 0.8, before the correction for "
                f"{len(r.comparisons['pairs'])} comparisons ({where})"
                + (_folds_would(need, n_all) if not r.folds else "")
                + "."
                if need
                else "They make the same predictions: no test set separates them."
            )
        )
    doc.add("list", items)
    outcomes = r.verdict.get("outcomes", {})
    margin = r.verdict.get("margin", 0.02)
    judged = [
        f"{u['model']} {outcomes[u['model']]['outcome']}"
        for u in r.verdict["unresolved"]
        if u["model"] in outcomes
    ]
    doc.add(
        "p",
        f"These models tie on this {'pooled test' if r.folds else 'test split'}: the data cannot "
        "tell which is better, and a ranking among them would be noise. Not being told apart is "
        f"not being as good: a cheaper one replaces {r.best} only when the data show it at most "
        f"{margin * 100:g} points below (`verdict.margin`; "
        + (", ".join(judged) if judged else "none")
        + "). "
        + (
            "More fold models (`base.repeats` re-draws the partition) or more images would settle "
            "differences this small."
            if r.folds
            else "Cross-validation (`base.folds: 5`, with `base.seeds` [0, 1, 2, 3, 4]) tests every "
            f"image, {n_all:,} instead of {n_test:,}, for five times the training; re-drawn "
            "partitions (`base.repeats`) or more data help too."
        ),
    )


def _folds_would(need: int, n_all: int) -> str:
    """Whether testing every image (cross-validation) would give the images a pair needs."""
    if need <= n_all:
        return f"; cross-validation would test all {n_all:,} images (`base.folds`), enough for this one"
    return f"; more than even cross-validation's {n_all:,} (every image) would give"


def _comparison_row(r: Inputs, row: dict[str, Any], recommended: str) -> list[str]:
    acc = (
        f"{row['test_acc']:.4f} ± {row['test_acc_std']:.4f} " if r.multi else f"{row['test_acc']:.4f} "
    ) + f"[{row['test_acc_ci_lo']:.3f}, {row['test_acc_ci_hi']:.3f}]"
    return [
        f"**{row['model']}**" if row["model"] == recommended else row["model"],
        DESCRIPTIONS.get(row["model"], ""),
        f"{r.val.get(row['model'], float('nan')):.4f}",
        acc,
        f"{row['macro_f1']:.4f}",
        f"{row['balanced_acc']:.4f}",
        f"{row['nll']:.3f}",
        f"{row['ece']:.3f}",
        _fmt_s(row["train_time_s"]),
        _fmt_s(row["time_per_epoch_s"]),
        f"{row['images_per_s']:,.0f}",
        f"{row['trainable_params']:,} / {row['total_params']:,}",
        f"{row.get('trained_mb', 0.0):.2f} / {row.get('checkpoint_mb', 0.0):.1f}",
        f"{row['peak_rss_mb']:.0f} MB"
        + (f" (GPU {row['peak_gpu_mb']:.0f} MB)" if row.get("peak_gpu_mb") else ""),
    ]


def comparison_section(doc: Document, r: Inputs, recommended: str) -> None:
    """Every model's scores and costs, side by side."""
    doc.add("h2", "Comparison")
    header = [
        "model",
        "what trains",
        "val acc",
        "test acc" + (" (mean ± sd) [95% CI]" if r.multi else " [95% CI]"),
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
    doc.add("table", header, [_comparison_row(r, row, recommended) for row in r.rows])
    doc.add(
        "p",
        "Bold: the recommended model. Rows are sorted by test accuracy for reading only; every "
        "choice (learning rates, L2 strengths, the best model) was made on validation. Test "
        "intervals: "
        + ("Wilson's." if not r.multi else "hierarchical bootstrap over seeds and images.")
        + " 'Trained MB' is what a task adds to the shared backbone (the tensors the run trained), "
        "'checkpoint MB' the file the model ships as.",
    )


def paired_section(doc: Document, r: Inputs) -> None:
    """The best model on validation against every other, on the same test images."""
    doc.add("h2", f"Paired comparisons with {r.best}")
    rows = []
    for row in r.rows:
        if row["model"] == r.best:
            continue
        pair = pair_of(r.comparisons, r.best, row["model"])
        lo, hi = pair["ci95"]
        flo, fhi = pair["ci_family"]
        cells = [
            row["model"],
            _d(pair["diff"]),
            f"[{_d(lo)}, {_d(hi)}]",
            f"[{_d(flo)}, {_d(fhi)}]",
            f"{pair['p']:.3g}",
            f"{pair['p_holm']:.3g}",
            "yes" if separable(pair) else "no: tie",
            r.verdict.get("outcomes", {}).get(row["model"], {}).get("outcome", ""),
        ]
        if r.folds:
            t = pair["corrected_t"]
            pooled = pair.get("pooled")
            cells += [
                f"{pair['vc']['tau'] * 100:.1f}" if "vc" in pair else "",
                f"{pooled['p_holm']:.3g}" if pooled else "",
                f"{t['p_holm']:.3g}" + (" (disagrees)" if pair["tests_disagree"] else ""),
            ]
        rows.append(cells)
    header = [
        "against",
        f"{r.best} minus it",
        "95% interval (this pair)",
        f"95% family-wise ({len(r.comparisons['pairs'])} pairs)",
        "p",
        "p (Holm)",
        "separable",
        f"within {r.verdict.get('margin', 0.02) * 100:g} points",
    ] + (
        ["fold-model sd (points)", "pooled McNemar p (Holm)", "corrected t-test p (Holm)"] if r.folds else []
    )
    doc.add("table", header, rows)
    if r.folds:
        doc.add("p", cv_text(r))
    doc.add(
        "p",
        "Every pair of models is in `results/evaluate/comparisons.json`, "
        "and `results/evaluate/details.json` holds each run's per-image predictions (`test_ids`, "
        "`test_labels`, `predictions`) to recompute any of them. " + r.comparisons["method"],
    )


def cv_text(r: Inputs) -> str:
    """What the cross-validated comparisons compare, and where the two tests part."""
    k = r.folds
    disagree = [c["model"] for c in r.verdict.get("cross_check", []) if c["disagree"]]
    repeats = r.details.get("folds", {}).get("repeats", 1)
    models = k * repeats
    return (
        f"{k}-fold cross-validation"
        + (f", the partition drawn {repeats} times ({models} fold models)" if repeats > 1 else "")
        + f": every one of the {len(r.details['test_ids']):,} images is a test image once per "
        "partition, predicted by the fold model that never saw it. What the tests compare are "
        "procedures, a strategy together with the hyper-parameters each fold chose on its own "
        "validation split, which is the question of which strategy to use on data like this. The "
        "verdict's test is the variance-components t: the per-image difference counts the images' "
        "noise and the fold models' own variation (its sd in the table, estimated from the fold "
        f"means), on {models - 1} degrees of freedom; more fold models (`base.repeats`) give it "
        "power. The pooled McNemar test treats the fold models as fixed: it speaks for these "
        "trained models, and calls equal procedures different far more than 5% of the time once "
        "fold models vary (docs/verdict.md). The corrected resampled t-test (Nadeau and Bengio "
        "2003) is the conservative cross-check on the per-run differences. "
        + (
            f"It and the verdict's test disagree on {', '.join(disagree)}: read those pairs as less "
            "certain than their p-values say."
            if disagree
            else "It agrees with the verdict's test on every pair with the best model."
        )
    )


def protocol_section(doc: Document, r: Inputs) -> None:
    """How every arm was trained and chosen, and what the two-stage path paid once."""
    doc.add("h2", "Protocol")
    doc.add(
        "p",
        "Every model trains on the same splits and seeds. Hyper-parameters are chosen on the "
        "validation split, never on test: each end-to-end strategy trains on the step budget in "
        "the table below (`finetune.budget`, the same for every end-to-end strategy unless a row "
        "says it deviates; warm-up then cosine decay; validation scored at fixed step intervals "
        "and the round with the lowest validation loss kept), and each run searches its own "
        "learning rate (`finetune.search`): every rate of the grid trains the first rung, the grid "
        "grows past an end that validation prefers, the best rate trains the whole budget. The "
        "rate with the best validation accuracy (ties: lower validation loss; "
        + ("each fold's own, on its own validation split" if r.folds else "each seed's own")
        + ") is the one scored on test. A run is still improving (not converged) when the last "
        "quarter of its budget both raised the best validation accuracy and lowered the best "
        "validation loss by `finetune.budget.converge_tol` or more. The two-stage heads are fitted to convergence (a head on fixed features costs "
        "seconds, so no step budget limits it) and their L2 strength is chosen the same way. "
        "'Total' is the chosen run plus what it needed first: the extraction for the two-stage "
        "models, the extraction and the probe's whole search for lp-ft. 'Whole search' is the cost of "
        "searching the arm's own grid, which a user who already knows the best value skips.",
    )
    doc.add(
        "table",
        [
            "model",
            "budget (chosen run)",
            "grid",
            "chosen on validation",
            "train time",
            "whole search",
            "total",
        ],
        protocol_rows(r.details, r.metrics),
    )
    searched = search_rows(r.details)
    if searched:
        doc.add(
            "p",
            "Every rate each end-to-end search tried (`finetune.search`; curves of each under "
            "`results/<run>/search/`): validation accuracy of the kept round after the first rung "
            "and, for the rates that went on, after the whole budget.",
        )
        doc.add(
            "table",
            ["model", "seed", "rate", "how it was tried", "first rung", "whole budget", "converged"],
            searched,
        )
    extract = r.extract
    doc.add(
        "p",
        f"The two-stage models paid once for extraction: {_fmt_s(extract['time_s'])} for every image "
        f"({extract['images_per_s']:.0f} images/s overall), plus {_fmt_s(extract.get('augment_time_s', 0.0))} for "
        f"the augmented views, into a {extract['store_mb']:.2f} MB feature store. Their heads then re-train in the "
        "time above whenever only head parameters change.",
    )


def seeds_section(doc: Document, r: Inputs) -> None:
    """Rankings that flip between seeds, and with several, where the spread comes from."""
    flips = r.details.get("rank_flips", [])
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
    elif r.multi:
        doc.add("p", f"No ranking flips between the {len(r.seeds)} seeds.")
    if r.multi:
        doc.add("h2", "Where the spread comes from")
        doc.add("p", spread_text(r.details))
        doc.add(
            "table",
            ["model", "runs", "splittings", "sd of test acc", "due to seeds", "due to splits"],
            spread_rows(r.details),
        )


def rules_section(doc: Document, r: Inputs) -> None:
    """The source documents' rules of thumb, answered on this run."""
    checked = claims(r.by, r.extract, r.comparisons, r.val)
    if checked:
        doc.add("h2", "The rules of thumb, checked on this run")
        doc.add("list", checked)


def figures_section(doc: Document, r: Inputs) -> None:
    """Cost against accuracy with the Pareto front, learning curves, confusions, per-class F1."""
    doc.figures |= {
        "accuracy_vs_time.png": plot_cost(r.rows),
        "learning_curves.png": plot_curves(r.details),
        "confusion.png": plot_confusions(r.details),
        "per_class_f1.png": plot_per_class_f1(r.details),
    }
    doc.add("h2", "Figures")
    doc.add("img", "accuracy_vs_time.png", "test accuracy against training time, with the Pareto front")
    doc.add(
        "p",
        "Pareto front of the point estimates (no model is both cheaper and more accurate; the "
        "paired comparisons above say which of these differences the test split can resolve): "
        + ", ".join(pareto_front({row["model"]: (row["total_time_s"], row["test_acc"]) for row in r.rows}))
        + ".",
    )
    doc.add("img", "learning_curves.png", "learning curves of every model")
    doc.add("img", "confusion.png", "confusion matrices, rows normalized")
    doc.add("img", "per_class_f1.png", "per-class F1 of every model")


def provenance_section(doc: Document, r: Inputs, params_text: str) -> None:
    """The machine and packages behind every number, and the params as run."""
    doc.add("h2", "Provenance")
    runs = next(iter(r.details["models"].values()))["runs"]
    first_env = next(iter(runs.values()))["train"].get("environment", {})
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
