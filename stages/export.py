"""export: the model the report recommends, as TorchScript, ONNX and a model card.

Reads results/evaluate/recommended.json (which run, and its checkpoint's SHA-256) and writes
models/recommended/: checkpoint.pt, model.ts, model.onnx, model_card.{md,json}. DVC re-runs
it only when that file changes: another recommendation, or a changed checkpoint.
Run through `dvc repro`; by hand: ``python stages/export.py``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

from transferlab import layout
from transferlab._io import code_version, read_json
from transferlab.cli import run_stage
from transferlab.serve.export import export_recommended


def main(args: argparse.Namespace) -> None:
    rec = read_json(layout.RECOMMENDATION)
    card = export_recommended(rec, layout.RECOMMENDED, code_version=code_version())
    ex = card["exports"]
    onnx = ex["model.onnx"]
    print(
        f"export: {card['run']} ({card['model']}) -> {layout.RECOMMENDED}/: TorchScript "
        f"(max logit diff {ex['model.ts']['max_abs_logit_diff']:.1e}), ONNX "
        + (
            f"(max logit diff {onnx['max_abs_logit_diff']:.1e})"
            if onnx["verified"]
            else "(not checked: no onnxruntime)"
        )
        + ", model card"
    )


if __name__ == "__main__":
    run_stage(main, argparse.ArgumentParser(description=__doc__))
