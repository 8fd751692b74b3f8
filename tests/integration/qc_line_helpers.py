"""Running the real line script (``python -m industrial_qc.cli inspect``) and reading what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def inspect_cli(run: Path, source: str, out: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "industrial_qc.cli", "inspect", str(run), source, "--out", str(out), *extra]
    env = {**os.environ, "VSUITE_ORT_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def strict_json_lines(path: Path) -> list[dict]:
    """Every line parsed as strict JSON (a NaN or Infinity token fails)."""
    def refuse(token: str):
        raise AssertionError(f"{path}: non-JSON token {token}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text(encoding="utf-8").splitlines()]
