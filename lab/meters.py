"""Smart electricity meters speaking DLMS/COSEM over the TCP wrapper (IEC 62056-4-7).

Each address of ``site.meters`` is one meter: an asyncio TCP server on ``site.dlms_port`` with one
logical device (the management logical device, server wPort 1). Every APDU is decoded and
encoded with the dlms-cosem library (a client library: the server side here is ours, built on
its APDU classes): the wrapper header (version 1, source wPort, destination wPort, length),
AARQ/AARE, RLRQ/RLRE, GET (normal, with list, with block), SET, ACTION, exception responses and
the A-XDR ``Data`` values.

Associations (DLMS UA Green Book, 9.4.2)
---------------------------------------

==============================  =========  ===================  ===============================
client                          wPort/SAP  authentication       may
==============================  =========  ===================  ===============================
public client                   16         none (lowest level)  read the logical device name,
                                                                firmware, serial, clock and the
                                                                association's object list
management client (head-end)    1          LLS (password)       read everything, SET the clock,
                                                                ACTION the disconnector
==============================  =========  ===================  ===============================

Any other client SAP, a wrong password or a ciphered context gets an AARE *rejected-permanent*
with the ACSE diagnostic (authentication-failure, authentication-required ...). LLS sends the
password in clear in the AARQ (``calling-authentication-value``): whoever sees the head-end's
traffic can replay it, which is what the lab's attacks do.

COSEM objects (Blue Book class, OBIS)
-------------------------------------

==========================  =====  ================  =============================================
object                      class  OBIS              values
==========================  =====  ================  =============================================
current association         15     0.0.40.0.0.255    object_list, associated_partners_id
logical device name         1      0.0.42.0.0.255    ``LAB`` flag id + model + serial (16 octets)
device id 1 (serial)        1      0.0.96.1.0.255    serial number
active firmware identifier  1      1.0.0.2.0.255     ``V2.4.1``
clock                       8      0.0.1.0.0.255     local time (Europe/Paris), deviation, status
active energy import +A     3      1.0.1.8.0.255     Wh, double-long-unsigned, scaler 0
active energy export -A     3      1.0.2.8.0.255     Wh
active power import +P      3      1.0.1.7.0.255     W, double-long-unsigned, scaler 0
active power export -P      3      1.0.2.7.0.255     W
voltage L1                  3      1.0.32.7.0.255    V, long-unsigned, scaler -1
current L1                  3      1.0.31.7.0.255    A, long-unsigned, scaler -2
load profile 1              7      1.0.99.1.0.255    every 15 min: clock, +A, -A; range access
disconnect control          70     0.0.96.3.10.255   remote_disconnect (1), remote_reconnect (2)
==========================  =====  ================  =============================================

The disconnector works in control mode 2 (remote reconnection goes straight back to
*connected*); a disconnected meter measures 0 W and its registers stop. A SET of the clock's
``time`` moves the meter's clock: later readings and new load-profile entries carry the new time
(the backlog is not filled in), as a real meter's would.

The values
----------

Real time, no acceleration: the meter's clock is the wall clock (plus any offset a SET put on
it), and its registers integrate the simulated power over real time. So that a short run still
has history, :meth:`Meters.start` backfills the load profile for ``backfill_days`` (two by
default) by integrating the same curves over the past days. Each household's power is the sum
of a standby base (router, TV, chargers: 45-95 W), a fridge compressor cycling (85-130 W, 30-45 %
duty, 40-60 min period), an occupancy curve with a morning peak (06:30-07:30, later and wider at
weekends), a midday plateau and a broader evening peak (19:00-20:00, cooking, lighting, TV),
scaled by season (winter +22 %, summer -22 %), and appliance runs drawn per 10-min slot with a
chance that follows occupancy (kettle, hob, oven, microwave, washing machine heating, dishwasher,
hair dryer, vacuum cleaner): peaks of 2-3.5 kW, 10-13 kWh a day, ~3.5-4 MWh a year. The last
meter of the site is a prosumer with rooftop PV (4.5-8 kWp): clear-sky irradiance from the sun's
elevation at the site's latitude, longitude and date (Haurwitz), a performance ratio of 0.82 and
clouds (a daily cloudiness and passing clouds every few minutes); it exports what the house does
not use (a June day: ~25 kWh out, ~3 kWh in).
Voltage is 230 V nominal, lower at the evening peak and under load, higher under export, with
noise. Everything is a pure function of time and ``seed`` (``random.Random(f"{seed}:{address}")``
for each meter's parameters, a hashed noise for its time series), so the values are
deterministic and lazy integration gives the same energy whenever it is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

import dlms_cosem.client as _dlms_client  # type: ignore[import-untyped, unused-ignore]
import dlms_cosem.connection as _dlms_connection  # type: ignore[import-untyped, unused-ignore]
import dlms_cosem.io as _dlms_io  # type: ignore[import-untyped, unused-ignore]
import dlms_cosem.state as _dlms_state  # type: ignore[import-untyped, unused-ignore]
from dlms_cosem import cosem, dlms_data  # type: ignore[import-untyped, unused-ignore]
from dlms_cosem import enumerations as enums  # type: ignore[import-untyped, unused-ignore]
from dlms_cosem import time as dlms_time  # type: ignore[import-untyped, unused-ignore]
from dlms_cosem.connection import (  # type: ignore[import-untyped, unused-ignore]
    XDlmsApduFactory,
)
from dlms_cosem.cosem.selective_access import (  # type: ignore[import-untyped, unused-ignore]
    RangeDescriptor,
)
from dlms_cosem.protocol import acse, xdlms  # type: ignore[import-untyped, unused-ignore]
from dlms_cosem.protocol.wrappers import (  # type: ignore[import-untyped, unused-ignore]
    WrapperHeader,
    WrapperProtocolDataUnit,
)

from lab.base import LabSite, cancel_and_wait, now_us
from lab.sun import City, sun_sin_elevation

log = logging.getLogger(__name__)

# --- addressing (IEC 62056-4-7 wrapper ports, Green Book reserved SAPs) -----------------------

#: client SAPs (source wPort of the requests)
MANAGEMENT_CLIENT = 1
PUBLIC_CLIENT = 16
#: the meter's only logical device (destination wPort of the requests)
LOGICAL_DEVICE = 1
WRAPPER_VERSION = 1
#: the management client's LLS password (what the head-end sends, in clear, in every AARQ)
MANAGEMENT_PASSWORD = b"7Rk2pW9q"
#: the largest APDU the meter receives and sends; a longer GET response goes in blocks
MAX_PDU = 1024
#: a connection with no request for this long is closed (TCP-UDP setup inactivity_time_out)
INACTIVITY_S = 120.0

# --- OBIS codes ----------------------------------------------------------------------------

ASSOCIATION = "0.0.40.0.0.255"
LOGICAL_DEVICE_NAME = "0.0.42.0.0.255"
SERIAL_NUMBER = "0.0.96.1.0.255"
FIRMWARE = "1.0.0.2.0.255"
CLOCK = "0.0.1.0.0.255"
ENERGY_IMPORT = "1.0.1.8.0.255"
ENERGY_EXPORT = "1.0.2.8.0.255"
POWER_IMPORT = "1.0.1.7.0.255"
POWER_EXPORT = "1.0.2.7.0.255"
VOLTAGE_L1 = "1.0.32.7.0.255"
CURRENT_L1 = "1.0.31.7.0.255"
LOAD_PROFILE = "1.0.99.1.0.255"
DISCONNECT_CONTROL = "0.0.96.3.10.255"

#: Blue Book unit enumeration (scaler_unit)
UNIT_W = 27
UNIT_WH = 30
UNIT_A = 33
UNIT_V = 35

#: disconnect control states (Blue Book class 70, control_state)
DISCONNECTED = 0
CONNECTED = 1
READY_FOR_RECONNECTION = 2
CONTROL_MODE = 2

CAPTURE_PERIOD_S = 900
PROFILE_ENTRIES = 2880  # 30 days of quarter-hours
INTEGRATION_STEP_S = 30.0


def obis(code: str) -> Any:
    """The library's OBIS object for ``a.b.c.d.e.f``."""
    return cosem.Obis(*(int(part) for part in code.split(".")))


