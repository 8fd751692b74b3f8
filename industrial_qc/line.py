"""``vsuite qc inspect``: the line script. Parts from a folder, a glob, a video file or a camera go through the
ONNX pipeline one at a time; each part becomes one fsync'd line of ``results.jsonl``.

Exactly once: ``ledger.txt`` in the output folder lists every part already recorded (path, size and mtime, or
video frame); a restart skips them. The ledger is written after the record, and on start-up records whose
ledger line is missing (a kill between the two writes) are recovered from the tail of ``results.jsonl``: a
restart neither repeats nor skips a part. One line per output folder (``OUT/.lock``). Every input becomes one
record, whatever its name or content: anything that goes wrong with one part is that part's error record and the
line goes on. SIGINT/SIGTERM set a flag checked between parts, so the part in flight is finished and recorded
before the loop stops. The hot folder's rules (settling, ignored names, links, sorting) are in
``industrial_qc.hotfolder``. No torch on this path (onnxruntime + OpenCV only).
"""

from __future__ import annotations

import os
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
from common.results import JsonlWriter, abs_path, display_text, error_record
from industrial_qc.hotfolder import (
    Ledger,
    OutputLock,
    Part,
    Scanner,
    SourceKind,
    classify_source,
    recover_ledger,
    sort_file,
    unique_name,
)
from industrial_qc.images import ImageLimits, check_image, read_image, write_image
from industrial_qc.part_pipeline import PartPipeline
from industrial_qc.pipeline import Pipeline, draw_annotations, load_pipeline, part_record
from industrial_qc.plant import PlantLink
from industrial_qc.verdict import VERDICTS


@dataclass
class InspectOptions:
    watch: bool = False
    poll_interval: float = 0.5  # seconds between scans of a hot folder
    settle: float = 1.0  # a file's size and mtime must be unchanged this long before it is read (still copying?)
    # with --watch: a file that does not decode while it is younger than this is retried (a copy that paused),
    # and recorded as an error once it has been left unchanged this long
    error_grace: float = 10.0
    follow_links: bool = False  # symlinks are error records unless this is set
    annotate: bool = False  # annotated images of FAIL/REVIEW parts in OUT/annotated
    sort: Literal["none", "copy", "move"] = "none"  # files into OUT/{pass,fail,review,error}
    max_parts: int | None = None  # stop after this many parts (cameras, smoke tests)
    idle_exit: float | None = None  # with --watch: stop after this many seconds without a new part
    threads: int | None = None
    status_every: float = 5.0  # seconds between status lines when stdout is not a terminal
    max_pixels: int | None = None  # overrides the run's input.max_pixels
    # plant connections (industrial_qc.plant): publisher URLs, the fail-safe deadline, metrics and health
    publish: list[str] = field(default_factory=list)
    deadline_ms: float | None = None  # a part not judged this long after it was taken is published as REVIEW
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    status_interval: float = 5.0  # seconds between MQTT status messages
    publish_drain: float = 10.0  # seconds the line waits at exit for pending deliveries (the rest: next start)
    health_stale: float = 30.0  # /healthz answers 503 once the loop has not turned for this long


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
            "counts": {k: int(self.counts.get(k, 0)) for k in (*VERDICTS, "ERROR")},
        }

    def line(self) -> str:
        s = self.summary()
        p50 = f"{s['p50_ms']:.0f}" if s["p50_ms"] is not None else "-"
        p95 = f"{s['p95_ms']:.0f}" if s["p95_ms"] is not None else "-"
        c = s["counts"]
        return (f"{s['parts']} parts | {s['parts_per_s']:.1f} parts/s | p50 {p50} ms p95 {p95} ms | "
                f"PASS {c['PASS']} FAIL {c['FAIL']} REVIEW {c['REVIEW']} ERROR {c['ERROR']}")


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


def iter_parts(source: str, ledger: Ledger, opts: InspectOptions, stop: StopFlag, out_dir: Path,
               scanner: Scanner | None = None, console=None, tick=None) -> Iterator[Part]:
    """Parts not yet in the ledger, in order; with ``watch`` the folder/glob is polled until stopped. Without
    ``watch`` the source is read once, waiting only for files that are still settling. ``tick``: called per poll
    (the health check sees an idle line alive)."""
    kind = classify_source(source)
    if kind in ("video", "camera"):
        yield from _iter_frames(source, kind, ledger, stop)
        return
    scanner = scanner or Scanner(source, kind, out_dir, settle=opts.settle, error_grace=opts.error_grace,
                                 follow_links=opts.follow_links)
    last_new = time.monotonic()
    shown_error = None
    while not stop.stopped:
        ready, waiting = scanner.poll(ledger, watch=opts.watch)
        if tick is not None:
            tick()
        if scanner.errors and scanner.errors[0] != shown_error and console is not None:
            console.print(f"[yellow]warning:[/] {scanner.errors[0]}", highlight=False)
        shown_error = scanner.errors[0] if scanner.errors else None
        for part in ready:
            if stop.stopped:
                return
            if part.key in ledger:
                continue  # the same file reached twice (two links to it) in one poll
            last_new = time.monotonic()
            yield part
        if not opts.watch and not waiting:
            return
        if opts.idle_exit is not None and not waiting and time.monotonic() - last_new > opts.idle_exit:
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


