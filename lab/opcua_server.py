"""The OPC UA server of the lab: a water break tank exposed as tags, with its own small process.

A real asyncua server on ``opc.tcp://{site.opcua}:{site.opcua_port}``. Its address space is
what an integrator would configure on a plant's OPC UA gateway::

    Objects/Plant/Tank1                      (namespace ``urn:lab:water-plant``)
        Level          Double  %      AnalogItem, EURange 0..100, read-only
        Volume         Double  m3     AnalogItem, read-only
        InflowRate     Double  m3/h   AnalogItem (flow meter FT-201), read-only
        OutflowRate    Double  m3/h   AnalogItem (flow meter FT-202), read-only
        InflowPump     Boolean        pump P-201 running; writable (obeyed in Manual)
        OutflowValve   Double  %      valve XV-202 opening, AnalogItem; writable (obeyed in Manual)
        SetpointHigh   Double  %      pump stops above it (Auto), AnalogItem EURange 0..100; writable
        SetpointLow    Double  %      pump starts below it (Auto), AnalogItem EURange 0..100; writable
        AlarmHigh      Boolean        latched at 90 %, read-only
        AlarmLow       Boolean        latched at 10 %, read-only
        Mode           Int32          0 Manual, 1 Auto (MultiStateDiscrete, EnumStrings); writable
        PumpStarts     UInt32         starts of P-201 since the server started, read-only
        PumpRunHours   Double  h      running hours of P-201, read-only
        ResetAlarm()   -> Boolean     clears latched alarms whose condition has gone
        EmergencyStop()               stops the pump, closes the valve, switches to Manual

The process (:class:`TankProcess`) is a 0.8 m x 2.0 m (1 m3) vertical break tank: a centrifugal
pump fills it (about 52 m3/h, a little less as the level rises), the town's demand drains it
through a valve by gravity (Q = Cv x opening x sqrt(head)), and the demand follows the daily
water-use curve (night minimum about 3-4 h, morning peak 7-8 h, evening peak 19-20 h) with a
slow random walk. In Auto the controller runs the pump between SetpointLow and SetpointHigh;
a pump cycle lasts 2.5-3 minutes by day and about 6 at night, so a short lab run sees the level
rise and fall (a real pump this size would be started less often: the tank is small so that
the lab shows a cycle). It is a booster station's tank T-201, not the PLC's T-101
(``lab/plant.py``): two devices, two processes. Values are deterministic given the seed and the
wall clock's local hour (the demand curve).

Endpoints: security policy None (anonymous and user-name logins; the user-name token's password
is still RSA-encrypted with the server certificate, as asyncua's token policy asks), and
Basic256Sha256 Sign and SignAndEncrypt. A self-signed certificate and key are generated at start
into a temporary directory that :meth:`OpcUaServer.stop` deletes. User names and passwords come
from ``site.opcua_users``; a wrong password gets ``BadUserAccessDenied``. Client certificates are
accepted without a trust list (auto-accept, as many commissioning setups are left).

:meth:`OpcUaServer.start` takes about 2 s: asyncua builds its standard address space (about
5,000 nodes) in a thread; the first server of a process also imports it (2 s more), which
:func:`preload` can do ahead. The event loop keeps running meanwhile.

The lab's deliberate weakness: anonymous sessions may browse, read, subscribe, write and call
methods (``anonymous_write=False`` makes them read-only), and writes are not range-checked, so a
setpoint of 150 % is accepted and the tank overflows.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import importlib
import ipaddress
import logging
import math
import random
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.callback import CallbackService, CallbackType, ServerItemCallback
from asyncua.common.node import Node
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import USER_TYPES, SimpleRoleRuleset, User, UserRole
from asyncua.server.internal_server import InternalServer
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uatypes import DateTime, Int16, Int32, String
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from lab.base import LabSite, cancel_and_wait, now_us

log = logging.getLogger(__name__)

#: the plant's namespace URI (namespace index 2 on this server)
NAMESPACE = "urn:lab:water-plant"
APPLICATION_URI = "urn:lab:water-plant:opcua-server"
PRODUCT_URI = "urn:lab:water-plant:tank-gateway"

#: tank geometry: a vertical cylinder 0.8 m across and 2.0 m high (about 1.0 m3)
TANK_AREA_M2 = math.pi * 0.4**2
TANK_HEIGHT_M = 2.0
#: pump P-201: flow at zero level (m3/h), loss of flow per metre of level, spin-up time constant
PUMP_Q0_M3H = 54.0
PUMP_Q_LOSS_PER_M = 0.04
PUMP_TAU_S = 2.0
#: outflow valve XV-202: flow coefficient in m3/h per sqrt(m) of head (0.5 m of pipe below)
VALVE_CV = 40.0
VALVE_PIPE_HEAD_M = 0.5
#: alarm limits (% of span) and the hysteresis a latched alarm needs before it can be reset
ALARM_HIGH_PCT = 90.0
ALARM_LOW_PCT = 10.0
ALARM_HYSTERESIS_PCT = 2.0

MODE_MANUAL = 0
MODE_AUTO = 1

#: UNECE Recommendation 20 codes, as OPC UA Part 8 encodes them in EUInformation.UnitId
_UNECE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"


def _unece(code: str, display: str, description: str) -> ua.EUInformation:
    unit_id = 0
    for ch in code:
        unit_id = (unit_id << 8) | ord(ch)
    return ua.EUInformation(
        NamespaceUri=_UNECE_URI,
        UnitId=unit_id,
        DisplayName=ua.LocalizedText(display),
        Description=ua.LocalizedText(description),
    )


PERCENT = _unece("P1", "%", "percent")
CUBIC_METRE = _unece("MTQ", "m³", "cubic metre")
CUBIC_METRE_PER_HOUR = _unece("MQH", "m³/h", "cubic metre per hour")
HOUR = _unece("HUR", "h", "hour")


def demand_factor(hour: float) -> float:
    """The town's water demand relative to its daily mean, by local hour (0..24).

    A typical residential curve: night minimum about 0.45 at 3-4 h, morning peak about 1.5 at
    7-8 h, a midday plateau near 1.0, evening peak about 1.3 at 19-20 h.
    """
    morning = 0.85 * math.exp(-(((hour - 7.5) / 1.4) ** 2))
    evening = 0.6 * math.exp(-(((hour - 19.5) / 1.8) ** 2))
    midday = 0.35 * math.exp(-(((hour - 13.0) / 3.0) ** 2))
    night = -0.2 * math.exp(-(((hour - 3.5) / 2.0) ** 2))
    return 0.65 + morning + evening + midday + night


@dataclass
class TankState:
    """The process values at one instant (engineering units)."""

    level_pct: float
    volume_m3: float
    inflow_m3h: float
    outflow_m3h: float
    pump_on: bool
    valve_pct: float
    sp_high_pct: float
    sp_low_pct: float
    alarm_high: bool
    alarm_low: bool
    mode: int
    pump_starts: int
    pump_run_h: float


class TankProcess:
    """A pure model of the break tank, its pump, valve, controller and alarms.

    Deterministic given ``seed`` and the wall-clock hour fed to :meth:`step` (the demand's
    daily cycle); no I/O.
    """

    def __init__(self, seed: int = 0, *, hour: float = 12.0) -> None:
        self.rng = random.Random(seed)  # noqa: S311 (a process model, not crypto)
        self.level_m = TANK_HEIGHT_M * self.rng.uniform(0.40, 0.70)
        self.pump_cmd = self.rng.random() < 0.5
        self.pump_speed = 1.0 if self.pump_cmd else 0.0  # 0..1, first-order lag of the command
        self.sp_high = 80.0
        self.sp_low = 30.0
        self.mode = MODE_AUTO
        self.alarm_high = False
        self.alarm_low = False
        self.pump_starts = 0
        self.pump_run_s = 0.0
        self._walk = 0.0  # slow random walk of the demand, relative (Ornstein-Uhlenbeck)
        self._valve_manual = 40.0
        self.valve_pct = self._demand_valve(hour)
        self.inflow_m3h = 0.0
        self.outflow_m3h = 0.0

    # -- operator and client actions -------------------------------------------------------

    def set_setpoint_high(self, value: float) -> None:
        self.sp_high = float(value)

    def set_setpoint_low(self, value: float) -> None:
        self.sp_low = float(value)

    def set_mode(self, mode: int) -> None:
        self.mode = MODE_AUTO if int(mode) == MODE_AUTO else MODE_MANUAL
        if self.mode == MODE_MANUAL:
            self._valve_manual = self.valve_pct

    def set_pump(self, on: bool) -> None:
        """A pump command: obeyed in Manual; in Auto the controller owns the pump."""
        if self.mode == MODE_MANUAL:
            self._command_pump(bool(on))

    def set_valve(self, pct: float) -> None:
        """A valve position: obeyed in Manual; in Auto the network's demand sets it."""
        if self.mode == MODE_MANUAL:
            self._valve_manual = min(100.0, max(0.0, float(pct)))

    def reset_alarms(self) -> bool:
        """Clear latched alarms whose condition has gone; True when none is left."""
        level = self.level_pct
        if self.alarm_high and level < ALARM_HIGH_PCT - ALARM_HYSTERESIS_PCT:
            self.alarm_high = False
        if self.alarm_low and level > ALARM_LOW_PCT + ALARM_HYSTERESIS_PCT:
            self.alarm_low = False
        return not (self.alarm_high or self.alarm_low)

    def emergency_stop(self) -> None:
        self.mode = MODE_MANUAL
        self._command_pump(False)
        self._valve_manual = 0.0

    # -- the process ---------------------------------------------------------------------

    @property
    def level_pct(self) -> float:
        return 100.0 * self.level_m / TANK_HEIGHT_M

    def _command_pump(self, on: bool) -> None:
        if on and not self.pump_cmd:
            self.pump_starts += 1
        self.pump_cmd = on

    def _demand_valve(self, hour: float) -> float:
        # the valve opening that passes the demand at a mid level: about 13 m3/h at the night
        # minimum, 45 m3/h at the morning peak
        base = 30.0 * demand_factor(hour) * (1.0 + self._walk)
        return min(95.0, max(5.0, base))

    def step(self, dt_s: float, hour: float) -> None:
        """Advance the process by ``dt_s`` seconds at local time ``hour``."""
        rng = self.rng
        # the demand's random walk: relaxes in about two minutes, wanders about +-8 %
        self._walk += -self._walk * dt_s / 120.0 + rng.gauss(0.0, 0.012) * math.sqrt(dt_s)
        if self.mode == MODE_AUTO:
            level = self.level_pct
            if level <= self.sp_low:
                self._command_pump(True)
            elif level >= self.sp_high:
                self._command_pump(False)
            target_valve = self._demand_valve(hour)
            # the network's pressure-reducing valve moves at about 2 %/s
            delta = max(-2.0 * dt_s, min(2.0 * dt_s, target_valve - self.valve_pct))
            self.valve_pct += delta
        else:
            self.valve_pct = self._valve_manual
        target_speed = 1.0 if self.pump_cmd else 0.0
        self.pump_speed += (target_speed - self.pump_speed) * (1.0 - math.exp(-dt_s / PUMP_TAU_S))
        if self.pump_speed > 0.05:
            self.pump_run_s += dt_s
        inflow = self.pump_speed * PUMP_Q0_M3H * (1.0 - PUMP_Q_LOSS_PER_M * self.level_m)
        head = self.level_m + VALVE_PIPE_HEAD_M
        outflow = VALVE_CV * (self.valve_pct / 100.0) * math.sqrt(max(head, 0.0))
        if self.level_m <= 0.0:
            outflow = min(outflow, inflow)  # an empty tank passes only what comes in
        self.level_m += (inflow - outflow) / 3600.0 * dt_s / TANK_AREA_M2
        # full: the overflow weir spills the excess
        self.level_m = min(TANK_HEIGHT_M, max(0.0, self.level_m))
        self.inflow_m3h = inflow
        self.outflow_m3h = outflow
        level = self.level_pct
        if level >= ALARM_HIGH_PCT:
            self.alarm_high = True
        if level <= ALARM_LOW_PCT:
            self.alarm_low = True

    def measure(self) -> TankState:
        """What the instruments read now: noisy transmitters, rounded as a PLC scales them."""
        rng = self.rng
        level = min(100.0, max(0.0, self.level_pct + rng.gauss(0.0, 0.03)))
        inflow = self.inflow_m3h + (rng.gauss(0.0, 0.15) if self.inflow_m3h > 0.5 else 0.0)
        outflow = self.outflow_m3h + (rng.gauss(0.0, 0.15) if self.outflow_m3h > 0.5 else 0.0)
        return TankState(
            level_pct=round(level, 2),
            volume_m3=round(level / 100.0 * TANK_HEIGHT_M * TANK_AREA_M2, 3),
            inflow_m3h=round(max(0.0, inflow), 2),
            outflow_m3h=round(max(0.0, outflow), 2),
            pump_on=self.pump_cmd,
            valve_pct=round(self.valve_pct, 1),
            sp_high_pct=self.sp_high,
            sp_low_pct=self.sp_low,
            alarm_high=self.alarm_high,
            alarm_low=self.alarm_low,
            mode=self.mode,
            pump_starts=self.pump_starts,
            pump_run_h=round(self.pump_run_s / 3600.0, 4),
        )


