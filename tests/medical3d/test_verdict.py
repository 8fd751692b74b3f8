"""The verdict rule: calibrated probabilities to positive / negative / REVIEW, the threshold chosen for a target
sensitivity with the validation margin, the REVIEW band narrowed to the validation evidence, and fail safe rows."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InputError
from medical3d.verdict import DecisionRule, band_edges, choose_threshold, review_edges, uncertainty_edges
from tests.medical3d.helpers import LABELS, META


def test_threshold_keeps_the_validation_margin():
    y = np.array([True] * 4 + [False] * 4)
    p = np.array([0.99, 0.97, 0.95, 0.9, 0.2, 0.1, 0.05, 0.01])
    t = choose_threshold(y, p, 0.95)  # every positive must be caught: below 0.9, above 0.2
    assert 0.2 < t < 0.9
    assert abs(np.log(t / (1 - t)) - (np.log(9) + np.log(0.25)) / 2) < 1e-6  # halfway in log-odds
    assert choose_threshold(y, np.array([0.99] * 4 + [0.995] * 4), 0.95) == pytest.approx(0.99)  # no margin


def test_review_band_narrows_to_the_validation_evidence():
    """All normals at one score within review_band of the threshold must not all go to REVIEW; a study between
    the validation groups, where there is no evidence, must."""
    y = np.array([False] * 9 + [True] * 9)
    p = np.array([0.19] * 8 + [0.20, 0.37, 0.5, 0.8, 0.9, 0.9, 0.95, 0.97, 0.98, 0.99])
    t = choose_threshold(y, p, 0.95)
    low, high = review_edges(y, p, t, 0.1)
    assert 0.20 < low <= t <= high <= 0.37
    rule = DecisionRule(labels=["lesion", "normal"], positive_label="lesion", threshold=t, review_band=0.1,
                        temperature=1.0, review_low=low, review_high=high)
    probs = lambda v: np.array([[v, 1 - v]])  # noqa: E731
    assert rule.verdicts(probs(0.20)) == ["negative"] and rule.verdicts(probs(0.19)) == ["negative"]
    assert rule.verdicts(probs(0.30)) == ["REVIEW"] and rule.verdicts(probs(0.37)) == ["positive"]
    back = DecisionRule.from_metadata(rule.to_dict())
    assert back.band == (low, high)
    # without validation edges (older runs) the band is threshold -/+ review_band
    old = DecisionRule(labels=["lesion", "normal"], positive_label="lesion", threshold=0.5, review_band=0.1,
                       temperature=1.0)
    assert old.band == (0.4, 0.6) and old.verdicts(probs(0.45)) == ["REVIEW"]
    # overlapping validation groups: the band never gets wider than review_band, nor crosses the threshold
    lo2, hi2 = review_edges(np.array([False, True, False, True]), np.array([0.6, 0.4, 0.2, 0.9]), 0.5, 0.1)
    assert 0.4 <= lo2 <= 0.5 <= hi2 <= 0.6


def test_decision_rule_never_calls_a_non_finite_row():
    binary = DecisionRule.from_metadata(META)
    probs = np.array([[np.nan, np.nan], [0.1, 0.9], [0.9, 0.1], [np.inf, 0.0]])
    assert binary.verdicts(probs) == ["REVIEW", "positive", "negative", "REVIEW"]
    assert binary.predicted_labels(probs) == [None, "lesion", "normal", None]
    p = binary.probabilities(np.array([[-np.inf, 0.0], [np.nan, 1.0], [0.0, 3.0]]))
    assert np.isnan(p[:2]).all() and binary.verdicts(p) == ["REVIEW", "REVIEW", "positive"]
    multi = DecisionRule(labels=["a", "b", "c"], positive_label="c", threshold=0.5, review_band=0.2, temperature=1.0)
    probs3 = np.array([[np.nan, 0.5, 0.5], [0.05, 0.05, 0.9]])
    assert multi.verdicts(probs3) == ["REVIEW", "c"] and multi.predicted_labels(probs3) == [None, "c"]


def test_decision_rule_keeps_old_runs_defaults():
    rule = DecisionRule.from_metadata({"labels": LABELS})  # metadata from before thresholds were stored
    assert (rule.positive_label, rule.threshold, rule.review_band, rule.temperature) == ("lesion", 0.5, 0.0, 1.0)
    assert rule.review_error is None


def test_calibrated_band_and_older_metadata():
    """REVIEW where the calibrated chance of a wrong call exceeds review_error; metadata written before
    review_error existed loads with its stored edges, and a stored review_error round-trips."""
    assert uncertainty_edges(0.257, 0.1) == (0.1, 0.9)
    assert uncertainty_edges(0.05, 0.1) == (0.05, 0.9)  # below e: a negative call is wrong less than e
    assert uncertainty_edges(0.95, 0.1) == (0.1, 0.95)
    assert band_edges(0.3, 0.1, 0.1) == (0.1, 0.9) and band_edges(0.3, 0.1, None) == pytest.approx((0.2, 0.4))
    old = {k: v for k, v in META.items() if k != "review_error"}
    rule = DecisionRule.from_metadata(old)
    assert rule.review_error is None and rule.band == (0.45, 0.55)
    new = DecisionRule(labels=LABELS, positive_label="lesion", threshold=0.257, review_band=0.1, temperature=1.0,
                       review_low=0.1, review_high=0.9, review_error=0.1)
    back = DecisionRule.from_metadata(new.to_dict())
    assert back.review_error == 0.1 and back.band == (0.1, 0.9)
    probs = np.array([[0.95, 0.05], [0.85, 0.15], [0.2, 0.8], [0.05, 0.95]])
    assert back.verdicts(probs) == ["negative", "REVIEW", "REVIEW", "positive"]
    with pytest.raises(InputError, match="review_error 0.7 must be a finite number in"):
        DecisionRule.from_metadata({**old, "review_error": 0.7})


def test_review_edges_stay_within_probabilities():
    """A low threshold with no evidence negative under it: the edge is 0, not negative, so the rule loads back."""
    low, high = review_edges(np.array([True, True]), np.array([0.06, 0.9]), 0.05, 0.1)
    assert (low, high) == (0.0, 0.06)
    rule = DecisionRule(labels=LABELS, positive_label="lesion", threshold=0.05, review_band=0.1, temperature=1.0,
                        review_low=low, review_high=high)
    assert DecisionRule.from_metadata(rule.to_dict()).band == (0.0, 0.06)
