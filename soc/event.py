"""The event model: Elastic Common Schema documents with deterministic ids.

An event is a plain nested ``dict`` (see :data:`soc.types.Event`) so that it serialises fast and
reads the same in SQLite, Elasticsearch and Kibana. Every event has at least::

    {"@timestamp": "2024-05-01T10:00:00.123456Z",   # capture time, UTC, microseconds
     "event": {"id": "...", "dataset": "ics.modbus", "kind": "event", ...},
     "ecs": {"version": ECS_VERSION}}

``event.id`` is a content hash: the same packet always gives the same id, so ingesting a capture
twice stores each event once. ``network.community_id`` is Community ID v1 (computed with the
reference ``communityid`` library) so events join with Zeek and Suricata data.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import communityid

from soc.types import Event

ECS_VERSION = "9.0.0"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_CID = communityid.CommunityID(seed=0)
_TRANSPORTS = {"tcp": communityid.PROTO_TCP, "udp": communityid.PROTO_UDP}
REQUIRED_FIELDS = ("@timestamp", "event.id", "event.dataset")


def format_timestamp(ts_us: int) -> str:
    """Microseconds since the Unix epoch as an ECS ``@timestamp``: ISO 8601, UTC, 6 decimals."""
    seconds = ts_us // 1_000_000
    prefix = _PREFIXES.get(seconds)
    if prefix is None:
        prefix = _second_prefix(seconds)
    return f"{prefix}.{ts_us % 1_000_000:06d}Z"


_PREFIXES: dict[int, str] = {}


def _second_prefix(seconds: int) -> str:
    if len(_PREFIXES) >= 4096:
        _PREFIXES.clear()
    prefix = _PREFIXES[seconds] = (_EPOCH + timedelta(seconds=seconds)).strftime(
        "%Y-%m-%dT%H:%M:%S"
    )
    return prefix


def parse_timestamp(text: str) -> int:
    """An ISO 8601 timestamp with a time zone, as microseconds since the Unix epoch.

    Raises ``ValueError`` when the text is not a timestamp or has no time zone.
    """
    if len(text) == 27 and text[19] == "." and text[26] == "Z" and text[20:26].isdigit():
        return _second_value(text[:19]) + int(text[20:26])  # our own format, the hot path
    return _parse_any(text)


@functools.lru_cache(maxsize=4096)
def _second_value(prefix: str) -> int:
    return _parse_any(prefix + "Z")


def _parse_any(text: str) -> int:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {text!r}")
    return (moment - _EPOCH) // _ONE_US


def event_id(ts_us: int, *parts: bytes | str | int) -> str:
    """A deterministic id from the event's time and the parts that identify it (frame, offset).

    ::

        +----------------------------+--------------------------------------+
        | ts_us, 8 bytes, big endian | BLAKE2b-64 of the length-prefixed parts |
        +----------------------------+--------------------------------------+

    written in hexadecimal (32 characters), whose order is the bytes' order: ids sort by time, so
    stores index them in append order. Each part is length-prefixed so that
    ``("ab", "c")`` and ``("a", "bc")`` differ (see :func:`encode_id_parts`).
    """
    return event_id_from(ts_us, encode_id_parts(*parts))


def encode_id_parts(*parts: bytes | str | int) -> bytes:
    """The parts of an event id as hashed: each a 4-byte big-endian length and its bytes (an
    ``int`` as 16 bytes big endian, signed; a ``str`` in UTF-8). Collectors encode a flow's
    constant parts once and append each message's own (:func:`event_id_from`)."""
    out = bytearray()
    for part in parts:
        if isinstance(part, int):
            data = part.to_bytes(16, "big", signed=True)
        elif isinstance(part, str):
            data = part.encode()
        else:
            data = part
        out += len(data).to_bytes(4, "big")
        out += data
    return bytes(out)


def event_id_from(ts_us: int, encoded: bytes) -> str:
    """:func:`event_id` from parts already encoded by :func:`encode_id_parts` (concatenated)."""
    return f"{max(ts_us, 0):016x}{_blake2b(encoded, digest_size=8).hexdigest()}"