def part_stem(part: Part) -> str:
    """The name a part's pictures get (annotated image, heatmap): the file's stem, plus the frame of a video."""
    return Path(part.source.split("#")[0]).stem + (("_" + part.key.split("#")[1]) if "#" in part.key else "")


def inspect_part(pipe: Pipeline | PartPipeline, part: Part, limits: ImageLimits | None = None,
                 heatmaps: Path | None = None) -> tuple[dict, np.ndarray | None]:
    """One part -> (record, decoded image or None). Never raises for a bad input: that is an error record.
    ``heatmaps``: the folder a part run's FAIL / REVIEW heatmaps go to (``OUT/heatmaps``)."""
    t0 = time.perf_counter()
    base = {"run_id": pipe.run_id, "ledger_key": part.key}
    if part.problem is not None:
        return error_record(part.source, f"{part.source}: {part.problem}", file=part.source, **base), None
    limits = limits or pipe.limits
    try:
        if part.frame is not None:
            img = part.frame
            check_image(img, limits, part.source)
        else:
            img = read_image(part.path, limits)
    except InputError as exc:
        return error_record(part.source, str(exc), file=part.source, retryable=True, **base), None
    except Exception as exc:  # a decoder crash on a hostile file must not stop the line
        return error_record(part.source, f"{part.source}: {type(exc).__name__}: {exc}", file=part.source,
                            **base), None
    target = None if heatmaps is None else lambda: unique_name(heatmaps, f"{part_stem(part)}.png", part.key)
    return part_record(pipe, img, part.source, (time.perf_counter() - t0) * 1e3, heatmap=target, **base), img


def _after(record: dict, img: np.ndarray | None, part: Part, out_dir: Path, opts: InspectOptions) -> None:
    """Annotated image and sorted file of a recorded part (the record is already safe on disk)."""
    verdict = record.get("verdict") if record["status"] == "ok" else "ERROR"
    if opts.annotate and img is not None and verdict in ("FAIL", "REVIEW"):
        ann = out_dir / "annotated"
        ann.mkdir(exist_ok=True)
        write_image(unique_name(ann, f"{part_stem(part)}.jpg", part.key), draw_annotations(img, record))
    if opts.sort != "none":
        sort_file(part, str(verdict), out_dir, opts.sort)


def _finish_sorting(rec: dict | None, out_dir: Path, opts: InspectOptions) -> None:
    """After a kill between 'recorded' and 'sorted' (``--sort move``), the newest recorded part may still sit in
    the hot folder: its key says it is the same file, so it is moved now (a copy cannot be told apart from another
    part's and is left)."""
    if rec is None or opts.sort != "move" or rec.get("sort") != "move" or "#" in str(rec.get("ledger_key")):
        return
    path = Path(str(rec.get("file") or rec.get("source")))
    real, size, mtime = [*str(rec["ledger_key"]).rsplit("|", 2), "", ""][:3]
    try:
        st = os.lstat(path)
    except OSError:
        return
    if (size, mtime) == (str(st.st_size), str(st.st_mtime_ns)) and os.path.realpath(path) == real:
        verdict = rec.get("verdict") if rec.get("status") == "ok" else "ERROR"
        sort_file(Part(key=rec["ledger_key"], source=str(path), path=path), str(verdict), out_dir, "move")


def run_line(run_dir: Path, source: str, out_dir: Path, opts: InspectOptions, console=None) -> dict:
    """Inspect ``source`` into ``out_dir`` (results.jsonl, ledger.txt, optional annotated/ and sorted folders;
    heatmaps/ of FAIL and REVIEW parts for a part-classifier run)."""
    from rich.console import Console

    console = console or Console()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = classify_source(source)  # fail fast on a bad source, before loading models
    if kind not in ("video", "camera"):
        source = abs_path(os.path.expanduser(source)) if kind != "glob" else os.path.expanduser(source)
    with OutputLock(out_dir):
        share_thread_pool(opts.threads)  # detector and classifier alternate on one pool: less latency per part
        pipe = load_pipeline(run_dir, threads=opts.threads)
        limits = pipe.limits if opts.max_pixels is None else ImageLimits(opts.max_pixels, pipe.limits.min_side)
        return _line_loop(pipe, limits, source, kind, out_dir, opts, console)


