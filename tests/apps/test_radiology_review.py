"""The radiologist dashboard through streamlit's AppTest: worklist priority, the 3-plane viewer with N4 and
Grad-CAM, sign-off into the database, audit, CSV export, and the bad-input cases (error element, no exception)."""

from __future__ import annotations

import csv

from common.rundir import update_run_json
from common.store import open_store
from tests.apps.helpers import app_test, errors, make_med_case, no_exception, texts
from tests.apps.test_med_data import operating_fields

SIGN = "FormSubmitter:med_{}_form-Sign off"


def study(case, name) -> str:
    return str(case["root"] / "studies" / f"{name}.nii.gz")


def test_worklist_priority_viewer_and_sign_off(med_case, app_argv):
    app_argv(med_case["run_dir"], "--results", med_case["results"], "--data-root", med_case["root"] / "studies")
    at = app_test("radiology_review.py")
    no_exception(at)
    assert errors(at) == []
    # positive and REVIEW first, then by probability; negatives; the failed study last
    assert at.selectbox(key="med_study").options == [
        "positive  case_001  (not reviewed)", "positive  case_004  (not reviewed)", "REVIEW  case_000  (not reviewed)",
        "negative  ct_003  (not reviewed)", "negative  case_002  (not reviewed)", "ERROR  case_005  (not reviewed)"]
    at.selectbox(key="med_study").set_value(study(med_case, "case_000")).run()
    no_exception(at)
    assert errors(at) == []
    assert ":orange-badge[REVIEW]" in [m.value for m in at.markdown]
    assert len(at.image) == 3  # axial, coronal, sagittal
    # slices open through the Grad-CAM's hottest point (x=21, y=13, z=16 in the LPS display grid)
    planes = {s.label: s for s in at.slider if s.label in ("axial", "coronal", "sagittal")}
    assert (planes["axial"].value, planes["coronal"].value, planes["sagittal"].value) == (16, 13, 21)
    assert at.selectbox(key="med_0_wl_Original").value.startswith("MRI auto")
    first = at.image[0].value
    planes["axial"].set_value(5).run()
    assert at.image[0].value != first and at.image[0].captions == ["axial 6/32"]
    for view in ("N4-corrected", "Bias field", "Preprocessed"):
        at.radio(key="med_0_view").set_value(view).run()
        no_exception(at)
        assert errors(at) == [] and len(at.image) == 3, view
        assert any(c.value.startswith(view) for c in at.caption)
    at.slider(key="med_0_alpha").set_value(0.9).run()
    at.toggle(key="med_0_cam").set_value(False).run()
    no_exception(at)
    # sign-off: disagree, the correct label, a finding, a note, the reviewer
    at.radio(key="med_0_decision").set_value("disagree")
    at.selectbox(key="med_0_truth").set_value("normal")
    at.text_input(key="med_0_finding").set_value("vessel, no lesion")
    at.text_area(key="med_0_note").set_value("flow artefact")
    at.text_input(key="med_0_reviewer").set_value("Dr. Grey")
    at.button(key=SIGN.format(0)).click().run()
    no_exception(at)
    assert errors(at) == []
    assert texts(at.success) == ["Signed off #1: case_000 → disagree"]
    row = open_store(med_case["db"]).latest_decisions(app="med", run_id=med_case["run"]["run_id"])[
        study(med_case, "case_000")]
    assert (row["reviewer"], row["decision"], row["finding"], row["note"]) == (
        "Dr. Grey", "disagree", "vessel, no lesion", "flow artefact")
    assert row["details"]["truth_label"] == "normal" and row["details"]["predicted_label"] == "lesion"
    assert row["record"]["study"] == "case_000" and row["record"]["verdict"] == "REVIEW"
    assert "REVIEW  case_000  (reviewed)" in at.selectbox(key="med_study").options
    assert at.selectbox(key="med_study").value == study(med_case, "ct_003")  # moved on to the next study
    # the audit view lists the sign-off
    audit = next(d.value for d in at.dataframe if "truth_label" in d.value.columns)
    assert audit[["study", "decision", "truth_label", "reviewer"]].values.tolist() == [
        ["case_000", "disagree", "normal", "Dr. Grey"]]


