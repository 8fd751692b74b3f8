"""``vsuite qc inspect``: the line script. Parts from a folder, a glob, a video file or a camera go through the
ONNX pipeline one at a time; each part becomes one fsync'd line of ``results.jsonl``.

Exactly once: ``ledger.txt`` in the output folder lists every part already recorded (path, size and mtime, or
video frame); a restart skips them. The ledger is written after the record, and on start-up records whose
ledger line is missing (a kill between the two writes) are recovered from ``results.jsonl``: a restart neither
repeats nor skips a part. SIGINT/SIGTERM set a flag checked between parts, so the part in flight is finished
and recorded before the loop stops. No torch on this path (onnxruntime + OpenCV only).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from common.errors import InputError
from common.inference import share_thread_pool
from common.results import JsonlWriter, error_record, now_iso, read_jsonl
from industrial_qc.data import IMAGE_SUFFIXES, read_image
from industrial_qc.pipeline import Pipeline, draw_annotations

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv"})
SourceKind = Literal["folder", "glob", "file", "video", "camera"]


@dataclass
class InspectOptions:
    watch: bool = False
    poll_interval: float = 0.5  # seconds between scans of a hot folder
    settle: float = 0.3  # a file must be unchanged this long before it is read (it may still be copying)
    annotate: bool = False  # annotated images of FAIL/REVIEW parts in OUT/annotated
    sort: Literal["none", "copy", "move"] = "none"  # files into OUT/{pass,fail,review,error}
    max_parts: int | None = None  # stop after this many parts (cameras, smoke tests)
    idle_exit: float | None = None  # with --watch: stop after this many seconds without a new part
    threads: int | None = None
    status_every: float = 5.0  # seconds between status lines when stdout is not a terminal


@dataclass
class Part:
    key: str  # ledger key
    source: str  # what the record names: a path, or path#frame=N, or camera:N#frame=N
    path: Path | None = None
    frame: np.ndarray | None = None


@dataclass
class LineStats:
    counts: Counter = field(default_factory=Counter)
    latencies: deque = field(default_factory=lambda: deque(maxlen=2000))
    started: float = field(default_factory=time.monotonic)
    parts: int = 0

    def add(self, verdict: str, latency_ms: float | None) -> None:
        self.parts += 1
        self.counts[verdict] += 1
        if latency_ms is not None:
            self.latencies.append(latency_ms)

    def summary(self) -> dict:
        lat = np.array(self.latencies) if self.latencies else np.zeros(0)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "parts": self.parts,
            "parts_per_s": self.parts / elapsed,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p95_ms": float(np.percentile(lat, 95)) if len(lat) else None,
            "counts": {k: int(self.counts.get(k, 0)) for k in ("PASS", "FAIL", "REVIEW", "ERROR")},
        }

    def line(self) -> str:
        s = self.summary()
        p50 = f"{s['p50_ms']:.0f}" if s["p50_ms"] is not None else "-"
        p95 = f"{s['p95_ms']:.0f}" if s["p95_ms"] is not None else "-"
        c = s["counts"]
        return (f"{s['parts']} parts | {s['parts_per_s']:.1f} parts/s | p50 {p50} ms p95 {p95} ms | "
                f"PASS {c['PASS']} FAIL {c['FAIL']} REVIEW {c['REVIEW']} ERROR {c['ERROR']}")


class Ledger:
    """Append-only set of processed part keys (``ledger.txt``), fsync'd per entry."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: set[str] = set()
        if path.is_file():
            self.keys = {ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln}
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def add(self, key: str) -> None:
        if key in self.keys:
            return
        self._f.write(key + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.keys.add(key)

    def close(self) -> None:
        self._f.close()


class StopFlag:
    """Set by SIGINT/SIGTERM (handlers installed only in the main thread, restored on exit)."""

    def __init__(self) -> None:
        self.stopped = False
        self.signal: str | None = None
        self._old: dict = {}

    def _handle(self, signum, _frame) -> None:
        self.stopped = True
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def classify_source(source: str) -> SourceKind:
    p = Path(source).expanduser()
    if p.is_dir():
        return "folder"
    if p.is_file():
        return "video" if p.suffix.lower() in VIDEO_SUFFIXES else "file"
    if source.isdigit():
        return "camera"
    if any(ch in source for ch in "*?["):
        return "glob"
    raise InputError(f"{source}: not a folder, file, glob or camera index")


def file_key(path: Path) -> str | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def list_files(source: str, kind: SourceKind, exclude: Path | None) -> list[Path]:
    if kind == "folder":
        files = [p for p in Path(source).expanduser().iterdir() if p.is_file()]
    elif kind == "glob":
        files = [Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True) if os.path.isfile(p)]
    else:
        files = [Path(source).expanduser()]
    files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    if exclude is not None:
        ex = exclude.resolve()
        files = [p for p in files if ex not in p.resolve().parents]
    return sorted(files)


