"""OPC UA publisher: the line is a client that writes each part's result into variables a PLC reads.

Contract (documented in the README): under the namespace URI ``urn:vision-suite``, string node ids
``ns=<idx>;s=vsuite.<station>.<Name>`` for each name in ``NODES`` (``station`` from ``?station=`` in the URL,
default ``line``). The server (the PLC side) provides the variables, writable by the line's session; the line
never creates nodes (most PLC servers do not allow it). ``create_line_nodes`` builds them on an asyncua server
(a soft PLC, the tests). All variables of a part go in one Write request, so a reader polling between parts sees
one part's values together. A late record (``deadline_missed``) is not written: the PLC keeps the REVIEW it
acted on.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from datetime import UTC, datetime

from industrial_qc.publish import Message, Publisher, PublishError

NAMESPACE_URI = "urn:vision-suite"
# name -> OPC UA built-in type (asyncua ua.VariantType member name)
NODES = {
    "LastPartId": "String",  # the part's key (ledger key: path|size|mtime or video#frame=N)
    "LastSource": "String",  # the file or frame
    "LastVerdict": "String",  # PASS | FAIL | REVIEW | ERROR
    "LastScore": "Double",  # max_defect_score (0 for an error or a deadline REVIEW)
    "LastTimestamp": "DateTime",  # when the part was judged (the deadline REVIEW: when it was sent)
    "Parts": "UInt32",
    "Pass": "UInt32",
    "Fail": "UInt32",
    "Review": "UInt32",
    "Errors": "UInt32",
}


def node_id(ns: int, station: str, name: str) -> str:
    return f"ns={ns};s=vsuite.{station}.{name}"


def split_station(url: str) -> tuple[str, str]:
    """``opc.tcp://h:p/path?station=s`` -> (the endpoint URL without the query, station)."""
    parts = urllib.parse.urlsplit(url)
    station = urllib.parse.parse_qs(parts.query).get("station", ["line"])[0]
    return urllib.parse.urlunsplit(parts._replace(query="")), station


class OpcUaPublisher(Publisher):
    """asyncua's sync client (its own event-loop thread); connected on first use and again after any failure."""

    def __init__(self, url: str, run_id: str | None, timeout: float = 4.0) -> None:
        super().__init__(url, run_id)
        self.endpoint, self.station = split_station(url)
        self.timeout = timeout
        self.client = None
        self.ns: int | None = None
        self.nodes: list = []

    def _connect(self) -> None:
        from asyncua.sync import Client

        client = Client(self.endpoint, timeout=self.timeout)
        client.connect()
        try:
            ns = client.get_namespace_index(NAMESPACE_URI)
        except Exception:
            client.disconnect()
            raise PublishError(f"{self.name}: the server has no namespace {NAMESPACE_URI!r}: it must provide the "
                               f"variables vsuite.{self.station}.* (see README, plant connections)") from None
        self.client, self.ns = client, ns
        self.nodes = [client.get_node(node_id(ns, self.station, name)) for name in NODES]

    def _drop(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()

    def _values(self, msg: Message) -> list:
        from asyncua import ua

        counts, verdict = self.tally(msg)
        rec = msg.payload
        score = rec.get("max_defect_score") if msg.kind == "record" and rec.get("status") == "ok" else 0.0
        values = {"LastPartId": msg.key, "LastSource": str(rec.get("source", "")), "LastVerdict": verdict,
                  "LastScore": float(score or 0.0), "LastTimestamp": datetime.now(UTC),
                  "Parts": sum(counts[k] for k in ("PASS", "FAIL", "REVIEW", "ERROR")), "Pass": counts["PASS"],
                  "Fail": counts["FAIL"], "Review": counts["REVIEW"], "Errors": counts["ERROR"]}
        return [ua.DataValue(ua.Variant(values[n], getattr(ua.VariantType, t))) for n, t in NODES.items()]

    def publish(self, msg: Message) -> None:
        if msg.kind == "record" and msg.payload.get("deadline_missed"):
            return  # the PLC holds the REVIEW it acted on; the late result is in results.jsonl and on MQTT/HTTP
        try:
            if self.client is None:
                self._connect()
            self.client.write_values(self.nodes, self._values(msg))
        except PublishError:
            self._drop()
            raise
        except Exception as exc:  # refused, timed out, BadNodeIdUnknown, BadTypeMismatch: retried
            self._drop()
            hint = "" if "NodeId" not in str(exc) else (
                f" (the server must provide {node_id(self.ns or 0, self.station, '*')}: "
                "see README, plant connections)")
            raise PublishError(f"{self.name}: {type(exc).__name__}: {exc}{hint}") from None
        self.commit(msg)

    def close(self) -> None:
        self._drop()


async def create_line_nodes(server, station: str = "line") -> dict[str, object]:
    """On an asyncua ``Server``: register ``urn:vision-suite`` and create the line's variables, writable, under
    Objects/vsuite.<station>. Returns name -> Node. For a soft PLC or a test server, never called by the line."""
    from asyncua import ua

    ns = await server.register_namespace(NAMESPACE_URI)
    folder = await server.nodes.objects.add_object(ua.NodeId(f"vsuite.{station}", ns), f"vsuite.{station}")
    nodes = {}
    for name, vtype in NODES.items():
        kind = getattr(ua.VariantType, vtype)
        initial = {"String": "", "Double": 0.0, "DateTime": datetime.now(UTC)}.get(vtype, 0)
        node = await folder.add_variable(ua.NodeId(node_id(ns, station, name).split(";s=")[1], ns), name,
                                         ua.Variant(initial, kind))
        await node.set_writable()
        nodes[name] = node
    return nodes
