"""evaluate: every model's runs aggregated -> results/evaluate/{headline,metrics,details,comparisons}.json,
and the recommendation (recommended.json; recommended_run.json: its checkpoint alone).

Picks each strategy's learning rate and the best model on validation, compares every pair
of models on the same test images (comparisons.json), and says of every other model whether
the test data show it within verdict.margin of the best, separably worse, or neither. Reads the predictions each run wrote; runs no model.
Run through `dvc repro`; by hand: ``python stages/evaluate.py``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

from transferlab import layout
from transferlab._io import write_json
from transferlab.cli import run_stage
from transferlab.config import load_params
from transferlab.data.manifest import read_manifest
from transferlab.verdict.curves import learning_curves
from transferlab.verdict.evaluation import at_a_glance, evaluate_all, recommendation, recommended_run


def main(args: argparse.Namespace) -> None:
    p = load_params(args.params)
    manifest = read_manifest(layout.MANIFEST)
    ft = p.finetune
    heads = list(p.train_head.models)
    strategies = ft.runs
    seeds = p.base.seeds
    metrics, details, comparisons = evaluate_all(
        heads,
        strategies,
        seeds,
        manifest,
        p.base.splits,
        list(p.shift.kinds),
        p.base.folds,
        p.base.repeats,
        p.verdict.margin,
    )
    curves = learning_curves(
        details,
        heads,
        list(p.curve.models),
        list(p.curve.sizes),
        seeds,
        manifest,
        p.base.splits,
        p.base.folds,
        p.base.repeats,
    )
    if curves is not None:
        details["curves"] = curves
    out = layout.results_dir("evaluate")
    write_json(out / "details.json", details)
    write_json(out / "comparisons.json", comparisons)
    write_json(out / "metrics.json", metrics)
    write_json(out / "headline.json", at_a_glance(metrics, details))
    rec = recommendation(metrics, details)
    write_json(layout.RECOMMENDATION, rec)
    write_json(layout.RECOMMENDED_RUN, recommended_run(rec))
    for name in [*heads, *strategies]:
        m = metrics[name]
        prot = details["models"][name]["protocol"]
        key = next(iter(prot["grid"]))
        values = sorted({f"{v[key]:g}" for v in prot["picked"].values()})
        pick = f"{key} {', '.join(values)}"
        print(
            f"evaluate: {name:18s} ({pick}, chosen on val) val acc {m['val_acc']:.4f}  test acc "
            f"{m['test_acc']:.4f} [{m['test_acc_ci_lo']:.3f}, {m['test_acc_ci_hi']:.3f}]  "
            + (f"pooled over {p.base.folds} folds" if p.base.folds > 1 else f"{len(seeds)} seed(s)")
        )
    v = details["verdict"]
    where = "pooled test" if p.base.folds > 1 else "test split"
    print(
        f"evaluate: best on validation {v['best_on_val']}; on the {where}, within "
        f"{v['margin']:g} of it (shown): {', '.join(v['equivalent']) or 'none'}; undecided: "
        f"{', '.join(v['undecided']) or 'none'}; separably worse: {', '.join(v['worse']) or 'none'}; "
        f"recommended: {v['recommended']}"
    )
    if curves is not None:
        for name in curves["curve_models"]:
            pts = curves["models"][name]["points"]
            print(
                f"evaluate: curve {name:18s} "
                + "  ".join(f"{q['per_class']:g}/class {q['test_acc']:.4f}" for q in pts)
            )


if __name__ == "__main__":
    run_stage(main, argparse.ArgumentParser(description=__doc__))
