"""The lab end to end: every scenario runs against the real site, and its capture, collected,
holds what its label promises.

One lab run (module fixture, about a minute) serves every test here. Capturing loopback needs
root; without it the capture checks skip with a message and the labels and values are still
checked. The Modbus scenarios are checked on the collector's events; the OPC UA, DLMS and MQTT
ones on the packets between the attacker and the target (their collectors come later).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from collectors.capture import read_capture
from collectors.packet import Packet, decode, ip_text
from collectors.pipeline import Collector
from collectors.run import collect_files
from lab.base import LabSite
from lab.run import load_scenarios, run_lab
from soc.config import CollectSettings
from soc.event import parse_timestamp
from soc.types import Event

SITE = LabSite()
ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lab")
    names = list(load_scenarios())
    asyncio.run(run_lab(SITE, names, out, normal_s=4.0, gap_s=0.5, capture=ROOT))
    return out


@pytest.fixture(scope="module")
def labels(lab_run: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((lab_run / "labels.json").read_bytes())
    return data


class _List:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def write(self, events: list[Event]) -> None:
        self.events.extend(events)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def events(lab_run: Path) -> list[Event]:
    if not (lab_run / "capture.pcap").exists():
        pytest.skip("capturing loopback needs root: no capture to collect")
    sink = _List()
    collect_files(
        [lab_run / "capture.pcap"], Collector(CollectSettings(modbus_ports=(502, 5020))), sink
    )
    return sink.events


@pytest.fixture(scope="module")
def packets(lab_run: Path) -> list[tuple[int, Packet]]:
    if not (lab_run / "capture.pcap").exists():
        pytest.skip("capturing loopback needs root: no capture to read")
    found = []
    for frame in read_capture(lab_run / "capture.pcap"):
        packet = decode(frame.linktype, frame.data)
        if isinstance(packet, Packet):
            found.append((frame.ts_us, packet))
    return found


def test_every_scenario_ran_and_is_labelled(labels: dict[str, Any]) -> None:
    scenarios = load_scenarios()
    assert [s["scenario"] for s in labels["scenarios"]] == list(scenarios)
    assert len(scenarios) >= 10
    assert labels["failed_services"] == {}
    for label in labels["scenarios"]:
        assert label["outcome"] == "done", label
        assert label["techniques"] == list(scenarios[label["scenario"]].techniques)
        assert label["attacker"] == SITE.attacker
        assert label["targets"], label["scenario"]
        assert label["start_us"] < label["end_us"]
        assert parse_timestamp(label["start"]) == label["start_us"]
    starts = [label["start_us"] for label in labels["scenarios"]]
    assert starts == sorted(starts)
    assert labels["normal"]["end_us"] <= starts[0]


def test_every_technique_is_an_attack_for_ics_technique(labels: dict[str, Any]) -> None:
    bundle = Path(__file__).resolve().parents[3] / "shared" / "data" / "ics-attack.json"
    if not bundle.exists():
        pytest.skip("the ATT&CK for ICS bundle (../shared/data) is absent")
    known = {
        ref["external_id"]
        for obj in orjson.loads(bundle.read_bytes())["objects"]
        if obj.get("type") == "attack-pattern"
        and not obj.get("revoked")
        and not obj.get("x_mitre_deprecated")
        for ref in obj.get("external_references", [])
        if ref.get("source_name") in ("mitre-attack", "mitre-ics-attack")
    }
    for label in labels["scenarios"]:
        assert set(label["techniques"]) <= known, label["scenario"]


def test_values_hold_what_each_simulator_had(lab_run: Path, labels: dict[str, Any]) -> None:
    values = orjson.loads((lab_run / "values.json").read_bytes())
    assert set(values) == set(labels["services"])
    for name in ("plc", "opcua-server", "meters", "wellbeing-sensors"):
        rows = values[name]
        assert rows, name
        assert all("ts_us" in row for row in rows[:50]), name


def _window(label: dict[str, Any], grace_us: int = 1_000_000) -> Callable[[int], bool]:
    return lambda ts: label["start_us"] <= ts <= label["end_us"] + grace_us


def _attacker_requests(events: list[Event], label: dict[str, Any]) -> list[Event]:
    inside = _window(label)
    return [
        e
        for e in events
        if e["event"]["dataset"] == "ics.modbus"
        and e["source"]["ip"] == SITE.attacker
        and e["modbus"].get("pdu_type") == "request"
        and inside(parse_timestamp(e["@timestamp"]))
    ]


def _label(labels: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in labels["scenarios"] if s["scenario"] == name)


MODBUS_PROMISES: dict[str, Callable[[list[Event]], bool]] = {
    "modbus_unit_id_scan": lambda reqs: len({e["modbus"]["unit_id"] for e in reqs}) >= 200,
    "modbus_network_scan": lambda reqs: any(e["modbus"]["function_code"] == 17 for e in reqs),
    "modbus_device_identification": lambda reqs: any(
        e["modbus"]["function_code"] == 43 and e["modbus"].get("mei_type") == 14 for e in reqs
    ),
    "modbus_point_enumeration": lambda reqs: (
        {e["modbus"]["function_code"] for e in reqs} >= {1, 2, 3, 4}
        and len({e["modbus"]["request"]["address"] for e in reqs}) >= 50
    ),
    "modbus_rogue_master_write": lambda reqs: (
        {5, 6} <= {e["modbus"]["function_code"] for e in reqs}
    ),
    "modbus_setpoint_tampering": lambda reqs: any(
        e["modbus"]["function_code"] == 16 and max(e["modbus"]["request"]["values"]) > 4000
        for e in reqs
    ),
    "modbus_coil_brute_force": lambda reqs: (
        sum(e["modbus"]["function_code"] == 5 for e in reqs) >= 100
    ),
    "modbus_restart_communications": lambda reqs: any(
        e["modbus"].get("sub_function") == 1 for e in reqs
    ),
    "modbus_force_listen_only": lambda reqs: any(
        e["modbus"].get("sub_function") == 4 for e in reqs
    ),
    "modbus_request_flood": lambda reqs: len(reqs) >= 2000,
}


@pytest.mark.parametrize("name", sorted(MODBUS_PROMISES))
def test_each_modbus_attack_is_in_the_collected_events(
    name: str, events: list[Event], labels: dict[str, Any]
) -> None:
    label = _label(labels, name)
    requests = _attacker_requests(events, label)
    assert requests, f"no request from the attacker during {name}"
    assert {e["destination"]["ip"] for e in requests} <= {SITE.plc, *label["targets"]}
    assert MODBUS_PROMISES[name](requests), name


def test_the_listen_only_attack_leaves_the_hmi_unanswered(
    events: list[Event], labels: dict[str, Any]
) -> None:
    inside = _window(_label(labels, "modbus_force_listen_only"), grace_us=6_000_000)
    unanswered = Counter(
        e["source"]["ip"]
        for e in events
        if e["event"]["dataset"] == "ics.modbus"
        and e["modbus"].get("pdu_type") == "unanswered_request"
        and inside(parse_timestamp(e["@timestamp"]))
    )
    assert unanswered[SITE.hmi] > 0


def test_the_hmi_polls_normally_before_the_attacks(
    events: list[Event], labels: dict[str, Any]
) -> None:
    normal = labels["normal"]
    polls = [
        e
        for e in events
        if e["source"]["ip"] == SITE.hmi
        and normal["start_us"] <= parse_timestamp(e["@timestamp"]) <= normal["end_us"]
    ]
    assert len(polls) >= 4
    assert not [e for e in events if e["source"]["ip"] == SITE.attacker and
                parse_timestamp(e["@timestamp"]) < normal["end_us"]]  # fmt: skip


@pytest.mark.parametrize(
    ("protocol", "port"),
    [("opcua", SITE.opcua_port), ("dlms", SITE.dlms_port), ("mqtt", SITE.mqtt_port)],
)
def test_each_other_attack_is_on_the_wire_between_attacker_and_target(
    protocol: str, port: int, packets: list[tuple[int, Packet]], labels: dict[str, Any]
) -> None:
    for label in labels["scenarios"]:
        if label["protocol"] != protocol:
            continue
        inside = _window(label)
        sent = sum(
            len(p.payload)
            for ts, p in packets
            if inside(ts)
            and ip_text(p.src_ip) == SITE.attacker
            and ip_text(p.dst_ip) in label["targets"]
            and p.dst_port == port
        )
        assert sent > 0, label["scenario"]


REFERENCE = Path(__file__).resolve().parents[2] / "lab" / "reference"


@pytest.fixture(scope="module")
def reference() -> tuple[list[Event], dict[str, Any]]:
    sink = _List()
    collect_files(
        [REFERENCE / "capture.pcap.gz"],
        Collector(CollectSettings(modbus_ports=(502, 5020))),
        sink,
    )
    return sink.events, orjson.loads((REFERENCE / "labels.json").read_bytes())


@pytest.mark.parametrize("name", sorted(MODBUS_PROMISES))
def test_the_committed_reference_capture_holds_what_its_labels_promise(
    name: str, reference: tuple[list[Event], dict[str, Any]]
) -> None:
    events, labels = reference
    assert {s["scenario"] for s in labels["scenarios"]} >= set(MODBUS_PROMISES)
    requests = _attacker_requests(events, _label(labels, name))
    assert MODBUS_PROMISES[name](requests), name
