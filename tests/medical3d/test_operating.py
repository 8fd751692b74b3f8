"""Operating points a validation set can support: the Clopper-Pearson bound and the "cannot support" message, the
calibrated REVIEW band holding the wrong calls, the trade-off rows, and all of it in a tiny run's metrics, in
`vsuite med eval` and in its output."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest
from scipy.stats import binom
from typer.testing import CliRunner

from common.rundir import read_run_json
from medical3d.cli import app
from medical3d.operating import (
    GRID,
    Evidence,
    choose_operating_point,
    lower_bound,
    needed_for_zero_miss,
    rule_tradeoff,
    support_report,
    tradeoff,
    tradeoff_thresholds,
)
from medical3d.pipeline import StudyScorer
from medical3d.verdict import DecisionRule, band_edges


def test_lower_bound_is_clopper_pearson():
    assert lower_bound(7, 7, 0.95) == pytest.approx(0.6518, abs=1e-4)
    assert lower_bound(7, 7, 0.95) == pytest.approx(0.05 ** (1 / 7))  # zero misses: closed form
    for k, n in ((3, 10), (18, 20), (95, 100)):  # the bound L is where seeing >= k of n has probability 5 %
        assert binom.sf(k - 1, n, lower_bound(k, n, 0.95)) == pytest.approx(0.05, abs=1e-9)
    assert lower_bound(0, 5, 0.95) == 0.0 and lower_bound(0, 0, 0.95) is None
    assert needed_for_zero_miss(0.95, 0.95) == 59
    assert lower_bound(59, 59, 0.95) >= 0.95 > lower_bound(58, 58, 0.95)
    assert needed_for_zero_miss(1.0, 0.95) is None


def test_cannot_support_message_names_counts_bound_and_remedy():
    y = np.array([True] * 7 + [False] * 20)
    p = np.r_[np.linspace(0.6, 0.99, 7), np.linspace(0.01, 0.4, 20)]
    rep = support_report(Evidence(y, p, "val"), 0.5, 0.95, 0.95, "lesion", "normal")
    assert not rep["supported"] and (rep["n_pos"], rep["caught"], rep["n_neg"], rep["cleared"]) == (7, 7, 20, 20)
    assert rep["message"] == ("cannot support target sensitivity 0.95: 7 val lesion studies, 7 caught; the 95 % lower "
                              "bound is 0.65; a zero-miss bound of 0.95 needs >= 59 lesion studies (use "
                              "verdict.threshold_from=kfold or more data)")
    assert rep["specificity_bound"] == pytest.approx(0.05 ** (1 / 20))
    big = support_report(Evidence(np.array([True] * 100), np.full(100, 0.9), "kfold"), 0.5, 0.95, 0.95, "lesion")
    assert big["supported"] and big["message"].startswith("supports target sensitivity 0.95: 100 out-of-fold lesion")
    none = support_report(Evidence(np.array([False] * 5), np.full(5, 0.1), "val"), 0.5, 0.95, 0.95, "lesion")
    assert not none["supported"] and none["message"] == "cannot support target sensitivity 0.95: no val lesion studies"


def test_calibrated_band_sends_the_wrong_calls_to_review():
    """Confident studies right, the wrong calls in the middle: the calibrated band holds every error; the older
    threshold -/+ review_band band, narrowed to the evidence, misses some."""
    y = np.array([True] * 10 + [False] * 14 + [True, True, False, False, False, False])
    p = np.r_[np.linspace(0.93, 0.99, 10), np.linspace(0.01, 0.08, 14), [0.35, 0.8, 0.45, 0.7, 0.2, 0.85]]
    ev = Evidence(y, p, "val")
    op = choose_operating_point(ev, target=0.9, confidence=0.95, review_band=0.1, review_error=0.1)
    assert (op.review_low, op.review_high) == (0.1, 0.9) and op.report["errors"] == 2  # a miss, a false alarm
    assert op.report["errors_in_review"] == 1.0 and op.report["review"] == pytest.approx(6 / 30)
    rule = DecisionRule(labels=["normal", "lesion"], positive_label="lesion", threshold=op.threshold, review_band=0.1,
                        temperature=1.0, review_low=op.review_low, review_high=op.review_high, review_error=0.1)
    probs = np.c_[1 - p, p]
    wrong = np.array([c is not None and (c == "lesion") != t for c, t in zip(rule.predicted_labels(probs), y,
                                                                              strict=True)])
    assert wrong.any() and all(v == "REVIEW" for v in np.array(rule.verdicts(probs))[wrong])
    old = choose_operating_point(ev, target=0.9, confidence=0.95, review_band=0.1, review_error=None)
    assert old.threshold == op.threshold and old.report["errors_in_review"] < 1.0
    # other review_error values at the same threshold: a wider band never holds fewer errors
    opts = op.report["review_options"]
    assert [o["review_error"] for o in opts] == sorted(o["review_error"] for o in opts)
    assert [o["review"] for o in opts] == sorted((o["review"] for o in opts), reverse=True)


def test_calibrated_band_leaves_out_only_calls_wrong_less_than_review_error():
    """On calibrated scores (y drawn with probability p) the studies left outside the band are wrong at a rate
    below review_error: the band's promise."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 4000)
    y = rng.uniform(0, 1, 4000) < p
    op = choose_operating_point(Evidence(y, p, "val"), target=0.95, confidence=0.95, review_band=0.1, review_error=0.1)
    outside = (p < op.review_low) | (p >= op.review_high)
    wrong = (p >= op.threshold) != y
    assert outside.sum() > 300 and wrong[outside].mean() < 0.1
    assert op.report["supported"] == (op.report["sensitivity_bound"] >= 0.95)


