"""The run summary every training stage writes and evaluate reads: one schema, checked at
both ends (``results/<run>/train.json``).

A module of its own, with no torch, so that evaluate (which never loads a model) depends on
the schema and not on the training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from transferlab._io import read_json, write_json
from transferlab.errors import FingerprintMismatch


class RunSummary(BaseModel):
    """A training run's outcome on validation and its cost."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str  # the registered model (transferlab.registry)
    seed: int
    split: str = "split"  # the manifest column (splitting) it trained and was scored on
    n_train: int
    # the kept state: the best validation-loss epoch, or the picked grid point of a head
    val_acc: float
    val_loss: float
    # passes over the training split (full-batch solver: function evaluations; end to end:
    # steps x batch / training images, rounded)
    epochs_run: int
    best_epoch: int | None  # the kept round (an epoch, or eval_every steps); None for L-BFGS
    stopped_early: bool
    # the training or validation loss became non-finite: recorded, never picked
    diverged: bool = False
    train_time_s: float  # the kept run
    # the whole search of the run's stage: a head's grid, an end-to-end learning-rate search
    search_time_s: float | None = None
    time_per_epoch_s: float  # per pass over the training split
    train_images_per_s: float
    protocol: dict[str, Any]  # how it was chosen: selection rule, grid, pick, budget
    lr_schedule: dict[str, dict[str, float]] | None = None
    trainable_params: int
    total_params: int
    # What one task costs to keep: the tensors the run trained (with bn: train, the
    # running statistics too), against the whole checkpoint file. For the parameter-efficient
    # strategies the first is what ships on top of a shared backbone.
    trained_bytes: int | None = None
    checkpoint_bytes: int | None = None
    peak_rss_bytes: int
    peak_gpu_bytes: int | None
    device: str
    environment: dict[str, Any]
    # two-stage only
    solver: Literal["lbfgs", "adamw"] | None = None
    streamed: bool | None = None
    # end-to-end only
    lr: float | None = None
    bn: Literal["frozen", "train"] | None = None
    init: dict[str, str] | None = None
    probe_train_time_s: float | None = None  # lp-ft: the probe's search, which it pays for
    num_workers: int | None = None  # DataLoader worker processes it ran with
    ranks: int | None = None  # torchrun processes that shared each batch
    bn_synced: bool | None = None  # BatchNorm statistics synchronised across them

    @property
    def search_s(self) -> float:
        """Seconds its choice cost inside this run: the grid for a head, else the run."""
        return self.train_time_s if self.search_time_s is None else self.search_time_s


def write_summary(path: Path, summary: RunSummary) -> None:
    write_json(path, summary.model_dump(mode="json"))


def read_summary(path: Path) -> RunSummary:
    try:
        return RunSummary.model_validate(read_json(path))
    except ValidationError as err:
        first = " ".join(str(err).splitlines()[:3])
        raise FingerprintMismatch(
            f"{path}: not a run summary of this version ({first}); re-run its stage (dvc repro)"
        ) from None
