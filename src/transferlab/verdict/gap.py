"""What fine-tuning will add over the linear probe, predicted before any end-to-end arm trains.

The audit (bench/audit.py) runs the whole pipeline on many data sets whose truth is known and
records, for each, the signals extraction computes in seconds (k-NN accuracy on the store,
LogME, H-score) with the images per class, next to the measured *gap*: the truth accuracy of
the best fine-tuned arm minus the probe's. This module fits a small model of that gap on
those data sets and says how good it is where it matters, on data sets it was not fitted on
(leave one data set out: a prediction is about a new data set, so its error is measured over
data sets, not over images):

* its absolute error against the constant that knows nothing about the data set (the mean
  gap of the other data sets);
* the regret of acting on it (fine-tune, i.e. run every arm and follow the verdict, when the
  predicted gap is positive; otherwise keep the probe and skip the end-to-end arms) against
  the policies that need no prediction: always the probe, always full, and always running
  every arm.

The model is shown to users (``transferlab plan``) only when, on held-out data sets, acting
on it beat all three and its gap was closer than the average gap's; otherwise the audit says
so and the plan stays silent about fine-tuning's gain. Its interval is the 10th to 90th percentile of the held-out errors: what
it missed by on data sets like the audit's, not a statement about data unlike them.

A ridge regression on standardized signals: with a few dozen data sets anything richer would
fit the noise of the truth (each gap carries the sampling error of two truth accuracies).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.errors import DataError

# The signals, all known once extract-features has run (its extract.json), and how each
# enters the model. Images per class on a log scale: each doubling of the data is worth about
# the same to fine-tuning.
SIGNALS = ("knn_val_acc", "logme", "h_score", "log2_per_class")
RIDGE = 1.0  # on standardized signals, in units of data sets
MODEL_FILE = Path(__file__).with_name("gap_model.json")


def signals_of(scores: dict[str, float], per_class: float) -> list[float]:
    """The model's inputs from extract.json's transferability scores and images per class."""
    values = {**scores, "log2_per_class": math.log2(max(per_class, 1.0))}
    missing = [s for s in SIGNALS if values.get(s) is None]
    if missing:
        raise ValueError(f"the gap model needs the signals {missing}: not in the transferability scores")
    return [float(values[s]) for s in SIGNALS]


@dataclass
class GapModel:
    """Fine-tuning minus probe, linear in the standardized signals."""

    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    residual_p10: float = 0.0
    residual_p90: float = 0.0
    shown: bool = False
    fitted_on: str = ""
    cv: dict[str, Any] = field(default_factory=dict)

    def predict(self, x: list[float]) -> float:
        z = (np.asarray(x) - np.asarray(self.mean)) / np.asarray(self.scale)
        return float(self.intercept + z @ np.asarray(self.coef))

    def interval(self, x: list[float]) -> tuple[float, float]:
        """The prediction plus the held-out errors' 10th and 90th percentiles (truth minus
        prediction)."""
        g = self.predict(x)
        return g + self.residual_p10, g + self.residual_p90

    def save(self, path: Path = MODEL_FILE) -> None:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path = MODEL_FILE) -> GapModel | None:
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as err:
            raise DataError(f"{path}: not a gap model ({err}); write it again with bench/audit.py") from None


def fit(x: np.ndarray, y: np.ndarray, ridge: float = RIDGE) -> GapModel:
    """Ridge regression of ``y`` (gaps) on ``x`` (rows of SIGNALS), standardized."""
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    z = (x - mean) / scale
    intercept = float(y.mean())
    coef = np.linalg.solve(z.T @ z + ridge * np.eye(z.shape[1]), z.T @ (y - intercept))
    return GapModel(mean.tolist(), scale.tolist(), coef.tolist(), intercept)


def cross_validate(
    x: np.ndarray, y: np.ndarray, regret: dict[str, np.ndarray], ridge: float = RIDGE
) -> dict[str, Any]:
    """Leave one data set out. ``regret`` holds, per data set, the truth regret of the
    policies the prediction chooses between and is compared with: "verdict" (run every arm,
    follow the verdict), "always the probe" and "always full"."""
    n = len(y)
    pred, const = np.empty(n), np.empty(n)
    for i in range(n):
        rest = np.arange(n) != i
        pred[i] = fit(x[rest], y[rest], ridge).predict(x[i].tolist())
        const[i] = y[rest].mean()
    acting = np.where(pred > 0, regret["verdict"], regret["always the probe"])
    residual = y - pred
    out: dict[str, Any] = {
        "datasets": n,
        "mae": float(np.abs(residual).mean()),
        "mae_constant": float(np.abs(y - const).mean()),
        "residual_p10": float(np.percentile(residual, 10)),
        "residual_p90": float(np.percentile(residual, 90)),
        "regret": {
            "acting on the prediction": float(acting.mean()),
            **{k: float(v.mean()) for k, v in regret.items()},
        },
        "fine_tune_advised": float((pred > 0).mean()),
    }
    r = out["regret"]
    # Acting on it must beat every policy that needs no prediction: always the probe, always
    # full, and always running every arm (a predictor that always advises fine-tuning is that
    # policy, whatever its error); and its gap must be closer than the average gap's.
    acting = r["acting on the prediction"]
    out["beats_trivial"] = bool(all(acting < r[k] for k in regret) and out["mae"] < out["mae_constant"])
    return out


def from_audit(rows: list[dict[str, Any]], fitted_on: str) -> GapModel | None:
    """The model fitted on every audited data set with the signals and the three policies'
    regrets, its cross-validation attached; None with fewer than 8 such data sets."""
    usable = [
        r
        for r in rows
        if r.get("truth_gap_finetuned_minus_probe") is not None
        and all(k in r["regret"] for k in ("verdict", "always the probe", "always full"))
    ]
    if len(usable) < 8:
        return None
    x = np.array([signals_of(r["signals"], r["per_class"]) for r in usable])
    y = np.array([r["truth_gap_finetuned_minus_probe"] for r in usable])
    regret = {
        k: np.array([r["regret"][k] for r in usable]) for k in ("verdict", "always the probe", "always full")
    }
    cv = cross_validate(x, y, regret)
    model = fit(x, y)
    model.residual_p10, model.residual_p90 = cv["residual_p10"], cv["residual_p90"]
    model.shown, model.fitted_on, model.cv = cv["beats_trivial"], fitted_on, cv
    return model


def plan_line(model: GapModel | None, scores: dict[str, float] | None, per_class: float) -> str | None:
    """The plan's line about fine-tuning's gain, or None when there is no shown model or no
    signals yet."""
    if model is None or not model.shown or not scores:
        return None
    x = signals_of(scores, per_class)
    lo, hi = model.interval(x)
    return (
        f"Predicted: fine-tuning minus probe {model.predict(x) * 100:+.1f} points [{lo * 100:+.1f}, "
        f"{hi * 100:+.1f}] (80% of held-out errors; fitted on {model.fitted_on}; held-out mean error "
        f"{model.cv['mae'] * 100:.1f} points against {model.cv['mae_constant'] * 100:.1f} for the average gap)."
    )
