"""The wellbeing sensors on MQTT: mosquitto as the broker, paho clients as stations and
watchers, the two MQTT attack scenarios, and the values' daily cycles."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt
import pytest

from lab import broker as broker_module
from lab.attacks_mqtt import FALSE_READINGS, discover_topics, publish_false_readings
from lab.base import SCENARIOS, LabSite
from lab.broker import INSTALL_HINT, Broker, MosquittoMissing, find_mosquitto
from lab.sensors import QUANTITIES, CityModel, MqttLink, Sensors, stations_for

ATTACK_BUNDLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "ics-attack.json"
WATCHER = "127.0.30.250"
PERIOD_S = 0.2


@pytest.fixture
def mosquitto() -> Path:
    """The broker binary: a missing one is a failure (``make test`` installs it), not a skip."""
    binary = find_mosquitto()
    if binary is None:
        pytest.fail(f"the MQTT tests need mosquitto: {INSTALL_HINT}")
    return binary


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


def run(test: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(test(), timeout)

    asyncio.run(bounded())


@contextlib.asynccontextmanager
async def city(**sensor_options: Any) -> AsyncIterator[tuple[LabSite, Broker, Sensors]]:
    site = LabSite(mqtt_port=free_port("127.0.30.1"))
    broker = Broker(site)
    await broker.start()
    sensors = Sensors(site, seed=7, period_s=PERIOD_S, **sensor_options)
    try:
        await sensors.start()
        yield site, broker, sensors
    finally:
        await sensors.stop()
        await broker.stop()


@contextlib.asynccontextmanager
async def watcher(site: LabSite, *topics: str, name: str = "watcher") -> AsyncIterator[MqttLink]:
    link = MqttLink(f"test-{name}", bind_address=WATCHER)
    await link.connect(site.broker, site.mqtt_port)
    try:
        await link.subscribe(*topics, qos=1)
        yield link
    finally:
        await link.close()


async def collect(link: MqttLink, seconds: float) -> list[mqtt.MQTTMessage]:
    messages = []
    deadline = asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            messages.append(await asyncio.wait_for(link.messages.get(), left))
        except TimeoutError:
            break
    return messages


async def until(
    link: MqttLink, predicate: Callable[[mqtt.MQTTMessage], bool], seconds: float
) -> mqtt.MQTTMessage:
    """The first message satisfying ``predicate`` within ``seconds``."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        left = deadline - asyncio.get_running_loop().time()
        message = await asyncio.wait_for(link.messages.get(), max(left, 0.001))
        if predicate(message):
            return message


def doc(message: mqtt.MQTTMessage) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(message.payload.decode("utf-8"))
    return parsed


