"""The water tank plant: a pure process model and the Modbus/TCP PLC that runs it.

Tank T-101 is a small service reservoir: a vertical steel tank (2.5 m across, 4 m high, about
19.6 m³) filled by a fixed-speed centrifugal pump P-101 (7.5 kW, about 36 m³/h) and emptied by
gravity into the distribution network through the control valve FCV-101; a shut-off valve XV-102
can close the outlet at once. What the town draws follows a daily cycle (morning and evening
peaks, a low at night). In automatic mode the PLC starts the pump when the level falls to the
low setpoint and stops it at the high setpoint; the high-high limit stops it whatever the mode
(an interlock) and raises an alarm, the low-low limit closes the outlet. A float switch near the
rim reports an overflow, hard-wired, whatever the limits say.

The PLC is naive, as many are: it accepts any 16-bit value in its holding registers. A high
setpoint or high-high limit written beyond the tank's 4,000 mm really changes the process: the
pump no longer stops and the tank overflows.

Register map of the PLC (unit id ``LabSite.modbus_unit``; protocol addresses from 0, the
"Modicon" reference in brackets; scaled integers):

=======================  =====  ========================================================
table                    addr   meaning
=======================  =====  ========================================================
coils (fc 1, 5, 15)      0      P-101 run command (00001). Manual mode: the pump follows
                                it. Automatic mode: the PLC program writes its own
                                command here every scan, so a write is overwritten, as
                                on a real PLC whose logic drives the output.
                         1      alarm reset (00002): a pulse; resets a latched pump trip;
                                the PLC clears it
                         2      XV-102 close (00003): outlet shut-off, any mode
                         3-15   spare (read 0, writes accepted and ignored)
discrete inputs (fc 2)   0      P-101 running (10001)
                         1      LAHH level high-high alarm
                         2      LALL level low-low alarm
                         3      LSHH overflow float switch (at 3,950 mm)
                         4      P-101 thermal overload trip (latched)
                         5      automatic mode active
                         6      outlet closed (XV-102 command or low-low interlock)
                         7-15   spare
holding registers        0      mode: 1 automatic, anything else manual (40001)
(fc 3, 6, 16)            1      pump start level (low setpoint), mm
                         2      pump stop level (high setpoint), mm
                         3      high-high alarm and interlock limit, mm
                         4      low-low alarm and interlock limit, mm
                         5      FCV-101 position setpoint, 0.1 %
input registers (fc 4)   0      LT-101 level, mm (30001)
                         1      LT-101 level, 0.1 % of 4,000 mm
                         2      FT-101 inflow, 0.1 m³/h
                         3      FT-102 outflow, 0.1 m³/h
                         4      FCV-101 position, 0.1 % (the actuator travels 1.5 %/s)
                         5      TT-101 water temperature, 0.1 °C (int16)
                         6      TT-102 pump motor winding temperature, 0.1 °C (int16)
                         7      IT-101 pump motor current, 0.1 A
                         8-9    P-101 run hours, 0.1 h (uint32, high word first)
                         10     P-101 starts (uint16, wraps)
                         11     PLC heartbeat: +1 every second (uint16, wraps)
=======================  =====  ========================================================

Any other address answers exception 2 (illegal data address); any unit id other than the PLC's
answers exception 10 (gateway path unavailable), as a PLC with a serial gateway port does for an
id missing from its routing table. Read Device Identification (43/14) and Report Server ID (17)
give :data:`IDENTITY`. Diagnostics (function 8) are answered by pymodbus (query data, diagnostic
register, counters) except two sub-functions the PLC implements as the specification says
(pymodbus answers both and changes nothing): 4, force listen only mode, gets no answer and from
then on the PLC answers nothing to anybody until 1, restart communications option, which leaves
listen-only mode silently; when not in listen-only mode, 1 is answered and then every open TCP
connection is closed, as the communications restart (clients reconnect).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, cast

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.device import ModbusDeviceIdentification
from pymodbus.pdu.diag_message import (
    ForceListenOnlyModeRequest,
    RestartCommunicationsOptionRequest,
)
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from lab.base import LabSite, cancel_and_wait, now_us

_log = logging.getLogger(__name__)

# -- the register map ---------------------------------------------------------------------------

COIL_PUMP = 0
COIL_ALARM_RESET = 1
COIL_OUTLET_CLOSE = 2
COILS = 3  # defined; the table is 16 wide (pymodbus keeps bits in 16-bit words)

DI_PUMP_RUNNING = 0
DI_ALARM_HH = 1
DI_ALARM_LL = 2
DI_OVERFLOW = 3
DI_PUMP_TRIP = 4
DI_AUTO = 5
DI_OUTLET_CLOSED = 6
DISCRETE_INPUTS = 7

HR_MODE = 0
HR_SP_LOW = 1
HR_SP_HIGH = 2
HR_ALARM_HH = 3
HR_ALARM_LL = 4
HR_VALVE_SP = 5
HOLDING_REGISTERS = 6

IR_LEVEL_MM = 0
IR_LEVEL_PCT = 1
IR_INFLOW = 2
IR_OUTFLOW = 3
IR_VALVE_POS = 4
IR_WATER_TEMP = 5
IR_MOTOR_TEMP = 6
IR_PUMP_CURRENT = 7
IR_RUN_HOURS = 8  # and 9
IR_STARTS = 10
IR_HEARTBEAT = 11
INPUT_REGISTERS = 12

MODE_MANUAL = 0
MODE_AUTO = 1

#: the PLC's answer to 43/14 and (vendor-product-revision) to function 17; a fictional vendor
IDENTITY: dict[int, str] = {
    0x00: "Hydrion Automation",
    0x01: "HX-340-ETH",
    0x02: "V3.2.7",
    0x03: "http://www.hydrion-automation.example",
    0x04: "HX-340 compact PLC",
    0x05: "HX-340-24DC",
    0x06: "T-101 reservoir level control",
    0x80: "SN 21-0840-3317",
}

# -- the plant's design values ------------------------------------------------------------------

TANK_HEIGHT_MM = 4000.0
TANK_AREA_M2 = math.pi * 2.5**2 / 4  # 4.91 m²
OVERFLOW_SWITCH_MM = 3950.0
PUMP_FLOW_M3H = 36.0  # at an empty tank; 10 % less at a full one (more head)
OUTLET_MAX_M3H = 45.0  # valve fully open, tank full, peak demand
VALVE_SPEED_PCT_S = 1.5
MOTOR_CURRENT_A = 14.5
AMBIENT_C = 18.0

#: what the plant's engineer configured, and the operator's usual ranges (the HMI keeps to them)
DEFAULT_SETTINGS: dict[str, int] = {
    "mode": MODE_AUTO,
    "sp_low_mm": 1200,
    "sp_high_mm": 3200,
    "alarm_hh_mm": 3600,
    "alarm_ll_mm": 600,
    "valve_sp_permille": 550,
}
NORMAL_RANGES: dict[str, tuple[int, int]] = {
    "sp_low_mm": (1000, 1500),
    "sp_high_mm": (2900, 3400),
    "alarm_hh_mm": (3600, 3600),
    "alarm_ll_mm": (600, 600),
    "valve_sp_permille": (400, 700),
}

HISTORY_PERIOD_S = 1.0


def _gauss(x: float, mean: float, width: float) -> float:
    return math.exp(-(((x - mean) / width) ** 2))


def demand_factor(hour: float) -> float:
    """The town's draw as a fraction of the peak (0.4 at night, 1.0 at the morning peak)."""
    hour %= 24.0
    # the cycle wraps around midnight: evaluate the peaks a day apart too
    peaks = 0.0
    for shift in (-24.0, 0.0, 24.0):
        h = hour + shift
        peaks += (
            0.56 * _gauss(h, 7.3, 1.5) + 0.42 * _gauss(h, 19.6, 2.2) + 0.18 * _gauss(h, 12.8, 2.0)
        )
    return min(1.0, 0.40 + peaks)