def local_hour(ts_us: int) -> float:
    """The local wall-clock hour (0..24) of a timestamp, for the demand's daily cycle."""
    t = dt.datetime.fromtimestamp(ts_us / 1e6)
    return t.hour + t.minute / 60.0 + t.second / 3600.0


def nid(identifier: int | str, ns: int = 0) -> ua.NodeId:
    """A NodeId from a numeric or string identifier (asyncua's own wrappers, for the types)."""
    if isinstance(identifier, int):
        return ua.NodeId(Int32(identifier), Int16(ns))
    return ua.NodeId(String(identifier), Int16(ns))


# -- access control ------------------------------------------------------------------------


class SiteUserManager(UserManager):
    """Anonymous sessions and the site's user-name accounts; anything else is refused."""

    def __init__(self, users: tuple[tuple[str, str], ...]) -> None:
        self._users = dict(users)

    def get_user(
        self,
        iserver: InternalServer,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is None:
            # anonymous (X.509 user tokens are not offered, so asyncua rejects them before
            # this; ``certificate`` is then the secure channel's application certificate)
            return User(role=UserRole.Anonymous, name=None)
        expected = self._users.get(username)
        if expected is None or password is None:
            return None
        if hmac.compare_digest(expected.encode(), password.encode()):
            return User(role=UserRole.User, name=username)
        return None


_USER_SERVICES = frozenset(nid(i) for i in USER_TYPES)
_WRITE_SERVICES = frozenset(
    nid(i)
    for i in (
        ObjectIds.WriteRequest_Encoding_DefaultBinary,
        ObjectIds.CallRequest_Encoding_DefaultBinary,
    )
)


class LabRuleset(SimpleRoleRuleset):
    """Users may use every session service; anonymous sessions too (the lab's weakness), or
    all but Write and Call when ``anonymous_write`` is off. Nobody may edit the address space."""

    def __init__(self, anonymous_write: bool) -> None:
        # SimpleRoleRuleset's own table is replaced, not extended: no super().__init__()
        anonymous = _USER_SERVICES if anonymous_write else _USER_SERVICES - _WRITE_SERVICES
        self._allowed = {
            UserRole.Admin: _USER_SERVICES,
            UserRole.User: _USER_SERVICES,
            UserRole.Anonymous: anonymous,
        }

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: Any) -> bool:
        return action_type_id in self._allowed.get(user.role, frozenset())


