"""What the line script tells the plant, in one object the line loop calls: the publishers' outboxes (delivered
from the ledger, ``industrial_qc.delivery``), the ``--deadline-ms`` watchdog and the metrics server.

The line calls ``taken`` when it picks a part up, ``judged`` with the record before writing it (a missed deadline
is marked on the record then), ``recorded`` once the record is safe on disk (it is queued to every publisher),
``tick`` whenever its loop turns, and ``close`` at the end. With none of ``--publish``, ``--deadline-ms``,
``--metrics-port`` each call is a no-op.

What goes where when a part misses its deadline: ``results.jsonl`` holds one record per part, the real result,
with ``deadline_missed: true``, ``published_verdict: "REVIEW"`` and ``deadline_ms``; every publisher gets two
messages with the part's key: ``message: deadline`` (verdict REVIEW, reason ``deadline``) when the deadline
passes, then ``message: record`` (that late record) as an update. The plant acts on the first message per key.
"""

from __future__ import annotations

import time
from pathlib import Path

from common.errors import InputError
from industrial_qc.delivery import DeadlineWatch, DeliveryLog, Outbox, replay
from industrial_qc.publish import deadline_message, make_publisher, record_message


class PlantLink:
    def __init__(self, out_dir: Path, run_id: str | None, *, publish: list[str], deadline_ms: float | None,
                 metrics_port: int | None, metrics_host: str = "127.0.0.1", status_interval: float = 5.0,
                 health_stale: float = 30.0, backlog=None, console=None) -> None:
        self.run_id, self.console, self.deadline_ms = run_id, console, deadline_ms
        self.log = DeliveryLog(Path(out_dir) / "delivery.jsonl") if publish else None
        self.outboxes: list[Outbox] = []
        self.metrics = None
        self.watch = None
        try:
            for url in dict.fromkeys(publish):  # the same URL twice would deliver twice
                self.outboxes.append(Outbox(make_publisher(url, run_id, status_interval), self.log, console))
            if metrics_port is not None:
                from industrial_qc.line_metrics import LineMetrics

                try:
                    self.metrics = LineMetrics(metrics_host, metrics_port, run_id, self.outboxes, backlog,
                                               stale=health_stale)
                except OSError as exc:
                    raise InputError(f"--metrics-port {metrics_port}: cannot listen on {metrics_host}: "
                                     f"{exc.strerror or exc}") from None
        except BaseException:
            self.close(0.0)
            raise
        if deadline_ms is not None:
            self.watch = DeadlineWatch(deadline_ms, self._deadline)

    def start(self, results: Path) -> None:
        """Queue what earlier runs left undelivered (in ``results.jsonl`` order), then start the senders."""
        queued = replay(results, self.outboxes, self.deadline_ms)
        if queued and self.console is not None:
            self.console.print(f"publish: {queued} message(s) from {results.name} not yet delivered: sending them",
                               soft_wrap=True)
        for ob in self.outboxes:
            ob.start()
        if self.metrics is not None and self.console is not None:
            self.console.print(f"metrics: {self.metrics.url}/metrics  health: {self.metrics.url}/healthz")

    def _deadline(self, key: str, source: str) -> None:
        msg = deadline_message(key, source, self.run_id, self.deadline_ms)  # type: ignore[arg-type]
        for ob in self.outboxes:
            ob.put(msg)

    def taken(self, key: str, source: str) -> None:
        if self.watch is not None:
            sent = any(ob.sent("deadline", key) for ob in self.outboxes)  # a retried part's REVIEW went out
            self.watch.start(key, source, time.monotonic(), already_sent=sent)

    def judged(self, record: dict | None) -> None:
        """Disarm the deadline; a part judged late gets the fields that say so (before its record is written)."""
        if self.watch is None:
            return
        fired = self.watch.finish()
        if fired and record is not None:
            record.update(deadline_missed=True, published_verdict="REVIEW", deadline_ms=self.deadline_ms)

    def recorded(self, record: dict) -> None:
        if self.outboxes and record.get("ledger_key"):
            msg = record_message(record)
            for ob in self.outboxes:
                ob.put(msg)
        if self.metrics is not None:
            self.metrics.record(record)

    def tick(self) -> None:
        if self.metrics is not None:
            self.metrics.tick()

    def close(self, drain: float) -> dict[str, dict]:
        """Stop everything; per publisher: delivered / pending / failed (refused) / failures (retried attempts).
        ``drain``: seconds to wait for the outboxes to empty (shared by all, they drain in parallel)."""
        if self.watch is not None:
            self.watch.close()
        end = time.monotonic() + drain
        report = {ob.name: ob.close(end - time.monotonic()) for ob in self.outboxes}
        if self.metrics is not None:
            self.metrics.close()
        if self.log is not None:
            self.log.close()
        return report
