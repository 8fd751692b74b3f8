"""Arguments of the review apps:
``streamlit run apps/<app>.py -- RUN --results FILE [--db URL] [--export-root DIR] [--data-root DIR ...]``.

``vsuite app qc|med`` builds this argument list; the app page parses it back (no streamlit import here). These
are the only paths an app uses: the page shows them and cannot change them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import InputError

USAGE = "RUN --results FILE [--db URL] [--export-root DIR] [--data-root DIR ...]"


@dataclass
class AppArgs:
    run: Path | None
    results: Path | None
    db: str | None  # SQLAlchemy URL or SQLite path; None = reviews.sqlite next to the results
    export_root: Path | None = None  # where exports may be written; None = the results file's folder
    data_roots: list[Path] = field(default_factory=list)  # more folders the app may read (images, studies)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would sys.exit(2) inside the page
        raise InputError(f"app arguments: {message} (usage: {USAGE})")


def parse_app_args(argv: list[str]) -> AppArgs:
    """``[RUN] --results FILE [--db URL] [--export-root DIR] [--data-root DIR ...]`` -> AppArgs; an InputError
    says what is wrong."""
    parser = _Parser(prog="app", add_help=False, allow_abbrev=False)
    parser.add_argument("run", nargs="?", default=None)
    parser.add_argument("--results", default=None)
    parser.add_argument("--db", default=None)
    parser.add_argument("--export-root", default=None)
    parser.add_argument("--data-root", action="append", default=[])
    ns = parser.parse_args(argv)
    return AppArgs(run=Path(ns.run).expanduser() if ns.run else None,
                   results=Path(ns.results).expanduser() if ns.results else None,
                   db=ns.db or None,
                   export_root=Path(ns.export_root).expanduser() if ns.export_root else None,
                   data_roots=[Path(d).expanduser() for d in ns.data_root if d])


def app_argv(run: Path | str, results: Path | str, db: str | None, export_root: Path | str | None = None,
             data_roots: list[Path] | tuple[Path, ...] = ()) -> list[str]:
    """The inverse of ``parse_app_args`` (absolute paths: the server's working folder may differ)."""
    out = [str(Path(run).expanduser().resolve()), "--results", str(Path(results).expanduser().resolve())]
    if db:
        out += ["--db", db if "://" in db else str(Path(db).expanduser().resolve())]
    if export_root is not None:
        out += ["--export-root", str(Path(export_root).expanduser().resolve())]
    for d in data_roots:
        out += ["--data-root", str(Path(d).expanduser().resolve())]
    return out