@dataclass
class ProcessInputs:
    """What the PLC program works from: its holding registers and coils."""

    mode: int = MODE_AUTO
    sp_low_mm: int = DEFAULT_SETTINGS["sp_low_mm"]
    sp_high_mm: int = DEFAULT_SETTINGS["sp_high_mm"]
    alarm_hh_mm: int = DEFAULT_SETTINGS["alarm_hh_mm"]
    alarm_ll_mm: int = DEFAULT_SETTINGS["alarm_ll_mm"]
    valve_sp_permille: int = DEFAULT_SETTINGS["valve_sp_permille"]
    pump_cmd: bool = False
    alarm_reset: bool = False
    outlet_close: bool = False


class TankProcess:
    """The physics and the PLC program of tank T-101, with no I/O: call :meth:`step`.

    Set :attr:`inputs` (what the registers say), step, and read the state. The same seed and the
    same sequence of inputs and steps give the same values.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        start_hour: float = 7.0,
        level_mm: float | None = None,
        pump_running: bool | None = None,
    ) -> None:
        self.rng = random.Random(seed)  # noqa: S311 (a simulation, not cryptography)
        rng = self.rng
        self.inputs = ProcessInputs()
        self.t_s = 0.0
        self.start_hour = start_hour
        # Start just below the stop level with the pump running (unless told otherwise), so that
        # even a short lab run sees the pump stop on its level.
        self.pump_running = True if pump_running is None else pump_running
        if level_mm is None:
            level_mm = self.inputs.sp_high_mm - rng.uniform(50.0, 140.0)
        self.level_mm = float(level_mm)
        self.pump_cmd = self.pump_running
        self.inflow_m3h = self._pump_flow() if self.pump_running else 0.0
        self.valve_pct = self.inputs.valve_sp_permille / 10.0
        self.outflow_m3h = 0.0
        self.water_temp_c = rng.uniform(10.5, 12.5)
        self.motor_temp_c = rng.uniform(52.0, 58.0) if self.pump_running else rng.uniform(22, 28)
        self.pump_current_a = MOTOR_CURRENT_A if self.pump_running else 0.0
        self.run_hours = round(rng.uniform(8_000.0, 21_000.0), 1)
        self.starts = rng.randint(3_000, 9_000)
        self.heartbeat = rng.randint(0, 65535)
        self.alarm_hh = False
        self.alarm_ll = False
        self.overflow = False
        self.pump_trip = False
        self.outlet_closed = False
        self.spilled_m3 = 0.0
        self._since_start_s = 10.0
        self._demand_noise = 0.0
        self._heartbeat_s = 0.0
        self.level_measured_mm = self.level_mm

    # -- the model ------------------------------------------------------------------------------

    @property
    def hour(self) -> float:
        """Hour of the day in the process's own clock."""
        return (self.start_hour + self.t_s / 3600.0) % 24.0

    @property
    def auto(self) -> bool:
        return self.inputs.mode == MODE_AUTO

    def _pump_flow(self) -> float:
        return PUMP_FLOW_M3H * (1.0 - 0.10 * self.level_mm / TANK_HEIGHT_MM)

    def _control(self) -> None:
        """One scan of the PLC program: the pump command, interlocks, alarms."""
        inp = self.inputs
        if self.auto:
            if self.level_mm <= inp.sp_low_mm:
                self.pump_cmd = True
            elif self.level_mm >= inp.sp_high_mm:
                self.pump_cmd = False
        else:
            self.pump_cmd = inp.pump_cmd
        # alarms with a 20 mm dead band
        if self.level_mm >= inp.alarm_hh_mm:
            self.alarm_hh = True
        elif self.level_mm < inp.alarm_hh_mm - 20:
            self.alarm_hh = False
        if self.level_mm <= inp.alarm_ll_mm:
            self.alarm_ll = True
        elif self.level_mm > inp.alarm_ll_mm + 20:
            self.alarm_ll = False
        self.overflow = self.level_mm >= OVERFLOW_SWITCH_MM
        if inp.alarm_reset and self.pump_trip and self.motor_temp_c < 80.0:
            self.pump_trip = False
        run = self.pump_cmd and not self.alarm_hh and not self.pump_trip
        if run and not self.pump_running:
            self.starts = (self.starts + 1) % 65536
            self._since_start_s = 0.0
            self.motor_temp_c += 1.0  # the starting current heats the winding
        self.pump_running = run
        self.outlet_closed = inp.outlet_close or self.alarm_ll

    def step(self, dt_s: float) -> None:
        """Advance the process by ``dt_s`` seconds (one PLC scan, then the physics)."""
        rng = self.rng
        self._control()
        self.t_s += dt_s
        # valve actuator travels towards its setpoint
        target = min(max(self.inputs.valve_sp_permille / 10.0, 0.0), 100.0)
        travel = VALVE_SPEED_PCT_S * dt_s
        self.valve_pct += max(-travel, min(travel, target - self.valve_pct))
        # pump flow ramps up in ~1.5 s, down in ~2 s
        target_in = self._pump_flow() * (1 + rng.gauss(0, 0.004)) if self.pump_running else 0.0
        tau = 1.5 if self.pump_running else 2.0
        self.inflow_m3h += (target_in - self.inflow_m3h) * min(1.0, dt_s / tau)
        # gravity outflow through the valve, scaled by the town's demand
        self._demand_noise += (-self._demand_noise * dt_s / 120.0) + rng.gauss(
            0, 0.004
        ) * math.sqrt(dt_s)
        demand = max(0.2, demand_factor(self.hour) + self._demand_noise)
        opening = 0.0 if self.outlet_closed else self.valve_pct / 100.0
        head = math.sqrt(max(self.level_mm, 0.0) / TANK_HEIGHT_MM)
        self.outflow_m3h = OUTLET_MAX_M3H * opening * head * demand
        # mass balance
        net_m3 = (self.inflow_m3h - self.outflow_m3h) * dt_s / 3600.0
        self.level_mm += net_m3 / TANK_AREA_M2 * 1000.0
        if self.level_mm > TANK_HEIGHT_MM:
            self.spilled_m3 += (self.level_mm - TANK_HEIGHT_MM) / 1000.0 * TANK_AREA_M2
            self.level_mm = TANK_HEIGHT_MM
        self.level_mm = max(self.level_mm, 0.0)
        # radar level transmitter: turbulence while the pump fills
        noise = 1.6 if self.pump_running else 0.6
        self.level_measured_mm = min(max(self.level_mm + rng.gauss(0, noise), 0.0), TANK_HEIGHT_MM)
        # motor: current (inrush for the first second), winding temperature, run hours
        self._since_start_s += dt_s
        if self.pump_running:
            load = 0.93 + 0.05 * (1 - self.level_mm / TANK_HEIGHT_MM)
            inrush = 1.0 + 5.0 * max(0.0, 1.0 - self._since_start_s)
            self.pump_current_a = MOTOR_CURRENT_A * load * inrush * (1 + rng.gauss(0, 0.006))
            self.run_hours += dt_s / 3600.0
            self.motor_temp_c += (62.0 - self.motor_temp_c) * dt_s / 900.0
        else:
            self.pump_current_a = 0.0
            self.motor_temp_c += (AMBIENT_C - self.motor_temp_c) * dt_s / 1800.0
        if self.motor_temp_c >= 110.0:
            self.pump_trip = True  # thermal overload relay
        # the water comes from a borehole: cool, slowly drifting
        self.water_temp_c += (11.5 - self.water_temp_c) * dt_s / 7200.0 + rng.gauss(
            0, 0.002
        ) * math.sqrt(dt_s)
        self._heartbeat_s += dt_s
        while self._heartbeat_s >= 1.0:
            self._heartbeat_s -= 1.0
            self.heartbeat = (self.heartbeat + 1) % 65536

    # -- views ----------------------------------------------------------------------------------

    def input_registers(self) -> list[int]:
        """The input register table (addresses 0-11), as the PLC serves it."""

        def u16(value: float) -> int:
            return round(value) & 0xFFFF

        run_tenths = int(self.run_hours * 10) & 0xFFFFFFFF
        regs = [0] * INPUT_REGISTERS
        regs[IR_LEVEL_MM] = u16(self.level_measured_mm)
        regs[IR_LEVEL_PCT] = u16(self.level_measured_mm / TANK_HEIGHT_MM * 1000)
        regs[IR_INFLOW] = u16(self.inflow_m3h * 10 * (1 + self.rng.gauss(0, 0.002)))
        regs[IR_OUTFLOW] = u16(self.outflow_m3h * 10 * (1 + self.rng.gauss(0, 0.002)))
        regs[IR_VALVE_POS] = u16(self.valve_pct * 10)
        regs[IR_WATER_TEMP] = u16(self.water_temp_c * 10)
        regs[IR_MOTOR_TEMP] = u16(self.motor_temp_c * 10)
        regs[IR_PUMP_CURRENT] = u16(self.pump_current_a * 10)
        regs[IR_RUN_HOURS] = run_tenths >> 16
        regs[IR_RUN_HOURS + 1] = run_tenths & 0xFFFF
        regs[IR_STARTS] = self.starts
        regs[IR_HEARTBEAT] = self.heartbeat
        return regs

    def discrete_inputs(self) -> list[bool]:
        """The discrete input table (addresses 0-6)."""
        bits = [False] * DISCRETE_INPUTS
        bits[DI_PUMP_RUNNING] = self.pump_running
        bits[DI_ALARM_HH] = self.alarm_hh
        bits[DI_ALARM_LL] = self.alarm_ll
        bits[DI_OVERFLOW] = self.overflow
        bits[DI_PUMP_TRIP] = self.pump_trip
        bits[DI_AUTO] = self.auto
        bits[DI_OUTLET_CLOSED] = self.outlet_closed
        return bits

    def snapshot(self) -> dict[str, Any]:
        """The process values in engineering units (one ``values.json`` row without time)."""
        inp = self.inputs
        return {
            "level_mm": round(self.level_mm, 1),
            "level_pct": round(self.level_mm / TANK_HEIGHT_MM * 100, 2),
            "inflow_m3h": round(self.inflow_m3h, 2),
            "outflow_m3h": round(self.outflow_m3h, 2),
            "valve_pct": round(self.valve_pct, 1),
            "pump_running": self.pump_running,
            "pump_cmd": self.pump_cmd,
            "pump_current_a": round(self.pump_current_a, 1),
            "motor_temp_c": round(self.motor_temp_c, 1),
            "water_temp_c": round(self.water_temp_c, 2),
            "run_hours": round(self.run_hours, 2),
            "pump_starts": self.starts,
            "mode": "auto" if self.auto else "manual",
            "sp_low_mm": inp.sp_low_mm,
            "sp_high_mm": inp.sp_high_mm,
            "alarm_hh_mm": inp.alarm_hh_mm,
            "alarm_ll_mm": inp.alarm_ll_mm,
            "valve_sp_pct": inp.valve_sp_permille / 10,
            "outlet_close_cmd": inp.outlet_close,
            "alarm_hh": self.alarm_hh,
            "alarm_ll": self.alarm_ll,
            "overflow": self.overflow,
            "pump_trip": self.pump_trip,
            "outlet_closed": self.outlet_closed,
            "spilled_m3": round(self.spilled_m3, 3),
            "demand": round(demand_factor(self.hour), 3),
        }


