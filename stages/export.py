"""export: the checkpoint evaluate recommends, as TorchScript and ONNX, checked against PyTorch.

Reads results/evaluate/recommended_run.json (which run, and its checkpoint's SHA-256) and
writes models/recommended/: checkpoint.pt, model.ts, model.onnx and exports.json (what the
model card needs from the network). DVC re-runs it only when that file changes: another run
recommended, or its checkpoint changed; or when export.refit changes. A change of the
verdict around the same checkpoint (tie set, metrics) re-runs stage model-card alone.

With export.refit: true the recommended strategy is trained again on every image, at the
rate (or L2 strength) and step its run chose on validation, and that model ships
(transferlab.training.refit); exports.json's ``refit`` says what it saw.
Run through `dvc repro`; by hand: ``python stages/export.py``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run the code DVC hashed

import tempfile

from transferlab import layout
from transferlab._io import read_json
from transferlab.cli import run_stage
from transferlab.config import load_params
from transferlab.serve.export import export_recommended


def main(args: argparse.Namespace) -> None:
    p = load_params(args.params)
    run = read_json(layout.RECOMMENDED_RUN)
    if not p.export.refit:
        exported = export_recommended(run, layout.RECOMMENDED)
    else:  # the recommended strategy trained again on every image (transferlab.training.refit)
        from transferlab.training.refit import refit

        with tempfile.TemporaryDirectory(dir=layout.RECOMMENDED.parent) as tmp:
            ckpt = Path(tmp) / "refit.pt"
            facts = refit(p, run, ckpt)
            exported = export_recommended(run, layout.RECOMMENDED, (ckpt, facts))
        print(
            f"export: refit {run['model']} on every image ({facts['images']} images"
            + (f", {facts['steps']} steps" if "steps" in facts else "")
            + f") at {facts['picked']}"
        )
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
