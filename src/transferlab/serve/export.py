"""The recommended model, exported for use outside transferlab (stage ``export``).

``models/recommended/`` holds the recommended run's checkpoint (for ``transferlab predict
recommended``), the same network as TorchScript (``model.ts``) and ONNX (``model.onnx``),
both taking a batch of normalized images (N, 3, S, S) and giving logits, and a model card
(``model_card.md`` / ``.json``): classes, preprocessing, metrics with intervals,
fingerprints, the run's params and how it was chosen. Both exports are checked against the
PyTorch network on the same inputs before anything is published.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from transferlab._io import publish, sha256_file
from transferlab.errors import FingerprintMismatch
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


def export_recommended(rec: dict[str, Any], out: Path, *, code_version: str | None = None) -> dict[str, Any]:
    """Export the run ``rec`` (evaluate's recommended.json) to ``out``; returns the card."""
    ckpt = Path(rec["checkpoint"])
    if not ckpt.is_file() or sha256_file(ckpt) != rec["checkpoint_sha256"]:
        raise FingerprintMismatch(
            f"{ckpt}: not the checkpoint results/evaluate/recommended.json names (missing or changed); "
            "re-run the pipeline (dvc repro)"
        )
    clf = load_classifier(ckpt)
    with publish(out) as tmp:
        tmp.mkdir(parents=True)
        shutil.copyfile(ckpt, tmp / "checkpoint.pt")
        ts_diff = export_torchscript(clf, tmp / "model.ts")
        export_onnx(clf, tmp / "model.onnx")
        onnx_diff = onnx_difference(clf, tmp / "model.onnx")
        for name, diff in (("TorchScript", ts_diff), ("ONNX", onnx_diff)):
            if diff is not None and not diff <= TOLERANCE:
                raise RuntimeError(
                    f"{name} export differs from the PyTorch model by {diff:.2e} (> {TOLERANCE})"
                )
        card = model_card(clf, rec, ts_diff, onnx_diff, code_version)
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
        (tmp / "model_card.md").write_text(card_markdown(card))
    return card


def model_card(
    clf: Classifier, rec: dict[str, Any], ts_diff: float, onnx_diff: float | None, code_version: str | None
) -> dict[str, Any]:
    pre, meta, m = clf.preprocess, clf.meta, rec["metrics"]
    return {
        "model": rec["model"],
        "run": rec["run"],
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
        "output": "logits over classes (softmax for probabilities)",
        "metrics": {
            "test_accuracy": m["test_acc"],
            "test_accuracy_ci95": [m["test_acc_ci_lo"], m["test_acc_ci_hi"]],
            "test_macro_f1": m["macro_f1"],
            "val_accuracy": m["val_acc"],
            "seeds": m["seeds"],
            "this_run": {"test": rec["run_test"], "val": rec["run_val"]},
        },
        "cost": {k: m[k] for k in ("train_time_s", "total_time_s", "trainable_params", "total_params")},
        "fingerprint": {
            **meta.fingerprint,
            "checkpoint_sha256": rec["checkpoint_sha256"],
            "code_version": code_version,
        },
        "params": {"protocol": rec["protocol"], "head": meta.head.model_dump(), "lr": meta.lr},
        "init": meta.init,
        "chosen": rec["chosen"],
        "trained_on": rec.get("trained_on"),
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


def card_markdown(card: dict[str, Any]) -> str:
    m, pre = card["metrics"], card["input"]["preprocessing"]
    lo, hi = m["test_accuracy_ci95"]
    onnx = card["exports"]["model.onnx"]
    onnx_check = (
        f"{onnx['max_abs_logit_diff']:.1e} (onnxruntime)"
        if onnx["verified"]
        else "not checked (no onnxruntime)"
    )
    chosen = card["chosen"]
    return "\n".join(
        [
            f"# Model card: {card['model']} ({card['run']})",
            "",
            f"Recommended by transferlab: {chosen['rule']}. Best on validation: {chosen['best_on_val']}; "
            f"{chosen.get('tested_on', 'the test split')} could not separate it from: "
            f"{', '.join(m for m in chosen['tie_set'] if m != chosen['best_on_val']) or 'no other model'}. "
            f"Exported run: {chosen['run']}"
            + (f": {card['trained_on']}." if card.get("trained_on") else "."),
            "",
            "## Use",
            "",
            f"Input: float32 tensor {card['input']['shape']}, RGB. Resize the shorter side to "
            f"{pre['resize_shorter_side_to']} px ({pre['interpolation']}), centre-crop {pre['center_crop']}, "
            f"scale to [0, 1], normalize with mean {pre['mean']} and std {pre['std']}. Output: logits.",
            "",
            "- `checkpoint.pt`: `transferlab predict recommended <images>`",
            f"- `model.ts`: `torch.jit.load`; largest logit difference from PyTorch {card['exports']['model.ts']['max_abs_logit_diff']:.1e}",
            f"- `model.onnx`: onnxruntime, input `images`, output `logits`; largest logit difference {onnx_check}",
            "",
            f"Classes, in output order: {', '.join(card['classes'])}.",
            "",
            "## Measured",
            "",
            f"Test accuracy {m['test_accuracy']:.4f} (95% interval [{lo:.3f}, {hi:.3f}], {m['seeds']} seed(s)), "
            f"macro-F1 {m['test_macro_f1']:.4f}, validation accuracy {m['val_accuracy']:.4f}. This run: test "
            f"accuracy {m['this_run']['test']['accuracy']:.4f}.",
            "",
            f"Cost: {card['cost']['total_time_s']:.1f} s in total (training {card['cost']['train_time_s']:.1f} s), "
            + (
                f"{card['cost']['trainable_params']:,} parameters trained: a head on the frozen backbone's "
                "cached features."
                if card["kind"] == "head"
                else f"{card['cost']['trainable_params']:,} of {card['cost']['total_params']:,} parameters trained."
            ),
            "",
            "## Provenance",
            "",
            *[f"- {k}: {v}" for k, v in card["fingerprint"].items()],
            f"- initialization: {card['init']}",
            "",
        ]
    )