def obis_text(value: Any) -> str:
    """``a.b.c.d.e.f`` of a library OBIS object."""
    return str(value.to_string(separator="."))


def quiet_library_logs() -> None:
    """dlms-cosem logs every APDU at info/debug level through structlog's default printer, which
    writes to stdout: a lab run would print thousands of lines. It logs nothing above info, so
    its module loggers are replaced by a silent one (process-wide, dlms-cosem only)."""

    class _Silent:
        def debug(self, *args: Any, **kwargs: Any) -> None:
            return None

        info = debug

    for module in (_dlms_client, _dlms_connection, _dlms_io, _dlms_state):
        module.LOG = _Silent()


quiet_library_logs()


# --- library gaps (dlms-cosem 25.1), kept small and named after the spec ------------------


class GetResponseNormal(xdlms.GetResponseNormal):  # type: ignore[misc]
    """Get-Response-Normal ::= SEQUENCE {invoke-id-and-priority, result Get-Data-Result}.

    dlms-cosem 25.1's ``to_bytes`` appends the invoke-id byte string to a bytearray
    (``TypeError``); this is the same encoding with ``extend``."""

    def to_bytes(self) -> bytes:
        out = bytearray((self.TAG, self.RESPONSE_TYPE))
        out.extend(self.invoke_id_and_priority.to_bytes())
        out.append(0)  # Get-Data-Result: data
        out.extend(self.data)
        return bytes(out)


class BooleanData(dlms_data.BooleanData):  # type: ignore[misc]
    """A-XDR boolean (Data tag 3, one octet: 0 false, non-zero true); dlms-cosem 25.1 decodes it
    but has no encoder (``value_to_bytes`` raises ``NotImplementedError``)."""

    def value_to_bytes(self) -> bytes:
        return b"\x01" if self.value else b"\x00"


class NullData(dlms_data.NullData):  # type: ignore[misc]
    """A-XDR null-data (Data tag 0, no content); dlms-cosem 25.1 decodes it but cannot encode it
    (``value_to_bytes`` raises ``NotImplementedError``)."""

    def to_bytes(self) -> bytes:
        return b"\x00"


# --- where and when ------------------------------------------------------------------------


def clear_sky_ghi(sin_elevation: float) -> float:
    """Global horizontal irradiance under a clear sky, W/m² (Haurwitz 1945)."""
    if sin_elevation <= 0.01:
        return 0.0
    return 1098.0 * sin_elevation * math.exp(-0.057 / sin_elevation)


# --- deterministic noise: a pure function of (seed, stream, index) ----------------------------

_MASK = (1 << 64) - 1
_TWO_64 = float(1 << 64)


