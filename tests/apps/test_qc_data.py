"""QC review data without streamlit: records read whatever fields they carry, the parts table, filters and KPIs,
rates against reviewed truth, and the YOLO export of reviewed parts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from apps import qc_data
from common.results import write_records


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
