"""Real servers for the plant-connection tests: a Debian mosquitto broker on a free loopback port (started and
stopped by the test), a paho subscriber that keeps every message, and a webhook receiver (http.server)."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MOSQUITTO = Path("/usr/sbin/mosquitto")  # `make setup` (servers) installs it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Broker:
    """mosquitto on 127.0.0.1:``port`` (anonymous, no persistence: a restart forgets retained messages)."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        assert MOSQUITTO.is_file(), f"{MOSQUITTO} missing: run `make setup` (installs Debian's mosquitto)"
        self.port = port or free_port()
        self.conf = folder / f"mosquitto-{self.port}.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen([str(MOSQUITTO), "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


class Subscriber:
    """paho client subscribed to ``topics``; ``messages``: (topic, payload dict, retain flag) in arrival order."""

    def __init__(self, port: int, *topics: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}-{time.time_ns()}")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in topics])
        assert subscribed.wait(10), "subscription not acknowledged"

    def _on_message(self, _client, _userdata, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[dict]:
        with self.lock:
            return [p for t, p, _r in self.messages if t == topic]

    def wait_for(self, cond, timeout: float = 20.0) -> bool:
        return wait_until(cond, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Webhook:
    """An HTTP receiver on a free loopback port: the first ``fail_first`` POSTs get 503, the rest 200."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[dict] = []
        self.attempts = 0
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                state.attempts += 1
                if state.attempts <= fail_first:
                    self.send_response(503)
                else:
                    state.received.append(json.loads(body))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/parts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_until(cond, timeout: float = 60.0) -> bool:
    """Poll ``cond`` every 50 ms until it holds or ``timeout`` seconds pass; its last answer."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()
