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

import numpy as np

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
