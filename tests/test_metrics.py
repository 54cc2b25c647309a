import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from transferlab.verdict.metrics import (
    bootstrap_ci,
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    macro_f1,
)


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_macro_f1_by_hand():
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 1 fp 1 fn 0 -> 2/3; class 2: tp 2 fp 0 fn 1 -> 0.8
    cm = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert macro_f1(cm) == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)


@pytest.mark.parametrize("seed", range(5))
def test_against_scikit_learn(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(200, 7, generator=g)
    labels = torch.randint(0, 7, (200,), generator=g)
    m = classification_metrics(logits, labels, 7)
    pred = logits.argmax(1).numpy()
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(labels, pred, average="macro"))
    assert m["nll"] == pytest.approx(
        skm.log_loss(labels, logits.softmax(1).numpy(), labels=range(7)), rel=1e-5
    )
    assert m["confusion"] == skm.confusion_matrix(labels, pred, labels=range(7)).tolist()


def test_balanced_accuracy_and_per_class_against_scikit_learn():
    g = torch.Generator().manual_seed(1)
    labels = torch.cat([torch.zeros(80, dtype=torch.long), torch.randint(1, 4, (20,), generator=g)])
    logits = torch.randn(100, 4, generator=g)
    m = classification_metrics(logits, labels, 4, bootstrap=0)
    pred = logits.argmax(1).numpy()
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, pred))
    p, r, f, s = skm.precision_recall_fscore_support(labels, pred, labels=range(4), zero_division=0)
    assert m["per_class"]["precision"] == pytest.approx(p.tolist())
    assert m["per_class"]["recall"] == pytest.approx(r.tolist())
    assert m["per_class"]["f1"] == pytest.approx(f.tolist())
    assert m["per_class"]["support"] == s.tolist()


def test_ece_by_hand():
    # Two bins used: conf 0.9 (2 items, 1 right) and conf 0.6 (2 items, 2 right).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 1])
    # bin of 0.9: |0.5 - 0.9| * 2/4 = 0.2; bin of 0.6: |1.0 - 0.6| * 2/4 = 0.2
    assert expected_calibration_error(probs, y) == pytest.approx(0.4)
    perfect = np.eye(3)[[0, 1, 2, 0]]
    assert expected_calibration_error(perfect, np.array([0, 1, 2, 0])) == 0.0


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small_y = rng.integers(0, 3, 50)
    small_pred = np.where(rng.random(50) < 0.8, small_y, (small_y + 1) % 3)
    big_y = rng.integers(0, 3, 2000)
    big_pred = np.where(rng.random(2000) < 0.8, big_y, (big_y + 1) % 3)
    lo, hi = bootstrap_ci(small_y, small_pred, 3)["accuracy"]
    assert lo <= (small_y == small_pred).mean() <= hi
    blo, bhi = bootstrap_ci(big_y, big_pred, 3)["accuracy"]
    assert (bhi - blo) < (hi - lo) / 3
    assert bootstrap_ci(small_y, small_pred, 3, seed=1) == bootstrap_ci(small_y, small_pred, 3, seed=1)
