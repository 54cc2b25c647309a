"""The recommended model's card (stage ``model-card``): ``models/recommended/model_card.json``
and ``model_card.md``, beside what export wrote there.

Classes, preprocessing, metrics with intervals, cost, fingerprints, the run's params and how
it was chosen: the verdict (evaluate's recommended.json) next to what export measured of the
network (exports.json). JSON in, JSON and Markdown out, no torch: this stage re-runs on every
change of the verdict, export only when the checkpoint itself changes.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from transferlab._io import publish
from transferlab.errors import DataError, FingerprintMismatch

FILES = ("model_card.json", "model_card.md")
# What the card reads of exports.json (serve/export.py: exported_facts writes them).
EXPORTED_KEYS = {
    "run",
    "checkpoint_sha256",
    "kind",
    "classes",
    "input",
    "fingerprint",
    "head",
    "lr",
    "init",
    "exports",
}


def write_model_card(
    rec: dict[str, Any], exported: dict[str, Any], out: Path, *, code_version: str | None = None
) -> dict[str, Any]:
    """The card of ``rec`` (recommended.json) from ``exported`` (exports.json), in ``out``;
    refused when the two name different checkpoints (an export older than the verdict)."""
    missing = sorted(EXPORTED_KEYS - set(exported))
    if missing:
        raise DataError(
            f"{out / 'exports.json'}: lacks {', '.join(missing)} (written by another version of "
            "stage export?); re-run the pipeline (dvc repro)"
        )
    # a refit ships another file: it names the validated checkpoint it was refitted from
    validated = exported.get("validated_checkpoint_sha256") or exported["checkpoint_sha256"]
    if validated != rec["checkpoint_sha256"]:
        raise FingerprintMismatch(
            f"{out / 'exports.json'}: exports run {exported['run']} (checkpoint "
            f"{exported['checkpoint_sha256'][:12]}), but results/evaluate/recommended.json "
            f"recommends run {rec['run']} (checkpoint {rec['checkpoint_sha256'][:12]}); re-run "
            "the pipeline (dvc repro)"
        )
    card = model_card(rec, exported, code_version)
    with ExitStack() as stack:
        tmp = {name: stack.enter_context(publish(out / name)) for name in FILES}
        tmp["model_card.json"].write_text(json.dumps(card, indent=2) + "\n")
        tmp["model_card.md"].write_text(card_markdown(card))
    return card


def model_card(rec: dict[str, Any], exported: dict[str, Any], code_version: str | None) -> dict[str, Any]:
    m = rec["metrics"]
    return {
        "model": rec["model"],
        "run": rec["run"],
        "kind": exported["kind"],
        "classes": exported["classes"],
        "input": exported["input"],
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
            **exported["fingerprint"],
            "checkpoint_sha256": exported["checkpoint_sha256"],
            **({"validated_checkpoint_sha256": rec["checkpoint_sha256"]} if exported.get("refit") else {}),
            "code_version": code_version,
        },
        "params": {"protocol": rec["protocol"], "head": exported["head"], "lr": exported["lr"]},
        "init": exported["init"],
        "chosen": rec["chosen"],
        "trained_on": rec.get("trained_on"),
        # export.refit: the recommended strategy trained again on every image (None: the
        # validated run itself ships)
        "refit": exported.get("refit"),
        "exports": exported["exports"],
    }


def _refit_text(card: dict[str, Any]) -> str:
    """What the shipped model saw, when export.refit trained it again."""
    r = card["refit"]
    picked = ", ".join(f"{k} {v:g}" for k, v in r["picked"].items())
    steps = f", {r['steps']} optimizer steps of its {r['budget_steps']}-step schedule" if "steps" in r else ""
    return (
        f"Shipped: not run {r['from_run']} itself but its strategy trained again on every image "
        f"(`export.refit`: {r['images']:,} images, validation and test ones included) at what that "
        f"run chose on validation ({picked}{steps}). No image is left to score it: the accuracy "
        "below is the validated run's, which the refit, trained on more data, is expected to meet."
    )


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
            f"{chosen.get('tested_on', 'the test split')} showed within the margin "
            f"({chosen.get('margin', 0.02):g}) of it: {', '.join(chosen.get('equivalent', [])) or 'no other model'}; "
            f"undecided: {', '.join(chosen.get('undecided', [])) or 'none'}. "
            f"Validated run: {chosen['run']}"
            + (f": {card['trained_on']}." if card.get("trained_on") else "."),
            "",
            *([_refit_text(card), ""] if card.get("refit") else []),
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