def _mix(x: int) -> int:
    """splitmix64's finaliser."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def uniform(seed: int, stream: int, index: int) -> float:
    """A uniform number in [0, 1), the same for the same arguments."""
    return _mix(_mix((seed * 1_000_003 + stream) & _MASK) ^ (index & _MASK)) / _TWO_64


def smooth(seed: int, stream: int, t: float, period: float) -> float:
    """Smooth noise in [0, 1): cosine interpolation of :func:`uniform` knots ``period`` apart."""
    k = math.floor(t / period)
    frac = t / period - k
    w = (1 - math.cos(math.pi * frac)) / 2
    return uniform(seed, stream, k) * (1 - w) + uniform(seed, stream, k + 1) * w


# --- the load curves -----------------------------------------------------------------------

#: (name, power W, minutes) of appliance runs
APPLIANCES: tuple[tuple[str, float, float], ...] = (
    ("kettle", 2000.0, 3.0),
    ("microwave", 1150.0, 4.0),
    ("hob", 1500.0, 9.0),
    ("oven", 2200.0, 9.5),
    ("washing machine heating", 2000.0, 9.0),
    ("dishwasher heating", 1800.0, 9.0),
    ("hair dryer", 1600.0, 6.0),
    ("vacuum cleaner", 800.0, 9.0),
)
APPLIANCE_SLOT_S = 600.0


def _bell(hour: float, centre: float, width: float) -> float:
    """A Gaussian bump on the 24-hour circle."""
    d = (hour - centre + 12.0) % 24.0 - 12.0
    return math.exp(-0.5 * (d / width) ** 2)


@dataclass(frozen=True)
class Household:
    """One household's consumption: standby, fridge, occupancy peaks and appliance runs."""

    noise_seed: int
    scale: float
    standby_w: float
    fridge_w: float
    fridge_period_s: float
    fridge_duty: float
    fridge_phase: float
    morning_h: float
    evening_h: float
    midday_w: float

    @classmethod
    def draw(cls, rng: random.Random) -> Household:
        """A household with parameters drawn from ``rng``."""
        return cls(
            noise_seed=rng.getrandbits(62),
            scale=rng.uniform(0.75, 1.3),
            standby_w=rng.uniform(45.0, 95.0),
            fridge_w=rng.uniform(85.0, 130.0),
            fridge_period_s=rng.uniform(2400.0, 3600.0),
            fridge_duty=rng.uniform(0.30, 0.45),
            fridge_phase=rng.random(),
            morning_h=rng.uniform(6.5, 7.5),
            evening_h=rng.uniform(19.0, 20.0),
            midday_w=rng.uniform(80.0, 300.0),
        )

    def occupancy_w(self, hour: float, weekend: bool, doy: int) -> float:
        """Mean power of what people switch on at this local hour (lights, cooking, TV)."""
        if weekend:
            morning = 380.0 * _bell(hour, self.morning_h + 1.4, 1.1)
            midday = 2.0 * self.midday_w * _bell(hour, 13.0, 1.8)
        else:
            morning = 400.0 * _bell(hour, self.morning_h, 0.8)
            midday = self.midday_w * _bell(hour, 13.0, 1.6)
        evening = 650.0 * _bell(hour, self.evening_h, 1.7)
        season = 1.0 + 0.22 * math.cos(2 * math.pi * (doy - 10) / 365.25)
        return self.scale * season * (morning + midday + evening)

    def power_w(self, t: float, local: datetime) -> float:
        """Consumption at unix time ``t`` (``local``: the same instant in local time), W."""
        s = self.noise_seed
        hour = local.hour + local.minute / 60 + local.second / 3600
        active = self.occupancy_w(hour, local.weekday() >= 5, local.timetuple().tm_yday)
        active *= 0.8 + 0.4 * smooth(s, 1, t, 300.0)
        cycle = (t / self.fridge_period_s + self.fridge_phase) % 1.0
        fridge = self.fridge_w if cycle < self.fridge_duty else 0.0
        power = self.standby_w + fridge + active
        slot = math.floor(t / APPLIANCE_SLOT_S)
        if uniform(s, 3, slot) < min(0.4, 0.015 + active / 2800.0):
            _name, watts, minutes = APPLIANCES[int(uniform(s, 4, slot) * len(APPLIANCES))]
            duration = minutes * 60.0
            start = slot * APPLIANCE_SLOT_S + uniform(s, 5, slot) * (APPLIANCE_SLOT_S - duration)
            if start <= t < start + duration:
                power += watts * (0.95 + 0.1 * uniform(s, 6, slot))
        return power * (0.97 + 0.06 * smooth(s, 2, t, 15.0))


@dataclass(frozen=True)
class RooftopPv:
    """A rooftop PV system: clear-sky irradiance, performance ratio and clouds."""

    noise_seed: int
    kwp: float
    latitude: float
    longitude: float
    performance_ratio: float = 0.82

    def power_w(self, t: float, local: datetime) -> float:
        """AC output at unix time ``t``, W."""
        ghi = clear_sky_ghi(sun_sin_elevation(t, self.latitude, self.longitude))
        if ghi <= 0.0:
            return 0.0
        s = self.noise_seed
        day = local.toordinal()
        cloudiness = 0.9 * math.pow(uniform(s, 10, day), 1.5)  # most days fairly clear
        passing = smooth(s, 11, t, 240.0)
        shade = min(1.0, max(0.0, (passing - (1.0 - cloudiness)) / 0.12))
        transmittance = (1.0 - 0.72 * shade) * (0.96 + 0.04 * smooth(s, 12, t, 20.0))
        return self.kwp * ghi * self.performance_ratio * transmittance


# --- one meter's metrology -----------------------------------------------------------------


@dataclass
class ProfileEntry:
    """One load-profile capture: the meter's clock (unix seconds) and its registers, Wh."""

    meter_time: float
    import_wh: int
    export_wh: int