def test_changed_mind_history_and_csv_export(med_case, app_argv):
    app_argv(med_case["run_dir"], "--results", med_case["results"], "--data-root", med_case["root"] / "studies",
             "--export-root", med_case["root"] / "export")
    at = app_test("radiology_review.py")
    for decision in ("agree", "disagree", "agree"):
        at.selectbox(key="med_study").set_value(study(med_case, "case_001")).run()
        at.radio(key="med_1_decision").set_value(decision)
        if decision == "agree":  # typed once; the form keeps it
            assert at.text_input(key="med_1_reviewer").value in ("", "Dr. Grey")
            at.text_input(key="med_1_reviewer").set_value("Dr. Grey")
        at.button(key=SIGN.format(1)).click().run()
        no_exception(at)
    store = open_store(med_case["db"])
    hist = store.history(app="med", item=study(med_case, "case_001"))
    assert [h["decision"] for h in hist] == ["agree", "disagree", "agree"]
    assert [h["latest"] for h in hist] == [False, False, True]
    assert {h["reviewer"] for h in hist} == {"Dr. Grey"}
    # the next study's form starts with the last reviewer's name
    at.selectbox(key="med_study").set_value(study(med_case, "case_000")).run()
    assert at.text_input(key="med_0_reviewer").value == "Dr. Grey"
    out = med_case["root"] / "export" / "signoffs.csv"  # a name under the export root given at launch
    assert at.text_input(key="med_export_path").value == "signoffs.csv"
    at.button(key="FormSubmitter:med_export-Write CSV").click().run()
    no_exception(at)
    assert texts(at.success)[-1] == f"Wrote 3 sign-offs to {out}"
    assert open_store(med_case["db"]).audit(app="med", limit=1)[0]["action"] == "export.csv"
    rows = list(csv.DictReader(out.open()))
    assert [r["decision"] for r in rows] == ["agree", "disagree", "agree"]
    assert [r["latest"] for r in rows] == ["False", "False", "True"]
    assert at.download_button[0].proto.label == "Download sign-offs (CSV)"
    # filter the worklist on status
    at.sidebar.radio(key="med_f_status").set_value("reviewed").run()
    assert at.selectbox(key="med_study").options == ["positive  case_001  (reviewed)"]


def test_ct_presets_and_computed_n4(med_case, app_argv):
    app_argv(med_case["run_dir"], "--results", med_case["results"], "--data-root", med_case["root"] / "studies")
    at = app_test("radiology_review.py")
    at.selectbox(key="med_study").set_value(study(med_case, "ct_003")).run()
    wl = at.selectbox(key="med_3_wl_Original")
    assert wl.options[:3] == ["CT soft tissue (W400 L40)", "CT lung (W1500 L-600)", "CT bone (W1800 L400)"]
    wl.set_value("CT bone (W1800 L400)").run()
    no_exception(at)
    assert any("window [-500.0, 1300.0]" in c.value for c in at.caption)
    # an MRI study the scorer wrote no artifacts for: Grad-CAM and network input found in RUN/eval, N4 on demand
    at.selectbox(key="med_study").set_value(study(med_case, "case_002")).run()
    assert not any("no Grad-CAM map" in c.value for c in at.caption)
    planes = {s.label: s.value for s in at.slider if s.label in ("axial", "coronal", "sagittal")}
    assert planes == {"axial": 16, "coronal": 13, "sagittal": 21}
    at.radio(key="med_2_view").set_value("Preprocessed").run()
    assert errors(at) == [] and not any("no preprocessed volume" in i.value for i in at.info)
    at.radio(key="med_2_view").set_value("N4-corrected").run()
    assert any("wrote no bias field" in i.value for i in at.info)
    at.button(key="med_2_n4_btn").click().run()
    no_exception(at)
    assert errors(at) == []
    at.run()
    assert not any("wrote no bias field" in i.value for i in at.info)
    assert len(at.image) == 3


