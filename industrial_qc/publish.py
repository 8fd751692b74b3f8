"""Plant connections of the line script: where each part's verdict goes besides ``results.jsonl``.

A ``Publisher`` delivers one ``Message`` at a time and says whether it got there: it returns when the receiver
has it (an MQTT PUBACK, an HTTP 2xx, an OPC UA write answered Good), raises ``PublishError`` when it may work
later (broker down, 5xx: retried) and ``PermanentPublishError`` when it never will (a 4xx other than 408/429).
Queueing, retries and the exactly-once bookkeeping are ``industrial_qc.delivery``'s; publishers keep no state
about what was delivered except the running counters a PLC or a dashboard reads.

URL forms (``--publish URL``, repeatable, or ``line.publish`` in the config):

- ``mqtt://host[:1883]/plant/line2/parts``: one JSON message per part on that topic (QoS 1), a retained
  ``<topic>/status`` message (alive, run id, counters, last verdict) every ``status_interval`` seconds, and a
  retained last will ``{"alive": false}`` on the same status topic.
- ``opc.tcp://host:port/path[?station=NAME]``: writes to variables on an OPC UA server
  (``industrial_qc.publish_opcua``).
- ``http://`` / ``https://``: a webhook; one POST of the message as JSON per part.

Every message carries ``key`` (the part's ledger key, unique in ``results.jsonl``) and ``message`` (``record``:
the record as the ledger holds it; ``deadline``: the REVIEW sent when ``--deadline-ms`` ran out): delivery is
at-least-once on the wire with a stable key, exactly once in ``delivery.jsonl``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from common.errors import InputError
from common.results import dumps, now_iso

MessageKind = Literal["record", "deadline"]
COUNTER_NAMES = ("PASS", "FAIL", "REVIEW", "ERROR")
RETRYABLE_HTTP = frozenset({408, 429})  # and every 5xx: the receiver may take it later


class PublishError(Exception):
    """Not delivered now; may work later (retried with backoff)."""


class PermanentPublishError(PublishError):
    """Never deliverable as it is (the receiver refused it): recorded as failed, not retried."""


@dataclass(frozen=True)
class Message:
    kind: MessageKind
    key: str  # the part's ledger key: the same for a part's deadline message and its record
    payload: dict  # what goes on the wire (JSON)


def record_verdict(record: dict) -> str:
    return str(record.get("verdict")) if record.get("status") == "ok" else "ERROR"


def record_message(record: dict) -> Message:
    """A ledger record as it is published: the record plus its ``key`` and ``message: record``."""
    key = str(record["ledger_key"])
    return Message("record", key, {"message": "record", "key": key, **record})


def deadline_message(key: str, source: str, run_id: str | None, deadline_ms: float) -> Message:
    """The fail-safe REVIEW of a part not judged within ``deadline_ms`` (its record follows, same key)."""
    return Message("deadline", key, {"message": "deadline", "key": key, "source": source, "ledger_key": key,
                                     "run_id": run_id, "status": "ok", "verdict": "REVIEW", "reason": "deadline",
                                     "deadline_ms": deadline_ms, "timestamp": now_iso()})


def safe_url(url: str) -> str:
    """``url`` without a password: the name a publisher has in logs, metrics and ``delivery.jsonl``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class Publisher:
    """One destination. ``counts``/``last_verdict`` are what the plant was told: a part counts once, by the first
    message for its key (a deadline REVIEW, or else its record), so a late record never counts a part twice."""

    name: str

    def __init__(self, url: str, run_id: str | None) -> None:
        self.url, self.name, self.run_id = url, safe_url(url), run_id
        self.counts: Counter = Counter()
        self.last_verdict: str | None = None
        self._lock = threading.Lock()

    def tally(self, msg: Message) -> tuple[Counter, str | None]:
        """The counters and last verdict after ``msg`` (not yet committed: see ``commit``)."""
        counts = Counter(self.counts)
        if msg.kind == "deadline":
            counts["REVIEW"] += 1
            return counts, "REVIEW"
        if msg.payload.get("deadline_missed"):
            return counts, self.last_verdict  # counted by its deadline message
        verdict = record_verdict(msg.payload)
        counts[verdict] += 1
        return counts, verdict

    def commit(self, msg: Message) -> None:
        with self._lock:
            self.counts, self.last_verdict = self.tally(msg)

    def counters(self) -> dict:
        c = self.counts
        return {"parts": sum(c[k] for k in COUNTER_NAMES), "pass": c["PASS"], "fail": c["FAIL"],
                "review": c["REVIEW"], "errors": c["ERROR"]}

    def publish(self, msg: Message) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the connection (a clean stop: an MQTT station says it is offline)."""


# ------------------------------------------------------------------------------------------------ MQTT
class MqttPublisher(Publisher):
    """paho-mqtt, connected in the background (reconnects by itself); a message counts as delivered once the
    broker's PUBACK is in. While disconnected nothing is handed to paho (its own queue would not survive a
    restart), so the outbox retries from the ledger."""

    def __init__(self, url: str, run_id: str | None, status_interval: float = 5.0, ack_timeout: float = 5.0) -> None:
        import paho.mqtt.client as mqtt

        super().__init__(url, run_id)
        parts = urllib.parse.urlsplit(url)
        self.topic = urllib.parse.unquote(parts.path.lstrip("/"))
        if not self.topic or any(ch in self.topic for ch in "+#"):
            raise InputError(f"{self.name}: give the topic as the URL path, e.g. mqtt://host:1883/plant/line1/parts")
        self.status_topic = self.topic + "/status"
        self.ack_timeout, self.status_interval = ack_timeout, status_interval
        self._mqtt = mqtt
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"vsuite-{socket.gethostname()}-{os.getpid()}", clean_session=True)
        if parts.username:
            self.client.username_pw_set(urllib.parse.unquote(parts.username),
                                        urllib.parse.unquote(parts.password or ""))
        self.client.will_set(self.status_topic, self._status(alive=False), qos=1, retain=True)
        self.client.reconnect_delay_set(0.2, 5)
        self.client.on_connect = lambda *_a: self._send_status()
        self.client.connect_async(parts.hostname or "localhost", parts.port or 1883, keepalive=10)
        self.client.loop_start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._status_loop, name="mqtt-status", daemon=True)
        self._thread.start()

    def _status(self, alive: bool) -> str:
        return dumps({"alive": alive, "run_id": self.run_id, "counters": self.counters(),
                      "last_verdict": self.last_verdict, "timestamp": now_iso()})

    def _send_status(self, alive: bool = True):
        return self.client.publish(self.status_topic, self._status(alive), qos=1, retain=True)

    def _status_loop(self) -> None:
        while not self._stop.wait(self.status_interval):
            if self.client.is_connected():
                self._send_status()

    def publish(self, msg: Message) -> None:
        if not self.client.is_connected():
            raise PublishError(f"{self.name}: not connected to the broker")
        info = self.client.publish(self.topic, dumps(msg.payload), qos=1)
        try:
            info.wait_for_publish(self.ack_timeout)
        except (RuntimeError, ValueError) as exc:
            raise PublishError(f"{self.name}: {exc}") from None
        if not info.is_published():
            raise PublishError(f"{self.name}: no PUBACK within {self.ack_timeout:g} s")
        self.commit(msg)

    def close(self) -> None:
        self._stop.set()
        if self.client.is_connected():  # a clean stop: offline now, not when the broker notices
            info = self._send_status(alive=False)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(2.0)
            self.client.disconnect()
        self.client.loop_stop()


# ------------------------------------------------------------------------------------------------ webhook
class WebhookPublisher(Publisher):
    """One POST per message (JSON, ``Idempotency-Key: <key>``). 2xx: delivered. Connection errors, timeouts,
    5xx, 408 and 429: retried. Any other 4xx: the receiver refuses this message for good."""

    def __init__(self, url: str, run_id: str | None, timeout: float = 10.0) -> None:
        super().__init__(url, run_id)
        self.timeout = timeout

    def publish(self, msg: Message) -> None:
        req = urllib.request.Request(self.url, data=dumps(msg.payload).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json", "Idempotency-Key": msg.key})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            text = f"{self.name}: HTTP {exc.code} {exc.reason}"
            if exc.code >= 500 or exc.code in RETRYABLE_HTTP:
                raise PublishError(text) from None
            raise PermanentPublishError(text) from None
        except (OSError, ValueError) as exc:  # URLError, refused, reset, timeout
            raise PublishError(f"{self.name}: {type(exc).__name__}: {exc}") from None
        self.commit(msg)


def make_publisher(url: str, run_id: str | None, status_interval: float = 5.0) -> Publisher:
    """The publisher of ``url`` (mqtt://, opc.tcp://, http(s)://); InputError for anything else."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "mqtt":
        return MqttPublisher(url, run_id, status_interval)
    if scheme == "opc.tcp":
        from industrial_qc.publish_opcua import OpcUaPublisher

        return OpcUaPublisher(url, run_id)
    if scheme in ("http", "https"):
        return WebhookPublisher(url, run_id)
    raise InputError(f"--publish {safe_url(url)}: unknown scheme {scheme!r} "
                     "(mqtt://host:port/topic, opc.tcp://host:port/path, http(s)://...)")

