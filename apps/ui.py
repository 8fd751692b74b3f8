"""Streamlit pieces both review apps share: arguments and sources in the sidebar, the store, run loading.

Every loader returns ``(value, error message)`` instead of raising, so a page shows ``st.error`` and goes on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from apps.args import AppArgs, parse_app_args
from common.errors import InputError
from common.rundir import read_run_json
from common.store import Store, default_db_path, open_store

VERDICT_COLOURS = {"PASS": "green", "FAIL": "red", "REVIEW": "orange", "positive": "red", "negative": "green",
                   "ERROR": "gray"}


@dataclass
class Sources:
    """What a page works on, after the sidebar: the run folder, the results file and the review database."""

    run_dir: Path | None
    results: Path | None
    db: str | None


def page_args() -> tuple[AppArgs, str | None]:
    """Arguments given after ``--`` to ``streamlit run`` (sys.argv), or an error message."""
    try:
        return parse_app_args(sys.argv[1:]), None
    except InputError as exc:
        return AppArgs(None, None, None), str(exc)


def sources_sidebar(args: AppArgs, app: str) -> Sources:
    """Sidebar fields for run, results and database, prefilled from the command line, editable in the page
    (a wrong path is fixed here without restarting the app)."""
    with st.sidebar.expander("Sources", expanded=args.results is None):
        run = st.text_input("Run folder", value=str(args.run or ""), key=f"{app}_src_run")
        results = st.text_input("Results file", value=str(args.results or ""), key=f"{app}_src_results")
        db = st.text_input("Review database (URL or SQLite file; empty = next to results)",
                           value=args.db or "", key=f"{app}_src_db")
    return Sources(Path(run).expanduser() if run.strip() else None,
                   Path(results).expanduser() if results.strip() else None,
                   db.strip() or None)


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
        return None, f"review database {target}: {type(exc).__name__}: {exc}"


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


def reviewer_name(key: str = "reviewer") -> str:
    """The reviewer's name, asked once in the sidebar and kept for the session."""
    return st.sidebar.text_input("Reviewer name", key=key, placeholder="your name (required to save)").strip()


def verdict_badge(verdict: str | None) -> None:
    v = str(verdict or "ERROR")
    st.badge(v, color=VERDICT_COLOURS.get(v, VERDICT_COLOURS.get(v.lower(), "gray")))  # type: ignore[arg-type]


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
    """``loader()``'s records, or an error in the page and a stop (the sidebar stays usable to fix the path)."""
    if results is None:
        st.error(f"no results file given: {usage}")
        st.stop()
    try:
        return loader()
    except InputError as exc:
        st.error(str(exc))
    except Exception as exc:  # a results file broken in a way we did not foresee must not kill the page
        st.error(f"{results}: cannot read results ({type(exc).__name__}: {exc})")
    st.stop()
    return []  # not reached: st.stop() raises


def store_label(store: Store | None) -> str:
    """Where decisions go, password hidden."""
    return store.engine.url.render_as_string(hide_password=True) if store is not None else "n/a"
