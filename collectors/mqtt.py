"""MQTT (OASIS MQTT 3.1.1 and 5.0; 3.1 as IBM's MQIsdp): packet framing and fields. Pure
functions, no I/O.

- **Framing** (:func:`packet_size`): the Fixed Header is one byte (MQTT Control Packet type in
  the high nibble, flags in the low one) and the Remaining Length, a Variable Byte Integer of one
  to four bytes; a fifth continuation byte is not MQTT.
- **Fields** (:func:`parse_packet`): every Control Packet type of the three versions, with the
  names of the specification in snake case. The version (3 = 3.1, 4 = 3.1.1, 5 = 5.0, the
  CONNECT's Protocol Level) decides whether packets carry v5 Properties and Reason Codes; an
  unknown version (no CONNECT seen) is read as 3.1.1. Secrets are never kept: of the Password
  and the Authentication Data only their presence and length, of the Will Payload its length.
  A PUBLISH payload is kept as text (valid, printable UTF-8) or hex, its first
  :data:`MAX_PAYLOAD` bytes.
- **Anomalies** (``anomalies`` of the fields, a list): ``reserved_packet_type`` (0; 15 before
  v5), ``invalid_fixed_header_flags`` (the flags the specification fixes for the type),
  ``invalid_qos`` (PUBLISH or Will QoS 3), ``invalid_connect_flags`` (the reserved bit, or Will
  QoS/Retain without the Will Flag), ``invalid_subscription_options`` (QoS 3, Retain Handling 3
  or reserved bits), ``no_topic_filter`` (a SUBSCRIBE or UNSUBSCRIBE without one); bytes left
  after the fields are counted in ``trailing_bytes``. Bytes that do not fit the packet (a field
  beyond the Remaining Length, a Property Length beyond the packet, an unknown property) raise
  :class:`soc.errors.DissectError`: the packet is malformed.
- **Reason codes** keep their number and their specification name: ``return_code`` and
  ``return_code_name`` (CONNACK, SUBACK of 3.1 and 3.1.1: ``return_codes``),
  ``reason_code`` and ``reason_code_name`` (5.0; SUBACK and UNSUBACK: ``reason_codes``).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from soc.errors import DissectError

#: MQTT Control Packet types (MQTT 5.0 §2.1.2; AUTH exists from 5.0 on)
PACKET_TYPES = {
    0: "RESERVED",
    1: "CONNECT",
    2: "CONNACK",
    3: "PUBLISH",
    4: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    12: "PINGREQ",
    13: "PINGRESP",
    14: "DISCONNECT",
    15: "AUTH",
}
#: the Fixed Header flags each type must carry (PUBLISH's are DUP, QoS and RETAIN)
FIXED_FLAGS = {t: (2 if t in (6, 8, 10) else 0) for t in range(1, 16) if t != 3}
#: Protocol Level (the CONNECT's) -> version
VERSIONS = {3: "3.1", 4: "3.1.1", 5: "5.0"}
MAX_PAYLOAD = 256  # bytes of a PUBLISH payload kept in an event
MAX_LIST = 256  # topics, codes or user properties of one packet kept in an event

#: CONNACK Connect Return Codes of 3.1 and 3.1.1 (§3.2.2.3)
CONNECT_RETURN_CODES = {
    0: "connection_accepted",
    1: "unacceptable_protocol_version",
    2: "identifier_rejected",
    3: "server_unavailable",
    4: "bad_user_name_or_password",
    5: "not_authorized",
}
#: MQTT 5.0 Reason Codes (§2.4); 0 is named by the packet (see :func:`reason_name`)
REASON_CODES = {
    0x00: "success",
    0x01: "granted_qos_1",
    0x02: "granted_qos_2",
    0x04: "disconnect_with_will_message",
    0x10: "no_matching_subscribers",
    0x11: "no_subscription_existed",
    0x18: "continue_authentication",
    0x19: "re_authenticate",
    0x80: "unspecified_error",
    0x81: "malformed_packet",
    0x82: "protocol_error",
    0x83: "implementation_specific_error",
    0x84: "unsupported_protocol_version",
    0x85: "client_identifier_not_valid",
    0x86: "bad_user_name_or_password",
    0x87: "not_authorized",
    0x88: "server_unavailable",
    0x89: "server_busy",
    0x8A: "banned",
    0x8B: "server_shutting_down",
    0x8C: "bad_authentication_method",
    0x8D: "keep_alive_timeout",
    0x8E: "session_taken_over",
    0x8F: "topic_filter_invalid",
    0x90: "topic_name_invalid",
    0x91: "packet_identifier_in_use",
    0x92: "packet_identifier_not_found",
    0x93: "receive_maximum_exceeded",
    0x94: "topic_alias_invalid",
    0x95: "packet_too_large",
    0x96: "message_rate_too_high",
    0x97: "quota_exceeded",
    0x98: "administrative_action",
    0x99: "payload_format_invalid",
    0x9A: "retain_not_supported",
    0x9B: "qos_not_supported",
    0x9C: "use_another_server",
    0x9D: "server_moved",
    0x9E: "shared_subscriptions_not_supported",
    0x9F: "connection_rate_exceeded",
    0xA0: "maximum_connect_time",
    0xA1: "subscription_identifiers_not_supported",
    0xA2: "wildcard_subscriptions_not_supported",
}
#: SUBACK Return Codes of 3.1 and 3.1.1 (§3.9.3)
SUBACK_RETURN_CODES = {0: "granted_qos_0", 1: "granted_qos_1", 2: "granted_qos_2", 0x80: "failure"}

# MQTT 5.0 Properties (§2.2.2.2): identifier -> (name, data type)
_BYTE, _U16, _U32, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
PROPERTIES: dict[int, tuple[str, int]] = {
    0x01: ("payload_format_indicator", _BYTE),
    0x02: ("message_expiry_interval", _U32),
    0x03: ("content_type", _UTF8),
    0x08: ("response_topic", _UTF8),
    0x09: ("correlation_data", _BINARY),
    0x0B: ("subscription_identifier", _VARINT),
    0x11: ("session_expiry_interval", _U32),
    0x12: ("assigned_client_identifier", _UTF8),
    0x13: ("server_keep_alive", _U16),
    0x15: ("authentication_method", _UTF8),
    0x16: ("authentication_data", _BINARY),
    0x17: ("request_problem_information", _BYTE),
    0x18: ("will_delay_interval", _U32),
    0x19: ("request_response_information", _BYTE),
    0x1A: ("response_information", _UTF8),
    0x1C: ("server_reference", _UTF8),
    0x1F: ("reason_string", _UTF8),
    0x21: ("receive_maximum", _U16),
    0x22: ("topic_alias_maximum", _U16),
    0x23: ("topic_alias", _U16),
    0x24: ("maximum_qos", _BYTE),
    0x25: ("retain_available", _BYTE),
    0x26: ("user_property", _PAIR),
    0x27: ("maximum_packet_size", _U32),
    0x28: ("wildcard_subscription_available", _BYTE),
    0x29: ("subscription_identifier_available", _BYTE),
    0x2A: ("shared_subscription_available", _BYTE),
}
_U16_AT = struct.Struct("!H").unpack_from
_U32_AT = struct.Struct("!I").unpack_from


@dataclass
class MqttStats:
    """Counts of one collection run."""

    messages: int = 0
    malformed: int = 0
    violations: int = 0
    resyncs: int = 0  # times the framing skipped bytes to find a Fixed Header (mid-stream, gaps)
    anomalies: int = 0  # packets flagged with one anomaly or more (malformed ones included)
    paired: int = 0  # acknowledgements matched with their request
    orphans: int = 0  # acknowledgements with no request seen
    unanswered: int = 0  # requests never acknowledged (at the timeout or the end of the flow)
    truncated: int = 0  # packets cut short by the end of their flow (not parse errors)
    packet_types: dict[str, int] = field(default_factory=dict)  # packets by type name
    errors: list[tuple[str, str]] = field(default_factory=list)  # (location, message), first 1000

    def summary(self) -> dict[str, int]:
        """The closing summary's ``mqtt`` section (counts only: ``soc collect`` prints each as
        a number; :attr:`packet_types` is kept on the stats)."""
        return {
            "messages": self.messages,
            "violations": self.violations,
            "malformed": self.malformed,
            "resyncs": self.resyncs,
            "anomalies": self.anomalies,
            "unanswered": self.unanswered,
            "truncated": self.truncated,
        }

    @property
    def parse_errors(self) -> int:
        """Malformed packets and protocol violations."""
        return self.malformed + self.violations


def plausible(payload: bytes) -> bool:
    """Whether a flow's first bytes look like MQTT (dynamic protocol detection): a CONNECT whose
    Protocol Name is ``MQTT`` (3.1.1, 5.0) or ``MQIsdp`` (3.1)."""
    if len(payload) < 12 or payload[0] != 0x10:
        return False
    start = 2
    while start < 5 and payload[start - 1] & 0x80:
        start += 1
    name = payload[start : start + 8]
    return name[:6] == b"\x00\x04MQTT" or name == b"\x00\x06MQIsdp"


def packet_size(head: bytes) -> int:
    """The size of the Control Packet starting with ``head`` (Fixed Header included): 0 when
    more bytes are needed, -1 when it is not an MQTT Fixed Header (a Remaining Length of more
    than four bytes). ``head``: the packet's first five bytes or fewer."""
    n = len(head)
    if n < 2:
        return 0
    byte = head[1]
    if byte < 0x80:
        return 2 + byte
    value, multiplier = byte & 0x7F, 128
    for index in range(2, 5):
        if index >= n:
            return 0
        byte = head[index]
        value += (byte & 0x7F) * multiplier
        if byte < 0x80:
            return index + 1 + value
        multiplier <<= 7
    return -1


