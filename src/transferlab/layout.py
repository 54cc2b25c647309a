"""Where every artifact lives, relative to the project root (dvc.yaml says the same).

One place for paths, so that no two scripts can disagree about where a stage writes.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path("data")
RAW = DATA / "raw"
MANIFEST = DATA / "manifest.parquet"
FEATURES = DATA / "features"
MODELS = DATA / "models"
RESULTS = Path("results")
REPORTS = Path("reports")

# The two-stage model (head on cached features) is called "features" everywhere.
FEATURES_MODEL = "features"


def run_name(model: str, seed: int) -> str:
    """One training run: a model (strategy) trained with one seed, e.g. ``frozen-s0``."""
    return f"{model}-s{seed}"


def model_dir(name: str) -> Path:
    return MODELS / name


def checkpoint(name: str) -> Path:
    return model_dir(name) / "model.pt"


def results_dir(name: str) -> Path:
    return RESULTS / name


def train_summary(name: str) -> Path:
    return results_dir(name) / "train.json"
