"""Soak test of the line script: ``vsuite qc inspect --watch`` on a hot folder fed at a fixed rate for N minutes,
about 1 % of the files bad (corrupt, truncated, blank, 1x1, empty), as a camera PC would feed it.

Reports parts/s, end-to-end latency (file complete in the folder -> its record written; p50/p95) and the line
process's RSS over the first and the last tenth of the run, records vs inputs, duplicates and missing inputs.
Targets (issue 28): records == inputs, 0 duplicates, last/first p95 latency <= 1.2 and last/first RSS <= 1.2.
Prints a table and writes JSON.

    python benchmarks/line_soak.py                         # 10 minutes, 4 parts/s, a throwaway tiny run
    python benchmarks/line_soak.py --minutes 1 --rate 8    # a shorter look
    python benchmarks/line_soak.py --run runs/qc1 --images parts/ --sort move
    python benchmarks/line_soak.py --poll-files 20000      # only the cost of one poll over 20,000 recorded parts

Files are written as a camera PC's copier writes them: to ``NAME.part``, then renamed (``--direct`` writes them
in place, in two halves, and relies on the line's settle time instead). The line runs as its own process (the
real CLI), so its RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BAD_KINDS = ("corrupt", "truncated", "blank", "tiny", "empty")


def _tiny_run(work: Path) -> tuple[Path, list[Path]]:
    """A throwaway run (tests' tiny config, 96 px) and the part images to feed."""
    from rich.console import Console

    from common.config import CONFIG_DIR
    from industrial_qc.config import load_qc_config
    from industrial_qc.data import load_dataset
    from industrial_qc.synth import SynthConfig, synthesize
    from industrial_qc.train import train_run

    data = work / "data"
    rep = synthesize(data, SynthConfig(images=40, size=96, seed=11, image_format="png"))
    run = work / "run"
    if not (run / "run.json").is_file():
        train_run(rep.data_yaml, load_qc_config(CONFIG_DIR / "industrial_qc" / "tiny.yaml"), run,
                  console=Console(quiet=True))
    images = [s.image for split in ("test", "val") for s in load_dataset(rep.data_yaml).split(split)]
    return run, images


def _bad_bytes(kind: str, good: bytes) -> bytes:
    import cv2
    import numpy as np

    if kind == "corrupt":
        return b"\x89PNG\r\n\x1a\n" + os.urandom(200)
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "blank":
        return cv2.imencode(".png", np.full((96, 96, 3), 90, np.uint8))[1].tobytes()
    if kind == "tiny":
        return cv2.imencode(".png", np.full((1, 1, 3), 90, np.uint8))[1].tobytes()
    return b""


class Feeder(threading.Thread):
    """Writes ``rate`` files a second into ``folder`` for ``seconds``; every ``bad_every``-th one is bad."""

    def __init__(self, folder: Path, images: list[Path], rate: float, seconds: float, bad_every: int,
                 direct: bool) -> None:
        super().__init__(daemon=True)
        self.folder, self.rate, self.seconds, self.bad_every, self.direct = folder, rate, seconds, bad_every, direct
        self.data = [p.read_bytes() for p in images]
        self.arrived: dict[str, float] = {}  # name -> wall time the file was complete
        self.bad: dict[str, str] = {}

    def run(self) -> None:
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < self.seconds:
            due = t0 + i / self.rate
            time.sleep(max(0.0, due - time.monotonic()))
            name = f"part_{i:07d}.png"
            data = self.data[i % len(self.data)]
            if self.bad_every and i % self.bad_every == self.bad_every - 1:
                kind = BAD_KINDS[(i // self.bad_every) % len(BAD_KINDS)]
                data = _bad_bytes(kind, data)
                self.bad[name] = kind
            dest = self.folder / name
            if self.direct:
                with open(dest, "wb") as f:
                    f.write(data[: len(data) // 2])
                    f.flush()
                    f.write(data[len(data) // 2:])
            else:
                tmp = self.folder / (name + ".part")
                tmp.write_bytes(data)
                os.rename(tmp, dest)
            self.arrived[name] = time.time()
            i += 1


def _window(values: list[float], first: bool) -> list[float]:
    n = max(1, len(values) // 10)
    return values[:n] if first else values[-n:]


def _p(values: list[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if values else None


def poll_cost(work: Path, n_files: int, repeats: int = 5) -> dict:
    """Seconds per hot-folder poll (``industrial_qc.hotfolder.Scanner``) over ``n_files`` parts already recorded,
    against the same poll over a folder with none: what the line pays every ``--poll`` interval."""
    import shutil

    from industrial_qc.hotfolder import Ledger, Scanner

    folder, out = work / "poll_folder", work / "poll_out"
    for d in (folder, out):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    data = b"\x89PNG\r\n\x1a\n" + b"\0" * 2000

    def timed(scanner: Scanner, ledger: Ledger) -> float:
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            scanner.poll(ledger, watch=True)
            best = min(best, time.perf_counter() - t)
        return best

    empty = timed(Scanner(str(folder), "folder", out, settle=0, error_grace=10, follow_links=False),
                  Ledger(out / "empty_ledger.txt"))
    for i in range(n_files):
        (folder / f"p_{i:07d}.png").write_bytes(data)
    ledger = Ledger(out / "ledger.txt")
    scanner = Scanner(str(folder), "folder", out, settle=0, error_grace=10, follow_links=False)
    t = time.perf_counter()
    first, _ = scanner.poll(ledger, watch=True)  # every file new: each is stat'ed once
    first_s = time.perf_counter() - t
    for part in first:
        ledger.add(part.key)
    scanner.poll(ledger, watch=True)  # learns the recorded entries
    return {"files": n_files, "poll_s_empty_folder": empty, "poll_s_first_all_new": first_s,
            "poll_s_all_recorded": timed(scanner, ledger)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="Run directory (default: train a throwaway tiny run)")
    ap.add_argument("--images", type=Path, help="Folder of part images to feed (default: the tiny run's data)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=4.0, help="files per second")
    ap.add_argument("--bad-every", type=int, default=100, help="every Nth file is bad (100: 1 %%)")
    ap.add_argument("--sort", choices=("none", "copy", "move"), default="none",
                    help="none keeps every part in the folder (the poll sees a growing folder)")
    ap.add_argument("--settle", type=float, default=1.0, help="--settle-seconds of the line")
    ap.add_argument("--poll", type=float, default=0.2)
    ap.add_argument("--direct", action="store_true", help="write files in place instead of .part + rename")
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out" / "line_soak")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--poll-files", type=int, default=0,
                    help="only measure one poll over this many recorded files (no soak)")
    args = ap.parse_args()
    if args.poll_files:
        args.workdir.mkdir(parents=True, exist_ok=True)
        res = poll_cost(args.workdir, args.poll_files)
        print(json.dumps(res, indent=2))
        (args.json or args.workdir / "poll_cost.json").write_text(json.dumps(res, indent=2))
        return

    import psutil
    from rich.console import Console
    from rich.table import Table

    from common.progress import add_task, make_progress, update_rate

    console = Console()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    if args.run is None:
        run, images = _tiny_run(work)
    else:
        run = args.run
        if args.images is None:
            raise SystemExit("--images FOLDER is required with --run")
    if args.images is not None:
        images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"})
    hot, out = work / "hot", work / "out"
    for d in (hot, out):
        if d.exists():
            import shutil

            shutil.rmtree(d)
        d.mkdir(parents=True)

    seconds = args.minutes * 60
    cmd = [sys.executable, "-m", "industrial_qc.cli", "inspect", str(run), str(hot), "--watch", "--out", str(out),
           "--poll", str(args.poll), "--settle-seconds", str(args.settle), "--sort", args.sort]
    line = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    proc = psutil.Process(line.pid)
    time.sleep(3.0)  # models loaded before the first part arrives
    feeder = Feeder(hot, images, args.rate, seconds, args.bad_every, args.direct)
    rss: list[tuple[float, float]] = []
    results = out / "results.jsonl"
    t_start = time.monotonic()
    feeder.start()
    console.print(f"soak: {args.minutes:g} min at {args.rate:g} files/s into {hot} (line pid {line.pid})")
    expected = int(seconds * args.rate)
    with make_progress(console) as progress:
        task = add_task(progress, "records", total=expected)
        while feeder.is_alive() or (time.monotonic() - t_start < seconds + 60
                                    and _count(results) < len(feeder.arrived)):
            rss.append((time.monotonic() - t_start, proc.memory_info().rss / 2**20))
            progress.update(task, completed=_count(results), info=f"RSS {rss[-1][1]:.0f} MiB")
            update_rate(progress, task, "part")
            if line.poll() is not None:
                break
            time.sleep(1.0)
    line.send_signal(signal.SIGINT)
    output, _ = line.communicate(timeout=120)

    records = [json.loads(x) for x in results.read_text().splitlines() if x.strip()] if results.is_file() else []
    names = [Path(r["file"]).name for r in records]
    inputs = set(feeder.arrived)
    dup = len(names) - len(set(names))
    missing = sorted(inputs - set(names))
    lat_e2e, lat_proc = [], []
    for r in sorted(records, key=lambda r: feeder.arrived.get(Path(r["file"]).name, 0.0)):
        name = Path(r["file"]).name
        if r["status"] == "ok" and name in feeder.arrived:
            done = datetime.fromisoformat(r["timestamp"]).timestamp()
            lat_e2e.append((done - feeder.arrived[name]) * 1e3)
            lat_proc.append(r["latency_ms"])
    errors = {Path(r["file"]).name for r in records if r["status"] == "error"}
    rss_vals = [v for _, v in rss]
    first_p95, last_p95 = _p(_window(lat_e2e, True), 95), _p(_window(lat_e2e, False), 95)
    first_rss = sum(_window(rss_vals, True)) / max(1, len(_window(rss_vals, True)))
    last_rss = sum(_window(rss_vals, False)) / max(1, len(_window(rss_vals, False)))
    report = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "run": str(run),
        "inputs": len(inputs), "bad_inputs": len(feeder.bad), "records": len(records), "duplicates": dup,
        "missing": len(missing), "missing_names": missing[:20],
        "bad_recorded_as_error": len(set(feeder.bad) & errors), "ok_recorded_as_error": len(errors - set(feeder.bad)),
        "parts_per_s": len(records) / max(1e-9, seconds),
        "e2e_p50_ms": {"first": _p(_window(lat_e2e, True), 50), "last": _p(_window(lat_e2e, False), 50)},
        "e2e_p95_ms": {"first": first_p95, "last": last_p95},
        "processing_p95_ms": {"first": _p(_window(lat_proc, True), 95), "last": _p(_window(lat_proc, False), 95)},
        "rss_mib": {"first": first_rss, "last": last_rss, "max": max(rss_vals) if rss_vals else None},
        "ratios": {"p95_last_over_first": (last_p95 / first_p95) if first_p95 else None,
                   "rss_last_over_first": last_rss / first_rss if first_rss else None},
        "line_exit": line.returncode, "line_tail": output[-400:],
    }
    ok = (report["records"] == report["inputs"] and dup == 0 and (report["ratios"]["p95_last_over_first"] or 9) <= 1.2
          and (report["ratios"]["rss_last_over_first"] or 9) <= 1.2)
    report["targets_met"] = ok

    table = Table(title=f"line soak: {args.minutes:g} min, {args.rate:g} files/s, sort {args.sort}")
    for col in ("metric", "first tenth", "last tenth", "last / first"):
        table.add_column(col, justify="left" if col == "metric" else "right")

    def fmt(v):
        return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)

    r = report
    table.add_row("e2e latency p50 (ms)", fmt(r["e2e_p50_ms"]["first"]), fmt(r["e2e_p50_ms"]["last"]), "")
    table.add_row("e2e latency p95 (ms)", fmt(first_p95), fmt(last_p95),
                  f"{r['ratios']['p95_last_over_first'] or 0:.2f}")
    table.add_row("processing p95 (ms)", fmt(r["processing_p95_ms"]["first"]), fmt(r["processing_p95_ms"]["last"]), "")
    table.add_row("line RSS (MiB)", fmt(first_rss), fmt(last_rss), f"{r['ratios']['rss_last_over_first'] or 0:.2f}")
    console.print(table)
    t2 = Table(title="every input answered once")
    t2.add_column("metric")
    t2.add_column("value", justify="right")
    for k in ("inputs", "records", "duplicates", "missing", "bad_inputs", "bad_recorded_as_error",
              "ok_recorded_as_error"):
        t2.add_row(k, str(r[k]))
    t2.add_row("parts/s", f"{r['parts_per_s']:.2f}")
    t2.add_row("targets met", str(ok))
    console.print(t2)
    path = args.json or work / "line_soak.json"
    path.write_text(json.dumps(report, indent=2))
    console.print(f"-> {path}")


def _count(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


if __name__ == "__main__":
    main()