@dataclass
class MeterModel:
    """The measuring part of a meter: its power, registers, clock, disconnector and profile."""

    address: str
    serial: str
    kind: str  # "household" or "prosumer"
    household: Household
    pv: RooftopPv | None
    tz: tzinfo
    energy_import_wh: float
    energy_export_wh: float
    voltage_offset_v: float
    last_t: float
    clock_offset_s: float = 0.0
    control_state: int = CONNECTED
    profile: deque[ProfileEntry] = field(default_factory=lambda: deque(maxlen=PROFILE_ENTRIES))
    next_capture: float = 0.0  # meter time of the next capture
    _last_sample: tuple[float, float, float] | None = None

    @property
    def ldn(self) -> bytes:
        """The logical device name: FLAG id, model, serial (16 octets)."""
        model = "PV" if self.kind == "prosumer" else "SM"
        return f"LAB{model}1{self.serial}".encode("ascii")

    @property
    def connected(self) -> bool:
        """Whether the disconnector lets power through (output_state)."""
        return self.control_state == CONNECTED

    def demand(self, t: float) -> tuple[float, float]:
        """What the premises would draw and inject at ``t`` if connected: (import W, export W)."""
        local = datetime.fromtimestamp(t, self.tz)
        load = self.household.power_w(t, local)
        pv = self.pv.power_w(t, local) if self.pv is not None else 0.0
        return max(0.0, load - pv), max(0.0, pv - load)

    def power(self, t: float) -> tuple[float, float]:
        """Measured (import W, export W): nothing flows through an open disconnector."""
        if not self.connected:
            return 0.0, 0.0
        return self.demand(t)

    def voltage_v(self, t: float, import_w: float, export_w: float) -> float:
        """Voltage L1: the feeder sags at the evening peak and under load, rises under export."""
        local = datetime.fromtimestamp(t, self.tz)
        hour = local.hour + local.minute / 60
        v = 232.5 + self.voltage_offset_v - 3.5 * _bell(hour, 19.5, 2.0) + 1.0 * _bell(hour, 4, 2)
        v += -0.0012 * import_w + 0.0016 * export_w
        v += 1.6 * (smooth(self.household.noise_seed, 20, t, 45.0) - 0.5)
        return min(253.0, max(207.0, v))

    def meter_time(self, t: float) -> float:
        """The meter's clock at true time ``t`` (unix seconds)."""
        return t + self.clock_offset_s

    def _sample(self, t: float) -> tuple[float, float]:
        if self._last_sample is not None and self._last_sample[0] == t:
            return self._last_sample[1], self._last_sample[2]
        imp, exp = self.power(t)
        self._last_sample = (t, imp, exp)
        return imp, exp

    def _integrate(self, t1: float) -> None:
        """Trapezoidal integration of the measured power from ``last_t`` to ``t1``."""
        t0 = self.last_t
        if t1 <= t0:
            return
        steps = max(1, math.ceil((t1 - t0) / INTEGRATION_STEP_S))
        dt = (t1 - t0) / steps
        imp0, exp0 = self._sample(t0)
        for i in range(1, steps + 1):
            tb = t0 + i * dt
            imp1, exp1 = self._sample(tb)
            self.energy_import_wh += (imp0 + imp1) / 2 * dt / 3600.0
            self.energy_export_wh += (exp0 + exp1) / 2 * dt / 3600.0
            imp0, exp0 = imp1, exp1
        self.last_t = t1

    def advance(self, t: float) -> None:
        """Bring the registers and the load profile up to true time ``t``."""
        while True:
            due = self.next_capture - self.clock_offset_s  # true time of the next capture
            if due > t:
                break
            self._integrate(max(due, self.last_t))
            self.profile.append(
                ProfileEntry(
                    self.next_capture, int(self.energy_import_wh), int(self.energy_export_wh)
                )
            )
            self.next_capture += CAPTURE_PERIOD_S
        self._integrate(t)

    def set_clock(self, t: float, new_meter_time: float) -> None:
        """A SET of the clock: the meter's time is now ``new_meter_time``."""
        self.advance(t)
        self.clock_offset_s = new_meter_time - t
        self.next_capture = (math.floor(new_meter_time / CAPTURE_PERIOD_S) + 1) * CAPTURE_PERIOD_S

    def switch(self, t: float, state: int) -> None:
        """Move the disconnector (registers integrated up to the switching instant)."""
        self.advance(t)
        self.control_state = state
        self._last_sample = None

    def reading(self, t: float) -> dict[str, Any]:
        """What the meter shows at ``t`` (its registers brought up to date)."""
        self.advance(t)
        imp, exp = self.power(t)
        return {
            "meter_type": self.kind,
            "import_w": round(imp),
            "export_w": round(exp),
            "energy_import_wh": int(self.energy_import_wh),
            "energy_export_wh": int(self.energy_export_wh),
            "voltage_v": round(self.voltage_v(t, imp, exp), 1),
            "connected": self.connected,
            "control_state": self.control_state,
            "clock_offset_s": round(self.clock_offset_s, 3),
        }


def build_model(
    address: str, index: int, seed: int, prosumer: bool, location: City, start: float
) -> MeterModel:
    """A meter's model with its parameters drawn from ``random.Random(f"{seed}:{address}")``."""
    rng = random.Random(f"{seed}:{address}")  # noqa: S311 (a simulation, not cryptography)
    household = Household.draw(rng)
    years = rng.uniform(1.5, 6.0)  # since the meter was installed
    annual_wh = 3.4e6 * household.scale
    pv = None
    export_wh = 0.0
    if prosumer:
        pv = RooftopPv(
            rng.getrandbits(62), rng.uniform(4.5, 8.0), location.latitude, location.longitude
        )
        export_wh = pv.kwp * 1.05e6 * 0.6 * years  # ~1050 kWh/kWp a year, 60 % exported
        annual_wh *= 0.65
    serial = f"{rng.randrange(10**8):08d}{index + 1:02d}"
    return MeterModel(
        address=address,
        serial=serial,
        kind="prosumer" if prosumer else "household",
        household=household,
        pv=pv,
        tz=location.tz(),
        energy_import_wh=annual_wh * years,
        energy_export_wh=export_wh,
        voltage_offset_v=rng.uniform(-2.0, 2.0),
        last_t=start,
        next_capture=(math.floor(start / CAPTURE_PERIOD_S) + 1) * CAPTURE_PERIOD_S,
    )


# --- the COSEM object model ----------------------------------------------------------------

Getter = Callable[[Any], Any]  # access selection (or None) -> library Data, or a DataAccessResult
Setter = Callable[[Any, "Association"], Any]  # Data, association -> DataAccessResult
Method = Callable[[Any, "Association"], Any]  # parameters (or None), association -> Action-Result


@dataclass
class CosemObject:
    """One COSEM object: class, logical name, readable attributes, writable ones, methods."""

    class_id: int
    logical_name: str
    version: int
    attributes: dict[int, Getter]
    public: frozenset[int] = frozenset()  # attributes the public client may read
    setters: dict[int, Setter] = field(default_factory=dict)
    methods: dict[int, Method] = field(default_factory=dict)


@dataclass
class Association:
    """One connection's application association (and its pending GET block transfer)."""

    peer: str
    client_sap: int
    mechanism: str  # "none" or "lls"
    max_send_pdu: int
    blocks: list[bytes] = field(default_factory=list)
    block_number: int = 0
    invoke: Any = None

    @property
    def management(self) -> bool:
        """The management client: full access."""
        return self.client_sap == MANAGEMENT_CLIENT


def _octets(value: bytes) -> Any:
    return dlms_data.OctetStringData(value)


def _scaler_unit(scaler: int, unit: int) -> Any:
    return dlms_data.DataStructure([dlms_data.IntegerData(scaler), dlms_data.EnumData(unit)])


def _exception(state: Any, service: str) -> bytes:
    """An EXCEPTION-Response APDU (state error, service error)."""
    return bytes(xdlms.ExceptionResponse(state, enums.ServiceException[service]).to_bytes())


def _capture_object(class_id: int, code: str, attribute: int) -> Any:
    return dlms_data.DataStructure(
        [
            dlms_data.UnsignedLongData(class_id),
            _octets(obis(code).to_bytes()),
            dlms_data.IntegerData(attribute),
            dlms_data.UnsignedLongData(0),
        ]
    )


