"""Delivery from the ledger (industrial_qc.delivery) against a real HTTP receiver: a refusal (4xx) is recorded and
never retried, a restart sends only what has no delivery line, in ledger order (a missed deadline's REVIEW before
its record), and the deadline watchdog fires while a part is still being judged."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from common.results import JsonlWriter
from industrial_qc.delivery import DeadlineWatch, DeliveryLog, Outbox, replay
from industrial_qc.publish import WebhookPublisher
from tests.integration.plant_helpers import Webhook


def _records(path: Path, n: int, missed: int | None = None) -> list[dict]:
    recs = [{"source": f"/p/{i}.png", "status": "ok", "reason": None, "verdict": "PASS", "ledger_key": f"/p/{i}|1|2",
             "run_id": "r1", **({"deadline_missed": True, "published_verdict": "REVIEW", "deadline_ms": 5.0}
                                if i == missed else {})} for i in range(n)]
    with JsonlWriter(path) as w:
        for r in recs:
            w.write(r)
    return recs


def _run(out: Path, url: str) -> dict:
    log = DeliveryLog(out / "delivery.jsonl")
    ob = Outbox(WebhookPublisher(url, "r1", timeout=5), log)
    replay(out / "results.jsonl", [ob], None)
    ob.start()
    report = ob.close(drain=20)
    log.close()
    return report


def test_restart_sends_only_what_is_undelivered_in_ledger_order(tmp_path):
    recs = _records(tmp_path / "results.jsonl", 4, missed=2)
    hook = Webhook(fail_first=2)
    try:
        report = _run(tmp_path, hook.url)
        assert report == {"delivered": 5, "pending": 0, "failed": 0, "failures": 2}
        expected = [("record", recs[0]["ledger_key"]), ("record", recs[1]["ledger_key"]),
                    ("deadline", recs[2]["ledger_key"]), ("record", recs[2]["ledger_key"]),
                    ("record", recs[3]["ledger_key"])]
        assert [(m["message"], m["key"]) for m in hook.received] == expected
        assert hook.received[2]["verdict"] == "REVIEW" and hook.received[2]["reason"] == "deadline"
        assert _run(tmp_path, hook.url)["delivered"] == 0  # a restart sends nothing twice
        assert len(hook.received) == 5
    finally:
        hook.close()


def test_a_refusal_is_recorded_and_not_retried(tmp_path):
    _records(tmp_path / "results.jsonl", 2)
    posts = []

    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posts.append(1)
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/x"
    try:
        assert _run(tmp_path, url) == {"delivered": 0, "pending": 0, "failed": 2, "failures": 0}
        lines = [json.loads(x) for x in (tmp_path / "delivery.jsonl").read_text().splitlines()]
        assert [x["failed"] for x in lines] == [f"{url}: HTTP 400 Bad Request"] * 2
        assert _run(tmp_path, url)["failed"] == 0 and len(posts) == 2  # refused for good: not sent again
    finally:
        server.shutdown()
        server.server_close()


def test_deadline_watch_fires_while_the_part_is_judged(tmp_path):
    fired = []
    watch = DeadlineWatch(50.0, lambda key, source: fired.append((key, time.monotonic())))
    try:
        t0 = time.monotonic()
        watch.start("k1", "/p/1.png", t0)
        time.sleep(0.5)  # a stalled model
        assert [k for k, _ in fired] == ["k1"] and fired[0][1] - t0 >= 0.05  # sent before the part was judged
        assert watch.finish() is True
        watch.start("k2", "/p/2.png", time.monotonic())
        assert watch.finish() is False and len(fired) == 1  # judged in time: nothing sent
    finally:
        watch.close()
