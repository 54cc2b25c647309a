"""Checkpoint metadata and run summaries are typed: written and read through one schema."""

import pytest
import torch

from transferlab.config import HeadConfig
from transferlab.errors import FingerprintMismatch
from transferlab.training.models import CheckpointMeta, load_checkpoint, save_checkpoint
from transferlab.training.records import RunSummary, read_summary, write_summary

META = CheckpointMeta(
    kind="head",
    model="features",
    head=HeadConfig(kind="linear"),
    in_features=4,
    classes=["a", "b"],
    fingerprint={"backbone": "x", "manifest_sha256": "f" * 64},
    init={"head": "random"},
)

SUMMARY = {
    "model": "features",
    "seed": 0,
    "split": "split",
    "n_train": 10,
    "val_acc": 0.9,
    "val_loss": 0.3,
    "epochs_run": 12,
    "best_epoch": None,
    "stopped_early": False,
    "train_time_s": 0.5,
    "search_time_s": 2.0,
    "time_per_epoch_s": 0.04,
    "train_images_per_s": 250.0,
    "protocol": {"grid": {"l2": [1.0]}, "picked": {"l2": 1.0}},
    "trainable_params": 10,
    "total_params": 10,
    "peak_rss_bytes": 1,
    "peak_gpu_bytes": None,
    "device": "cpu",
    "environment": {},
    "solver": "lbfgs",
}


def test_checkpoint_round_trip_keeps_typed_meta(tmp_path):
    head = torch.nn.Linear(4, 2)
    save_checkpoint(tmp_path / "model.pt", head, META)
    state, meta = load_checkpoint(tmp_path / "model.pt")
    assert meta == META and meta.manifest_sha256 == "f" * 64
    assert isinstance(meta.head, HeadConfig)
    assert torch.equal(state["weight"], head.weight)


def test_checkpoint_of_an_older_layout_is_a_clear_error(tmp_path):
    """The dict layout before typed metadata: a message that says re-run, not a KeyError."""
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {}, "meta": {"kind": "transfer", "strategy": "full"}}, path)
    with pytest.raises(FingerprintMismatch, match=r"model.pt: not a checkpoint of this version.*dvc repro"):
        load_checkpoint(path)


def test_run_summary_round_trip_and_search_seconds(tmp_path):
    write_summary(tmp_path / "train.json", RunSummary(**SUMMARY))
    back = read_summary(tmp_path / "train.json")
    assert back == RunSummary(**SUMMARY)
    assert back.search_s == 2.0  # a head's whole grid
    assert RunSummary(**{**SUMMARY, "search_time_s": None}).search_s == 0.5


@pytest.mark.parametrize(
    ("change", "field"),
    [({"val_acc": "high"}, "val_acc"), ({"typo_s": 1.0}, "typo_s"), ({"seed": None}, "seed")],
)
def test_run_summary_rejects_wrong_and_unknown_fields(tmp_path, change, field):
    import json

    path = tmp_path / "train.json"
    path.write_text(json.dumps({**SUMMARY, **change}))
    with pytest.raises(FingerprintMismatch, match=field):
        read_summary(path)


def test_a_mini_batch_runs_summary_is_a_valid_record():
    """What training_summary and run_cost give, plus the seed the stages add, is complete."""
    from transferlab.training.loop import EpochRecord, FitResult
    from transferlab.training.tracking import run_cost, training_summary

    rec = EpochRecord(0, 1.0, 0.5, 0.9, 0.6, 2.0, 2.5, {"head": 1e-3})
    fit = FitResult(history=[rec], seconds=2.5, lr_schedule={"head": {"nominal": 1e-3}})
    summary = training_summary(fit, model="full", n_train=64, extra={"seed": 0, "protocol": {}})
    summary.update(run_cost(torch.nn.Linear(2, 2), torch.device("cpu")))
    record = RunSummary.model_validate(summary)
    assert record.n_train == 64 and record.train_images_per_s == 32.0
