"""evaluate: every trained model on the test split -> results/evaluate/metrics.json.

Scores (accuracy, macro-F1, NLL, confusion matrix) next to each model's training cost, in
the file `dvc metrics show` and `dvc exp show` read.
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
from transferlab.data import read_manifest
from transferlab.evaluation import evaluate_all
from transferlab.features import FeatureStore
from transferlab.runtime import configure_runtime, resolve_device


def main(args: argparse.Namespace) -> None:
    p = load_params(args.params, "base", "train_head", "finetune", "evaluate")
    device = resolve_device(p["base"].device)
    configure_runtime(p["base"].num_threads, device)
    manifest = read_manifest(layout.MANIFEST)
    store = FeatureStore.open(layout.FEATURES)
    ft = p["finetune"]
    heads = list(p["train_head"].models)
    strategies = {s: list(ft.section(s).lr) for s in ft.runs}
    models = [*heads, *strategies]
    seeds = p["base"].seeds
    metrics, details = evaluate_all(
        heads, strategies, seeds, manifest, store, device, p["evaluate"].batch_size
    )
    out = layout.results_dir("evaluate")
    write_json(out / "details.json", details)
    write_json(out / "metrics.json", metrics)
    for name in models:
        m = metrics[name]
        picked = details["models"][name]["protocol"]["picked"]
        pick = f"lr {picked['lr']:g}" if "lr" in picked else "per seed"
        print(
            f"evaluate: {name:18s} ({pick}, chosen on val) test acc {m['test_acc']:.4f} (sd {m['test_acc_std']:.4f}, "
            f"{len(seeds)} seed(s))  macro-F1 {m['macro_f1']:.4f}"
        )


if __name__ == "__main__":
    run_stage(main, argparse.ArgumentParser(description=__doc__))
