"""The review apps' login gate (streamlit side of ``apps.auth``).

``require_login`` runs first on every page run. It returns the reviewer's identity, or None when the app runs
without login (loopback, nothing configured: the reviewer types a name in the sidebar as before). While nobody
is logged in it shows the login, or why the app may not be served, and stops the page: nothing else renders.
The identity is kept server-side in the session (never a widget value the browser could set) and is the
reviewer of every decision and audit row; ``audit_login`` records the login itself once the store is open.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import streamlit as st

from apps import auth
from apps.ui import md
from common.store import Store

IDENTITY_KEY = "_vsuite_identity"
PENDING_KEY = "_vsuite_login_pending"  # set at login, consumed by audit_login
FAILED_LOGIN_DELAY_S = 1.0  # slows guessing; per attempt


@dataclass(frozen=True)
class Identity:
    name: str
    method: Literal["oidc", "password"]


def _secrets_files() -> list[str]:
    files = st.get_option("secrets.files")
    return [str(f) for f in (files if isinstance(files, list | tuple) else [files] if files else [])]


def require_login(app: str) -> Identity | None:
    files = _secrets_files()
    host = st.get_option("server.address")  # None: streamlit listens on every interface
    problem = auth.launch_problem(host, files)
    if problem:
        st.error(md(f"This app is not available: {problem}"))
        st.stop()
    mode = auth.login_mode(files)
    if mode == "none":
        return None
    ident = LOGIN_FORMS[mode]()
    if ident is None:
        st.stop()
    st.sidebar.markdown(f"Signed in as **{md(ident.name)}**")
    st.sidebar.button("Log out", key=f"{app}_logout", on_click=_logout, args=(ident.method,))
    return ident


def _logout(method: str) -> None:
    st.session_state.pop(IDENTITY_KEY, None)
    if method == "oidc":
        st.logout()


def _oidc() -> Identity | None:
    if not st.user.is_logged_in:
        st.info("Log in to review.")
        st.button("Log in", key="vsuite_login_oidc", type="primary", on_click=st.login)
        return None
    name = str(st.user.get("email") or st.user.get("name") or st.user.get("sub") or "").strip()[:200]
    if not name:
        st.error("the login provider sent no e-mail, name or subject for this user")
        return None
    if st.session_state.get(IDENTITY_KEY) != name:
        st.session_state[IDENTITY_KEY] = name
        st.session_state[PENDING_KEY] = "oidc"
    return Identity(name, "oidc")


def _password() -> Identity | None:
    name = st.session_state.get(IDENTITY_KEY)
    if name:
        return Identity(name, "password")
    with st.form("vsuite_login", clear_on_submit=True):
        st.markdown("**Log in** to review")
        who = st.text_input("Reviewer name", key="vsuite_login_name", max_chars=200)
        given = st.text_input("Password", type="password", key="vsuite_login_password")
        submitted = st.form_submit_button("Log in", type="primary")
    if not submitted:
        return None
    password = auth.app_password()
    if not who.strip():
        st.error("enter your name")
    elif password is not None and hmac.compare_digest(given.encode(), password.encode()):
        st.session_state[IDENTITY_KEY] = who.strip()
        st.session_state[PENDING_KEY] = "password"
        st.rerun()
    else:
        time.sleep(FAILED_LOGIN_DELAY_S)
        st.error("wrong password")
    return None


# login mode (apps.auth.login_mode, "none" aside) -> the page's login form; None until someone is logged in
LOGIN_FORMS: dict[str, Callable[[], Identity | None]] = {"oidc": _oidc, "password": _password}


def audit_login(store: Store | None, app: str) -> None:
    """One ``login`` audit row per login, once the page has its store."""
    method = st.session_state.get(PENDING_KEY)
    name = st.session_state.get(IDENTITY_KEY)
    if store is None or not method or not name:
        return
    try:
        store.log(actor=name, action="login", app=app, detail={"method": method})
    except Exception:  # the store's own error shows elsewhere; the login stays valid
        return
    st.session_state.pop(PENDING_KEY, None)
