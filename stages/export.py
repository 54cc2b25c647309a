"""export: the checkpoint evaluate recommends, as TorchScript and ONNX, checked against PyTorch.

Reads results/evaluate/recommended_run.json (which run, and its checkpoint's SHA-256) and
writes models/recommended/: checkpoint.pt, model.ts, model.onnx and exports.json (what the
model card needs from the network). DVC re-runs it only when that file changes: another run
recommended, or its checkpoint changed. A change of the verdict around the same checkpoint
(tie set, metrics) re-runs stage model-card alone.
Run through `dvc repro`; by hand: ``python stages/export.py``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

from transferlab import layout
from transferlab._io import read_json
from transferlab.cli import run_stage
from transferlab.serve.export import export_recommended


def main(args: argparse.Namespace) -> None:
    exported = export_recommended(read_json(layout.RECOMMENDED_RUN), layout.RECOMMENDED)
    ex = exported["exports"]
    onnx = ex["model.onnx"]
    print(
        f"export: {exported['run']} ({exported['model']}) -> {layout.RECOMMENDED}/: TorchScript "
        f"(max logit diff {ex['model.ts']['max_abs_logit_diff']:.1e}), ONNX "
        + (
            f"(max logit diff {onnx['max_abs_logit_diff']:.1e})"
            if onnx["verified"]
            else "(not checked: no onnxruntime)"
        )
    )


if __name__ == "__main__":
    run_stage(main, argparse.ArgumentParser(description=__doc__))
