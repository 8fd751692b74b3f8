"""The verdict rule (a NaN is never PASSed), candidate scores and how the thresholds are chosen."""

from __future__ import annotations

import math

import numpy as np
import pytest

from industrial_qc.verdict import (
    PartSample,
    allowed_misses,
    binomial_upper,
    candidate_scores,
    choose_thresholds,
    part_rates,
    part_verdict,
    review_threshold,
)


@pytest.mark.parametrize(
    ("probs", "expected"),
    [
        ([], "PASS"),  # nothing detected
        ([0.1, 0.2], "PASS"),
        ([0.1, 0.3], "REVIEW"),  # exactly the review threshold
        ([0.5], "REVIEW"),
        ([0.2, 0.8], "FAIL"),  # exactly the fail threshold
        ([0.99], "FAIL"),
    ],
)
def test_part_verdict(probs, expected):
    assert part_verdict(probs, fail_threshold=0.8, review_threshold=0.3) == expected


def test_a_non_finite_score_is_never_passed():
    assert part_verdict([float("nan")], 0.8, 0.3) == "REVIEW"
    assert part_verdict([0.1, float("nan")], 0.8, 0.3) == "REVIEW"
    assert part_verdict([0.9, float("nan")], 0.8, 0.3) == "FAIL"
    assert part_verdict([float("inf") * 0], 0.8, 0.3) == "REVIEW"
    assert part_verdict([0.1], float("nan"), float("nan")) == "REVIEW"
    assert part_verdict([0.1], 0.8, 0.3) == "PASS"


def test_part_verdict_rejects_inverted_thresholds():
    with pytest.raises(ValueError):
        part_verdict([0.5], fail_threshold=0.3, review_threshold=0.6)


def test_thresholds_reach_target_recall_and_cap_false_rejects():
    rng = np.random.default_rng(0)
    defect_scores = rng.uniform(0.3, 1.0, 200)
    good_scores = rng.uniform(0.0, 0.7, 200)
    scores = np.concatenate([defect_scores, good_scores])
    defective = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    th = choose_thresholds(scores, defective, target_recall=0.99, max_false_reject=0.01, min_review=0.02,
                           max_review=0.5, min_fail=0.5)
    assert th.review <= th.fail
    verdicts = [part_verdict([s], th.fail, th.review) for s in scores]
    rates = part_rates(verdicts, defective)
    assert rates["escape_rate"] <= 0.01
    assert rates["false_reject_rate"] <= 0.01
    assert th.val_recall == pytest.approx(1 - rates["escape_rate"])
    assert rates["verdicts"]["REVIEW"] > 0  # the overlap goes to a person


def test_thresholds_when_perfectly_separated():
    scores = np.array([0.95, 0.9, 0.97, 0.01, 0.02, 0.03])
    defective = np.array([1, 1, 1, 0, 0, 0], bool)
    th = choose_thresholds(scores, defective, target_recall=0.99, max_false_reject=0.0, min_review=0.02,
                           max_review=0.5, min_fail=0.5)
    assert th.review == 0.5 and th.fail == 0.5  # review capped: p >= 0.5 is never passed
    assert th.val_recall == 1.0 and th.val_false_reject == 0.0 and th.val_review_rate == 0.0


def test_fail_threshold_reads_defect_free_regions_too():
    # 4 good val parts cannot place a 1 % false-reject point: alone they put it just above their maximum (0.6). The
    # defect-free regions of 96 defective parts say that 3 % of clean surface scores 0.9 or more.
    good = np.array([0.1, 0.2, 0.3, 0.6])
    defective_scores = np.full(96, 0.99)
    scores = np.concatenate([good, defective_scores])
    defective = np.r_[np.zeros(4, bool), np.ones(96, bool)]
    free = np.r_[np.full(93, 0.05), [0.9, 0.95, 0.97]]
    kw = dict(target_recall=0.99, max_false_reject=0.01, min_review=0.02, max_review=0.5, min_fail=0.5)
    alone = choose_thresholds(scores, defective, **kw)
    assert 0.6 < alone.fail < 0.61 and alone.fail_reference_parts == 4
    pooled = choose_thresholds(scores, defective, defect_free_scores=free, **kw)
    assert 0.95 < pooled.fail <= 0.97  # fails 1 of the 100 clean samples (allowed: 1 %)
    assert pooled.fail_reference_parts == 100 and pooled.fail_reference_false_alarm == pytest.approx(0.01)
    assert pooled.review == alone.review  # the review threshold still comes from the defective parts
    assert pooled.val_false_reject == 0.0


def test_candidate_score_is_the_geometric_mean_of_both_stages():
    p, conf = np.array([0.95, 0.8, 0.0, 1.0]), np.array([0.25, 0.04, 0.9, 1.0])
    assert candidate_scores(p, conf, "both") == pytest.approx([np.sqrt(0.95 * 0.25), np.sqrt(0.032), 0.0, 1.0])
    assert candidate_scores(p, conf, "classifier") == pytest.approx(p)
    with pytest.raises(ValueError, match="unknown verdict score"):
        candidate_scores(p, conf, "mean")


def test_binomial_upper_matches_the_distribution():
    for n, rate in ((75, 0.01), (100, 0.01), (500, 0.01), (20, 0.3), (10, 0.0)):
        k = binomial_upper(n, rate)
        cdf = [sum(math.comb(n, i) * rate**i * (1 - rate) ** (n - i) for i in range(j + 1)) for j in range(n + 1)]
        assert cdf[k] >= 0.95 and (k == 0 or cdf[k - 1] < 0.95), (n, rate, k)
    assert binomial_upper(75, 0.01) == 2 and binomial_upper(10, 0.0) == 0


