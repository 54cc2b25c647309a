"""curve-head@<seed>: the two-stage models' learning curves for one seed.

Every model of ``train_head.models`` trained again, with train-head's recipe and grid search,
on each nested subset of this seed's training split (``curve.sizes``), and scored on the same
validation and test images: one process for all points (each takes seconds, the features
being cached). The training is train-head's own (stages/train_head.py), imported only when
there is a size to train: with ``curve.sizes: []`` (no learning curves) the stage writes its
empty folder without loading torch or the feature store.
Run through `dvc repro`; by hand: ``python stages/curve_head.py --seed 0``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

from transferlab import layout
from transferlab.cli import run_stage
from transferlab.config import load_params


def main(args: argparse.Namespace) -> None:
    p = load_params(args.params)
    layout.heads_curve_dir(args.seed).mkdir(parents=True, exist_ok=True)  # the output, if no size
    if not p.curve.sizes:
        print(f"curve-head@{args.seed}: curve.sizes is empty, no learning curves")
        return
    import train_head  # the script beside this one (its folder is on sys.path)

    train_head.curves(p, args.seed)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0, help="training seed (one of params: base.seeds)")
    run_stage(main, parser)