# -- certificates --------------------------------------------------------------------------


def make_self_signed(
    directory: Path, common_name: str, application_uri: str, ip: str | None = None
) -> tuple[Path, Path]:
    """Generate an RSA 2048 key and a self-signed OPC UA application certificate (client and
    server use) in ``directory``; returns (certificate .der, key .pem). Blocking: run it in a
    thread."""
    key = cert_gen.generate_private_key()
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(application_uri),
        x509.DNSName(socket.gethostname()),
    ]
    if ip is not None:
        names.append(x509.IPAddress(ipaddress.ip_address(ip)))
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        common_name,
        {"organizationName": "Lab Water Utility", "countryName": "FR"},
        names,
        extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=30,
    )
    cert_path = directory / f"{common_name.replace(' ', '_')}.der"
    key_path = directory / f"{common_name.replace(' ', '_')}.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.touch(mode=0o600)
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return cert_path, key_path


_STANDARD_SPACE = "asyncua.server.standard_address_space.standard_address_space"


async def preload() -> None:
    """Import asyncua's standard address space (about 2 s the first time in a process) in a
    thread, so the event loop keeps running; later servers in the process skip it."""
    await asyncio.to_thread(importlib.import_module, _STANDARD_SPACE)


# -- the service ---------------------------------------------------------------------------

