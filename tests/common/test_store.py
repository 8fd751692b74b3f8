"""The review store on real SQLite files: default location, append-only history, latest wins, concurrent writers."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from common.errors import InputError
from common.store import default_db_path, export_csv, history, latest_decisions, open_store, record_decision

REPO = Path(__file__).resolve().parents[2]


def test_sqlite_file_next_to_results_by_default(tmp_path):
    results = tmp_path / "line_out" / "results.jsonl"
    results.parent.mkdir()
    db = default_db_path(results)
    assert db == results.parent.resolve() / "reviews.sqlite"
    store = open_store(db)
    assert store.is_sqlite and store.url == f"sqlite:///{db}"
    record_decision(store, app="qc", run_id="r1", item="a.png", reviewer="ann", decision="FAIL", note="scratch")
    assert db.is_file()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    # any SQLAlchemy URL works too (the same file, through its URL)
    again = open_store(f"sqlite:///{db}")
    assert latest_decisions(again, app="qc")["a.png"]["note"] == "scratch"


def test_latest_wins_and_history_is_kept(tmp_path):
    store = open_store(tmp_path / "reviews.sqlite")
    first = store.record_decision(app="med", run_id="r1", item="case_1", reviewer="dr a", decision="agree",
                                  finding="lesion", record={"verdict": "positive", "p": 0.9})
    store.record_decision(app="med", run_id="r1", item="case_2", reviewer="dr a", decision="agree")
    second = store.record_decision(app="med", run_id="r1", item="case_1", reviewer="dr b", decision="disagree",
                                   finding="no lesion", note="motion artefact", details={"truth_label": "normal"})
    store.record_decision(app="med", run_id="other-run", item="case_1", reviewer="dr c", decision="agree")
    latest = latest_decisions(store, app="med", run_id="r1")
    assert set(latest) == {"case_1", "case_2"}
    assert latest["case_1"]["id"] == second and latest["case_1"]["decision"] == "disagree"
    assert latest["case_1"]["details"] == {"truth_label": "normal"}
    hist = history(store, app="med", run_id="r1", item="case_1")
    assert [h["id"] for h in hist] == [first, second]
    assert [h["latest"] for h in hist] == [False, True]
    assert hist[0]["record"] == {"verdict": "positive", "p": 0.9} and hist[0]["reviewer"] == "dr a"
    assert hist[0]["created_at"] <= hist[1]["created_at"]
    # one audit entry per decision
    assert [a["action"] for a in store.audit(app="med", run_id="r1")] == ["review"] * 3
    # CSV export: every row, or only the winners
    rows = list(csv.DictReader(io.StringIO(export_csv(store, app="med", run_id="r1"))))
    assert len(rows) == 3
    out = tmp_path / "signoffs.csv"
    export_csv(store, out, app="med", run_id="r1", latest_only=True, actor="dr b")
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["item"] for r in rows) == ["case_1", "case_2"]
    assert store.audit(app="med", run_id="r1", limit=1)[0]["action"] == "export.csv"


def test_rows_cannot_be_changed_in_place(tmp_path):
    store = open_store(tmp_path / "reviews.sqlite")
    store.record_decision(app="qc", run_id="r", item="a.png", reviewer="ann", decision="PASS")
    for sql in ("UPDATE reviews SET decision = 'FAIL'", "DELETE FROM reviews", "DELETE FROM audit_log"):
        with pytest.raises(IntegrityError, match="append-only"), store.engine.begin() as conn:
            conn.execute(text(sql))
    assert store.latest_decisions()["a.png"]["decision"] == "PASS"


def test_decision_needs_a_reviewer(tmp_path):
    store = open_store(tmp_path / "reviews.sqlite")
    with pytest.raises(InputError, match="reviewer"):
        store.record_decision(app="qc", run_id="r", item="a.png", reviewer="  ", decision="PASS")
    assert store.count() == 0


def test_bad_url_is_an_input_error():
    with pytest.raises(InputError, match="no SQLAlchemy dialect"):
        open_store("nodialect://user@host/db")


WRITER = """
import sys, time
from pathlib import Path
from common.store import open_store
db, who, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
store = open_store(db)
go.with_name(f"ready-{who}").touch()
while not go.exists():
    time.sleep(0.005)
for i in range(n):
    store.record_decision(app="qc", run_id="r", item=f"{who}-{i % 7}.png", reviewer=who, decision="FAIL",
                          note=str(i))
    # A pause between clicks, as a reviewer makes. Without it one writer can take the lock back-to-back for all
    # its writes while SQLite's busy handler keeps the other one backing off, and the two never interleave.
    time.sleep(0.003)
print("done", who)
"""


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    db = tmp_path / "reviews.sqlite"
    go = tmp_path / "go"
    n = 150
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), who, str(n), str(go)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for who in ("tab1", "tab2")]
    # both have opened the database (schema creation raced too) and wait for the signal; a loaded machine can
    # take seconds to start them, and a fixed sleep then let one writer finish before the other began
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{who}").exists() for who in ("tab1", "tab2")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "writers did not start"
        time.sleep(0.01)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    store = open_store(db)
    rows = store.history(app="qc", run_id="r")
    assert len(rows) == 2 * n
    for who in ("tab1", "tab2"):
        assert sorted(int(r["note"]) for r in rows if r["reviewer"] == who) == list(range(n))
    assert len(store.audit()) == 2 * n
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # the two writers interleaved (they really ran at once), and the latest per item is each writer's last write
    first_tab2 = next(i for i, r in enumerate(rows) if r["reviewer"] == "tab2")
    assert any(r["reviewer"] == "tab1" for r in rows[first_tab2:])
    latest = store.latest_decisions(app="qc", run_id="r")
    assert len(latest) == 14
    assert latest["tab1-0.png"]["note"] == str(max(i for i in range(n) if i % 7 == 0))
    # concurrent writers keep one hash chain per table (each row links to the row written just before it)
    report = store.verify()
    assert report.ok, [b.message for t in report.tables for b in t.breaks]
    assert [t.rows for t in report.tables] == [2 * n, 2 * n]


def test_threads_sharing_one_store_lose_nothing(tmp_path):
    store = open_store(tmp_path / "reviews.sqlite")
    errors: list[BaseException] = []

    def work(who: str) -> None:
        try:
            for i in range(40):
                store.record_decision(app="med", run_id="r", item=f"case_{i % 5}", reviewer=who, decision="agree",
                                      note=str(i))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"dr{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.count() == 160
    assert len(store.latest_decisions(app="med", run_id="r")) == 5
