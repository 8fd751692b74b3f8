"""The line script on a hot folder, end to end: stopped with SIGINT mid-stream and restarted (every file exactly
once), parts written slowly, one line per output folder, same-named parts, and a move a kill cut short."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from industrial_qc.data import load_dataset
from tests.integration.qc_line_helpers import inspect_cli, strict_json_lines


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def _start(run: Path, folder: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "industrial_qc.cli", "inspect", str(run), str(folder), "--watch", "--out", str(out),
           "--poll", "0.05", *extra]
    env = {**os.environ, "VSUITE_ORT_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_watch_stop_and_restart_processes_each_file_once(tiny_run, tiny_data, tmp_path):
    sources = [s.image for split in ("test", "val") for s in load_dataset(tiny_data).split(split)]
    names = [f"line_{i:03d}{src.suffix}" for i, src in enumerate(sources * 3)]
    sources = sources * 3
    folder, out = tmp_path / "hot", tmp_path / "out"
    folder.mkdir()
    results = out / "results.jsonl"

    first = _start(tiny_run, folder, out)
    copied = 0
    deadline = time.monotonic() + 90
    # Parts arrive one by one while the line runs; stop it once a handful are recorded.
    while len(_lines(results)) < 5 and time.monotonic() < deadline:
        if copied < len(names) // 2:
            shutil.copy(sources[copied], folder / names[copied])
            copied += 1
        time.sleep(0.05)
        assert first.poll() is None, first.stdout.read()
    assert len(_lines(results)) >= 5, "the line never produced records"
    first.send_signal(signal.SIGINT)
    output, _ = first.communicate(timeout=60)
    assert first.returncode == 0, output
    assert "stopped by SIGINT" in output
    after_stop = [json.loads(line) for line in _lines(results)]  # every line is a whole record
    assert 5 <= len(after_stop) <= copied

    # More parts land while the line is down; the restart takes all of them and exits when the folder is idle.
    for i in range(copied, len(names)):
        shutil.copy(sources[i], folder / names[i])
    second = _start(tiny_run, folder, out, "--idle-exit", "1.0")
    output, _ = second.communicate(timeout=120)
    assert second.returncode == 0, output

    records = [json.loads(line) for line in _lines(results)]
    recorded = [Path(r["file"]).name for r in records]
    assert sorted(recorded) == sorted(names), "a file was skipped or repeated"
    assert len(set(recorded)) == len(recorded)
    assert all(r["status"] == "ok" for r in records)
    assert len(_lines(out / "ledger.txt")) == len(names)


def test_a_part_written_slowly_is_inspected_once_complete(tiny_run, tiny_data, tmp_path):
    """One part arrives in pieces over 2.5 s; another stops for 1.5 s (longer than --settle-seconds) halfway.
    Both are inspected once, complete, and moved (whole) into their verdict folder."""
    folder, out = tmp_path / "hot", tmp_path / "out"
    folder.mkdir()
    src = [s.image for s in load_dataset(tiny_data).split("test")][:2]
    data = [p.read_bytes() for p in src]
    line = subprocess.Popen(
        [sys.executable, "-m", "industrial_qc.cli", "inspect", str(tiny_run), str(folder), "--watch", "--out",
         str(out), "--poll", "0.1", "--idle-exit", "4", "--sort", "move"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "VSUITE_ORT_THREADS": "1"})
    try:
        import time

        with open(folder / "slow.png", "wb") as a, open(folder / "paused.png", "wb") as b:
            pieces = np.linspace(0, len(data[0]), 6).astype(int)
            for i in range(5):
                a.write(data[0][pieces[i]:pieces[i + 1]])
                a.flush()
                if i == 1:
                    b.write(data[1][: len(data[1]) // 2])
                    b.flush()
                time.sleep(0.5)
            time.sleep(0.5)  # paused.png has now been still for 1.5 s: taken, fails to decode, held back
            b.write(data[1][len(data[1]) // 2:])
        output, _ = line.communicate(timeout=120)
    finally:
        line.kill()
    assert line.returncode == 0, output
    records = strict_json_lines(out / "results.jsonl")
    assert sorted(Path(r["file"]).name for r in records) == ["paused.png", "slow.png"], records
    assert all(r["status"] == "ok" for r in records), records
    for r, original in ((r, data[0] if r["file"].endswith("slow.png") else data[1]) for r in records):
        moved = out / r["verdict"].lower() / Path(r["file"]).name
        assert moved.read_bytes() == original
    assert not list(folder.iterdir())


def test_a_second_line_on_the_same_output_folder_refuses(tiny_run, tiny_data, tmp_path):
    folder, out = tmp_path / "hot", tmp_path / "out"
    folder.mkdir()
    first = subprocess.Popen(
        [sys.executable, "-m", "industrial_qc.cli", "inspect", str(tiny_run), str(folder), "--watch", "--out",
         str(out), "--poll", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import time

        deadline = time.monotonic() + 60
        while not (out / ".lock").is_file() or not (out / ".lock").read_text().strip():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.1)
        second = inspect_cli(tiny_run, str(folder), out)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"(pid {first.pid})" in second.stderr and "one line per output folder" in second.stderr
    finally:
        first.terminate()
        first.communicate(timeout=60)
    assert first.returncode == 0
    # once the first has stopped the folder is free again
    again = inspect_cli(tiny_run, str(folder), out)
    assert again.returncode == 0, again.stderr


def test_parts_with_the_same_name_keep_both_sorted_copies(tiny_run, tiny_data, tmp_path):
    root, out = tmp_path / "lines", tmp_path / "out"
    src = [s.image for s in load_dataset(tiny_data).split("test")][:2]
    for sub, image in zip(("line1", "line2"), src, strict=True):
        (root / sub).mkdir(parents=True)
        shutil.copy2(image, root / sub / "part.png")
    proc = inspect_cli(tiny_run, str(root / "**" / "*.png"), out, "--sort", "copy")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = strict_json_lines(out / "results.jsonl")
    assert len(records) == 2
    copies = sorted(p for p in out.rglob("*.png") if p.parent.name in {"pass", "fail", "review"})
    assert len(copies) == 2
    assert sorted(p.read_bytes() for p in copies) == sorted(p.read_bytes() for p in src)
    assert not list(out.rglob("*.tmp"))


def test_a_restart_finishes_a_move_that_a_kill_cut_short(tiny_run, tiny_data, tmp_path):
    folder, out = tmp_path / "hot", tmp_path / "out"
    folder.mkdir()
    for i, s in enumerate(load_dataset(tiny_data).split("test")[:3]):
        shutil.copy2(s.image, folder / f"p{i}.png")
    assert inspect_cli(tiny_run, str(folder), out, "--sort", "move").returncode == 0
    last = strict_json_lines(out / "results.jsonl")[-1]
    assert last["sort"] == "move" and not list(folder.iterdir())
    # the state a kill between 'recorded' and 'moved' leaves: the newest part still in the hot folder, unchanged
    moved = out / last["verdict"].lower() / Path(last["file"]).name
    os.rename(moved, last["file"])
    proc = inspect_cli(tiny_run, str(folder), out, "--sort", "move")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert moved.is_file() and not list(folder.iterdir())
    assert len(strict_json_lines(out / "results.jsonl")) == 3  # moved, not inspected again