#: tag name -> (variant type, writable)
TAGS: dict[str, tuple[ua.VariantType, bool]] = {
    "Level": (ua.VariantType.Double, False),
    "Volume": (ua.VariantType.Double, False),
    "InflowRate": (ua.VariantType.Double, False),
    "OutflowRate": (ua.VariantType.Double, False),
    "InflowPump": (ua.VariantType.Boolean, True),
    "OutflowValve": (ua.VariantType.Double, True),
    "SetpointHigh": (ua.VariantType.Double, True),
    "SetpointLow": (ua.VariantType.Double, True),
    "AlarmHigh": (ua.VariantType.Boolean, False),
    "AlarmLow": (ua.VariantType.Boolean, False),
    "Mode": (ua.VariantType.Int32, True),
    "PumpStarts": (ua.VariantType.UInt32, False),
    "PumpRunHours": (ua.VariantType.Double, False),
}

#: analog tags: (engineering unit, EURange low, high, description)
_ANALOG: dict[str, tuple[ua.EUInformation, float, float, str]] = {
    "Level": (PERCENT, 0.0, 100.0, "LT-201 tank level"),
    "Volume": (CUBIC_METRE, 0.0, round(TANK_HEIGHT_M * TANK_AREA_M2, 3), "volume in the tank"),
    "InflowRate": (CUBIC_METRE_PER_HOUR, 0.0, 60.0, "FT-201 inflow (pump P-201)"),
    "OutflowRate": (CUBIC_METRE_PER_HOUR, 0.0, 80.0, "FT-202 outflow to the network"),
    "OutflowValve": (PERCENT, 0.0, 100.0, "XV-202 valve opening"),
    "SetpointHigh": (PERCENT, 0.0, 100.0, "level at which P-201 stops (Auto)"),
    "SetpointLow": (PERCENT, 0.0, 100.0, "level at which P-201 starts (Auto)"),
    "PumpRunHours": (HOUR, 0.0, 100000.0, "P-201 running hours"),
}

