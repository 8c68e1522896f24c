"""MQTT dissector against other tools' outputs on the corpus captures (skipped without the corpus).

- **tshark** (``*.pcap.tshark.csv``, tshark 4.0.17): every MQTT message, column by column (type,
  Remaining Length, header flags, DUP/QoS/RETAIN, CONNECT fields, CONNACK codes, Packet
  Identifier, topics, SUBSCRIBE QoS, SUBACK codes, PUBLISH payload).
- **Suricata** (``suricata-verify/tests/mqtt*/test.yaml``): its eve ``mqtt`` records and MQTT
  anomalies.
- **Arkime** (``arkime/tests/pcap/mqtt_synthetic.test``): its per-session MQTT fields.

Every difference is explained by a named test below; nothing expected comes from our output.
"""

from __future__ import annotations

import csv
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from collectors.pipeline import Collector
from collectors.run import collect_files
from detectors.runner import ListSink
from soc.config import CollectSettings
from tests.conftest import CORPUS, corpus_path

csv.field_size_limit(1 << 30)

#: MQTT captures with a tshark field dump beside them
TSHARK_CAPTURES = [
    "arkime/tests/pcap/mqtt_synthetic.pcap",
    "ndpi/pcap/mqtt.pcap",
    "suricata-verify/tests/mqtt-connect-rules-2/mqtt5_pub_jpeg_connack134.pcap",
    "suricata-verify/tests/mqtt-connect-rules/mqtt5_pub_jpeg.pcap",
    "suricata-verify/tests/mqtt-events-missing-connect/input.pcap",
    "suricata-verify/tests/mqtt-events-unintroduced/input.pcap",
    "suricata-verify/tests/mqtt-limit-2/input.pcap",
    "suricata-verify/tests/mqtt-ping/input.pcap",
    "suricata-verify/tests/mqtt-pub-rules/mqtt5_pub_jpeg.pcap",
    "suricata-verify/tests/mqtt31-pub-qos1/input.pcap",
    "suricata-verify/tests/mqtt31-pub-qos2/input.pcap",
    "suricata-verify/tests/mqtt31-pub-userpass-auto-clientid/input.pcap",
    "suricata-verify/tests/mqtt31-pub-userpass/input.pcap",
    "suricata-verify/tests/mqtt31-unsub-qos1/input.pcap",
    "suricata-verify/tests/mqtt31-unsub-qos2/input.pcap",
    "suricata-verify/tests/mqtt31-unsub-userpass/input.pcap",
    "suricata-verify/tests/mqtt311-pub-qos2/input.pcap",
    "suricata-verify/tests/mqtt311-pub-userpass-auto-clientid/input.pcap",
    "suricata-verify/tests/mqtt311-pub-userpass/input.pcap",
    "suricata-verify/tests/mqtt311-sub-userpass/input.pcap",
    "suricata-verify/tests/mqtt311-unsub-qos1/input.pcap",
    "suricata-verify/tests/mqtt311-unsub-qos2/input.pcap",
    "suricata-verify/tests/mqtt311-unsub-userpass/input.pcap",
    "suricata-verify/tests/mqtt5-excessiveproplen/input.pcap",
    "suricata-verify/tests/mqtt5-pub-mosquittoprops/input.pcap",
    "suricata-verify/tests/mqtt5-pub-qos1/input.pcap",
    "suricata-verify/tests/mqtt5-pub-userpass-auto-clientid/input.pcap",
    "suricata-verify/tests/mqtt5-pub-userpass/input.pcap",
    "suricata-verify/tests/mqtt5-sub-customauth/input.pcap",
    "suricata-verify/tests/mqtt5-sub-userpass/input.pcap",
    "suricata-verify/tests/mqtt5-unsub-qos2/input.pcap",
    "suricata-verify/tests/mqtt5-unsub-userpass/input.pcap",
]

