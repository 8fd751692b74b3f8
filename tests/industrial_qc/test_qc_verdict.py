"""The verdict rule, threshold selection and the torch-free geometry (letterbox, NMS, decode, crops)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from industrial_qc.crops import (
    box_iou,
    crops_for_boxes,
    defect_free,
    hard_negative_boxes,
    matched_proposal_boxes,
    overlaps_any,
    random_background_boxes,
    square_regions,
)
from industrial_qc.pipeline import Detections, class_index, decode, defect_class_probs, letterbox, nms
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


def test_defect_free_keeps_only_candidates_clear_of_every_defect():
    gt = np.array([[10, 100, 210, 110]], np.float32)  # a long thin scratch
    dets = np.array([[190, 95, 215, 115],  # on its end: IoU < 0.1, but its crop shows the scratch
                     [100, 111, 120, 130],  # just below it (gap 1 px), inside the 25 % margin (2.5 px)
                     [100, 200, 120, 220],  # clear
                     [300, 10, 320, 30]], np.float32)  # clear
    assert box_iou(dets[:1], gt)[0, 0] < 0.1
    np.testing.assert_array_equal(defect_free(dets, gt), [False, False, True, True])
    assert defect_free(dets, np.zeros((0, 4), np.float32)).all()
    assert defect_free(np.zeros((0, 4), np.float32), gt).shape == (0,)


def test_letterbox_and_decode_map_back():
    img = np.zeros((60, 120, 3), np.uint8)
    out, r, (left, top) = letterbox(img, (96, 96))
    assert out.shape == (96, 96, 3)
    assert r == pytest.approx(0.8) and left == 0 and top == 24
    # one anchor at (48, 48) 10x10 with class-1 score 0.9, one weak anchor below conf
    raw = np.zeros((1, 4 + 3, 2), np.float32)
    raw[0, :4, 0] = [48, 48, 10, 10]
    raw[0, 5, 0] = 0.9
    raw[0, :4, 1] = [20, 20, 4, 4]
    raw[0, 4, 1] = 0.01
    det = decode(raw, conf=0.05, iou=0.5, max_det=10)
    assert len(det) == 1 and det.classes[0] == 1
    np.testing.assert_allclose(det.boxes[0], [43, 43, 53, 53])


def test_decode_keeps_the_best_candidates_below_conf_down_to_the_floor():
    raw = np.zeros((1, 4 + 2, 4), np.float32)
    raw[0, :4] = np.array([[20, 20, 8, 8], [21, 21, 8, 8], [60, 60, 6, 6], [80, 30, 6, 6]], np.float32).T
    raw[0, 4] = [0.003, 0.0025, 0.002, 0.0005]  # all below conf; the second overlaps the first; the last under floor
    kw = dict(conf=0.005, iou=0.3, max_det=12)
    assert len(decode(raw, **kw)) == 0 and len(decode(raw, **kw, min_keep=1)) == 0  # no floor: nothing
    one = decode(raw, **kw, min_keep=1, floor=0.001)
    assert one.scores.tolist() == pytest.approx([0.003])
    two = decode(raw, **kw, min_keep=3, floor=0.001)  # NMS first: the overlapping one and the one under floor go
    assert two.scores.tolist() == pytest.approx([0.003, 0.002])
    raw[0, 4, 2] = 0.5  # one candidate above conf: the rule changes nothing
    assert decode(raw, **kw, min_keep=1, floor=0.001).scores.tolist() == pytest.approx([0.5])
    assert decode(raw, **kw, min_keep=2, floor=0.001).scores.tolist() == pytest.approx([0.5, 0.003])


def test_decode_keeps_each_candidates_class_scores_with_it():
    raw = np.zeros((1, 4 + 3, 3), np.float32)
    raw[0, :4] = np.array([[20, 20, 8, 8], [60, 60, 6, 6], [21, 21, 8, 8]], np.float32).T
    raw[0, 4:] = np.array([[0.2, 0.6, 0.1], [0.7, 0.0, 0.3], [0.5, 0.1, 0.0]], np.float32).T
    det = decode(raw, conf=0.4, iou=0.3, max_det=12)  # the third overlaps the first and goes in NMS
    assert det.scores.tolist() == pytest.approx([0.7, 0.6])
    np.testing.assert_allclose(det.class_scores, [[0.7, 0.0, 0.3], [0.2, 0.6, 0.1]])
    low = decode(raw, conf=0.9, iou=0.3, max_det=12, min_keep=1, floor=0.001)  # the floor path keeps them too
    np.testing.assert_allclose(low.class_scores, [[0.7, 0.0, 0.3]])
    np.testing.assert_allclose(low.subset(np.array([True])).class_scores, [[0.7, 0.0, 0.3]])


def test_a_defect_is_named_by_both_stages():
    labels = ["background", "scratch", "pit", "crack"]
    assert class_index(["crack", "scratch", "pit"], labels).tolist() == [1, 2, 0]  # matched by name, not order
    assert class_index(["scratch", "pit"], labels) is None  # the detector does not know every class
    probs = np.array([[0.2, 0.45, 0.05, 0.30],  # the classifier leans scratch, the detector is sure of crack
                      [0.1, 0.50, 0.40, 0.00],  # the classifier rules crack out; the detector leans crack, then pit
                      [0.5, 0.10, 0.20, 0.20]])
    det = Detections(np.zeros((3, 4), np.float32), np.array([0.8, 0.5, 0.3], np.float32), np.array([0, 0, 1]),
                     np.array([[0.9, 0.05, 0.05], [0.6, 0.1, 0.5], [0.3, 0.3, 0.3]], np.float32))  # crack, scratch, pit
    idx = class_index(["crack", "scratch", "pit"], labels)
    named = defect_class_probs(probs, det, idx)
    np.testing.assert_allclose(named.sum(axis=1), 1.0)
    assert [labels[1 + k] for k in named.argmax(axis=1)] == ["crack", "pit", "pit"]
    # each factor normalised: (0.45 / 0.8) * (0.05 / 1.0) for scratch against (0.30 / 0.8) * (0.9 / 1.0) for crack
    assert named[0, 2] == pytest.approx(0.30 * 0.9 / (0.45 * 0.05 + 0.05 * 0.05 + 0.30 * 0.9))
    np.testing.assert_allclose(named[2], [1 / 5, 2 / 5, 2 / 5])  # a detector without a preference leaves the classifier
    # without the detector's class scores, or classes it does not know: the classifier's defect classes alone
    bare = Detections(det.boxes, det.scores, det.classes)
    for d, i in ((bare, idx), (det, None)):
        np.testing.assert_allclose(defect_class_probs(probs, d, i), probs[:, 1:] / probs[:, 1:].sum(1, keepdims=True))


def test_nms_is_class_agnostic_and_caps():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [70, 70, 80, 80]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, 0.5, 10).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.5, 2).tolist() == [0, 2]


def test_square_crops_have_context_and_reflect_at_the_border():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :100] = 200
    regions = square_regions(np.array([[10, 10, 30, 20]]), 200, 100, context=0.5, min_crop=0.1)
    np.testing.assert_allclose(regions[0], [20, 15, 40])  # side = 20 * (1 + 2 * 0.5)
    tiny = square_regions(np.array([[50, 50, 52, 52]]), 200, 100, context=0.5, min_crop=0.1)
    assert tiny[0, 2] == pytest.approx(10)  # min_crop * shorter side
    crops = crops_for_boxes(img, np.array([[0, 0, 10, 10], [150, 40, 160, 50]]), 32, 0.5, 0.1)
    assert crops.shape == (2, 32, 32, 3)
    assert crops[0].min() == 200  # reflected, not black, beyond the corner
    assert crops[1].max() == 0


@pytest.mark.parametrize("side", [95.0, 110.0, 150.0, 217.0])  # shrink factors 0.67 to 0.29 onto 64 px
def test_a_shrunk_crop_keeps_a_thin_line_continuous(side):
    """A 1-px scratch crossing the crop keeps the same ink in every column it crosses: point sampling would break
    it into dashes (a smooth line that looks jagged) or lose it between samples."""
    import cv2

    img = np.full((400, 400, 3), 128, np.uint8)
    cv2.line(img, (80, 150), (330, 260), (60, 60, 60), 1, cv2.LINE_AA)
    native_ink = (128.0 - img[:, 150:250, 0]).sum(axis=0).mean()
    crop = crops_for_boxes(img, np.array([[200 - side / 2, 200 - side / 2, 200 + side / 2, 200 + side / 2]]), 64,
                           context=0.0, min_crop=0.01)[0, ..., 0].astype(float)
    ink = (128.0 - crop[:, 8:56]).sum(axis=0)  # the line's darkening summed down each column it crosses
    assert ink.min() > 0.95 * ink.mean()
    assert ink.std() < 0.03 * ink.mean()
    assert ink.mean() == pytest.approx(native_ink * 64 / side, rel=0.05)  # area-preserving: no ink lost


def test_box_iou():
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou[0], [1.0, 1 / 3, 0.0], atol=1e-6)


def test_hard_negatives_never_touch_a_defect():
    gt = np.array([[0, 0, 100, 100]], np.float32)  # the box of a long diagonal scratch
    dets = np.array([[0, 0, 15, 15],  # one end of the scratch: IoU 0.02, but its crop shows the scratch
                     [110, 0, 130, 20],  # just outside, within the 25 % margin
                     [200, 200, 230, 230], [150, 200, 170, 220], [300, 10, 320, 30]], np.float32)
    scores = np.array([0.9, 0.8, 0.3, 0.5, 0.1], np.float32)
    assert box_iou(dets[:1], gt)[0, 0] < 0.1
    hn = hard_negative_boxes(dets, scores, gt, k=2)
    np.testing.assert_array_equal(hn, dets[[3, 2]])  # the two best clean ones, best first
    assert len(hard_negative_boxes(dets, scores, np.zeros((0, 4), np.float32), k=10)) == 5


def test_background_windows_fit_around_a_large_defect():
    """A defect 60 % of the part wide, grown by 25 % of its size, would cover 90 % of the part: its margin is
    capped at 5 % of the part (16 px) and the windows shrink until they fit, so such parts still give clean
    surface (0 of 50 windows before). None comes within 16 px of the defect. Small defects keep windows of their
    scale."""
    gt = np.array([[64, 64, 256, 256]], np.float32)
    wins = random_background_boxes(np.random.default_rng(0), 320, 320, gt, 50, np.array([0.6]))
    assert len(wins) >= 40
    assert not any(overlaps_any(w, gt, margin=0.25, max_grow=16.0) for w in wins)
    assert overlaps_any(np.array([40, 40, 50, 50]), gt, margin=0.25)  # ... which the uncapped margin forbids
    assert not overlaps_any(np.array([40, 40, 47, 47]), gt, margin=0.25, max_grow=16.0)
    small = np.array([[150, 150, 182, 182]], np.float32)
    wins = random_background_boxes(np.random.default_rng(0), 320, 320, small, 50, np.array([0.1]))
    assert len(wins) == 50 and np.median(np.maximum(wins[:, 2] - wins[:, 0], wins[:, 3] - wins[:, 1])) > 20


def test_training_warns_when_background_crops_are_few():
    from industrial_qc.train import background_warning

    assert background_warning([900, 300, 300, 300]) is None
    assert background_warning([200, 300, 300, 200]) is None  # a quarter of the defect crops
    said = background_warning([0, 9, 6, 7, 11])
    assert said.startswith("0 background crops for 33 defect crops") and "good parts" in said


def test_matched_proposals_take_the_class_of_the_defect_they_frame():
    gt = np.array([[0, 0, 40, 40], [100, 100, 120, 160]], np.float32)
    dets = np.array([[2, 2, 40, 42],  # defect 0, IoU 0.9
                     [0, 0, 30, 30],  # defect 0, IoU 0.56
                     [5, 5, 44, 40],  # defect 0, IoU 0.78
                     [20, 20, 60, 60],  # half on defect 0: IoU 0.14, neither a defect nor clean
                     [102, 98, 121, 158],  # defect 1
                     [200, 200, 240, 240]], np.float32)  # background
    boxes, classes = matched_proposal_boxes(dets, gt, np.array([2, 0]), k=2)
    np.testing.assert_array_equal(boxes, dets[[0, 2, 4]])  # the two best of defect 0, then defect 1
    np.testing.assert_array_equal(classes, [2, 2, 0])
    assert len(matched_proposal_boxes(dets, gt, np.array([2, 0]), k=0)[0]) == 0
    assert len(matched_proposal_boxes(dets, np.zeros((0, 4), np.float32), np.zeros(0), k=2)[0]) == 0


def test_line_confidence_keeps_the_target_share_of_findable_defects():
    from industrial_qc.detector import choose_conf
    from industrial_qc.pipeline import Detections

    gt = [np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32), np.array([[0, 0, 10, 10], [80, 80, 90, 90]],
                                                                              np.float32), np.zeros((0, 4))]
    dets = [Detections(np.array([[0, 0, 10, 10], [50, 50, 60, 61]], np.float32), np.array([0.5, 0.2], np.float32),
                       np.zeros(2, np.int64)),
            Detections(np.array([[1, 1, 10, 10], [30, 30, 40, 40]], np.float32), np.array([0.004, 0.9], np.float32),
                       np.zeros(2, np.int64)),  # the box at (80, 80) is never found
            Detections()]
    kw = dict(iou_thr=0.3, floor=0.001, ceiling=0.5)
    conf, recall = choose_conf(dets, gt, target_recall=0.98, **kw)
    assert conf == np.float32(0.004) and recall == 0.75  # all 3 findable boxes kept, not stuck at the floor
    conf, recall = choose_conf(dets, gt, target_recall=0.6, **kw)
    assert conf == np.float32(0.2) and recall == 0.5
    assert choose_conf([Detections()], [gt[0]], target_recall=0.98, **kw) == (0.001, 0.0)


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
