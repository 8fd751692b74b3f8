import sys

import pytest

from tests.apps.helpers import make_med_case, make_qc_case


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
