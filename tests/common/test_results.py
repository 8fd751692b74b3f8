import json

import pytest

from common.errors import InputError
from common.results import JsonlWriter, error_record, read_jsonl, read_records, write_records


def test_jsonl_writer_appends_and_survives_torn_line(tmp_path):
    path = tmp_path / "results.jsonl"
    with JsonlWriter(path) as w:
        w.write({"source": "a.png", "status": "ok", "defects": [{"box": [1, 2, 3, 4]}]})
    # simulate a writer killed mid-record
    with open(path, "a") as f:
        f.write('{"source": "b.png", "sta')
    assert [r["source"] for r in read_jsonl(path)] == ["a.png"]
    with JsonlWriter(path) as w:  # a restart repairs the tail and keeps appending
        w.write(error_record("c.png", "cannot decode image"))
    recs = read_jsonl(path)
    assert [r["source"] for r in recs] == ["a.png", "c.png"]
    assert recs[1]["status"] == "error" and recs[1]["reason"] == "cannot decode image"
    assert recs[0]["defects"][0]["box"] == [1, 2, 3, 4]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_write_records_formats(tmp_path, suffix):
    recs = [{"source": "a", "status": "ok", "reason": None, "probs": {"x": 0.9}, "n": 1},
            {"source": "b", "status": "error", "reason": "bad", "probs": None, "n": None}]
    out = write_records(recs, tmp_path / f"r{suffix}")
    back = read_records(out)
    assert [r["source"] for r in back] == ["a", "b"]
    assert back[1]["reason"] == "bad"
    probs = back[0]["probs"]
    assert (json.loads(probs) if isinstance(probs, str) else probs) == {"x": 0.9}


def test_write_records_rejects_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match="must end in one of"):
        write_records([], tmp_path / "r.xlsx")
