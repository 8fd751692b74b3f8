"""Streamlit pieces both review apps share: arguments and sources in the sidebar, the store, run loading,
escaping of names from data.

Every loader returns ``(value, error message)`` instead of raising, so a page shows ``st.error`` and goes on.
Text from data (class, file, study and reviewer names, reasons, notes, paths, error messages) goes through ``md``
before it reaches anything streamlit renders as Markdown (markdown, caption, error, success, labels, ...), and
through ``html.escape`` where a page builds HTML itself.
"""

from __future__ import annotations

import csv
import io
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st
from sqlalchemy.engine import make_url

from apps.args import AppArgs, parse_app_args
from apps.roots import Roots
from common.errors import InputError
from common.rundir import read_run_json
from common.store import Store, default_db_path, open_store

VERDICT_COLOURS = {"PASS": "green", "FAIL": "red", "REVIEW": "orange", "positive": "red", "negative": "green",
                   "ERROR": "gray"}


_MD_SPECIAL = frozenset(string.punctuation)


def md(text: object) -> str:
    """``text`` as literal Markdown: every ASCII punctuation character backslash-escaped (CommonMark shows it as
    itself), line breaks as spaces. ``<b>x</b>`` and ``![x](http://evil)`` show as typed, not as HTML, an image
    or a link; ``:red[x]``, ``$x$`` and emphasis stay text too."""
    s = " ".join(str(text).splitlines())
    return "".join(f"\\{c}" if c in _MD_SPECIAL else c for c in s)


@dataclass
class Sources:
    """What a page works on, fixed at launch: the run folder, the results file, the review database and the
    folders it may read and write (``apps.roots``)."""

    run_dir: Path | None
    results: Path | None
    db: str | None
    export_root: Path | None = None
    data_roots: list[Path] = field(default_factory=list)

    @property
    def roots(self) -> Roots:
        return Roots.from_launch(self.run_dir, self.results, self.export_root, self.data_roots)


def page_args() -> tuple[AppArgs, str | None]:
    """Arguments given after ``--`` to ``streamlit run`` (sys.argv), or an error message."""
    try:
        return parse_app_args(sys.argv[1:]), None
    except InputError as exc:
        return AppArgs(None, None, None), str(exc)


def sources_sidebar(args: AppArgs, app: str) -> Sources:
    """The launch arguments, shown read-only in the sidebar: the page cannot point the app at other files, another
    database or other folders (restart ``vsuite app`` to change them)."""
    src = Sources(args.run, args.results, args.db, args.export_root, list(args.data_roots))
    roots = src.roots
    db = shown_db(src.db or (str(default_db_path(src.results)) if src.results is not None else "-"))
    with st.sidebar.expander("Sources (fixed at launch)", expanded=args.results is None):
        for label, value in (("Run folder", src.run_dir), ("Results file", src.results), ("Review database", db),
                             ("Exports under", roots.export), ("May read under", "; ".join(map(str, roots.read)))):
            st.caption(label)
            st.code(str(value if value is not None else "-"), language=None, wrap_lines=True)
    return src


def shown_db(db: str) -> str:
    """A database path or URL as the page may show it: a URL's password hidden."""
    if "://" not in db:
        return db
    try:
        return make_url(db).render_as_string(hide_password=True)
    except Exception:
        return "(not a valid SQLAlchemy URL)"


@st.cache_resource(show_spinner=False)
def _store(url_or_path: str) -> Store:
    return open_store(url_or_path)


def get_store(src: Sources) -> tuple[Store | None, str | None]:
    """The review store of these sources (one per process and database), or an error message."""
    target = src.db or (str(default_db_path(src.results)) if src.results is not None else None)
    if target is None:
        return None, "no review database: give --results (the database goes next to it) or --db"
    try:
        return _store(target), None
    except InputError as exc:
        return None, str(exc)
    except Exception as exc:  # a driver error (e.g. PostgreSQL not reachable) must not kill the page
        return None, f"review database {shown_db(target)}: {type(exc).__name__}: {exc}"


@st.cache_data(show_spinner=False)
def _run_json(run_dir: str, mtime: float) -> dict:
    return read_run_json(run_dir)


def load_run(run_dir: Path | None, vertical: str) -> tuple[dict | None, str | None]:
    """run.json of ``run_dir`` checked for ``vertical``, or an error message."""
    if run_dir is None:
        return None, "no run folder given (vsuite app ... RUN --results FILE)"
    try:
        path = Path(run_dir) / "run.json"
        run = _run_json(str(run_dir), path.stat().st_mtime if path.is_file() else 0.0)
    except InputError as exc:
        return None, str(exc)
    if run.get("vertical") != vertical:
        return run, f"{run_dir}/run.json: vertical is {run.get('vertical')!r}, this app reviews {vertical}"
    return run, None