#: two-state tags: (description, TrueState, FalseState)
_TWO_STATE: dict[str, tuple[str, str, str]] = {
    "InflowPump": ("P-201 running (command obeyed in Manual)", "Running", "Stopped"),
    "AlarmHigh": (f"high level alarm, latched at {ALARM_HIGH_PCT:.0f} %", "Alarm", "Normal"),
    "AlarmLow": (f"low level alarm, latched at {ALARM_LOW_PCT:.0f} %", "Alarm", "Normal"),
}

_DESCRIPTIONS = {
    "Mode": "operating mode: 0 Manual, 1 Auto",
    "PumpStarts": "P-201 starts",
}


def _tag_values(s: TankState) -> dict[str, Any]:
    return {
        "Level": s.level_pct,
        "Volume": s.volume_m3,
        "InflowRate": s.inflow_m3h,
        "OutflowRate": s.outflow_m3h,
        "InflowPump": s.pump_on,
        "OutflowValve": s.valve_pct,
        "SetpointHigh": s.sp_high_pct,
        "SetpointLow": s.sp_low_pct,
        "AlarmHigh": s.alarm_high,
        "AlarmLow": s.alarm_low,
        "Mode": s.mode,
        "PumpStarts": s.pump_starts,
        "PumpRunHours": s.pump_run_h,
    }


