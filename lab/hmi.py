"""The HMI/SCADA client of tank T-101: polls the PLC over Modbus/TCP and acts as its operator.

It connects from the HMI's own address (``site.hmi``, a pymodbus client bound with
``source_address``) and, every ``site.poll_s``:

- reads the input registers 0-11 (function 4) and the discrete inputs 0-6 (function 2);
- every fourth poll also the holding registers 0-5 (function 3) and the coils 0-2 (function 1).

Every 30-60 s the operator changes something within the plant's usual ranges
(:data:`lab.plant.NORMAL_RANGES`): one setpoint (function 6), both setpoints at once (function
16, the faceplate's "apply"), the outlet valve (function 6), or presses alarm reset (function 5);
after each write the HMI reads the holding registers back.

The operator also reacts to what the HMI shows, as a real one does after an attack: when the
mode is not automatic, a setting is out of its usual range, the outlet shut-off is closed or the
pump has tripped, and this lasts 8-15 s, the operator writes back the last good settings
(function 16), opens the outlet, resets the trip. So the plant recovers between scenarios.

When the PLC stops answering (listen-only mode, a flood) the HMI marks the poll failed, gives up
the connection after a few timeouts and reconnects, as it does when the PLC closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from lab.base import LabSite, cancel_and_wait, now_us
from lab.plant import (
    COIL_ALARM_RESET,
    COIL_OUTLET_CLOSE,
    COIL_PUMP,
    COILS,
    DEFAULT_SETTINGS,
    DI_ALARM_HH,
    DI_ALARM_LL,
    DI_AUTO,
    DI_OUTLET_CLOSED,
    DI_OVERFLOW,
    DI_PUMP_RUNNING,
    DI_PUMP_TRIP,
    DISCRETE_INPUTS,
    HOLDING_REGISTERS,
    HR_SP_HIGH,
    HR_SP_LOW,
    HR_VALVE_SP,
    INPUT_REGISTERS,
    IR_HEARTBEAT,
    IR_INFLOW,
    IR_LEVEL_MM,
    IR_LEVEL_PCT,
    IR_MOTOR_TEMP,
    IR_OUTFLOW,
    IR_PUMP_CURRENT,
    IR_RUN_HOURS,
    IR_STARTS,
    IR_VALVE_POS,
    IR_WATER_TEMP,
    MODE_AUTO,
    NORMAL_RANGES,
)

SETTING_NAMES = (
    "mode",
    "sp_low_mm",
    "sp_high_mm",
    "alarm_hh_mm",
    "alarm_ll_mm",
    "valve_sp_permille",
)
SLOW_POLL_EVERY = 4  # holding registers and coils every fourth poll


STOP_TIMEOUT_S = 3.0  # how long stop() waits for the polling task to end


class PollError(Exception):
    """A poll failed (timeout, exception response, lost connection)."""


def _i16(value: int) -> int:
    return value - 0x10000 if value & 0x8000 else value


def _settings_abnormal(settings: dict[str, int]) -> list[str]:
    """The settings outside the operator's usual ranges (mode must be automatic)."""
    bad = [] if settings["mode"] == MODE_AUTO else ["mode"]
    for name, (low, high) in NORMAL_RANGES.items():
        if not low <= settings[name] <= high:
            bad.append(name)
    return bad


