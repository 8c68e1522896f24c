"""MQTT dissector: packets built here from the OASIS specifications (MQTT 3.1.1, MQTT 5.0), so
these tests need no corpus. Framing, every Control Packet type of 3.1.1 and 5.0, properties,
anomalies, malformed packets, pairing, and arbitrary bytes on port 1883."""

from __future__ import annotations

import struct
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.capture import Frame
from collectors.mqtt import (
    MqttStats,
    header_plausible,
    packet_size,
    parse_packet,
    payload_fields,
    plausible,
)
from collectors.pipeline import Collector
from soc.config import CollectSettings
from soc.errors import DissectError

# -- builders (MQTT 5.0 §1.5: data representation) --------------------------------------------


def vbi(value: int) -> bytes:
    """A Variable Byte Integer (§1.5.5)."""
    out = bytearray()
    while True:
        value, byte = divmod(value, 128)
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def utf8(text: str) -> bytes:
    """A UTF-8 Encoded String: a two-byte length, then the bytes (§1.5.4)."""
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def binary(data: bytes) -> bytes:
    """Binary Data: a two-byte length, then the bytes (§1.5.6)."""
    return struct.pack("!H", len(data)) + data


def props(*items: bytes) -> bytes:
    """Properties: their length as a Variable Byte Integer, then each (§2.2.2)."""
    body = b"".join(items)
    return vbi(len(body)) + body


def packet(kind: int, flags: int, body: bytes) -> bytes:
    """A Control Packet: Fixed Header (type, flags, Remaining Length), then the rest."""
    return bytes([kind << 4 | flags]) + vbi(len(body)) + body


def connect(
    client_id: str = "sensor-1",
    level: int = 4,
    *,
    flags: int = 0x02,
    keep_alive: int = 60,
    properties: bytes | None = None,
    tail: bytes = b"",
) -> bytes:
    name = "MQIsdp" if level == 3 else "MQTT"
    body = utf8(name) + bytes([level, flags]) + struct.pack("!H", keep_alive)
    if level == 5:
        body += properties if properties is not None else props()
    return packet(1, 0, body + utf8(client_id) + tail)


def publish(topic: str, payload: bytes, qos: int = 0, packet_id: int = 1, **kw: Any) -> bytes:
    flags = qos << 1 | (8 if kw.get("dup") else 0) | (1 if kw.get("retain") else 0)
    body = utf8(topic) + (struct.pack("!H", packet_id) if qos else b"")
    if kw.get("v5"):
        body += kw.get("properties", props())
    return packet(3, flags, body + payload)


def parse(data: bytes, version: int | None = 4) -> dict[str, Any]:
    assert packet_size(data[:5]) == len(data)
    return parse_packet(data, version)


# -- framing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [  # the examples of MQTT 5.0 §1.5.5, table 1-1
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_is_a_variable_byte_integer(value: int, encoded: bytes) -> None:
    head = b"\x30" + encoded
    assert packet_size(head) == len(head) + value
    assert vbi(value) == encoded


def test_packet_size_asks_for_more_bytes_and_rejects_a_fifth_length_byte() -> None:
    assert packet_size(b"") == 0
    assert packet_size(b"\x30") == 0
    assert packet_size(b"\x30\x80") == 0
    assert packet_size(b"\x30\x80\x80\x80") == 0
    assert packet_size(b"\x30\xff\xff\xff\xff") == -1


def test_plausible_recognises_a_connect_of_each_version() -> None:
    assert plausible(connect(level=3))
    assert plausible(connect(level=4))
    assert plausible(connect(level=5))
    assert not plausible(b"\x10\x0c\x00\x04HTTP\x04\x02\x00\x3c\x00\x00")
    assert not plausible(publish("a/b", b"x" * 20))


def test_header_plausible_checks_type_flags_and_qos() -> None:
    assert header_plausible(b"\x82")  # SUBSCRIBE must carry 0010
    assert not header_plausible(b"\x80")
    assert header_plausible(b"\x3d")  # PUBLISH dup, QoS 2, retain
    assert not header_plausible(b"\x36")  # QoS 3
    assert not header_plausible(b"\x00")  # reserved