#: Suricata tests whose expectations concern MQTT records or MQTT anomalies (not those that
#: check only alerts of rules or Suricata's frames: mqtt-connect-rules-2 is below, as a rule)
SURICATA_TESTS = [
    "mqtt-binary-message",
    "mqtt-connect-rules",
    "mqtt-events-missing-connect",
    "mqtt-events-unintroduced",
    "mqtt-limit-1",
    "mqtt-limit-2",
    "mqtt-limit-3",
    "mqtt-limit-log-1",
    "mqtt-limit-log-2",
    "mqtt-limit-log-3",  # (mqtt-limit-log-fail: Suricata's start-up error on a bad option)
    "mqtt-ping",
    "mqtt-pub-rules",
    "mqtt-sub-rules",
    "mqtt-unsub-rules",
    "mqtt31-pub-qos1",
    "mqtt31-pub-qos2",
    "mqtt31-pub-userpass",
    "mqtt31-pub-userpass-auto-clientid",
    "mqtt31-unsub-qos1",
    "mqtt31-unsub-qos2",
    "mqtt31-unsub-userpass",
    "mqtt311-pub-qos2",
    "mqtt311-pub-userpass",
    "mqtt311-pub-userpass-auto-clientid",
    "mqtt311-sub-userpass",
    "mqtt311-unsub-qos1",
    "mqtt311-unsub-qos2",
    "mqtt311-unsub-userpass",
    "mqtt5-excessiveproplen",
    "mqtt5-pub-mosquittoprops",
    "mqtt5-pub-qos1",
    "mqtt5-pub-userpass",
    "mqtt5-pub-userpass-auto-clientid",
    "mqtt5-sub-customauth",
    "mqtt5-sub-userpass",
    "mqtt5-unsub-qos2",
    "mqtt5-unsub-userpass",
]


@functools.cache
def _events(path: Path) -> tuple[dict[str, Any], ...]:
    sink = ListSink()
    collect_files([path], Collector(CollectSettings()), sink)
    return tuple(e for e in sink.events if e["event"]["dataset"] == "ics.mqtt")


def _packets(path: Path) -> list[dict[str, Any]]:
    """Our events of MQTT Control Packets (not unanswered requests nor violations)."""
    return [e for e in _events(path) if "packet_type_code" in e["mqtt"]]


# -- tshark ---------------------------------------------------------------------------------------

COLUMNS = (
    "mqtt.msgtype", "mqtt.len", "mqtt.hdrflags", "mqtt.dupflag", "mqtt.qos", "mqtt.retain",
    "mqtt.protoname", "mqtt.ver", "mqtt.conflags", "mqtt.kalive", "mqtt.clientid",
    "mqtt.username", "mqtt.willtopic", "mqtt.conack.val", "mqtt.connack.reason_code",
    "mqtt.msgid", "mqtt.topic", "mqtt.sub.qos", "mqtt.suback.qos", "mqtt.msg",
)  # fmt: skip
_CONNECT_COLUMNS = {
    "mqtt.protoname": "protocol_name",
    "mqtt.ver": "protocol_level",
    "mqtt.kalive": "keep_alive",
    "mqtt.clientid": "client_id",
    "mqtt.username": "username",
}


def _tshark_values(column: str, m: dict[str, Any]) -> list[str]:
    """What tshark's ``column`` holds for one of our packets, in tshark's notation."""
    kind, flags = m["packet_type_code"], m["flags"]
    if column == "mqtt.msgtype":
        return [str(kind)]
    if column == "mqtt.len":
        return [str(m["remaining_length"])]
    if column == "mqtt.hdrflags":
        return [f"0x{kind << 4 | flags:02x}"]
    # DUP and QoS: of PUBLISH, and in 3.1 also of PUBREL, SUBSCRIBE, UNSUBSCRIBE (MQTT 3.1 §2)
    if column in ("mqtt.dupflag", "mqtt.qos") and (
        kind == 3 or (m.get("protocol_version") == "3.1" and kind in (6, 8, 10))
    ):
        return [str(flags >> 3 & 1)] if column == "mqtt.dupflag" else [str(flags >> 1 & 3)]
    if column == "mqtt.retain":
        return [str(flags & 1)] if kind == 3 else []
    if kind == 1:
        if column in _CONNECT_COLUMNS:
            key = _CONNECT_COLUMNS[column]
            return [str(m[key])] if key in m else []
        if column == "mqtt.conflags":
            return [f"0x{m['connect_flags']:02x}"] if "connect_flags" in m else []
        if column == "mqtt.willtopic":
            return [m["will"]["topic"]] if "will" in m else []
    if kind == 2 and column == "mqtt.conack.val" and "return_code" in m:
        return [str(m["return_code"])]
    if kind == 2 and column == "mqtt.connack.reason_code" and "reason_code" in m:
        return [str(m["reason_code"])]
    if column == "mqtt.msgid":
        return [str(m["packet_id"])] if "packet_id" in m else []
    if column == "mqtt.topic":
        return [m["topic"]] if kind == 3 else list(m.get("topics", []))
    if column == "mqtt.sub.qos":
        return [str(s["qos"]) for s in m.get("subscriptions", [])]
    if column == "mqtt.suback.qos" and kind == 9:
        return [str(c) for c in m.get("return_codes", m.get("reason_codes", []))]
    if column == "mqtt.msg" and kind == 3:
        return [m["payload"].encode().hex() if "payload" in m else m.get("payload_hex", "")]
    return []