class Hmi:
    """The HMI/SCADA station: a :class:`lab.base.Service` polling the PLC from ``site.hmi``."""

    name = "hmi"

    def __init__(
        self,
        site: LabSite,
        seed: int = 0,
        *,
        write_every_s: tuple[float, float] = (30.0, 60.0),
        reaction_s: tuple[float, float] = (8.0, 15.0),
        timeout_s: float = 1.0,
    ) -> None:
        self.site = site
        self.rng = random.Random(seed)  # noqa: S311 (a simulation, not cryptography)
        self.write_every_s = write_every_s
        self.reaction_s = reaction_s
        self.timeout_s = timeout_s
        self.polls = 0
        self.failed_polls = 0
        self.connects = 0
        self.writes = 0
        self.corrections = 0
        self.settings: dict[str, int] | None = None  # last holding registers read
        self.coils: list[bool] | None = None
        self.inputs: dict[str, Any] | None = None  # last input registers and discrete inputs
        self._good_settings: dict[str, int] = dict(DEFAULT_SETTINGS)
        self._client: AsyncModbusTcpClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._history: list[dict[str, Any]] = []
        self._first_poll = asyncio.Event()
        self._next_write = 0.0
        self._abnormal_since: float | None = None
        self._reaction = 0.0

    # -- Service --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start polling; returns after the first poll (or 1.5 s if the PLC is not there yet)."""
        if self._task is not None:
            return
        loop = asyncio.get_running_loop()
        self._next_write = loop.time() + self.rng.uniform(*self.write_every_s)
        self._task = asyncio.create_task(self._run(), name="hmi poll")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_poll.wait(), 1.5)

    async def stop(self) -> None:
        """Stop polling and close the connection (idempotent)."""
        task, self._task = self._task, None
        self._disconnect()  # first: a request in flight fails now instead of waiting
        # pymodbus can hold a cancelled request until its own timeout: wait a bounded time
        await cancel_and_wait(task, STOP_TIMEOUT_S)
        self._disconnect()
        await asyncio.sleep(0)

    def history(self) -> list[dict[str, Any]]:
        """What the HMI read at each poll (or why it could not), and what the operator wrote."""
        return list(self._history)

    # -- the loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 1.0
        next_poll = loop.time()
        while True:
            if self._client is None or not self._client.connected:
                if not await self._connect():
                    self.failed_polls += 1
                    self._history.append(
                        {
                            "ts_us": now_us(),
                            "device": self.name,
                            "ok": False,
                            "error": f"cannot connect to {self.site.plc}:{self.site.modbus_port}",
                        }
                    )
                    self._first_poll.set()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 1.0
            try:
                await self._poll()
                await self._operate(loop.time())
            except PollError as exc:
                self.failed_polls += 1
                self._history.append(
                    {"ts_us": now_us(), "device": self.name, "ok": False, "error": str(exc)}
                )
            self._first_poll.set()
            next_poll += self.site.poll_s
            delay = next_poll - loop.time()
            if delay < 0:
                next_poll = loop.time()  # late (the PLC was slow): poll again now, then on time
                delay = 0.0
            await asyncio.sleep(delay)

    async def _connect(self) -> bool:
        self._disconnect()
        client = AsyncModbusTcpClient(
            self.site.plc,
            port=self.site.modbus_port,
            source_address=(self.site.hmi, 0),
            name="hmi",
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,  # this loop reconnects, with its own back-off
        )
        self._client = client
        if await client.connect():
            self.connects += 1
            return True
        self._disconnect()
        return False

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _call(self, what: str, request: Any) -> ModbusPDU:
        """Await one request; a timeout, an exception response or a lost link is a PollError."""
        try:
            response: ModbusPDU = await request
        except ModbusException as exc:
            raise PollError(f"{what}: {exc}") from exc
        if response.isError():
            raise PollError(f"{what}: exception {getattr(response, 'exception_code', '?')}")
        return response

    # -- polling --------------------------------------------------------------------------------

    async def _poll(self) -> None:
        client = self._client
        if client is None:
            raise PollError("not connected")
        unit = self.site.modbus_unit
        ir = await self._call(
            "read input registers",
            client.read_input_registers(0, count=INPUT_REGISTERS, device_id=unit),
        )
        di = await self._call(
            "read discrete inputs",
            client.read_discrete_inputs(0, count=DISCRETE_INPUTS, device_id=unit),
        )
        regs, bits = ir.registers, di.bits
        values: dict[str, Any] = {
            "level_mm": regs[IR_LEVEL_MM],
            "level_pct": regs[IR_LEVEL_PCT] / 10,
            "inflow_m3h": regs[IR_INFLOW] / 10,
            "outflow_m3h": regs[IR_OUTFLOW] / 10,
            "valve_pct": regs[IR_VALVE_POS] / 10,
            "water_temp_c": _i16(regs[IR_WATER_TEMP]) / 10,
            "motor_temp_c": _i16(regs[IR_MOTOR_TEMP]) / 10,
            "pump_current_a": regs[IR_PUMP_CURRENT] / 10,
            "run_hours": ((regs[IR_RUN_HOURS] << 16) | regs[IR_RUN_HOURS + 1]) / 10,
            "pump_starts": regs[IR_STARTS],
            "heartbeat": regs[IR_HEARTBEAT],
            "pump_running": bits[DI_PUMP_RUNNING],
            "alarm_hh": bits[DI_ALARM_HH],
            "alarm_ll": bits[DI_ALARM_LL],
            "overflow": bits[DI_OVERFLOW],
            "pump_trip": bits[DI_PUMP_TRIP],
            "auto": bits[DI_AUTO],
            "outlet_closed": bits[DI_OUTLET_CLOSED],
        }
        self.inputs = values
        row: dict[str, Any] = {"ts_us": now_us(), "device": self.name, "ok": True, **values}
        if self.polls % SLOW_POLL_EVERY == 0:
            await self._read_settings()
            co = await self._call("read coils", client.read_coils(0, count=COILS, device_id=unit))
            self.coils = list(co.bits[:COILS])
            row["pump_cmd"] = self.coils[COIL_PUMP]
            row["outlet_close_cmd"] = self.coils[COIL_OUTLET_CLOSE]
            assert self.settings is not None
            row.update(self.settings)
        self.polls += 1
        self._history.append(row)

    async def _read_settings(self) -> None:
        client = self._client
        if client is None:
            raise PollError("not connected")
        hr = await self._call(
            "read holding registers",
            client.read_holding_registers(
                0, count=HOLDING_REGISTERS, device_id=self.site.modbus_unit
            ),
        )
        self.settings = dict(zip(SETTING_NAMES, hr.registers, strict=True))
        if not _settings_abnormal(self.settings):
            self._good_settings = dict(self.settings)

    # -- the operator ---------------------------------------------------------------------------

    async def _operate(self, now: float) -> None:
        if self.settings is None or self.coils is None or self.inputs is None:
            return
        problems = _settings_abnormal(self.settings)
        if self.coils[COIL_OUTLET_CLOSE]:
            problems.append("outlet closed")
        if self.inputs["pump_trip"]:
            problems.append("pump trip")
        if problems:
            if self._abnormal_since is None:
                self._abnormal_since = now
                self._reaction = self.rng.uniform(*self.reaction_s)
            elif now - self._abnormal_since >= self._reaction:
                await self._correct(problems)
                self._abnormal_since = None
            return
        self._abnormal_since = None
        if now >= self._next_write:
            self._next_write = now + self.rng.uniform(*self.write_every_s)
            await self._routine_write()

    async def _write(self, what: str, request: Any, detail: dict[str, Any]) -> None:
        await self._call(what, request)
        self.writes += 1
        self._history.append({"ts_us": now_us(), "device": self.name, "ok": True, "write": detail})

    async def _routine_write(self) -> None:
        """One everyday change, within the usual ranges, then read the settings back."""
        client, settings = self._client, self.settings
        if client is None or settings is None:
            return
        unit, rng = self.site.modbus_unit, self.rng

        def nudge(name: str, steps: tuple[int, ...]) -> int:
            low, high = NORMAL_RANGES[name]
            return min(high, max(low, settings[name] + rng.choice(steps)))

        choice = rng.random()
        if choice < 0.45:
            name = rng.choice(("sp_low_mm", "sp_high_mm"))
            address = HR_SP_LOW if name == "sp_low_mm" else HR_SP_HIGH
            value = nudge(name, (-100, -50, 50, 100))
            await self._write(
                "write setpoint",
                client.write_register(address, value, device_id=unit),
                {"function": 6, "address": address, "values": [value], "why": "routine"},
            )
        elif choice < 0.65:
            values = [nudge("sp_low_mm", (-50, 0, 50)), nudge("sp_high_mm", (-50, 0, 50))]
            await self._write(
                "write setpoints",
                client.write_registers(HR_SP_LOW, values, device_id=unit),
                {"function": 16, "address": HR_SP_LOW, "values": values, "why": "routine"},
            )
        elif choice < 0.90:
            value = nudge("valve_sp_permille", (-50, -30, -20, 20, 30, 50))
            await self._write(
                "write valve setpoint",
                client.write_register(HR_VALVE_SP, value, device_id=unit),
                {"function": 6, "address": HR_VALVE_SP, "values": [value], "why": "routine"},
            )
        else:
            await self._write(
                "alarm reset",
                client.write_coil(COIL_ALARM_RESET, True, device_id=unit),
                {"function": 5, "address": COIL_ALARM_RESET, "values": [True], "why": "routine"},
            )
        await self._read_settings()

    async def _correct(self, problems: list[str]) -> None:
        """Put the plant back: last good settings, outlet open, trip reset."""
        client, settings, coils = self._client, self.settings, self.coils
        if client is None or settings is None or coils is None:
            return
        unit = self.site.modbus_unit
        why = "operator restores: " + ", ".join(problems)
        self.corrections += 1
        if _settings_abnormal(settings):
            values = [self._good_settings[name] for name in SETTING_NAMES]
            await self._write(
                "restore settings",
                client.write_registers(0, values, device_id=unit),
                {"function": 16, "address": 0, "values": values, "why": why},
            )
        if coils[COIL_OUTLET_CLOSE]:
            await self._write(
                "open outlet",
                client.write_coil(COIL_OUTLET_CLOSE, False, device_id=unit),
                {"function": 5, "address": COIL_OUTLET_CLOSE, "values": [False], "why": why},
            )
            coils[COIL_OUTLET_CLOSE] = False
        if self.inputs is not None and self.inputs["pump_trip"]:
            await self._write(
                "alarm reset",
                client.write_coil(COIL_ALARM_RESET, True, device_id=unit),
                {"function": 5, "address": COIL_ALARM_RESET, "values": [True], "why": why},
            )
        await self._read_settings()
