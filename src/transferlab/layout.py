"""Where every artifact lives, relative to the project root (dvc.yaml says the same).

One place for paths, so that no two scripts can disagree about where a stage writes;
tests/test_layout.py checks that dvc.yaml declares the same ones.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path("data")
RAW = DATA / "raw"
MANIFEST = DATA / "manifest.parquet"
FEATURES = DATA / "features"
# backbone.candidates, screened (stage screen-backbone): one store and one summary each
SCREEN_DATA = DATA / "screen"
SCREEN = Path("results") / "screen"
# The backbone the arms run on (stage choose-backbone): backbone.name, or with
# backbone.name: best-probe the screened candidate whose probe validation prefers.
ARMS_BACKBONE = Path("results") / "backbone.json"
MODELS = DATA / "models"
RESULTS = Path("results")
REPORTS = Path("reports")
# The model the report recommends, exported (stage export: checkpoint, TorchScript, ONNX,
# exports.json; stage model-card: model_card.{json,md}). Outside data/ on purpose: it is what
# a user takes away.
RECOMMENDED = Path("models") / "recommended"
# evaluate's recommendation: which run, the SHA-256 of its checkpoint, its metrics and how it
# was chosen (what the model card says)...
RECOMMENDATION = RESULTS / "evaluate" / "recommended.json"
# ... and the checkpoint's identity alone (model, run, checkpoint, SHA-256): what export
# depends on, so that a new tie set or a re-timed run does not convert the same network again.
RECOMMENDED_RUN = RESULTS / "evaluate" / "recommended_run.json"
RECOMMENDED_RUN_KEYS = ("model", "run", "checkpoint", "checkpoint_sha256")

# The two-stage model (head on cached features) is called "features" everywhere.
FEATURES_MODEL = "features"


def run_name(model: str, seed: int) -> str:
    """One training run: a model trained with one seed (an end-to-end run holds its whole
    learning-rate search): ``features-s0``, ``full-s0``."""
    return f"{model}-s{seed}"


def parse_run(name: str) -> tuple[str, int]:
    """(model, seed) of a run name made by :func:`run_name`."""
    model, seed = name.rsplit("-s", 1)
    return model, int(seed)


def model_dir(name: str) -> Path:
    return MODELS / name


def checkpoint(name: str) -> Path:
    return model_dir(name) / "model.pt"


def results_dir(name: str) -> Path:
    return RESULTS / name


def train_summary(name: str) -> Path:
    return results_dir(name) / "train.json"


def predictions(name: str) -> Path:
    """Per-image predictions of run ``name`` on val and test, with its test metrics."""
    return results_dir(name) / "predictions.json"


# Learning curves (params: curve): the two-stage heads' curves of a seed in one folder (the
# curve-head stage writes them whole), an end-to-end strategy's per seed, a point per size.
CURVES = RESULTS / "curve"


def heads_curve_dir(seed: int) -> Path:
    """What curve-head@<seed> writes: every two-stage model's points of that seed."""
    return CURVES / f"heads-s{seed}"


def curve_dir(model: str, seed: int) -> Path:
    """The curve of one model and seed; an end-to-end strategy's points are stages of their
    own, one folder each in it."""
    from transferlab import registry

    if registry.get(model).two_stage:
        return heads_curve_dir(seed) / model
    return CURVES / run_name(model, seed)


def curve_point(model: str, seed: int, size: str) -> str:
    """The run name of one curve point (``curve/full-s0/f0.25``), for :func:`results_dir`
    and :func:`predictions`; ``size`` spelled as DVC writes it in the stage (``str`` of the
    float)."""
    return str((curve_dir(model, seed) / f"f{size}").relative_to(RESULTS))
