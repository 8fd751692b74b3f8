"""The hot folder's side of the line: which files are parts, when a file is complete, who owns the output folder,
and where a judged part's file goes. Torch- and model-free (``industrial_qc.line`` runs the models).

- ``OutputLock``: one line per output folder (an exclusive ``flock`` on ``OUT/.lock``, released by the kernel when
  the process dies, so a killed line never leaves a stale lock).
- ``Ledger``: the keys of the parts already recorded (``ledger.txt``, one fsync'd line each). A key is the file's
  real path, size and mtime; a file rewritten in place is a new part.
- ``Scanner``: one poll of a folder, glob or file. A file is taken once its size and mtime have been stable for
  ``settle`` seconds; names starting with ``.`` or ending in ``.part``/``.tmp`` are ignored until renamed;
  symlinks and special files (FIFOs, sockets, devices) become error parts unless ``follow_links`` (a FIFO would
  block a reader forever, a link can point anywhere). A poll lists the folder (``os.scandir``) and stats only the
  entries not yet recorded, plus a bounded share of the recorded ones in turn; it never resolves paths per file.
- ``sort_file``: the judged file into ``OUT/<verdict>/``, under its own name when free, else ``stem~<key hash>``:
  written under a temporary name and renamed, never over another file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import os
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.errors import InputError
from common.results import display_text, read_jsonl_tail
from industrial_qc.data import IMAGE_SUFFIXES

IGNORED_SUFFIXES = (".part", ".tmp")  # still being written by a copier that renames when done
RECHECK_PER_POLL = 1000  # recorded entries stat'ed again per poll (see Scanner.poll)
SourceKind = Literal["folder", "glob", "file", "video", "camera"]
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv"})


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
    raise InputError(f"{display_text(source)}: not a folder, file, glob or camera index")


# ------------------------------------------------------------------------------------------------ output folder
class OutputLock:
    """Exclusive ownership of an output folder for the life of this object (``OUT/.lock``: pid, host, start)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / ".lock"
        self._f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - closed in release()
        try:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.seek(0)
            holder = self._f.read().strip() or "unknown"
            self._f.close()
            pid = holder.split()[0] if holder != "unknown" else "unknown"
            raise InputError(f"{out_dir}: another `vsuite qc inspect` (pid {pid}) is writing to this output folder "
                             f"({holder}); one line per output folder: stop it or give another --out") from None
        self._f.seek(0)
        self._f.truncate()
        self._f.write(f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        self._f.flush()

    def release(self) -> None:
        if not self._f.closed:
            self._f.close()  # closing drops the flock; the file stays (removing it would race a new holder)

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Ledger:
    """Append-only set of processed part keys (``ledger.txt``), fsync'd per entry. Keys are paths: bytes that are
    not UTF-8 are kept as they are (surrogate escapes), so every key round-trips."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: set[str] = set()
        if path.is_file():
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                self.keys = {ln.rstrip("\n") for ln in f if ln.strip()}
        self._f = open(path, "a", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115 - closed in close()

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: str) -> None:
        if key in self.keys:
            return
        self._f.write(key + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.keys.add(key)

    def close(self) -> None:
        self._f.close()


def recover_ledger(results: Path, ledger: Ledger) -> tuple[int, dict | None]:
    """Ledger lines lost to a kill between 'record written' and 'ledger written' are restored from the records.

    Only the tail can lack them (records are written first, one part at a time), so ``results.jsonl`` is read
    backwards up to the newest record the ledger has, never loaded whole. Returns how many were restored and that
    newest ledgered record (None if none), whose sorting a kill may have cut short."""
    n = 0
    for rec in read_jsonl_tail(results):
        key = rec.get("ledger_key")
        if not key:
            continue
        if key in ledger:
            return n, rec
        ledger.add(key)
        n += 1
    return n, None


# ------------------------------------------------------------------------------------------------ scanning
@dataclass
class Part:
    key: str  # ledger key
    source: str  # what the record names: an absolute path, or path#frame=N, or camera:N#frame=N
    path: Path | None = None
    frame: object = None  # a decoded video frame (numpy array)
    problem: str | None = None  # why this entry is not read at all (a symlink, a FIFO): an error part


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float  # monotonic time this size and mtime were first seen
    deferred: str | None = None  # why the last try failed (a copy that paused?): retried until the grace is over


def skip_name(name: str) -> bool:
    """Not a part (yet): a hidden name (editors' temporaries, macOS ``._`` files), a name a copier renames when done
    (``.part``/``.tmp``), or not an image suffix."""
    low = name.lower()
    return name.startswith(".") or low.endswith(IGNORED_SUFFIXES) or os.path.splitext(low)[1] not in IMAGE_SUFFIXES


class Scanner:
    """Polls a folder / glob / file for parts that are complete and not yet in the ledger."""

    def __init__(self, source: str, kind: SourceKind, out_dir: Path, *, settle: float, error_grace: float,
                 follow_links: bool) -> None:
        self.source, self.kind = source, kind
        self.settle, self.error_grace, self.follow_links = settle, error_grace, follow_links
        self.out_real = os.path.realpath(out_dir)
        self._real_dirs: dict[str, str] = {}
        self.pending: dict[str, _Seen] = {}  # path -> what was seen of a file not yet taken
        self.done: dict[str, int] = {}  # path -> inode of a listed entry already in the ledger
        self._turn = 0
        self.errors: list[str] = []  # why the last poll could not list the source (a share that dropped)

    def _real_dir(self, folder: str) -> str:
        real = self._real_dirs.get(folder)
        if real is None:
            real = self._real_dirs[folder] = os.path.realpath(folder)
        return real

    def _entries(self) -> Iterator[tuple[str, str, os.DirEntry | None]]:
        """(folder, name, DirEntry or None) of every candidate name, in listing order."""
        src = os.path.expanduser(self.source)
        if self.kind == "folder":
            folder = os.path.abspath(src)
            with os.scandir(folder) as it:
                for e in it:
                    if not skip_name(e.name):
                        yield folder, e.name, e
            return
        for p in glob.iglob(src, recursive=True) if self.kind == "glob" else [src]:
            folder, name = os.path.split(os.path.abspath(p))
            if skip_name(name):
                continue
            real = self._real_dir(folder)
            if real == self.out_real or real.startswith(self.out_real + os.sep):
                continue  # the line's own sorted copies
            yield folder, name, None

    def poll(self, ledger: Ledger, *, watch: bool) -> tuple[list[Part], bool]:
        """Parts ready now (sorted by path), and whether a file is still settling (or held back) for a later poll.

        An entry already recorded is remembered by path and inode (which the listing gives without a syscall) and
        not stat'ed again, except ``RECHECK_PER_POLL`` of them per poll in turn: a poll's cost does not grow with
        the parts done, and a done file replaced in place (same name and inode, new size or mtime) is still seen
        within a few polls."""
        ready: list[Part] = []
        waiting = False
        listed: set[str] = set()
        now, wall = time.monotonic(), time.time()
        self._turn += 1
        groups = max(1, len(self.done) // RECHECK_PER_POLL)
        turn = self._turn % groups
        try:
            entries = self._entries()
            for folder, name, entry in entries:
                path = os.path.join(folder, name)
                listed.add(path)
                ino = self.done.get(path)
                if ino is not None and (entry is None or entry.inode() == ino) and hash(path) % groups != turn:
                    continue
                part = self._check(folder, name, path, entry, ledger, now, wall, watch)
                if part is True:
                    waiting = True
                elif part is not None:
                    ready.append(part)
            self.errors = []
        except OSError as exc:  # the folder vanished or a share dropped: try again next poll
            self.errors = [f"{display_text(self.source)}: cannot list ({exc.strerror or exc})"]
            waiting = True
        for gone in [p for p in self.pending if p not in listed]:
            del self.pending[gone]
        if len(self.done) > len(listed):
            self.done = {p: i for p, i in self.done.items() if p in listed}
        ready.sort(key=lambda part: part.source)
        return ready, waiting

    def _check(self, folder: str, name: str, path: str, entry: os.DirEntry | None, ledger: Ledger, now: float,
               wall: float, watch: bool) -> Part | bool | None:
        """One listed entry: a Part ready to take, True while it settles (or is held back), None to skip."""
        try:
            st = entry.stat(follow_symlinks=False) if entry is not None else os.lstat(path)
        except OSError:
            return None  # gone between the listing and the stat
        ino, mode = st.st_ino, st.st_mode
        problem = None
        if stat.S_ISLNK(mode):
            if self.follow_links:
                try:
                    st = os.stat(path)
                except OSError:
                    problem = "symbolic link to a missing file"
                else:
                    if not stat.S_ISREG(st.st_mode):
                        problem = "symbolic link to something that is not a regular file"
            else:
                problem = "symbolic link, not followed (give --follow-links to inspect its target)"
        elif stat.S_ISDIR(mode):
            return None
        elif not stat.S_ISREG(mode):
            problem = "not a regular file (FIFO, socket or device); not read"
        real = (os.path.realpath(path) if self.follow_links and problem is None and stat.S_ISLNK(mode)
                else os.path.join(self._real_dir(folder), name))
        key = f"{real}|{st.st_size}|{st.st_mtime_ns}"
        if key in ledger:
            self.done[path] = ino
            return None
        self.done.pop(path, None)
        if problem is not None:
            return Part(key=key, source=path, path=Path(path), problem=problem)
        seen = self.pending.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
            seen = self.pending[path] = _Seen(st.st_size, st.st_mtime_ns, now)
        age = wall - st.st_mtime_ns / 1e9
        if now - seen.since < self.settle and age < self.settle:
            return True  # still being written (or just landed): a later poll takes it
        if seen.deferred is not None and watch and now - seen.since < self.error_grace and age < self.error_grace:
            return True  # failed to decode while fresh: a paused copy may still complete it
        return Part(key=key, source=path, path=Path(path))

    def defer(self, part: Part, reason: str) -> bool:
        """Hold back a file that failed to decode while it may still be arriving (``--watch``: a copy that paused
        longer than ``settle``): True when it is held (no record now), False when the grace is over."""
        seen = self.pending.get(part.source)
        if seen is None or part.path is None:
            return False
        try:
            st = os.stat(part.path)
        except OSError:
            return False
        if (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):
            self.pending[part.source] = _Seen(st.st_size, st.st_mtime_ns, time.monotonic())
            return True  # it changed while we read it: not complete
        if time.time() - st.st_mtime_ns / 1e9 >= self.error_grace:
            return False
        seen.deferred = reason
        return True

    def taken(self, part: Part) -> None:
        self.pending.pop(part.source, None)


# ------------------------------------------------------------------------------------------------ sorting
def unique_name(folder: Path, name: str, key: str) -> Path:
    """``folder/name`` when no entry has that name, else ``stem~<8 hex of key>[-n]suffix``: never an existing one."""
    dest = folder / name
    if not os.path.lexists(dest):
        return dest
    stem, suffix = os.path.splitext(name)
    tag = hashlib.sha256(os.fsencode(key)).hexdigest()[:8]
    for n in range(10_000):
        dest = folder / f"{stem}~{tag}{f'-{n}' if n else ''}{suffix}"
        if not os.path.lexists(dest):
            return dest
    raise OSError(f"{folder}: no free name for {display_text(name)}")


def _copy_durable(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` through a temporary name in dest's folder (fsync'd, then renamed)."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, tmp)
        if os.path.getsize(tmp) != os.path.getsize(src):
            raise OSError(f"{tmp}: copy is short")
        os.rename(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def sort_file(part: Part, verdict: str, out_dir: Path, mode: Literal["copy", "move"]) -> Path | None:
    """Put the part's file into ``out_dir/<verdict>/`` (copy or move); returns where it went (None: nothing done).

    A symlink or special file is never followed: with ``move`` the entry itself is moved (its target untouched),
    with ``copy`` nothing is copied."""
    if part.path is None or not os.path.lexists(part.path):
        return None
    dest_dir = out_dir / verdict.lower()
    dest_dir.mkdir(exist_ok=True)
    dest = unique_name(dest_dir, part.path.name, part.key)
    if part.problem is not None:
        if mode == "move":
            os.rename(part.path, dest)  # the link or FIFO itself; same filesystem or an error
            return dest
        return None
    if mode == "copy":
        _copy_durable(part.path, dest)
        return dest
    try:
        os.rename(part.path, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # another filesystem: copy, then remove the original
            raise
        _copy_durable(part.path, dest)
        os.unlink(part.path)
    return dest