def iter_parts(source: str, ledger: Ledger, opts: InspectOptions, stop: StopFlag, out_dir: Path) -> Iterator[Part]:
    """Parts not yet in the ledger, in order; with ``watch`` the folder/glob is polled until stopped."""
    kind = classify_source(source)
    if kind in ("video", "camera"):
        yield from _iter_frames(source, kind, ledger, stop)
        return
    last_new = time.monotonic()
    while not stop.stopped:
        pending = False
        for p in list_files(source, kind, out_dir):
            if stop.stopped:
                return
            key = file_key(p)
            if key is None or key in ledger:
                continue
            if opts.watch:
                try:
                    age = time.time() - p.stat().st_mtime
                except OSError:
                    continue
                if age < opts.settle:
                    pending = True  # still being written (or just landed): take it on a later poll
                    continue
            last_new = time.monotonic()
            yield Part(key=key, source=str(p), path=p)
        if not opts.watch:
            return
        if opts.idle_exit is not None and not pending and time.monotonic() - last_new > opts.idle_exit:
            return
        _sleep(opts.poll_interval, stop)


def _sleep(seconds: float, stop: StopFlag) -> None:
    end = time.monotonic() + seconds
    while not stop.stopped and time.monotonic() < end:
        time.sleep(min(0.05, seconds))


def _iter_frames(source: str, kind: SourceKind, ledger: Ledger, stop: StopFlag) -> Iterator[Part]:
    cap = cv2.VideoCapture(int(source) if kind == "camera" else str(Path(source).expanduser()))
    if not cap.isOpened():
        raise InputError(f"{source}: cannot open {'camera' if kind == 'camera' else 'video'}")
    name = f"camera:{source}" if kind == "camera" else str(Path(source).expanduser().resolve())
    stamp = time.strftime("%Y%m%dT%H%M%S") if kind == "camera" else ""
    i = 0
    try:
        while not stop.stopped:
            ok, frame = cap.read()
            if not ok:
                return
            key = f"{name}#{stamp}frame={i}" if stamp else f"{name}#frame={i}"
            i += 1
            if key in ledger:
                continue
            yield Part(key=key, source=key, frame=frame)
    finally:
        cap.release()


def inspect_part(pipe: Pipeline, part: Part) -> tuple[dict, np.ndarray | None]:
    """One part -> (record, decoded image or None). Never raises for a bad input: that is an error record."""
    t0 = time.perf_counter()
    base = {"file": part.source, "run_id": pipe.run_id, "ledger_key": part.key}
    try:
        img = part.frame if part.frame is not None else read_image(part.path)
    except InputError as exc:
        return error_record(part.source, str(exc), **base), None
    except Exception as exc:  # a decoder crash on a hostile file must not stop the line
        return error_record(part.source, f"{type(exc).__name__}: {exc}", **base), None
    t1 = time.perf_counter()
    try:
        res = pipe.inspect(img)
    except Exception as exc:
        return error_record(part.source, f"inference failed: {type(exc).__name__}: {exc}", **base), img
    t2 = time.perf_counter()
    record = {
        "source": part.source,
        "status": "ok",
        "reason": None,
        "timestamp": now_iso(),
        **base,
        "verdict": res.pop("verdict"),
        **res,
        "width": int(img.shape[1]),
        "height": int(img.shape[0]),
        "decode_ms": round((t1 - t0) * 1e3, 2),
        "latency_ms": round((t2 - t0) * 1e3, 2),
    }
    return record, img


