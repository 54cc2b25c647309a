"""model-card: what the exported model is, how well it did and why it was chosen.

Reads results/evaluate/recommended.json (the verdict around the recommended run) and
models/recommended/exports.json (what export measured of the network) and writes
models/recommended/model_card.{json,md}. JSON in and out, no torch: it re-runs on every
change of the verdict, while export re-runs only when the checkpoint changes.
Run through `dvc repro`; by hand: ``python stages/model_card.py``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

from transferlab import layout
from transferlab._io import code_version, read_json
from transferlab.cli import run_stage
from transferlab.serve.card import write_model_card


def main(args: argparse.Namespace) -> None:
    rec = read_json(layout.RECOMMENDATION)
    exported = read_json(layout.RECOMMENDED / "exports.json")
    card = write_model_card(rec, exported, layout.RECOMMENDED, code_version=code_version())
    chosen = card["chosen"]
    print(
        f"model-card: {card['run']} ({card['model']}), test acc {card['metrics']['test_accuracy']:.4f}; "
        f"best on validation {chosen['best_on_val']}; shown within {chosen['margin']:g} of it: "
        f"{', '.join(chosen['equivalent']) or 'none'}; undecided: {', '.join(chosen['undecided']) or 'none'}"
        + (" (shipped: refit on every image)" if card.get("refit") else "")
        + f" -> {layout.RECOMMENDED}/model_card.{{json,md}}"
    )


if __name__ == "__main__":
    run_stage(main, argparse.ArgumentParser(description=__doc__))
