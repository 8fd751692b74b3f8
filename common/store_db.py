"""The review store's database: its two tables and the engine that reaches them (SQLAlchemy 2).

    reviews    one row per decision: app ("qc" | "med"), run id, item (file or study), reviewer, decision,
               finding, note, details (JSON: per-defect actions, truth label, ...), record (JSON snapshot of the
               result record the reviewer saw), created_at (UTC)
    audit_log  one row per action: every decision ("review"), every export ("export.csv", "export.yolo"), ...

Both carry ``prev_hash`` and ``row_hash`` (``common.store_chain``). SQLite gets triggers that refuse UPDATE, DELETE
and an INSERT reusing an id, runs in WAL mode with a busy timeout, and opens write transactions with
``BEGIN IMMEDIATE`` so two writers never deadlock on a read->write lock upgrade.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import DDL, JSON, DateTime, ForeignKey, Integer, String, Text, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from common.errors import InputError
from common.store_chain import CONTENT_COLUMNS, sqlite_triggers

BUSY_TIMEOUT_S = 30.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Review(Base):
    """One decision on one item. Never updated: the latest row of (app, run_id, item) is the current one."""

    __tablename__ = "reviews"
    __table_args__: ClassVar[dict] = {"sqlite_autoincrement": True}  # ids never reused: "highest id" stays "latest"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    app: Mapped[str] = mapped_column(String(16), index=True)
    run_id: Mapped[str] = mapped_column(String(200), index=True)
    item: Mapped[str] = mapped_column(String(1000), index=True)
    reviewer: Mapped[str] = mapped_column(String(200))
    decision: Mapped[str] = mapped_column(String(64))
    finding: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    record: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    row_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AuditEntry(Base):
    """Who did what, when: decisions and exports."""

    __tablename__ = "audit_log"
    __table_args__: ClassVar[dict] = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64), index=True)
    app: Mapped[str | None] = mapped_column(String(16), nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    item: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    review_id: Mapped[int | None] = mapped_column(ForeignKey("reviews.id"), nullable=True)
    detail: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    row_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


for _table in CONTENT_COLUMNS:
    for _ddl in sqlite_triggers(_table).values():
        event.listen(Base.metadata.tables[_table], "after_create", DDL(_ddl).execute_if(dialect="sqlite"))


def create_store_engine(url: str) -> Engine:
    """An engine for the review database at ``url``; a SQLite file's folder is created and its connections set up.

    InputError when no SQLAlchemy dialect or driver for ``url`` is installed."""
    is_sqlite = make_url(url).get_backend_name() == "sqlite"
    kwargs: dict[str, Any] = {"pool_pre_ping": not is_sqlite}
    if is_sqlite:
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}
    try:
        engine = create_engine(url, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        raise InputError(f"--db {make_url(url).render_as_string(hide_password=True)}: no SQLAlchemy dialect or "
                         f"driver for it is installed ({exc})") from exc
    if is_sqlite:
        _sqlite_setup(engine)
    return engine


def _sqlite_setup(engine: Engine) -> None:
    """WAL + busy timeout on every connection; transactions begun by us (pysqlite's own begin is disabled) so a
    write can start with ``BEGIN IMMEDIATE``: it takes the write lock up front and waits for it (busy timeout)
    instead of failing on a read->write upgrade."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # autocommit at the driver level; "begin" below opens transactions
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = FULL")  # a signed-off review survives a power cut
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def is_locked(exc: OperationalError) -> bool:
    """Whether a database error means another writer holds the lock (worth a retry)."""
    text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    return "locked" in text or "busy" in text
