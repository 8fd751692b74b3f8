"""Delivery from the ledger, exactly once per publisher: ``delivery.jsonl`` and one outbox thread per publisher.

``results.jsonl`` is the source of truth. ``OUT/delivery.jsonl`` holds one fsync'd line per message a publisher
has taken (``{"publisher", "kind", "key", "time"}``; ``"failed": reason`` when the receiver refused it for good).
On start every record of ``results.jsonl`` without a line for a publisher is queued again, in order (a missed
deadline's REVIEW first, then the record), and nothing that has a line is sent again; then new records follow.
An ``Outbox`` sends its queue's head until it is delivered (retrying with exponential backoff, counting each
failure) before the next: a slow or dead receiver holds back only its own queue, never the line. A kill between
the receiver's ack and the delivery line re-sends that one message after a restart: at-least-once on the wire,
with the message's stable ``key`` for the receiver to de-duplicate; exactly once in ``delivery.jsonl``.

``DeadlineWatch``: the fail-safe of ``--deadline-ms``. A watchdog thread sends a part's REVIEW the moment its
deadline passes while the model still works on it; the part's record then says ``deadline_missed``.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from common.results import display_text, dumps, now_iso, read_jsonl
from industrial_qc.publish import (
    Message,
    PermanentPublishError,
    Publisher,
    PublishError,
    deadline_message,
    record_message,
)

BACKOFF_FIRST, BACKOFF_MAX = 0.2, 10.0  # seconds: 0.2, 0.4, 0.8, ... 10


class DeliveryLog:
    """``delivery.jsonl``: which (publisher, kind, key) are done. Shared by the outboxes (one lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, set[tuple[str, str]]] = {}
        if path.is_file():
            for line in read_jsonl(path):
                self.done.setdefault(str(line.get("publisher")), set()).add((str(line.get("kind")),
                                                                              str(line.get("key"))))
        self._lock = threading.Lock()
        self._f = open(path, "ab")  # noqa: SIM115 - closed in close()
        if self._f.tell() and not path.read_bytes().endswith(b"\n"):
            self._f.write(b"\n")  # a kill mid-line: the next line starts clean (read_jsonl skips the torn one)

    def done_for(self, publisher: str) -> set[tuple[str, str]]:
        return self.done.setdefault(publisher, set())

    def add(self, publisher: str, msg: Message, failed: str | None = None) -> None:
        line = {"publisher": publisher, "kind": msg.kind, "key": msg.key, "time": now_iso()}
        if failed is not None:
            line["failed"] = failed
        data = (dumps(line) + "\n").encode("utf-8")
        with self._lock:
            self._f.write(data)
            self._f.flush()
            os.fsync(self._f.fileno())
            self.done_for(publisher).add((msg.kind, msg.key))

    def close(self) -> None:
        with self._lock:
            self._f.close()


def ledger_messages(records: Iterable[dict], deadline_ms: float | None) -> list[Message]:
    """Every message the ledger's records owe a publisher, in order: a deadline REVIEW before its late record."""
    out = []
    for rec in records:
        if not rec.get("ledger_key"):
            continue
        if rec.get("deadline_missed"):
            ms = rec.get("deadline_ms", deadline_ms)
            out.append(deadline_message(str(rec["ledger_key"]), str(rec.get("source")), rec.get("run_id"), ms))
        out.append(record_message(rec))
    return out


