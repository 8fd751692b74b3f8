"""The review store is tamper-evident: rows changed, deleted or replaced behind its back through raw SQL are named
by ``vsuite app verify DB`` (the real CLI, in a subprocess); replace-style writes are refused by the database;
databases from before the chain are migrated on open; concurrent writers keep one chain."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from common.store import open_store
from common.store_chain import GENESIS, row_hash, verify_chain

REPO = Path(__file__).resolve().parents[2]


def vsuite(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from common.cli import main; main()", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})


def reviewed_db(tmp_path: Path, n: int = 5) -> Path:
    db = tmp_path / "reviews.sqlite"
    store = open_store(db)
    for i in range(n):
        store.record_decision(app="qc", run_id="r1", item=f"part_{i}.png", reviewer="ann",
                              decision="FAIL" if i % 2 else "PASS", note=f"note {i}",
                              details={"defects": [{"box": [1.0, 2.0, 3.5, 4.25], "action": "confirm"}]},
                              record={"verdict": "FAIL", "max_defect_prob": 0.93})
    store.log(actor="ann", action="export.yolo", app="qc", run_id="r1", detail={"images": n})
    store.close()
    return db


def raw(db: Path) -> sqlite3.Connection:
    """What an attacker with the file has: the sqlite3 module, no foreign keys, autocommit."""
    return sqlite3.connect(db, isolation_level=None)


def test_intact_database_verifies(tmp_path):
    db = reviewed_db(tmp_path)
    res = vsuite("app", "verify", str(db))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "intact" in res.stdout and "reviews" in res.stdout and "audit_log" in res.stdout
    report = verify_chain(db)
    assert report.ok and [(t.table, t.rows) for t in report.tables] == [("reviews", 5), ("audit_log", 6)]
    with raw(db) as conn:  # the first row hangs off the genesis value, each row off the one before
        rows = conn.execute("SELECT prev_hash, row_hash FROM reviews ORDER BY id").fetchall()
    assert rows[0][0] == GENESIS and all(rows[i][0] == rows[i - 1][1] for i in range(1, len(rows)))


def test_review_row_changed_through_raw_sql_is_named(tmp_path):
    db = reviewed_db(tmp_path)
    with raw(db) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE reviews SET decision = 'PASS' WHERE id = 4")
        conn.execute("DROP TRIGGER reviews_no_update")  # as someone with write access to the file would
        conn.execute("UPDATE reviews SET decision = 'PASS' WHERE id = 4")
    assert open_store(db).history(item="part_3.png")[0]["decision"] == "PASS"  # the change is real
    res = vsuite("app", "verify", str(db))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "reviews row 4: content does not match its hash (changed after it was written)" in res.stdout
    report = verify_chain(db)
    reviews, audit = report.tables
    assert [(b.row_id, b.kind) for b in reviews.breaks] == [(4, "content")]  # one change, one break
    assert audit.breaks == []


def test_rewritten_hash_breaks_the_link_of_the_next_row(tmp_path):
    """Changing a row and recomputing its own hash still shows: the next row links to the old hash."""
    db = reviewed_db(tmp_path)
    with raw(db) as conn:
        conn.execute("DROP TRIGGER reviews_no_update")
        conn.execute("UPDATE reviews SET reviewer = 'mallory' WHERE id = 2")
        conn.row_factory = sqlite3.Row
        row = dict(conn.execute("SELECT * FROM reviews WHERE id = 2").fetchone())
        conn.execute("UPDATE reviews SET row_hash = ? WHERE id = 2", (row_hash("reviews", row, row["prev_hash"]),))
    res = vsuite("app", "verify", str(db))
    assert res.returncode == 1
    assert "reviews row 3: does not link to row 2" in res.stdout


def test_insert_or_replace_is_refused(tmp_path):
    db = reviewed_db(tmp_path)
    with raw(db) as conn:
        for sql in ("INSERT OR REPLACE INTO reviews (id, created_at, app, run_id, item, reviewer, decision, note) "
                    "VALUES (2, '2026-01-01 00:00:00.000000', 'qc', 'r1', 'part_1.png', 'mallory', 'PASS', '')",
                    "REPLACE INTO audit_log (id, created_at, actor, action) "
                    "VALUES (1, '2026-01-01 00:00:00.000000', 'mallory', 'review')",
                    "INSERT INTO reviews (id, created_at, app, run_id, item, reviewer, decision, note) "
                    "VALUES (3, '2026-01-01 00:00:00.000000', 'qc', 'r1', 'x', 'm', 'PASS', '') "
                    "ON CONFLICT(id) DO UPDATE SET decision = 'PASS'"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(sql)
        assert conn.execute("SELECT reviewer, decision FROM reviews WHERE id = 2").fetchone() == ("ann", "FAIL")
        assert conn.execute("SELECT count(*) FROM reviews").fetchone() == (5,)
    assert vsuite("app", "verify", str(db)).returncode == 0


def test_deleted_rows_are_named_as_gaps(tmp_path):
    db = reviewed_db(tmp_path)
    with raw(db) as conn:
        conn.execute("DROP TRIGGER reviews_no_delete")
        conn.execute("DELETE FROM reviews WHERE id = 2")
    res = vsuite("app", "verify", str(db))
    assert res.returncode == 1
    assert "reviews row 2 missing (id gap before row 3: deleted)" in res.stdout
    # the last row cut off: the next decision written shows the gap (ids continue after the highest ever given)
    with raw(db) as conn:
        conn.execute("DELETE FROM reviews WHERE id = 5")
    open_store(db).record_decision(app="qc", run_id="r1", item="part_9.png", reviewer="ann", decision="PASS")
    reviews = verify_chain(db).tables[0]
    assert [(b.row_id, b.kind) for b in reviews.breaks] == [(2, "missing"), (5, "missing")]


def test_row_written_around_the_store_is_named(tmp_path):
    db = reviewed_db(tmp_path)
    with raw(db) as conn:
        conn.execute("INSERT INTO reviews (created_at, app, run_id, item, reviewer, decision, note) "
                     "VALUES ('2026-01-01 00:00:00.000000', 'qc', 'r1', 'part_0.png', 'mallory', 'PASS', '')")
    res = vsuite("app", "verify", str(db))
    assert res.returncode == 1 and "reviews row 6" in res.stdout
    assert {b.kind for b in verify_chain(db).tables[0].breaks} == {"link", "unhashed"}


LEGACY_SCHEMA = """
CREATE TABLE reviews (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, created_at DATETIME NOT NULL,
    app VARCHAR(16) NOT NULL, run_id VARCHAR(200) NOT NULL, item VARCHAR(1000) NOT NULL,
    reviewer VARCHAR(200) NOT NULL, decision VARCHAR(64) NOT NULL, finding VARCHAR(1000), note TEXT NOT NULL,
    details JSON, record JSON);