class SmartMeter:
    """One meter: a DLMS/COSEM server on ``(address, port)`` in front of a :class:`MeterModel`.

    A :class:`lab.base.Service` on its own; :class:`Meters` runs the site's meters together.
    """

    def __init__(
        self,
        model: MeterModel,
        port: int,
        *,
        clock: Callable[[], float] = time.time,
        password: bytes = MANAGEMENT_PASSWORD,
    ) -> None:
        self.model = model
        self.address = model.address
        self.port = port
        self.name = f"meter {model.address}"
        self._clock = clock
        self._password = password
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._events: list[dict[str, Any]] = []
        self.objects = self._build_objects()

    # -- Service --------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the meter's address and port."""
        self._server = await asyncio.start_server(self._serve, self.address, self.port)

    async def stop(self) -> None:
        """Close the listening socket and every open connection (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.close()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=2.0)

    def history(self) -> list[dict[str, Any]]:
        """The meter's events (disconnector moves, clock changes, associations refused)."""
        return list(self._events)

    def now(self) -> float:
        """True time (the injected clock)."""
        return self._clock()

    def event(self, event: str, assoc: Association | None, **values: Any) -> None:
        """Record what was done to the meter and by whom (ground truth for values.json)."""
        row: dict[str, Any] = {"ts_us": now_us(), "device": self.address, "kind": "event"}
        row["event"] = event
        if assoc is not None:
            row["client"] = assoc.peer
            row["client_sap"] = assoc.client_sap
        row.update(values)
        self._events.append(row)

    # -- the object model -----------------------------------------------------------------

    def _build_objects(self) -> dict[str, CosemObject]:
        m = self.model
        ln = _octets  # logical_name attribute helper

        def reading(fn: Callable[[float, float, float], Any]) -> Getter:
            def get(_selection: Any) -> Any:
                t = self.now()
                m.advance(t)
                imp, exp = m.power(t)
                return fn(t, imp, exp)

            return get

        def energy(attr: str) -> Getter:
            def get(_selection: Any) -> Any:
                m.advance(self.now())
                return dlms_data.DoubleLongUnsignedData(int(getattr(m, attr)) & 0xFFFFFFFF)

            return get

        def register(code: str, value: Getter, scaler: int, unit: int) -> CosemObject:
            return CosemObject(
                3,
                code,
                0,
                {
                    1: lambda _s: ln(obis(code).to_bytes()),
                    2: value,
                    3: lambda _s: _scaler_unit(scaler, unit),
                },
            )

        def data(code: str, value: bytes, public: bool) -> CosemObject:
            return CosemObject(
                1,
                code,
                0,
                {1: lambda _s: ln(obis(code).to_bytes()), 2: lambda _s: _octets(value)},
                frozenset({1, 2}) if public else frozenset(),
            )

        objects = [
            CosemObject(
                15,
                ASSOCIATION,
                1,
                {1: lambda _s: ln(obis(ASSOCIATION).to_bytes())},  # 2, 3, 8 per association
                frozenset({1, 2, 3, 8}),
            ),
            data(LOGICAL_DEVICE_NAME, m.ldn, public=True),
            data(SERIAL_NUMBER, m.serial.encode("ascii"), public=True),
            data(FIRMWARE, b"V2.4.1", public=True),
            CosemObject(
                8,
                CLOCK,
                0,
                {
                    1: lambda _s: ln(obis(CLOCK).to_bytes()),
                    2: lambda _s: _octets(self.clock_bytes()),
                    3: lambda _s: dlms_data.LongData(-self._standard_offset_min()),
                    4: lambda _s: dlms_data.UnsignedIntegerData(0),
                    8: lambda _s: BooleanData(True),
                    9: lambda _s: dlms_data.EnumData(1),  # clock_base: internal crystal
                },
                frozenset({1, 2, 3, 4}),
                setters={2: self._set_clock},
            ),
            register(ENERGY_IMPORT, energy("energy_import_wh"), 0, UNIT_WH),
            register(ENERGY_EXPORT, energy("energy_export_wh"), 0, UNIT_WH),
            register(
                POWER_IMPORT,
                reading(lambda _t, imp, _e: dlms_data.DoubleLongUnsignedData(round(imp))),
                0,
                UNIT_W,
            ),
            register(
                POWER_EXPORT,
                reading(lambda _t, _i, exp: dlms_data.DoubleLongUnsignedData(round(exp))),
                0,
                UNIT_W,
            ),
            register(
                VOLTAGE_L1,
                reading(
                    lambda t, imp, exp: dlms_data.UnsignedLongData(
                        round(m.voltage_v(t, imp, exp) * 10)
                    )
                ),
                -1,
                UNIT_V,
            ),
            register(
                CURRENT_L1,
                reading(
                    lambda t, imp, exp: dlms_data.UnsignedLongData(
                        round((imp + exp) / m.voltage_v(t, imp, exp) * 100)
                    )
                ),
                -2,
                UNIT_A,
            ),
            CosemObject(
                7,
                LOAD_PROFILE,
                1,
                {
                    1: lambda _s: ln(obis(LOAD_PROFILE).to_bytes()),
                    2: self._profile_buffer,
                    3: lambda _s: dlms_data.DataArray(
                        [
                            _capture_object(8, CLOCK, 2),
                            _capture_object(3, ENERGY_IMPORT, 2),
                            _capture_object(3, ENERGY_EXPORT, 2),
                        ]
                    ),
                    4: lambda _s: dlms_data.DoubleLongUnsignedData(CAPTURE_PERIOD_S),
                    5: lambda _s: dlms_data.EnumData(1),  # sort_method: fifo
                    6: lambda _s: _capture_object(0, "0.0.0.0.0.0", 0),  # no sort object
                    7: lambda _s: dlms_data.DoubleLongUnsignedData(len(m.profile)),
                    8: lambda _s: dlms_data.DoubleLongUnsignedData(PROFILE_ENTRIES),
                },
            ),
            CosemObject(
                70,
                DISCONNECT_CONTROL,
                0,
                {
                    1: lambda _s: ln(obis(DISCONNECT_CONTROL).to_bytes()),
                    2: lambda _s: BooleanData(m.connected),
                    3: lambda _s: dlms_data.EnumData(m.control_state),
                    4: lambda _s: dlms_data.EnumData(CONTROL_MODE),
                },
                methods={1: self._remote_disconnect, 2: self._remote_reconnect},
            ),
        ]
        return {obj.logical_name: obj for obj in objects}

    def _standard_offset_min(self) -> int:
        """The zone's normal-time (winter) offset from UTC, minutes."""
        january = datetime(datetime.now(UTC).year, 1, 15, tzinfo=self.model.tz)
        offset = january.utcoffset()
        return int(offset.total_seconds() // 60) if offset is not None else 0

    def local_meter_time(self) -> datetime:
        """The meter's clock as a local, aware datetime."""
        return datetime.fromtimestamp(self.model.meter_time(self.now()), self.model.tz)

    def clock_bytes(self) -> bytes:
        """Clock ``time`` (octet-string(12): date, time, deviation, clock status)."""
        local = self.local_meter_time()
        status = dlms_time.ClockStatus(daylight_saving_active=bool(local.dst()))
        return bytes(dlms_time.datetime_to_bytes(local, status))

    def _set_clock(self, value: Any, assoc: Association) -> Any:
        raw = (
            value.value
            if isinstance(value, dlms_data.OctetStringData | dlms_data.DateTimeData)
            else None
        )
        if isinstance(raw, tuple):  # DateTimeData decodes to (datetime, status)
            when = raw[0]
        elif isinstance(raw, bytes | bytearray) and len(raw) == 12:
            try:
                when, _status = dlms_time.datetime_from_bytes(bytes(raw))
            except ValueError:
                return enums.DataAccessResult.OTHER_REASON
        else:
            return enums.DataAccessResult.TYPE_UNMATCHED
        if when.tzinfo is None:  # deviation not specified: the meter's local time
            when = when.replace(tzinfo=self.model.tz)
        before = self.local_meter_time()
        self.model.set_clock(self.now(), when.timestamp())
        self.event(
            "clock_set",
            assoc,
            old_time=before.isoformat(),
            new_time=self.local_meter_time().isoformat(),
            clock_offset_s=round(self.model.clock_offset_s, 3),
        )
        return enums.DataAccessResult.SUCCESS

    def _remote_disconnect(self, _params: Any, assoc: Association) -> Any:
        before = self.model.control_state
        if before != DISCONNECTED:  # transitions b (connected) and c (ready for reconnection)
            self.model.switch(self.now(), DISCONNECTED)
        self.event("remote_disconnect", assoc, control_state_before=before, control_state=0)
        return enums.ActionResultStatus.SUCCESS

    def _remote_reconnect(self, _params: Any, assoc: Association) -> Any:
        before = self.model.control_state
        if before != CONNECTED:  # control mode 2: transition a, straight to connected
            self.model.switch(self.now(), CONNECTED)
        self.event("remote_reconnect", assoc, control_state_before=before, control_state=1)
        return enums.ActionResultStatus.SUCCESS

    def _profile_buffer(self, selection: Any) -> Any:
        m = self.model
        m.advance(self.now())
        entries = list(m.profile)
        if selection is not None:
            if not isinstance(selection, RangeDescriptor):
                return enums.DataAccessResult.OTHER_REASON
            restricting = selection.restricting_object.cosem_attribute
            if int(restricting.interface) != 8 or obis_text(restricting.instance) != CLOCK:
                return enums.DataAccessResult.OTHER_REASON

            def bound(when: datetime) -> float:
                aware = when if when.tzinfo is not None else when.replace(tzinfo=m.tz)
                return aware.timestamp()

            low, high = bound(selection.from_value), bound(selection.to_value)
            entries = [e for e in entries if low <= e.meter_time <= high]
        rows = []
        for entry in entries:
            local = datetime.fromtimestamp(entry.meter_time, m.tz)
            status = dlms_time.ClockStatus(daylight_saving_active=bool(local.dst()))
            rows.append(
                dlms_data.DataStructure(
                    [
                        _octets(bytes(dlms_time.datetime_to_bytes(local, status))),
                        dlms_data.DoubleLongUnsignedData(entry.import_wh & 0xFFFFFFFF),
                        dlms_data.DoubleLongUnsignedData(entry.export_wh & 0xFFFFFFFF),
                    ]
                )
            )
        return dlms_data.DataArray(rows)

    def _association_attribute(self, attribute: int, assoc: Association) -> Any:
        if attribute == 2:  # object_list, with this association's access rights
            elements = []
            for obj in self.objects.values():
                readable = set(obj.attributes) | ({2, 3, 8} if obj.class_id == 15 else set())
                attrs = []
                for attr_id in sorted(readable):
                    mode = 0
                    if assoc.management or attr_id in obj.public:
                        mode = 3 if (assoc.management and attr_id in obj.setters) else 1
                    attrs.append(
                        dlms_data.DataStructure(
                            [
                                dlms_data.IntegerData(attr_id),
                                dlms_data.EnumData(mode),
                                NullData(None),
                            ]
                        )
                    )
                methods = [
                    dlms_data.DataStructure(
                        [
                            dlms_data.IntegerData(method_id),
                            dlms_data.EnumData(1 if assoc.management else 0),
                        ]
                    )
                    for method_id in sorted(obj.methods)
                ]
                elements.append(
                    dlms_data.DataStructure(
                        [
                            dlms_data.UnsignedLongData(obj.class_id),
                            dlms_data.UnsignedIntegerData(obj.version),
                            _octets(obis(obj.logical_name).to_bytes()),
                            dlms_data.DataStructure(
                                [dlms_data.DataArray(attrs), dlms_data.DataArray(methods)]
                            ),
                        ]
                    )
                )
            return dlms_data.DataArray(elements)
        if attribute == 3:  # associated_partners_id
            return dlms_data.DataStructure(
                [dlms_data.IntegerData(assoc.client_sap), dlms_data.UnsignedLongData(1)]
            )
        if attribute == 8:  # association_status: associated
            return dlms_data.EnumData(2)
        return None

    # -- services -------------------------------------------------------------------------

    def _lookup(self, descriptor: Any) -> tuple[CosemObject | None, Any]:
        """The object a Cosem-Attribute/Method-Descriptor names, or the access error."""
        obj = self.objects.get(obis_text(descriptor.instance))
        if obj is None:
            return None, enums.DataAccessResult.OBJECT_UNDEFINED
        if int(descriptor.interface) != obj.class_id:
            return None, enums.DataAccessResult.OBJECT_CLASS_INCONSISTENT
        return obj, None

    def read(self, attribute: Any, selection: Any, assoc: Association) -> Any:
        """GET one attribute: library Data, or a DataAccessResult."""
        obj, error = self._lookup(attribute)
        if obj is None:
            return error
        attr_id = int(attribute.attribute)
        if not (assoc.management or attr_id in obj.public):
            return enums.DataAccessResult.READ_WRITE_DENIED
        if obj.class_id == 15 and attr_id in (2, 3, 8):
            return self._association_attribute(attr_id, assoc)
        getter = obj.attributes.get(attr_id)
        if getter is None:
            return enums.DataAccessResult.OBJECT_UNDEFINED
        if selection is not None and not (obj.class_id == 7 and attr_id == 2):
            return enums.DataAccessResult.OTHER_REASON  # no selective access on this one
        return getter(selection)

    def write(self, attribute: Any, raw: bytes, assoc: Association) -> Any:
        """SET one attribute: a DataAccessResult."""
        obj, error = self._lookup(attribute)
        if obj is None:
            return error
        attr_id = int(attribute.attribute)
        setter = obj.setters.get(attr_id)
        if not assoc.management or setter is None:
            return enums.DataAccessResult.READ_WRITE_DENIED
        try:
            value = dlms_data.DlmsDataParser().parse(bytes(raw), limit=1)[0]
        except Exception:
            return enums.DataAccessResult.TYPE_UNMATCHED
        return setter(value, assoc)

    def invoke(self, method: Any, raw: bytes | None, assoc: Association) -> Any:
        """ACTION one method: an Action-Result."""
        obj, error = self._lookup(method)
        if obj is None:
            return enums.ActionResultStatus(int(error))
        handler = obj.methods.get(int(method.method))
        if not assoc.management or handler is None:
            return enums.ActionResultStatus.READ_WRITE_DENIED
        params = None
        if raw:
            with contextlib.suppress(Exception):
                params = dlms_data.DlmsDataParser().parse(bytes(raw), limit=1)[0]
        return handler(params, assoc)

    # -- the association layer ------------------------------------------------------------

    def associate(self, client_sap: int, peer: str, aarq: Any) -> tuple[Any, Association | None]:
        """An AARQ: the AARE to send, and the association when accepted."""
        diag = enums.AcseServiceUserDiagnostics
        mechanism = aarq.authentication
        content: Any = aarq.user_information.content if aarq.user_information else None
        reason = None
        if aarq.ciphered or not isinstance(content, xdlms.InitiateRequest):
            reason = diag.APPLICATION_CONTEXT_NAME_NOT_SUPPORTED
        elif client_sap == PUBLIC_CLIENT:
            if mechanism not in (None, enums.AuthenticationMechanism.NONE):
                reason = diag.AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNIZED
        elif client_sap == MANAGEMENT_CLIENT:
            if mechanism in (None, enums.AuthenticationMechanism.NONE):
                reason = diag.AUTHENTICATION_REQUIRED
            elif mechanism != enums.AuthenticationMechanism.LLS:
                reason = diag.AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNIZED
            elif bytes(aarq.authentication_value or b"") != self._password:
                reason = diag.AUTHENTICATION_FAILED
        else:
            reason = diag.NO_REASON_GIVEN  # no association for this client SAP
        if reason is not None:
            self.event(
                "association_rejected",
                None,
                client=peer,
                client_sap=client_sap,
                diagnostic=reason.name.lower(),
            )
            aare = acse.ApplicationAssociationResponse(
                result=enums.AssociationResult.REJECTED_PERMANENT,
                result_source_diagnostics=reason,
            )
            return aare, None
        proposed = content.proposed_conformance
        negotiated = xdlms.Conformance(
            block_transfer_with_get_or_read=proposed.block_transfer_with_get_or_read,
            multiple_references=proposed.multiple_references,
            get=proposed.get,
            set=proposed.set and client_sap == MANAGEMENT_CLIENT,
            selective_access=proposed.selective_access,
            action=proposed.action and client_sap == MANAGEMENT_CLIENT,
        )
        assoc = Association(
            peer=peer,
            client_sap=client_sap,
            mechanism="none" if client_sap == PUBLIC_CLIENT else "lls",
            max_send_pdu=max(64, min(MAX_PDU, int(content.client_max_receive_pdu_size or MAX_PDU))),
        )
        aare = acse.ApplicationAssociationResponse(
            result=enums.AssociationResult.ACCEPTED,
            result_source_diagnostics=diag.NULL,
            authentication=None if client_sap == PUBLIC_CLIENT else mechanism,
            user_information=acse.UserInformation(
                content=xdlms.InitiateResponse(
                    negotiated_conformance=negotiated, server_max_receive_pdu_size=MAX_PDU
                )
            ),
        )
        return aare, assoc

    def _get_response(self, request: Any, assoc: Association) -> Any:
        invoke = request.invoke_id_and_priority
        if isinstance(request, xdlms.GetRequestNormal):
            result = self.read(request.cosem_attribute, request.access_selection, assoc)
            if isinstance(result, enums.DataAccessResult):
                return xdlms.GetResponseNormalWithError(result, invoke_id_and_priority=invoke)
            data = bytes(result.to_bytes())
            room = assoc.max_send_pdu - 16  # tag, choice, invoke id, block header, length
            if len(data) <= room:
                return GetResponseNormal(data, invoke_id_and_priority=invoke)
            assoc.blocks = [data[i : i + room] for i in range(0, len(data), room)]
            assoc.block_number = 0
            assoc.invoke = invoke
            return self._next_block(assoc)
        if isinstance(request, xdlms.GetRequestNext):
            if not assoc.blocks or request.block_number != assoc.block_number:
                assoc.blocks = []
                return xdlms.GetResponseLastBlockWithError(
                    enums.DataAccessResult.DATA_BLOCK_NUMBER_INVALID,
                    request.block_number,
                    invoke_id_and_priority=invoke,
                )
            return self._next_block(assoc)
        # Get-Request-With-List
        items = []
        for item in request.cosem_attributes_with_selection:
            result = self.read(item.attribute, item.access_selection, assoc)
            items.append(result)
        return xdlms.GetResponseWithList(response_data=items, invoke_id_and_priority=invoke)

    def _next_block(self, assoc: Association) -> Any:
        chunk = assoc.blocks.pop(0)
        assoc.block_number += 1
        if assoc.blocks:
            return xdlms.GetResponseWithBlock(chunk, assoc.block_number, assoc.invoke)
        return xdlms.GetResponseLastBlock(chunk, assoc.block_number, assoc.invoke)

    def respond(
        self, client_sap: int, peer: str, apdu: bytes, assoc: Association | None
    ) -> tuple[bytes, Association | None]:
        """One request APDU in, the response APDU out (and the association after it)."""
        try:
            request = XDlmsApduFactory.apdu_from_bytes(apdu)
        except Exception:  # not an APDU the library decodes (or a variant it does not support)
            return _exception(enums.StateException.SERVICE_UNKNOWN, "SERVICE_NOT_SUPPORTED"), assoc
        if isinstance(request, acse.ApplicationAssociationRequest):
            aare, assoc = self.associate(client_sap, peer, request)
            return aare.to_bytes(), assoc
        if isinstance(request, acse.ReleaseRequest):
            rlre = acse.ReleaseResponse(reason=enums.ReleaseResponseReason.NORMAL)
            return rlre.to_bytes(), None
        if assoc is None or assoc.client_sap != client_sap:
            return _exception(
                enums.StateException.SERVICE_NOT_ALLOWED, "OPERATION_NOT_POSSIBLE"
            ), assoc
        try:
            return self._service(request, assoc), assoc
        except Exception:  # a bug here must not take the meter down: the client gets an error
            log.exception("meter %s: %r from %s", self.address, request, peer)
            return _exception(enums.StateException.SERVICE_NOT_ALLOWED, "OTHER_REASON"), assoc

    def _service(self, request: Any, assoc: Association) -> bytes:
        """A GET, SET or ACTION request within an association: the response APDU."""
        invoke = request.invoke_id_and_priority
        if isinstance(
            request, xdlms.GetRequestNormal | xdlms.GetRequestNext | xdlms.GetRequestWithList
        ):
            return bytes(self._get_response(request, assoc).to_bytes())
        if isinstance(request, xdlms.SetRequestNormal):
            result = self.write(request.cosem_attribute, request.data, assoc)
            return bytes(xdlms.SetResponseNormal(result, invoke_id_and_priority=invoke).to_bytes())
        if isinstance(request, xdlms.ActionRequestNormal):
            status = self.invoke(request.cosem_method, request.data, assoc)
            return bytes(
                xdlms.ActionResponseNormal(status, invoke_id_and_priority=invoke).to_bytes()
            )
        return _exception(enums.StateException.SERVICE_NOT_ALLOWED, "SERVICE_NOT_SUPPORTED")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One TCP connection: wrapper PDUs in, wrapper PDUs out, until either side closes."""
        self._writers.add(writer)
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if peername else "?"
        assoc: Association | None = None
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(8), timeout=INACTIVITY_S)
                header = WrapperHeader.from_bytes(head)
                apdu = await asyncio.wait_for(reader.readexactly(header.length), timeout=10.0)
                if header.version != WRAPPER_VERSION:
                    break  # not the DLMS wrapper: drop the connection
                if header.destination_wport != LOGICAL_DEVICE:
                    continue  # no such logical device: discarded, as the wrapper layer does
                reply, assoc = self.respond(header.source_wport, peer, apdu, assoc)
                out = WrapperProtocolDataUnit(
                    reply,
                    WrapperHeader(
                        source_wport=header.destination_wport,
                        destination_wport=header.source_wport,
                        length=len(reply),
                    ),
                )
                writer.write(out.to_bytes())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        except Exception:  # a bug here must not take the meter down
            log.exception("meter %s: connection from %s", self.address, peer)
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class Meters:
    """The site's smart meters (one :class:`SmartMeter` per address of ``site.meters``).

    ``clock`` is the true time (``time.time``; tests inject their own); ``prosumers`` meters at
    the end of ``site.meters`` have rooftop PV; the load profile is backfilled for
    ``backfill_days`` at start; ``sample_s`` is the period of :meth:`history`'s rows.
    """

    name = "meters"

    def __init__(
        self,
        site: LabSite,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        prosumers: int = 1,
        backfill_days: float = 2.0,
        sample_s: float = 1.0,
        location: City | None = None,
        password: bytes = MANAGEMENT_PASSWORD,
    ) -> None:
        self.site = site
        self.seed = seed
        self._clock = clock
        self._prosumers = prosumers
        self._backfill_s = backfill_days * 86400.0
        self._sample_s = sample_s
        self._location = location or City()
        self._password = password
        self.meters: dict[str, SmartMeter] = {}
        self._samples: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Build the meters (backfilling their profiles off the event loop), then listen."""
        now = self._clock()
        count = len(self.site.meters)

        def build() -> dict[str, SmartMeter]:
            meters = {}
            for index, address in enumerate(self.site.meters):
                prosumer = index >= count - self._prosumers
                model = build_model(
                    address, index, self.seed, prosumer, self._location, now - self._backfill_s
                )
                model.advance(now)
                meters[address] = SmartMeter(
                    model, self.site.dlms_port, clock=self._clock, password=self._password
                )
            return meters

        self.meters = await asyncio.to_thread(build)
        started: list[SmartMeter] = []
        try:
            for meter in self.meters.values():
                await meter.start()
                started.append(meter)
        except BaseException:
            for meter in started:
                await meter.stop()
            raise
        self._task = asyncio.create_task(self._sample_loop(), name="meters-sampler")

    async def stop(self) -> None:
        """Stop sampling, close every meter's sockets (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        for meter in self.meters.values():
            await meter.stop()

    def sample(self) -> None:
        """One row per meter: what it measures now."""
        t = self._clock()
        ts = now_us()
        for address, meter in self.meters.items():
            row: dict[str, Any] = {"ts_us": ts, "device": address, "kind": "sample"}
            row["meter"] = meter.model.ldn.decode("ascii")
            row.update(meter.model.reading(t))
            self._samples.append(row)

    async def _sample_loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self._sample_s)

    def history(self) -> list[dict[str, Any]]:
        """Samples (power, energy, voltage, connected state, clock offset) of every meter, and
        the events done to them (disconnects, clock sets, refused associations), by time."""
        rows = list(self._samples)
        for meter in self.meters.values():
            rows.extend(meter.history())
        rows.sort(key=lambda row: int(row["ts_us"]))
        return rows
