import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from transferlab.metrics import classification_metrics, confusion_matrix, macro_f1


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