def header_plausible(head: bytes) -> bool:
    """Whether ``head`` starts a Control Packet a conforming peer could send (known type, the
    flags the type requires, a valid QoS): what the framing looks for when it is out of step."""
    if not head:
        return False
    kind, flags = head[0] >> 4, head[0] & 0x0F
    if kind == 3:
        return flags & 0x06 != 0x06
    return kind != 0 and FIXED_FLAGS[kind] == flags


def reason_name(code: int, packet_type: int) -> str:
    """The name of an MQTT 5.0 Reason Code in a packet of type ``packet_type``."""
    if code == 0:
        return {9: "granted_qos_0", 14: "normal_disconnection"}.get(packet_type, "success")
    return REASON_CODES.get(code, f"unknown_0x{code:02x}")


def payload_fields(payload: bytes, prefix: str = "payload") -> dict[str, Any]:
    """A payload's length, and its first :data:`MAX_PAYLOAD` bytes as text (valid, printable
    UTF-8) or else as hex; ``<prefix>_truncated`` when there is more."""
    size = len(payload)
    head = payload[:MAX_PAYLOAD]
    out: dict[str, Any] = {f"{prefix}_length": size}
    try:
        text = head.decode()
    except UnicodeDecodeError as exc:
        text = None
        if size > MAX_PAYLOAD and exc.start >= MAX_PAYLOAD - 3 and exc.reason.startswith("unex"):
            text = head[: exc.start].decode()  # a character cut by the truncation
    if text is not None and (text.isprintable() or text.translate(_WHITESPACE).isprintable()):
        out[prefix] = text
    else:
        out[f"{prefix}_hex"] = head.hex()
    if size > MAX_PAYLOAD:
        out[f"{prefix}_truncated"] = True
    return out


