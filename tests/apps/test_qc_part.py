"""The QC review page on a part-classifier run (apps.qc_part through streamlit's AppTest): the part beside its
heatmap (from the record, or computed with the run's model when the record's file is gone), the class
probabilities, class filters, and the operator's class and verdict decision in the review store."""

from __future__ import annotations

import pytest

from apps import qc_data
from common.store import open_store
from tests.apps.helpers import app_test, errors, no_exception, texts
from tests.industrial_qc.part_helpers import make_part_case

SAVE = "FormSubmitter:qc_form_{}-Save decision"


@pytest.fixture
def part_case(tmp_path):
    return make_part_case(tmp_path)


def part(case, i) -> str:
    return str(case["images"] / f"part_{i:02d}.png")


def open_page(case, app_argv, i: int | None = None):
    app_argv(case["run_dir"], "--results", case["results"], "--data-root", case["images"])
    at = app_test("qc_review.py")
    if i is not None:
        at.selectbox(key="qc_part").set_value(part(case, i)).run()
    no_exception(at)
    assert errors(at) == []
    return at


def test_failed_part_shows_its_heatmap_and_probabilities(part_case, app_argv):
    at = open_page(part_case, app_argv, 1)
    assert ":red-badge[FAIL]" in [m.value for m in at.markdown]
    assert len(at.image) == 2  # the part and its heatmap
    assert "heatmap written with the record" in texts(at.caption)
    probs = at.dataframe[1].value  # [0]: the parts table
    assert probs["class"].tolist()[0] == "scratch" and probs["probability"].iloc[0] > 0.9
    assert set(probs["class"]) == {"good", "scratch", "pit"}
    assert any("Top defect class **scratch** 1.00" in t for t in texts(at.markdown))


def test_missing_heatmap_is_computed_with_the_run_model(part_case, app_argv):
    at = open_page(part_case, app_argv, 3)
    assert len(at.image) == 2
    assert any("computed now with part_classifier.onnx" in t and "image not found" in t for t in texts(at.caption))


def test_without_the_model_the_records_still_show(part_case, app_argv):
    (part_case["run_dir"] / "part_classifier.onnx").unlink()
    app_argv(part_case["run_dir"], "--results", part_case["results"], "--data-root", part_case["images"])
    at = app_test("qc_review.py")
    no_exception(at)
    assert any("model file missing" in e for e in errors(at))  # said once, the page goes on
    at.selectbox(key="qc_part").set_value(part(part_case, 1)).run()
    assert len(at.image) == 2  # the record's heatmap
    at.selectbox(key="qc_part").set_value(part(part_case, 3)).run()
    assert len(at.image) == 1 and any("no heatmap" in t for t in texts(at.caption))
    no_exception(at)


def test_class_filter_uses_the_part_class(part_case, app_argv):
    at = open_page(part_case, app_argv)
    at.sidebar.multiselect(key="qc_f_class").set_value(["pit"]).run()
    assert at.selectbox(key="qc_part").options == ["FAIL  part_03.png"]
    at.sidebar.multiselect(key="qc_f_class").set_value(["scratch"]).run()
    assert at.selectbox(key="qc_part").options == ["FAIL  part_01.png", "REVIEW  part_02.png"]  # not the PASS one
    no_exception(at)


def test_operator_corrects_the_class_and_the_verdict_follows(part_case, app_argv):
    at = open_page(part_case, app_argv, 1)
    at.sidebar.text_input(key="qc_reviewer").set_value("ann")
    assert at.selectbox(key="qc_cls_1").value == "scratch"
    at.selectbox(key="qc_cls_1").set_value("pit")
    at.text_input(key="qc_note_1").set_value("a pit, not a scratch")
    at.button(key=SAVE.format(1)).click().run()
    no_exception(at)
    assert texts(at.success) == ["Saved review #1: part_01.png → FAIL"]
    assert at.selectbox(key="qc_part").value == part(part_case, 2)  # on to the next part
    at.selectbox(key="qc_part").set_value(part(part_case, 0)).run()
    assert at.selectbox(key="qc_cls_0").value == "good"  # a PASSed part: the good class
    at.button(key=SAVE.format(0)).click().run()
    at.selectbox(key="qc_part").set_value(part(part_case, 2)).run()
    at.selectbox(key="qc_cls_2").set_value("good")  # the REVIEW part is fine: auto verdict PASS
    at.button(key=SAVE.format(2)).click().run()
    no_exception(at)
    latest = open_store(part_case["db"]).latest_decisions(app="qc", run_id=part_case["run"]["run_id"])
    row = latest[part(part_case, 1)]
    assert row["decision"] == "FAIL" and row["reviewer"] == "ann" and row["note"] == "a pit, not a scratch"
    assert row["details"]["model_class"] == "scratch" and row["details"]["label"] == "pit"
    assert row["record"]["mode"] == "part" and row["record"]["verdict"] == "FAIL"
    assert latest[part(part_case, 0)]["decision"] == "PASS"
    assert latest[part(part_case, 2)]["decision"] == "PASS" and latest[part(part_case, 2)]["details"]["label"] == "good"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Reviewed (defective / good)"] == "1 / 2" and metrics["Escape rate"] == "0.0 %"


def test_part_records_read_from_csv(part_case, tmp_path):
    """Scores written as CSV (nested values as JSON text) read back with their probabilities and heatmap."""
    from common.results import read_jsonl, write_records

    csv = write_records(read_jsonl(part_case["results"]), tmp_path / "scores.csv")
    parts = {p["file"]: p for p in qc_data.load_parts(csv)}
    p = parts[part(part_case, 3)]
    assert p["mode"] == "part" and p["class"] == "pit" and set(p["probabilities"]) == {"good", "scratch", "pit"}
    assert p["heatmap"].endswith("part_03.png") and qc_data.part_classes(p) == ["pit"]
    assert parts[part(part_case, 0)]["heatmap"] is None and qc_data.part_classes(parts[part(part_case, 0)]) == []


def test_export_reviewed_parts_as_class_folders(part_case, app_argv, tmp_path):
    app_argv(part_case["run_dir"], "--results", part_case["results"], "--data-root", part_case["images"],
             "--export-root", tmp_path / "exports")
    at = app_test("qc_review.py")
    at.sidebar.text_input(key="qc_reviewer").set_value("ann")
    for i, label in ((1, "pit"), (0, None), (3, None)):
        at.selectbox(key="qc_part").set_value(part(part_case, i)).run()
        if label:
            at.selectbox(key=f"qc_cls_{i}").set_value(label)
        at.button(key=SAVE.format(i)).click().run()
    assert "Reviewed parts as class folders" in [s.value for s in at.subheader]
    at.text_input(key="qc_export_dir").set_value("reviewed")
    at.button(key="FormSubmitter:qc_export-Export class folders").click().run()
    no_exception(at)
    assert errors(at) == []
    assert texts(at.success)[-1].startswith("Exported 3 images to ")
    out = tmp_path / "exports" / "reviewed"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == ["good/00000_part_00.png", "pit/00001_part_01.png", "pit/00002_part_03.png"]  # record order
    assert (out / ".vsuite-export.json").is_file()
    at.button(key="FormSubmitter:qc_export-Export class folders").click().run()  # again: only when asked
    assert any("tick 'Replace the previous export'" in w for w in texts(at.warning))
    at.checkbox(key="qc_export_replace").check()
    at.button(key="FormSubmitter:qc_export-Export class folders").click().run()
    assert texts(at.success)[-1].endswith("replacing the previous export")
    no_exception(at)
