"""The QC part views (no streamlit): class-coloured boxes, crops scored by the line's own classifier reader, and
crops shown without a classifier."""

from __future__ import annotations

import numpy as np

from apps import qc_data
from apps.qc_draw import PALETTE, draw_defects, part_crops
from industrial_qc.pipeline import OnnxClassifier
from tests.apps.helpers import tiny_classifier_onnx


def test_boxes_are_drawn_in_their_class_colour():
    img = np.full((64, 64, 3), 128, np.uint8)
    defects = [qc_data.norm_defect({"box": [10, 10, 30, 30], "cls_class": "pit", "cls_prob": 0.9}),
               qc_data.norm_defect({"box": [40, 40, 60, 60], "cls_class": "stain", "cls_prob": 0.6})]
    out = draw_defects(img, defects, ["scratch", "pit", "stain"])
    assert out.shape == (512, 512, 3)  # small parts are upscaled for legibility (8x)
    rgb = lambda bgr: list(bgr[::-1])  # noqa: E731
    assert out[200, 80].tolist() == rgb(PALETTE[1])  # left edge of the pit box (x = 10 * 8)
    assert out[400, 320].tolist() == rgb(PALETTE[2])  # left edge of the stain box (x = 40 * 8)
    assert out[250, 250].tolist() == [128, 128, 128]  # inside: untouched


def test_crop_view_scores_crops_as_the_line_does(tmp_path):
    """The page's crop view (``part_crops`` with the run's classifier) shows the crops and probabilities the line
    computes with the same model, for both normalisations."""
    rng = np.random.default_rng(0)
    img = (rng.random((64, 64, 3)) * 60 + np.array([40, 120, 200])).astype(np.uint8)  # a tinted part
    boxes = np.array([[10, 10, 30, 30], [30, 20, 60, 50]], np.float32)
    for normalize in ("per_crop", "imagenet"):
        path = tmp_path / f"{normalize}.onnx"
        tiny_classifier_onnx(path, ["background", "scratch", "pit"], flat=True, metadata={"normalize": normalize})
        view, line = OnnxClassifier(path, threads=1), OnnxClassifier(path)
        defects = [{"box": box.tolist()} for box in boxes]
        crops, got = part_crops(img, defects, view)
        want = line.probs(line.crops(img, boxes))
        np.testing.assert_array_equal(np.stack(crops)[..., ::-1], line.crops(img, boxes))  # RGB of the same crops
        assert want.std() > 0.01  # the model does tell the crops apart
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_crops_without_a_classifier_show_a_hairline_scratch_whole():
    """A record read without its run still shows its defects' crops: the 1-px scratch of a 400-px box, shrunk to
    128 px, is one even line (no dashes), and a box at the corner is reflected, not black."""
    import cv2

    img = np.full((600, 600, 3), 128, np.uint8)
    cv2.line(img, (100, 260), (500, 340), (60, 60, 60), 1, cv2.LINE_AA)
    crops, probs = part_crops(img, [{"box": [100, 100, 500, 500]}, {"box": [0, 0, 20, 20]}], None)
    assert probs is None and [c.shape for c in crops] == [(128, 128, 3)] * 2
    ink = (128.0 - crops[0][:, 40:88, 0]).sum(axis=0)  # the line's darkening down each column it crosses
    assert ink.std() < 0.03 * ink.mean() and ink.min() > 0.95 * ink.mean()
    assert crops[1].min() == 128