_WHITESPACE = {9: " ", 10: " ", 13: " "}


class _Reader:
    """Reads the fields of one packet, from ``offset`` up to ``end``; any read beyond raises."""

    __slots__ = ("data", "end", "offset")

    def __init__(self, data: bytes, offset: int, end: int) -> None:
        self.data = data
        self.offset = offset
        self.end = end

    def left(self) -> int:
        return self.end - self.offset

    def _need(self, size: int, what: str) -> int:
        offset = self.offset
        if offset + size > self.end:
            raise DissectError(
                f"{what} beyond the packet (offset {offset}, {self.end - offset} left)"
            )
        self.offset = offset + size
        return offset

    def byte(self, what: str) -> int:
        return self.data[self._need(1, what)]

    def u16(self, what: str) -> int:
        return int(_U16_AT(self.data, self._need(2, what))[0])

    def u32(self, what: str) -> int:
        return int(_U32_AT(self.data, self._need(4, what))[0])

    def varint(self, what: str) -> int:
        value, multiplier = 0, 1
        for _ in range(4):
            byte = self.byte(what)
            value += (byte & 0x7F) * multiplier
            if byte < 0x80:
                return value
            multiplier <<= 7
        raise DissectError(f"{what}: a Variable Byte Integer of more than four bytes")

    def binary(self, what: str) -> bytes:
        size = self.u16(what)
        start = self._need(size, what)
        return self.data[start : start + size]

    def string(self, what: str) -> str:
        """A UTF-8 Encoded String (invalid UTF-8 is kept, with replacement characters)."""
        return self.binary(what).decode("utf-8", "replace")

    def rest(self) -> bytes:
        start, self.offset = self.offset, self.end
        return self.data[start : self.end]


