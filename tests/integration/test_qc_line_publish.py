"""The line script talks to the plant, on real servers: a mosquitto broker (one message per part, the retained
status, the last will after SIGKILL, delivery after the broker was down), an in-process OPC UA server (the PLC
variables), a webhook receiver that fails its first requests, the --deadline-ms fail-safe, and /metrics and
/healthz of a running line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from industrial_qc.data import load_dataset
from tests.integration.plant_helpers import Broker, Subscriber, Webhook, free_port, wait_until
from tests.integration.qc_line_helpers import inspect_cli, strict_json_lines

TOPIC = "plant/line1/parts"


def _parts(tiny_data: Path, tmp_path: Path, n: int = 4, corrupt: bool = True) -> Path:
    """``n`` test images (and a corrupt one) in a fresh folder."""
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, s in enumerate(load_dataset(tiny_data).split("test")[:n]):
        shutil.copy(s.image, folder / f"part_{i:02d}{s.image.suffix}")
    if corrupt:
        (folder / "part_99_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return folder


def _deliveries(out: Path) -> list[dict]:
    path = out / "delivery.jsonl"
    return strict_json_lines(path) if path.is_file() else []


def _start(run: Path, folder: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "industrial_qc.cli", "inspect", str(run), str(folder), "--watch", "--out", str(out),
           "--poll", "0.05", "--settle-seconds", "0", *extra]
    env = {**os.environ, "VSUITE_ORT_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_mqtt_one_message_per_part_status_and_last_will(tiny_run, tiny_data, tmp_path):
    broker = Broker(tmp_path).start()
    sub = None
    try:
        sub = Subscriber(broker.port, TOPIC, TOPIC + "/status")
        url = f"mqtt://127.0.0.1:{broker.port}/{TOPIC}"
        folder, out = _parts(tiny_data, tmp_path), tmp_path / "out"
        proc = inspect_cli(tiny_run, str(folder), out, "--publish", url, "--settle-seconds", "0")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        records = strict_json_lines(out / "results.jsonl")
        assert len(records) == 5 and sum(r["status"] == "error" for r in records) == 1  # the corrupt file
        assert sub.wait_for(lambda: len(sub.on(TOPIC)) >= len(records))
        messages = sub.on(TOPIC)
        assert sorted(m["key"] for m in messages) == sorted(r["ledger_key"] for r in records)  # one per part
        by_key = {m["key"]: m for m in messages}
        for rec in records:
            msg = by_key[rec["ledger_key"]]
            assert msg["message"] == "record"
            assert {k: v for k, v in msg.items() if k not in ("message", "key")} == rec
        assert [d["key"] for d in _deliveries(out)] == [r["ledger_key"] for r in records]
        assert "5 delivered, 0 pending" in proc.stdout
        status = sub.on(TOPIC + "/status")
        assert any(s["alive"] for s in status), status  # sent on connect
        final = status[-1]  # a clean stop says offline, with what the plant was told
        assert final["alive"] is False and final["run_id"] == records[0]["run_id"]
        verdicts = Counter(r["verdict"] if r["status"] == "ok" else "ERROR" for r in records)
        assert final["counters"]["parts"] == 5 and final["counters"]["errors"] == verdicts["ERROR"] == 1
        assert final["counters"]["pass"] == verdicts["PASS"]

        # A watch-mode line killed with SIGKILL: the broker publishes its last will (retained, alive false).
        hot = tmp_path / "hot"
        hot.mkdir()
        before = len(sub.on(TOPIC + "/status"))
        line = _start(tiny_run, hot, tmp_path / "out2", "--publish", url, "--status-interval", "0.2")
        assert sub.wait_for(lambda: any(s["alive"] for s in sub.on(TOPIC + "/status")[before:]), 60)
        line.send_signal(signal.SIGKILL)
        line.wait(timeout=10)
        assert sub.wait_for(lambda: sub.on(TOPIC + "/status")[-1]["alive"] is False, 20)
        late = Subscriber(broker.port, TOPIC + "/status")  # a PLC connecting now gets the retained will
        try:
            assert late.wait_for(lambda: late.messages, 10)
            _topic, payload, retained = late.messages[0]
            assert retained and payload["alive"] is False
        finally:
            late.close()
    finally:
        if sub is not None:
            sub.close()
        broker.stop()


def test_mqtt_broker_down_then_back_delivers_every_record_once(tiny_run, tiny_data, tmp_path):
    """No broker while the parts are judged: every record is written, every delivery pending. With the broker back,
    a restart sends each record from results.jsonl. QoS 1 allows a duplicate on the wire, so exactly once is
    asserted in delivery.jsonl and at least once at the subscriber (with no kill in between it is exactly once)."""
    broker = Broker(tmp_path)
    url = f"mqtt://127.0.0.1:{broker.port}/{TOPIC}"
    folder, out = _parts(tiny_data, tmp_path), tmp_path / "out"
    proc = inspect_cli(tiny_run, str(folder), out, "--publish", url, "--settle-seconds", "0", "--publish-drain", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = strict_json_lines(out / "results.jsonl")
    assert len(records) == 5
    assert _deliveries(out) == []
    assert "0 delivered, 5 pending" in proc.stdout
    broker.start()
    sub = Subscriber(broker.port, TOPIC)
    try:
        proc = inspect_cli(tiny_run, str(folder), out, "--publish", url, "--settle-seconds", "0")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "5 message(s)" in proc.stdout and "5 delivered, 0 pending" in proc.stdout
        assert strict_json_lines(out / "results.jsonl") == records  # nothing judged twice
        keys = [r["ledger_key"] for r in records]
        assert [d["key"] for d in _deliveries(out)] == keys  # in ledger order, each once
        assert sub.wait_for(lambda: len(sub.on(TOPIC)) >= 5)
        assert set(keys) <= {m["key"] for m in sub.on(TOPIC)}
        proc = inspect_cli(tiny_run, str(folder), out, "--publish", url, "--settle-seconds", "0")
        assert proc.returncode == 0 and "0 delivered, 0 pending" in proc.stdout  # nothing sent again
        assert len(_deliveries(out)) == 5
    finally:
        sub.close()
        broker.stop()


def test_webhook_failing_first_requests_gets_every_record_once(tiny_run, tiny_data, tmp_path):
    hook = Webhook(fail_first=3)
    try:
        folder, out = _parts(tiny_data, tmp_path), tmp_path / "out"
        proc = inspect_cli(tiny_run, str(folder), out, "--publish", hook.url, "--settle-seconds", "0")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        records = strict_json_lines(out / "results.jsonl")
        assert [m["key"] for m in hook.received] == [r["ledger_key"] for r in records]
        assert hook.attempts == len(records) + 3
        assert "5 delivered, 0 pending, 0 refused, 3 failed attempts" in proc.stdout
    finally:
        hook.close()


def test_deadline_missed_publishes_review_then_the_late_record(tiny_run, tiny_data, tmp_path):
    """--deadline-ms 1: no part is judged within 1 ms of being taken, so each is published as REVIEW (reason
    deadline) at once; its record (the real verdict) is still written, says so, and follows as an update."""
    hook = Webhook()
    try:
        folder, out = _parts(tiny_data, tmp_path, n=3, corrupt=False), tmp_path / "out"
        proc = inspect_cli(tiny_run, str(folder), out, "--publish", hook.url, "--deadline-ms", "1",
                           "--settle-seconds", "0")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        records = strict_json_lines(out / "results.jsonl")
        assert len(records) == 3
        for rec in records:
            assert rec["status"] == "ok" and rec["verdict"] in ("PASS", "FAIL", "REVIEW")
            assert rec["deadline_missed"] is True and rec["published_verdict"] == "REVIEW"
        expected = [(kind, r["ledger_key"]) for r in records for kind in ("deadline", "record")]
        assert [(m["message"], m["key"]) for m in hook.received] == expected
        for m in hook.received[::2]:
            assert m["verdict"] == "REVIEW" and m["reason"] == "deadline"
        assert [(d["kind"], d["key"]) for d in _deliveries(out)] == expected  # each message once
    finally:
        hook.close()


def test_opcua_variables_hold_the_last_part_and_counters(tiny_run, tiny_data, tmp_path):
    from asyncua.sync import Client, Server, ThreadLoop

    from industrial_qc.publish_opcua import NAMESPACE_URI, create_line_nodes, node_id

    port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}/vsuite/"
    with ThreadLoop() as tloop:
        server = Server(tloop=tloop)
        server.set_endpoint(endpoint)
        tloop.post(create_line_nodes(server.aio_obj, "cell7"))
        server.start()
        try:
            folder, out = _parts(tiny_data, tmp_path), tmp_path / "out"
            proc = inspect_cli(tiny_run, str(folder), out, "--publish", endpoint + "?station=cell7",
                               "--settle-seconds", "0")
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "5 delivered, 0 pending" in proc.stdout
            records = strict_json_lines(out / "results.jsonl")
            verdicts = Counter(r["verdict"] if r["status"] == "ok" else "ERROR" for r in records)
            with Client(endpoint) as client:
                ns = client.get_namespace_index(NAMESPACE_URI)
                value = {n: client.get_node(node_id(ns, "cell7", n)).read_value() for n in
                         ("LastPartId", "LastVerdict", "Parts", "Pass", "Fail", "Review", "Errors")}
            last = records[-1]
            assert value["LastPartId"] == last["ledger_key"]
            assert value["LastVerdict"] == (last["verdict"] if last["status"] == "ok" else "ERROR")
            assert value["Parts"] == 5 and value["Errors"] == verdicts["ERROR"] == 1
            assert (value["Pass"], value["Fail"], value["Review"]) == tuple(verdicts[v] for v in
                                                                            ("PASS", "FAIL", "REVIEW"))
        finally:
            server.stop()


def _scrape(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_and_healthz_of_a_running_line(tiny_run, tiny_data, tmp_path):
    folder, out = _parts(tiny_data, tmp_path), tmp_path / "out"
    hot = tmp_path / "hot"
    hot.mkdir()
    port = free_port()
    line = _start(tiny_run, hot, out, "--metrics-port", str(port))
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: _try(lambda: _scrape(base + "/healthz")[0] == 200)), "no /healthz"
        for f in sorted(folder.iterdir()):
            shutil.copy(f, hot / f.name)
        assert wait_until(lambda: len((out / "results.jsonl").read_text().splitlines()) == 5
                     if (out / "results.jsonl").is_file() else False)
        code, text = _scrape(base + "/metrics")
        assert code == 200
        records = strict_json_lines(out / "results.jsonl")
        verdicts = Counter(r["verdict"] if r["status"] == "ok" else "ERROR" for r in records)
        for v in ("PASS", "FAIL", "REVIEW", "ERROR"):
            assert _metric(text, f'vsuite_qc_parts_total{{verdict="{v}"}}') == verdicts[v], (v, text)
        assert _metric(text, "vsuite_qc_errors_total") == 1
        assert _metric(text, 'vsuite_qc_stage_seconds_count{stage="total"}') == 4  # the ok parts
        assert _metric(text, 'vsuite_qc_backlog{kind="hotfolder"}') == 0
        assert f'vsuite_qc_model_info{{run_id="{records[0]["run_id"]}"}} 1.0' in text
        code, body = _scrape(base + "/healthz")
        health = json.loads(body)
        assert code == 200 and health["alive"] is True and health["run_id"] == records[0]["run_id"]
        assert health["last_part"] == max(r["timestamp"] for r in records)
    finally:
        line.send_signal(signal.SIGTERM)
        output, _ = line.communicate(timeout=60)
    assert line.returncode == 0, output
    assert "stopped by SIGTERM" in output


def _try(fn) -> bool:
    try:
        return fn()
    except OSError:
        return False


def _metric(text: str, name: str) -> float:
    """The value of the sample ``name`` (with labels) in Prometheus text format; 0 when absent (never counted)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
