"""Sensor observations from MQTT PUBLISHes on configured topics (``wellbeing.*`` on the event,
and the store's ``wellbeing_observations``), the base of the wellbeing feed's ingestion."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from collectors.mqtt import ObservationTopic, observation
from detectors.runner import collect_captures
from lab.base import LabSite
from lab.sensors import QUANTITIES, stations_for
from soc.config import CollectSettings
from soc.errors import ConfigError
from soc.store.sqlite import SQLiteStore

REFERENCE = Path(__file__).resolve().parents[2] / "lab" / "reference" / "capture.pcap.gz"
LAB = (ObservationTopic.parse("city/{zone}/{sensor}/{quantity}"),)


def test_a_template_names_levels_and_a_payload_gives_the_value() -> None:
    payload = '{"value": 47.3, "unit": "dB(A)", "time": "2024-05-01T10:00:05.002Z", "seq": 17}'
    assert observation(LAB, "city/riverside/park-01/noise", payload) == {
        "topic": "city/riverside/park-01/noise",
        "sensor_id": "park-01",
        "zone": "riverside",
        "quantity": "noise",
        "value": 47.3,
        "unit": "dB(A)",
        "time": "2024-05-01T10:00:05.002Z",
    }
    bare = (ObservationTopic.parse("sensors/+/{sensor}"),)
    assert observation(bare, "sensors/x/s1", "12.5") == {"topic": "sensors/x/s1",
                                                         "sensor_id": "s1", "value": 12.5}  # fmt: skip
    named = observation(bare, "sensors/x/s1", '{"quantity": "o3", "zone": "z", "value": 3}')
    assert named is not None
    assert (named["quantity"], named["zone"]) == ("o3", "z")


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("city/riverside/park-01", '{"value": 1}'),  # a level short
        ("town/riverside/park-01/noise", '{"value": 1}'),  # another literal
        ("city/riverside/park-01/status", '{"state": "online"}'),  # no value
        ("city/riverside/park-01/noise", '{"value": "47"}'),  # not a number
        ("city/riverside/park-01/noise", '{"value": true}'),
        ("city/riverside/park-01/noise", "NaN"),
        ("city/riverside/park-01/noise", "{not json"),
        ("city/riverside/park-01/noise", "[1, 2]"),
    ],
)
def test_what_is_not_an_observation(topic: str, payload: str) -> None:
    assert observation(LAB, topic, payload) is None


@pytest.mark.parametrize("template", ["city/#", "city/{zone", "city/a+b", "city/{1x}"])
def test_a_bad_template_is_refused_naming_the_setting(template: str) -> None:
    with pytest.raises(ConfigError, match=r"collect\.mqtt_observation_topics"):
        CollectSettings(mqtt_observation_topics=(template,))


def test_the_lab_stations_publishes_become_stored_observations(tmp_path: Path) -> None:
    """The lab's reference capture: every station's quantities with the lab's own units, from
    its own address; a broker forwarding them (to the attacker's subscription) adds none; the
    attacker's spoofed readings are kept with the address they came from."""
    site = LabSite()
    events = collect_captures([REFERENCE])
    observed = [e for e in events if "wellbeing" in e]
    assert observed
    assert all(e["source"]["port"] != site.mqtt_port for e in observed)  # client to broker only
    with SQLiteStore(tmp_path / "soc.db") as store:
        store.write_events(events)
        store.write_events(events)  # a replay stores nothing twice
    conn = apsw.Connection(str(tmp_path / "soc.db"))
    rows = conn.execute(
        "SELECT sensor_id, zone, quantity, unit, publisher_ip, source FROM wellbeing_observations"
    ).fetchall()
    assert len(rows) == len({(e["wellbeing"]["sensor_id"], e["wellbeing"]["quantity"],
                              e["wellbeing"]["time"]) for e in observed})  # fmt: skip
    stations = {s.station_id: s for s in stations_for(site)}
    genuine = [r for r in rows if r[4] != site.attacker]
    assert {r[0] for r in genuine} == set(stations)
    for sensor, zone, quantity, unit, publisher, _ in genuine:
        assert zone == stations[sensor].zone
        assert publisher == stations[sensor].address
        assert unit == QUANTITIES[quantity][0]
    assert {r[2] for r in genuine} == set(QUANTITIES)
    assert any(r[4] == site.attacker for r in rows)  # mqtt_rogue_publisher's false readings
