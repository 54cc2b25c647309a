"""finetune-<strategy>@<seed>: backbone + head trained end to end from augmented images.

One DVC stage per strategy and seed. It owns the strategy's learning-rate search
(finetune.search: successive halving over finetune.<strategy>.lr, extended past an end that
validation prefers) on the step budget of finetune.budget, and keeps the picked rate's best
checkpoint; every rate tried leaves its curves in results/<run>/search. ``lp-ft`` trains with
``full``'s recipe from train-head's linear probe of the same seed. With ``--size`` the stage
``curve-finetune@<strategy>-<seed>-<size>``: one learning-curve point, the same search on
that subset, on the same number of steps.
Run through `dvc repro`; by hand: ``python stages/finetune.py full --seed 0``.
"""

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

from transferlab import registry
from transferlab._io import write_json
from transferlab.cli import run_stage
from transferlab.data.subsets import SizeTooSmall
from transferlab.layout import curve_point as curve_point_name
from transferlab.layout import results_dir
from transferlab.training.endtoend import run_curve_point, run_strategy, start_job
from transferlab.training.tracking import finish_run
from transferlab.verdict.scoring import split_record, write_curve_point, write_predictions


def main(args: argparse.Namespace) -> None:
    job = start_job(args.params, args.strategy, args.seed, args.size)
    if args.size is not None:
        return curve_point(job, args.size)
    out = run_strategy(job)
    if out is None:  # a torchrun rank that does not write
        return
    write_predictions(
        job.run,
        manifest_sha256=out.manifest_sha256,
        classes=out.classes,
        val=out.scored["val"],
        test=out.scored["test"],
        split=out.split,
        shifted={k: out.scored[k] for k in out.shifted},
    )
    if out.wise is not None:
        write_wise(job.run, out.wise())
    finish_run(job.run, out.model.cpu(), out.meta, out.summary)
    search = out.summary["protocol"]["search"]
    print(
        f"{job.run}: lr {out.meta.lr:g} picked of {', '.join(f'{r:g}' for r in search['tried'])}"
        + (
            f" (validation still prefers the {search['cap_hit']} end: finetune.search.max_extend)"
            if search["cap_hit"]
            else ""
        )
        + ("" if out.summary["protocol"]["converged"] is not False else "; not converged on this budget")
    )


def curve_point(job: Any, size: str) -> None:
    try:
        c = run_curve_point(job, size)
    except SizeTooSmall as err:  # small data: the point is skipped (evaluate and the report say so)
        point = curve_point_name(job.strategy, job.seed, size)
        write_json(
            results_dir(point) / "point.json",
            {"model": job.strategy, "seed": job.seed, "size": float(size), "skipped": str(err)},
        )
        print(f"{point}: skipped: {err}")
        return
    write_predictions(
        c.point,
        manifest_sha256=c.manifest_sha256,
        classes=c.classes,
        val=c.scored["val"],
        test=c.scored["test"],
        split=c.split,
    )
    write_curve_point(
        c.point,
        model=job.strategy,
        seed=job.seed,
        size=float(size),
        labels=c.train.labels,
        ids=[c.paths[r] for r in c.train.rows],
        classes=c.classes,
        summary=c.summary,
    )
    print(
        f"{c.point}: {len(c.train.rows)} training images, lr {c.summary['protocol']['picked']['lr']:g} "
        f"picked, val acc {c.summary['val_acc']:.4f}"
    )


def write_wise(run: str, curve: dict[str, Any]) -> None:
    """results/<run>/wise.json: val and test scores of the weights mixed between the run's
    start (probe on the pretrained backbone) and its end, per alpha."""
    points = []
    for p in curve["points"]:
        val, test = split_record(*p["val"]), split_record(*p["test"])
        points.append(
            {
                "alpha": p["alpha"],
                "val_acc": val["accuracy"],
                "val_nll": val["nll"],
                "test_acc": test["accuracy"],
                "test_nll": test["nll"],
                "test_pred": test["pred"],
                "ids": test["ids"],
            }
        )
    write_json(
        results_dir(run) / "wise.json",
        {
            "run": run,
            "alphas": [p["alpha"] for p in points],
            "bn_reestimated": curve["bn_reestimated"],
            "test_ids": points[0]["ids"] if points else [],
            "points": [{k: v for k, v in p.items() if k != "ids"} for p in points],
            "time_s": curve["time_s"],
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "strategy", choices=registry.names("end-to-end"), help="an end-to-end strategy (see params: finetune)"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (one of params: base.seeds)")
    parser.add_argument(
        "--size", help="a learning-curve point (one of params: curve.sizes): the search on that subset"
    )
    run_stage(main, parser)
