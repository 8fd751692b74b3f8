"""Do two versions of the suite give the same records? Train the tiny configs, score the same inputs, compare.

Run it once per version (e.g. a checkout of the old commit on PYTHONPATH, then this one) and compare:

    PYTHONPATH=/tmp/old .venv/bin/python benchmarks/record_parity.py run --out /tmp/parity_old
    .venv/bin/python benchmarks/record_parity.py run --out /tmp/parity_new
    .venv/bin/python benchmarks/record_parity.py compare /tmp/parity_old/records.json /tmp/parity_new/records.json

``run`` drives only the CLI (``vsuite qc synth/train``, ``vsuite med synth/train``, ``vsuite score``), so it works
on any version that has those commands. ``compare`` prints a table (inputs, verdict mismatches, largest score
difference per vertical) and exits 1 when a verdict differs or a score differs by more than ``--tol`` (1e-6).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMING = re.compile(r"(_ms|_s|seconds|time)$")  # wall-clock fields differ between any two runs


def vsuite(*args: str) -> None:
    cmd = [sys.executable, "-c", "from common.cli import main; main()", *args]
    subprocess.run(cmd, check=True, cwd=ROOT, env=os.environ.copy(), stdout=subprocess.DEVNULL)


def numbers(record: dict, prefix: str = "") -> dict[str, float]:
    """Every finite number in a record (nested dicts and lists flattened to dotted keys)."""
    out: dict[str, float] = {}
    items = record.items() if isinstance(record, dict) else enumerate(record)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[name] = float(value)
        elif isinstance(value, dict | list):
            out.update(numbers(value, name + "."))
    return out


def summarize(path: Path, vertical: str, root: Path) -> dict[str, dict]:
    rows = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        key = os.path.relpath(rec["source"], root)
        nums = {k: v for k, v in numbers(rec).items() if not TIMING.search(k.split(".")[-1])}
        rows[key] = {"vertical": vertical, "status": rec.get("status"), "verdict": rec.get("verdict"), "numbers": nums}
    return rows


def run(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    qc_data, med_data = out / "qc_data", out / "med_data"
    vsuite("qc", "synth", str(qc_data), "--images", "32", "--size", "96", "--seed", "3", "--format", "png")
    vsuite("qc", "train", str(qc_data / "data.yaml"), "--out", str(out / "qc_run"),
           "--config", "configs/industrial_qc/tiny.yaml")
    vsuite("score", str(out / "qc_run"), str(qc_data / "images"), "--out", str(out / "qc.jsonl"))
    vsuite("med", "synth", str(med_data), "--cases", "12", "--modality", "mri", "--seed", "7", "--size", "32")
    vsuite("med", "train", str(med_data / "manifest.csv"), "--out", str(out / "med_run"),
           "--config", "configs/medical3d/tiny.yaml", "--set", f"data.cache_dir={out / 'med_cache'}")
    vsuite("score", str(out / "med_run"), str(med_data / "studies"), "--out", str(out / "med.jsonl"))
    rows = summarize(out / "qc.jsonl", "industrial_qc", qc_data)
    rows.update(summarize(out / "med.jsonl", "medical3d", med_data))
    (out / "records.json").write_text(json.dumps(rows, indent=1, sort_keys=True))
    print(f"{len(rows)} records -> {out / 'records.json'}")


def compare(a_path: Path, b_path: Path, tol: float) -> int:
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    table: dict[str, dict] = {}
    for key in sorted(set(a) | set(b)):
        ra, rb = a.get(key), b.get(key)
        vertical = (ra or rb)["vertical"]
        row = table.setdefault(vertical, {"inputs": 0, "missing": 0, "verdicts_differ": 0, "max_abs_diff": 0.0})
        row["inputs"] += 1
        if ra is None or rb is None:
            row["missing"] += 1
            continue
        if (ra["status"], ra["verdict"]) != (rb["status"], rb["verdict"]):
            row["verdicts_differ"] += 1
        for name in set(ra["numbers"]) | set(rb["numbers"]):
            va, vb = ra["numbers"].get(name), rb["numbers"].get(name)
            diff = math.inf if va is None or vb is None else abs(va - vb)
            row["max_abs_diff"] = max(row["max_abs_diff"], diff)
    print(f"{'vertical':<15}{'inputs':>8}{'missing':>9}{'verdicts differ':>17}{'max |score diff|':>18}")
    bad = False
    for vertical, row in table.items():
        print(f"{vertical:<15}{row['inputs']:>8}{row['missing']:>9}{row['verdicts_differ']:>17}"
              f"{row['max_abs_diff']:>18.2e}")
        bad |= bool(row["missing"] or row["verdicts_differ"] or row["max_abs_diff"] > tol)
    print("SAME" if not bad else f"DIFFERENT (tolerance {tol:g})")
    return int(bad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="train the tiny configs and score; writes OUT/records.json")
    p_run.add_argument("--out", type=Path, required=True)
    p_cmp = sub.add_parser("compare", help="compare two records.json files")
    p_cmp.add_argument("a", type=Path)
    p_cmp.add_argument("b", type=Path)
    p_cmp.add_argument("--tol", type=float, default=1e-6)
    args = parser.parse_args()
    if args.cmd == "run":
        run(args.out)
    else:
        sys.exit(compare(args.a, args.b, args.tol))


if __name__ == "__main__":
    main()