def test_unreadable_study_and_failed_row_show_errors(med_case, app_argv):
    app_argv(med_case["run_dir"], "--results", med_case["results"], "--data-root", med_case["root"] / "studies")
    at = app_test("radiology_review.py")
    at.selectbox(key="med_study").set_value(study(med_case, "case_004")).run()
    no_exception(at)
    assert any("case_004.nii.gz: cannot read study" in e for e in errors(at))
    at.selectbox(key="med_study").set_value(str(med_case["root"] / "studies" / "case_005")).run()
    no_exception(at)
    assert any("case_005: scoring failed: case_005: DICOM series has a missing slice" in e for e in errors(at))
    # and the app keeps working
    at.selectbox(key="med_study").set_value(study(med_case, "case_001")).run()
    assert errors(at) == [] and len(at.image) == 3


def test_missing_results_and_run_without_model(tmp_path, app_argv):
    case = make_med_case(tmp_path, models=False)
    app_argv(case["run_dir"], "--results", tmp_path / "missing.csv")
    at = app_test("radiology_review.py")
    no_exception(at)
    errs = errors(at)
    assert any("missing.csv: results file not found" in e for e in errs)
    assert any("run has no model.onnx" in e for e in errs)
    assert not at.sidebar.text_input  # sources are fixed at launch: restart with the right file
    app_argv(case["run_dir"], "--results", case["results"], "--data-root", case["root"] / "studies")
    at = app_test("radiology_review.py")
    no_exception(at)
    assert [e for e in errors(at) if "results file not found" in e] == []
    assert len(at.selectbox(key="med_study").options) == 6
    at.text_input(key="med_1_reviewer").set_value("Dr. Grey")
    at.button(key=SIGN.format(1)).click().run()
    assert open_store(case["db"]).count() == 1


def test_empty_and_garbage_results_files(med_case, app_argv):
    empty = med_case["results"].with_name("empty.jsonl")
    empty.write_text("")
    app_argv(med_case["run_dir"], "--results", empty)
    at = app_test("radiology_review.py")
    no_exception(at)
    assert any(i.value == "No study matches the filters." for i in at.info)
    garbage = med_case["results"].with_name("garbage.parquet")
    garbage.write_bytes(b"PAR1 not really parquet")
    app_argv(med_case["run_dir"], "--results", garbage)
    at = app_test("radiology_review.py")
    no_exception(at)
    assert any("garbage.parquet: cannot read results" in e for e in errors(at))


def test_operating_point_tab_shows_support_and_tradeoff(med_case, app_argv):
    app_argv(med_case["run_dir"], "--results", med_case["results"], "--data-root", med_case["root"] / "studies")
    at = app_test("radiology_review.py")
    no_exception(at)
    assert any("carries no trade-off report" in c.value for c in at.caption)  # a run from before the report
    fields = operating_fields()
    update_run_json(med_case["run_dir"], **fields)
    at = app_test("radiology_review.py")
    no_exception(at)
    assert errors(at) == []
    point = fields["metrics"]["operating_point"]
    assert texts(at.warning) == [point["message"]]  # the evidence cannot support the target: said in yellow
    assert any(f"{point['review']:.0%} of the evidence" in c for c in texts(at.caption))
    table = tradeoff_table(at)
    assert table.loc[table["run's threshold"] == "◀", "threshold"].tolist() == [point["threshold"]]
    (chart,) = at.get("vega_lite_chart")
    assert f"run's threshold {point['threshold']:.3f}" in chart.proto.spec  # the dashed rule at the run's threshold
    at.radio(key="med_tradeoff_source").set_value("eval: test").run()
    no_exception(at)
    assert texts(at.warning) == [] and len(tradeoff_table(at)) == 20


def tradeoff_table(at):
    return next(d.value for d in at.dataframe if "run's threshold" in d.value.columns)
