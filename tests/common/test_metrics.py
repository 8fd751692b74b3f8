import math

import numpy as np
import pytest

from common.metrics import binary_rates, classification_metrics, expected_calibration_error, threshold_for_recall


def test_classification_metrics_hand_checked():
    # truth: 0 0 1 1 2 ; predictions: 0 1 1 1 0
    y = np.array([0, 0, 1, 1, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 0]] * 0.8 + 0.2 / 3
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    # recalls: a 1/2, b 2/2, c 0/1 -> balanced accuracy 0.5
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["per_class"]["a"]["precision"] == pytest.approx(1 / 2)  # predicted a twice, once right
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["recall"] == pytest.approx(1.0)
    assert m["per_class"]["b"]["f1"] == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))
    assert m["per_class"]["c"]["support"] == 1
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_auroc_binary_and_perfect_multiclass():
    y = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])  # one of four pairs misordered -> 0.75
    probs = np.stack([1 - scores, scores], axis=1)
    assert classification_metrics(y, probs, ["neg", "pos"])["auroc"] == pytest.approx(0.75)
    y3 = np.array([0, 1, 2, 0, 1, 2])
    assert classification_metrics(y3, np.eye(3)[y3], ["a", "b", "c"])["auroc"] == pytest.approx(1.0)
    assert classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.3, 0.7]]), ["n", "p"])["auroc"] is None


def test_ece_hand_checked():
    # Two samples at confidence 0.9, one right one wrong: |0.5 - 0.9| = 0.4 for all the mass.
    probs = np.array([[0.9, 0.1], [0.9, 0.1]])
    assert expected_calibration_error(np.array([0, 1]), probs) == pytest.approx(0.4)
    # Perfectly calibrated bin: 4 samples at 0.75, three right.
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(np.array([0, 0, 0, 1]), probs) == pytest.approx(0.0)


def test_threshold_for_recall():
    y = np.array([0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.6, 0.3, 0.5, 0.7, 0.9])
    t = threshold_for_recall(y, s, 1.0)
    assert t == pytest.approx(0.3)
    assert ((s >= t) & (y == 1)).sum() == 4
    t75 = threshold_for_recall(y, s, 0.75)  # 3 of 4 positives: threshold 0.5
    assert t75 == pytest.approx(0.5)
    assert math.isinf(threshold_for_recall(np.zeros(3), np.ones(3), 0.9))


def test_binary_rates():
    r = binary_rates(np.array([1, 1, 0, 0, 0]), np.array([1, 0, 0, 1, 0]))
    assert (r["tp"], r["fn"], r["tn"], r["fp"]) == (1, 1, 2, 1)
    assert r["sensitivity"] == pytest.approx(0.5) and r["specificity"] == pytest.approx(2 / 3)
