"""Result records and their writers: JSONL (durable, one record at a time), CSV and Parquet.

A record is a flat-ish dict. Every record has ``source`` (file or study), ``status`` ("ok" or "error"),
``reason`` (why it failed, else None) and ``timestamp``; each vertical adds its own fields. Nested values
(lists of defects, probabilities) stay nested in JSONL and become JSON strings in CSV/Parquet.

Every file written here is strict JSON / valid UTF-8 whatever a record holds: a non-finite number is written as
null (never a ``NaN`` token), and a path whose name is not valid UTF-8 (a str from ``os.fsdecode`` carrying
surrogate escapes) is written to JSONL as ``\\udcXX`` escapes, which ``read_jsonl`` gives back as the same str
(``os.fsencode`` of it is the original bytes): lossless. CSV and Parquet cells, which must be UTF-8 text, carry
the readable form (``display_text``: ``b_\\xff.jpg``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.errors import InputError

TABLE_SUFFIXES = (".jsonl", ".csv", ".parquet")
PART_PREFIX = "part-"  # the part files of a partitioned Parquet dataset (``--out DIR/``)


def now_iso() -> str:
    """Current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def error_record(source: str, reason: str, **fields: Any) -> dict:
    """The record a failed input becomes: it keeps the batch going and says why."""
    return {"source": str(source), "status": "error", "reason": str(reason), "timestamp": now_iso(), **fields}


def display_text(text: Any) -> str:
    """``text`` as valid UTF-8 for people and tables: bytes a file name could not decode (surrogate escapes from
    ``os.fsdecode``) are shown as ``\\xNN``; other text is unchanged."""
    s = os.fsdecode(text) if isinstance(text, bytes | os.PathLike) else str(text)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def abs_path(path: str | os.PathLike) -> str:
    """An absolute path as a str (symlinks not resolved; non-UTF-8 names kept as surrogate escapes)."""
    return os.path.abspath(os.fsdecode(path))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)  # a record is always written: an unexpected value as text, never a crash mid-line


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf; numpy ones too) replaced by None, for strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str):
        return _finite(value.tolist())
    return value