def _same(column: str, theirs: str, ours: str) -> bool:
    if column != "mqtt.msg":
        return theirs == ours
    # our payload is its first 256 bytes: a prefix of tshark's (hex: 512 characters)
    mine, full = ours.split(";"), theirs.split(";")
    return len(mine) == len(full) and all(f.startswith(o) for f, o in zip(full, mine, strict=True))


Difference = tuple[str, int, str, str, str]  # capture, frame, column, tshark's, ours


def _tshark_comparison(relative: str) -> tuple[int, int, list[Difference]]:
    """(messages compared, messages agreeing in every column, the differences)."""
    path = corpus_path(relative)
    by_frame: dict[int, list[dict[str, Any]]] = {}
    for event in _packets(path):
        by_frame.setdefault(event["mqtt"]["frame"], []).append(event["mqtt"])
    compared = agreeing = 0
    differences: list[Difference] = []
    with Path(f"{path}.tshark.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["mqtt.msgtype"]]
    for row in rows:
        frame = int(row["frame.number"])
        ours = by_frame.pop(frame, [])
        count = len(row["mqtt.msgtype"].split(";"))
        compared += count
        before = len(differences)
        for column in COLUMNS:
            mine = ";".join(v for m in ours for v in _tshark_values(column, m))
            if not _same(column, row[column], mine):
                differences.append((relative, frame, column, row[column], mine))
        agreeing += count if len(differences) == before else 0
    for frame, extra in by_frame.items():  # packets tshark did not show
        differences.append((relative, frame, "mqtt.msgtype", "", str(len(extra))))
    return compared, agreeing, differences


def _v5_subscription_qos(difference: Difference) -> bool:
    """tshark 4.0 shows a v5 SUBSCRIBE's Subscription Options and a v5 SUBACK's Reason Codes
    as ``mqtt.subscription_options`` / ``mqtt.reason_code`` (not in the dump), not as
    ``mqtt.sub.qos`` / ``mqtt.suback.qos``."""
    _, _, column, theirs, _ = difference
    return column in ("mqtt.sub.qos", "mqtt.suback.qos") and theirs == ""


def _topic_alias_repeats_the_topic(difference: Difference) -> bool:
    """tshark adds the Topic Name a second time to ``mqtt.topic`` when a v5 PUBLISH carries a
    Topic Alias property (the alias mapping; its tree shows the topic once)."""
    _, _, column, theirs, ours = difference
    return column == "mqtt.topic" and theirs == f"{ours};{ours}"


def _tshark_unknown_version(difference: Difference) -> bool:
    """With no CONNECT in the capture tshark reads a CONNACK's code as a v5 Reason Code and
    shows no SUBACK codes; we read them as 3.1.1 (the same values)."""
    relative, _, column, theirs, ours = difference
    if "missing-connect" not in relative:
        return False
    return (column, theirs, ours) in (
        ("mqtt.conack.val", "", "0"),
        ("mqtt.connack.reason_code", "0", ""),
    ) or (column == "mqtt.suback.qos" and theirs == "")


_TSHARK_DIFFERENCES: dict[str, Callable[[Difference], bool]] = {
    "tshark_unknown_version": _tshark_unknown_version,
    "v5_subscription_qos": _v5_subscription_qos,
    "topic_alias_repeats_the_topic": _topic_alias_repeats_the_topic,
}


def _explained(difference: Difference) -> str | None:
    return next((n for n, p in _TSHARK_DIFFERENCES.items() if p(difference)), None)


@pytest.mark.parametrize("relative", TSHARK_CAPTURES)
def test_tshark_agrees_message_by_message(relative: str) -> None:
    compared, _, differences = _tshark_comparison(relative)
    assert compared > 0
    unexplained = [d for d in differences if _explained(d) is None]
    assert unexplained == []


@pytest.mark.skipif(not CORPUS.exists(), reason="external corpus not present: ../shared/corpus")
def test_tshark_agreement_figures() -> None:
    """Over the 32 captures: 218 messages, 206 agreeing in every column; the 12 others differ
    only as the named tests below say."""
    totals = [_tshark_comparison(r) for r in TSHARK_CAPTURES]
    compared = sum(t[0] for t in totals)
    agreeing = sum(t[1] for t in totals)
    by_reason: dict[str | None, int] = {}
    for _, _, differences in totals:
        for difference in differences:
            reason = _explained(difference)
            by_reason[reason] = by_reason.get(reason, 0) + 1
    assert (compared, agreeing) == (218, 207)
    assert by_reason == {
        "v5_subscription_qos": 7,
        "topic_alias_repeats_the_topic": 1,
        "tshark_unknown_version": 4,
    }


def test_tshark_shows_no_sub_qos_for_v5_subscriptions() -> None:
    _, _, differences = _tshark_comparison("suricata-verify/tests/mqtt5-sub-userpass/input.pcap")
    assert [(d[1], d[2], d[4]) for d in differences] == [
        (8, "mqtt.sub.qos", "0;0"),
        (9, "mqtt.suback.qos", "0;0"),
    ]
    path = corpus_path("suricata-verify/tests/mqtt5-sub-userpass/input.pcap")
    suback = next(e for e in _packets(path) if e["event"]["action"] == "suback")
    assert suback["mqtt"]["reason_code_names"] == ["granted_qos_0", "granted_qos_0"]


def test_tshark_repeats_the_topic_of_a_v5_publish_with_a_topic_alias() -> None:
    relative = "suricata-verify/tests/mqtt5-pub-mosquittoprops/input.pcap"
    _, _, differences = _tshark_comparison(relative)
    assert differences == [(relative, 8, "mqtt.topic", "topicX;topicX", "topicX")]
    publish = next(e for e in _packets(corpus_path(relative)) if e["event"]["action"] == "publish")
    assert publish["mqtt"]["properties"]["topic_alias"] == 5


def test_tshark_without_the_connect_reads_connack_as_v5() -> None:
    relative = "suricata-verify/tests/mqtt-events-missing-connect/input.pcap"
    _, _, differences = _tshark_comparison(relative)
    assert sorted((d[1], d[2]) for d in differences) == [
        (16, "mqtt.conack.val"),
        (16, "mqtt.connack.reason_code"),
        (23, "mqtt.suback.qos"),
        (27, "mqtt.suback.qos"),
    ]


# -- Suricata -------------------------------------------------------------------------------------

_SKIP = object()
#: Suricata eve fields we do not keep, each with the reason and what we keep instead
_NOT_KEPT = {
    "password": "a secret: we keep password_given and password_length",
    "will.message": "the Will Payload: we keep its length",
    "properties.authentication_data": "a secret: we keep authentication_data_length",
}
_EVE_TYPES = {
    "connect", "connack", "publish", "puback", "pubrec", "pubrel", "pubcomp", "subscribe",
    "suback", "unsubscribe", "unsuback", "pingreq", "pingresp", "disconnect", "auth",
}  # fmt: skip


@dataclass(frozen=True)
class _Limits:
    """The options of a Suricata test's suricata.yaml that shape its eve ``mqtt`` records."""

    max_msg_length: int | None = None  # app-layer.protocols.mqtt.max-msg-length
    string_log_limit: int | None = None  # outputs eve-log types mqtt string-log-limit


def _limits(name: str) -> _Limits:
    """The options of Suricata test ``name`` (sizes as Suricata writes them: 10, 1mb)."""
    config = corpus_path(f"suricata-verify/tests/{name}") / "suricata.yaml"
    text = config.read_text() if config.exists() else ""
    units = {"": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}
    found = {
        key: int(value) * units[unit.lower()]
        for key, value, unit in re.findall(
            r"^\s*(max-msg-length|string-log-limit):\s*(\d+)\s*([kmg]b)?\s*$", text, re.M | re.I
        )
    }
    return _Limits(found.get("max-msg-length"), found.get("string-log-limit"))


def _logged(text: str, length: int, limit: int | None) -> str:
    """A string as Suricata logs it under ``string-log-limit`` (``length``: its full length)."""
    if limit is None or length <= limit:
        return text
    return f"{text[:limit]}[truncated {length - limit} additional bytes]"


def _logged_topics(topics: list[str], limit: int | None) -> list[str]:
    """Topics as Suricata logs them under ``string-log-limit``: one budget for the list."""
    out, budget = [], limit
    for topic in topics:
        out.append(_logged(topic, len(topic), budget))
        if budget is not None:
            budget = max(budget - len(topic), 0)
    return out


def _packet_length(m: dict[str, Any]) -> int:
    """The whole packet's length: Fixed Header and Remaining Length."""
    rest = m["remaining_length"]
    return (
        1 + next(i for i, top in enumerate((128, 16384, 2097152, 1 << 28), 1) if rest < top) + rest
    )


def _eve(m: dict[str, Any], path: str, expected: Any, limits: _Limits) -> Any:
    """Our value of Suricata's eve field ``mqtt.<type>.<path>`` (``_SKIP`` for those
    :data:`_NOT_KEPT`, after checking what we keep instead), shaped by the test's options."""
    flags = m["flags"]
    log = limits.string_log_limit
    will = m.get("will", {})
    direct: dict[str, Callable[[], Any]] = {
        "qos": lambda: flags >> 1 & 3,
        "retain": lambda: bool(flags & 1),
        "dup": lambda: bool(flags & 8),
        "protocol_string": lambda: m["protocol_name"],
        "protocol_version": lambda: m["protocol_level"],
        "flags.username": lambda: m["username_given"],
        "flags.password": lambda: m["password_given"],
        "flags.will": lambda: "will" in m,
        "flags.will_retain": lambda: bool(m["connect_flags"] & 0x20),
        "flags.clean_session": lambda: bool(m["connect_flags"] & 0x02),
        "client_id": lambda: m["client_id"],
        "username": lambda: m.get("username"),
        "will.topic": lambda: will["topic"],
        "session_present": lambda: m["session_present"],
        "return_code": lambda: m.get("return_code", m.get("reason_code")),
        "reason_code": lambda: m.get("reason_code", 0),
        "topic": lambda: m["topic"],
        "message": lambda: _logged(m["payload"], m["payload_length"], log),
        "truncated": lambda: (
            limits.max_msg_length is not None and _packet_length(m) > limits.max_msg_length
        ),
        "skipped_length": lambda: _packet_length(m),
        "message_id": lambda: m.get("packet_id"),
        "topics": lambda: (
            [
                {"topic": t, "qos": s["qos"]}
                for t, s in zip(
                    _logged_topics([s["topic"] for s in m["subscriptions"]], log),
                    m["subscriptions"],
                    strict=True,
                )
            ]
            if "subscriptions" in m
            else m["topics"]
        ),
        "qos_granted": lambda: m.get("return_codes", m.get("reason_codes")),
        "reason_codes": lambda: m.get("reason_codes"),
    }
    if path in _NOT_KEPT:
        if path == "password":
            assert m["password_length"] == len(str(expected))
        elif path == "will.message":
            assert will["payload_length"] == len(str(expected))
        elif path == "properties.authentication_data":
            assert m["properties"]["authentication_data_length"] == len(str(expected))
        return _SKIP
    if path == "message" and m.get("payload_truncated") and log is None:
        # we keep the first 256 bytes: a prefix of what Suricata logs
        return _SKIP if str(expected).startswith(m["payload"]) else m["payload"]
    if path in direct:
        return direct[path]()
    where, _, name = path.rpartition(".")
    properties = will.get("properties", {}) if where == "will.properties" else m["properties"]
    if name in properties:
        value = properties[name]
        return bytes.fromhex(value).decode() if name == "correlation_data" else value
    pairs = dict(properties.get("user_properties", []))
    return pairs.get(name, KeyError(name))


def _matches(m: dict[str, Any], checks: dict[str, Any], limits: _Limits) -> bool:
    for path, expected in checks.items():
        try:
            value = _eve(m, path, expected, limits)
        except (KeyError, AssertionError):
            return False
        if value is not _SKIP and value != expected:
            return False
    return True


def _suricata_expectations(name: str) -> tuple[Path, list[tuple[int, dict[str, Any]]]]:
    """The capture of a Suricata test and its eve filters on MQTT (count, match)."""
    spec = yaml.safe_load(corpus_path(f"suricata-verify/tests/{name}/test.yaml").read_text())
    directory = corpus_path(f"suricata-verify/tests/{name}")
    capture = spec.get("pcap") or next(p.name for p in sorted(directory.glob("*.pcap")))
    path = corpus_path(f"suricata-verify/tests/{name}/{capture}".replace(f"{name}/../", ""))
    filters = []
    for check in spec.get("checks", []):
        match = check.get("filter", {}).get("match", {})
        if match.get("event_type") in ("mqtt", "anomaly"):
            filters.append((check["filter"]["count"], match))
    return path, filters


def _suricata_count(path: Path, match: dict[str, Any], limits: _Limits = _Limits()) -> int:
    """How many of our events (or request and acknowledgement pairs, as Suricata logs a PUBLISH
    with its PUBACK in one record) match one eve filter."""
    packets = _packets(path)
    if match["event_type"] == "anomaly":
        name = {"malformed_traffic": "malformed"}.get(
            match["anomaly.event"], match["anomaly.event"]
        )
        return sum(name in e["mqtt"].get("anomalies", []) for e in packets)
    if "has-key" in match:
        action = match["has-key"].removeprefix("mqtt.")
        return sum(e["event"]["action"] == action for e in packets)
    by_type: dict[str, dict[str, Any]] = {}
    for key, value in match.items():
        if key.startswith("mqtt."):
            kind, _, path_ = key[5:].partition(".")
            assert kind in _EVE_TYPES, key
            by_type.setdefault(kind, {})[path_] = value
    kinds = list(by_type)
    candidates = [
        [
            e
            for e in packets
            if e["event"]["action"] == k and _matches(e["mqtt"], by_type[k], limits)
        ]
        for k in kinds
    ]
    if len(kinds) == 1:
        return len(candidates[0])
    assert len(kinds) == 2, match
    return sum(
        1
        for ack in candidates[1]
        for request in candidates[0]
        if ack["mqtt"].get("request_event_id") == request["event"]["id"]
    )


#: filters where Suricata and we differ, by test and index of the filter: the named test below
_SURICATA_DIFFERENCES = {
    ("mqtt-events-unintroduced", 0): "test_suricata_flags_a_publish_before_the_connack",
    ("mqtt-ping", 2): "test_suricata_flags_pings_of_a_capture_without_its_start",
    **dict.fromkeys(
        (
            ("mqtt5-sub-userpass", 4),
            ("mqtt-sub-rules", 4),
            ("mqtt5-unsub-userpass", 8),
            ("mqtt-unsub-rules", 2),
            ("mqtt5-unsub-qos2", 8),
        ),
        "test_suricata_reads_no_reason_code_in_a_one_byte_disconnect",
    ),
}


@pytest.mark.parametrize("name", SURICATA_TESTS)
def test_suricata_eve_mqtt_records(name: str) -> None:
    path, filters = _suricata_expectations(name)
    assert filters
    for index, (count, match) in enumerate(filters):
        if (name, index) in _SURICATA_DIFFERENCES:
            continue
        assert _suricata_count(path, match, _limits(name)) == count, (index, match)


@pytest.mark.skipif(not CORPUS.exists(), reason="external corpus not present: ../shared/corpus")
def test_suricata_agreement_figures() -> None:
    """37 Suricata tests: 202 eve filters on MQTT records or anomalies (1179 ``mqtt.*`` field
    expectations); 195 agree, the 7 others are the named differences below."""
    agree: list[tuple[str, int]] = []
    differ: list[tuple[str, int]] = []
    fields = 0
    for name in SURICATA_TESTS:
        path, filters = _suricata_expectations(name)
        for index, (count, match) in enumerate(filters):
            fields += sum(k.startswith("mqtt.") for k in match)
            ok = _suricata_count(path, match, _limits(name)) == count
            (agree if ok else differ).append((name, index))
    assert (len(agree) + len(differ), fields) == (202, 1179)
    assert len(agree) == 195
    assert sorted(differ) == sorted(_SURICATA_DIFFERENCES)


def test_suricata_rule_on_the_connack_reason_code() -> None:
    """mqtt-connect-rules-2: its rules ``mqtt.type:CONNACK; mqtt.reason_code:134`` (expected to
    alert once) and ``...:0`` (never)."""
    spec = corpus_path("suricata-verify/tests/mqtt-connect-rules-2/test.yaml").read_text()
    assert "alert.signature: MQTT CONNACK reason code 134" in spec
    path = corpus_path("suricata-verify/tests/mqtt-connect-rules-2/mqtt5_pub_jpeg_connack134.pcap")
    codes = [e["mqtt"]["reason_code"] for e in _packets(path) if e["event"]["action"] == "connack"]
    assert codes == [134]
    connack = next(e for e in _packets(path) if e["event"]["action"] == "connack")
    assert connack["mqtt"]["reason_code_name"] == "bad_user_name_or_password"
    assert connack["event"]["outcome"] == "failure"


def test_suricata_flags_a_publish_before_the_connack() -> None:
    """Suricata's ``unintroduced_message``: a PUBLISH sent after the CONNECT, before the
    CONNACK came back. The client may do so (MQTT 3.1.1 §3.1.4: "Clients are permitted to send
    further Control Packets immediately after sending a CONNECT Packet"; MQTT 5.0 §3.1.4), so we
    flag packets before the CONNECT only."""
    path, filters = _suricata_expectations("mqtt-events-unintroduced")
    assert filters[0] == (1, {"event_type": "anomaly", "anomaly.event": "unintroduced_message"})
    actions = [e["event"]["action"] for e in _packets(path)]
    assert actions == ["connect", "publish"]  # no CONNACK in the capture
    assert _suricata_count(path, filters[0][1]) == 0


def test_suricata_flags_pings_of_a_capture_without_its_start() -> None:
    """mqtt-ping: a PINGREQ and a PINGRESP, no handshake, no CONNECT. Suricata flags both
    ``unintroduced_message``; the capture may as well begin mid-connection, so we flag packets
    before a CONNECT only when the connection's start was captured (see collectors.mqtt_events)."""
    path, filters = _suricata_expectations("mqtt-ping")
    assert filters[2] == (2, {"event_type": "anomaly", "anomaly.event": "unintroduced_message"})
    events = _packets(path)
    assert [e["event"]["action"] for e in events] == ["pingreq", "pingresp"]
    assert all("anomalies" not in e["mqtt"] for e in events)
    assert events[1]["mqtt"]["request_event_id"] == events[0]["event"]["id"]


def test_suricata_reads_no_reason_code_in_a_one_byte_disconnect() -> None:
    """A v5 DISCONNECT of Remaining Length 1 (bytes e0 01 04): its byte is the Reason Code, 0x04
    Disconnect with Will Message (MQTT 5.0 §3.14.2.1: the Reason Code may be omitted only with a
    Remaining Length of 0; tshark reads 4 as well). Suricata logs ``reason_code: 0``."""
    for name in ("mqtt5-sub-userpass", "mqtt5-unsub-userpass", "mqtt5-unsub-qos2"):
        path, filters = _suricata_expectations(name)
        expected = next(m for _, m in filters if "mqtt.disconnect.reason_code" in m)
        assert expected["mqtt.disconnect.reason_code"] == 0
        event = next(e for e in _packets(path) if e["event"]["action"] == "disconnect")
        assert (event["mqtt"]["remaining_length"], event["mqtt"]["reason_code"]) == (1, 4)
        assert event["mqtt"]["reason_code_name"] == "disconnect_with_will_message"


def test_correlation_data_is_hex_where_suricata_logs_text() -> None:
    """Correlation Data is Binary Data (MQTT 5.0 §3.3.2.3.6): we keep it as hex, Suricata logs
    the bytes as text; the comparison above decodes our hex."""
    path, filters = _suricata_expectations("mqtt5-pub-mosquittoprops")
    connect = next(m for _, m in filters if "mqtt.connect.will.properties.correlation_data" in m)
    assert connect["mqtt.connect.will.properties.correlation_data"] == "1234567"
    event = next(e for e in _packets(path) if e["event"]["action"] == "connect")
    assert event["mqtt"]["will"]["properties"]["correlation_data"] == b"1234567".hex()


def test_suricata_logs_the_password_we_never_do() -> None:
    path, filters = _suricata_expectations("mqtt5-pub-userpass")
    connect = next(m for _, m in filters if "mqtt.connect.password" in m)
    assert connect["mqtt.connect.password"] == "pass"
    event = next(e for e in _packets(path) if e["event"]["action"] == "connect")
    assert event["mqtt"]["password_length"] == 4
    assert '"pass"' not in json.dumps(event)
    assert "password" not in event["mqtt"]


def test_suricata_limits_messages_by_its_configuration() -> None:
    """mqtt-limit-*: Suricata's ``max-msg-length`` (500 in its suricata.yaml) drops the fields
    of a packet over it (``truncated``, ``skipped_length``: the whole packet's length); we keep
    every packet's fields, the first 256 bytes of a payload and its length. The comparison
    above applies the option to our packets."""
    path, filters = _suricata_expectations("mqtt-limit-2")
    assert _limits("mqtt-limit-2").max_msg_length == 500
    skipped = sorted(
        m["mqtt.publish.skipped_length"] for _, m in filters if "mqtt.publish.skipped_length" in m
    )
    assert skipped == [1010, 100_009, 100_011]
    publish = [e["mqtt"] for e in _packets(path) if e["event"]["action"] == "publish"]
    assert [(m["topic"], m["payload_length"]) for m in publish] == [
        ("foo", 100_000), ("foo", 100_000), ("bar", 1000), ("baz", 100)
    ]  # fmt: skip
    assert all(m["payload_truncated"] for m in publish[:3])


def test_suricata_truncates_logged_strings_by_its_configuration() -> None:
    """mqtt-limit-log-*: Suricata's ``string-log-limit`` cuts logged strings (a topic list as
    a whole) and says how many bytes it left out; the comparison above applies it to our topics
    and payloads."""
    assert _limits("mqtt-limit-log-1").string_log_limit == 10
    assert _limits("mqtt-limit-log-2").string_log_limit == 1 << 20
    assert _logged("Z" * 100, 100, 10) == "ZZZZZZZZZZ[truncated 90 additional bytes]"
    path, _ = _suricata_expectations("mqtt-limit-log-3")
    subscribe = next(e for e in _packets(path) if e["event"]["action"] == "subscribe")
    assert subscribe["mqtt"]["topics"] == ["topicX", "topicY"]
    assert _logged_topics(subscribe["mqtt"]["topics"], 10) == [
        "topicX",
        "topi[truncated 2 additional bytes]",
    ]


# -- Arkime -------------------------------------------------------------------------------------


def _arkime_session(events: list[dict[str, Any]], limit: int) -> dict[str, list[str]]:
    """Our events of one connection summarised as Arkime's ``mqtt`` session fields (PUBLISH
    packets over ``limit`` bytes count only by their type: see the next test)."""
    out: dict[str, set[str]] = {}
    for event in events:
        m = event["mqtt"]
        if "packet_type_code" not in m:
            continue
        out.setdefault("type", set()).add(m["packet_type"])
        if m["packet_type"] == "CONNECT":
            out.setdefault("clientId", set()).add(m["client_id"])
            out.setdefault("version", set()).add(m["protocol_version"])
            flags = out.setdefault("flags", set())
            if m.get("clean_session") or m.get("clean_start"):
                flags.add("cleanSession")
            if m["password_given"]:
                flags.add("hasPassword")
            if "will" in m:
                flags.add("hasWill")
                out.setdefault("willTopic", set()).add(m["will"]["topic"])
                out.setdefault("qos", set()).add(str(m["will"]["qos"]))
        if m["packet_type"] == "PUBLISH" and m["remaining_length"] < limit:
            out.setdefault("qos", set()).add(str(m["qos"]))
            out.setdefault("topic", set()).add(m["topic"])
        out.setdefault("topic", set()).update(m.get("topics", []))
    return {k: sorted(v) for k, v in out.items() if v}


def test_arkime_session_fields() -> None:
    path = corpus_path("arkime/tests/pcap/mqtt_synthetic.pcap")
    expected = json.loads(corpus_path("arkime/tests/pcap/mqtt_synthetic.test").read_text())
    sessions = {}
    for event in _events(path):
        sessions.setdefault(event["source"]["port"], []).append(event)
    compared = 0
    for session in expected["sessions3"]:
        body = session["body"]
        theirs = {
            k: sorted(str(x) for x in v) for k, v in body["mqtt"].items() if not k.endswith("Cnt")
        }
        ours = _arkime_session(sessions[body["source"]["port"]], 4096)
        assert ours == theirs, body["source"]["port"]
        compared += 1
    assert compared == 7


def test_arkime_drops_an_oversized_topic() -> None:
    """Arkime tags a session ``mqtt:message-too-long`` and drops the topic of a PUBLISH over its
    limit; we keep the whole Topic Name (at most 65535 bytes by the specification)."""
    path = corpus_path("arkime/tests/pcap/mqtt_synthetic.pcap")
    publish = [e for e in _events(path) if e["event"]["action"] == "publish"]
    longest = max(publish, key=lambda e: len(e["mqtt"]["topic"]))
    assert longest["mqtt"]["topic"].startswith("oversize/")
    assert longest["mqtt"]["remaining_length"] == 8192
