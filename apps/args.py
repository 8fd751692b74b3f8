"""Arguments of the review apps: ``streamlit run apps/<app>.py -- RUN --results FILE [--db URL]``.

``vsuite app qc|med`` builds this argument list; the app page parses it back (no streamlit import here).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from common.errors import InputError


@dataclass
class AppArgs:
    run: Path | None
    results: Path | None
    db: str | None  # SQLAlchemy URL or SQLite path; None = reviews.sqlite next to the results


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would sys.exit(2) inside the page
        raise InputError(f"app arguments: {message} (usage: RUN --results FILE [--db URL])")


def parse_app_args(argv: list[str]) -> AppArgs:
    """``[RUN] --results FILE [--db URL]`` -> AppArgs; an InputError says what is wrong."""
    parser = _Parser(prog="app", add_help=False)
    parser.add_argument("run", nargs="?", default=None)
    parser.add_argument("--results", default=None)
    parser.add_argument("--db", default=None)
    ns = parser.parse_args(argv)
    return AppArgs(run=Path(ns.run).expanduser() if ns.run else None,
                   results=Path(ns.results).expanduser() if ns.results else None,
                   db=ns.db or None)


def app_argv(run: Path | str, results: Path | str, db: str | None) -> list[str]:
    """The inverse of ``parse_app_args`` (absolute paths: the server's working folder may differ)."""
    out = [str(Path(run).expanduser().resolve()), "--results", str(Path(results).expanduser().resolve())]
    if db:
        out += ["--db", db if "://" in db else str(Path(db).expanduser().resolve())]
    return out