def _properties(reader: _Reader, where: str) -> dict[str, Any]:
    """The Properties of a v5 packet (their Property Length first), by their names: repeatable
    ones as lists (``user_properties`` as [name, value] pairs, ``subscription_identifiers``),
    binary ones as hex (``authentication_data`` as its length only: it is a secret)."""
    length = reader.varint(f"{where} Property Length")
    if length > reader.left():
        raise DissectError(
            f"{where} Property Length {length} beyond the packet ({reader.left()} bytes left)"
        )
    out: dict[str, Any] = {}
    end, reader.end = reader.end, reader.offset + length
    try:
        while reader.offset < reader.end:
            ident = reader.varint(f"{where} property identifier")
            known = PROPERTIES.get(ident)
            if known is None:
                raise DissectError(f"{where}: unknown property identifier 0x{ident:02x}")
            name, kind = known
            if kind == _UTF8:
                out[name] = reader.string(name)
            elif kind == _U32:
                out[name] = reader.u32(name)
            elif kind == _U16:
                out[name] = reader.u16(name)
            elif kind == _BYTE:
                out[name] = reader.byte(name)
            elif kind == _PAIR:
                pair = [reader.string("user property name"), reader.string("user property value")]
                pairs = out.setdefault("user_properties", [])
                if len(pairs) < MAX_LIST:
                    pairs.append(pair)
            elif kind == _VARINT:
                out.setdefault("subscription_identifiers", []).append(reader.varint(name))
            elif name == "authentication_data":
                out["authentication_data_length"] = len(reader.binary(name))
            else:
                out[name] = reader.binary(name).hex()
    finally:
        reader.end = end
    return out


def parse_packet(data: bytes, version: int | None) -> dict[str, Any]:
    """The fields of one whole Control Packet (``len(data)`` = :func:`packet_size`), read as
    Protocol Level ``version`` says (None: unknown, read as 3.1.1). Raises
    :class:`soc.errors.DissectError` when the packet is malformed."""
    first = data[0]
    kind, flags = first >> 4, first & 0x0F
    size = packet_size(data[:5])
    if size <= 0 or size != len(data):
        raise DissectError("Remaining Length does not match the packet")
    start = 2 if data[1] < 0x80 else size - _remaining(data)
    reserved = kind == 0 or (kind == 15 and version is not None and version < 5)
    name = "RESERVED" if reserved else PACKET_TYPES[kind]
    fields: dict[str, Any] = {
        "packet_type": name,
        "packet_type_code": kind,
        "flags": flags,
        "remaining_length": size - start,
    }
    anomalies: list[str] = []
    if reserved:
        anomalies.append("reserved_packet_type")
    elif kind == 3:
        fields["dup"] = bool(flags & 8)
        fields["qos"] = (flags >> 1) & 3
        fields["retain"] = bool(flags & 1)
        if fields["qos"] == 3:
            anomalies.append("invalid_qos")
    elif flags != FIXED_FLAGS[kind]:
        anomalies.append("invalid_fixed_header_flags")
    reader = _Reader(data, start, size)
    v5 = version is not None and version >= 5
    if kind in _PARSERS and not reserved:
        _PARSERS[kind](reader, fields, anomalies, v5)
    if reader.left():
        fields["trailing_bytes"] = reader.left()
    if anomalies:
        fields["anomalies"] = anomalies
    return fields


def _remaining(data: bytes) -> int:
    """The Remaining Length of a packet whose Fixed Header is whole."""
    value, multiplier = 0, 1
    for byte in data[1:5]:
        value += (byte & 0x7F) * multiplier
        if byte < 0x80:
            break
        multiplier <<= 7
    return value