def _line_loop(pipe: Pipeline | PartPipeline, limits: ImageLimits, source: str, kind: SourceKind, out_dir: Path,
               opts: InspectOptions, console) -> dict:
    """Recover the ledger, then record parts until the source is done, a signal comes or ``max_parts`` is hit."""
    results_path = out_dir / "results.jsonl"
    stats = LineStats()
    ledger = Ledger(out_dir / "ledger.txt")
    _resume(results_path, ledger, out_dir, opts, console)
    scanner = None if kind in ("video", "camera") else Scanner(
        source, kind, out_dir, settle=opts.settle, error_grace=opts.error_grace, follow_links=opts.follow_links)
    status = _Status(console, opts.status_every)
    plant = PlantLink(out_dir, pipe.run_id, publish=opts.publish, deadline_ms=opts.deadline_ms,
                      metrics_port=opts.metrics_port, metrics_host=opts.metrics_host,
                      status_interval=opts.status_interval, health_stale=opts.health_stale, console=console,
                      backlog=(lambda: len(scanner.pending)) if scanner is not None else None)
    delivery: dict = {}
    with StopFlag() as stop, JsonlWriter(results_path) as writer, status:
        try:
            plant.start(results_path)
            for part in iter_parts(source, ledger, opts, stop, out_dir, scanner, console, plant.tick):
                record = _record_part(pipe, limits, part, scanner, writer, ledger, out_dir, opts, console, plant)
                if record is None:
                    continue  # did not decode while it may still be arriving: tried again later
                ok = record["status"] == "ok"
                stats.add(record["verdict"] if ok else "ERROR", record.get("latency_ms") if ok else None)
                status.show(stats)
                if opts.max_parts is not None and stats.parts >= opts.max_parts:
                    break
        finally:
            ledger.close()
            delivery = plant.close(opts.publish_drain)
    summary = stats.summary()
    summary.update(results=str(results_path), ledger=str(ledger.path), stopped_by=stop.signal, run_id=pipe.run_id,
                   delivery=delivery)
    console.print(stats.line() + (f"  (stopped by {stop.signal})" if stop.signal else ""))
    for name, d in delivery.items():
        console.print(f"publish {name}: {d['delivered']} delivered, {d['pending']} pending, {d['failed']} refused, "
                      f"{d['failures']} failed attempts", highlight=False, soft_wrap=True)
    return summary


def _resume(results_path: Path, ledger: Ledger, out_dir: Path, opts: InspectOptions, console) -> None:
    """After a kill: restore the ledger lines the records have, and finish the newest part's cut-short move."""
    recovered, newest = recover_ledger(results_path, ledger)
    if recovered:
        console.print(f"ledger: recovered {recovered} entries from {results_path.name}")
    try:
        _finish_sorting(newest, out_dir, opts)
    except Exception as exc:  # never a reason not to start: the file stays where it is
        console.print(f"[yellow]warning:[/] could not sort the last recorded part: {type(exc).__name__}: "
                      f"{display_text(exc)}", highlight=False)


def _record_part(pipe: Pipeline | PartPipeline, limits: ImageLimits, part: Part, scanner: Scanner | None,
                 writer: JsonlWriter, ledger: Ledger, out_dir: Path, opts: InspectOptions, console,
                 plant: PlantLink) -> dict | None:
    """Inspect one part (a part run's heatmap first), write its record, then its ledger line, then annotate/sort
    it and hand it to the publishers; None when it is held back (``Scanner.defer``: no record now)."""
    heatmaps = out_dir / "heatmaps" if isinstance(pipe, PartPipeline) else None
    plant.taken(part.key, part.source)
    record, img = inspect_part(pipe, part, limits, heatmaps)
    if record.pop("retryable", False) and opts.watch and scanner is not None \
            and scanner.defer(part, record["reason"]):
        plant.judged(None)
        return None
    plant.judged(record)
    if scanner is not None:
        scanner.taken(part)
    if opts.sort != "none" and part.path is not None:
        record["sort"] = opts.sort  # a restart finishes a move a kill cut short (_finish_sorting)
    writer.write(record)
    ledger.add(part.key)
    plant.recorded(record)
    try:
        _after(record, img, part, out_dir, opts)
    except Exception as exc:  # recorded already: a full disk or a permission must not stop the line
        console.print(f"[yellow]warning:[/] {display_text(part.source)}: recorded, but "
                      f"annotating/sorting failed: {type(exc).__name__}: {display_text(exc)}",
                      highlight=False)
    return record


class _Status:
    """The running status line: live on a terminal, else printed every ``every`` seconds."""

    def __init__(self, console, every: float) -> None:
        from rich.live import Live
        from rich.text import Text

        self.console, self.every, self._text = console, every, Text
        self.live = Live(Text("waiting for parts..."), console=console, refresh_per_second=4, transient=False) \
            if console.is_terminal else None
        self.last_print = time.monotonic()

    def show(self, stats: LineStats) -> None:
        if self.live is not None:
            self.live.update(self._text(stats.line()))
        elif time.monotonic() - self.last_print >= self.every:
            self.console.print(stats.line())
            self.last_print = time.monotonic()

    def __enter__(self) -> _Status:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()
