"""The review store's hash chain: every row of ``reviews`` and of ``audit_log`` carries ``prev_hash`` (the
``row_hash`` of the row before it in id order; ``GENESIS`` for the first) and ``row_hash``, the SHA-256 of a
canonical JSON of its own content and ``prev_hash``. Changing a stored row, deleting one or splicing one in breaks
the chain at that row; ``verify_chain`` recomputes both chains and names the first broken row of each.

Canonical form (``CHAIN_VERSION``)::

    sha256("vsuite-chain-v1\\n<table>\\n" + json.dumps(content, sort_keys=True, separators=(",", ":"),
                                                    ensure_ascii=False, allow_nan=False))

``content`` holds every content column of the row (``CONTENT_COLUMNS``) and ``prev_hash``: ``id`` and
``review_id`` as integers, ``created_at`` as ISO 8601 UTC with microseconds (``2026-01-05T08:00:00.123456+00:00``),
the JSON columns as their decoded value, the rest as stored (text or null).

What a chain cannot show by itself: rows cut off the end (the chain just gets shorter) or a chain recomputed from
the tampered row onwards by someone who rewrites every later hash. ``verify_chain`` reports each table's head hash;
noting it somewhere else (a ticket, a signed log) turns both into a detectable mismatch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from common.errors import InputError

CHAIN_VERSION = "vsuite-chain-v1"
GENESIS = "0" * 64
REVIEW_COLUMNS = ("id", "created_at", "app", "run_id", "item", "reviewer", "decision", "finding", "note",
                  "details", "record")
AUDIT_COLUMNS = ("id", "created_at", "actor", "action", "app", "run_id", "item", "review_id", "detail")
CONTENT_COLUMNS = {"reviews": REVIEW_COLUMNS, "audit_log": AUDIT_COLUMNS}
JSON_COLUMNS = frozenset({"details", "record", "detail"})
INT_COLUMNS = frozenset({"id", "review_id"})

BreakKind = Literal["content", "link", "missing", "unhashed", "unchained"]


# ------------------------------------------------------------------------------------------------ hashing
def iso_utc(value: datetime | str) -> str:
    """A stored timestamp as ISO 8601 UTC with microseconds (SQLite hands back naive text, PostgreSQL an aware
    datetime in the session's zone; both mean the same instant)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def _canonical_value(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column == "created_at":
        return iso_utc(value)
    if column in JSON_COLUMNS:
        return json.loads(value) if isinstance(value, str | bytes) else value
    if column in INT_COLUMNS and isinstance(value, int | str) and str(value).lstrip("-").isdigit():
        return int(value)
    return value


def row_hash(table: str, row: dict[str, Any], prev_hash: str) -> str:
    """SHA-256 (hex) of ``row``'s content columns and ``prev_hash``, in the canonical form above.

    ``row`` may hold the values as written (datetime, dict) or as read back raw (text); both hash the same.
    Raises ValueError / TypeError when a value cannot be put in canonical form (a row mangled in the database).
    """
    content = {c: _canonical_value(c, row.get(c)) for c in CONTENT_COLUMNS[table]}
    content["prev_hash"] = prev_hash
    body = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(f"{CHAIN_VERSION}\n{table}\n{body}".encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ writing
def lock_for_append(conn: Connection) -> None:
    """Serialize appends across processes so each new row links to the true last row.

    SQLite: the write transaction is already ``BEGIN IMMEDIATE`` (one writer at a time), nothing to add.
    PostgreSQL: ``SHARE ROW EXCLUSIVE`` on both tables conflicts with itself, so a second writer waits for the
    first to commit before it reads the last row (``SELECT ... FOR UPDATE`` on the last row would not do: both
    writers would lock and chain to the same row). Other databases: not serialized here.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE reviews, audit_log IN SHARE ROW EXCLUSIVE MODE"))


def next_link(conn: Connection, table: str) -> tuple[int, str]:
    """(id, prev_hash) for the row about to be appended to ``table`` (call inside the write transaction).

    The id continues after the highest id ever handed out (SQLite's ``sqlite_sequence``), not after the last row
    left: a row deleted from the end shows as a gap as soon as the next row is written.
    """
    last = conn.execute(text(f"SELECT id, row_hash FROM {table} ORDER BY id DESC LIMIT 1")).first()
    next_id = (int(last[0]) if last else 0) + 1
    if conn.dialect.name == "sqlite":
        seq = conn.execute(text("SELECT seq FROM sqlite_sequence WHERE name = :t"), {"t": table}).scalar()
        next_id = max(next_id, int(seq or 0) + 1)
    return next_id, (last[1] or GENESIS) if last else GENESIS


def chain_columns_present(conn: Connection, table: str) -> bool:
    cols = {c["name"] for c in inspect(conn).get_columns(table)}
    return {"prev_hash", "row_hash"} <= cols


def sqlite_triggers(table: str) -> dict[str, str]:
    """Trigger name -> DDL making ``table`` append-only in SQLite (other databases rely on the API and the chain).

    ``<table>_no_replace`` runs BEFORE INSERT, i.e. before conflict resolution: ``INSERT OR REPLACE`` / ``REPLACE``
    with an existing id is refused instead of silently deleting the old row (delete triggers do not fire for
    REPLACE unless recursive triggers are on).
    """
    refuse = f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
    return {
        f"{table}_no_update": f"CREATE TRIGGER IF NOT EXISTS {table}_no_update BEFORE UPDATE ON {table} {refuse}",
        f"{table}_no_delete": f"CREATE TRIGGER IF NOT EXISTS {table}_no_delete BEFORE DELETE ON {table} {refuse}",
        f"{table}_no_replace": (
            f"CREATE TRIGGER IF NOT EXISTS {table}_no_replace BEFORE INSERT ON {table} "
            f"WHEN NEW.id IS NOT NULL AND EXISTS (SELECT 1 FROM {table} WHERE id = NEW.id) "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: a row with this id exists (no replace)'); END"),
    }


def chain_complete(conn: Connection) -> bool:
    """Whether both tables have their hash columns (and, in SQLite, every append-only trigger)."""
    if not all(chain_columns_present(conn, t) for t in CONTENT_COLUMNS):
        return False
    if conn.dialect.name != "sqlite":
        return True
    have = set(conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'").scalars())
    return all(name in have for t in CONTENT_COLUMNS for name in sqlite_triggers(t))


def upgrade_legacy(conn: Connection) -> dict[str, int]:
    """Bring a database from before the chain up to date inside the caller's write transaction: hash columns and
    a chain over the rows of each table that lacks them, the append-only triggers (SQLite). Returns table -> rows
    chained, for the tables that had no chain (empty when there was nothing to do but triggers)."""
    sqlite = conn.dialect.name == "sqlite"
    if sqlite:  # hashing the old rows is an UPDATE: the trigger is lifted for this transaction only
        for t in CONTENT_COLUMNS:
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {t}_no_update")
    legacy = {t: chain_legacy_rows(conn, t) for t in CONTENT_COLUMNS if not chain_columns_present(conn, t)}
    if sqlite:
        for t in CONTENT_COLUMNS:
            for ddl in sqlite_triggers(t).values():
                conn.exec_driver_sql(ddl)
    return legacy


def chain_legacy_rows(conn: Connection, table: str) -> int:
    """Add the hash columns to a table made before the chain and hash its rows in id order, once.

    Runs inside the caller's write transaction (``upgrade_legacy`` lifts SQLite's no-update trigger for it).
    Returns how many rows were chained.
    """
    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN prev_hash VARCHAR(64)"))
    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN row_hash VARCHAR(64)"))
    cols = ", ".join(CONTENT_COLUMNS[table])
    rows = conn.execute(text(f"SELECT {cols} FROM {table} ORDER BY id")).mappings().all()
    prev = GENESIS
    for r in rows:
        h = row_hash(table, dict(r), prev)
        conn.execute(text(f"UPDATE {table} SET prev_hash = :p, row_hash = :h WHERE id = :id"),
                     {"p": prev, "h": h, "id": r["id"]})
        prev = h
    return len(rows)


# ------------------------------------------------------------------------------------------------ verifying
@dataclass
class ChainBreak:
    table: str
    row_id: int
    kind: BreakKind
    message: str  # "reviews row 7: content does not match its hash (changed after it was written)"


@dataclass
class TableCheck:
    table: str
    rows: int = 0
    head: str | None = None  # row_hash of the last row: note it elsewhere to detect rows cut off the end
    breaks: list[ChainBreak] = field(default_factory=list)

    @property
    def first_break(self) -> ChainBreak | None:
        return self.breaks[0] if self.breaks else None


@dataclass
class ChainReport:
    database: str  # URL, password hidden
    tables: list[TableCheck]

    @property
    def ok(self) -> bool:
        return all(not t.breaks for t in self.tables)


def check_table(conn: Connection, table: str) -> TableCheck:
    """Recompute ``table``'s chain; every break found, in id order (one tampered row is one break)."""
    out = TableCheck(table)
    if not chain_columns_present(conn, table):
        out.rows = int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() or 0)
        out.breaks.append(ChainBreak(table, 0, "unchained", f"{table}: no hash chain (a database from before "
                                                            "the chain; the review app adds it when it opens it)"))
        return out
    cols = ", ".join((*CONTENT_COLUMNS[table], "prev_hash", "row_hash"))
    prev_id, prev_hash = 0, GENESIS
    for r in conn.execute(text(f"SELECT {cols} FROM {table} ORDER BY id")).mappings():
        rid = int(r["id"])
        out.rows += 1
        where = f"{table} row {rid}"
        if rid != prev_id + 1:
            gap = f"row {prev_id + 1}" if rid == prev_id + 2 else f"rows {prev_id + 1}..{rid - 1}"
            out.breaks.append(ChainBreak(table, prev_id + 1, "missing",
                                         f"{table} {gap} missing (id gap before row {rid}: deleted)"))
        elif r["prev_hash"] != prev_hash:
            before = f"row {prev_id}" if prev_id else "the start of the chain"
            out.breaks.append(ChainBreak(table, rid, "link", f"{where}: does not link to {before} (chain link "
                                                             "broken: a row rewritten with a new hash, or spliced in)"))
        if not r["row_hash"]:
            out.breaks.append(ChainBreak(table, rid, "unhashed", f"{where}: has no hash (written around the "
                                                                 "review store)"))
        else:
            try:
                ok = row_hash(table, dict(r), r["prev_hash"] or "") == r["row_hash"]
            except (ValueError, TypeError):
                ok = False
            if not ok:
                out.breaks.append(ChainBreak(table, rid, "content", f"{where}: content does not match its hash "
                                                                    "(changed after it was written)"))
        prev_id, prev_hash = rid, r["row_hash"] or ""
        out.head = r["row_hash"]
    return out


def verify_chain(url_or_path: str | Path) -> ChainReport:
    """Check both chains of the review database at a SQLAlchemy URL or SQLite path, read-only.

    InputError when there is no such database or it is not a review database.
    """
    raw = str(url_or_path)
    if "://" not in raw:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise InputError(f"{raw}: no such review database")
        raw = f"sqlite:///{path.resolve()}"
    try:
        url = make_url(raw)
        engine = create_engine(url, **({"connect_args": {"timeout": 30.0}}
                                       if url.get_backend_name() == "sqlite" else {}))
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise InputError(f"{raw}: cannot open ({exc})") from exc
    shown = url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            missing = [t for t in CONTENT_COLUMNS if t not in tables]
            if missing:
                raise InputError(f"{shown}: not a review database (no {', '.join(missing)} table)")
            return ChainReport(shown, [check_table(conn, t) for t in CONTENT_COLUMNS])
    except SQLAlchemyError as exc:
        raise InputError(f"{shown}: cannot read ({exc.__class__.__name__}: {exc})") from exc
    finally:
        engine.dispose()