def _connect(reader: _Reader, fields: dict[str, Any], anomalies: list[str], v5: bool) -> None:
    protocol_name = reader.string("Protocol Name")
    level = reader.byte("Protocol Level")
    flags = reader.byte("Connect Flags")
    fields["protocol_name"] = protocol_name
    fields["protocol_level"] = level
    v5 = level >= 5
    fields["connect_flags"] = flags
    will, will_qos, will_retain = bool(flags & 4), (flags >> 3) & 3, bool(flags & 0x20)
    fields["clean_start" if v5 else "clean_session"] = bool(flags & 2)
    fields["keep_alive"] = reader.u16("Keep Alive")
    if flags & 1 or (not will and (will_qos or will_retain)):
        anomalies.append("invalid_connect_flags")
    if v5:
        fields["properties"] = _properties(reader, "CONNECT")
    fields["client_id"] = reader.string("Client Identifier")
    if will:
        will_fields: dict[str, Any] = {"qos": will_qos, "retain": will_retain}
        if will_qos == 3:
            anomalies.append("invalid_qos")
        if v5:
            will_fields["properties"] = _properties(reader, "Will")
        will_fields["topic"] = reader.string("Will Topic")
        will_fields["payload_length"] = len(reader.binary("Will Payload"))  # not the payload
        fields["will"] = will_fields
    if flags & 0x80:
        fields["username"] = reader.string("User Name")
    if flags & 0x40:  # its presence and length, never the password
        fields["password_length"] = len(reader.binary("Password"))
    fields["username_given"] = bool(flags & 0x80)
    fields["password_given"] = bool(flags & 0x40)


def _connack(reader: _Reader, fields: dict[str, Any], anomalies: list[str], v5: bool) -> None:
    ack = reader.byte("Connect Acknowledge Flags")
    fields["session_present"] = bool(ack & 1)
    code = reader.byte("Connect Return Code")
    if v5:
        fields["reason_code"] = code
        fields["reason_code_name"] = reason_name(code, 2)
        fields["properties"] = _properties(reader, "CONNACK")
    else:
        fields["return_code"] = code
        fields["return_code_name"] = CONNECT_RETURN_CODES.get(code, f"unknown_{code}")


def _publish(reader: _Reader, fields: dict[str, Any], anomalies: list[str], v5: bool) -> None:
    fields["topic"] = reader.string("Topic Name")
    if fields["qos"]:
        fields["packet_id"] = reader.u16("Packet Identifier")
    if v5:
        fields["properties"] = _properties(reader, "PUBLISH")
    fields.update(payload_fields(reader.rest()))


def _ack(reader: _Reader, fields: dict[str, Any], anomalies: list[str], v5: bool) -> None:
    """PUBACK, PUBREC, PUBREL, PUBCOMP: a Packet Identifier; in v5 a Reason Code (0 when the
    Remaining Length is 2) and Properties (none when it is under 4)."""
    fields["packet_id"] = reader.u16("Packet Identifier")
    if v5:
        code = reader.byte("Reason Code") if reader.left() else 0
        fields["reason_code"] = code
        fields["reason_code_name"] = reason_name(code, fields["packet_type_code"])
        if reader.left():
            fields["properties"] = _properties(reader, fields["packet_type"])


def _subscribe(reader: _Reader, fields: dict[str, Any], anomalies: list[str], v5: bool) -> None:
    fields["packet_id"] = reader.u16("Packet Identifier")
    if v5:
        fields["properties"] = _properties(reader, "SUBSCRIBE")
    subscriptions = []
    count = 0
    while reader.left():
        topic = reader.string("Topic Filter")
        options = reader.byte("Subscription Options")
        count += 1
        if count > MAX_LIST:
            continue
        qos = options & 3
        subscription: dict[str, Any] = {"topic": topic, "qos": qos}
        if v5:
            subscription["no_local"] = bool(options & 4)
            subscription["retain_as_published"] = bool(options & 8)
            subscription["retain_handling"] = (options >> 4) & 3
        invalid = qos == 3 or options & (0xC0 if v5 else 0xFC) or (options >> 4) & 3 == 3
        if invalid and "invalid_subscription_options" not in anomalies:
            anomalies.append("invalid_subscription_options")
        subscriptions.append(subscription)
    fields["subscriptions"] = subscriptions
    fields["topics"] = [s["topic"] for s in subscriptions]
    if not count:
        anomalies.append("no_topic_filter")


def _suback(reader: _Reader, fields: dict[str, Any], anomalies: list[str], v5: bool) -> None:
    fields["packet_id"] = reader.u16("Packet Identifier")
    if v5:
        fields["properties"] = _properties(reader, "SUBACK")
    codes = list(reader.rest()[:MAX_LIST])
    if v5:
        fields["reason_codes"] = codes
        fields["reason_code_names"] = [reason_name(c, 9) for c in codes]
    else:
        fields["return_codes"] = codes
        fields["return_code_names"] = [SUBACK_RETURN_CODES.get(c, f"unknown_{c}") for c in codes]
    fields["granted_qos"] = [c for c in codes if c < 3]


