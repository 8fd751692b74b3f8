"""The apps' view helpers and data readers on real images, volumes and result files (no streamlit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from apps import med_data, med_view, qc_data
from apps.args import app_argv, parse_app_args
from apps.qc_draw import PALETTE, ClassifierView, draw_defects, part_crops
from common.results import write_records
from industrial_qc.pipeline import OnnxClassifier
from tests.apps.helpers import tiny_classifier_onnx


# ------------------------------------------------------------------------------------------------ qc
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
    rng = np.random.default_rng(0)
    img = (rng.random((64, 64, 3)) * 60 + np.array([40, 120, 200])).astype(np.uint8)  # a tinted part
    boxes = np.array([[10, 10, 30, 30], [30, 20, 60, 50]], np.float32)
    for normalize in ("per_crop", "imagenet"):
        path = tmp_path / f"{normalize}.onnx"
        tiny_classifier_onnx(path, ["background", "scratch", "pit"], flat=True, metadata={"normalize": normalize})
        view, line = ClassifierView(path), OnnxClassifier(path)
        got, want = view.probs(view.crops(img, boxes)), line.probs(line.crops(img, boxes))
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


def test_qc_records_tolerate_missing_fields_and_csv_nesting(tmp_path):
    recs = [
        {"source": "a.png", "verdict": "FAIL", "timestamp": "2026-01-05T08:00:00+00:00",
         "defects": [{"box": [1, 2, 3, 4], "det_class": "pit", "det_conf": 0.4, "cls_class": "pit", "cls_prob": 0.8,
                      "defect_prob": 0.85}]},
        {"file": "b.png"},  # no verdict, status, time or defects: an ok PASS part
        {"source": "c.png", "status": "error", "reason": "cannot decode"},
    ]
    path = write_records(recs, tmp_path / "r.csv")  # defects become JSON strings in CSV
    parts = qc_data.load_parts(path)
    assert [p["verdict"] for p in parts] == ["FAIL", "PASS", "ERROR"]
    assert parts[0]["defects"][0]["cls_class"] == "pit" and parts[0]["max_defect_prob"] == 0.85
    # a record written before defect_score existed: the verdict read the probability
    assert parts[0]["defects"][0]["defect_score"] == 0.85 and parts[0]["max_defect_score"] == 0.85
    scored = qc_data.norm_record({"file": "d.png", "verdict": "REVIEW", "max_defect_score": 0.58, "defects": [
        {"box": [1, 2, 3, 4], "cls_class": "pit", "det_conf": 0.4, "defect_prob": 0.85, "defect_score": 0.58}]}, 3)
    assert scored["defects"][0]["defect_score"] == 0.58 and scored["max_defect_score"] == 0.58
    assert scored["max_defect_prob"] == 0.85
    # the name the line reports from both stages; a record from before it: the classifier's class
    assert (parts[0]["defects"][0]["class"], parts[0]["defects"][0]["class_prob"]) == ("pit", 0.8)
    both = qc_data.norm_defect({"box": [1, 2, 3, 4], "det_class": "crack", "cls_class": "scratch", "cls_prob": 0.55,
                                "class": "crack", "class_prob": 0.97, "defect_prob": 0.95})
    named = (both["class"], both["class_prob"], both["cls_class"], both["det_class"])
    assert named == ("crack", 0.97, "scratch", "crack")
    df = qc_data.parts_frame(parts, {"a.png": {"decision": "FAIL"}})
    assert df["reviewed"].tolist() == ["FAIL", "", ""]
    k = qc_data.kpis(df)
    assert (k["parts"], k["errors"], k["fail_rate"], k["reviewed"]) == (2, 1, 0.5, 1)


def test_yolo_export_sizes_boxes_from_the_upright_image_and_skips_an_unreadable_one(tmp_path):
    """A record without width/height (an older line, a CSV): the export reads the size from the image header,
    turned upright by its EXIF orientation as the line decoded it; a file that no longer decodes is listed as
    skipped, not exported."""
    from PIL import Image

    from apps.qc_review import read_image  # the app's own decoding

    im = Image.fromarray(np.zeros((40, 100, 3), np.uint8))  # stored 100 wide, shown 40 wide x 100 high
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "turned.jpg", exif=exif.tobytes())
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert read_image(tmp_path / "turned.jpg").shape == (100, 40, 3)
    review = {"decision": "FAIL", "details": {"defects": [{"action": "confirm", "label": "scratch",
                                                           "box": [10.0, 50.0, 30.0, 70.0]}]}}
    parts = [{"item": name, "file": str(tmp_path / name), "status": "ok", "width": None, "height": None}
             for name in ("turned.jpg", "broken.png")]
    res = qc_data.export_yolo(parts, {p["item"]: review for p in parts}, ["background", "scratch"],
                              tmp_path / "export")
    assert res.images == 1 and res.skipped == [f"{tmp_path / 'broken.png'}: unreadable image"]
    label = next((tmp_path / "export" / "labels").rglob("*.txt")).read_text().split()
    np.testing.assert_allclose([float(v) for v in label[1:]], [20 / 40, 60 / 100, 20 / 40, 20 / 100], atol=1e-6)


def test_fail_rate_per_class_over_time_and_measured_rates():
    t = pd.Timestamp("2026-01-05T08:00:00Z")
    df = pd.DataFrame({
        "item": list("abcdef"),
        "time": [t, t + pd.Timedelta("10s"), t + pd.Timedelta("1h"), t + pd.Timedelta("1h5min"),
                 t + pd.Timedelta("1h10min"), t + pd.Timedelta("1h20min")],
        "verdict": ["FAIL", "PASS", "FAIL", "FAIL", "PASS", "REVIEW"],
        "classes": [["pit"], [], ["pit", "stain"], ["stain"], [], ["stain"]],
        "top_prob": [0.9, 0.0, 0.95, 0.8, 0.1, 0.4],
        "reviewed": ["FAIL", "FAIL", "PASS", "", "PASS", "FAIL"],
    })
    rate = qc_data.fail_rate_by_class(df, "1h")
    assert rate.loc[t, "pit"] == 0.5 and rate.loc[t, "stain"] == 0.0
    assert rate.loc[t + pd.Timedelta("1h"), "stain"] == 0.5 and rate.loc[t + pd.Timedelta("1h"), "pit"] == 0.25
    m = qc_data.measured_rates(df)
    # reviewed defective: a (FAIL), b (PASS -> escape), f (REVIEW); reviewed good: c (FAIL -> false reject), e
    assert (m["defective"], m["good"]) == (3, 2)
    assert m["escape_rate"] == 1 / 3 and m["false_reject_rate"] == 0.5
    f = qc_data.Filters(classes=["stain"], prob_range=(0.5, 1.0))
    assert qc_data.filter_parts(df, f)["item"].tolist() == ["c", "d"]


# ------------------------------------------------------------------------------------------------ medical
def test_worklist_priority_and_row_formats(tmp_path):
    rows = [
        {"source": "s/neg.nii.gz", "label": "normal", "verdict": "negative", "score": 0.1,
         "probabilities": {"normal": 0.9, "lesion": 0.1}},
        {"source": "s/rev.nii.gz", "label": "lesion", "verdict": "REVIEW", "score": 0.5,
         "probabilities": {"normal": 0.5, "lesion": 0.5}},
        {"source": "s/bad", "status": "error", "reason": "missing slice"},
        {"source": "s/pos.nii.gz", "label": "lesion", "verdict": "positive", "p_normal": 0.2, "p_lesion": 0.8},
        {"source": "s/pos2.nii.gz", "label": "lesion", "verdict": "positive", "score": 0.99},
    ]
    path = write_records(rows, tmp_path / "results.csv")
    run = {"labels": ["normal", "lesion"], "decision": {"positive_label": "lesion"}}
    studies = med_data.load_studies(path, run)
    assert studies[3]["probabilities"] == {"normal": 0.2, "lesion": 0.8}  # eval's p_<label> columns
    assert studies[0]["qa"] == {} and studies[1]["study"] == "rev"
    wl = med_data.worklist(studies, {"s/rev.nii.gz": {"decision": "agree", "reviewer": "dr a"}})
    assert wl["study"].tolist() == ["pos2", "pos", "rev", "neg", "bad"]
    assert wl["status"].tolist() == ["not reviewed", "not reviewed", "reviewed", "not reviewed", "not reviewed"]
    assert med_data.positive_label({}, ["benign", "malignant"]) == "malignant"


def _volume(arr: np.ndarray, spacing, direction, origin) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    img.SetOrigin(origin)
    return img


def test_display_is_the_same_for_lps_and_ras_stored_copies():
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(8, 10, 12)).astype(np.float32)  # (z, y, x)
    lps = _volume(arr, (1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (0.0, 0.0, 0.0))
    # the same physical volume stored with x and y flipped (RAS-like): last voxel first, directions negated
    ras = _volume(arr[:, ::-1, ::-1], (1.0, 2.0, 3.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1), (11.0, 18.0, 0.0))
    a, b = med_view.for_display(lps), med_view.for_display(ras)
    np.testing.assert_array_equal(a.array, b.array)
    assert a.spacing == b.spacing == (1.0, 2.0, 3.0)
    # an overlay on one grid lands on the other: resampling in physical space
    np.testing.assert_allclose(med_view.resample_onto(ras, a.image), a.array, atol=1e-5)
    # coronal and sagittal show superior at the top; axial rows run anterior -> posterior
    assert np.array_equal(med_view.plane_slice(a.array, "coronal", 3)[0], a.array[-1, 3, :])
    assert np.array_equal(med_view.plane_slice(a.array, "sagittal", 4)[0], a.array[-1, :, 4])
    assert np.array_equal(med_view.plane_slice(a.array, "axial", 2), a.array[2])


def test_render_keeps_physical_aspect_and_blends_overlay():
    sl = np.tile(np.linspace(0, 100, 16, dtype=np.float32), (8, 1))  # 8 rows x 16 cols
    out = med_view.render(sl, (2.0, 1.0), 0.0, 100.0, side=160)  # rows 2 mm: 16 x 16 mm -> square
    assert out.shape == (160, 160, 3) and out[:, 0].max() < 10 and out[:, -1].min() > 245
    cam = np.zeros_like(sl)
    cam[4, 8] = 1.0
    hot = med_view.render(sl, (2.0, 1.0), 0.0, 100.0, overlay=cam, alpha=1.0, side=160)
    y, x = 4 * 20 + 10, 8 * 10 + 5
    assert hot[y, x, 0] > 100 and not np.array_equal(hot[y, x], out[y, x])  # jet red-ish at the hot voxel
    assert np.array_equal(hot[5, 5], out[5, 5])  # cold pixels untouched


def test_window_presets_and_n4_division():
    arr = np.concatenate([np.full(100, -1000.0), np.linspace(0, 200, 1000)]).astype(np.float32)
    lo, hi = med_view.window_range(med_view.MRI_AUTO, arr)
    assert 0 <= lo < 5 and 195 < hi <= 200  # background ignored
    assert med_view.window_range("CT lung (W1500 L-600)", arr) == (-1350.0, 150.0)
    assert med_view.presets_for("ct")[0].startswith("CT soft tissue") and med_view.presets_for("mri")[0] == \
        med_view.MRI_AUTO
    base = med_view.for_display(_volume(np.full((4, 4, 4), 10.0), (1, 1, 1), (1, 0, 0, 0, 1, 0, 0, 0, 1), (0, 0, 0)))
    bias = _volume(np.full((4, 4, 4), 2.0), (1, 1, 1), (1, 0, 0, 0, 1, 0, 0, 0, 1), (0, 0, 0))
    corrected, b = med_view.n4_corrected(base, bias)
    np.testing.assert_allclose(corrected.array, 5.0)
    np.testing.assert_allclose(b, 2.0)


def test_app_arguments_round_trip(tmp_path):
    argv = app_argv(tmp_path / "run", tmp_path / "r.jsonl", "postgresql+psycopg://u@h/db")
    args = parse_app_args(argv)
    assert args.run == (tmp_path / "run").resolve() and args.results == (tmp_path / "r.jsonl").resolve()
    assert args.db == "postgresql+psycopg://u@h/db"
    assert parse_app_args(app_argv("run", "r.csv", "my.sqlite")).db == str(Path.cwd() / "my.sqlite")
    args = parse_app_args(app_argv("run", "r.csv", None, tmp_path / "exports", [tmp_path / "a", tmp_path / "b"]))
    assert args.export_root == tmp_path / "exports" and args.data_roots == [tmp_path / "a", tmp_path / "b"]
    assert args.db is None
