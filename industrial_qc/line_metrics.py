"""``qc inspect --metrics-port P``: Prometheus metrics and a health check of the running line.

``http://HOST:P/metrics`` (HOST 127.0.0.1 unless ``--metrics-host``), from this process's start:

- ``vsuite_qc_parts_total{verdict}``: records by verdict (PASS, FAIL, REVIEW, ERROR; one per part);
- ``vsuite_qc_errors_total``: error records (unreadable, corrupt, inference failed);
- ``vsuite_qc_deadline_missed_total``: parts judged after ``--deadline-ms`` (published as REVIEW first);
- ``vsuite_qc_stage_seconds{stage}``: histogram of each timing field of the records (decode, detect, classify, ...
  and ``total``, the record's latency_ms);
- ``vsuite_qc_backlog{kind}``: ``hotfolder``, files seen in the source and not yet taken; ``delivery``, messages
  waiting in all outboxes;
- ``vsuite_qc_published_total{publisher}``, ``vsuite_qc_publish_failures_total{publisher}`` (failed attempts,
  each retried), ``vsuite_qc_publish_refused_total{publisher}`` (refused for good), ``vsuite_qc_publish_pending``;
- ``vsuite_qc_model_info{run_id}``.

``/healthz``: 200 ``{"alive": true, "run_id", "last_part", "last_tick_s"}`` while the line loop has ticked (a part
recorded or a poll of the source) within ``stale`` seconds, else 503 with ``alive: false`` (a stuck model, a hung
share).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEALTH_STALE_S = 30.0  # /healthz: 503 once the loop has not ticked for this long
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class LineMetrics:
    """A private registry (never the process-global one) and its HTTP server thread."""

    def __init__(self, host: str, port: int, run_id: str | None, outboxes: list | None = None,
                 backlog: Callable[[], int] | None = None, stale: float = HEALTH_STALE_S) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.run_id, self.stale = run_id, stale
        self.registry = reg = CollectorRegistry()
        self.parts = Counter("vsuite_qc_parts", "Records by verdict", ["verdict"], registry=reg)
        self.errors = Counter("vsuite_qc_errors", "Error records", registry=reg)
        self.missed = Counter("vsuite_qc_deadline_missed", "Parts judged after --deadline-ms", registry=reg)
        self.stages = Histogram("vsuite_qc_stage_seconds", "Time per stage of a part", ["stage"],
                                buckets=STAGE_BUCKETS, registry=reg)
        Info("vsuite_qc_model", "The run the line judges with", registry=reg).info({"run_id": str(run_id)})
        self.backlog_gauge = Gauge("vsuite_qc_backlog", "Work waiting", ["kind"], registry=reg)
        self.backlog_gauge.labels("hotfolder").set_function(backlog or (lambda: 0))
        outboxes = outboxes or []
        self.backlog_gauge.labels("delivery").set_function(lambda: sum(ob.pending for ob in outboxes))
        if outboxes:
            reg.register(_PublishCollector(outboxes))
        self.last_tick = time.monotonic()
        self.last_part: str | None = None
        self.server = ThreadingHTTPServer((host, port), _handler(self))
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def record(self, record: dict) -> None:
        self.tick()
        self.last_part = record.get("timestamp")
        if record.get("status") != "ok":
            self.parts.labels("ERROR").inc()
            self.errors.inc()
            return
        self.parts.labels(str(record.get("verdict"))).inc()
        if record.get("deadline_missed"):
            self.missed.inc()
        for field, value in record.items():
            if field.endswith("_ms") and field != "deadline_ms" and isinstance(value, int | float):
                stage = "total" if field == "latency_ms" else field.removesuffix("_ms")
                self.stages.labels(stage).observe(value / 1e3)

    def health(self) -> tuple[int, dict]:
        age = time.monotonic() - self.last_tick
        alive = age < self.stale
        return (200 if alive else 503), {"alive": alive, "run_id": self.run_id, "last_part": self.last_part,
                                         "last_tick_s": round(age, 3)}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _PublishCollector:
    """Per-publisher delivery counts, read from the outboxes at scrape time."""

    def __init__(self, outboxes: list) -> None:
        self.outboxes = outboxes

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        fams = {
            "published": CounterMetricFamily("vsuite_qc_published", "Messages delivered", labels=["publisher"]),
            "failures": CounterMetricFamily("vsuite_qc_publish_failures", "Failed attempts (retried)",
                                            labels=["publisher"]),
            "failed": CounterMetricFamily("vsuite_qc_publish_refused", "Messages refused for good",
                                          labels=["publisher"]),
        }
        pending = GaugeMetricFamily("vsuite_qc_publish_pending", "Messages waiting", labels=["publisher"])
        for ob in self.outboxes:
            fams["published"].add_metric([ob.name], ob.delivered)
            fams["failures"].add_metric([ob.name], ob.failures)
            fams["failed"].add_metric([ob.name], ob.failed)
            pending.add_metric([ob.name], ob.pending)
        yield from fams.values()
        yield pending


def _handler(metrics: LineMetrics) -> type[BaseHTTPRequestHandler]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/metrics":
                code, body, ctype = 200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST
            elif path == "/healthz":
                code, doc = metrics.health()
                body, ctype = json.dumps(doc).encode(), "application/json"
            else:
                code, body, ctype = 404, b"not found: /metrics or /healthz\n", "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # scrapes are not the line's output
            pass

    return Handler