def _unsubscribe(reader: _Reader, fields: dict[str, Any], anomalies: list[str], v5: bool) -> None:
    fields["packet_id"] = reader.u16("Packet Identifier")
    if v5:
        fields["properties"] = _properties(reader, "UNSUBSCRIBE")
    topics: list[str] = []
    while reader.left():
        topic = reader.string("Topic Filter")
        if len(topics) < MAX_LIST:
            topics.append(topic)
    fields["topics"] = topics
    if not topics:
        anomalies.append("no_topic_filter")


def _unsuback(reader: _Reader, fields: dict[str, Any], anomalies: list[str], v5: bool) -> None:
    fields["packet_id"] = reader.u16("Packet Identifier")
    if v5:
        fields["properties"] = _properties(reader, "UNSUBACK")
        codes = list(reader.rest()[:MAX_LIST])
        fields["reason_codes"] = codes
        fields["reason_code_names"] = [reason_name(c, 11) for c in codes]


def _disconnect(reader: _Reader, fields: dict[str, Any], anomalies: list[str], v5: bool) -> None:
    """DISCONNECT and AUTH of v5: a Reason Code (0 when absent) and Properties."""
    if not v5:
        return
    code = reader.byte("Reason Code") if reader.left() else 0
    fields["reason_code"] = code
    fields["reason_code_name"] = reason_name(code, fields["packet_type_code"])
    if reader.left():
        fields["properties"] = _properties(reader, fields["packet_type"])


_PARSERS = {
    1: _connect,
    2: _connack,
    3: _publish,
    4: _ack,
    5: _ack,
    6: _ack,
    7: _ack,
    8: _subscribe,
    9: _suback,
    10: _unsubscribe,
    11: _unsuback,
    14: _disconnect,
    15: _disconnect,
}


# -- sensor observations -------------------------------------------------------------------------


@dataclass(frozen=True)
class ObservationTopic:
    """A topic template whose PUBLISHes are sensor observations: levels separated by ``/``,
    each a literal, ``+`` (any) or ``{name}`` (any, kept as ``name``: ``sensor``, ``zone``,
    ``quantity``), e.g. ``city/{zone}/{sensor}/{quantity}``."""

    levels: tuple[str, ...]

    @classmethod
    def parse(cls, template: str) -> ObservationTopic:
        """A template from the configuration; ValueError when a level is not one of the three
        kinds or ``#`` is used (an observation's topic has a fixed depth)."""
        levels = tuple(template.split("/"))
        for level in levels:
            named = level.startswith("{") and level.endswith("}") and level[1:-1].isidentifier()
            if not named and ("{" in level or "}" in level or "#" in level or (
                "+" in level and level != "+")):  # fmt: skip
                raise ValueError(f"topic template level {level!r}: a name, + or {{name}}")
        return cls(levels)

    def match(self, topic: str) -> dict[str, str] | None:
        """The named levels of ``topic`` when it fits the template."""
        parts = topic.split("/")
        if len(parts) != len(self.levels):
            return None
        names: dict[str, str] = {}
        for level, part in zip(self.levels, parts, strict=True):
            if level.startswith("{"):
                names[level[1:-1]] = part
            elif level != "+" and level != part:
                return None
        return names


#: payload keys read as an observation's identity, when the topic does not name them
_OBSERVATION_KEYS = {"sensor": ("sensor", "sensor_id", "station"), "zone": ("zone",),
                     "quantity": ("quantity",)}  # fmt: skip


def observation(
    templates: tuple[ObservationTopic, ...], topic: str, payload: str
) -> dict[str, Any] | None:
    """The sensor observation a PUBLISH carries, or None: its topic fits a template and its
    payload is a number or a JSON object with a numeric ``value`` (``unit``, ``time`` and the
    identity keys optional). ``sensor_id``, ``zone`` and ``quantity`` come from the topic's named
    levels, else from the payload."""
    for template in templates:
        names = template.match(topic)
        if names is not None:
            break
    else:
        return None
    body: Any
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    if isinstance(body, bool):
        return None
    if isinstance(body, int | float):
        body = {"value": body}
    if not isinstance(body, dict):
        return None
    value = body.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    out: dict[str, Any] = {"topic": topic}
    for name, keys in _OBSERVATION_KEYS.items():
        found = names.get(name) or next((str(body[k]) for k in keys if k in body), None)
        if found is not None:
            out["sensor_id" if name == "sensor" else name] = found
    out["value"] = value
    for key in ("unit", "time", "interval_s"):
        if isinstance(body.get(key), str | int | float) and not isinstance(body.get(key), bool):
            out[key] = body[key]
    return out
