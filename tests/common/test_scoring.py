"""The engine side of batch scoring without a model: the inputs list, ``--out`` forms, and the sinks that write
records as they come and tell a resumed pass what is done (JSONL, CSV/Parquet with a ledger, a partitioned Parquet
folder); the local engine's driver loop with a toy scorer."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from rich.console import Console

from common.errors import InputError
from common.results import dataset_parts, read_jsonl, read_records, write_records
from common.scoring import (
    DatasetSink,
    ScoreJob,
    ScoreOptions,
    ledger_path,
    open_sink,
    read_inputs_file,
    resolve_out,
    run_job,
)

QUIET = Console(quiet=True)


def rec(source: str, **fields) -> dict:
    return {"source": source, "status": "ok", "reason": None, **fields}


def test_inputs_file_skips_blank_lines_and_comments(tmp_path):
    listing = tmp_path / "inputs.txt"
    listing.write_bytes(b"# parts of line 2\n\n a.png \nfolder/\n  # not this\n'b*.png'\nname_\xff.png\n")
    assert read_inputs_file(listing) == ["a.png", "folder/", "'b*.png'", os.fsdecode(b"name_\xff.png")]
    with pytest.raises(InputError, match=r"nope\.txt: inputs list not found \(--inputs-from\)"):
        read_inputs_file(tmp_path / "nope.txt")
    with pytest.raises(InputError, match="not a folder"):
        read_inputs_file(tmp_path)


def test_out_is_a_table_file_or_a_dataset_folder(tmp_path):
    assert resolve_out(str(tmp_path / "s.csv")) == (tmp_path / "s.csv", False)
    assert resolve_out(f"{tmp_path}/scores/") == (tmp_path / "scores", True)
    assert resolve_out(str(tmp_path)) == (tmp_path, True)  # an existing folder
    with pytest.raises(InputError, match="must end in one of"):
        resolve_out(str(tmp_path / "s.xlsx"))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_resume_skips_what_the_output_holds(tmp_path, suffix):
    out = tmp_path / f"s{suffix}"
    with open_sink(out, ScoreOptions()) as sink:
        sink.write(rec("a", n=1))
        sink.write(rec("b", n=2))
    with open_sink(out, ScoreOptions(resume=True)) as sink:
        assert sink.has("a") and sink.has("b") and not sink.has("c")
        sink.write(rec("c", n=3))
    assert [(r["source"], r["n"]) for r in read_records(out)] == [("a", 1), ("b", 2), ("c", 3)]
    assert not ledger_path(out).exists()
    with open_sink(out, ScoreOptions()) as sink:  # no --resume: replaced
        assert not sink.has("a")
        sink.write(rec("d", n=4))
    assert [r["source"] for r in read_records(out)] == ["d"]


def test_a_killed_table_job_keeps_its_ledger_for_resume(tmp_path):
    out = tmp_path / "s.csv"
    write_records([rec("a")], out)
    with pytest.raises(KeyboardInterrupt), open_sink(out, ScoreOptions(resume=True)) as sink:
        sink.write(rec("b"))
        raise KeyboardInterrupt
    assert [r["source"] for r in read_records(out)] == ["a"]  # the table is untouched ...
    assert [r["source"] for r in read_jsonl(ledger_path(out))] == ["b"]  # ... and b waits in the ledger
    # Killed after the table was written but before the ledger went: its records are in the table already.
    write_records([rec("a"), rec("b")], out)
    with open_sink(out, ScoreOptions(resume=True)) as sink:
        assert sink.has("b")
        sink.write(rec("c"))
    assert [r["source"] for r in read_records(out)] == ["a", "b", "c"]


def test_dataset_parts_are_written_as_they_fill_and_read_back_as_one(tmp_path):
    out = tmp_path / "scores"
    sink = DatasetSink(out, resume=False, part_records=2)
    with sink:
        sink.write(rec("a", verdict="PASS", score=0.1))
        sink.write(rec("b", verdict="FAIL", score=0.9))
        assert [p.name for p in dataset_parts(out)] == ["part-00000.parquet"]  # complete before the job ends
        sink.write({"source": "c", "status": "error", "reason": "cannot decode"})
    assert [p.name for p in dataset_parts(out)] == ["part-00000.parquet", "part-00001.parquet"]
    with pytest.raises(KeyboardInterrupt), DatasetSink(out, resume=True, part_records=10) as sink:
        assert sink.has("c")
        sink.write(rec("d", verdict="REVIEW", score=0.5, extra=[1, 2]))
        raise KeyboardInterrupt  # what was scored before the stop becomes a part too
    back = read_records(out)
    assert [r["source"] for r in back] == ["a", "b", "c", "d"]
    assert back[2]["verdict"] is None and back[2]["reason"] == "cannot decode"  # columns: the union of the parts'
    assert back[3]["extra"] == "[1, 2]" and back[0]["extra"] is None
    with DatasetSink(out, resume=False) as sink:  # no --resume: the old parts go
        sink.write(rec("e"))
    assert [r["source"] for r in read_records(out)] == ["e"]


class Doubler:
    """A toy scorer: the record of a prepared row (``ScoreJob``'s scorer protocol)."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def score(self, meta: dict, array: np.ndarray) -> dict:
        return rec(meta["source"], value=float(array.sum()) * self.factor)


def prepare(row: dict) -> tuple[dict, np.ndarray]:
    return {"source": row["source"]}, np.full(3, row["n"], np.float32)


def test_the_local_engine_resumes_and_keeps_order(tmp_path):
    out = tmp_path / "s.jsonl"
    rows = [{"source": s, "n": n} for s, n in (("a", 1), ("b", 2), ("c", 3))]
    first = run_job(ScoreJob(rows[:2], prepare, Doubler, (2,)), out, ScoreOptions(), QUIET)
    assert [r["value"] for r in first] == [6.0, 12.0]
    job = ScoreJob(rows, prepare, Doubler, (2,), first=[{"source": "x", "status": "error", "reason": "missing"}])
    again = run_job(job, out, ScoreOptions(resume=True), QUIET)
    assert [r["source"] for r in again] == ["x", "c"]
    assert [r["source"] for r in read_jsonl(out)] == ["a", "b", "x", "c"]


def test_the_ray_engine_without_ray_is_an_input_error(monkeypatch):
    from common.ray_engine import ray_records

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed: `import ray` fails
    with pytest.raises(InputError, match="--engine ray: Ray is not installed"):
        next(ray_records([{"source": "a", "n": 1}], prepare, Doubler, (1,), ScoreOptions(engine="ray")))
