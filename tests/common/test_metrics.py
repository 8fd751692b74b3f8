import math

import numpy as np
import pytest

from common.calibration import fit_temperature, fit_temperature_bias, nll
from common.metrics import (
    binary_rates,
    classification_metrics,
    expected_calibration_error,
    softmax,
    threshold_for_recall,
)


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


def test_softmax_rows_sum_to_one_and_temperature_flattens():
    z = np.array([[2.0, 0.0, -1.0]])
    assert softmax(z).sum() == pytest.approx(1.0)
    assert softmax(z, 4.0).max() < softmax(z).max()


def test_temperature_recovers_known_scale():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 3)) * 2.0
    probs = softmax(true_logits)
    y = np.array([rng.choice(3, p=p) for p in probs])
    t = fit_temperature(true_logits * 3.0, y)  # over-confident by 3x
    assert t == pytest.approx(3.0, rel=0.1)
    assert nll(true_logits * 3.0, y, t) < nll(true_logits * 3.0, y, 1.0)


def test_temperature_on_a_perfectly_separated_split_stays_finite():
    """18 validation cases the model separates: hard-target NLL would push T to its bound and p to 0/1."""
    rng = np.random.default_rng(1)
    y = np.array([0] * 9 + [1] * 9)
    margin = np.where(y == 1, 1.0, -1.0) * rng.uniform(8, 30, size=18)  # confident and right
    logits = np.stack([-margin / 2, margin / 2], axis=1)
    t = fit_temperature(logits, y)
    p = softmax(logits, t)[np.arange(18), y]
    assert t > 1.0  # softened, not sharpened
    assert 0.8 < p.mean() < 0.999  # about (9 + 1) / (9 + 2) = 0.91, the confidence 9 cases per class support


def test_temperature_and_bias_calibrate_lopsided_logits():
    """Normals all at a small constant logit, positives far out (a CNN over a blob filter): T alone cannot put
    both classes near the confidence 9 cases support; T with a class offset can, and keeps the ranking."""
    rng = np.random.default_rng(2)
    y = np.array([0] * 9 + [1] * 9)
    d = np.where(y == 1, rng.uniform(60, 150, size=18), -10.0 + rng.normal(0, 0.1, size=18))
    logits = np.stack([np.zeros(18), d], axis=1)
    t_only = fit_temperature(logits, y)
    t, b = fit_temperature_bias(logits, y)
    assert b[0] == 0.0 and len(b) == 2
    p_t = softmax(logits, t_only)[np.arange(18), y]
    p_tb = softmax(logits / t + np.array(b))[np.arange(18), y]
    target = 10 / 11
    assert abs(p_tb[y == 0].mean() - target) < 0.05  # normals near 0.91 sure of being normal
    assert abs(p_tb[y == 0].mean() - target) < abs(p_t[y == 0].mean() - target)
    assert p_tb.min() > 0.5  # every case still on its own side
    # balanced, symmetric logits need no offset: the joint fit reduces to temperature scaling
    m = np.where(y == 1, 1.0, -1.0) * rng.uniform(8, 30, size=18)
    t2, b2 = fit_temperature_bias(np.stack([-m / 2, m / 2], axis=1), y)
    assert abs(b2[1]) < 0.5
    assert t2 > 1.0
