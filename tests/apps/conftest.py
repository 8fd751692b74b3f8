import sys

import pytest

from tests.apps.helpers import make_med_case, make_qc_case, served_on


@pytest.fixture(autouse=True)
def loopback_without_login(monkeypatch):
    """The apps as ``vsuite app`` serves them by default: on 127.0.0.1, no password, no OIDC login."""
    monkeypatch.delenv("VSUITE_APP_PASSWORD", raising=False)
    with served_on("127.0.0.1"):
        yield


@pytest.fixture
def qc_case(tmp_path):
    return make_qc_case(tmp_path)


@pytest.fixture
def med_case(tmp_path):
    return make_med_case(tmp_path)


@pytest.fixture
def app_argv(monkeypatch):
    """Set the arguments a page sees, as ``streamlit run app.py -- ARGS`` would (sys.argv = [script, *ARGS])."""

    def set_args(*args) -> None:
        monkeypatch.setattr(sys, "argv", ["app.py", *[str(a) for a in args]])

    return set_args
