"""Transferability scores against values computed by hand or by brute force."""

import numpy as np
import pytest

from transferlab.features.transferability import h_score, knn_accuracy, logme


def _log_evidence(f, y, alpha, beta):
    """The evidence of Bayesian linear regression written out with dense matrices."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    r = y - f @ m
    return (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - beta / 2 * r @ r
        - alpha / 2 * m @ m
        - 0.5 * np.linalg.slogdet(a)[1]
        - n / 2 * np.log(2 * np.pi)
    )


def _brute_force_logme(f, labels):
    """Maximise the evidence over a log grid of (alpha, beta), refined twice around the best."""
    per_class = []
    for c in np.unique(labels):
        y = (labels == c).astype(float)
        la, lb, span = 0.0, 0.0, 8.0
        for _ in range(3):
            grid = np.linspace(-span, span, 81)
            best = max(
                (_log_evidence(f, y, np.exp(la + a), np.exp(lb + b)), la + a, lb + b)
                for a in grid
                for b in grid
            )
            _, la, lb = best
            span /= 10
        per_class.append(best[0] / len(f))
    return np.mean(per_class)


def test_logme_is_the_maximised_evidence():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 12)
    f = rng.normal(size=(36, 4)) + np.eye(3, 4)[labels] * 1.5
    assert logme(f, labels) == pytest.approx(_brute_force_logme(f, labels), abs=2e-3)


def test_logme_prefers_features_that_carry_the_labels():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 50)
    noise = rng.normal(size=(200, 16))
    informative = noise + 3 * np.eye(4, 16)[labels]
    assert logme(informative, labels) > logme(noise, labels) + 0.1


def test_h_score_by_hand():
    labels = np.array([0, 0, 1, 1])
    # one feature: variance 5, variance of the class means 4
    assert h_score(np.array([[0.0], [2.0], [4.0], [6.0]]), labels) == pytest.approx(4 / 5)
    # a second feature, uninformative alone (class means 0) but correlated with the first's
    # noise: cov [[5, -1], [-1, 1]], between-class cov [[4, 0], [0, 0]], trace(inv @ B) = 1
    f = np.array([[0.0, 1.0], [2.0, -1.0], [4.0, 1.0], [6.0, -1.0]])
    assert h_score(f, labels) == pytest.approx(1.0)


def _on_circle(degrees):
    r = np.radians(np.asarray(degrees, dtype=float))
    return np.stack([np.cos(r), np.sin(r)], axis=1) * 3  # the scale must not matter (cosine)


def test_knn_accuracy_by_hand():
    train, train_labels = _on_circle([0, 10, 20, 90, 100, 110]), np.array([0, 0, 0, 1, 1, 1])
    query = _on_circle([5, 95, 100])
    # 5 deg -> its 3 neighbours are class 0 (right); 95 deg -> class 1 (right); 100 deg is
    # labelled 0 here -> the vote says 1 (wrong)
    assert knn_accuracy(train, train_labels, query, np.array([0, 1, 0]), k=3) == pytest.approx(2 / 3)


def test_knn_tie_goes_to_the_nearest():
    train, train_labels = _on_circle([0, 80]), np.array([0, 1])
    # one vote each: the nearer (0 deg, 30 away against 50) decides
    assert knn_accuracy(train, train_labels, _on_circle([30]), np.array([0]), k=2) == 1.0
    assert knn_accuracy(train, train_labels, _on_circle([50]), np.array([1]), k=2) == 1.0


def test_kendall_tau_by_hand_and_against_scipy():
    from scipy.stats import kendalltau

    from transferlab.features.transferability import kendall_tau

    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    # 3 items, pairs (1,2) concordant, (1,3) concordant, (2,3) discordant: (2 - 1) / 3
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.integers(0, 4, 9).astype(float), rng.integers(0, 4, 9).astype(float)  # with ties
        assert kendall_tau(list(x), list(y)) == pytest.approx(kendalltau(x, y).statistic)
    assert kendall_tau([1, 1, 1], [1, 2, 3]) is None and kendall_tau([1.0], [2.0]) is None
