"""Learning mode and protect mode: what a baseline holds, what is new against it (with the
nearest known behaviour), accepting an alert, and ``soc baseline`` end to end on the lab's
reference capture."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import apsw
import pytest
import yaml
from click.testing import CliRunner

from detectors.attack import load_table
from detectors.baseline import Baseline, accept, alerts_of, check, learn
from detectors.runner import collect_captures
from lab.base import LabSite
from soc.cli import main
from soc.event import format_timestamp, parse_timestamp
from soc.store.sqlite import SQLiteStore

T0 = parse_timestamp("2026-11-26T08:00:00+00:00")
REFERENCE = Path(__file__).resolve().parents[2] / "lab" / "reference"


def event(n: int, dataset: str, src: str, dst: str, port: int, **fields: Any) -> dict[str, Any]:
    name = dataset.split(".")[1]
    action = fields.pop("action", "request")
    return {
        "@timestamp": format_timestamp(T0 + n * 1_000_000),
        "event": {"id": f"e{n}", "dataset": dataset, "action": action},
        "source": {"ip": src, "port": 40000},
        "destination": {"ip": dst, "port": port},
        name: fields,
    }


def modbus(n: int, fc: int, address: int, quantity: int = 1, src: str = "10.0.0.9",
           unit: int = 1) -> dict[str, Any]:  # fmt: skip
    return event(n, "ics.modbus", src, "10.0.0.1", 502, pdu_type="request", function_code=fc,
                 unit_id=unit, request={"address": address, "quantity": quantity})  # fmt: skip


def opcua(n: int, service: str, nodes: list[str] | None = None) -> dict[str, Any]:
    return event(n, "ics.opcua", "10.0.0.9", "10.0.0.2", 4840, service=service,
                 nodes=nodes or [])  # fmt: skip


NORMAL = [
    modbus(1, 3, 0, 10),
    modbus(2, 3, 10, 5),  # adjacent: one range 0-14
    modbus(3, 3, 100, 2),
    modbus(4, 6, 2),
    opcua(5, "ReadRequest", ["ns=2;s=Level"]),
    opcua(6, "WriteRequest", ["ns=2;s=Setpoint"]),
    event(
        7, "ics.dlms", "10.0.1.100", "10.0.1.1", 4059, action="get_request", class_id=3, attribute=2
    ),
    event(
        8,
        "ics.mqtt",
        "10.0.2.11",
        "10.0.2.1",
        1883,
        action="publish",
        packet_type="PUBLISH",
        topic="city/a/s1/noise",
    ),
    {**modbus(9, 3, 0), "modbus": {"pdu_type": "response", "function_code": 3, "unit_id": 1}},
]


@functools.cache
def _normal() -> Baseline:
    return learn("plant", NORMAL)


def test_learn_holds_pairs_codes_ranges_services_and_topics() -> None:
    doc = _normal().doc()
    assert doc["learned"]["events"] == 8  # the response is no behaviour
    assert [
        (c["client"], c["server"], c["protocol"], c["port"]) for c in doc["communications"]
    ] == [
        ("10.0.0.9", "10.0.0.1", "modbus", 502),
        ("10.0.0.9", "10.0.0.2", "opcua", 4840),
        ("10.0.1.100", "10.0.1.1", "dlms", 4059),
        ("10.0.2.11", "10.0.2.1", "mqtt", 1883),
    ]
    assert [(m["function_code"], m["ranges"]) for m in doc["modbus"]] == [
        (3, [[0, 14], [100, 101]]),
        (6, [[2, 2]]),
    ]
    assert doc["communications"][0]["period_s"] == pytest.approx(1.0)
    written = [o for o in doc["opcua"] if o["service"] == "WriteRequest"]
    assert written[0]["nodes"] == ["ns=2;s=Setpoint"]
    assert doc["mqtt"][0]["topics"] == ["city/a/s1/noise"]
    assert Baseline.from_doc(json.loads(json.dumps(doc))).doc() == doc  # the reviewable file


def test_what_the_baseline_holds_raises_nothing() -> None:
    assert check(_normal(), NORMAL) == []


@pytest.mark.parametrize(
    ("doc", "kind", "nearest"),
    [
        (modbus(20, 3, 0, src="10.0.0.66"), "new_communication",
         "10.0.0.1 is known to serve modbus to 10.0.0.9"),
        (modbus(21, 16, 2), "new_modbus_write", "known: unit 1 fc 3, unit 1 fc 6"),
        (modbus(22, 1, 0), "new_modbus_function", "known: unit 1 fc 3, unit 1 fc 6"),
        (modbus(23, 3, 50, 4), "modbus_address_outside_baseline", "nearest known range 0-14"),
        (modbus(24, 6, 3), "modbus_write_outside_baseline", "nearest known range 2-2"),
        (modbus(25, 3, 14, 2), "modbus_address_outside_baseline", "nearest known range 0-14"),
        (opcua(26, "CallRequest", ["ns=2;s=Stop"]), "new_opcua_service",
         "known: ReadRequest, WriteRequest"),
        (opcua(27, "WriteRequest", ["ns=2;s=Setpoint", "ns=2;s=Limit"]), "new_opcua_node_written",
         "known: ns=2;s=Setpoint"),
        (event(28, "ics.dlms", "10.0.1.100", "10.0.1.1", 4059, action="action_request",
               class_id=70, method=1), "new_dlms_operation", "known: get class 3 #2"),
        (event(29, "ics.mqtt", "10.0.2.11", "10.0.2.1", 1883, action="publish",
               packet_type="PUBLISH", topic="city/a/s1/status"), "new_mqtt_topic",
         "known: city/a/s1/noise"),
        (event(30, "ics.mqtt", "10.0.2.11", "10.0.2.1", 1883, action="subscribe",
               packet_type="SUBSCRIBE", topics=["#"]), "new_mqtt_packet", "known: PUBLISH"),
    ],
)  # fmt: skip
def test_each_novelty_names_itself_and_the_nearest_known(
    doc: dict[str, Any], kind: str, nearest: str
) -> None:
    (finding,) = check(_normal(), [doc])
    assert (finding.kind, finding.nearest) == (kind, nearest)
    assert finding.event_id == doc["event"]["id"]


def test_alerts_group_findings_and_accepting_one_silences_it() -> None:
    baseline = learn("plant", NORMAL)
    news = [modbus(40 + i, 16, 2) for i in range(3)] + [modbus(50, 3, 50, 4)]
    findings = check(baseline, news)
    alerts = alerts_of(findings, load_table(), T0, "plant", 1)
    assert len(alerts) == 2
    write = next(a for a in alerts if a["rule"]["id"] == "baseline.new_modbus_write")
    assert write["ics"]["alert"]["event_ids"] == ["e40", "e41", "e42"]
    assert write["threat"]["technique"]["id"] == ["T0855"]
    assert (write["source"]["ip"], write["destination"]["ip"]) == ("10.0.0.9", "10.0.0.1")
    assert "unit 1 function code 16" in write["message"]
    accept(baseline, write, "analyst", T0)
    assert [f.kind for f in check(baseline, news)] == ["modbus_address_outside_baseline"]
    assert baseline.accepted[0]["by"] == "analyst"
    with pytest.raises(ValueError, match="not a protect-mode alert"):
        accept(baseline, {"event": {"id": "x"}, "ics": {"alert": {}}}, "analyst", T0)


@pytest.mark.parametrize(
    "doc",
    [
        {"schema": 2},
        {"schema": 1, "modbus": [{"client": "a"}]},
        {"schema": 1, "modbus": [{"client": "a", "server": "b", "unit_id": "x",
                                  "function_code": 3}]},
    ],
)  # fmt: skip
def test_a_file_that_does_not_read_says_why(doc: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"schema|behaviour"):
        Baseline.from_doc(doc)


# -- the lab ----------------------------------------------------------------------------------


@functools.cache
def _lab() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    events = collect_captures([REFERENCE / "capture.pcap.gz"])
    labels: dict[str, Any] = json.loads((REFERENCE / "labels.json").read_text())
    return events, labels


def test_every_lab_attack_is_new_to_the_normal_periods_baseline() -> None:
    """Learnt on the reference capture's normal period, protect mode raises, for every attack
    scenario, an alert whose client is the scenario's attacker within the scenario's span."""
    events, labels = _lab()
    normal_end = labels["normal"]["end_us"]
    baseline = learn("lab", [e for e in events if parse_timestamp(e["@timestamp"]) < normal_end])
    rest = [e for e in events if parse_timestamp(e["@timestamp"]) >= normal_end]
    findings = check(baseline, rest)
    for scenario in labels["scenarios"]:
        start, end = scenario["start_us"], scenario["end_us"] + 5_000_000
        found = [
            f for f in findings if f.client == scenario["attacker"] and start <= f.ts_us <= end
        ]
        assert found, scenario["scenario"]
    assert (
        check(baseline, [e for e in events if parse_timestamp(e["@timestamp"]) < normal_end]) == []
    )


@pytest.fixture
def lab_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(__import__("os").environ):
        if key.startswith("SOC_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SOC_DATA_DIR", str(tmp_path))
    events, _ = _lab()
    with SQLiteStore(tmp_path / "soc.db") as store:
        store.write_events(events)
    return tmp_path


def test_soc_baseline_learn_check_accept_import(lab_store: Path) -> None:
    _, labels = _lab()
    normal_end = format_timestamp(labels["normal"]["end_us"])
    runner = CliRunner()
    out = lab_store / "water.yaml"
    result = runner.invoke(main, ["baseline", "learn", "--site", "water_plant", "--until",
                                  normal_end, "--out", str(out), "--as", "eng"])  # fmt: skip
    assert result.exit_code == 0, result.output
    reviewed = yaml.safe_load(out.read_text())
    assert reviewed["revision"] == 1
    assert {c["client"] for c in reviewed["communications"]} == {LabSite().hmi}
    result = runner.invoke(main, ["baseline", "check", "--site", "water_plant", "--json"])
    assert result.exit_code == 0, result.output
    alerts = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    attacker = [a for a in alerts if a["source"]["ip"] == LabSite().attacker]
    assert attacker
    assert all(a["ics"]["baseline"]["kind"] == "new_communication" for a in attacker)
    hmi = next(a for a in alerts if a["source"]["ip"] == LabSite().hmi)
    result = runner.invoke(main, ["baseline", "accept", hmi["event"]["id"], "--as", "eng"])
    assert result.exit_code == 0, result.output
    assert "revision 2" in result.output
    result = runner.invoke(main, ["baseline", "show", "--site", "water_plant", "--json"])
    assert json.loads(result.output)["accepted"][0]["alert"] == hmi["event"]["id"]
    reviewed["modbus"] = []  # an engineer's edit: no Modbus at all
    out.write_text(yaml.safe_dump(reviewed))
    result = runner.invoke(main, ["baseline", "import", str(out), "--as", "eng"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["baseline", "list"])
    assert [line.split()[1] for line in result.output.splitlines()] == ["#1", "#2", "#3"]
    conn = apsw.Connection(str(lab_store / "soc.db"))
    audit = conn.execute("SELECT actor, action FROM audit ORDER BY seq").fetchall()
    assert audit == [("eng", "baseline.learn"), ("eng", "baseline.accept"),
                     ("eng", "baseline.import")]  # fmt: skip
    result = runner.invoke(main, ["baseline", "learn", "--site", "nowhere"])
    assert result.exit_code == 2
    assert "--site" in result.output
