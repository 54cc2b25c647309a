"""Transferability scores: how well a frozen backbone's features will serve a task, guessed
from the cached features alone, before any head or fine-tuning is trained.

Three scores, each computed in about a second on a store of the default size:

- :func:`logme` (You et al., ICML 2021): the log marginal likelihood (evidence) of a
  Bayesian linear regression from the features to each class's one-hot target, with the
  prior and noise precisions set to their evidence-maximising values (MacKay's fixed
  point), averaged over classes and divided by the number of images. Higher is better.
- :func:`h_score` (Bao et al., ICIP 2019): tr(cov(f)^-1 cov(E[f | y])), how much of the
  features' variance lies between the class means. Higher is better.
- :func:`knn_accuracy`: the accuracy of a k-nearest-neighbour vote (cosine similarity)
  from the training images to the validation images: no fit at all. Sorkhei et al. (2025)
  find this plain baseline competitive with the others.

Published comparisons find these scores unstable as predictors of fine-tuned accuracy
(Agostinelli et al., ECCV 2022): they are a guess to be checked against what is measured,
not a substitute for measuring.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import polars as pl

    from transferlab.features.store import FeatureStore

_EPS = 1e-5  # keeps the fixed point away from division by zero on degenerate features


def _evidence(sigma: np.ndarray, proj: np.ndarray, y: np.ndarray, n: int, d: int) -> float:
    """Maximised log evidence of y ~ N(F w, 1/beta), w ~ N(0, 1/alpha) per image.

    ``sigma``: eigenvalues of F^T F (length d, zeros allowed); ``proj``: the eigenvectors'
    components of F^T y. Everything is expressed in the eigenbasis, so each iteration costs
    O(d): m's squared norm is sum (beta proj / (alpha + beta sigma))^2 and the residual is
    |y|^2 - 2 m.F^T y + m^T F^T F m.
    """
    yy = float(y @ y)
    alpha, beta = 1.0, 1.0
    for _ in range(100):
        denom = alpha + beta * sigma
        m = beta * proj / denom  # posterior mean, in the eigenbasis
        gamma = float(np.sum(beta * sigma / denom))  # effective number of parameters
        mm = float(m @ m)
        residual = max(yy - 2 * float(m @ proj) + float(np.sum(sigma * m * m)), 0.0)
        new_alpha = gamma / (mm + _EPS)
        new_beta = (n - gamma) / (residual + _EPS)
        done = abs(new_alpha / new_beta - alpha / beta) <= 1e-3 * (alpha / beta)
        alpha, beta = new_alpha, new_beta
        if done:
            break
    denom = alpha + beta * sigma
    m = beta * proj / denom
    mm = float(m @ m)
    residual = max(yy - 2 * float(m @ proj) + float(np.sum(sigma * m * m)), 0.0)
    return (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - 0.5 * float(np.sum(np.log(denom)))
        - beta / 2 * residual
        - alpha / 2 * mm
        - n / 2 * np.log(2 * np.pi)
    )


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of ``features`` (n, d) for integer ``labels`` (n,): mean over classes of the
    maximised log evidence per image."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    sigma, vecs = np.linalg.eigh(f.T @ f)
    sigma = np.clip(sigma, 0.0, None)
    scores = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        scores.append(_evidence(sigma, vecs.T @ (f.T @ y), y, n, d) / n)
    return float(np.mean(scores))


def h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """H-score: tr(pinv(cov f) cov(E[f | y])), the covariance of each image's class mean."""
    f = np.asarray(features, dtype=np.float64)
    f = f - f.mean(axis=0)
    cov = f.T @ f / len(f)
    means = np.zeros_like(f)
    for c in np.unique(labels):
        rows = labels == c
        means[rows] = f[rows].mean(axis=0)
    between = means.T @ means / len(f)
    return float(np.trace(np.linalg.pinv(cov, rcond=1e-10, hermitian=True) @ between))


def knn_accuracy(
    train: np.ndarray, train_labels: np.ndarray, query: np.ndarray, query_labels: np.ndarray, k: int = 10
) -> float:
    """Accuracy of a majority vote of the ``k`` most cosine-similar training images; a tie
    goes to the class of the nearest neighbour among the tied ones."""

    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    k = min(k, len(train))
    sim = unit(query) @ unit(train).T
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]  # most similar first
    correct = 0
    for row, truth in zip(nearest, query_labels, strict=True):
        votes = train_labels[row]
        counts = np.bincount(votes)
        tied = np.flatnonzero(counts == counts.max())
        pick = next(v for v in votes if v in tied)  # the nearest of the tied classes
        correct += int(pick == truth)
    return correct / max(len(query_labels), 1)


def kendall_tau(x: list[float], y: list[float]) -> float | None:
    """Kendall's tau-b between two scorings of the same items (ties in either counted as
    neither concordant nor discordant, and the denominator corrected for them); None when
    either scoring is constant or there are fewer than two items."""
    n = len(x)
    if n != len(y):
        raise ValueError(f"kendall_tau: {n} and {len(y)} values")
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx == dy:
                concordant += 1
            else:
                discordant += 1
    denom = np.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return None if denom == 0 else float((concordant - discordant) / denom)


# The scores read at most this many training (and validation) images, a seeded sample: LogME
# and H-score cost O(n d^2), k-NN O(n_train x n_val), and the ranking they give settles long
# before a million images.
MAX_ROWS = 10_000


def sample_mask(mask: np.ndarray, cap: int = MAX_ROWS, seed: int = 0) -> np.ndarray:
    """``mask`` with at most ``cap`` of its True entries kept, drawn with ``seed``."""
    idx = np.flatnonzero(mask)
    if len(idx) <= cap:
        return mask
    out = np.zeros_like(mask, dtype=bool)
    out[np.random.default_rng(seed).choice(idx, cap, replace=False)] = True
    return out


def score_store(store: FeatureStore, manifest: pl.DataFrame, seed: int) -> dict[str, Any]:
    """The three scores of a feature store's training images of the base splitting (k-NN
    scored on its validation images), each with the seconds it took. At most ``MAX_ROWS``
    images of each split, the same seeded sample for every store of one manifest (stores
    list their images in the same seeded order)."""
    from transferlab import layout
    from transferlab.data.manifest import split_view
    from transferlab.features.store import IMAGES

    x: dict[str, np.ndarray] = {}
    y: dict[str, np.ndarray] = {}
    for split in ("train", "val"):
        keep = sample_mask(store.select(IMAGES, split_view(manifest, layout.RAW, split).rows), seed=seed)
        feats, labels, _ = store.load(IMAGES, keep)
        x[split], y[split] = feats.numpy(), labels.numpy()
    return score_features(x["train"], y["train"], x["val"], y["val"])


def score_features(
    train: np.ndarray, train_labels: np.ndarray, val: np.ndarray, val_labels: np.ndarray
) -> dict[str, Any]:
    """The three scores of training features (k-NN: scored on validation), each with the
    seconds it took."""
    out: dict[str, Any] = {"scores": {}, "seconds": {}, "images": {"train": len(train), "val": len(val)}}
    for name, fn, inputs in (
        ("logme", logme, (train, train_labels)),
        ("h_score", h_score, (train, train_labels)),
        ("knn_val_acc", knn_accuracy, (train, train_labels, val, val_labels)),
    ):
        t = time.perf_counter()
        out["scores"][name] = fn(*inputs)
        out["seconds"][name] = round(time.perf_counter() - t, 3)
    return out
