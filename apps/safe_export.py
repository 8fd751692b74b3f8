"""Exports that never delete or overwrite what the suite did not write (no streamlit here).

A folder export (the YOLO dataset) is built in a hidden temporary folder next to its target and renamed into
place; it carries ``.vsuite-export.json`` (tool, kind, time, and every file it holds). A file export (a CSV)
is written under a hidden temporary name and renamed into place; its marker is a hidden sidecar
``.<name>.vsuite-export.json`` holding the file's SHA-256. Into an existing target:

    a folder the suite did not create (no marker), or one holding files its marker does not list: refused;
    a file without a sidecar, or changed since the suite wrote it (hash differs): refused;
    the suite's own previous export of the same kind: replaced only with ``replace=True`` (the page's
    "replace the previous export" box), otherwise refused with ``ExportRefused.needs_confirmation``.

Nothing is touched before every check passed, and no temporary file or folder is left behind on failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.errors import InputError
from common.results import now_iso
from common.rundir import file_sha256

MARKER = ".vsuite-export.json"
TOOL = "vision-suite"


class ExportRefused(InputError):
    """The export would touch something it may not; ``needs_confirmation``: only the replace box is missing."""

    def __init__(self, message: str, *, needs_confirmation: bool = False) -> None:
        super().__init__(message)
        self.needs_confirmation = needs_confirmation


def read_marker(path: Path, kind: str) -> dict | None:
    """The suite's marker at ``path`` for an export of ``kind``, or None (missing, a link, not ours)."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == TOOL and data.get("kind") == kind else None


def _tmp_name(target: Path, tag: str) -> Path:
    return target.with_name(f".{target.name}.vsuite-{tag}-{uuid.uuid4().hex[:12]}")


def _files_under(folder: Path) -> list[str]:
    """Every entry below ``folder`` that is not a directory (links included, never followed), as posix paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        base = Path(dirpath)
        out += [(base / n).relative_to(folder).as_posix() for n in filenames]
        out += [(base / n).relative_to(folder).as_posix() for n in dirnames if (base / n).is_symlink()]
    return sorted(out)


# ------------------------------------------------------------------------------------------------ folders
@dataclass
class FolderPlan:
    target: Path
    mode: Literal["new", "empty", "replace"]
    previous: dict | None = None  # the marker of the export being replaced


def plan_folder(target: Path, *, kind: str, replace: bool) -> FolderPlan:
    """Check that an export of ``kind`` may go to the folder ``target``; ExportRefused otherwise. Touches nothing."""
    if target.is_symlink():
        raise ExportRefused(f"{target}: is a link; not followed (choose another folder)")
    if not target.exists():
        return FolderPlan(target, "new")
    if not target.is_dir():
        raise ExportRefused(f"{target}: exists and is not a folder; nothing was changed (choose another name)")
    entries = list(target.iterdir())
    if not entries:
        return FolderPlan(target, "empty")
    marker = read_marker(target / MARKER, kind)
    if marker is None:
        raise ExportRefused(f"{target}: holds {len(entries)} entries the suite did not create (no {MARKER}); "
                            "nothing was changed (choose another folder)")
    listed = {str(f) for f in marker.get("files") or []}
    foreign = [f for f in _files_under(target) if f != MARKER and f not in listed]
    if foreign:
        raise ExportRefused(f"{target}: holds {len(foreign)} files the suite did not write ({', '.join(foreign[:3])}"
                            f"{', ...' if len(foreign) > 3 else ''}); nothing was changed (move them or choose "
                            "another folder)")
    if not replace:
        raise ExportRefused(f"{target}: holds the previous {kind} export ({marker.get('created_at', '?')}); tick "
                            "'Replace the previous export' to replace it", needs_confirmation=True)
    return FolderPlan(target, "replace", marker)


@contextlib.contextmanager
def staged_folder(plan: FolderPlan, *, kind: str, meta: dict | None = None) -> Iterator[Path]:
    """Yield an empty hidden folder next to ``plan.target`` to build the export in; on success write the marker
    and move it into place (the previous export, when replacing, is removed only after the new one is in);
    on any failure remove it and leave the target as it was."""
    parent = plan.target.parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = _tmp_name(plan.target, "tmp")
    stage.mkdir()
    try:
        yield stage
        marker = {"tool": TOOL, "kind": kind, "created_at": now_iso(), **(meta or {}), "files": _files_under(stage)}
        (stage / MARKER).write_text(json.dumps(marker, indent=1, ensure_ascii=False), encoding="utf-8")
        if plan.mode == "replace":
            old = _tmp_name(plan.target, "old")
            os.rename(plan.target, old)
            try:
                os.rename(stage, plan.target)
            except OSError:
                os.rename(old, plan.target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:  # rename(2) replaces an empty folder and fails on anything else: nothing appeared meanwhile is lost
            os.rename(stage, plan.target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------------------ files
def sidecar(target: Path) -> Path:
    return target.with_name(f".{target.name}{MARKER}")


def plan_file(target: Path, *, kind: str, replace: bool) -> Literal["new", "replace"]:
    """Check that an export of ``kind`` may be written to the file ``target``; ExportRefused otherwise."""
    side = sidecar(target)
    if side.exists() and read_marker(side, kind) is None:
        raise ExportRefused(f"{side}: exists and is not the suite's; nothing was changed (choose another name)")
    if not (target.exists() or target.is_symlink()):
        return "new"
    if target.is_symlink() or not target.is_file():
        raise ExportRefused(f"{target}: exists and is not a plain file; nothing was changed (choose another name)")
    marker = read_marker(side, kind)
    if marker is None:
        raise ExportRefused(f"{target}: exists and was not written by the suite; nothing was changed (choose "
                            "another name)")
    if marker.get("sha256") != file_sha256(target):
        raise ExportRefused(f"{target}: changed since the suite wrote it; not replaced (choose another name)")
    if not replace:
        raise ExportRefused(f"{target}: holds the previous {kind} export ({marker.get('created_at', '?')}); tick "
                            "'Replace the previous export' to replace it", needs_confirmation=True)
    return "replace"


def write_file(target: Path, data: bytes, *, kind: str, replace: bool, meta: dict | None = None) -> str:
    """Write ``data`` to ``target`` as an export of ``kind`` (rules above); returns "new" or "replace"."""
    mode = plan_file(target, kind=kind, replace=replace)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(target, "tmp")
    try:
        with tmp.open("xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode == "new":
            try:
                os.link(tmp, target)  # fails if a file appeared meanwhile: never overwrites
            except FileExistsError as exc:
                raise ExportRefused(f"{target}: appeared while writing; not overwritten") from exc
            except OSError:  # no hard links on this file system: the check above stands
                if target.exists():
                    raise ExportRefused(f"{target}: appeared while writing; not overwritten") from None
                os.replace(tmp, target)
        else:
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    marker = {"tool": TOOL, "kind": kind, "created_at": now_iso(), **(meta or {}),
              "file": target.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    side, side_tmp = sidecar(target), _tmp_name(sidecar(target), "tmp")
    try:
        side_tmp.write_text(json.dumps(marker, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(side_tmp, side)
    finally:
        side_tmp.unlink(missing_ok=True)
    return mode
