"""The verdict's error rates, measured: false separation, false equivalence and power of the
tests the verdict uses, per design (hold-out, 5-fold, 3 x 5-fold) and fold-model sd.

    python bench/calibration.py                 # writes bench/results/calibration.md
    python bench/calibration.py --sims 1000     # faster, wider Monte Carlo error

The simulated world and the tests are transferlab.verdict.calibration's (its docstring says
how the outcomes are drawn); tests/test_verdict_tests.py asserts the same rates on fewer data
sets. Seeded: the table reproduces exactly.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from transferlab.verdict import calibration  # noqa: E402

SDS = (0.0, 0.2, 0.3, 0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sims", type=int, default=4000)
    ap.add_argument("--margin", type=float, default=0.02)
    ap.add_argument("--gap", type=float, default=0.03, help="the true gap at which power is measured")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/calibration.md")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = []
    for design in calibration.DESIGNS:
        for sd in SDS if design.folds > 1 else (0.0,):
            r = calibration.rates(design, sd, margin=args.margin, gap=args.gap, sims=args.sims)
            what = (
                f"{design.images:,} test images, 1 model each"
                if design.folds == 1
                else f"{design.images:,} images, {design.models} fold models"
            )
            rows.append(
                f"| {design.name} ({what}) | {'(the trained models)' if design.folds == 1 else sd} | "
                f"{r['false_separation']:.3f} | {r['false_equivalence']:.3f} | "
                f"{r['power_separation']:.3f} | {r['power_equivalence']:.3f} | "
                + (f"{r['pooled']:.3f}" if "pooled" in r else "")
                + " |"
            )
            print(rows[-1], flush=True)
    holdout = [
        calibration.holdout_procedure_false_separation(sd, sims=args.sims // 2, seed=7) for sd in SDS[1:]
    ]
    seconds = time.perf_counter() - t0
    mc = math.sqrt(0.05 * 0.95 / args.sims)
    text = (
        "# The verdict's error rates, simulated\n\n"
        f"`python bench/calibration.py --sims {args.sims}` ({seconds:.0f} s; "
        f"transferlab.verdict.calibration): {args.sims:,} simulated data sets per row, margin "
        f"{args.margin:g}, power at a true gap of {args.gap:g}; about 86% accuracy and 7% of the images "
        "discordant between two models. Monte Carlo standard error of a rate near 0.05: "
        f"{mc:.4f}.\n\n"
        "| design | fold-model sd (logit) | false separation | false equivalence (1.5 margins apart) "
        f"| power: separation at {args.gap * 100:g} points | power: equivalence at no gap "
        "| pooled McNemar, false separation |\n|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\nHold-out reads as a test of the *procedures* (one model each, fold-model sd "
        + ", ".join(f"{sd}" for sd in SDS[1:])
        + "): false separation "
        + ", ".join(f"{x:.3f}" for x in holdout)
        + ". A hold-out split speaks for the two trained models, not for the strategies.\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
