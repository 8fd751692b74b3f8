"""Exports never delete or overwrite what the suite did not write and replace its own only when asked
(``apps.safe_export``, through the QC page's YOLO export and the radiology page's CSV export). Real files, real
pages (AppTest); nothing of ours is mocked."""

from __future__ import annotations

import json

import pytest

from apps import qc_data
from apps.safe_export import MARKER, ExportRefused, plan_folder, staged_folder
from common.store import open_store
from tests.apps.helpers import (
    SAVE,
    app_test,
    errors,
    export,
    leftovers,
    make_med_case,
    make_qc_case,
    no_exception,
    qc_page,
    snapshot,
    texts,
    training_set,
)

WRITE_CSV = "FormSubmitter:med_export-Write CSV"


def test_yolo_export_into_a_foreign_training_set_refuses_and_deletes_nothing(tmp_path, app_argv):
    case = make_qc_case(tmp_path / "case")
    exports = tmp_path / "exports"
    before = training_set(exports / "trainset")
    at = export(qc_page(case, app_argv, exports), "trainset")
    no_exception(at)
    assert any("trainset: holds 3 entries the suite did not create" in e and "nothing was changed" in e
               for e in errors(at))
    assert texts(at.success) == []
    assert snapshot(exports / "trainset") == before and len(before) == 160 + 119 + 1
    # even when asked to replace: it is not the suite's
    at = export(at, "trainset", replace=True)
    assert any("did not create" in e for e in errors(at)) and snapshot(exports / "trainset") == before
    assert leftovers(exports) == []
    # the library call refuses the same way before touching a file
    with pytest.raises(ExportRefused, match="did not create"):
        qc_data.export_yolo(qc_data.load_parts(case["results"]), {}, ["scratch"], exports / "trainset", replace=True)
    assert snapshot(exports / "trainset") == before
    actions = [a["action"] for a in open_store(case["db"]).audit(app="qc")]
    assert "export.yolo" not in actions  # nothing exported, nothing audited as exported


def test_second_export_needs_confirmation_and_foreign_files_block_it(tmp_path, app_argv):
    case = make_qc_case(tmp_path / "case")
    exports = tmp_path / "exports"
    at = export(qc_page(case, app_argv, exports), "reviewed")
    no_exception(at)
    assert errors(at) == [] and "Exported 2 images" in texts(at.success)[0]
    marker = json.loads((exports / "reviewed" / MARKER).read_text())
    assert marker["tool"] == "vision-suite" and marker["kind"] == "yolo" and marker["actor"] == "ann"
    assert "data.yaml" in marker["files"] and len(marker["files"]) == 2 + 2 + 1  # 2 images, 2 labels, data.yaml
    first = snapshot(exports / "reviewed")
    # again without the box: refused, asked to confirm, nothing changed
    at = export(at, "reviewed")
    assert any("holds the previous yolo export" in w and "Replace the previous export" in w
               for w in texts(at.warning))
    assert snapshot(exports / "reviewed") == first
    # with the box: replaced (a third part reviewed meanwhile shows in the new export)
    at.selectbox(key="qc_part").set_value(str(case["images"] / "part_05.png")).run()
    at.checkbox(key="qc_adv_5").uncheck()  # stay (the next part is the corrupt one, an error of its own)
    at.button(key=SAVE.format(5)).click().run()
    at = export(at, "reviewed", replace=True)
    assert errors(at) == [] and "Exported 3 images" in texts(at.success)[0]
    assert "replacing the previous export" in texts(at.success)[0]
    assert len(list((exports / "reviewed" / "images").rglob("*.png"))) == 3
    # a file somebody put into the suite's export folder: the next replace refuses and keeps it
    (exports / "reviewed" / "labels" / "train" / "hand_made.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    at = export(at, "reviewed", replace=True)
    assert any("files the suite did not write (labels/train/hand_made.txt)" in e for e in errors(at))
    assert (exports / "reviewed" / "labels" / "train" / "hand_made.txt").is_file()
    assert leftovers(exports) == []
    audit = [a for a in open_store(case["db"]).audit(app="qc") if a["action"] == "export.yolo"]
    assert [(a["actor"], a["detail"]["images"], a["detail"]["replaced"]) for a in reversed(audit)] == [
        ("ann", 2, False), ("ann", 3, True)]


def test_failed_export_leaves_the_previous_one_and_no_temporary_files(tmp_path):
    target = tmp_path / "out"
    with staged_folder(plan_folder(target, kind="yolo", replace=False), kind="yolo") as stage:
        (stage / "data.yaml").write_text("first\n")
    before = snapshot(target)
    plan = plan_folder(target, kind="yolo", replace=True)
    with pytest.raises(RuntimeError, match="disk full"), staged_folder(plan, kind="yolo") as stage:
        (stage / "data.yaml").write_text("half written\n")
        raise RuntimeError("disk full")
    assert snapshot(target) == before and leftovers(tmp_path) == []


def test_radiology_csv_export_never_overwrites_an_unrelated_file(tmp_path, app_argv):
    case = make_med_case(tmp_path / "case")
    exports = tmp_path / "exports"
    exports.mkdir()
    precious = exports / "signoffs.csv"
    precious.write_text("patient,finding\nA,keep me\n")
    app_argv(case["run_dir"], "--results", case["results"], "--data-root", case["root"] / "studies",
         "--export-root", exports)
    at = app_test("radiology_review.py")
    at.text_input(key="med_1_reviewer").set_value("Dr. Grey")
    at.checkbox(key="med_1_adv").uncheck()  # stay on the study (the next one is the corrupt case_004)
    at.button(key="FormSubmitter:med_1_form-Sign off").click().run()
    at.button(key=WRITE_CSV).click().run()  # the default name: the unrelated file
    no_exception(at)
    assert any("signoffs.csv: exists and was not written by the suite" in e for e in errors(at))
    assert precious.read_text() == "patient,finding\nA,keep me\n"
    at.checkbox(key="med_export_replace").set_value(True)
    at.button(key=WRITE_CSV).click().run()  # replace ticked: still not the suite's
    assert precious.read_text() == "patient,finding\nA,keep me\n"
    # a new name: written, with its sidecar; again: needs the box; with it: replaced
    at.checkbox(key="med_export_replace").set_value(False)
    at.text_input(key="med_export_path").set_value("mine.csv")
    at.button(key=WRITE_CSV).click().run()
    assert errors(at) == [] and texts(at.success)[-1] == f"Wrote 1 sign-offs to {exports / 'mine.csv'}"
    assert (exports / ".mine.csv.vsuite-export.json").is_file()
    at.button(key=WRITE_CSV).click().run()
    assert any("holds the previous csv export" in w for w in texts(at.warning))
    at.checkbox(key="med_export_replace").set_value(True)
    at.button(key=WRITE_CSV).click().run()
    assert "replacing the previous export" in texts(at.success)[-1]
    # edited by hand since: no longer the suite's file, not replaced
    (exports / "mine.csv").write_text("edited\n")
    at.button(key=WRITE_CSV).click().run()
    assert any("mine.csv: changed since the suite wrote it" in e for e in errors(at))
    assert (exports / "mine.csv").read_text() == "edited\n" and leftovers(exports) == []
    # every export is audited, the browser download included
    at.download_button(key="med_download_csv").click().run()
    actions = [a["action"] for a in open_store(case["db"]).audit(app="med")]
    assert actions[:3] == ["export.csv.download", "export.csv", "export.csv"]


