"""Using the winner: networks rebuilt from checkpoints alone, `transferlab predict`, and the
export of the recommended model (TorchScript, ONNX) and its model card."""

import csv
import json

import numpy as np
import pytest
import torch
from helpers import make_image_folder, save_head_checkpoint

from transferlab.config import HeadConfig
from transferlab.data.images import eval_loader
from transferlab.errors import FingerprintMismatch
from transferlab.features.backbones import backbone_fingerprint, create_backbone
from transferlab.serve import app
from transferlab.serve.card import write_model_card
from transferlab.serve.export import export_recommended
from transferlab.serve.inference import classify, expand_inputs, load_classifier
from transferlab.training.models import CheckpointMeta, TransferModel, make_head, save_checkpoint
from transferlab.verdict.evaluation import recommended_run

CLASSES = ["c0", "c1", "c2"]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    make_image_folder(root, classes=3, per_class=3, size=20)
    return root


def _meta(bb, kind, head_cfg, **kw):
    return CheckpointMeta(
        kind=kind,
        model="features" if kind == "head" else "full",
        head=head_cfg,
        in_features=bb.num_features,
        classes=CLASSES,
        fingerprint={**backbone_fingerprint(bb), "manifest_sha256": "m" * 64},
        init={"head": "test"},
        **kw,
    )


@pytest.fixture
def head_checkpoint(tmp_path):
    """A linear head on the real pretrained backbone's features at 32 px, as train-head saves it."""
    return save_head_checkpoint(tmp_path, CLASSES)


@pytest.fixture
def e2e_checkpoint(tmp_path):
    bb = create_backbone("efficientnet_lite0", 32, pretrained=False, crop_pct=1.0)
    torch.manual_seed(2)
    cfg = HeadConfig(kind="mlp", hidden=8)
    model = TransferModel(bb, make_head(cfg, bb.num_features, 3)).eval()
    path = tmp_path / "full-s0" / "model.pt"
    save_checkpoint(path, model, _meta(bb, "end-to-end", cfg, lr=1e-3))
    return path, model


def _reference_logits(network, bb_pre, paths):
    """What the pipeline's scoring computes: eval_loader batches through the network."""
    labels = np.zeros(len(paths), dtype=np.int64)
    with torch.inference_mode():
        return torch.cat([network(x) for x, _ in eval_loader(paths, labels, bb_pre, 4)])


def test_head_checkpoint_rebuilt_from_its_metadata_predicts_as_scoring_does(head_checkpoint, folder):
    path, bb, head = head_checkpoint
    paths = expand_inputs([str(folder)])
    clf = load_classifier(path)
    preds = list(classify(clf, paths, top_k=3, batch_size=4))
    ref = torch.softmax(_reference_logits(torch.nn.Sequential(bb.eval(), head), bb.preprocess, paths), 1)
    assert [p.path for p in preds] == paths
    assert [CLASSES.index(p.top[0][0]) for p in preds] == ref.argmax(1).tolist()
    np.testing.assert_allclose([p.top[0][1] for p in preds], ref.max(1).values.numpy(), rtol=1e-4, atol=1e-5)
    assert all(p.top[0][1] >= p.top[1][1] >= p.top[2][1] for p in preds)


def test_end_to_end_checkpoint_holds_every_weight(e2e_checkpoint, folder):
    path, model = e2e_checkpoint
    paths = expand_inputs([str(folder)])
    clf = load_classifier(path)
    preds = list(classify(clf, paths, top_k=1))
    ref = _reference_logits(model, model.backbone.preprocess, paths)
    assert [CLASSES.index(p.top[0][0]) for p in preds] == ref.argmax(1).tolist()


def test_a_head_is_never_put_on_other_features(tmp_path):
    bb = create_backbone("efficientnet_lite0", 32, crop_pct=1.0)
    meta = _meta(bb, "head", HeadConfig(kind="linear"))
    meta = meta.model_copy(update={"fingerprint": {**meta.fingerprint, "weights_sha256": "0" * 64}})
    path = tmp_path / "model.pt"
    save_checkpoint(path, make_head(HeadConfig(kind="linear"), bb.num_features, 3), meta)
    with pytest.raises(FingerprintMismatch, match="weights_sha256.*pass the backbone's weights file"):
        load_classifier(path)


