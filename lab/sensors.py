"""Wellbeing sensor stations publishing to the city's MQTT broker (paho-mqtt 2.x clients).

Each address of ``site.sensors`` is one outdoor station, with its own MQTT client connected from
that address (paho's ``bind_address``). The stations stand in three kinds of places, assigned in
turn: a park, a main road and a residential street, in three zones (districts) of the city.

Topics and payloads
-------------------

One topic per station and quantity, so that a consumer subscribes to what it needs
(``city/+/+/noise``), a passive dissector reads the quantity from the topic alone, and one
message is one observation (the wellbeing store's row: sensor, zone, quantity, value, unit)::

    city/<zone>/<station>/<quantity>     a sample, every ``period_s`` (5 s by default)
    city/<zone>/<station>/status         retained: online (on connect, then every minute),
                                         offline (clean stop, or the broker's will when the
                                         connection is lost)

A sample's payload is UTF-8 JSON, self-describing (units in the payload)::

    {"station": "park-01", "zone": "riverside", "quantity": "noise", "value": 47.3,
     "unit": "dB(A)", "interval_s": 5, "time": "2024-05-01T10:00:05.002Z", "seq": 17}

``time`` is the end of the averaging interval (UTC, ms); ``seq`` counts the station's samples
since it started, the same on every quantity of one sample, so a gap or a jump shows lost or
injected messages. Quantities, units and QoS:

=========  ============  ===  ==========================================================
quantity   unit          QoS  what
=========  ============  ===  ==========================================================
noise      dB(A)         0    LAeq over the interval (A-weighted equivalent level)
light      lx            0    horizontal illuminance (daylight, or street lighting at night)
pm2_5      µg/m³         1    PM2.5 mass concentration (optical particle counter)
pm10       µg/m³         1    PM10 mass concentration (always above PM2.5)
no2        µg/m³         1    nitrogen dioxide (electrochemical cell)
o3         µg/m³         1    ozone
=========  ============  ===  ==========================================================

The main-road station speaks MQTT 5 (with a ``content-type: application/json`` property), the
others MQTT 3.1.1, as a fleet of several firmware generations does. Clients connect anonymously
(the broker allows it) and reconnect on their own after a lost connection.

The values
----------

:class:`CityModel` computes each sample from the wall-clock time, the place and a seed: the
sun's elevation at the city's latitude and longitude (daylight up to ~100,000 lx under a clear
sky, twilight, street lights switching on under 50 lx and dimmed after midnight), road traffic
by local hour (weekday rush hours at 8:00 and 17:30, flatter weekends) driving noise, NO2 and
particles, a shallow night-time mixing layer and a slowly varying wind that concentrate or
disperse them, a seasonal regional background (winter heating: more PM; summer sun: more O3),
afternoon ozone eaten by NO near the road (O3 falls when NO2 rises), birds at dawn in the park,
wood stoves on winter evenings in the residential street, and short loud events (sirens,
motorbikes, dogs). Weather (clouds, wind, regional background) is a smooth function of time and
seed, shared by every station; each station adds its own measurement noise from
``random.Random(f"{seed}:{station}")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from lab.base import LabSite, now_us
from lab.sun import City, solar_elevation

# -- the stations -----------------------------------------------------------------------------

#: quantity -> (unit, QoS)
QUANTITIES: dict[str, tuple[str, int]] = {
    "noise": ("dB(A)", 0),
    "light": ("lx", 0),
    "pm2_5": ("µg/m³", 1),
    "pm10": ("µg/m³", 1),
    "no2": ("µg/m³", 1),
    "o3": ("µg/m³", 1),
}
TOPIC_ROOT = "city"
FIRMWARE = "3.2.1"
MODEL = "WB-ENV-6"


@dataclass(frozen=True)
class Place:
    """What a kind of place does to the measurements."""

    kind: str
    zone: str
    #: LAeq at peak traffic, and the background without traffic, dB(A)
    noise_peak: float
    noise_background: float
    #: local traffic = city traffic ** gamma (residential streets empty more at night)
    traffic_gamma: float
    #: chance of a loud event in one interval, and its added level range, dB
    event_chance: float
    event_db: tuple[float, float]
    #: share of daylight reaching the sensor (trees, buildings), street lighting at night, lx
    light_factor: float
    street_light_lux: float
    #: local traffic contributions at peak, µg/m³
    no2_local: float
    pm25_local: float
    #: PM2.5 / PM10 ratio of the local air, and coarse road dust at peak, µg/m³
    pm_ratio: float
    pm10_road_dust: float
    #: offset from the city centre, degrees (latitude, longitude)
    offset: tuple[float, float]


PLACES: tuple[Place, ...] = (
    Place("park", "riverside", 51.0, 35.0, 1.0, 0.02, (4.0, 12.0), 0.55, 5.0, 5.0, 1.0, 0.7, 2.0, (0.004, -0.011)),
    Place("road", "centre", 66.0, 45.0, 0.9, 0.06, (6.0, 16.0), 0.85, 22.0, 45.0, 10.0, 0.6, 8.0, (0.001, 0.002)),
    Place("street", "northgate", 58.0, 37.0, 1.3, 0.03, (5.0, 13.0), 0.7, 15.0, 16.0, 3.5, 0.65, 3.0, (0.012, 0.006)),
)  # fmt: skip


@dataclass(frozen=True)
class Station:
    """One sensor station: its id, zone, address and place."""

    station_id: str
    address: str
    place: Place
    mqtt_version: MQTTProtocolVersion

    @property
    def zone(self) -> str:
        return self.place.zone

    def topic(self, quantity: str) -> str:
        """The topic of one quantity (or ``status``)."""
        return f"{TOPIC_ROOT}/{self.zone}/{self.station_id}/{quantity}"

    @property
    def status_topic(self) -> str:
        return self.topic("status")


def stations_for(site: LabSite) -> list[Station]:
    """The stations of the site: one per ``site.sensors`` address, park, road, street in turn."""
    stations = []
    for i, address in enumerate(site.sensors):
        place = PLACES[i % len(PLACES)]
        number = i // len(PLACES) + 1
        version = (
            MQTTProtocolVersion.MQTTv5 if place.kind == "road" else MQTTProtocolVersion.MQTTv311
        )
        stations.append(Station(f"{place.kind}-{number:02d}", address, place, version))
    return stations


# -- the physics ------------------------------------------------------------------------------

#: relative road traffic by local hour (0:00 ... 23:00), weekdays and weekends
WEEKDAY_TRAFFIC = (0.12, 0.07, 0.05, 0.05, 0.08, 0.20, 0.50, 0.88, 1.00, 0.78, 0.62, 0.60,
                   0.65, 0.64, 0.60, 0.66, 0.80, 0.95, 0.90, 0.66, 0.46, 0.36, 0.28, 0.19)  # fmt: skip
WEEKEND_TRAFFIC = (0.20, 0.14, 0.10, 0.07, 0.06, 0.08, 0.14, 0.25, 0.38, 0.50, 0.60, 0.66,
                   0.68, 0.65, 0.62, 0.62, 0.64, 0.66, 0.62, 0.52, 0.42, 0.36, 0.30, 0.24)  # fmt: skip


def daylight_lux(elevation: float, cloud: float) -> float:
    """Horizontal illuminance from the sky, lx: ~100,000 at a high clear sun, ~500 at sunset,
    ~3 at the end of civil twilight (-6°), nothing left after nautical twilight."""
    if elevation >= 0:
        clear = 110_000 * math.sin(math.radians(elevation)) ** 1.15 + 500
    else:
        clear = 500 * 10 ** (0.367 * elevation)
    return float(clear * (1 - 0.75 * cloud**2.5))


def traffic(local: datetime) -> float:
    """Relative road traffic (1 = weekday morning peak) at a local time."""
    profile = WEEKEND_TRAFFIC if local.weekday() >= 5 else WEEKDAY_TRAFFIC
    hour = local.hour + local.minute / 60 + local.second / 3600
    h = int(hour) % 24
    frac = hour - int(hour)
    nxt = profile[(h + 1) % 24]
    if h == 23 and local.weekday() in (4, 6):  # into the weekend, or out of it
        nxt = (WEEKDAY_TRAFFIC if local.weekday() == 6 else WEEKEND_TRAFFIC)[0]
    return profile[h] * (1 - frac) + nxt * frac


def winter(when: datetime) -> float:
    """1 in mid-January, 0 in mid-July."""
    doy = when.timetuple().tm_yday
    return (1 + math.cos(2 * math.pi * (doy - 15) / 365)) / 2


@functools.lru_cache(maxsize=4096)
def _knot(seed: str, name: str, index: int) -> float:
    return random.Random(f"{seed}:{name}:{index}").random()  # noqa: S311 (a simulation)


def smooth_noise(seed: str, name: str, t: float, period_s: float) -> float:
    """A smooth random function of time in [0, 1]: seeded knots every ``period_s``, cosine
    interpolation between them (the same for every station)."""
    x = t / period_s
    k = math.floor(x)
    w = (1 - math.cos(math.pi * (x - k))) / 2
    a, b = _knot(seed, name, k), _knot(seed, name, k + 1)
    return a + (b - a) * w


def _energy_sum(*levels: float) -> float:
    return 10 * math.log10(sum(10 ** (level / 10) for level in levels))


class CityModel:
    """The city's weather and traffic, and what each station measures in it."""

    def __init__(self, seed: int | str = 0, city: City | None = None) -> None:
        self.seed = str(seed)
        self.city = city or City()
        self._tz = self.city.tz()

    # shared fields, smooth in time
    def cloud(self, t: float) -> float:
        """Cloud cover, 0 (clear) to 1 (overcast): a weather regime per day, passing clouds."""
        s = self.seed
        return max(0.0, min(1.0, 0.55 * smooth_noise(s, "cloud-day", t, 86_400)
                           + 0.3 * smooth_noise(s, "cloud-3h", t, 10_800)
                           + 0.25 * smooth_noise(s, "cloud-40m", t, 2_400) - 0.05))  # fmt: skip

    def dispersion(self, t: float) -> float:
        """Wind: 0.7 (still air, pollution builds up) to 1.3 (windy, clean)."""
        return 0.7 + 0.6 * smooth_noise(self.seed, "wind", t, 43_200)

    def regional_pm25(self, t: float) -> float:
        """Regional PM2.5 background, µg/m³ (before seasonal and mixing effects)."""
        return (
            4.0
            + 7.0 * smooth_noise(self.seed, "pm-day", t, 86_400)
            + 3.0 * smooth_noise(self.seed, "pm-6h", t, 21_600)
        )

    def observe(self, station: Station, t: float, rng: random.Random) -> dict[str, float]:
        """What ``station`` measures over the interval ending at ``t`` (epoch seconds)."""
        p = station.place
        utc = datetime.fromtimestamp(t, UTC)
        local = utc.astimezone(self._tz)
        lat = self.city.latitude + p.offset[0]
        lon = self.city.longitude + p.offset[1]
        elev = solar_elevation(utc, lat, lon)
        sun = max(0.0, math.sin(math.radians(elev)))
        cloud = self.cloud(t)
        disp = self.dispersion(t)
        w = winter(utc)
        road = traffic(local) ** p.traffic_gamma
        # a shallow mixing layer at night and in the early morning traps what is emitted
        mixing = 0.55 + 0.45 * min(1.0, sun / 0.6)
        stagnation = 1 / (mixing * disp)

        # noise: traffic (10 log10 of the flow) over the background, birds, events
        levels = [p.noise_peak + 10 * math.log10(max(road, 0.005)), p.noise_background]
        morning = local.hour < 12
        if p.kind == "park" and morning and -8 < elev < 8:
            levels.append(47.0 - 6 * w)  # the dawn chorus, weaker in winter
        noise = _energy_sum(*levels) + rng.gauss(0, 1.2)
        if rng.random() < p.event_chance:
            noise = _energy_sum(noise, noise + rng.uniform(*p.event_db))
        noise = max(28.0, min(110.0, noise))

        # light: daylight through the trees or between buildings, street lights under 50 lx
        light = daylight_lux(elev, cloud) * p.light_factor
        if sun > 0.05:  # clouds passing in front of the sun
            light *= math.exp(rng.gauss(0, 0.04 + 0.12 * cloud))
        if light < 50:
            dimmed = 0.7 if local.hour < 5 else 1.0  # dimmed from midnight to 5:00
            light += p.street_light_lux * dimmed * math.exp(rng.gauss(0, 0.03))
        light *= math.exp(rng.gauss(0, 0.01))

        # NO2: regional background plus the road, trapped by still air
        no2_background = 14 * (1 + 0.4 * w) * stagnation**0.5
        no2 = no2_background + p.no2_local * road * stagnation**0.7
        no2 *= math.exp(rng.gauss(0, 0.08))

        # particles: regional background (more in winter), the road, wood stoves
        pm25 = self.regional_pm25(t) * (1 + 0.5 * w) * stagnation**0.5
        pm25 += p.pm25_local * road * stagnation**0.7
        if p.kind == "street":  # wood stoves, from the evening to past midnight
            evening = local.hour + local.minute / 60 + (24 if local.hour < 6 else 0)
            pm25 += 9 * w * max(0.0, 1 - abs(evening - 20.5) / 4.5) * stagnation**0.7
        pm25 *= math.exp(rng.gauss(0, 0.08))
        pm10 = pm25 / p.pm_ratio + p.pm10_road_dust * road
        pm10 *= math.exp(rng.gauss(0, 0.06))
        pm10 = max(pm10, pm25 * 1.08 + 0.3)

        # O3: made by the afternoon sun (two hours behind it), eaten by NO near traffic
        elev_2h = solar_elevation(utc - timedelta(hours=2), lat, lon)
        sun_2h = max(0.0, math.sin(math.radians(elev_2h)))
        o3 = (55 + 40 * (1 - w)) * (0.45 + 0.8 * sun_2h * (1 - 0.5 * cloud)) / stagnation**0.3
        o3 = max(2.0, o3 - 0.35 * (no2 - no2_background)) * math.exp(rng.gauss(0, 0.05))

        return {
            "noise": round(noise, 1),
            "light": _round_lux(light),
            "pm2_5": round(pm25, 1),
            "pm10": round(pm10, 1),
            "no2": round(no2, 1),
            "o3": round(o3, 1),
        }


