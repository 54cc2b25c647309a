"""The recommended model, exported for use outside transferlab (stage ``export``).

``models/recommended/`` holds the recommended run's checkpoint (for ``transferlab predict
recommended``), the same network as TorchScript (``model.ts``) and ONNX (``model.onnx``),
both taking a batch of normalized images (N, 3, S, S) and giving logits, and
``exports.json``: what the model card needs from the network and the conversions. Both
exports are checked against the PyTorch network on the same inputs before anything is
published. The stage depends on the checkpoint's identity alone (recommended_run.json), not
on the verdict around it: a change of tie set or of a metric rewrites the model card (stage
``model-card``, :mod:`transferlab.serve.card`) without converting the same network again.
"""

from __future__ import annotations

import json
import shutil
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from transferlab import layout
from transferlab._io import publish, sha256_file
from transferlab.errors import DataError, FingerprintMismatch
from transferlab.serve.inference import Classifier, load_classifier

# Largest absolute difference of logits allowed between an export and the PyTorch network.
TOLERANCE = 1e-3


def _example(clf: Classifier, n: int = 4) -> torch.Tensor:
    s = clf.preprocess.image_size
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(0))


def export_torchscript(clf: Classifier, path: Path) -> float:
    """Trace the network to TorchScript; returns the largest logit difference on a check batch.

    torch 2.14 marks torch.jit as deprecated in favour of torch.export; TorchScript files are
    still what many serving stacks load, so it is exported, with that warning silenced."""
    x = _example(clf)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        traced = torch.jit.trace(clf.network, x, check_trace=False)
        traced.save(str(path))
        loaded = torch.jit.load(str(path))
        check = _example(clf, 3)  # another batch size than the trace's
        return float((loaded(check) - clf.network(check)).abs().max())


def export_onnx(clf: Classifier, path: Path) -> None:
    """The network as ONNX with a dynamic batch dimension (input ``images``, output ``logits``),
    through torch's torch.export-based exporter (onnxscript)."""
    with torch.no_grad():
        torch.onnx.export(
            clf.network,
            (_example(clf),),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            external_data=False,  # one self-contained file (weights inside; fine below 2 GB)
            verbose=False,
        )


def onnx_difference(clf: Classifier, path: Path) -> float | None:
    """Largest logit difference between onnxruntime and the network; None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _example(clf, 3)
    (out,) = session.run(["logits"], {"images": x.numpy()})
    with torch.no_grad():
        return float((torch.from_numpy(out) - clf.network(x)).abs().max())


# What export writes in models/recommended/; the model card (stage model-card, serve/card.py)
# writes model_card.json and model_card.md beside them.
FILES = ("checkpoint.pt", "model.ts", "model.onnx", "exports.json")


def export_recommended(
    run: dict[str, Any], out: Path, refitted: tuple[Path, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Export the checkpoint ``run`` names (evaluate's recommended_run.json: model, run,
    checkpoint and its SHA-256) to ``out``; returns what exports.json says. Every file is
    written and checked before any is published, so a failed export leaves ``out`` as it was.

    ``refitted``: export.refit's checkpoint (the recommended strategy trained again on every
    image, transferlab.training.refit) and what it says about itself, shipped instead."""
    missing = [k for k in layout.RECOMMENDED_RUN_KEYS if k not in run]
    if missing:
        raise DataError(
            f"{layout.RECOMMENDED_RUN}: lacks {', '.join(missing)}; re-run the pipeline (dvc repro)"
        )
    ckpt = Path(run["checkpoint"])
    if not ckpt.is_file() or sha256_file(ckpt) != run["checkpoint_sha256"]:
        raise FingerprintMismatch(
            f"{ckpt}: not the checkpoint results/evaluate/recommended_run.json names (missing or "
            "changed); re-run the pipeline (dvc repro)"
        )
    if refitted is not None:
        ckpt = refitted[0]
    clf = load_classifier(ckpt)
    with ExitStack() as stack:
        tmp = {name: stack.enter_context(publish(out / name)) for name in FILES}
        shutil.copyfile(ckpt, tmp["checkpoint.pt"])
        ts_diff = export_torchscript(clf, tmp["model.ts"])
        export_onnx(clf, tmp["model.onnx"])
        onnx_diff = onnx_difference(clf, tmp["model.onnx"])
        for name, diff in (("TorchScript", ts_diff), ("ONNX", onnx_diff)):
            if diff is not None and not diff <= TOLERANCE:
                raise RuntimeError(
                    f"{name} export differs from the PyTorch model by {diff:.2e} (> {TOLERANCE})"
                )
        exported = exported_facts(clf, run, ts_diff, onnx_diff)
        exported["refit"] = refitted[1] if refitted is not None else None
        if refitted is not None:  # the file shipped is the refit's, not the validated run's
            exported["checkpoint_sha256"] = sha256_file(ckpt)
            exported["validated_checkpoint_sha256"] = run["checkpoint_sha256"]
        tmp["exports.json"].write_text(json.dumps(exported, indent=2) + "\n")
    return exported


def exported_facts(
    clf: Classifier, run: dict[str, Any], ts_diff: float, onnx_diff: float | None
) -> dict[str, Any]:
    """What the model card takes from the network itself (classes, input, fingerprints, the
    head and rate it was trained with) and from the conversions (their checked differences),
    so that the card is written without loading torch."""
    pre, meta = clf.preprocess, clf.meta
    return {
        "model": run["model"],
        "run": run["run"],
        "checkpoint_sha256": run["checkpoint_sha256"],
        "kind": meta.kind,
        "classes": meta.classes,
        "input": {
            "shape": ["batch", 3, pre.image_size, pre.image_size],
            "dtype": "float32",
            "layout": "NCHW, RGB",
            "preprocessing": {
                "resize_shorter_side_to": round(pre.image_size / pre.crop_pct),
                "center_crop": pre.image_size,
                "crop_pct": pre.crop_pct,
                "interpolation": pre.interpolation,
                "scale": "uint8 / 255",
                "mean": list(pre.mean),
                "std": list(pre.std),
            },
        },
        "fingerprint": meta.fingerprint,
        "head": meta.head.model_dump(),
        "lr": meta.lr,
        "init": meta.init,
        "exports": {
            "model.ts": {"format": "TorchScript (torch.jit.trace)", "max_abs_logit_diff": ts_diff},
            "model.onnx": {
                "format": "ONNX (torch.export-based exporter), dynamic batch",
                "max_abs_logit_diff": onnx_diff,
                "verified": onnx_diff is not None,
            },
            "checkpoint.pt": {"format": "transferlab checkpoint (transferlab predict)"},
        },
    }