def test_inputs_files_folders_globs(folder, tmp_path):
    one = folder / "c0" / "000.png"
    found = expand_inputs([str(one), str(folder / "c1"), str(folder / "c2" / "*.png"), str(one)])
    assert found[0] == one and len(found) == 1 + 3 + 3  # the repeated file is kept once
    (folder / "notes.txt").write_text("not an image")
    assert len(expand_inputs([str(folder)])) == 9  # folders yield image files only
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        expand_inputs([str(tmp_path / "nothing-here")])


def test_unreadable_files_fail_or_are_skipped_and_named(head_checkpoint, folder):
    bad = folder / "c0" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    clf = load_classifier(head_checkpoint[0])
    paths = expand_inputs([str(folder)])
    with pytest.raises(Exception, match="broken.png: cannot decode image"):
        list(classify(clf, paths))
    skipped: list = []
    preds = list(classify(clf, paths, on_bad="skip", skipped=skipped))
    assert len(preds) == 9 and [p for p, _ in skipped] == [bad]


def test_cli_writes_csv_and_json(head_checkpoint, folder, tmp_path, capsys):
    path = head_checkpoint[0]
    with pytest.raises(SystemExit) as done:
        app.main(["predict", str(path), str(folder), "--out", str(tmp_path / "p.csv"), "--top-k", "2"])
    assert done.value.code == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 9 and list(rows[0]) == ["path", "class_1", "prob_1", "class_2", "prob_2"]
    assert all(r["class_1"] in CLASSES and 0 < float(r["prob_1"]) <= 1 for r in rows)
    with pytest.raises(SystemExit):
        app.main(["predict", str(path.parent), str(folder / "c0"), "--out", str(tmp_path / "p.json")])
    out = json.loads((tmp_path / "p.json").read_text())
    assert out["classes"] == CLASSES and len(out["predictions"]) == 3 and out["skipped"] == []
    first = out["predictions"][0]
    assert first["path"] == rows[0]["path"] and first["top"][0]["class"] == rows[0]["class_1"]
    assert len(first["top"]) == 3  # --top-k defaults to 5, capped at the 3 classes


def test_cli_errors_are_one_line(tmp_path, capsys, folder):
    with pytest.raises(SystemExit) as done:
        app.main(["predict", "no-such-run", str(folder)])
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert "error: model 'no-such-run': not 'recommended'" in err and "Traceback" not in err


def _rec(path, model="features"):
    from transferlab._io import sha256_file

    return {
        "model": model,
        "run": path.parent.name,
        "seed": 0,
        "checkpoint": str(path),
        "checkpoint_sha256": sha256_file(path),
        "metrics": {
            "test_acc": 0.9,
            "test_acc_ci_lo": 0.85,
            "test_acc_ci_hi": 0.94,
            "macro_f1": 0.89,
            "val_acc": 0.91,
            "seeds": 1,
            "train_time_s": 1.0,
            "total_time_s": 3.0,
            "trainable_params": 10,
            "total_params": 100,
        },
        "run_test": {"accuracy": 0.9, "macro_f1": 0.89, "nll": 0.3, "ece": 0.02},
        "run_val": {"accuracy": 0.91, "nll": 0.28},
        "chosen": {"best_on_val": "full", "tie_set": ["full", model], "rule": "the rule", "run": "best val"},
        "protocol": {"picked": {"l2": 1.0}},
    }