def mtime(path: Path | None) -> float:
    try:
        return path.stat().st_mtime if path is not None else 0.0
    except OSError:
        return 0.0


def reviewer_name(key: str = "reviewer", identity=None) -> str:
    """The reviewer: the logged-in identity (``apps.login``; not editable) or, on loopback without a login, the
    name typed once in the sidebar and kept for the session."""
    if identity is not None:
        return identity.name
    return st.sidebar.text_input("Reviewer name", key=key, placeholder="your name (required to save)").strip()


def verdict_badge(verdict: str | None) -> None:
    v = str(verdict or "ERROR")
    label = md(v).replace("\\[", "[").replace("\\]", "]")  # st.badge escapes the brackets itself
    st.badge(label, color=VERDICT_COLOURS.get(v, VERDICT_COLOURS.get(v.lower(), "gray")))  # type: ignore[arg-type]


def _step(state_key: str, items: list[str], delta: int) -> None:
    cur = st.session_state.get(state_key)
    i = items.index(cur) if cur in items else 0
    st.session_state[state_key] = items[(i + delta) % len(items)]


def item_picker(prefix: str, state_key: str, label: str, items: list[str], event, row_items: list[str],
                names: dict[str, str]) -> str:
    """Previous / select / Next over ``items`` (J and K as shortcuts), in step with the table's selected row.

    ``event``: the ``st.dataframe`` selection event of the table whose rows are ``row_items``. A pending
    ``<state_key>_next`` (set after saving a decision) moves to that item. Returns the current item.
    """
    rows = list(event.selection.rows) if event is not None else []
    if rows != st.session_state.get(f"{prefix}_table_seen", []):
        st.session_state[f"{prefix}_table_seen"] = rows
        if rows and rows[0] < len(row_items):
            st.session_state[state_key] = row_items[rows[0]]
    pending = st.session_state.pop(f"{state_key}_next", None)
    if pending in items:
        st.session_state[state_key] = pending
    if st.session_state.get(state_key) not in items:
        st.session_state[state_key] = items[0]
    c_prev, c_sel, c_next = st.columns([1, 6, 1], vertical_alignment="bottom")
    c_prev.button("Previous", key=f"{prefix}_prev", shortcut="K", on_click=_step, args=(state_key, items, -1),
                  width="stretch")
    c_sel.selectbox(label, items, key=state_key, format_func=lambda it: names.get(it, it))
    c_next.button("Next", key=f"{prefix}_next", shortcut="J", on_click=_step, args=(state_key, items, 1),
                  width="stretch")
    return st.session_state[state_key]


def load_results_or_stop(results: Path | None, loader: Callable[[], list], usage: str) -> list:
    """``loader()``'s records, or an error in the page and a stop."""
    if results is None:
        st.error(f"no results file given: {md(usage)}")
        st.stop()
    try:
        return loader()
    except InputError as exc:
        st.error(md(exc))
    except Exception as exc:  # a results file broken in a way we did not foresee must not kill the page
        st.error(md(f"{results}: cannot read results ({type(exc).__name__}: {exc})"))
    st.stop()
    return []  # not reached: st.stop() raises


def show_refusal(exc: InputError) -> None:
    """An export refused: a warning when only the "replace" box is missing, an error otherwise."""
    (st.warning if getattr(exc, "needs_confirmation", False) else st.error)(md(f"export refused: {exc}"))


def _log_download(store: Store, actor: str, app: str, run_id: str, file_name: str, rows: int,
                  latest_only: bool) -> None:
    try:
        store.log(actor=actor or "unknown", action="export.csv.download", app=app, run_id=run_id,
                  detail={"file": file_name, "rows": rows, "latest_only": latest_only})
    except Exception as exc:  # the download itself goes on; say the audit row is missing
        st.error(md(f"download not audited: {type(exc).__name__}: {exc}"))


def audited_download(label: str, store: Store, *, app: str, run_id: str, actor: str | None, file_name: str,
                     key: str, latest_only: bool = False) -> None:
    """A CSV download of the reviews whose click writes an ``export.csv.download`` audit row."""
    text = store.export_csv(app=app, run_id=run_id, latest_only=latest_only)
    rows = sum(1 for _ in csv.DictReader(io.StringIO(text)))
    st.download_button(label, text, file_name=file_name, mime="text/csv", key=key, on_click=_log_download,
                       args=(store, actor or "unknown", app, run_id, file_name, rows, latest_only))


def store_label(store: Store | None) -> str:
    """Where decisions go, password hidden."""
    return store.engine.url.render_as_string(hide_password=True) if store is not None else "n/a"