def test_allowed_misses_is_the_one_sided_upper_bound():
    for n, rate, conf in ((299, 0.01, 0.95), (1000, 0.01, 0.95), (500, 0.02, 0.9), (40, 0.3, 0.8), (2000, 0.005, 0.99)):
        k = allowed_misses(n, rate, conf)
        cdf = [sum(math.comb(n, i) * rate**i * (1 - rate) ** (n - i) for i in range(j + 1)) for j in range(k + 2)]
        assert k >= 0 and cdf[k] <= 1 - conf < cdf[k + 1], (n, rate, conf, k)
    # 1 % at 95 % needs 299 parts without a miss: the benchmark's 75 val parts cannot show it
    assert allowed_misses(298, 0.01, 0.95) == -1 and allowed_misses(75, 0.01, 0.95) == -1
    assert allowed_misses(75, 0.01, 0.0) == 0 and allowed_misses(250, 0.01, 0.0) == 2  # the point estimate
    assert allowed_misses(100, 0.0, 0.95) == -1  # 100 % recall can never be shown


def test_review_threshold_too_few_defective_parts_stay_at_the_floor():
    rng = np.random.default_rng(3)
    s = rng.uniform(0.3, 1.0, 75)
    ref = PartSample(np.r_[s, np.zeros(25)], np.r_[np.ones(75, bool), np.zeros(25, bool)])
    kw = dict(target_recall=0.99, min_review=0.02, max_review=0.5)
    t, k, note = review_threshold(ref, confidence=0.95, **kw)
    assert (t, k) == (0.02, -1) and "75 defective reference parts" in note and "floor 0.02" in note
    assert review_threshold(ref, confidence=0.0, **kw) == (pytest.approx(s.min()), 0, None)
    th = choose_thresholds(ref.scores, ref.defective, recall_confidence=0.95, max_false_reject=0.01, min_fail=0.5,
                           **kw)
    assert th.review == 0.02 and th.review_misses_allowed == -1 and th.review_note == note
    assert th.recall_confidence == 0.95 and th.val_recall == 1.0


def test_review_threshold_with_a_margin_holds_the_recall_on_new_parts():
    # defect scores ~ U(0, 1): the true miss rate at threshold t is t. From 1000 parts, the point estimate (10th
    # lowest) overshoots 1 % about half the time; the 95 % bound holds it in at least 95 % of the draws
    rng = np.random.default_rng(4)
    kw = dict(target_recall=0.99, min_review=1e-6, max_review=0.5)
    point, bound = [], []
    for _ in range(400):
        ref = PartSample(rng.uniform(0, 1, 1000), np.ones(1000, bool))
        point.append(review_threshold(ref, confidence=0.0, **kw)[0])
        t, k, note = review_threshold(ref, confidence=0.95, **kw)
        assert k == 4 and note is None
        bound.append(t)
    assert np.mean(np.array(point) <= 0.01) < 0.7
    assert np.mean(np.array(bound) <= 0.01) >= 0.95


def _parts(rng, n_def, n_good, defect_scores):
    scores = np.r_[defect_scores(rng, n_def), rng.uniform(0.0, 0.5, n_good)]
    return scores, np.r_[np.ones(n_def, bool), np.zeros(n_good, bool)], rng.uniform(0.0, 0.5, n_def)


def test_thresholds_read_from_the_train_split_when_val_agrees():
    # one distribution, 5x the parts in train: the review threshold is the val parts' minimum alone (99 % of 75) and
    # an order statistic of 375 parts with train; val's misses at it stay within what a 1 % miss rate gives
    rng = np.random.default_rng(1)
    same = lambda r, n: r.beta(5, 1, n)  # noqa: E731
    vs, vy, vf = _parts(rng, 75, 25, same)
    ts, ty, tf = _parts(rng, 300, 100, same)
    kw = dict(target_recall=0.99, max_false_reject=0.01, min_review=0.02, max_review=0.5, min_fail=0.5)
    alone = choose_thresholds(vs, vy, defect_free_scores=vf, **kw)
    both = choose_thresholds(vs, vy, defect_free_scores=vf, train=PartSample(ts, ty, tf), score="both", **kw)
    assert alone.reference == "val" and alone.review_reference_parts == 75 and alone.fail_reference_parts == 100
    assert both.reference == "train+val" and both.reference_note is None and both.score == "both"
    assert both.review_reference_parts == 375 and both.fail_reference_parts == 500
    pooled = np.r_[vs[vy], ts[ty]]
    assert (pooled < both.review).mean() <= 0.01 < (pooled <= both.review).mean()
    assert alone.review == pytest.approx(vs[vy].min())
    assert both.val_parts == 100 and both.val_recall == pytest.approx((vs[vy] >= both.review).mean())


def test_a_train_split_the_model_memorised_is_not_used():
    # train defects all score ~1 (memorised), val defects as on the line: the pooled review threshold would pass
    # several val defects, more than a 1 % miss rate explains, so val alone decides and the note says why
    rng = np.random.default_rng(2)
    vs, vy, vf = _parts(rng, 75, 25, lambda r, n: r.uniform(0.05, 1.0, n))
    ts, ty, tf = _parts(rng, 300, 100, lambda r, n: r.uniform(0.99, 1.0, n))
    kw = dict(target_recall=0.99, max_false_reject=0.01, min_review=0.02, max_review=0.5, min_fail=0.5)
    th = choose_thresholds(vs, vy, defect_free_scores=vf, train=PartSample(ts, ty, tf), **kw)
    alone = choose_thresholds(vs, vy, defect_free_scores=vf, **kw)
    assert th.reference == "val" and "train split not used" in th.reference_note
    assert (th.review, th.fail, th.review_reference_parts) == (alone.review, alone.fail, 75)
    assert th.val_recall == 1.0
