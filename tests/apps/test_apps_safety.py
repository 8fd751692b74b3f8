"""The review apps are safe to expose: exports never delete or overwrite what the suite did not write and replace
its own only when asked, paths outside the launch-time roots are refused, names from data are shown as text, and
anything but loopback needs a login whose name signs every decision. Real files, real pages (AppTest), the real
CLI; nothing of ours is mocked."""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from apps import qc_data
from apps.roots import Roots
from apps.safe_export import MARKER, ExportRefused, plan_folder, staged_folder
from apps.ui import md
from common.errors import InputError
from common.store import open_store
from tests.apps.helpers import (
    REPO,
    app_test,
    errors,
    make_med_case,
    make_qc_case,
    no_exception,
    plain,
    served_on,
    texts,
)

PASSWORD = "correct horse battery staple"
SAVE = "FormSubmitter:qc_form_{}-Save decision"
EXPORT = "FormSubmitter:qc_export-Export YOLO dataset"
WRITE_CSV = "FormSubmitter:med_export-Write CSV"
LOGIN = "FormSubmitter:vsuite_login-Log in"




def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if "vsuite-tmp" in p.name or "vsuite-old" in p.name]


def training_set(folder: Path, images: int = 160, labels: int = 119) -> dict[str, str]:
    """A YOLO training set somebody else made (data.yaml included, as the old export took for its own)."""
    for i in range(images):
        (folder / "images" / "train").mkdir(parents=True, exist_ok=True)
        (folder / "images" / "train" / f"img_{i:03d}.png").write_bytes(b"png %d" % i)
    for i in range(labels):
        (folder / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (folder / "labels" / "train" / f"img_{i:03d}.txt").write_text(f"0 0.5 0.5 0.1 0.{i % 9 + 1}\n")
    (folder / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\nnames: {0: scratch}\n")
    return snapshot(folder)


def qc_page(case: dict, app_argv, export_root: Path, reviewer: str | None = "ann", save: tuple[int, ...] = (1, 2)):
    app_argv(case["run_dir"], "--results", case["results"], "--data-root", case["images"], "--export-root", export_root)
    at = app_test("qc_review.py")
    if reviewer:
        at.sidebar.text_input(key="qc_reviewer").set_value(reviewer)
    for i in save:
        at.selectbox(key="qc_part").set_value(str(case["images"] / f"part_{i:02d}.png")).run()
        at.button(key=SAVE.format(i)).click().run()
    return at


def export(at, name: str, replace: bool = False):
    at.text_input(key="qc_export_dir").set_value(name)
    at.checkbox(key="qc_export_replace").set_value(replace)
    return at.button(key=EXPORT).click().run()


# ------------------------------------------------------------------------------------------------ exports
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


# ------------------------------------------------------------------------------------------------ roots
def test_paths_outside_the_allowed_roots_are_refused(tmp_path, app_argv):
    case = make_qc_case(tmp_path / "case")
    exports = tmp_path / "exports"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    roots = Roots.from_launch(case["run_dir"], case["results"], exports)
    for name in ("../elsewhere/x", str(outside / "x"), "..", ".", "", ".hidden"):
        with pytest.raises(InputError):
            roots.export_target(name)
    (exports / "sub").mkdir(parents=True)
    (exports / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InputError, match="outside the export root"):
        roots.export_target("link/x")  # resolved, link followed, before the check
    assert roots.export_target("sub/x") == (exports / "sub" / "x").resolve()
    with pytest.raises(InputError, match="outside the folders this app may read"):
        roots.readable(outside / "a.png")
    link = case["results"].parent / "sneaky.png"
    link.symlink_to(outside / "a.png")
    with pytest.raises(InputError, match="outside the folders this app may read"):
        roots.readable(link)
    # in the page: an export name leading out is refused, nothing is created outside
    at = export(qc_page(case, app_argv, exports), "../elsewhere/yolo")
    assert any("outside the export root" in e for e in errors(at)) and list(outside.iterdir()) == []
    # images the results name outside the read roots (no --data-root): refused with the flag to add, not shown
    app_argv(case["run_dir"], "--results", case["results"])
    at = app_test("qc_review.py")
    at.selectbox(key="qc_part").set_value(str(case["images"] / "part_01.png")).run()
    no_exception(at)
    assert any("part_01.png: outside the folders this app may read" in e and "--data-root" in e for e in errors(at))
    assert len(at.image) == 0


# ------------------------------------------------------------------------------------------------ escaping
EVIL_HTML = "<img src=x onerror=alert(1)>"
EVIL_MD = "![x](http://evil.example/p.png)"


def test_names_from_data_are_shown_as_text(tmp_path, app_argv):
    assert plain(md("<b>x</b>")) == "<b>x</b>" and "<b>" not in md("<b>x</b>")
    assert "![" not in md(EVIL_MD) and "](" not in md(EVIL_MD)
    case = make_qc_case(tmp_path / "case")
    img = case["images"] / "evil.png"
    shutil.copy(case["images"] / "part_01.png", img)
    rec = {"file": str(img), "source": str(img), "status": "ok", "verdict": "FAIL", "run_id": case["run"]["run_id"],
           "timestamp": "2026-01-05T09:00:00+00:00", "width": 64, "height": 64, "reason": "**bold** <i>x</i>",
           "defects": [{"box": [10.0, 12.0, 30.0, 16.0], "det_class": n, "cls_class": n, "det_conf": 0.8,
                        "cls_prob": 0.9, "defect_prob": 0.9} for n in (EVIL_HTML, EVIL_MD)]}
    with case["results"].open("a") as f:
        f.write(json.dumps(rec) + "\n")
    app_argv(case["run_dir"], "--results", case["results"], "--data-root", case["images"])
    at = app_test("qc_review.py")
    at.selectbox(key="qc_part").set_value(str(img)).run()
    no_exception(at)
    legend = next(m.value for m in at.markdown if "■" in m.value)  # the one place the page writes HTML
    assert html.escape(EVIL_HTML) in legend and EVIL_HTML not in legend
    rendered = [m.value for m in at.markdown if "■" not in m.value] + [c.value for c in at.caption] + \
        [r.label for r in at.radio]
    for text in rendered:
        assert not re.search(r"(?<!\\)<", text), text  # no raw HTML tag can open
        assert "![" not in text and "](" not in text, text  # no image or link syntax
    shown = [plain(t) for t in rendered]
    assert any(f"#0 {EVIL_HTML} 0.90" in t for t in shown) and any(f"#1 {EVIL_MD}" in t for t in shown)


# ------------------------------------------------------------------------------------------------ login
def vsuite(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from common.cli import main; main()", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)


def test_network_address_without_a_login_refuses_to_start(tmp_path):
    case = make_qc_case(tmp_path / "case")
    env = {k: v for k, v in os.environ.items() if k != "VSUITE_APP_PASSWORD"}
    env.update(HOME=str(tmp_path), COLUMNS="200")  # no ~/.streamlit/secrets.toml: no OIDC login
    res = vsuite("app", "qc", str(case["run_dir"]), "--results", str(case["results"]), "--host", "0.0.0.0", env=env)
    assert res.returncode == 2
    out = " ".join((res.stdout + res.stderr).split())
    assert "serving on 0.0.0.0 needs a login" in out and "VSUITE_APP_PASSWORD" in out
    assert "Local URL" not in out  # refused before anything was served


def test_launch_with_a_password_says_login_and_never_prints_it(tmp_path, monkeypatch, capsys):
    from apps.cli import check_access

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("VSUITE_APP_PASSWORD", PASSWORD)
    assert "password in VSUITE_APP_PASSWORD" in check_access("0.0.0.0")
    assert "password in VSUITE_APP_PASSWORD" in check_access("127.0.0.1")  # asked on loopback too when set
    assert PASSWORD not in capsys.readouterr().out


def test_page_on_the_network_shows_nothing_without_a_login(tmp_path, app_argv):
    case = make_qc_case(tmp_path / "case")
    app_argv(case["run_dir"], "--results", case["results"], "--data-root", case["images"])
    for address in ("0.0.0.0", None):  # None: a bare `streamlit run` listens on every interface
        with served_on(address):
            at = app_test("qc_review.py")
        no_exception(at)
        assert any("This app is not available: serving on" in e for e in errors(at))
        assert not at.selectbox and not at.dataframe and not at.sidebar.code and not at.text_input


def test_oidc_login_configured_without_authlib_is_refused_not_skipped(tmp_path, app_argv):
    """An [auth] table in secrets.toml means OIDC login; without Authlib the app says so instead of running open."""
    from apps import auth

    secrets = tmp_path / ".streamlit" / "secrets.toml"
    secrets.parent.mkdir()
    secrets.write_text('[auth]\nredirect_uri = "http://localhost:8501/oauth2callback"\ncookie_secret = "s"\n'
                       'client_id = "c"\nclient_secret = "x"\n'
                       'server_metadata_url = "https://id.example/.well-known/openid-configuration"\n')
    assert auth.login_mode([secrets], env={}) == "oidc"
    assert auth.login_mode([tmp_path / "none.toml"], env={auth.PASSWORD_ENV: "p"}) == "password"
    if auth.authlib_installed():  # not a dependency; where someone installed it, OIDC is a working login
        assert auth.launch_problem("127.0.0.1", [secrets], env={}) is None
        return
    assert "Authlib is not installed" in auth.launch_problem("127.0.0.1", [secrets], env={})
    case = make_qc_case(tmp_path / "case")
    app_argv(case["run_dir"], "--results", case["results"], "--data-root", case["images"])
    with served_on("127.0.0.1", [str(secrets)]):
        at = app_test("qc_review.py")
    assert any("Authlib is not installed" in e for e in errors(at)) and not at.selectbox


def test_password_login_names_the_reviewer(tmp_path, app_argv, monkeypatch):
    monkeypatch.setenv("VSUITE_APP_PASSWORD", PASSWORD)
    case = make_qc_case(tmp_path / "case")
    app_argv(case["run_dir"], "--results", case["results"], "--data-root", case["images"])
    with served_on("0.0.0.0"):
        at = app_test("qc_review.py")
        assert [t.label for t in at.text_input] == ["Reviewer name", "Password"]
        assert not at.selectbox and not at.dataframe  # nothing but the login
        at.text_input(key="vsuite_login_name").set_value("Dr. Login")
        at.text_input(key="vsuite_login_password").set_value("guess")
        at.button(key=LOGIN).click().run()
        assert "wrong password" in errors(at) and not at.selectbox
        at.text_input(key="vsuite_login_name").set_value("Dr. Login")
        at.text_input(key="vsuite_login_password").set_value(PASSWORD)
        at.button(key=LOGIN).click().run()
        no_exception(at)
        assert errors(at) == [] and at.selectbox(key="qc_part")
        assert "Signed in as **Dr. Login**" in texts(at.sidebar.markdown)
        assert not [t for t in at.text_input if t.key in ("qc_reviewer", "vsuite_login_password")]
        at.selectbox(key="qc_part").set_value(str(case["images"] / "part_01.png")).run()
        at.button(key=SAVE.format(1)).click().run()
        no_exception(at)
        store = open_store(case["db"])
        assert store.latest_decisions(app="qc")[str(case["images"] / "part_01.png")]["reviewer"] == "Dr. Login"
        audit = store.audit(app="qc")
        assert [(a["actor"], a["action"]) for a in reversed(audit)] == [("Dr. Login", "login"),
                                                                        ("Dr. Login", "review")]
        at.sidebar.button(key="qc_logout").click().run()
        assert not at.selectbox and [t.label for t in at.text_input] == ["Reviewer name", "Password"]


def test_password_login_signs_radiology_sign_offs(tmp_path, app_argv, monkeypatch):
    monkeypatch.setenv("VSUITE_APP_PASSWORD", PASSWORD)  # set on loopback: the login is asked there too
    case = make_med_case(tmp_path / "case")
    app_argv(case["run_dir"], "--results", case["results"], "--data-root", case["root"] / "studies")
    at = app_test("radiology_review.py")
    assert not at.selectbox
    at.text_input(key="vsuite_login_name").set_value("Dr. Grey")
    at.text_input(key="vsuite_login_password").set_value(PASSWORD)
    at.button(key=LOGIN).click().run()
    no_exception(at)
    assert "med_1_reviewer" not in [t.key for t in at.text_input]  # the login is the reviewer, not a field
    at.checkbox(key="med_1_adv").uncheck()
    at.button(key="FormSubmitter:med_1_form-Sign off").click().run()
    no_exception(at)
    assert errors(at) == []
    row = open_store(case["db"]).latest_decisions(app="med")[str(case["root"] / "studies" / "case_001.nii.gz")]
    assert row["reviewer"] == "Dr. Grey"
