"""Crop geometry (torch-free): square crops with context, area-averaged shrinking, box overlap, and the clean
windows and proposals stage 2 trains on."""

from __future__ import annotations

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
