"""Result records and their writers: JSONL (durable, one record at a time), CSV and Parquet.

A record is a flat-ish dict. Every record has ``source`` (file or study), ``status`` ("ok" or "error"),
``reason`` (why it failed, else None) and ``timestamp``; each vertical adds its own fields. Nested values
(lists of defects, probabilities) stay nested in JSONL and become JSON strings in CSV/Parquet.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.errors import InputError

TABLE_SUFFIXES = (".jsonl", ".csv", ".parquet")


def now_iso() -> str:
    """Current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def error_record(source: str, reason: str, **fields: Any) -> dict:
    """The record a failed input becomes: it keeps the batch going and says why."""
    return {"source": str(source), "status": "error", "reason": str(reason), "timestamp": now_iso(), **fields}


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps(record: dict) -> str:
    return json.dumps(record, default=_json_default, ensure_ascii=False, allow_nan=True)


class JsonlWriter:
    """Append records to a JSONL file, each flushed and fsync'd before ``write`` returns.

    A crash or a kill between records loses nothing already written and never leaves half a record:
    each line is written with a single ``write`` call and ``read_jsonl`` skips a torn final line.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _repair_tail(self) -> None:
        """If a previous process died mid-line, end that line so the next record starts clean."""
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, "rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def write(self, record: dict) -> None:
        self._f.write(dumps(record) + "\n")
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
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def decode_nested(value: Any) -> Any:
    """Undo the JSON encoding ``write_records`` applies to nested values in CSV/Parquet (other values pass)."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _flatten_for_table(records: Iterable[dict]) -> list[dict]:
    rows = []
    for rec in records:
        rows.append({k: dumps(v) if isinstance(v, dict | list | tuple) else v for k, v in rec.items()})
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
    if suffix == ".jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(dumps(rec) + "\n")
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
    return path


def read_records(path: Path | str) -> list[dict]:
    """Read records written by ``write_records`` (JSONL keeps nesting; CSV/Parquet give flat rows)."""
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
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
    return df.where(df.notna(), None).to_dict(orient="records")
