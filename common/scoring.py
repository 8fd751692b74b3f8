"""Batch scoring, engine side: the options of ``vsuite score``, the input list, the output sinks and the driver
loop shared by both engines. It knows neither vertical: a vertical describes one pass as a ``ScoreJob`` (rows to
score, a decode/preprocess function, a scorer class) and ``run_job`` runs it on the local engine (one process) or
on Ray (``common.ray_engine``, imported only then).

Records are written as they are produced, so a killed job keeps what it did, and ``--resume`` skips every input
whose ``source`` already has a record in the output:

- ``OUT.jsonl``: each record appended durably (``JsonlWriter``);
- ``OUT.csv`` / ``OUT.parquet``: records go to a ledger ``OUT.partial.jsonl`` beside it; at the end OUT is written
  atomically (the previous OUT's records on resume, then the ledger's) and the ledger removed;
- ``DIR/``: a partitioned Parquet dataset, a part file (``part-00000.parquet``, ...) written atomically every
  ``PART_RECORDS`` records, so every completed part survives a kill.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape

from common.errors import InputError
from common.progress import add_task, make_progress, update_rate
from common.results import (
    PART_PREFIX,
    TABLE_SUFFIXES,
    JsonlWriter,
    dataset_parts,
    display_text,
    part_path,
    read_jsonl,
    read_records,
    write_records,
)

Engine = Literal["local", "ray"]
ENGINES: tuple[str, ...] = ("local", "ray")
PART_RECORDS = 1000  # records per part of a partitioned Parquet output: big enough to read fast, small to lose little
DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class ScoreOptions:
    """How ``vsuite score`` runs: the engine and its resources, and whether to continue a previous output."""

    engine: Engine = "local"
    address: str | None = None  # Ray: an existing cluster ("HOST:6379", "auto"); None starts a local one
    workers: int | None = None  # Ray: scoring actors; None fills the cluster's CPUs
    batch_size: int = DEFAULT_BATCH_SIZE  # Ray: rows per block and per batch of each stage
    cpus_per_worker: float = 1.0  # Ray: CPUs reserved by each scoring actor (its ONNX Runtime threads)
    resume: bool = False
    dataset: bool = False  # OUT is a folder: a partitioned Parquet dataset

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise InputError(f"--engine {self.engine!r}: must be one of {', '.join(ENGINES)}")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers {self.workers}: must be at least 1")
        if self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size}: must be at least 1")
        if not self.cpus_per_worker > 0:
            raise InputError(f"--cpus-per-worker {self.cpus_per_worker}: must be more than 0")


def read_inputs_file(path: Path | str) -> list[str]:
    """The inputs listed in ``path``: one file, folder or glob per line; blank lines and lines starting with ``#``
    are skipped (so are spaces around a line). Read as bytes, so a name that is not UTF-8 is kept as its
    ``os.fsdecode`` form, as a shell argument would be."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{display_text(path)}: inputs list not found (--inputs-from)") from None
    except IsADirectoryError:
        raise InputError(f"{display_text(path)}: --inputs-from needs a file with one path per line, "
                         "not a folder") from None
    except OSError as exc:
        raise InputError(f"{display_text(path)}: cannot read inputs list ({exc.strerror})") from None
    lines = (os.fsdecode(raw.strip()) for raw in data.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def resolve_out(text: str) -> tuple[Path, bool]:
    """``--out``: the output path and whether it is a partitioned Parquet dataset (a path ending in ``/`` or an
    existing folder); a single file must end in one of ``TABLE_SUFFIXES``."""
    path = Path(text).expanduser()
    if text.endswith(("/", os.sep)) or path.is_dir():
        return path, True
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise InputError(f"--out {display_text(text)}: must end in one of {', '.join(TABLE_SUFFIXES)}, "
                         "or be a folder (DIR/) for a partitioned Parquet dataset")
    return path, False


def source_key(source: Any) -> str:
    """What identifies an input across runs and formats: its ``source`` as CSV/Parquet cells carry it."""
    return display_text(source)


# --------------------------------------------------------------------------------------------------- sinks


class RecordSink:
    """Where a scoring pass writes its records as they come, and which sources a resumed pass finds done."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.done: set[str] = set()

    def has(self, source: Any) -> bool:
        return source_key(source) in self.done

    def write(self, record: dict) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """The pass is complete: make the output whole."""

    def abort(self) -> None:
        """The pass stopped early: keep everything written so far where ``--resume`` finds it."""

    def __enter__(self) -> RecordSink:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()


class JsonlSink(RecordSink):
    """``OUT.jsonl``: every record appended and fsync'd before the next is scored."""

    def __init__(self, out: Path, resume: bool) -> None:
        super().__init__(out)
        if resume and self.out.is_file():
            self.done = {source_key(r.get("source")) for r in read_jsonl(self.out)}
        elif not resume:
            self.out.unlink(missing_ok=True)
        self.writer = JsonlWriter(self.out)

    def write(self, record: dict) -> None:
        self.writer.write(record)

    def finish(self) -> None:
        self.writer.close()

    abort = finish


class TableSink(RecordSink):
    """``OUT.csv`` / ``OUT.parquet``: records go to the ledger ``OUT.partial.jsonl`` as they come; ``finish``
    writes OUT atomically (the previous OUT's records when resuming, then the ledger's) and removes the ledger."""

    def __init__(self, out: Path, resume: bool) -> None:
        super().__init__(out)
        self.resume = resume
        self.ledger = ledger_path(self.out)
        if resume:
            if self.out.is_file():
                self.done = {source_key(r.get("source")) for r in read_records(self.out)}
            if self.ledger.is_file():
                self.done |= {source_key(r.get("source")) for r in read_jsonl(self.ledger)}
        else:
            self.ledger.unlink(missing_ok=True)  # a killed earlier job's ledger belongs to the output replaced
        self.writer = JsonlWriter(self.ledger)

    def write(self, record: dict) -> None:
        self.writer.write(record)

    def finish(self) -> None:
        self.writer.close()
        previous = read_records(self.out) if self.resume and self.out.is_file() else []
        had = {source_key(r.get("source")) for r in previous}
        # A job killed between writing OUT and removing the ledger left the ledger's records in OUT already.
        new = [r for r in read_jsonl(self.ledger) if source_key(r.get("source")) not in had]
        write_records([*previous, *new], self.out)
        self.ledger.unlink(missing_ok=True)

    def abort(self) -> None:
        self.writer.close()


class DatasetSink(RecordSink):
    """``DIR/``: a partitioned Parquet dataset; a part file written atomically every ``part_records`` records
    (and the rest at the end), numbered after the parts already there when resuming."""

    def __init__(self, out: Path, resume: bool, part_records: int = PART_RECORDS) -> None:
        super().__init__(out)
        self.out.mkdir(parents=True, exist_ok=True)
        parts = dataset_parts(self.out)
        if resume:
            self.done = {source_key(r.get("source")) for r in read_records(self.out)}
        else:
            for p in parts:
                p.unlink()
            parts = []
        self.next_part = max((int(p.stem[len(PART_PREFIX):]) for p in parts), default=-1) + 1
        self.part_records = max(1, part_records)
        self.buffer: list[dict] = []

    def write(self, record: dict) -> None:
        self.buffer.append(record)
        if len(self.buffer) >= self.part_records:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            write_records(self.buffer, part_path(self.out, self.next_part))
            self.next_part += 1
            self.buffer = []

    def finish(self) -> None:
        self.flush()

    abort = finish  # a part of what was scored before the stop is as good as any other


def ledger_path(out: Path) -> Path:
    """Where a CSV/Parquet output's records wait until the pass completes."""
    return out.with_name(out.name + ".partial.jsonl")


def open_sink(out: Path, options: ScoreOptions) -> RecordSink:
    """The sink for ``out`` (see the module docstring); without ``options.resume`` an existing output is replaced."""
    if options.dataset:
        return DatasetSink(out, options.resume)
    if out.suffix.lower() == ".jsonl":
        return JsonlSink(out, options.resume)
    return TableSink(out, options.resume)


# --------------------------------------------------------------------------------------------------- driver


Prepare = Callable[[dict], tuple[dict, Any]]  # row -> (meta: JSON-able dict, array: numpy)


@dataclass
class ScoreJob:
    """One scoring pass of a vertical, in the shape both engines run.

    ``rows``: one plain dict per input to score, in output order; ``row["source"]`` is the input's resume key (the
    ``source`` its record will carry). ``prepare(row) -> (meta, array)`` decodes / preprocesses one row (a Ray task;
    a module-level function or a ``functools.partial`` of one, so it pickles by reference): ``meta`` a JSON-able dict,
    ``array`` a numpy array (an empty one when decoding failed, ``meta`` then saying why). ``scorer(*scorer_args)``
    loads the run once (a Ray actor, or once in this process) and its ``score(meta, array) -> record`` never raises.
    ``first``: records that need no scoring (inputs that match nothing), written before the rest.
    """

    rows: list[dict]
    prepare: Prepare
    scorer: type
    scorer_args: tuple
    first: list[dict] = field(default_factory=list)
    unit: str = "item"
    describe: Callable[[dict], str] | None = None  # progress text for a record


def run_job(job: ScoreJob, out: Path, options: ScoreOptions, console: Console,
            local: Callable[[list[dict], Callable[[dict], None]], None] | None = None) -> list[dict]:
    """Run ``job`` on ``options.engine``, writing each record to ``out`` as it comes; the records of this pass.

    ``local(rows, emit)``: the vertical's own local loop (e.g. decoding ahead on threads), which must emit one
    record per row in order; default: ``prepare`` then ``score`` row by row with one scorer in this process."""
    records: list[dict] = []
    with open_sink(out, options) as sink:
        first = [r for r in job.first if not sink.has(r.get("source"))]
        rows = [r for r in job.rows if not sink.has(r["source"])]
        skipped = len(job.first) + len(job.rows) - len(first) - len(rows)
        if options.resume and skipped:
            console.print(f"resume: {skipped} input(s) already in {escape(display_text(out))}, skipped")
        with make_progress(console) as progress:
            task = add_task(progress, f"score ({options.engine})", total=len(first) + len(rows))

            def emit(rec: dict) -> None:
                sink.write(rec)
                records.append(rec)
                info = job.describe(rec) if job.describe is not None else ""
                progress.update(task, advance=1, info=info)
                update_rate(progress, task, job.unit)

            for rec in first:
                emit(rec)
            if not rows:
                pass
            elif options.engine == "ray":
                from common.ray_engine import ray_records  # the only place Ray is imported

                for rec in ray_records(rows, job.prepare, job.scorer, job.scorer_args, options):
                    emit(rec)
            elif local is not None:
                local(rows, emit)
            else:
                scorer = job.scorer(*job.scorer_args)
                for row in rows:
                    emit(scorer.score(*job.prepare(row)))
    return records
