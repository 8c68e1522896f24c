"""MQTT sessions: Control Packets cut from the reassembled stream, requests paired with their
acknowledgements, one ECS event per packet.

- **One event per Control Packet** (``event.dataset: ics.mqtt``), in the order its last byte was
  captured; ``event.action`` is the packet type in snake case (``connect``, ``publish``, ...,
  ``reserved`` for type 0 and, before 5.0, 15), the fields (:func:`collectors.mqtt.parse_packet`) are under
  ``mqtt``, with ``mqtt.protocol_version`` ("3.1", "3.1.1", "5.0"; null before a CONNECT).
- **The version** is the Protocol Level of the connection's CONNECT; it decides how later
  packets of both directions are read (v5 Properties and Reason Codes). With no CONNECT seen the
  packets are read as 3.1.1, unless a CONNACK longer than 3.1.1's says 5.0
  (``mqtt.protocol_version_inferred``).
- **Pairing.** An acknowledgement carries its request's event id, frame and the response time
  (``request_event_id``, ``request_frame``, ``response_time_us``): CONNECT -> CONNACK, PUBLISH
  QoS 1 -> PUBACK, PUBLISH QoS 2 -> PUBREC, PUBREL -> PUBCOMP, SUBSCRIBE -> SUBACK,
  UNSUBSCRIBE -> UNSUBACK (by direction and Packet Identifier), PINGREQ -> PINGRESP (in order).
  An acknowledgement with no request seen is flagged ``orphan``. A request left unanswered for
  ``collect.response_timeout_ms`` (or at the end of its flow) gives one ``unanswered_request``
  event, timed at the deadline (not PINGREQ: a keep-alive).
- **Topic Aliases** (v5): a PUBLISH that names its topic by a Topic Alias only carries the
  Topic Name the alias was set to in its direction (``mqtt.topic_from_alias``).
- **Connection start.** A packet other than CONNECT before the connection's CONNECT is flagged
  only when the start of the connection was captured, which counts as so when the first packet
  of the client direction is a CONNECT or the first of the server direction is a CONNACK (a
  capture that begins mid-connection shows neither): a CONNACK is then flagged
  ``missing_connect``, any other packet ``unintroduced_message`` (Suricata's names). A second
  CONNECT is ``double_connect``. A client may send packets after its CONNECT without waiting
  for the CONNACK (MQTT 3.1.1 §3.1.4, 5.0 §3.1.4): that is not flagged.
- **Anomalies** (``mqtt.anomalies``, counted in :attr:`MqttStats.anomalies`): those of
  :func:`collectors.mqtt.parse_packet`, the ones above, ``unsupported_protocol_level`` and
  ``protocol_name_mismatch`` of a CONNECT. A malformed packet (a field beyond the packet, a
  Property Length beyond it, an unknown property) gives its event flagged ``malformed`` with
  its first 64 raw bytes (``mqtt.raw``), and counts as a parse error with its location. Bytes
  that are not MQTT (a Remaining Length over four bytes, or, out of step, no plausible Fixed
  Header, or a packet over :data:`MAX_PACKET` bytes) give one ``protocol_violation`` event per
  direction. A packet cut by the end of the flow gives one event flagged ``truncated`` (counted
  in :attr:`MqttStats.truncated`, not a parse error).
- **Large packets** are collected part by part and joined once whole (no copy per segment).
- **Mid-connection captures**: out of step (the start of a capture, after a gap) the framing
  takes only a plausible packet (known type, the type's flags, a valid QoS) of at most
  :data:`MAX_RESYNC` bytes, else resynchronises on the first chain of plausible packets
  (fields that parse).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from collectors.mqtt import (
    PACKET_TYPES,
    VERSIONS,
    MqttStats,
    ObservationTopic,
    header_plausible,
    observation,
    packet_size,
    parse_packet,
)
from collectors.normalize import FlowContext
from collectors.session import StreamSession
from soc.errors import DissectError
from soc.event import event_id, stream_event_id
from soc.types import Event

DATASET = "ics.mqtt"
MAX_IN_FLIGHT = 4096  # requests awaiting an acknowledgement per flow
MAX_RESYNC = 65536  # bytes searched for a plausible packet when out of step
RESYNC_CHAIN = 8  # whole plausible packets in a row that put the framing back in step
MAX_ALIASES = 65535  # Topic Aliases followed per direction (the most a Topic Alias can be)
MAX_PACKET = 1 << 24  # 16 MiB: a larger packet is not followed (a violation), nor buffered
#: acknowledgement type -> the request type it answers
ANSWERS = {2: 1, 4: 3, 5: 3, 7: 6, 9: 8, 11: 10, 13: 12}
_CONNECTION = frozenset({1, 2, 12, 13, 14, 15})
_ACCESS = frozenset({3, 8, 10})
_NAMES = {1: "MQTT", 3: "MQIsdp"}  # the Protocol Name each level must carry (3.1: MQIsdp)


@dataclass
class _InFlight:
    ts_us: int
    frame: int
    event_id: str
    packet_type: int
    packet_id: int | None
    to_server: bool


class MqttSession(StreamSession):
    """One MQTT connection: framing both directions, version, pairing, events."""

    DATASET = DATASET
    NAMESPACE = "mqtt"
    HEADER = 5  # the Fixed Header: type and flags, a Remaining Length of up to four bytes
    NOT_PROTOCOL = "not_mqtt"
    VIOLATION_MESSAGE = "bytes on an MQTT port that are not MQTT Control Packets"

    def __init__(
        self,
        context: FlowContext,
        emit: Callable[[Event], None],
        stats: MqttStats,
        observer: dict[str, Any],
        location: Callable[[int], str],
        timeout_us: int,
        observation_topics: tuple[ObservationTopic, ...] = (),
    ) -> None:
        super().__init__(context, emit, stats, observer, location, timeout_us)
        self.stats: MqttStats = stats
        #: topic templates whose PUBLISHes (client to broker) are sensor observations
        self.observation_topics = observation_topics
        self.version: int | None = None  # the CONNECT's Protocol Level
        self.inferred = False  # the version was guessed from a CONNACK (no CONNECT seen)
        self.connected = False  # a CONNECT was seen
        self.start_seen = False  # the connection's start was captured (see the module)
        self.seen = {True: False, False: False}  # a packet was seen in the direction
        self.direction = True  # the direction being cut (for :meth:`_size`)
        self.last = {True: (0, 0), False: (0, 0)}  # (ts_us, frame) of the last bytes
        #: requests awaiting an acknowledgement by (request direction, type, Packet Identifier)
        self.in_flight: dict[tuple[bool, int, int | None], _InFlight] = {}
        self.aliases: dict[bool, dict[int, str]] = {True: {}, False: {}}  # v5 Topic Aliases

    # -- stream ------------------------------------------------------------------------------

    def data(self, to_server: bool, data: bytes, ts_us: int, frame: int, seq: int) -> None:
        """In-order bytes of one direction (``seq``: the first byte's TCP sequence number)."""
        self.direction = to_server
        self.last[to_server] = (ts_us, frame)
        if (  # the usual case first: one whole packet in one segment, nothing buffered
            not self.parts[to_server]
            and not self.buffers[to_server]
            and self.synced[to_server]
            and len(data) >= 2
            and data[1] < 0x80
            and data[1] + 2 == len(data)
        ):
            self._take(to_server, data, ts_us, frame, seq)
            return
        self._cut(to_server, data, ts_us, frame, seq)  # a large packet is collected in parts

    def _size(self, head: bytes) -> int:
        size = packet_size(head)
        if self.synced[self.direction]:
            return -1 if size > MAX_PACKET else size
        # out of step (the start of a capture, a gap): only a plausible, modest packet
        if head and not header_plausible(head):
            return -1
        return -1 if size > MAX_RESYNC else size

    def _resync(self, buffer: bytes, offset: int) -> int:
        limit = min(len(buffer), offset + MAX_RESYNC)
        for start in range(offset + 1, limit):
            if header_plausible(buffer[start : start + 1]) and self._chain(buffer, start):
                return start - offset
        return -1

    def _chain(self, buffer: bytes, start: int) -> bool:
        """Whether the bytes from ``start`` are plausible packets: :data:`RESYNC_CHAIN` whole
        ones, or all up to the buffer's end (the last may be incomplete when it is small or
        follows a whole one)."""
        end, count = len(buffer), 0
        while start < end and count < RESYNC_CHAIN:
            head = buffer[start : start + self.HEADER]
            if not header_plausible(head):
                return False
            size = packet_size(head)
            if size < 0:
                return False
            if size == 0 or start + size > end:
                return count > 0 or size < 65536
            try:
                parse_packet(buffer[start : start + size], self.version)
            except DissectError:
                return False
            start += size
            count += 1
        return True

    def _violation_fields(self, data: bytes) -> dict[str, Any]:
        fields = super()._violation_fields(data)
        size = packet_size(data[:5])
        if size < 0:
            fields["anomalies"].append("remaining_length_over_4_bytes")
        elif size > MAX_PACKET:
            fields["anomalies"].append("packet_too_large")
            fields["packet_length"] = size
        version = VERSIONS.get(self.version) if self.version else None
        return {"packet_type": "protocol_violation", **fields, "protocol_version": version}

    def expire(self, now_us: int) -> None:
        """Report requests whose acknowledgement is overdue."""
        if not self.in_flight:
            return
        limit = now_us - self.timeout_us
        for key in [k for k, v in self.in_flight.items() if v.ts_us < limit]:
            self._unanswered(self.in_flight.pop(key))

    def close(self) -> None:
        """The flow ended: a packet cut short is reported, requests in flight are unanswered."""
        for to_server in (True, False):
            parts = self.parts[to_server]
            if parts:
                self.buffers[to_server] = b"".join(parts)
                self.buffer_seq[to_server] = self.parts_seq[to_server]
                parts.clear()
            buffer = self.buffers[to_server]
            if buffer and self.synced[to_server]:
                self._truncated(to_server, buffer)
            self.buffers[to_server] = b""
        for pending in list(self.in_flight.values()):
            self._unanswered(pending)
        self.in_flight.clear()

    # -- packets -----------------------------------------------------------------------------

    def _take(self, to_server: bool, data: bytes, ts_us: int, frame: int, seq: int) -> None:
        eid = stream_event_id(ts_us, self.tags[to_server], seq)
        kind = data[0] >> 4
        anomalies: list[str] = []
        if not self.seen[to_server]:
            self.seen[to_server] = True
            if (to_server and kind == 1) or (not to_server and kind == 2):
                self.start_seen = True
        if kind == 2 and self.version is None and len(data) > 4 and data[1] > 2:
            self.version, self.inferred = 5, True  # v3 CONNACKs are 2 bytes long
        try:
            fields = parse_packet(data, None if kind == 1 else self.version)
        except DissectError as exc:
            name = PACKET_TYPES[kind]
            self.stats.malformed += 1
            self._error(frame, f"MQTT {name}: {exc.message}")
            fields = {
                "packet_type": name,
                "packet_type_code": kind,
                "flags": data[0] & 0x0F,
                "remaining_length": len(data) - _header_length(data),
                "malformed": True,
                "raw": data[:64].hex(),
            }
            anomalies.append("malformed")
            if kind == 1:
                fields.update(_connect_level(data))
        else:
            if "anomalies" in fields:
                anomalies.extend(fields["anomalies"])
        if kind == 3 and "properties" in fields:
            self._alias(to_server, fields, anomalies)
        if kind == 1:
            self._connect(fields, anomalies)
        elif not self.connected and self.start_seen:
            anomalies.append("missing_connect" if kind == 2 else "unintroduced_message")
        fields["protocol_version"] = VERSIONS.get(self.version) if self.version else None
        if self.inferred:
            fields["protocol_version_inferred"] = True
        fields["frame"] = frame
        outcome = self._pair(to_server, kind, fields, ts_us, frame, eid)
        if anomalies:
            fields["anomalies"] = anomalies
            self.stats.anomalies += 1
            if "malformed" in anomalies:
                outcome = "failure"
        name = fields["packet_type"]
        self.stats.messages += 1
        self.stats.packet_types[name] = self.stats.packet_types.get(name, 0) + 1
        kind_type = "connection" if kind in _CONNECTION else "access" if kind in _ACCESS else "info"
        doc = self.context.event(to_server, ts_us, eid, DATASET, self.observer)
        event = doc["event"]
        event["action"] = name.lower()
        event["type"] = ["protocol", kind_type]
        event["outcome"] = outcome
        doc["mqtt"] = fields
        if kind == 3 and to_server and self.observation_topics and "payload" in fields:
            found = observation(
                self.observation_topics, str(fields.get("topic")), fields["payload"]
            )
            if found is not None:
                doc["wellbeing"] = found
        self.emit(doc)

    def _alias(self, to_server: bool, fields: dict[str, Any], anomalies: list[str]) -> None:
        """A v5 Topic Alias (per direction, MQTT 5.0 §3.3.2.3.4): a PUBLISH with a Topic Name
        sets it; one with an empty Topic Name gets the name it stands for
        (``topic_from_alias``), or ``unknown_topic_alias``."""
        alias = fields["properties"].get("topic_alias")
        if alias is None:
            return
        aliases = self.aliases[to_server]
        if fields["topic"]:
            if alias in aliases or len(aliases) < MAX_ALIASES:
                aliases[alias] = fields["topic"]
        elif alias in aliases:
            fields["topic"] = aliases[alias]
            fields["topic_from_alias"] = True
        else:
            anomalies.append("unknown_topic_alias")

    def _connect(self, fields: dict[str, Any], anomalies: list[str]) -> None:
        """A CONNECT: the connection's version (the first CONNECT's)."""
        if self.connected:
            anomalies.append("double_connect")
        self.connected = True
        level = fields.get("protocol_level")
        if level is None:  # malformed
            return
        if level not in VERSIONS:
            anomalies.append("unsupported_protocol_level")
            return
        if fields["protocol_name"] != _NAMES.get(level, "MQTT"):
            anomalies.append("protocol_name_mismatch")
        if self.version is None or self.inferred:
            self.version, self.inferred = level, False

    def _pair(
        self,
        to_server: bool,
        kind: int,
        fields: dict[str, Any],
        ts_us: int,
        frame: int,
        eid: str,
    ) -> str:
        """Track a request or match an acknowledgement; the packet's ``event.outcome``."""
        packet_id = fields.get("packet_id")
        asked = ANSWERS.get(kind)
        if asked is not None:
            key_id = packet_id if asked in (3, 6, 8, 10) else None
            pending = self.in_flight.pop((not to_server, asked, key_id), None)
            if pending is None and fields.get("malformed") is None:
                self.stats.orphans += 1
                fields["orphan"] = True
            elif pending is not None:
                self.stats.paired += 1
                fields["request_event_id"] = pending.event_id
                fields["request_frame"] = pending.frame
                fields["response_time_us"] = ts_us - pending.ts_us
            return _outcome(kind, fields)
        if kind in (1, 6, 8, 10, 12) or (kind == 3 and fields.get("qos") in (1, 2)):
            if kind != 1 and kind != 12 and packet_id is None:
                return "unknown"  # malformed: nothing to pair with
            if len(self.in_flight) >= MAX_IN_FLIGHT:  # report the oldest rather than grow
                oldest = min(self.in_flight, key=lambda k: self.in_flight[k].ts_us)
                self._unanswered(self.in_flight.pop(oldest))
            self.in_flight[(to_server, kind, packet_id)] = _InFlight(
                ts_us, frame, eid, kind, packet_id, to_server
            )
            return "unknown"
        return _outcome(kind, fields)

    def _unanswered(self, pending: _InFlight) -> None:
        if pending.packet_type == 12:  # a PINGREQ: a keep-alive, not a request to report
            return
        self.stats.unanswered += 1
        ts_us = pending.ts_us + self.timeout_us
        eid = event_id(ts_us, DATASET, "unanswered", pending.event_id)
        doc = self.context.event(pending.to_server, ts_us, eid, DATASET, self.observer)
        doc["event"].update(
            {"action": "unanswered_request", "type": ["protocol", "info"], "outcome": "failure"}
        )
        fields: dict[str, Any] = {
            "packet_type": "unanswered_request",
            "request_packet_type": PACKET_TYPES[pending.packet_type],
            "request_frame": pending.frame,
            "request_event_id": pending.event_id,
            "response_timeout_us": self.timeout_us,
            "protocol_version": VERSIONS.get(self.version) if self.version else None,
        }
        if pending.packet_id is not None:
            fields["packet_id"] = pending.packet_id
        doc["mqtt"] = fields
        self.emit(doc)

    def _truncated(self, to_server: bool, buffer: bytes) -> None:
        ts_us, frame = self.last[to_server]
        self.stats.truncated += 1
        self._error(frame, "MQTT packet cut short by the end of the flow")
        kind = buffer[0] >> 4
        seq = self.buffer_seq[to_server]
        eid = stream_event_id(ts_us, self.tags[to_server], seq)
        doc = self.context.event(to_server, ts_us, eid, DATASET, self.observer)
        doc["event"].update(
            {"action": PACKET_TYPES[kind].lower(), "type": ["protocol", "info"],
             "outcome": "failure"}
        )  # fmt: skip
        size = packet_size(buffer[:5])
        doc["mqtt"] = {
            "packet_type": PACKET_TYPES[kind],
            "packet_type_code": kind,
            "flags": buffer[0] & 0x0F,
            "captured_length": len(buffer),
            "packet_length": size if size > 0 else None,
            "protocol_version": VERSIONS.get(self.version) if self.version else None,
            "frame": frame,
            "anomalies": ["truncated"],
            "raw": buffer[:64].hex(),
        }
        self.emit(doc)


def _outcome(kind: int, fields: dict[str, Any]) -> str:
    """``event.outcome`` of a packet that is not a request: failure on a non-zero CONNACK Return
    Code or Reason Code, on a v5 Reason Code of 0x80 or more (codes under 0x80 are successes,
    e.g. No matching subscribers), on a SUBACK Failure (0x80); success otherwise."""
    if fields["packet_type"] == "RESERVED":
        return "unknown"
    if kind == 2:
        code = fields.get("return_code", fields.get("reason_code", 0))
        return "failure" if code else "success"
    codes = fields.get("reason_codes") or fields.get("return_codes")
    if codes is not None:
        return "failure" if any(c >= 0x80 for c in codes) else "success"
    if fields.get("reason_code", 0) >= 0x80:
        return "failure"
    if kind == 3:  # a QoS 0 PUBLISH: nothing says how it went
        return "unknown"
    return "success"


def _connect_level(data: bytes) -> dict[str, Any]:
    """What a malformed CONNECT says before its Properties or Payload, when it is whole: its
    Protocol Name and Level, Connect Flags and Keep Alive."""
    start = _header_length(data)
    if len(data) < start + 2:
        return {}
    end = start + 2 + int.from_bytes(data[start : start + 2], "big")
    out: dict[str, Any] = {}
    if end < len(data):
        out["protocol_name"] = data[start + 2 : end].decode("utf-8", "replace")
        out["protocol_level"] = data[end]
    if end + 3 < len(data):
        out["connect_flags"] = data[end + 1]
        out["keep_alive"] = int.from_bytes(data[end + 2 : end + 4], "big")
    return out


def _header_length(data: bytes) -> int:
    """The length of the Fixed Header of a whole packet."""
    length = 2
    while length < 5 and data[length - 1] & 0x80:
        length += 1
    return length


__all__ = ["DATASET", "MqttSession", "MqttStats"]
