"""`inspect --watch` on a hot folder, stopped with SIGINT mid-stream and restarted: every file exactly once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from industrial_qc.data import load_dataset


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
