"""Anything but loopback needs a login (password or OIDC) whose name signs every decision (``apps.login``,
``apps.auth``, ``vsuite app`` refusing to serve the network without one)."""

from __future__ import annotations

import os
import subprocess
import sys

from common.store import open_store
from tests.apps.helpers import (
    REPO,
    SAVE,
    app_test,
    errors,
    make_med_case,
    make_qc_case,
    no_exception,
    served_on,
    texts,
)

PASSWORD = "correct horse battery staple"
LOGIN = "FormSubmitter:vsuite_login-Log in"


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