# -- CONNECT / CONNACK ---------------------------------------------------------------------------


def test_connect_311_with_user_name_password_and_will() -> None:
    flags = 0x80 | 0x40 | 0x20 | 0x10 | 0x04 | 0x02  # user, password, will retain, QoS 2, will
    tail = utf8("status/sensor-1") + binary(b"offline") + utf8("operator") + binary(b"s3cret!")
    fields = parse(connect(flags=flags, keep_alive=30, tail=tail))
    assert fields["packet_type"] == "CONNECT"
    assert fields["protocol_name"] == "MQTT"
    assert fields["protocol_level"] == 4
    assert fields["client_id"] == "sensor-1"
    assert fields["username"] == "operator"
    assert fields["keep_alive"] == 30
    assert fields["clean_session"] is True
    assert fields["will"] == {
        "qos": 2,
        "retain": True,
        "topic": "status/sensor-1",
        "payload_length": 7,
    }
    assert fields["password_given"] is True
    assert fields["password_length"] == 7
    assert "s3cret" not in repr(fields)  # never the password
    assert "offline" not in repr(fields)  # nor the will payload
    assert "anomalies" not in fields


def test_connect_31_is_mqisdp_level_3() -> None:
    fields = parse(connect("legacy", level=3))
    assert (fields["protocol_name"], fields["protocol_level"]) == ("MQIsdp", 3)
    assert fields["client_id"] == "legacy"


def test_connect_5_properties_by_their_names() -> None:
    properties = props(
        b"\x11" + struct.pack("!I", 3600),  # Session Expiry Interval
        b"\x21" + struct.pack("!H", 20),  # Receive Maximum
        b"\x27" + struct.pack("!I", 65536),  # Maximum Packet Size
        b"\x22" + struct.pack("!H", 10),  # Topic Alias Maximum
        b"\x19\x01",  # Request Response Information
        b"\x17\x00",  # Request Problem Information
        b"\x26" + utf8("site") + utf8("plant-7"),  # User Property
        b"\x26" + utf8("line") + utf8("3"),
        b"\x15" + utf8("SCRAM-SHA-1"),  # Authentication Method
        b"\x16" + binary(b"client-first-message"),  # Authentication Data
    )
    will = props(
        b"\x18" + struct.pack("!I", 5),  # Will Delay Interval
        b"\x01\x01",  # Payload Format Indicator
        b"\x02" + struct.pack("!I", 60),  # Message Expiry Interval
        b"\x03" + utf8("text/plain"),  # Content Type
        b"\x08" + utf8("reply/here"),  # Response Topic
        b"\x09" + binary(b"\x01\x02\xff"),  # Correlation Data
    )
    tail = will + utf8("will/topic") + binary(b"gone")
    fields = parse(connect("v5", level=5, flags=0x06, properties=properties, tail=tail), None)
    assert fields["clean_start"] is True
    assert fields["properties"] == {
        "session_expiry_interval": 3600,
        "receive_maximum": 20,
        "maximum_packet_size": 65536,
        "topic_alias_maximum": 10,
        "request_response_information": 1,
        "request_problem_information": 0,
        "user_properties": [["site", "plant-7"], ["line", "3"]],
        "authentication_method": "SCRAM-SHA-1",
        "authentication_data_length": 20,
    }
    assert fields["will"]["properties"] == {
        "will_delay_interval": 5,
        "payload_format_indicator": 1,
        "message_expiry_interval": 60,
        "content_type": "text/plain",
        "response_topic": "reply/here",
        "correlation_data": "0102ff",
    }
    assert "client-first-message" not in repr(fields)