def tag_nodeid(name: str, ns: int = 2) -> ua.NodeId:
    """The NodeId of a Tank1 tag (string ids, as gateways name them: ``ns=2;s=Tank1.Level``)."""
    return nid(f"Tank1.{name}", ns)


class OpcUaServer:
    """The lab's OPC UA server (a :class:`lab.base.Service`)."""

    name = "opcua-server"
    device = "opcua.tank1"

    def __init__(
        self,
        site: LabSite,
        seed: int = 0,
        *,
        anonymous_write: bool = True,
        history_every: int = 1,
    ) -> None:
        self.site = site
        self.seed = seed
        self.anonymous_write = anonymous_write
        self.history_every = max(1, history_every)
        self.url = f"opc.tcp://{site.opcua}:{site.opcua_port}"
        self.process = TankProcess(seed, hour=local_hour(now_us()))
        self.server: Server | None = None
        self.ns = 2
        self._nodes: dict[str, ua.NodeId] = {}
        self._last: dict[str, Any] = {}
        self._history: list[dict[str, Any]] = []
        self._writes: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.certificate_path: Path | None = None
        self._appliers: dict[ua.NodeId, Callable[[Any], None]] = {}

    # -- Service ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.server is not None:
            return
        self._last.clear()
        self._tmp = tempfile.TemporaryDirectory(prefix="lab-opcua-")
        tmp = Path(self._tmp.name)
        try:
            (cert_path, key_path), _ = await asyncio.gather(
                asyncio.to_thread(
                    make_self_signed, tmp, "Tank1 OPC UA Server", APPLICATION_URI, self.site.opcua
                ),
                preload(),
            )
            self.certificate_path = cert_path
            server = Server(user_manager=SiteUserManager(self.site.opcua_users))
            self.server = server
            await server.init()
            server.set_endpoint(self.url)
            server.set_server_name("Water Plant Tank1 OPC UA Server")
            await server.set_application_uri(APPLICATION_URI)
            server.product_uri = PRODUCT_URI
            await server.set_build_info(
                PRODUCT_URI,
                "Lab Water Utility",
                "Tank1 OPC UA Gateway",
                "2.4.1",
                "2401",
                dt.datetime(2024, 3, 18, 9, 30, tzinfo=dt.UTC),
            )
            await server.load_certificate(cert_path)
            await server.load_private_key(key_path)
            server.set_security_policy(
                [
                    ua.SecurityPolicyType.NoSecurity,
                    ua.SecurityPolicyType.Basic256Sha256_Sign,
                    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ],
                permission_ruleset=LabRuleset(self.anonymous_write),
            )
            server.set_identity_tokens([ua.AnonymousIdentityToken, ua.UserNameIdentityToken])
            await self._build_address_space(server)
            server.subscribe_server_callback(CallbackType.PostWrite, self._on_write)
            await self._publish(now_us())
            await server.start()
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.create_task(self._clock(), name=f"{self.name}-clock")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        server, self.server = self.server, None
        if server is not None:
            # sessions with subscriptions outlive their connection (Part 4 6.7) and asyncua's
            # stop() leaves them with their timers running: close them first
            for session in list(server.iserver._external_sessions.values()):
                with contextlib.suppress(Exception):
                    await session.close_session(True)
            with contextlib.suppress(Exception):
                await server.stop()
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            tmp.cleanup()
        self.certificate_path = None

    def history(self) -> list[dict[str, Any]]:
        return list(self._history)

    def writes(self) -> list[dict[str, Any]]:
        """What clients changed: ``{"ts_us", "action": "write" | "call", "user", "node",
        "value", "status"}``. ``user`` is ``None`` for anonymous sessions, and for calls
        (asyncua does not tell a method who calls it). Writes refused by the access rules
        (a read-only anonymous session) never reach the address space and are not listed;
        writes refused there (read-only tag, wrong type) are, with their status."""
        return list(self._writes)

    def peers(self) -> list[tuple[str, int]]:
        """The (address, port) of each connected client."""
        if self.server is None or self.server.bserver is None:
            return []
        return [tuple(c.peer_name[:2]) for c in self.server.bserver.clients if c.peer_name]

    # -- address space ---------------------------------------------------------------------

    async def _build_address_space(self, server: Server) -> None:
        self.ns = await server.register_namespace(NAMESPACE)
        ns = self.ns
        objects = server.nodes.objects
        plant = await objects.add_folder(nid("Plant", ns), ua.QualifiedName("Plant", ns))
        tank = await plant.add_object(nid("Tank1", ns), ua.QualifiedName("Tank1", ns))
        await tank.write_attribute(
            AttributeIds.Description,
            ua.DataValue(ua.Variant(ua.LocalizedText("break tank T-201, 1 m3, booster station"))),
        )
        initial = _tag_values(self.process.measure())
        for name, (vtype, writable) in TAGS.items():
            nodeid = tag_nodeid(name, ns)
            if name in _ANALOG:
                eu, low, high, description = _ANALOG[name]
                typedef = ObjectIds.AnalogItemType
            elif name in _TWO_STATE:
                description, true_state, false_state = _TWO_STATE[name]
                typedef = ObjectIds.TwoStateDiscreteType
            elif name == "Mode":
                description, typedef = _DESCRIPTIONS[name], ObjectIds.MultiStateDiscreteType
            else:
                description, typedef = _DESCRIPTIONS[name], ObjectIds.BaseDataVariableType
            node = await _add_variable(
                server, tank, nodeid, name, ua.Variant(initial[name], vtype), typedef, description
            )
            if name in _ANALOG:
                await node.add_property(0, "EURange", ua.Range(Low=low, High=high))
                await node.add_property(0, "EngineeringUnits", eu)
            elif name in _TWO_STATE:
                await node.add_property(0, "TrueState", ua.LocalizedText(true_state))
                await node.add_property(0, "FalseState", ua.LocalizedText(false_state))
            elif name == "Mode":
                await node.add_property(
                    0, "EnumStrings", [ua.LocalizedText("Manual"), ua.LocalizedText("Auto")]
                )
            if writable:
                await node.set_writable()
            self._nodes[name] = nodeid
        self._appliers = {
            self._nodes["SetpointHigh"]: self.process.set_setpoint_high,
            self._nodes["SetpointLow"]: self.process.set_setpoint_low,
            self._nodes["Mode"]: self.process.set_mode,
            self._nodes["InflowPump"]: self.process.set_pump,
            self._nodes["OutflowValve"]: self.process.set_valve,
        }
        await tank.add_method(
            nid("Tank1.ResetAlarm", ns),
            ua.QualifiedName("ResetAlarm", ns),
            self._reset_alarm,
            [],
            [ua.VariantType.Boolean],
        )
        await tank.add_method(
            nid("Tank1.EmergencyStop", ns),
            ua.QualifiedName("EmergencyStop", ns),
            self._emergency_stop,
            [],
            [],
        )

    async def _reset_alarm(self, parent: ua.NodeId) -> list[ua.Variant]:
        cleared = self.process.reset_alarms()
        self._log("call", None, "Tank1.ResetAlarm", cleared, "Good")
        await self._publish(now_us())
        return [ua.Variant(cleared, ua.VariantType.Boolean)]

    async def _emergency_stop(self, parent: ua.NodeId) -> list[ua.Variant]:
        self.process.emergency_stop()
        self._log("call", None, "Tank1.EmergencyStop", None, "Good")
        await self._publish(now_us())
        return []

    # -- clients' writes -------------------------------------------------------------------

    async def _on_write(self, event: ServerItemCallback, dispatcher: CallbackService) -> None:
        if not event.is_external:
            return
        user = event.user.name if isinstance(event.user, User) else None
        results = event.response_params or []
        for item, status in zip(event.request_params.NodesToWrite, results, strict=False):
            value = item.Value.Value.Value if item.Value and item.Value.Value else None
            good = isinstance(status, ua.StatusCode) and status.is_good()
            self._log("write", user, item.NodeId.to_string(), value, _name(status))
            apply = self._appliers.get(item.NodeId)
            if not good or apply is None or item.AttributeId != AttributeIds.Value:
                continue
            try:
                apply(value)
            except (TypeError, ValueError):
                log.info("ignored a write of %r to %s", value, item.NodeId.to_string())
            # the address space shows what the process now does: a write to the pump or the
            # valve in Auto is overridden at once, as a PLC's logic would
            for name, nodeid in self._nodes.items():
                if nodeid == item.NodeId:
                    self._last.pop(name, None)
        await self._publish(now_us())

    def _log(self, action: str, user: str | None, node: str, value: Any, status: str) -> None:
        if not (isinstance(value, float | int | bool | str) or value is None):
            value = str(value)
        self._writes.append(
            {
                "ts_us": now_us(),
                "action": action,
                "user": user,
                "node": node,
                "value": value,
                "status": status,
            }
        )

    # -- the clock -------------------------------------------------------------------------

    async def _clock(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.site.tick_hz
        deadline = loop.time()
        tick = 0
        while True:
            deadline += period
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -5 * period:
                deadline = loop.time()  # far behind (a blocked loop): do not race to catch up
            ts = now_us()
            self.process.step(period, local_hour(ts))
            tick += 1
            await self._publish(ts, record=tick % self.history_every == 0)

    async def _publish(self, ts_us: int, *, record: bool = False) -> None:
        """Write the measured values into the address space (only the ones that changed, so
        subscriptions see real changes) and record them."""
        server = self.server
        if server is None or not self._nodes:
            return
        values = _tag_values(self.process.measure())
        when = DateTime.fromtimestamp(ts_us / 1e6, dt.UTC)
        for name, value in values.items():
            if name in self._last and self._last[name] == value:
                continue
            self._last[name] = value
            dv = ua.DataValue(
                ua.Variant(value, TAGS[name][0]), SourceTimestamp=when, ServerTimestamp=when
            )
            await server.write_attribute_value(self._nodes[name], dv)
        if record:
            self._history.append({"ts_us": ts_us, "device": self.device, **_row(values)})


def _row(values: dict[str, Any]) -> dict[str, Any]:
    return {
        "level_pct": values["Level"],
        "volume_m3": values["Volume"],
        "inflow_m3h": values["InflowRate"],
        "outflow_m3h": values["OutflowRate"],
        "pump_on": values["InflowPump"],
        "valve_pct": values["OutflowValve"],
        "sp_high_pct": values["SetpointHigh"],
        "sp_low_pct": values["SetpointLow"],
        "alarm_high": values["AlarmHigh"],
        "alarm_low": values["AlarmLow"],
        "mode": "auto" if values["Mode"] == MODE_AUTO else "manual",
        "pump_starts": values["PumpStarts"],
        "pump_run_h": values["PumpRunHours"],
    }


def _name(status: Any) -> str:
    return status.name if isinstance(status, ua.StatusCode) else str(status)


_DATATYPES = {
    ua.VariantType.Double: ObjectIds.Double,
    ua.VariantType.Boolean: ObjectIds.Boolean,
    ua.VariantType.Int32: ObjectIds.Int32,
    ua.VariantType.UInt32: ObjectIds.UInt32,
}


async def _add_variable(
    server: Server,
    parent: Node,
    nodeid: ua.NodeId,
    name: str,
    value: ua.Variant,
    typedef: int,
    description: str,
) -> Node:
    """A scalar variable of a given variable type (AnalogItemType ...), as
    :meth:`Node.add_variable` makes one of BaseDataVariableType."""
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nodeid
    item.BrowseName = ua.QualifiedName(name, nodeid.NamespaceIndex)
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent.nodeid
    item.ReferenceTypeId = nid(ObjectIds.HasComponent)
    item.TypeDefinition = nid(typedef)
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Description = ua.LocalizedText(description)
    attrs.DataType = nid(_DATATYPES[value.VariantType])
    attrs.Value = value
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.AccessLevel = ua.AccessLevel.CurrentRead.mask
    attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
    attrs.MinimumSamplingInterval = 100.0
    item.NodeAttributes = attrs
    (result,) = await server.iserver.isession.add_nodes([item])
    result.StatusCode.check()
    return server.get_node(result.AddedNodeId)