def _recover_ledger(results: Path, ledger: Ledger) -> int:
    """Ledger lines lost to a kill between 'record written' and 'ledger written' are restored from records."""
    if not results.is_file():
        return 0
    n = 0
    for rec in read_jsonl(results):
        key = rec.get("ledger_key")
        if key and key not in ledger:
            ledger.add(key)
            n += 1
    return n


def _after(record: dict, img: np.ndarray | None, part: Part, out_dir: Path, opts: InspectOptions) -> None:
    verdict = record.get("verdict") if record["status"] == "ok" else "ERROR"
    if opts.annotate and img is not None and verdict in ("FAIL", "REVIEW"):
        ann = out_dir / "annotated"
        ann.mkdir(exist_ok=True)
        stem = Path(part.source.split("#")[0]).stem + (("_" + part.key.split("#")[1]) if "#" in part.key else "")
        cv2.imwrite(str(ann / f"{stem}.jpg"), draw_annotations(img, record))
    if opts.sort != "none" and part.path is not None and part.path.exists():
        dest = out_dir / str(verdict).lower()
        dest.mkdir(exist_ok=True)
        (shutil.move if opts.sort == "move" else shutil.copy2)(str(part.path), dest / part.path.name)


def run_line(run_dir: Path, source: str, out_dir: Path, opts: InspectOptions, console=None) -> dict:
    """Inspect ``source`` into ``out_dir`` (results.jsonl, ledger.txt, optional annotated/ and sorted folders)."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = console or Console()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classify_source(source)  # fail fast on a bad source, before loading models
    share_thread_pool(opts.threads)  # detector and classifier alternate on one pool: less latency per part
    pipe = Pipeline.from_run(run_dir, threads=opts.threads)
    results_path = out_dir / "results.jsonl"
    stats = LineStats()
    ledger = Ledger(out_dir / "ledger.txt")
    recovered = _recover_ledger(results_path, ledger)
    if recovered:
        console.print(f"ledger: recovered {recovered} entries from {results_path.name}")
    live = Live(Text("waiting for parts..."), console=console, refresh_per_second=4, transient=False) \
        if console.is_terminal else None
    last_print = time.monotonic()
    with StopFlag() as stop, JsonlWriter(results_path) as writer:
        if live is not None:
            live.start()
        try:
            for part in iter_parts(source, ledger, opts, stop, out_dir):
                record, img = inspect_part(pipe, part)
                writer.write(record)
                ledger.add(part.key)
                _after(record, img, part, out_dir, opts)
                ok = record["status"] == "ok"
                stats.add(record["verdict"] if ok else "ERROR", record.get("latency_ms") if ok else None)
                if live is not None:
                    live.update(Text(stats.line()))
                elif time.monotonic() - last_print >= opts.status_every:
                    console.print(stats.line())
                    last_print = time.monotonic()
                if opts.max_parts is not None and stats.parts >= opts.max_parts:
                    break
        finally:
            if live is not None:
                live.stop()
            ledger.close()
    summary = stats.summary()
    summary.update(results=str(results_path), ledger=str(ledger.path), stopped_by=stop.signal, run_id=pipe.run_id)
    console.print(stats.line() + (f"  (stopped by {stop.signal})" if stop.signal else ""))
    return summary