def tcp_open(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((address, port)) == 0


# -- the broker -------------------------------------------------------------------------------


def test_broker_starts_on_a_free_port_and_stops_cleanly(mosquitto: Path) -> None:
    site = LabSite(mqtt_port=free_port("127.0.30.1"))
    broker = Broker(site)

    async def scenario() -> None:
        started = time.monotonic()
        await broker.start()
        assert time.monotonic() - started < 10.0  # promptly, not a speed target
        assert broker.running
        assert broker.binary is not None
        pid = broker.pid
        assert pid is not None
        client = MqttLink("probe", bind_address=WATCHER)
        await client.connect(site.broker, site.mqtt_port)
        await client.publish("lab/probe", b"hello", qos=1)
        await client.close()
        await broker.stop()
        assert not broker.running
        assert not Path(f"/proc/{pid}").exists()
        assert not tcp_open(site.broker, site.mqtt_port)
        await broker.stop()  # idempotent
        assert "New client connected from 127.0.30.250" in broker.log()

    run(scenario)


def test_broker_on_a_busy_port_fails_with_the_reason(mosquitto: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.30.1", 0))
        busy.listen()
        site = LabSite(mqtt_port=busy.getsockname()[1])
        broker = Broker(site)
        with pytest.raises(RuntimeError, match="Address already in use"):
            run(broker.start)
        assert not broker.running


def test_a_missing_mosquitto_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_module, "find_mosquitto", lambda: None)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(MosquittoMissing, match=r"apt-get install -y mosquitto"):
        broker_module.ensure_mosquitto()


# -- the stations -----------------------------------------------------------------------------


def test_every_station_publishes_plausible_samples_with_units(mosquitto: Path) -> None:
    async def scenario() -> None:
        async with city() as (site, broker, sensors), watcher(site, "city/#") as link:
            messages = await collect(link, 8 * PERIOD_S)
            history = sensors.history()
            log = broker.log()
        samples = [m for m in messages if not m.topic.endswith("/status")]
        stations = stations_for(site)
        assert [s.station_id for s in stations] == ["park-01", "road-01", "street-01"]
        for station in stations:
            # each station connects from its own address
            assert f"from {station.address}:" in log
            assert f"as {station.station_id} " in log
            mine = [
                m
                for m in samples
                if m.topic.startswith(f"city/{station.zone}/{station.station_id}/")
            ]
            by_quantity: dict[str, list[dict[str, Any]]] = {}
            for message in mine:
                payload = doc(message)
                quantity = message.topic.rsplit("/", 1)[1]
                assert payload["station"] == station.station_id
                assert payload["zone"] == station.zone
                assert payload["quantity"] == quantity
                assert payload["unit"] == QUANTITIES[quantity][0]
                assert message.qos == QUANTITIES[quantity][1]
                assert payload["time"].endswith("Z")
                sent = datetime.fromisoformat(payload["time"].replace("Z", "+00:00")).timestamp()
                assert abs(sent - time.time()) < 30
                by_quantity.setdefault(quantity, []).append(payload)
            assert set(by_quantity) == set(QUANTITIES), station.station_id
            for payload in by_quantity["noise"]:
                assert 28 <= payload["value"] <= 110
            for payload in by_quantity["light"]:
                assert 0 <= payload["value"] <= 130_000
            for quantity in ("pm2_5", "pm10", "no2", "o3"):
                for payload in by_quantity[quantity]:
                    assert 0 < payload["value"] < 400, (quantity, payload)
            pm25 = {p["seq"]: p["value"] for p in by_quantity["pm2_5"]}
            for payload in by_quantity["pm10"]:
                if payload["seq"] in pm25:
                    assert payload["value"] > pm25[payload["seq"]]
            seqs = sorted({p["seq"] for p in by_quantity["noise"]})
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        # the history holds what went on the wire
        rows = {(row["topic"], row["seq"]): row for row in history}
        for message in samples:
            payload = doc(message)
            row = rows[(message.topic, payload["seq"])]
            assert row["value"] == payload["value"]
            assert row["unit"] == payload["unit"]
            assert row["address"] in site.sensors
            assert isinstance(row["ts_us"], int)

    run(scenario)


def test_the_mqtt5_station_says_its_payload_is_json(mosquitto: Path) -> None:
    async def scenario() -> None:
        async with city() as (site, _broker, _sensors):
            link = MqttLink("test-v5", bind_address=WATCHER, version=mqtt.MQTTv5)
            await link.connect(site.broker, site.mqtt_port)
            try:
                await link.subscribe("city/centre/road-01/noise")
                message = await until(link, lambda m: True, 3.0)
            finally:
                await link.close()
        assert message.properties is not None
        assert getattr(message.properties, "ContentType", None) == "application/json"

    run(scenario)


def test_status_is_retained_and_the_will_reports_a_lost_connection(mosquitto: Path) -> None:
    async def scenario() -> None:
        async with city() as (site, _broker, sensors):
            # a client that arrives later still learns each station's state at once
            async with watcher(site, "city/+/+/status", name="late") as late:
                statuses = await collect(late, 0.5)
            retained = {m.topic: doc(m) for m in statuses if m.retain}
            for station in sensors.stations:
                status = retained[station.status_topic]
                assert status["state"] == "online"
                assert status["station"] == station.station_id

            park = sensors.station("park-01")
            async with watcher(site, park.status_topic, name="will") as link:
                await collect(link, 0.2)  # the retained online
                sensors.drop_connection("park-01")
                will = await until(link, lambda m: doc(m)["state"] == "offline", 3.0)
                assert doc(will)["reason"] == "connection lost"
                back = await until(link, lambda m: doc(m)["state"] == "online", 5.0)
                assert doc(back)["station"] == "park-01"

        # a clean stop leaves a retained offline, with no will
        site2 = LabSite(mqtt_port=free_port("127.0.30.1"))
        broker = Broker(site2)
        await broker.start()
        try:
            sensors2 = Sensors(site2, period_s=PERIOD_S)
            await sensors2.start()
            await sensors2.stop()
            async with watcher(site2, "city/+/+/status", name="after") as link:
                after = {m.topic: doc(m) for m in await collect(link, 0.5)}
            assert {s["state"] for s in after.values()} == {"offline"}
            assert {s["reason"] for s in after.values()} == {"shutdown"}
            assert len(after) == 3
        finally:
            await broker.stop()

    run(scenario)


def test_sensors_stop_promptly_when_the_broker_went_first(mosquitto: Path) -> None:
    async def scenario() -> None:
        site = LabSite(mqtt_port=free_port("127.0.30.1"))
        broker = Broker(site)
        await broker.start()
        sensors = Sensors(site, period_s=PERIOD_S)
        await sensors.start()
        await asyncio.sleep(0.3)
        await broker.stop()
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await sensors.stop()
        assert time.monotonic() - started < 10.0  # promptly, not a speed target

    run(scenario)


def test_sensors_without_a_broker_fail_fast() -> None:
    site = LabSite(mqtt_port=free_port("127.0.30.1"))
    sensors = Sensors(site, connect_timeout_s=0.5)
    with pytest.raises(ConnectionError, match=r"no MQTT broker answering on 127\.0\.30\.1"):
        run(sensors.start)


# -- the attacks ------------------------------------------------------------------------------


def test_the_scenarios_are_registered_with_ics_techniques() -> None:
    assert SCENARIOS["mqtt_rogue_publisher"].techniques == ("T0856", "T0832")
    assert SCENARIOS["mqtt_topic_discovery"].techniques == ("T0861", "T0888")
    assert {SCENARIOS[n].protocol for n in ("mqtt_rogue_publisher", "mqtt_topic_discovery")} == {
        "mqtt"
    }
    if not ATTACK_BUNDLE.exists():
        pytest.skip("ATT&CK for ICS bundle not present: ../shared/data/ics-attack.json")
    bundle = json.loads(ATTACK_BUNDLE.read_text(encoding="utf-8"))
    names = {
        ref["external_id"]: obj["name"]
        for obj in bundle["objects"]
        if obj.get("type") == "attack-pattern" and not obj.get("revoked")
        for ref in obj.get("external_references", [])
        if ref.get("source_name") == "mitre-attack"
    }
    assert names["T0856"] == "Spoof Reporting Message"
    assert names["T0832"] == "Manipulation of View"
    assert names["T0861"] == "Point & Tag Identification"
    assert names["T0888"] == "Remote System Information Discovery"


def test_rogue_publisher_messages_arrive_on_the_sensors_topics(mosquitto: Path) -> None:
    async def scenario() -> None:
        async with city() as (site, broker, _sensors), watcher(site, "city/#") as link:
            result = await publish_false_readings(site, bursts=2, gap_s=0.2)
            messages = await collect(link, 0.3)
            async with watcher(site, "city/centre/road-01/status", name="late") as late:
                status = await until(late, lambda m: True, 2.0)
            log = broker.log()
        assert result["targets"] == [site.broker]
        assert result["messages"] == 2 * 2 * len(FALSE_READINGS) + 1
        false = dict(FALSE_READINGS)
        spoofed = [
            m
            for m in messages
            if not m.topic.endswith("/status")
            and doc(m)["value"] == false[m.topic.rsplit("/", 1)[1]]
        ]
        assert {m.topic.split("/")[2] for m in spoofed} == {"park-01", "street-01"}
        assert len(spoofed) == 2 * 2 * len(FALSE_READINGS)
        noise = next(doc(m) for m in spoofed if m.topic == "city/riverside/park-01/noise")
        assert noise["value"] == 134.5
        assert noise["unit"] == "dB(A)"
        assert status.retain
        assert doc(status)["state"] == "offline"
        assert "from 127.0.66.6:" in log
        assert f"as {result['client_id']} " in log

    run(scenario)


def test_topic_discovery_maps_the_sensor_network(mosquitto: Path) -> None:
    async def scenario() -> None:
        async with city() as (site, broker, _sensors):
            await asyncio.sleep(2 * PERIOD_S)
            result = await discover_topics(site, listen_s=1.0)
            log = broker.log()
        assert result["targets"] == [site.broker]
        assert set(result["stations"]) == {"park-01", "road-01", "street-01"}
        for station in result["stations"].values():
            assert station["quantities"] == sorted(QUANTITIES)
            assert station["state"] == "online"
        assert "city/centre/road-01/no2" in result["topics"]
        assert "city/riverside/park-01/status" in result["retained_topics"]
        assert result["broker_version"].startswith("mosquitto version")
        assert result["sys_topics"] > 10
        assert "from 127.0.66.6:" in log

    run(scenario)


# -- the values -------------------------------------------------------------------------------


def day_series(
    station_id: str, day: str, hours: range, *, seed: int = 0, n: int = 40
) -> dict[int, dict[str, float]]:
    """Median of each quantity over ``n`` samples 5 s apart, at each local hour of ``day``."""
    model = CityModel(seed)
    station = next(s for s in stations_for(LabSite()) if s.station_id == station_id)
    rng = random.Random(station_id)
    tz = ZoneInfo("Europe/Paris")
    out = {}
    for hour in hours:
        start = datetime.fromisoformat(f"{day}T{hour:02d}:00:00").replace(tzinfo=tz).timestamp()
        rows = [model.observe(station, start + 5 * k, rng) for k in range(n)]
        out[hour] = {q: statistics.median(r[q] for r in rows) for q in QUANTITIES}
    return out


def test_daily_cycles_follow_the_sun_and_the_traffic() -> None:
    summer = "2025-07-16"  # a Wednesday
    road = day_series("road-01", summer, range(24))
    park = day_series("park-01", summer, range(24))
    street = day_series("street-01", summer, range(24))
    # daylight up to tens of thousands of lux, street lighting at night
    assert road[13]["light"] > 30_000
    assert 10 <= road[1]["light"] <= 25
    assert 5 <= street[23]["light"] <= 20
    # rush hours: noise and NO2 peak at 8:00, low at 3:00; the road is louder than the park
    assert road[8]["no2"] > 1.5 * road[3]["no2"]
    assert 60 <= road[8]["noise"] <= 70
    assert 35 <= street[3]["noise"] <= 47
    assert 35 <= park[3]["noise"] <= 45
    assert road[14]["noise"] > park[14]["noise"] + 10
    # ozone: an afternoon peak, lower by the road (NO titration), lowest in the morning rush
    assert park[16]["o3"] > 70
    assert park[16]["o3"] > road[16]["o3"]
    assert road[8]["o3"] < road[16]["o3"]
    # particles: traffic peaks, PM10 above PM2.5
    assert road[8]["pm2_5"] > park[8]["pm2_5"]
    for series in (road, park, street):
        for values in series.values():
            assert values["pm10"] > values["pm2_5"]


def test_winter_differs_from_summer() -> None:
    winter = day_series("park-01", "2025-01-15", range(12, 13))[12]
    summer = day_series("park-01", "2025-07-16", range(12, 13))[12]
    assert winter["light"] < summer["light"]
    assert winter["o3"] < summer["o3"]
    weekend = day_series("road-01", "2025-07-19", range(8, 9))[8]  # a Saturday
    weekday = day_series("road-01", "2025-07-16", range(8, 9))[8]
    assert weekend["noise"] < weekday["noise"]


def test_values_are_deterministic_given_the_seed() -> None:
    station = stations_for(LabSite())[1]
    t = 1_752_660_000.0
    a = CityModel(3).observe(station, t, random.Random("x"))
    b = CityModel(3).observe(station, t, random.Random("x"))
    c = CityModel(4).observe(station, t, random.Random("x"))
    assert a == b
    assert a != c
