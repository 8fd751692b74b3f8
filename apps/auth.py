"""Who may use a review app, without streamlit (``vsuite app`` imports this before it starts the server).

Login modes, strongest configured first:

    oidc      Streamlit's OpenID Connect login (``st.login``): an ``[auth]`` table with ``redirect_uri`` and
              ``cookie_secret`` in ``.streamlit/secrets.toml`` (the user's or the working folder's). The reviewer
              is the provider's e-mail (else name, else subject).
    password  ``VSUITE_APP_PASSWORD`` in the server's environment: a login form asks for the reviewer's name
              and the password; the name is the reviewer for every decision and audit row of the session.
    none      no login: only on a loopback address (the reviewer types a name in the sidebar).

Served on anything but loopback (``0.0.0.0``, a LAN address, a host name), an app without oidc or password does
not start (``vsuite app``) and shows nothing but that message (the page checks its own bind address too).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

PASSWORD_ENV = "VSUITE_APP_PASSWORD"
MIN_PASSWORD_CHARS = 12  # shorter still works, with a warning at launch
LoginMode = Literal["oidc", "password", "none"]


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 and ``localhost`` are loopback; empty / None (every interface) and the rest are not."""
    h = (host or "").strip().strip("[]")
    if h.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def app_password(env: Mapping[str, str] | None = None) -> str | None:
    value = (os.environ if env is None else env).get(PASSWORD_ENV, "")
    return value if value.strip() else None


def default_secrets_files(cwd: Path | None = None) -> list[Path]:
    """Where streamlit looks for secrets.toml by default: the user's ~/.streamlit, then the working folder's."""
    return [Path.home() / ".streamlit" / "secrets.toml", (cwd or Path.cwd()) / ".streamlit" / "secrets.toml"]


def oidc_section(files: Iterable[str | Path]) -> tuple[Path, dict] | None:
    """(file, its ``[auth]`` table) of the first secrets file that configures OIDC login, or None."""
    for f in files:
        path = Path(f).expanduser()
        if not path.is_file():
            continue
        try:
            auth = tomllib.loads(path.read_text(encoding="utf-8")).get("auth")
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            continue
        if isinstance(auth, dict) and auth.get("redirect_uri") and auth.get("cookie_secret"):
            return path, auth
    return None


def authlib_installed() -> bool:
    return importlib.util.find_spec("authlib") is not None


def login_mode(files: Iterable[str | Path], env: Mapping[str, str] | None = None) -> LoginMode:
    if oidc_section(files) is not None:
        return "oidc"
    return "password" if app_password(env) is not None else "none"


def launch_problem(host: str | None, files: Iterable[str | Path], env: Mapping[str, str] | None = None) -> str | None:
    """Why an app may not be served on ``host`` with this configuration, or None when it may."""
    files = list(files)
    mode = login_mode(files, env)
    if mode == "oidc" and not authlib_installed():
        where = oidc_section(files)[0]  # type: ignore[index]
        return (f"{where} configures OIDC login ([auth]) but Authlib is not installed: "
                "pip install 'streamlit[auth]' (or remove the [auth] table)")
    if mode == "none" and not is_loopback(host):
        return (f"serving on {host or 'every interface'} needs a login: set {PASSWORD_ENV} in the environment "
                "(reviewers then log in with their name and that password), or configure OIDC login in "
                ".streamlit/secrets.toml [auth]; or serve on 127.0.0.1")
    return None
