"""What a training stage leaves behind besides its checkpoint.

``results/<model>/`` holds dvclive's per-epoch curves (``plots/metrics/**.tsv``, shown by
``dvc plots show``) and ``train.json``: the run's cost (seconds, seconds per epoch, peak
memory, parameter counts) and outcome, which the evaluate stage collects.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from transferlab.runtime import environment, peak_gpu_bytes, peak_rss_bytes
from transferlab.training.loop import EpochRecord, FitResult
from transferlab.training.models import CheckpointMeta, count_parameters
from transferlab.training.records import RunSummary, write_summary


class CurveLogger:
    """Per-epoch metrics through dvclive; the pipeline's dvc.yaml declares the plots.

    dvclive is imported here, not with the module: it brings much of DVC with it (about
    1.3 s of a stage's start), and the stages that train learning-curve points import this
    module but log no curves of their own."""

    def __init__(self, out_dir: Path) -> None:
        from dvclive import Live

        # dvcyaml=False: dvc.yaml is ours; save_dvc_exp=False: `dvc exp run` makes experiments.
        self.live = Live(str(out_dir), dvcyaml=False, save_dvc_exp=False, report=None)

    def __call__(self, rec: EpochRecord) -> None:
        live = self.live
        live.log_metric("train/loss", rec.train_loss)
        live.log_metric("train/acc", rec.train_acc)
        live.log_metric("val/loss", rec.val_loss)
        live.log_metric("val/acc", rec.val_acc)
        live.log_metric("epoch_time_s", rec.train_seconds)
        for group, lr in rec.lrs.items():
            live.log_metric(f"lr/{group}", lr)
        live.next_step()

    def log_point(self, values: dict[str, float]) -> None:
        """One step of anything that is not an epoch (a point of a hyper-parameter grid)."""
        for name, value in values.items():
            self.live.log_metric(name, value)
        self.live.next_step()

    def close(self) -> None:
        self.live.end()


def training_summary(
    fit: FitResult,
    *,
    model: str,
    n_train: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The outcome and cost of a mini-batch run (the stage adds memory and parameters)."""
    per_epoch = [r.train_seconds for r in fit.history]
    return {
        "model": model,
        "n_train": n_train,
        "epochs_run": len(fit.history),
        "best_epoch": fit.best_epoch + 1,
        "stopped_early": fit.stopped_early,
        "diverged": fit.diverged,
        "val_acc": fit.best.val_acc,
        "val_loss": fit.best.val_loss,
        "train_time_s": fit.seconds,
        "time_per_epoch_s": statistics.fmean(per_epoch),
        "train_images_per_s": n_train / statistics.fmean(per_epoch),
        "lr_schedule": fit.lr_schedule,
        **(extra or {}),
    }


def run_cost(model: torch.nn.Module, device: torch.device) -> dict[str, Any]:
    """What every run reports next to its outcome: parameters, peak memory, where it ran.
    Called at the end of a run (progressive unfreezing grows the trainable set during it)."""
    trainable, total = count_parameters(model)
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trained_bytes": sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad),
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_gpu_bytes": peak_gpu_bytes(device),
        "device": str(device),
        "environment": environment(),
    }


def finish_run(name: str, model: torch.nn.Module, meta: CheckpointMeta, summary: dict[str, Any]) -> None:
    """Publish the best checkpoint and the run summary of run ``name``. The summary is
    validated against :class:`~transferlab.training.records.RunSummary` before anything is written."""
    from transferlab import layout
    from transferlab.training.models import save_checkpoint

    RunSummary.model_validate(summary)  # refuse a bad summary before anything is written
    save_checkpoint(layout.checkpoint(name), model, meta)
    record = RunSummary.model_validate(
        {**summary, "checkpoint_bytes": layout.checkpoint(name).stat().st_size}
    )
    write_summary(layout.train_summary(name), record)
    print(
        f"{name}: val acc {record.val_acc:.4f}, {record.time_per_epoch_s:.3f}s/epoch, "
        f"{record.trainable_params:,}/{record.total_params:,} params trainable"
    )