CREATE TRIGGER reviews_no_update BEFORE UPDATE ON reviews BEGIN SELECT RAISE(ABORT, 'reviews is append-only'); END;
CREATE TRIGGER reviews_no_delete BEFORE DELETE ON reviews BEGIN SELECT RAISE(ABORT, 'reviews is append-only'); END;
CREATE TABLE audit_log (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, created_at DATETIME NOT NULL,
    actor VARCHAR(200) NOT NULL, action VARCHAR(64) NOT NULL, app VARCHAR(16), run_id VARCHAR(200),
    item VARCHAR(1000), review_id INTEGER, detail JSON, FOREIGN KEY(review_id) REFERENCES reviews (id));
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
INSERT INTO reviews VALUES (1, '2026-01-05 08:00:00.123456', 'med', 'r0', 'case_1', 'dr a', 'agree', NULL, '',
    '{"truth_label": "lesion"}', '{"verdict": "positive", "p": 0.93}');
INSERT INTO reviews VALUES (2, '2026-01-05 08:01:00.000001', 'med', 'r0', 'case_1', 'dr b', 'disagree', 'cyst',
    'second look', '{"truth_label": "normal"}', 'null');
INSERT INTO audit_log VALUES (1, '2026-01-05 08:00:00.200000', 'dr a', 'review', 'med', 'r0', 'case_1', 1,
    '{"decision": "agree", "finding": null}');
INSERT INTO audit_log VALUES (2, '2026-01-05 08:01:00.100000', 'dr b', 'review', 'med', 'r0', 'case_1', 2,
    '{"decision": "disagree", "finding": "cyst"}');
"""


def test_database_from_before_the_chain_is_migrated_on_open(tmp_path):
    db = tmp_path / "old.sqlite"
    with raw(db) as conn:
        conn.executescript(LEGACY_SCHEMA)
    res = vsuite("app", "verify", str(db))  # verify reads only: an old database is reported, not changed
    assert res.returncode == 1 and "no hash chain" in res.stdout
    store = open_store(db)
    hist = store.history(app="med", item="case_1")
    assert [(h["reviewer"], h["decision"], h["latest"]) for h in hist] == [("dr a", "agree", False),
                                                                          ("dr b", "disagree", True)]
    started = store.audit(limit=1)[0]
    assert started["action"] == "store.chain_started"
    assert started["detail"] == {"legacy_rows": {"reviews": 2, "audit_log": 2}}
    store.record_decision(app="med", run_id="r0", item="case_2", reviewer="dr a", decision="agree")
    assert vsuite("app", "verify", str(db)).returncode == 0
    open_store(db)  # opening again migrates nothing more
    assert [a["action"] for a in store.audit()].count("store.chain_started") == 1
    with raw(db) as conn, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("INSERT OR REPLACE INTO reviews (id, created_at, app, run_id, item, reviewer, decision, note) "
                     "VALUES (1, '2026-01-01 00:00:00.000000', 'med', 'r0', 'case_1', 'mallory', 'agree', '')")


def test_verify_refuses_what_is_not_a_review_database(tmp_path):
    res = vsuite("app", "verify", str(tmp_path / "nope.sqlite"))
    assert res.returncode == 2 and "no such review database" in res.stderr
    assert not (tmp_path / "nope.sqlite").exists()  # verify never creates a database
    other = tmp_path / "other.sqlite"
    with raw(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    res = vsuite("app", "verify", str(other))
    assert res.returncode == 2 and "not a review database" in res.stderr