def _round_lux(lux: float) -> float:
    if lux < 10:
        return round(lux, 2)
    if lux < 1000:
        return round(lux, 1)
    return float(round(lux))


# -- payloads ---------------------------------------------------------------------------------


def iso_time(t: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds (``2024-05-01T10:00:05.002Z``)."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as a small device sends it."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sample_payload(
    station: Station, quantity: str, value: float, t: float, seq: int, interval_s: float
) -> dict[str, Any]:
    """The JSON document of one sample."""
    return {
        "station": station.station_id,
        "zone": station.zone,
        "quantity": quantity,
        "value": value,
        "unit": QUANTITIES[quantity][0],
        "interval_s": round(interval_s, 3),
        "time": iso_time(t),
        "seq": seq,
    }


def status_payload(
    station: Station, state: str, *, city: City, t: float | None = None, **extra: Any
) -> dict[str, Any]:
    """The JSON document of a status message (``online`` or ``offline``)."""
    doc: dict[str, Any] = {"station": station.station_id, "zone": station.zone, "state": state}
    if t is not None:
        doc["time"] = iso_time(t)
    doc.update(extra)
    doc.update(
        {
            "kind": station.place.kind,
            "model": MODEL,
            "firmware": FIRMWARE,
            "lat": round(city.latitude + station.place.offset[0], 5),
            "lon": round(city.longitude + station.place.offset[1], 5),
        }
    )
    return doc


def json_properties(packet: int = PacketTypes.PUBLISH) -> Properties:
    """MQTT 5 properties saying the payload is JSON."""
    props = Properties(packet)  # type: ignore[no-untyped-call]
    props.ContentType = "application/json"
    return props


# -- a paho client driven from asyncio ----------------------------------------------------------


class MqttLink:
    """A paho-mqtt 2.x client with its network thread (``loop_start``), awaitable from asyncio.

    paho's callbacks run in its thread; they hand results to the event loop with
    ``call_soon_threadsafe``, so nothing blocks the loop. ``on_connected`` (if given) runs in
    paho's thread on every (re)connection: it may publish.
    """

    def __init__(
        self,
        client_id: str,
        *,
        bind_address: str = "",
        version: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
        on_connected: Callable[[MqttLink], None] | None = None,
        reconnect: bool = True,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.client_id = client_id
        self.bind_address = bind_address
        self.version = version
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=version,
            reconnect_on_failure=reconnect,
        )
        self.client.reconnect_delay_set(1, 8)
        self.messages: asyncio.Queue[mqtt.MQTTMessage] = asyncio.Queue()
        self.on_connected = on_connected
        self.connections = 0
        self._connected: asyncio.Future[None] = self.loop.create_future()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._closing: asyncio.Future[None] | None = None
        self._started = False
        self._closed = False
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_message = self._on_message

    # paho's thread -> the event loop
    def _call(self, fn: Callable[..., object], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self.loop.call_soon_threadsafe(fn, *args)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._call(_settle, self._connected, ConnectionRefusedError(str(reason_code)))
            return
        self.connections += 1
        if self.on_connected is not None:
            self.on_connected(self)
        self._call(_settle, self._connected, None)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._closing is not None:
            self._call(_settle, self._closing, None)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        self._call(self._done, mid, reason_code)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._call(self._done, mid, reason_codes)

    def _on_unsubscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._call(self._done, mid, reason_codes)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._call(self.messages.put_nowait, message)

    def _done(self, mid: int, result: Any) -> None:
        future = self._pending.pop(mid, None)
        if future is not None:
            _settle(future, result)

    def _track(self, mid: int) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        self._pending[mid] = future
        return future

    @property
    def connected(self) -> bool:
        return self.client.is_connected()

    async def connect(
        self, host: str, port: int, *, keepalive: int = 30, timeout: float = 2.0
    ) -> None:
        """Connect (from ``bind_address``) and start the network thread; wait for CONNACK."""
        self.client.connect_async(host, port, keepalive, bind_address=self.bind_address)
        self._started = True
        self.client.loop_start()
        try:
            await asyncio.wait_for(asyncio.shield(self._connected), timeout)
        except BaseException:
            await self.close()
            raise

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> mqtt.MQTTMessageInfo:
        """Queue a PUBLISH for paho's thread; never blocks."""
        return self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = 2.0,
    ) -> None:
        """Publish and wait until it is sent (QoS 0) or acknowledged (QoS 1 and 2)."""
        info = self.publish_nowait(topic, payload, qos, retain, properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
        if info.is_published():
            return
        future = self._track(info.mid)
        if info.is_published():  # acknowledged between the two checks
            self._pending.pop(info.mid, None)
            return
        await asyncio.wait_for(future, timeout)

    async def subscribe(self, *topics: str, qos: int = 0, timeout: float = 2.0) -> list[ReasonCode]:
        """Subscribe to topic filters and wait for the SUBACK (its reason codes)."""
        rc, mid = self.client.subscribe([(topic, qos) for topic in topics])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionError(f"subscribe failed: {mqtt.error_string(rc)}")
        result: list[ReasonCode] = await asyncio.wait_for(self._track(mid), timeout)
        return result

    async def unsubscribe(self, *topics: str, timeout: float = 2.0) -> None:
        """Unsubscribe and wait for the UNSUBACK."""
        rc, mid = self.client.unsubscribe(list(topics))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionError(f"unsubscribe failed: {mqtt.error_string(rc)}")
        await asyncio.wait_for(self._track(mid), timeout)

    def drop(self) -> None:
        """Lose the connection without DISCONNECT (a cable pulled, a crashed firmware): the
        broker publishes the will; paho reconnects after its back-off if reconnecting is on."""
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # paho's thread sees the end and closes it

    async def close(self, timeout: float = 2.0) -> None:
        """DISCONNECT cleanly (no will), stop the network thread and release the socket."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            self._closing = self.loop.create_future()
            was_connected = self.client.is_connected()
            self.client.disconnect()
            if was_connected:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing, timeout)
            await asyncio.to_thread(self.client.loop_stop)
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        if not self._connected.done():
            self._connected.cancel()


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


# -- the service ------------------------------------------------------------------------------


class Sensors:
    """The wellbeing sensor stations of the site, as one lab :class:`~lab.base.Service`."""

    name = "wellbeing-sensors"

    def __init__(
        self,
        site: LabSite,
        *,
        seed: int | str = 0,
        period_s: float = 5.0,
        status_every: int = 12,
        city: City | None = None,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self.site = site
        self.seed = seed
        self.period_s = period_s
        self.status_every = status_every
        self.city = city or City()
        self.connect_timeout_s = connect_timeout_s
        self.model = CityModel(seed, self.city)
        self.stations = stations_for(site)
        self._links: dict[str, MqttLink] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._rows: list[dict[str, Any]] = []
        self._boot = time.time()

    def station(self, station_id: str) -> Station:
        """The station with this id."""
        for station in self.stations:
            if station.station_id == station_id:
                return station
        raise KeyError(station_id)

    def _props(self, station: Station) -> Properties | None:
        return json_properties() if station.mqtt_version == MQTTProtocolVersion.MQTTv5 else None

    def _status(self, station: Station, state: str, **extra: Any) -> bytes:
        return encode(status_payload(station, state, city=self.city, t=time.time(), **extra))

    def _announce(self, station: Station, link: MqttLink) -> None:
        """(Re)connected: the retained ``online`` status (runs in paho's thread)."""
        payload = self._status(
            station, "online", uptime_s=int(time.time() - self._boot), interval_s=self.period_s
        )
        link.publish_nowait(station.status_topic, payload, 1, True, self._props(station))

    async def start(self) -> None:
        """Connect every station (from its own address) and start publishing."""
        if self._links:
            return
        self._boot = time.time()
        for station in self.stations:
            link = MqttLink(
                station.station_id,
                bind_address=station.address,
                version=station.mqtt_version,
                on_connected=functools.partial(self._announce, station),
            )
            will = status_payload(station, "offline", city=self.city, reason="connection lost")
            will_props = (
                json_properties(PacketTypes.WILLMESSAGE)
                if station.mqtt_version == MQTTProtocolVersion.MQTTv5
                else None
            )
            link.client.will_set(station.status_topic, encode(will), 1, True, will_props)
            self._links[station.station_id] = link
        try:
            await asyncio.gather(
                *(
                    link.connect(
                        self.site.broker, self.site.mqtt_port, timeout=self.connect_timeout_s
                    )
                    for link in self._links.values()
                )
            )
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, TimeoutError | OSError):
                raise ConnectionError(
                    f"sensors: no MQTT broker answering on {self.site.broker}:{self.site.mqtt_port}"
                ) from exc
            raise
        for i, station in enumerate(self.stations):
            phase = self.period_s * i / max(1, len(self.stations))
            self._tasks.append(
                asyncio.create_task(self._run(station, phase), name=station.station_id)
            )

    async def _run(self, station: Station, phase: float) -> None:
        rng = random.Random(f"{self.seed}:{station.station_id}")  # noqa: S311 (a simulation)
        link = self._links[station.station_id]
        loop = asyncio.get_running_loop()
        await asyncio.sleep(phase)
        due = loop.time()
        seq = 0
        while True:
            now = time.time()
            values = self.model.observe(station, now, rng)
            seq += 1
            if link.connected:
                self._publish(station, link, values, now, seq)
            if self.status_every and seq % self.status_every == 0 and link.connected:
                self._announce(station, link)
            due += self.period_s * (1 + rng.uniform(-0.02, 0.02))  # a device's clock drifts
            await asyncio.sleep(max(0.0, due - loop.time()))

    def _publish(
        self,
        station: Station,
        link: MqttLink,
        values: dict[str, float],
        t: float,
        seq: int,
    ) -> None:
        props = self._props(station)
        for quantity, value in values.items():
            unit, qos = QUANTITIES[quantity]
            topic = station.topic(quantity)
            payload = sample_payload(station, quantity, value, t, seq, self.period_s)
            info = link.publish_nowait(topic, encode(payload), qos, False, props)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                continue
            self._rows.append(
                {
                    "ts_us": now_us(),
                    "device": station.station_id,
                    "address": station.address,
                    "zone": station.zone,
                    "topic": topic,
                    "quantity": quantity,
                    "value": value,
                    "unit": unit,
                    "qos": qos,
                    "seq": seq,
                }
            )

    def drop_connection(self, station_id: str) -> None:
        """Simulate a network outage of one station: its TCP connection ends without DISCONNECT,
        the broker publishes its will (retained ``offline``), and the station reconnects by
        itself a second later, announcing ``online`` again."""
        self._links[station_id].drop()

    async def stop(self) -> None:
        """Stop publishing, announce ``offline`` (retained), disconnect every station."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        links, self._links = self._links, {}

        async def goodbye(station: Station, link: MqttLink) -> None:
            if link.connected:
                payload = self._status(station, "offline", reason="shutdown")
                with contextlib.suppress(ConnectionError, TimeoutError):
                    await link.publish(
                        station.status_topic, payload, 1, True, self._props(station), timeout=1.0
                    )
            await link.close()

        await asyncio.gather(
            *(goodbye(self.station(sid), link) for sid, link in links.items()),
            return_exceptions=True,
        )

    def history(self) -> list[dict[str, Any]]:
        """Every sample published: one row per message (``device`` is the station id)."""
        return list(self._rows)
