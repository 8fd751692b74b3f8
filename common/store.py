"""The review store: every human decision on a result, kept in a database (SQLAlchemy 2).

SQLite file by default (``reviews.sqlite`` next to the results file), any SQLAlchemy URL otherwise
(``postgresql+psycopg://user@host/db`` works unchanged). The tables and the engine setup are in
``common.store_db``: ``reviews`` (one row per decision) and ``audit_log`` (one row per action).

Append-only: nothing is updated, deleted or replaced (SQLite triggers refuse UPDATE, DELETE and an INSERT that
reuses an id, which is what ``INSERT OR REPLACE`` does). A changed mind is a new row and the latest row (highest id)
of an item wins; ``history`` keeps every row. Tamper-evident: each row of both tables carries ``prev_hash`` and
``row_hash``, a hash chain in id order (``common.store_chain``); ``verify_chain`` / ``vsuite app verify DB`` names
the first row changed, deleted or spliced in behind the store's back. A database made before the chain gets its
columns and a chain over its rows the first time it is opened (an audit row ``store.chain_started`` says how many).
Concurrent writers lose nothing and keep one chain: SQLite runs in WAL mode with a busy timeout, each write is one
``BEGIN IMMEDIATE`` transaction (no lock upgrade, so no deadlock between two writers; the row it links to cannot
change under it), retried if the database stays locked longer than the timeout. PostgreSQL: each write locks both
tables in SHARE ROW EXCLUSIVE mode first (``store_chain.lock_for_append``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session

from common.errors import InputError
from common.store_chain import (
    AUDIT_COLUMNS,
    REVIEW_COLUMNS,
    ChainReport,
    chain_complete,
    iso_utc,
    lock_for_append,
    next_link,
    row_hash,
    upgrade_legacy,
    verify_chain,
)
from common.store_db import AuditEntry, Base, Review, create_store_engine, is_locked, utcnow

DEFAULT_DB_NAME = "reviews.sqlite"
LOCK_RETRIES = 5

__all__ = ["AUDIT_COLUMNS", "REVIEW_COLUMNS", "ChainReport", "Store", "open_store", "verify_chain"]


# ---------------------------------------------------------------------------------------------- opening
def default_db_path(results: Path | str) -> Path:
    """Where the review database lives when no --db is given: next to the results file."""
    return Path(results).expanduser().resolve().parent / DEFAULT_DB_NAME


def resolve_url(url_or_path: str | Path) -> str:
    """A SQLAlchemy URL (``dialect[+driver]://...``) is taken as is; anything else is a SQLite file path."""
    text = str(url_or_path)
    if "://" in text:
        try:
            make_url(text)
        except ArgumentError as exc:
            raise InputError(f"--db {text!r}: not a valid SQLAlchemy URL ({exc})") from exc
        return text
    path = Path(text).expanduser().resolve()
    return f"sqlite:///{path}"


class Store:
    """A review database. Thread-safe (one engine, a connection per call); share one per process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        self.engine = create_store_engine(url)
        self._create_schema()
        self._ensure_chain()

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)})"

    def _create_schema(self) -> None:
        # Two processes opening a fresh database race on CREATE TABLE: the loser sees "already exists"; retry.
        for attempt in range(LOCK_RETRIES):
            try:
                Base.metadata.create_all(self.engine)
                return
            except OperationalError as exc:
                if attempt == LOCK_RETRIES - 1 or not (is_locked(exc) or "already exists" in str(exc)):
                    raise InputError(f"{self}: cannot open review database ({exc.orig})") from exc
                time.sleep(0.1 * (attempt + 1))

    def _ensure_chain(self) -> None:
        """A database from before the hash chain (or its triggers): add the columns, chain the rows once, record
        it in the audit log. Checked again inside the write lock: two processes opening it at once migrate once."""
        with self.engine.connect() as conn:
            if chain_complete(conn):
                return

        def migrate(conn: Connection) -> None:
            legacy = upgrade_legacy(conn)
            if legacy:
                self._append(conn, "audit_log", {"actor": "review store", "action": "store.chain_started",
                                                 "detail": {"legacy_rows": legacy}})

        try:
            self._write(migrate)
        except OperationalError as exc:
            raise InputError(f"{self}: cannot add the hash chain to this database ({exc.orig})") from exc

    def _append(self, conn: Connection, table: str, values: dict[str, Any]) -> int:
        """Insert one chained row into ``table`` (inside ``_write``); returns its id."""
        rid, prev = next_link(conn, table)
        row = {"created_at": utcnow(), **values, "id": rid, "prev_hash": prev}
        row["row_hash"] = row_hash(table, row, prev)
        conn.execute(insert(Base.metadata.tables[table]).values(**row))
        return rid

    def _write(self, fn) -> Any:
        """Run ``fn(connection)`` in one write transaction (BEGIN IMMEDIATE on SQLite; both tables locked on
        PostgreSQL), retried while locked."""
        for attempt in range(LOCK_RETRIES):
            try:
                with self.engine.connect().execution_options(sqlite_immediate=True) as conn, conn.begin():
                    lock_for_append(conn)
                    return fn(conn)
            except OperationalError as exc:
                if attempt == LOCK_RETRIES - 1 or not is_locked(exc):
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------------------------------ writing
    def record_decision(self, *, app: str, run_id: str, item: str, reviewer: str, decision: str,
                        note: str = "", finding: str | None = None, details: dict | None = None,
                        record: dict | None = None) -> int:
        """Append one decision (and its audit entry, same transaction); returns the review id."""
        reviewer = (reviewer or "").strip()
        if not reviewer:
            raise InputError("reviewer name is required")
        if not str(decision or "").strip():
            raise InputError("decision is required")
        details = _jsonable(details)
        record = _jsonable(record)

        def write(conn: Connection) -> int:
            rid = self._append(conn, "reviews", {
                "app": app, "run_id": str(run_id), "item": str(item), "reviewer": reviewer,
                "decision": str(decision), "finding": finding or None, "note": note or "", "details": details,
                "record": record})
            self._append(conn, "audit_log", {
                "actor": reviewer, "action": "review", "app": app, "run_id": str(run_id), "item": str(item),
                "review_id": rid, "detail": {"decision": str(decision), "finding": finding or None}})
            return rid

        return self._write(write)

    def log(self, *, actor: str, action: str, app: str | None = None, run_id: str | None = None,
            item: str | None = None, detail: dict | None = None) -> int:
        """Append an audit entry for an action that is not a decision (an export, ...)."""
        detail = _jsonable(detail)

        return self._write(lambda conn: self._append(conn, "audit_log", {
            "actor": actor or "unknown", "action": action, "app": app, "run_id": run_id, "item": item,
            "detail": detail}))

    def verify(self) -> ChainReport:
        """Both hash chains of this database, recomputed (``common.store_chain.verify_chain``)."""
        return verify_chain(self.url)

    # ------------------------------------------------------------------------------------------ reading
    def latest_decisions(self, *, app: str | None = None, run_id: str | None = None) -> dict[str, dict]:
        """item -> its latest review (as a dict), for the items of ``app`` / ``run_id`` that have any."""
        latest = select(func.max(Review.id)).group_by(Review.app, Review.run_id, Review.item)
        if app is not None:
            latest = latest.where(Review.app == app)
        if run_id is not None:
            latest = latest.where(Review.run_id == str(run_id))
        stmt = select(Review).where(Review.id.in_(latest)).order_by(Review.id)
        with Session(self.engine) as session:
            return {r.item: _review_dict(r) for r in session.scalars(stmt)}

    def history(self, *, app: str | None = None, run_id: str | None = None, item: str | None = None) -> list[dict]:
        """Every review row (oldest first), superseded ones included, with ``latest`` True on the winning rows."""
        stmt = select(Review)
        if app is not None:
            stmt = stmt.where(Review.app == app)
        if run_id is not None:
            stmt = stmt.where(Review.run_id == str(run_id))
        if item is not None:
            stmt = stmt.where(Review.item == str(item))
        with Session(self.engine) as session:
            rows = [_review_dict(r) for r in session.scalars(stmt.order_by(Review.id))]
        newest: dict[tuple, int] = {}
        for r in rows:
            newest[(r["app"], r["run_id"], r["item"])] = r["id"]
        for r in rows:
            r["latest"] = newest[(r["app"], r["run_id"], r["item"])] == r["id"]
        return rows

    def audit(self, *, app: str | None = None, run_id: str | None = None, limit: int | None = None) -> list[dict]:
        """Audit entries, newest first."""
        stmt = select(AuditEntry)
        if app is not None:
            stmt = stmt.where(AuditEntry.app == app)
        if run_id is not None:
            stmt = stmt.where(AuditEntry.run_id == str(run_id))
        stmt = stmt.order_by(AuditEntry.id.desc())
        if limit:
            stmt = stmt.limit(limit)
        with Session(self.engine) as session:
            return [{c: _plain(getattr(e, c)) for c in AUDIT_COLUMNS} for e in session.scalars(stmt)]

    def count(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count(Review.id))) or 0)

    # ------------------------------------------------------------------------------------------ export
    def export_csv(self, path: Path | str | None = None, *, app: str | None = None, run_id: str | None = None,
                   latest_only: bool = False, actor: str | None = None, overwrite: bool = False) -> str:
        """Reviews as CSV (every row, or only the latest per item); written to ``path`` when given.

        Returns the CSV text. JSON columns are serialised; ``latest`` says whether a row is the current one.
        An existing ``path`` is refused (InputError) unless ``overwrite``; the file is written under a temporary
        name and renamed into place, and the temporary file is gone whatever happens. The review apps write
        through ``apps.safe_export`` instead, which only ever replaces the suite's own exports.
        """
        rows = self.history(app=app, run_id=run_id)
        if latest_only:
            rows = [r for r in rows if r["latest"]]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[*REVIEW_COLUMNS, "latest"], extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else v
                             for k, v in r.items()})
        text = buf.getvalue()
        if path is not None:
            path = Path(path)
            if (path.exists() or path.is_symlink()) and not overwrite:
                raise InputError(f"{path}: exists; not overwritten (choose another file)")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                tmp.write_text(text, encoding="utf-8", newline="")
                tmp.replace(path)
            finally:
                tmp.unlink(missing_ok=True)
        if actor:
            self.log(actor=actor, action="export.csv", app=app, run_id=run_id,
                     detail={"rows": len(rows), "path": str(path) if path else None, "latest_only": latest_only})
        return text


def _plain(v: Any) -> Any:
    if isinstance(v, datetime):  # SQLite drops the zone (we only ever store UTC); PostgreSQL gives its session's
        return iso_utc(v)
    return v


def _review_dict(r: Review) -> dict:
    return {c: _plain(getattr(r, c)) for c in REVIEW_COLUMNS}


def _jsonable(value: Any) -> Any:
    """Plain JSON values for a JSON column: numpy arrays/scalars -> lists/numbers, NaN/inf -> None, the rest str."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return str(value)


def open_store(url_or_path: str | Path) -> Store:
    """Open (creating if needed) the review database at a SQLAlchemy URL or a SQLite file path."""
    return Store(resolve_url(url_or_path))


# Function-style API over a Store, for scripts and tests.
def record_decision(store: Store, **kwargs: Any) -> int:
    return store.record_decision(**kwargs)


def latest_decisions(store: Store, **kwargs: Any) -> dict[str, dict]:
    return store.latest_decisions(**kwargs)


def history(store: Store, **kwargs: Any) -> list[dict]:
    return store.history(**kwargs)


def export_csv(store: Store, path: Path | str | None = None, **kwargs: Any) -> str:
    return store.export_csv(path, **kwargs)