class Outbox:
    """One publisher's queue and sender thread. ``put`` never blocks; ``close`` waits up to ``drain`` seconds for
    the queue to empty, then stops (what is left stays pending: sent after the next start)."""

    def __init__(self, publisher: Publisher, log: DeliveryLog, console=None) -> None:
        self.publisher, self.log, self.console = publisher, log, console
        self.name = publisher.name
        self.done = log.done_for(self.name)
        self.queue: deque[Message] = deque()
        self.queued: set[tuple[str, str]] = set()
        self.delivered = self.failed = self.failures = 0  # this process; failed: refused for good
        self.last_error: str | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"outbox {self.name}", daemon=True)

    def start(self) -> Outbox:
        self._thread.start()
        return self

    def prime(self, messages: list[Message]) -> int:
        """Counters from what was delivered before this start; queue the rest. Returns how many were queued."""
        n = 0
        for msg in messages:
            if (msg.kind, msg.key) in self.done:
                self.publisher.commit(msg)
            else:
                n += self.put(msg)
        return n

    def put(self, msg: Message) -> bool:
        ident = (msg.kind, msg.key)
        with self._cond:
            if ident in self.done or ident in self.queued:
                return False
            self.queued.add(ident)
            self.queue.append(msg)
            self._cond.notify_all()
        return True

    def sent(self, kind: str, key: str) -> bool:
        return (kind, key) in self.done or (kind, key) in self.queued

    @property
    def pending(self) -> int:
        return len(self.queue)

    def _run(self) -> None:
        attempt = 0
        while True:
            with self._cond:
                while not self.queue and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                msg = self.queue[0]
            failed = None
            try:
                self.publisher.publish(msg)
            except PermanentPublishError as exc:
                failed = str(exc)
            except Exception as exc:  # PublishError, or a bug in a client library: retried, never fatal
                self.failures += 1
                text = str(exc) if isinstance(exc, PublishError) else f"{type(exc).__name__}: {exc}"
                if text != self.last_error and self.console is not None:
                    self.console.print(f"[yellow]publish:[/] {display_text(text)} (retrying)", highlight=False)
                self.last_error = text
                with self._cond:
                    self._cond.wait_for(lambda: self._stop, min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** attempt))
                attempt += 1
                continue
            attempt = 0
            self.log.add(self.name, msg, failed)
            with self._cond:
                self.queue.popleft()
                self.queued.discard((msg.kind, msg.key))
                self._cond.notify_all()
            if failed is None:
                self.delivered += 1
            else:
                self.failed += 1
                if self.console is not None:
                    self.console.print(f"[red]publish:[/] {display_text(failed)}: not retried (recorded in "
                                       f"{self.log.path.name})", highlight=False)

    def close(self, drain: float) -> dict:
        """Wait up to ``drain`` s for the queue to empty, stop the thread and the publisher; the counts."""
        with self._cond:
            self._cond.wait_for(lambda: not self.queue, max(drain, 0.0))
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        try:
            self.publisher.close()
        except Exception as exc:
            if self.console is not None:
                self.console.print(f"[yellow]publish:[/] {self.name}: close: {type(exc).__name__}: {exc}")
        return {"delivered": self.delivered, "pending": self.pending, "failed": self.failed,
                "failures": self.failures}


def replay(results: Path, outboxes: list[Outbox], deadline_ms: float | None) -> int:
    """Queue every message of ``results.jsonl`` not yet delivered (per outbox); the number queued in all."""
    if not outboxes or not results.is_file():
        return 0
    messages = ledger_messages(read_jsonl(results), deadline_ms)
    return sum(ob.prime(messages) for ob in outboxes)


class DeadlineWatch:
    """One part in flight at a time (the line is sequential). ``start`` arms the deadline when the part is taken;
    ``finish`` disarms it and says whether the REVIEW went out. The watchdog fires while the model runs; ``finish``
    fires itself if the part is judged past its deadline before the watchdog woke, so the outcome depends only on
    the time the part took. ``on_fire`` runs under the lock: a part's REVIEW is queued before its record."""

    def __init__(self, deadline_ms: float, on_fire: Callable[[str, str], None]) -> None:
        self.deadline_ms, self.on_fire = deadline_ms, on_fire
        self._cond = threading.Condition()
        self._part: tuple[str, str] | None = None  # (key, source)
        self._due = 0.0
        self._fired = False
        self._stop = False
        self.missed = 0
        self._thread = threading.Thread(target=self._run, name="deadline", daemon=True)
        self._thread.start()

    def start(self, key: str, source: str, taken: float, already_sent: bool = False) -> None:
        with self._cond:
            self._part, self._due, self._fired = (key, source), taken + self.deadline_ms / 1e3, already_sent
            self._cond.notify_all()

    def _fire(self) -> None:
        self._fired = True
        self.missed += 1
        key, source = self._part  # type: ignore[misc]
        self.on_fire(key, source)

    def finish(self) -> bool:
        with self._cond:
            if self._part is not None and not self._fired and time.monotonic() >= self._due:
                self._fire()
            fired, self._part = self._fired, None
            return fired

    def _run(self) -> None:
        with self._cond:
            while not self._stop:
                if self._part is None or self._fired:
                    self._cond.wait()
                    continue
                left = self._due - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._fire()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