def test_tradeoff_rows_are_monotone_and_mark_the_threshold():
    rng = np.random.default_rng(1)
    y = rng.uniform(size=60) < 0.4
    p = np.clip(rng.normal(np.where(y, 0.7, 0.3), 0.2), 0, 1)
    t = 0.4321
    rows = tradeoff(y, p, lambda th: band_edges(th, 0.1, 0.1), tradeoff_thresholds(t, p), chosen=t)
    th = [r["threshold"] for r in rows]
    assert th == sorted(th) and len(th) == len(set(th)) == len(set(p) | set(GRID) | {t})
    sens = [r["sensitivity"] for r in rows]
    spec = [r["specificity"] for r in rows]
    assert all(a >= b for a, b in pairwise(sens)) and all(a <= b for a, b in pairwise(spec))
    assert [r["threshold"] for r in rows if r["chosen"]] == [t] and sum(r["grid"] for r in rows) == len(GRID)
    at = next(r for r in rows if r["chosen"])
    assert at["sensitivity"] == pytest.approx((p[y] >= t).mean()) and at["errors"] == int(((p >= t) != y).sum())


def test_tradeoff_of_an_older_rule_uses_its_stored_band_at_its_threshold():
    rule = DecisionRule.from_metadata({"labels": ["normal", "lesion"], "threshold": 0.3, "review_band": 0.1,
                                       "review_low": 0.28, "review_high": 0.33})
    y = np.array([0, 0, 1, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.71, 0.29], [0.6, 0.4], [0.1, 0.9], [np.nan, np.nan], [0.75, 0.25]])
    rows = rule_tradeoff(y, probs, rule)
    at = next(r for r in rows if r["chosen"])
    assert (at["review_low"], at["review_high"]) == (0.28, 0.33)
    assert at["review"] == pytest.approx(1 / 5)  # the NaN row is left out
    other = next(r for r in rows if r["threshold"] == 0.5)
    assert (other["review_low"], other["review_high"]) == pytest.approx((0.4, 0.6))


def test_tiny_run_reports_its_operating_point_and_eval_its_tradeoff(med_tiny_run, med_tiny_data):
    run_dir, result = med_tiny_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    op = metrics["operating_point"]
    assert op["source"] == "val" and op["n_pos"] + op["n_neg"] == metrics["splits"]["val"]
    assert op["threshold"] == result.decision.threshold and op["n_pos"] < 59 and not op["supported"]
    assert op["message"].startswith("cannot support target sensitivity 0.95")
    assert read_run_json(run_dir)["metrics"]["operating_point"] == op
    assert [r["threshold"] for r in metrics["tradeoff"] if r["chosen"]] == [op["threshold"]]
    meta = StudyScorer(run_dir / "model.onnx").model.metadata
    assert meta["review_error"] == 0.1 and (meta["review_low"], meta["review_high"]) == (op["review_low"],
                                                                                         op["review_high"])
    res = CliRunner().invoke(app, ["eval", str(run_dir), str(med_tiny_data), "--split", "val", "--gradcam", "0"])
    assert res.exit_code == 0, res.output
    assert "val trade-off (* = the run's threshold)" in res.output and f"*{op['threshold']:.3f}" in res.output
    ev = json.loads((run_dir / "eval" / "val" / "metrics.json").read_text())
    chosen = [r for r in ev["tradeoff"] if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["threshold"] == op["threshold"]
    assert chosen[0]["sensitivity"] == ev["sensitivity"] and chosen[0]["specificity"] == ev["specificity"]
    assert read_run_json(run_dir)["eval"]["val"]["tradeoff"] == ev["tradeoff"]
