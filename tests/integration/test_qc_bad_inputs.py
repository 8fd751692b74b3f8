"""A bad-input set built here, through the real line script and batch scoring: each input is answered by exactly
one record; nothing is PASSed that cannot be judged; nothing crashes or hangs."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.results import read_records
from industrial_qc.data import load_dataset
from tests.integration.qc_line_helpers import inspect_cli, strict_json_lines

NON_UTF8 = b"b_\xff.png"


def _png_declaring(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose header declares ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + \
        chunk(b"IEND", b"")


@pytest.fixture
def bad_folder(tmp_path, tiny_data) -> tuple[Path, dict[str, str]]:
    """A hot folder of good parts and every kind of bad input; returns it and the expected outcome per name."""
    folder = tmp_path / "hot"
    folder.mkdir()
    good = [s.image for s in load_dataset(tiny_data).split("test")][:3]
    expect: dict[str, str] = {}
    for i, src in enumerate(good):
        shutil.copy2(src, folder / f"good_{i}.png")
        expect[f"good_{i}.png"] = "ok"
    shutil.copy2(good[0], os.path.join(os.fsencode(folder), NON_UTF8))
    expect[os.fsdecode(NON_UTF8)] = "ok"  # a name that is not UTF-8 is still a part
    secret = tmp_path / "secret.txt"
    secret.write_text("the plant's passwords\n")
    (folder / "evil.png").symlink_to(secret)
    expect["evil.png"] = "symbolic link"
    cv2.imwrite(str(folder / "dot.png"), np.full((1, 1, 3), 128, np.uint8))
    expect["dot.png"] = "smaller than"
    (folder / "huge.png").write_bytes(_png_declaring(20000, 20000))
    expect["huge.png"] = "over the 100 MP limit"
    cv2.imwrite(str(folder / "nan.tiff"), np.full((64, 64), np.nan, np.float32))
    expect["nan.tiff"] = "NaN or infinite"
    cv2.imwrite(str(folder / "blank.png"), np.full((64, 64, 3), 40, np.uint8))
    expect["blank.png"] = "blank image"
    os.mkfifo(folder / "pipe.png")  # reading it would block forever
    expect["pipe.png"] = "not a regular file"
    (folder / "half.png").write_bytes(good[1].read_bytes()[: good[1].stat().st_size // 2])
    expect["half.png"] = "cannot decode"
    (folder / "arriving.png.part").write_bytes(b"still copying")  # ignored until renamed
    (folder / ".hidden.png").write_bytes(b"editor temp")
    return folder, expect


def test_line_answers_every_bad_input_once_and_follows_no_link(tiny_run, bad_folder, tmp_path):
    folder, expect = bad_folder
    out = tmp_path / "out"
    proc = inspect_cli(tiny_run, str(folder), out, "--sort", "copy", "--settle-seconds", "0.2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = strict_json_lines(out / "results.jsonl")
    by_name = {os.path.basename(r["file"]): r for r in records}
    assert len(records) == len(by_name) == len(expect), sorted(by_name)
    assert set(by_name) == set(expect)
    for name, outcome in expect.items():
        rec = by_name[name]
        assert os.path.isabs(rec["source"]) and rec["source"] == rec["file"]
        if outcome == "ok":
            assert rec["status"] == "ok" and rec["verdict"] in {"PASS", "FAIL", "REVIEW"}, rec
        else:
            assert rec["status"] == "error" and rec.get("verdict") is None, rec
            assert outcome in rec["reason"] and name in rec["reason"], rec["reason"]
    # the non-UTF-8 name round-trips to its bytes, and its sorted copy is the same file
    weird = by_name[os.fsdecode(NON_UTF8)]
    assert os.fsencode(weird["source"]) == os.path.join(os.fsencode(folder), NON_UTF8)
    # the link was not followed: the secret is nowhere in the output
    copied = [p for p in out.rglob("*") if p.is_file()]
    assert not any(p.read_bytes() == b"the plant's passwords\n" for p in copied)
    assert not (out / "error" / "evil.png").exists()
    # a restart finds nothing new
    again = inspect_cli(tiny_run, str(folder), out, "--settle-seconds", "0.2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(strict_json_lines(out / "results.jsonl")) == len(expect)


def test_score_answers_every_input_once(tiny_run, bad_folder, tmp_path):
    folder, expect = bad_folder
    (folder / "pipe.png").unlink()  # batch scoring is handed files; a FIFO is covered by the line test
    del expect["pipe.png"]
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    out = tmp_path / "scores.parquet"
    cmd = [sys.executable, "-m", "common.cli", "score", str(tiny_run), str(folder), str(empty),
           str(tmp_path / "missing.png"), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = read_records(out)
    assert len(rows) == len(expect) + 2  # the empty folder and the missing file are rows too
    reasons = " ".join(str(r["reason"]) for r in rows if r["status"] == "error")
    assert "empty_dir: matches no image files" in reasons and "missing.png: no such file" in reasons
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == sum(v == "ok" for v in expect.values())
    # Parquet holds UTF-8 text: the non-UTF-8 name is written readably
    assert any(r["source"].endswith("b_\\xff.png") for r in ok)
    assert "Traceback" not in proc.stdout + proc.stderr