@pytest.mark.parametrize("which", ["head", "end-to-end"])
def test_export_gives_the_same_outputs_as_pytorch(which, head_checkpoint, e2e_checkpoint, tmp_path):
    path = head_checkpoint[0] if which == "head" else e2e_checkpoint[0]
    out = tmp_path / "models" / "recommended"
    rec = _rec(path)
    exported = export_recommended(recommended_run(rec), out)
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "exports.json",
        "model.onnx",
        "model.ts",
    ]
    assert json.loads((out / "exports.json").read_text()) == exported
    card = write_model_card(rec, exported, out, code_version="abc123")
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "exports.json",
        "model.onnx",
        "model.ts",
        "model_card.json",
        "model_card.md",
    ]
    clf = load_classifier(out / "checkpoint.pt")
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = clf.network(x)
        ts = torch.jit.load(str(out / "model.ts"))(x)
    torch.testing.assert_close(ts, ref, rtol=1e-4, atol=1e-4)
    assert json.loads((out / "model_card.json").read_text()) == card
    assert card["classes"] == CLASSES and card["input"]["shape"] == ["batch", 3, 32, 32]
    assert card["input"]["preprocessing"]["mean"] == list(clf.preprocess.mean)
    assert card["metrics"]["test_accuracy_ci95"] == [0.85, 0.94]
    assert card["fingerprint"]["code_version"] == "abc123"
    assert card["fingerprint"]["checkpoint_sha256"] == rec["checkpoint_sha256"]
    assert card["params"]["lr"] == clf.meta.lr and card["kind"] == clf.meta.kind
    md = (out / "model_card.md").read_text()
    assert "Test accuracy 0.9000 (95% interval [0.850, 0.940]" in md and "c0, c1, c2" in md
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a development dependency")
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(["logits"], {"images": x.numpy()})
    np.testing.assert_allclose(onnx_out, ref.numpy(), rtol=1e-3, atol=1e-4)
    assert card["exports"]["model.onnx"]["verified"]


def test_an_exports_file_without_what_the_card_needs_is_refused(tmp_path):
    from transferlab.errors import DataError

    rec = {"run": "features-s0", "checkpoint_sha256": "a" * 64}
    with pytest.raises(DataError, match=r"exports.json: lacks classes, exports, .*, run \(written"):
        write_model_card(rec, {"checkpoint_sha256": "a" * 64}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_card_for_another_checkpoint_than_the_export_is_refused(tmp_path):
    """The card stage reads two files written at different times: a verdict that names
    another checkpoint than the one exported is an error, and nothing is written."""
    from transferlab.serve.card import EXPORTED_KEYS

    rec = {"run": "full-s1", "checkpoint_sha256": "a" * 64}
    exported = dict.fromkeys(EXPORTED_KEYS) | {"run": "features-s0", "checkpoint_sha256": "b" * 64}
    with pytest.raises(FingerprintMismatch, match="exports run features-s0 .* recommends run full-s1"):
        write_model_card(rec, exported, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_changed_checkpoint_and_publishes_nothing(head_checkpoint, tmp_path):
    path = head_checkpoint[0]
    rec = recommended_run(_rec(path)) | {"checkpoint_sha256": "0" * 64}
    with pytest.raises(
        FingerprintMismatch, match="not the checkpoint results/evaluate/recommended_run.json names"
    ):
        export_recommended(rec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_failed_export_leaves_the_previous_export_as_it_was(head_checkpoint, tmp_path, monkeypatch):
    """Files, not a folder, are published: each is written beside its place and moved there
    only once every conversion passed its check."""
    from transferlab.serve import export

    out = tmp_path / "recommended"
    out.mkdir()
    before = {name: f"old {name}".encode() for name in export.FILES}
    for name, data in before.items():
        (out / name).write_bytes(data)

    def broken(clf, path):
        path.write_bytes(b"half")
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(export, "export_onnx", broken)
    with pytest.raises(RuntimeError, match="conversion failed"):
        export_recommended(recommended_run(_rec(head_checkpoint[0])), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_export_names_what_a_hand_edited_recommended_run_lacks(tmp_path):
    from transferlab.errors import DataError

    with pytest.raises(
        DataError, match=r"recommended_run.json: lacks run, checkpoint, checkpoint_sha256; re-run"
    ):
        export_recommended({"model": "features"}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