def dumps(record: dict) -> str:
    """One record as strict JSON text that encodes to UTF-8 (see the module docstring)."""
    try:
        text = json.dumps(record, default=_json_default, ensure_ascii=False, allow_nan=False)
    except ValueError:  # a NaN or inf somewhere: written as null
        text = json.dumps(_finite(record), default=_json_default, ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a non-UTF-8 file name: \udcXX escapes keep its bytes and the line ASCII
        text = json.dumps(json.loads(text), ensure_ascii=True, allow_nan=False)
    return text


class JsonlWriter:
    """Append records to a JSONL file, each flushed and fsync'd before ``write`` returns.

    A crash or a kill between records loses nothing already written and never leaves half a record:
    each line is written with a single ``write`` call and ``read_jsonl`` skips a torn final line.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        self._f = open(self.path, "ab")  # noqa: SIM115 - closed in close()

    def _repair_tail(self) -> None:
        """If a previous process died mid-line, end that line so the next record starts clean."""
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, "rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def write(self, record: dict) -> None:
        data = (dumps(record) + "\n").encode("utf-8")
        if self._f.write(data) != len(data):  # a short write (disk full) must not pass as a recorded part
            raise OSError(f"{self.path}: short write ({len(data)} bytes asked)")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: Path | str) -> list[dict]:
    """All complete records of a JSONL file; a torn or corrupt line (from a killed writer) is skipped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: results file not found")
    with open(path, "rb") as f:
        return [rec for rec in map(_parse_line, f) if rec is not None]


def read_jsonl_tail(path: Path | str, block: int = 1 << 16) -> Iterator[dict]:
    """The records of a JSONL file from the last one backwards, reading blocks from the end (never the whole file):
    for a reader that needs only the newest few. Torn or corrupt lines are skipped; a missing file yields nothing."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        rest = b""
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start) + rest
            end = start
            lines = chunk.split(b"\n")
            rest = lines.pop(0) if start > 0 else b""  # may be cut: completed by the next block back
            for line in reversed(lines):
                rec = _parse_line(line)
                if rec is not None:
                    yield rec
        if rest:
            rec = _parse_line(rest)
            if rec is not None:
                yield rec


def _parse_line(line: bytes) -> dict | None:
    line = line.strip()
    if not line:
        return None
    try:
        rec = json.loads(line.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


def decode_nested(value: Any) -> Any:
    """Undo the JSON encoding ``write_records`` applies to nested values in CSV/Parquet (other values pass)."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _cell(value: Any) -> Any:
    """A table cell: nested values as JSON text, text as valid UTF-8, a non-finite number as empty."""
    if isinstance(value, dict | list | tuple):
        return dumps(value)
    if isinstance(value, str):
        return display_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _flatten_for_table(records: Iterable[dict]) -> list[dict]:
    rows = []
    for rec in records:
        rows.append({k: _cell(v) for k, v in rec.items()})
    return rows


def write_records(records: Iterable[dict], path: Path | str) -> Path:
    """Write records to ``path``; the suffix picks the format (.jsonl, .csv, .parquet). Atomic replace."""
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise InputError(f"{path}: output must end in one of {', '.join(TABLE_SUFFIXES)}")
    records = list(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if suffix == ".jsonl":
            with open(tmp, "wb") as f:
                for rec in records:
                    f.write((dumps(rec) + "\n").encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        else:
            df = pd.DataFrame(_flatten_for_table(records))
            if suffix == ".csv":
                df.to_csv(tmp, index=False)
            else:
                # Columns mixing types (e.g. None and str) are fine for pyarrow; objects of mixed scalar types are not.
                for col in df.columns:
                    if df[col].dtype == object:
                        kinds = {type(v) for v in df[col] if v is not None and v == v}
                        if len(kinds) > 1:
                            df[col] = df[col].map(lambda v: None if v is None else str(v))
                df.to_parquet(tmp, index=False)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no .tmp left behind: the previous output (if any) stays as it was
        raise
    return path


def dataset_parts(folder: Path | str) -> list[Path]:
    """The part files of a partitioned Parquet dataset (``part-00000.parquet``, ...) in order. A part being
    written is a ``.tmp`` until it is complete, so it is never listed half-written."""
    return sorted(Path(folder).glob(f"{PART_PREFIX}[0-9]*.parquet"))


def part_path(folder: Path | str, index: int) -> Path:
    """Part ``index`` of a partitioned Parquet dataset."""
    return Path(folder) / f"{PART_PREFIX}{index:05d}.parquet"


def read_records(path: Path | str) -> list[dict]:
    """Read records written by ``write_records`` (JSONL keeps nesting; CSV/Parquet give flat rows), or a folder of
    Parquet parts (``dataset_parts``): their records in part order, columns the union of the parts' columns (a
    column a part lacks reads as None)."""
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        frames = [pd.read_parquet(p) for p in dataset_parts(path)]
        frames = [f for f in frames if len(f)]
        if not frames:
            return []
        df = pd.concat(frames, ignore_index=True, sort=False) if len(frames) > 1 else frames[0]
        return df.astype(object).where(df.notna(), None).to_dict(orient="records")
    if suffix == ".jsonl":
        return read_jsonl(path)
    if not path.is_file():
        raise InputError(f"{path}: results file not found")
    if suffix == ".csv":
        df = pd.read_csv(path)
    elif suffix == ".parquet":
        df = pd.read_parquet(path)
    else:
        raise InputError(f"{path}: unknown results format (expected {', '.join(TABLE_SUFFIXES)})")
    # As object columns first: a float or (pandas 3) string column keeps NaN where None is asked for.
    return df.astype(object).where(df.notna(), None).to_dict(orient="records")