def test_properties_packed_by_paho_mqtt() -> None:
    """An independent encoder of v5 Properties: paho-mqtt's ``Properties.pack``."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    publish_properties = Properties(PacketTypes.PUBLISH)
    publish_properties.PayloadFormatIndicator = 1
    publish_properties.MessageExpiryInterval = 60
    publish_properties.ContentType = "application/json"
    publish_properties.ResponseTopic = "reply/to"
    publish_properties.CorrelationData = b"\x01\x02"
    publish_properties.UserProperty = [("site", "A"), ("line", "2")]
    publish_properties.TopicAlias = 3
    publish_properties.SubscriptionIdentifier = 77
    data = publish("t", b"1", qos=1, v5=True, properties=publish_properties.pack())
    assert parse(data, 5)["properties"] == {
        "payload_format_indicator": 1,
        "message_expiry_interval": 60,
        "content_type": "application/json",
        "response_topic": "reply/to",
        "correlation_data": "0102",
        "user_properties": [["site", "A"], ["line", "2"]],
        "topic_alias": 3,
        "subscription_identifiers": [77],
    }
    connect_properties = Properties(PacketTypes.CONNECT)
    connect_properties.SessionExpiryInterval = 10
    connect_properties.ReceiveMaximum = 5
    connect_properties.MaximumPacketSize = 1000
    connect_properties.TopicAliasMaximum = 4
    connect_properties.AuthenticationMethod = "m"
    connect_properties.AuthenticationData = b"xyz"
    data = connect(level=5, properties=connect_properties.pack())
    assert parse(data, None)["properties"] == {
        "session_expiry_interval": 10,
        "receive_maximum": 5,
        "maximum_packet_size": 1000,
        "topic_alias_maximum": 4,
        "authentication_method": "m",
        "authentication_data_length": 3,
    }


@pytest.mark.parametrize(
    ("code", "name"),
    [(0, "connection_accepted"), (4, "bad_user_name_or_password"), (5, "not_authorized")],
)
def test_connack_311_return_codes(code: int, name: str) -> None:
    fields = parse(packet(2, 0, bytes([1, code])))
    assert fields["session_present"] is True
    assert (fields["return_code"], fields["return_code_name"]) == (code, name)


def test_connack_5_reason_code_and_properties() -> None:
    body = b"\x00\x86" + props(
        b"\x12" + utf8("auto-1234"),  # Assigned Client Identifier
        b"\x13" + struct.pack("!H", 120),  # Server Keep Alive
        b"\x1f" + utf8("bad credentials"),  # Reason String
        b"\x24\x01\x25\x00\x28\x01\x29\x01\x2a\x00",  # Maximum QoS .. Shared Subscription
        b"\x1a" + utf8("info") + b"\x1c" + utf8("other.example"),
    )
    fields = parse(packet(2, 0, body), 5)
    assert fields["reason_code"] == 0x86
    assert fields["reason_code_name"] == "bad_user_name_or_password"
    assert fields["properties"] == {
        "assigned_client_identifier": "auto-1234",
        "server_keep_alive": 120,
        "reason_string": "bad credentials",
        "maximum_qos": 1,
        "retain_available": 0,
        "wildcard_subscription_available": 1,
        "subscription_identifier_available": 1,
        "shared_subscription_available": 0,
        "response_information": "info",
        "server_reference": "other.example",
    }


# -- PUBLISH and its acknowledgements ------------------------------------------------------------


def test_publish_311_fields_and_text_payload() -> None:
    fields = parse(publish("plant/boiler/temp", b"21.5", qos=1, packet_id=7, retain=True))
    assert fields["topic"] == "plant/boiler/temp"
    assert (fields["qos"], fields["retain"], fields["dup"]) == (1, True, False)
    assert fields["packet_id"] == 7
    assert fields["payload"] == "21.5"
    assert fields["payload_length"] == 4


def test_publish_qos0_has_no_packet_id_and_binary_payload_is_hex() -> None:
    fields = parse(publish("raw", b"\x00\xff\x10"))
    assert "packet_id" not in fields
    assert fields["payload_hex"] == "00ff10"
    assert "payload" not in fields


def test_payload_is_truncated_to_256_bytes() -> None:
    fields = payload_fields("é".encode() * 200)  # 400 bytes: cut inside a character
    assert fields["payload_length"] == 400
    assert fields["payload_truncated"] is True
    assert fields["payload"] == "é" * 128
    binary_fields = payload_fields(bytes(range(256)) * 2)
    assert binary_fields["payload_hex"] == bytes(range(256)).hex()


def test_publish_5_properties() -> None:
    properties = props(
        b"\x23" + struct.pack("!H", 5),  # Topic Alias
        b"\x0b" + vbi(300),  # Subscription Identifier
        b"\x03" + utf8("application/json"),
    )
    fields = parse(publish("t", b'{"v":1}', qos=2, packet_id=9, v5=True, properties=properties), 5)
    assert fields["properties"] == {
        "topic_alias": 5,
        "subscription_identifiers": [300],
        "content_type": "application/json",
    }
    assert fields["payload"] == '{"v":1}'


@pytest.mark.parametrize(("kind", "flags"), [(4, 0), (5, 0), (6, 2), (7, 0)])
def test_pub_acknowledgements_311(kind: int, flags: int) -> None:
    fields = parse(packet(kind, flags, b"\x00\x2a"))
    assert fields["packet_id"] == 42
    assert "reason_code" not in fields
    assert "anomalies" not in fields


@pytest.mark.parametrize(("kind", "flags"), [(4, 0), (5, 0), (6, 2), (7, 0)])
def test_pub_acknowledgements_5(kind: int, flags: int) -> None:
    short = parse(packet(kind, flags, b"\x00\x2a"), 5)  # Remaining Length 2: reason 0
    assert (short["reason_code"], short["reason_code_name"]) == (0, "success")
    full = parse(packet(kind, flags, b"\x00\x2a\x92" + props(b"\x1f" + utf8("gone"))), 5)
    assert full["reason_code_name"] == "packet_identifier_not_found"
    assert full["properties"] == {"reason_string": "gone"}


# -- SUBSCRIBE, UNSUBSCRIBE and their acknowledgements -------------------------------------------


def test_subscribe_311_topics_and_qos() -> None:
    body = b"\x00\x01" + utf8("sensors/#") + b"\x00" + utf8("cmd/+") + b"\x02"
    fields = parse(packet(8, 2, body))
    assert fields["packet_id"] == 1
    assert fields["subscriptions"] == [
        {"topic": "sensors/#", "qos": 0},
        {"topic": "cmd/+", "qos": 2},
    ]
    assert fields["topics"] == ["sensors/#", "cmd/+"]


def test_subscribe_5_subscription_options() -> None:
    options = 0x01 | 0x04 | 0x08 | 0x20  # QoS 1, No Local, Retain As Published, handling 2
    body = b"\x00\x03" + props(b"\x0b" + vbi(4)) + utf8("a/b") + bytes([options])
    fields = parse(packet(8, 2, body), 5)
    assert fields["properties"] == {"subscription_identifiers": [4]}
    assert fields["subscriptions"] == [
        {
            "topic": "a/b",
            "qos": 1,
            "no_local": True,
            "retain_as_published": True,
            "retain_handling": 2,
        }
    ]


def test_suback_311_granted_qos_and_failure() -> None:
    fields = parse(packet(9, 0, b"\x00\x01\x00\x02\x80"))
    assert fields["return_codes"] == [0, 2, 0x80]
    assert fields["return_code_names"] == ["granted_qos_0", "granted_qos_2", "failure"]
    assert fields["granted_qos"] == [0, 2]


def test_suback_5_reason_codes() -> None:
    fields = parse(packet(9, 0, b"\x00\x01" + props() + b"\x01\x87"), 5)
    assert fields["reason_codes"] == [1, 0x87]
    assert fields["reason_code_names"] == ["granted_qos_1", "not_authorized"]


def test_unsubscribe_and_unsuback() -> None:
    fields = parse(packet(10, 2, b"\x00\x05" + utf8("a/+") + utf8("b/#")))
    assert (fields["packet_id"], fields["topics"]) == (5, ["a/+", "b/#"])
    v5 = parse(packet(10, 2, b"\x00\x05" + props() + utf8("a/+")), 5)
    assert v5["topics"] == ["a/+"]
    assert parse(packet(11, 0, b"\x00\x05"))["packet_id"] == 5
    ack = parse(packet(11, 0, b"\x00\x05" + props() + b"\x00\x11"), 5)
    assert ack["reason_code_names"] == ["success", "no_subscription_existed"]


# -- PINGREQ, PINGRESP, DISCONNECT, AUTH ---------------------------------------------------------


@pytest.mark.parametrize(("kind", "name"), [(12, "PINGREQ"), (13, "PINGRESP"), (14, "DISCONNECT")])
def test_empty_packets_311(kind: int, name: str) -> None:
    fields = parse(packet(kind, 0, b""))
    assert fields["packet_type"] == name
    assert fields["remaining_length"] == 0


def test_disconnect_and_auth_5() -> None:
    fields = parse(packet(14, 0, b""), 5)
    assert fields["reason_code_name"] == "normal_disconnection"
    body = b"\x8e" + props(b"\x11" + struct.pack("!I", 0))
    fields = parse(packet(14, 0, body), 5)
    assert fields["reason_code_name"] == "session_taken_over"
    assert fields["properties"] == {"session_expiry_interval": 0}
    auth = parse(packet(15, 0, b"\x18" + props(b"\x15" + utf8("SCRAM"))), 5)
    assert auth["packet_type"] == "AUTH"
    assert auth["reason_code_name"] == "continue_authentication"
    assert auth["properties"] == {"authentication_method": "SCRAM"}


# -- anomalies and malformed packets -------------------------------------------------------------


def test_reserved_types_invalid_flags_and_qos_are_anomalies() -> None:
    assert parse(packet(0, 0, b""))["anomalies"] == ["reserved_packet_type"]
    assert parse(packet(15, 0, b""), 4)["anomalies"] == ["reserved_packet_type"]
    assert parse(packet(15, 0, b""), 4)["packet_type"] == "RESERVED"
    assert "anomalies" not in parse(packet(15, 0, b""), 5)
    assert parse(packet(8, 0, b"\x00\x01" + utf8("a") + b"\x00"))["anomalies"] == [
        "invalid_fixed_header_flags"
    ]
    assert parse(packet(3, 6, utf8("t") + b"\x00\x01"))["anomalies"] == ["invalid_qos"]
    assert parse(connect(flags=0x03))["anomalies"] == ["invalid_connect_flags"]


@pytest.mark.parametrize(
    "data",
    [
        packet(1, 0, utf8("MQTT") + b"\x04\x02"),  # CONNECT cut inside Keep Alive
        packet(3, 2, utf8("topic")),  # QoS 1 PUBLISH without its Packet Identifier
        packet(3, 0, b"\x00\x10abc"),  # Topic Name longer than the packet
        packet(8, 2, b"\x00\x01" + utf8("a")),  # SUBSCRIBE without Subscription Options
        packet(2, 0, b"\x00"),  # CONNACK cut
    ],
)
def test_truncated_fields_raise(data: bytes) -> None:
    with pytest.raises(DissectError):
        parse(data)


def test_property_length_beyond_the_packet_raises() -> None:
    data = packet(2, 0, b"\x00\x00\x7f\x22\x00\x0a")  # Property Length 127, 3 bytes left
    with pytest.raises(DissectError, match="Property Length"):
        parse(data, 5)


def test_unknown_property_raises() -> None:
    with pytest.raises(DissectError, match="unknown property"):
        parse(packet(14, 0, b"\x00" + props(b"\x7f\x00")), 5)


# -- through the pipeline ------------------------------------------------------------------------

_CLIENT, _SERVER = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


def _frame(number: int, ts_us: int, to_server: bool, seq: int, ack: int, flags: int,
           payload: bytes, port: int = 1883) -> Frame:  # fmt: skip
    src, dst = (_CLIENT, _SERVER) if to_server else (_SERVER, _CLIENT)
    sport, dport = (40000, port) if to_server else (port, 40000)
    ip = bytes([0x45, 0]) + (40 + len(payload)).to_bytes(2, "big") + b"\x00\x01\x40\x00\x40\x06"
    ip += b"\x00\x00" + src + dst
    tcp = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + seq.to_bytes(4, "big")
    tcp += ack.to_bytes(4, "big") + bytes([0x50, flags]) + b"\xff\xff\x00\x00\x00\x00"
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    return Frame(number, ts_us, 1, eth + ip + tcp + payload)


def run(
    segments: list[tuple[bool, bytes]],
    *,
    handshake: bool = True,
    settings_: CollectSettings | None = None,
) -> tuple[list[dict[str, Any]], MqttStats]:
    """The events of one TCP connection on port 1883 carrying ``segments`` (client first)."""
    collector = Collector(settings_ or CollectSettings())
    seq = {True: 1000, False: 5000}
    ts = 1_700_000_000_000_000
    number = 0
    frames = []
    if handshake:
        frames.append(_frame(1, ts, True, 999, 0, 0x02, b""))
        frames.append(_frame(2, ts + 10, False, 4999, 1000, 0x12, b""))
        frames.append(_frame(3, ts + 20, True, 1000, 5000, 0x10, b""))
        number = 3
    for to_server, data in segments:
        number += 1
        ts += 1000
        frames.append(_frame(number, ts, to_server, seq[to_server], seq[not to_server], 0x18, data))
        seq[to_server] += len(data)
    for frame in frames:
        collector.frame(frame)
    collector.finish()
    events = [e for e in collector.take() if e["event"]["dataset"] == "ics.mqtt"]
    return events, collector.stats.mqtt


def test_a_311_session_pairs_acknowledgements_with_requests() -> None:
    events, stats = run(
        [
            (True, connect()),
            (False, packet(2, 0, b"\x00\x00")),
            (True, packet(8, 2, b"\x00\x01" + utf8("plant/#") + b"\x01")),
            (False, packet(9, 0, b"\x00\x01\x01")),
            (True, publish("plant/temp", b"20", qos=1, packet_id=2)),
            (False, packet(4, 0, b"\x00\x02")),
            (True, publish("plant/flow", b"3", qos=2, packet_id=3)),
            (False, packet(5, 0, b"\x00\x03")),
            (True, packet(6, 2, b"\x00\x03")),
            (False, packet(7, 0, b"\x00\x03")),
            (True, packet(10, 2, b"\x00\x04" + utf8("plant/#"))),
            (False, packet(11, 0, b"\x00\x04")),
            (True, packet(12, 0, b"")),
            (False, packet(13, 0, b"")),
            (True, packet(14, 0, b"")),
        ]
    )
    actions = [e["event"]["action"] for e in events]
    assert actions == [
        "connect", "connack", "subscribe", "suback", "publish", "puback", "publish", "pubrec",
        "pubrel", "pubcomp", "unsubscribe", "unsuback", "pingreq", "pingresp", "disconnect",
    ]  # fmt: skip
    for request, ack in zip(events[0:14:2], events[1:14:2], strict=True):
        assert ack["mqtt"]["request_event_id"] == request["event"]["id"]
        assert ack["mqtt"]["response_time_us"] == 1000
        assert ack["event"]["outcome"] == "success"
        assert request["event"]["outcome"] == "unknown"
    assert all(e["mqtt"]["protocol_version"] == "3.1.1" for e in events)
    assert all("anomalies" not in e["mqtt"] for e in events)
    assert events[0]["event"]["type"] == ["protocol", "connection"]
    assert events[4]["event"]["type"] == ["protocol", "access"]
    assert events[5]["event"]["type"] == ["protocol", "info"]
    assert stats.messages == 15
    assert stats.parse_errors == 0
    assert stats.unanswered == 0


def test_version_5_from_connect_is_used_for_both_directions() -> None:
    events, _ = run(
        [
            (True, connect(level=5)),
            (False, packet(2, 0, b"\x00\x00" + props(b"\x22\x00\x0a"))),
            (True, publish("t", b"x", qos=1, packet_id=1, v5=True)),
            (False, packet(4, 0, b"\x00\x01\x10")),
            (True, packet(14, 0, b"\x04")),
        ]
    )
    assert [e["mqtt"]["protocol_version"] for e in events] == ["5.0"] * 5
    assert events[1]["mqtt"]["properties"] == {"topic_alias_maximum": 10}
    assert events[3]["mqtt"]["reason_code_name"] == "no_matching_subscribers"
    assert events[3]["event"]["outcome"] == "success"  # under 0x80: a success
    assert events[4]["mqtt"]["reason_code_name"] == "disconnect_with_will_message"


def test_v5_topic_alias_gives_the_topic_name() -> None:
    alias = props(b"\x23" + struct.pack("!H", 2))
    events, _ = run(
        [
            (True, connect(level=5)),
            (True, publish("plant/boiler/temp", b"20", v5=True, properties=alias)),
            (True, publish("", b"21", v5=True, properties=alias)),
            (True, publish("", b"22", v5=True, properties=props(b"\x23\x00\x09"))),
        ]
    )
    topics = [e["mqtt"]["topic"] for e in events if e["event"]["action"] == "publish"]
    assert topics == ["plant/boiler/temp", "plant/boiler/temp", ""]
    assert events[2]["mqtt"]["topic_from_alias"] is True
    assert events[3]["mqtt"]["anomalies"] == ["unknown_topic_alias"]


def test_refused_connack_is_a_failure() -> None:
    events, _ = run([(True, connect()), (False, packet(2, 0, b"\x00\x05"))])
    assert events[1]["event"]["outcome"] == "failure"
    assert events[1]["mqtt"]["return_code_name"] == "not_authorized"


def test_packets_split_and_coalesced_across_segments() -> None:
    data = connect() + publish("a", b"x" * 300) + publish("b", b"y")
    events, stats = run([(True, data[:3]), (True, data[3:200]), (True, data[200:])])
    assert [e["event"]["action"] for e in events] == [
        "connect", "publish", "publish", "unanswered_request"
    ]  # fmt: skip
    assert events[1]["mqtt"]["payload_length"] == 300
    assert stats.parse_errors == 0


def test_a_large_packet_in_many_segments_is_collected_without_a_copy_per_segment() -> None:
    big = publish("bulk", bytes(range(256)) * 8192, qos=1, packet_id=3)  # 2 MiB
    segments = [(True, connect())] + [(True, big[i : i + 1448]) for i in range(0, len(big), 1448)]
    segments.append((True, packet(12, 0, b"")))
    start = time.perf_counter()
    events, stats = run(segments)
    assert time.perf_counter() - start < 10
    packets = [e for e in events if e["event"]["action"] in ("publish", "pingreq")]
    assert [e["mqtt"].get("payload_length") for e in packets] == [2 * 1024 * 1024, None]
    assert packets[0]["mqtt"]["frame"] == 4 + (len(big) + 1447) // 1448
    assert stats.parse_errors == 0


def test_publish_before_connect_is_flagged_when_the_start_was_seen() -> None:
    events, stats = run(
        [
            (False, packet(2, 0, b"\x00\x00")),  # a CONNACK first: the start was captured
            (True, publish("t", b"x")),
        ]
    )
    assert events[0]["mqtt"]["anomalies"] == ["missing_connect"]
    assert events[1]["mqtt"]["anomalies"] == ["unintroduced_message"]
    assert stats.anomalies == 2


def test_a_capture_from_mid_connection_is_not_flagged() -> None:
    events, stats = run(
        [(True, publish("t", b"x", qos=1, packet_id=9)), (False, packet(4, 0, b"\x00\x09"))],
        handshake=False,
    )
    assert [e["event"]["action"] for e in events] == ["publish", "puback"]
    assert all("anomalies" not in e["mqtt"] for e in events)
    assert events[0]["mqtt"]["protocol_version"] is None
    assert stats.anomalies == 0


def test_mid_payload_start_resynchronises() -> None:
    tail_of_publish = b"\xaa\x17\xfe" * 10
    events, stats = run(
        [(True, tail_of_publish + publish("t", b"1") + publish("u", b"2"))], handshake=False
    )
    assert [e["mqtt"].get("topic") for e in events] == ["t", "u"]
    assert stats.resyncs == 1


def test_resynchronising_on_many_small_packets_is_fast() -> None:
    """Out of step, every candidate start checks a bounded chain of packets, not the buffer."""
    data = b"\x00" + b"\xc0\x00" * 30_000 + b"\x00"  # PINGREQs between two reserved bytes
    start = time.perf_counter()
    events, stats = run([(True, data)], handshake=False)
    assert time.perf_counter() - start < 5
    assert stats.resyncs == 1
    assert sum(e["event"]["action"] == "pingreq" for e in events) == 30_000


def test_double_connect_and_reserved_type_are_flagged() -> None:
    events, stats = run([(True, connect()), (True, connect()), (True, packet(0, 0, b""))])
    assert events[1]["mqtt"]["anomalies"] == ["double_connect"]
    assert events[2]["mqtt"]["anomalies"] == ["reserved_packet_type"]
    assert events[2]["event"]["action"] == "reserved"
    assert stats.anomalies == 2


def test_malformed_packet_gives_a_flagged_event_and_a_parse_error() -> None:
    bad = packet(2, 0, b"\x00\x00\x7f\x22\x00\x0a")  # v5 Property Length beyond the packet
    events, stats = run([(True, connect(level=5)), (False, bad), (True, packet(12, 0, b""))])
    assert [e["event"]["action"] for e in events] == ["connect", "connack", "pingreq"]
    connack = events[1]
    assert connack["mqtt"]["malformed"] is True
    assert connack["mqtt"]["anomalies"] == ["malformed"]
    assert connack["mqtt"]["raw"] == bad.hex()
    assert connack["event"]["outcome"] == "failure"
    assert stats.malformed == 1
    assert stats.parse_errors == 1
    assert "frame 5" in stats.errors[0][0]


def test_remaining_length_over_four_bytes_is_a_violation() -> None:
    events, stats = run([(True, connect()), (True, b"\x30\xff\xff\xff\xff\x01abc")])
    events = [e for e in events if e["event"]["action"] != "unanswered_request"]
    assert events[-1]["event"]["action"] == "protocol_violation"
    assert "remaining_length_over_4_bytes" in events[-1]["mqtt"]["anomalies"]
    assert stats.violations == 1


def test_a_packet_over_16_mib_is_not_followed() -> None:
    events, stats = run([(True, connect()), (True, b"\x30\xff\xff\xff\x7f" + b"x" * 100)])
    violation = next(e for e in events if e["event"]["action"] == "protocol_violation")
    assert "packet_too_large" in violation["mqtt"]["anomalies"]
    assert violation["mqtt"]["packet_length"] == 268_435_460
    assert stats.violations == 1


def test_a_packet_cut_by_the_end_of_the_flow_is_reported() -> None:
    events, stats = run([(True, connect()), (True, publish("t", b"x" * 100)[:50])])
    events = [e for e in events if e["event"]["action"] != "unanswered_request"]
    assert events[-1]["mqtt"]["anomalies"] == ["truncated"]
    assert events[-1]["mqtt"]["packet_length"] == 105
    assert stats.truncated == 1


def test_unanswered_requests_are_reported_at_the_end() -> None:
    events, stats = run([(True, connect()), (True, publish("t", b"x", qos=1, packet_id=4))])
    unanswered = [e for e in events if e["event"]["action"] == "unanswered_request"]
    assert [e["mqtt"]["request_packet_type"] for e in unanswered] == ["CONNECT", "PUBLISH"]
    assert unanswered[1]["mqtt"]["packet_id"] == 4
    assert stats.unanswered == 2


def test_an_orphan_acknowledgement_is_flagged() -> None:
    events, stats = run([(True, connect()), (False, packet(4, 0, b"\x00\x63"))])
    assert events[1]["mqtt"]["orphan"] is True
    assert stats.orphans == 1


def test_summary_counts_packet_types() -> None:
    _, stats = run([(True, connect()), (True, packet(12, 0, b"")), (True, packet(12, 0, b""))])
    assert stats.packet_types == {"CONNECT": 1, "PINGREQ": 2}
    assert all(isinstance(v, int) for v in stats.summary().values())


# -- robustness ----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(min_size=1, max_size=200)), max_size=20))
def test_arbitrary_payloads_on_port_1883_never_crash(segments: list[tuple[bool, bytes]]) -> None:
    events, stats = run(segments)
    for event in events:
        assert event["event"]["dataset"] == "ics.mqtt"
        assert "packet_type" in event["mqtt"]
    assert stats.messages <= sum(len(d) for _, d in segments)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=2, max_size=120), st.sampled_from([None, 3, 4, 5]))
def test_parse_packet_raises_only_dissect_errors(body: bytes, version: int | None) -> None:
    data = bytes([body[0]]) + vbi(len(body) - 1) + body[1:]
    try:
        fields = parse_packet(data, version)
    except DissectError:
        return
    assert fields["remaining_length"] == len(body) - 1