def stream_tag(*parts: bytes | str | int) -> str:
    """The hashed half of a stream's event ids (see :func:`stream_event_id`), computed once per
    flow and direction: BLAKE2b-32 of the parts (dataset, flow, direction), 8 hex digits."""
    return _blake2b(encode_id_parts(*parts), digest_size=4).hexdigest()


def stream_event_id(ts_us: int, tag: str, seq: int) -> str:
    """The id of a message at TCP sequence number ``seq`` of a stream tagged :func:`stream_tag`.

    ::

        +----------------------------+---------------------+--------------------+
        | ts_us, 8 bytes, big endian | stream tag, 4 bytes | seq, 4 bytes (TCP) |
        +----------------------------+---------------------+--------------------+

    The same 32 hex digits as :func:`event_id`, time first, but with no hash per message (the
    collector's hot path): a stream's position identifies its message.
    """
    return f"{max(ts_us, 0):016x}{tag}{seq & 0xFFFFFFFF:08x}"


_blake2b = hashlib.blake2b


@functools.lru_cache(maxsize=65536)
def community_id(transport: str, src_ip: str, dst_ip: str, src_port: int, dst_port: int) -> str:
    """Community ID v1 (seed 0) of a TCP or UDP flow; the same for both directions."""
    proto = _TRANSPORTS[transport]
    flow = communityid.FlowTuple(proto, src_ip, dst_ip, src_port, dst_port)
    return str(_CID.calc(flow))


def new_event(
    *,
    ts_us: int,
    dataset: str,
    id_parts: Iterable[bytes | str | int],
    kind: str = "event",
    category: list[str] | None = None,
    type_: list[str] | None = None,
    action: str | None = None,
    outcome: str | None = None,
) -> Event:
    """The ECS skeleton every collector fills in: time, ids, ``event.*`` and ``ecs.version``."""
    event: dict[str, Any] = {
        "id": event_id(ts_us, dataset, *id_parts),
        "kind": kind,
        "dataset": dataset,
        "module": dataset.split(".", 1)[0],
    }
    if category:
        event["category"] = category
    if type_:
        event["type"] = type_
    if action:
        event["action"] = action
    if outcome:
        event["outcome"] = outcome
    return {"@timestamp": format_timestamp(ts_us), "ecs": {"version": ECS_VERSION}, "event": event}


def set_network(
    doc: Event,
    *,
    transport: str,
    src_ip: str,
    dst_ip: str,
    src_port: int,
    dst_port: int,
    protocol: str | None = None,
    src_mac: str | None = None,
    dst_mac: str | None = None,
) -> Event:
    """Fill ``source``, ``destination``, ``network`` and ``related.ip`` of a flow's event."""
    source: dict[str, Any] = {"ip": src_ip, "port": src_port}
    destination: dict[str, Any] = {"ip": dst_ip, "port": dst_port}
    if src_mac:
        source["mac"] = src_mac
    if dst_mac:
        destination["mac"] = dst_mac
    network: dict[str, Any] = {
        "transport": transport,
        "type": "ipv6" if ":" in src_ip else "ipv4",
        "community_id": community_id(transport, src_ip, dst_ip, src_port, dst_port),
    }
    if protocol:
        network["protocol"] = protocol
    doc["source"] = source
    doc["destination"] = destination
    doc["network"] = network
    doc["related"] = {"ip": [src_ip, dst_ip] if src_ip != dst_ip else [src_ip]}
    return doc


def get_field(doc: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ECS path (``"modbus.function_code"``), or ``None`` when absent.

    A key that itself holds a dot (``"@timestamp"``, or a flattened document) is found too.
    """
    if path in doc:
        return doc[path]
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def missing_fields(doc: Mapping[str, Any]) -> list[str]:
    """The required fields (``@timestamp``, ``event.id``, ``event.dataset``) that ``doc`` lacks."""
    return [name for name in REQUIRED_FIELDS if get_field(doc, name) in (None, "")]