# -- the PLC ------------------------------------------------------------------------------------


class _PlcRequestHandler(ServerRequestHandler):
    """One client connection of the PLC.

    pymodbus's handler decodes one request per chunk of received bytes and answers the request
    it last decoded, so requests arriving back to back in one segment are mixed up. This one
    decodes every complete request of a chunk (with pymodbus's framer and decoder), screens each
    (:meth:`PlcServer._screen`) and answers them in order (with pymodbus's datastore and
    encoder).
    """

    plc: PlcServer
    _queue: deque[tuple[ModbusPDU, Any]]
    _worker: asyncio.Task[None] | None

    def callback_connected(self) -> None:
        super().callback_connected()
        peer = self.transport.get_extra_info("peername") if self.transport else None
        if peer:
            self.plc.peers[str(peer[0])] += 1

    def callback_data(self, data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        used_total = 0
        while used_total < len(data):
            chunk = data[used_total:]
            try:
                used, pdu = self.framer.handleFrame(self.trace_packet(False, chunk), 0, 0)
            except ModbusIOException as exc:
                # an unknown function code: exception 1, and the rest of the chunk is dropped
                function_code = chunk[7] if len(chunk) > 7 else 0
                self._send(
                    ExceptionResponse(
                        function_code & 0x7F,
                        ExcCodes.ILLEGAL_FUNCTION,
                        device_id=exc.dev_id,
                        transaction=exc.transaction_id,
                    ),
                    addr,
                )
                return len(data)
            if not used:
                break  # an incomplete request: wait for the rest
            used_total += used
            if pdu is not None:
                self._queue.append((self.trace_pdu(False, pdu), addr))
        if self._queue and self._worker is None:
            self._worker = asyncio.create_task(self._answer_all())
        return used_total

    async def _answer_all(self) -> None:
        try:
            while self._queue:
                pdu, addr = self._queue.popleft()
                await self._answer(pdu, addr)
        finally:
            self._worker = None

    async def _answer(self, pdu: ModbusPDU, addr: Any) -> None:
        verdict = self.plc._screen(pdu)
        if verdict is _SILENT:
            return
        if isinstance(verdict, ModbusPDU):
            self._send(verdict, addr)
            return
        try:
            response = await pdu.datastore_update(self.server.context, pdu.dev_id)
        except Exception:  # what pymodbus answers when its datastore fails
            _log.exception("PLC: datastore failed on %s", pdu)
            response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        self._send(response, addr)
        if isinstance(pdu, RestartCommunicationsOptionRequest):
            # answered; now the communications restart: every connection is closed
            self.plc._restart_communications()

    def _send(self, response: ModbusPDU, addr: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.pdu_send(response, addr)


class _PlcTcpServer(ModbusTcpServer):
    plc: PlcServer

    def callback_new_connection(self) -> _PlcRequestHandler:
        handler = _PlcRequestHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)  # type: ignore[no-untyped-call]
        handler.plc = self.plc
        handler._queue = deque()
        handler._worker = None
        return handler


_PASS = object()  # screening verdict: let pymodbus answer
_SILENT = object()  # screening verdict: no answer


class PlcServer:
    """The PLC of tank T-101: a pymodbus Modbus/TCP server on ``(site.plc, site.modbus_port)``
    whose registers are the scan image of a :class:`TankProcess` stepped ``site.tick_hz`` times a
    second (see the module's register map)."""

    name = "plc"

    def __init__(self, site: LabSite, seed: int = 0, *, process: TankProcess | None = None) -> None:
        self.site = site
        self.process = process if process is not None else TankProcess(seed)
        self.listen_only = False
        #: requests seen, by (unit id, function code); the screening's outcomes; connections by
        #: client address
        self.requests: Counter[tuple[int, int]] = Counter()
        self.peers: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self._server: _PlcTcpServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._history: list[dict[str, Any]] = []
        self._since_sample_s = HISTORY_PERIOD_S  # sample the first scan

    # -- Service --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the PLC's address and start the scan clock."""
        if self._server is not None:
            return
        site, proc = self.site, self.process
        inp = proc.inputs
        device = SimDevice(
            site.modbus_unit,
            simdata=(
                [SimData(0, values=[False] * COILS, datatype=DataType.BITS)],
                [SimData(0, values=[False] * DISCRETE_INPUTS, datatype=DataType.BITS)],
                [
                    SimData(
                        0,
                        values=[
                            inp.mode,
                            inp.sp_low_mm,
                            inp.sp_high_mm,
                            inp.alarm_hh_mm,
                            inp.alarm_ll_mm,
                            inp.valve_sp_permille,
                        ],
                        datatype=DataType.REGISTERS,
                    )
                ],
                [SimData(0, values=[0] * INPUT_REGISTERS, datatype=DataType.REGISTERS)],
            ),
        )
        server = _PlcTcpServer(
            device,
            address=(site.plc, site.modbus_port),
            identity=ModbusDeviceIdentification(info=dict(IDENTITY)),  # type: ignore[no-untyped-call]
        )
        server.plc = self
        # the coils the program drives, then the inputs, before the first client can read
        await server.async_setValues(site.modbus_unit, 5, COIL_PUMP, [proc.pump_cmd])
        await self._publish(server)
        try:
            await server.serve_forever(background=True)  # returns once listening
        except RuntimeError as exc:  # pymodbus: "Could not start listen"
            raise OSError(
                f"the PLC cannot listen on {site.plc}:{site.modbus_port} (in use?)"
            ) from exc
        self._server = server
        self._task = asyncio.create_task(self._clock(), name="plc scan clock")

    async def stop(self) -> None:
        """Stop the clock, close every connection and the listener (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]
            await asyncio.sleep(0)  # let the transports finish closing

    def history(self) -> list[dict[str, Any]]:
        """The process values once a second: ``{"ts_us", "device": "plc", ...}``."""
        return list(self._history)

    # -- the scan -------------------------------------------------------------------------------

    async def _clock(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.site.tick_hz
        next_t = loop.time()  # when the next scan is due
        while True:
            # the loop was busy: catch up in whole scans (at most 10 at once), never drift
            steps = min(10, 1 + int(max(0.0, loop.time() - next_t) / period))
            for _ in range(steps):
                await self._scan(period)
            next_t += steps * period
            if loop.time() - next_t > 10 * period:
                next_t = loop.time()  # far behind (a long stall): drop the backlog
            await asyncio.sleep(max(0.0, next_t - loop.time()))

    async def _scan(self, dt_s: float) -> None:
        """Read the writable tables, step the process, publish the read-only ones."""
        server = self._server
        if server is None:
            return
        unit, proc = self.site.modbus_unit, self.process
        hr = cast(list[int], await server.async_getValues(unit, 3, 0, HOLDING_REGISTERS))
        coils = cast(list[bool], await server.async_getValues(unit, 1, 0, COILS))
        inp = proc.inputs
        inp.mode, inp.sp_low_mm, inp.sp_high_mm = hr[HR_MODE], hr[HR_SP_LOW], hr[HR_SP_HIGH]
        inp.alarm_hh_mm, inp.alarm_ll_mm = hr[HR_ALARM_HH], hr[HR_ALARM_LL]
        inp.valve_sp_permille = hr[HR_VALVE_SP]
        inp.pump_cmd = bool(coils[COIL_PUMP])
        inp.alarm_reset = bool(coils[COIL_ALARM_RESET])
        inp.outlet_close = bool(coils[COIL_OUTLET_CLOSE])
        proc.step(dt_s)
        if proc.auto and proc.pump_cmd != inp.pump_cmd:
            await server.async_setValues(unit, 5, COIL_PUMP, [proc.pump_cmd])
        if inp.alarm_reset:
            await server.async_setValues(unit, 5, COIL_ALARM_RESET, [False])
        await self._publish(server)
        self._since_sample_s += dt_s
        if self._since_sample_s >= HISTORY_PERIOD_S - 1e-9:
            self._since_sample_s = 0.0
            row: dict[str, Any] = {"ts_us": now_us(), "device": self.name}
            row.update(proc.snapshot())
            row["listen_only"] = self.listen_only
            self._history.append(row)

    async def _publish(self, server: ModbusTcpServer) -> None:
        unit, proc = self.site.modbus_unit, self.process
        await server.async_setValues(unit, 4, 0, proc.input_registers())
        await server.async_setValues(unit, 2, 0, proc.discrete_inputs())

    # -- request screening ----------------------------------------------------------------------

    def _screen(self, pdu: ModbusPDU) -> object:
        """What the PLC does with a request before the datastore: pass, drop or answer."""
        self.requests[(pdu.dev_id, pdu.function_code)] += 1
        if self.listen_only:
            if isinstance(pdu, RestartCommunicationsOptionRequest):
                self.listen_only = False  # leaves listen-only mode, silently (spec 6.8.1)
                self.outcomes["left listen-only"] += 1
            else:
                self.outcomes["silent (listen-only)"] += 1
            return _SILENT
        if pdu.dev_id != self.site.modbus_unit:
            self.outcomes["gateway path unavailable"] += 1
            return ExceptionResponse(
                pdu.function_code,
                ExcCodes.GATEWAY_PATH_UNAVIABLE,
                device_id=pdu.dev_id,
                transaction=pdu.transaction_id,
            )
        if isinstance(pdu, ForceListenOnlyModeRequest):
            self.listen_only = True
            self.outcomes["entered listen-only"] += 1
            return _SILENT
        if isinstance(pdu, RestartCommunicationsOptionRequest):
            self.outcomes["communications restart"] += 1
        return _PASS

    def _restart_communications(self) -> None:
        server = self._server
        if server is None:
            return

        def close_all() -> None:
            for connection in list(server.active_connections.values()):
                connection.close()

        # after the answer has been written out
        asyncio.get_running_loop().call_later(0.05, close_all)
