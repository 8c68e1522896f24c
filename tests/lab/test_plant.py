"""The Modbus/TCP plant: the tank's physics, the PLC (a pymodbus server) read and written by a
pymodbus client, the HMI polling it, and every Modbus attack scenario run against it.

Every test uses its own free port on the PLC's loopback address, so they run beside others.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersRequest

from lab import attacks_modbus
from lab.attacks_modbus import Timing
from lab.base import SCENARIOS, LabSite
from lab.hmi import Hmi
from lab.plant import (
    DEFAULT_SETTINGS,
    IDENTITY,
    NORMAL_RANGES,
    TANK_HEIGHT_MM,
    PlcServer,
    TankProcess,
    demand_factor,
)

ATTACK = Path(__file__).resolve().parents[3] / "shared" / "data" / "ics-attack.json"
MODBUS_SCENARIOS = sorted(name for name in SCENARIOS if SCENARIOS[name].protocol == "modbus")


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def site() -> LabSite:
    # every port free and random: nothing here reaches a lab somebody else is running
    return LabSite(
        modbus_port=free_port(LabSite.plc),
        opcua_port=free_port(LabSite.opcua),
        dlms_port=free_port(LabSite.meters[0]),
        mqtt_port=free_port(LabSite.broker),
        poll_s=0.1,
    )


def client_from(site: LabSite, source: str) -> AsyncModbusTcpClient:
    return AsyncModbusTcpClient(
        site.plc,
        port=site.modbus_port,
        source_address=(source, 0),
        timeout=1,
        retries=0,
        reconnect_delay=0,
    )


def run_with_plc(
    site: LabSite,
    body: Callable[[PlcServer], Awaitable[None]],
    process: TankProcess | None = None,
) -> None:
    async def main() -> None:
        plc = PlcServer(site, seed=7, process=process)
        started = time.monotonic()
        await plc.start()
        assert time.monotonic() - started < 10.0  # promptly, not a speed target
        try:
            await body(plc)
        finally:
            await plc.stop()
            await plc.stop()  # idempotent

    asyncio.run(main())


async def wait_for(condition: Callable[[], Awaitable[bool]], seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if await condition():
            return True
        await asyncio.sleep(0.1)
    return False


# -- the process, without I/O -------------------------------------------------------------------


def test_auto_mode_cycles_the_pump_between_its_setpoints() -> None:
    tank = TankProcess(seed=1)
    levels, switches = [], 0
    running = tank.pump_running
    for _ in range(4 * 3600):  # four hours in 1 s steps
        tank.step(1.0)
        levels.append(tank.level_mm)
        if tank.pump_running != running:
            switches += 1
            running = tank.pump_running
    assert switches >= 4  # stopped at the high setpoint, restarted at the low one, ...
    assert min(levels) > DEFAULT_SETTINGS["sp_low_mm"] - 20
    assert max(levels) < DEFAULT_SETTINGS["sp_high_mm"] + 20
    assert not tank.alarm_hh
    assert not tank.overflow
    snapshot = tank.snapshot()
    assert 9 < snapshot["water_temp_c"] < 14
    assert snapshot["run_hours"] > 8000


def test_same_seed_same_values_and_a_daily_cycle() -> None:
    a, b = TankProcess(seed=5), TankProcess(seed=5)
    for _ in range(600):
        a.step(0.1)
        b.step(0.1)
    assert a.snapshot() == b.snapshot()
    assert a.input_registers() == b.input_registers()
    assert TankProcess(seed=6).snapshot() != TankProcess(seed=5).snapshot()
    assert demand_factor(7.5) > 0.9 > demand_factor(19.5) > 0.7 > demand_factor(3.0) > 0.35


def test_out_of_range_settings_really_change_the_process() -> None:
    # the stop level beyond the tank: the pump runs on until the high-high interlock stops it
    tank = TankProcess(seed=2, level_mm=3000, pump_running=True)
    tank.inputs.sp_high_mm = 60000
    for _ in range(3600):
        tank.step(1.0)
    assert tank.alarm_hh
    assert not tank.pump_running
    assert 3590 < tank.level_mm < 3620
    # and the high-high limit beyond it too: the tank overflows, the float switch reports it
    tank = TankProcess(seed=2, level_mm=3000, pump_running=True)
    tank.inputs.sp_low_mm, tank.inputs.sp_high_mm, tank.inputs.alarm_hh_mm = 4500, 60000, 65000
    for _ in range(2 * 3600):
        tank.step(1.0)
    assert tank.overflow
    assert not tank.alarm_hh  # suppressed
    assert tank.level_mm == TANK_HEIGHT_MM
    assert tank.spilled_m3 > 1.0


def test_rapid_pump_starts_trip_the_motor() -> None:
    tank = TankProcess(seed=3, level_mm=2000, pump_running=False)
    tank.inputs.mode = 0  # manual
    for i in range(200):
        tank.inputs.pump_cmd = i % 2 == 0
        tank.step(0.1)
    assert tank.pump_trip
    assert not tank.pump_running
    assert tank.discrete_inputs()[4]


# -- the PLC over Modbus/TCP --------------------------------------------------------------------


def test_register_map_identity_and_unit_ids(site: LabSite) -> None:
    async def body(plc: PlcServer) -> None:
        client = client_from(site, site.hmi)
        assert await client.connect()
        try:
            assert client.ctx.transport.get_extra_info("sockname")[0] == site.hmi
            hr = await client.read_holding_registers(0, count=6, device_id=site.modbus_unit)
            assert hr.registers == [
                DEFAULT_SETTINGS[name]
                for name in (
                    "mode",
                    "sp_low_mm",
                    "sp_high_mm",
                    "alarm_hh_mm",
                    "alarm_ll_mm",
                    "valve_sp_permille",
                )
            ]
            ir = await client.read_input_registers(0, count=12, device_id=site.modbus_unit)
            level_mm, level_permille, inflow = ir.registers[0], ir.registers[1], ir.registers[2]
            assert 2900 < level_mm < 3200
            assert abs(level_permille - level_mm / 4) <= 2
            assert 300 < inflow < 360  # 0.1 m³/h: the pump runs at start
            assert 80_000 < (ir.registers[8] << 16 | ir.registers[9]) < 210_000  # 0.1 h
            di = await client.read_discrete_inputs(0, count=7, device_id=site.modbus_unit)
            assert di.bits[:7] == [True, False, False, False, False, True, False]
            coils = await client.read_coils(0, count=3, device_id=site.modbus_unit)
            assert coils.bits[:3] == [True, False, False]
            # beyond the map: illegal data address; another unit id: gateway path unavailable
            beyond = await client.read_holding_registers(6, count=1, device_id=site.modbus_unit)
            assert beyond.isError()
            assert beyond.exception_code == 2
            other = await client.read_holding_registers(0, count=1, device_id=17)
            assert other.isError()
            assert other.exception_code == 10
            assert other.dev_id == 17
            ident = await client.read_device_information(read_code=3, device_id=site.modbus_unit)
            assert {k: v.decode() for k, v in ident.information.items()} == IDENTITY
            server_id = await client.report_device_id(device_id=site.modbus_unit)
            assert server_id.identifier.startswith(b"Hydrion Automation-HX-340-ETH-V3.2.7")
        finally:
            client.close()
        assert plc.peers[site.hmi] == 1

    run_with_plc(site, body)


def test_back_to_back_requests_are_all_answered(site: LabSite) -> None:
    """Two requests in one segment (a client that does not wait) get two answers, in order."""

    async def body(plc: PlcServer) -> None:
        reader, writer = await asyncio.open_connection(site.plc, site.modbus_port)
        framer = FramerSocket(DecodePDU(False))
        first = ReadHoldingRegistersRequest(address=0, count=2, dev_id=1, transaction_id=11)
        second = ReadInputRegistersRequest(address=0, count=1, dev_id=1, transaction_id=12)
        writer.write(framer.buildFrame(first) + framer.buildFrame(second))
        data, answers = b"", []
        while len(answers) < 2:
            data += await asyncio.wait_for(reader.read(256), 2)
            used, answer = framer.handleFrame(data, 0, 0)
            while used and answer is not None:
                answers.append(answer)
                data = data[used:]
                used, answer = framer.handleFrame(data, 0, 0)
        assert (answers[0].transaction_id, answers[0].registers) == (11, [1, 1200])
        assert (answers[1].transaction_id, len(answers[1].registers)) == (12, 1)
        assert plc.requests[(1, 3)] == plc.requests[(1, 4)] == 1
        writer.close()
        await writer.wait_closed()

    run_with_plc(site, body)


def test_writing_the_pump_on_raises_the_level(site: LabSite) -> None:
    tank = TankProcess(seed=4, level_mm=2000, pump_running=False)
    tank.inputs.valve_sp_permille, tank.valve_pct = 0, 0.0  # outlet closed: only the pump counts

    async def body(plc: PlcServer) -> None:
        client = client_from(site, site.hmi)
        assert await client.connect()
        try:
            unit = site.modbus_unit
            assert not (await client.write_register(0, 0, device_id=unit)).isError()  # manual
            start_level = plc.process.level_mm
            assert not (await client.write_coil(0, True, device_id=unit)).isError()

            async def running() -> bool:
                di = await client.read_discrete_inputs(0, count=1, device_id=unit)
                return bool(di.bits[0])

            assert await wait_for(running, 2.0)
            await asyncio.sleep(3.0)  # the flow ramps up in ~1.5 s
            ir = await client.read_input_registers(0, count=8, device_id=unit)
            assert ir.registers[2] > 250  # inflow, 0.1 m³/h
            assert ir.registers[7] > 100  # motor current, 0.1 A
            assert plc.process.level_mm > start_level + 2.0  # ~1.8 mm/s at full flow
            await client.write_coil(0, False, device_id=unit)

            async def stopped() -> bool:
                return not await running()

            assert await wait_for(stopped, 2.0)
        finally:
            client.close()

    run_with_plc(site, body, tank)


def test_out_of_range_setpoint_is_accepted_and_raises_the_alarm(site: LabSite) -> None:
    tank = TankProcess(seed=4, level_mm=3597, pump_running=False)
    tank.inputs.valve_sp_permille, tank.valve_pct = 0, 0.0

    async def body(plc: PlcServer) -> None:
        client = client_from(site, site.attacker)
        assert await client.connect()
        try:
            unit = site.modbus_unit
            # a pump start level above the 4,000 mm tank: a naive PLC takes it
            assert not (await client.write_register(1, 4500, device_id=unit)).isError()
            hr = await client.read_holding_registers(1, count=1, device_id=unit)
            assert hr.registers == [4500]

            async def alarm() -> bool:
                di = await client.read_discrete_inputs(0, count=2, device_id=unit)
                return bool(di.bits[1])

            assert await wait_for(alarm, 8.0)
            assert not plc.process.pump_running  # the high-high interlock stopped it
        finally:
            client.close()
        assert plc.peers[site.attacker] == 1
        assert any(row["alarm_hh"] for row in plc.history())

    run_with_plc(site, body, tank)


# -- the HMI ------------------------------------------------------------------------------------


def test_hmi_polls_and_the_operator_writes_within_range(site: LabSite) -> None:
    async def body(plc: PlcServer) -> None:
        hmi = Hmi(site, seed=3, write_every_s=(0.3, 0.6))
        started = time.monotonic()
        await hmi.start()
        assert time.monotonic() - started < 10.0  # promptly, not a speed target
        await asyncio.sleep(2.5)
        await hmi.stop()
        await hmi.stop()
        rows = hmi.history()
        polls = [row for row in rows if row["ok"] and "level_mm" in row]
        writes = [row["write"] for row in rows if "write" in row]
        assert len(polls) >= 12
        assert all(row["device"] == "hmi" and row["ts_us"] > 0 for row in rows)
        assert all(2800 < row["level_mm"] < 3300 for row in polls)
        assert any("sp_low_mm" in row for row in polls)  # the slow poll of the settings
        assert writes
        for write in writes:
            assert write["why"] == "routine"
        settings = polls[-1]
        for name, (low, high) in NORMAL_RANGES.items():
            if name in settings:
                assert low <= settings[name] <= high
        assert set(plc.peers) == {site.hmi}  # only the HMI (a slow poll may reconnect)
        functions = {fc for (_, fc) in plc.requests}
        assert {1, 2, 3, 4} <= functions
        assert functions & {5, 6, 16}

    run_with_plc(site, body)


def test_hmi_reconnects_and_the_operator_restores_tampered_settings(site: LabSite) -> None:
    async def main() -> None:
        plc = PlcServer(site, seed=1)
        await plc.start()
        hmi = Hmi(site, seed=1, write_every_s=(60.0, 60.0), reaction_s=(0.3, 0.4))
        await hmi.start()
        try:
            await plc.stop()  # the PLC goes away: polls fail
            await asyncio.sleep(0.5)
            plc = PlcServer(site, seed=1)
            await plc.start()
            assert await wait_for(_true_when(lambda: hmi.connects >= 2), 6.0)
            # an attacker sets the stop level beyond the tank; the operator puts it back
            client = client_from(site, site.attacker)
            assert await client.connect()
            await client.write_register(2, 60000, device_id=site.modbus_unit)

            async def restored() -> bool:
                hr = await client.read_holding_registers(2, count=1, device_id=site.modbus_unit)
                return bool(hr.registers == [DEFAULT_SETTINGS["sp_high_mm"]])

            assert await wait_for(restored, 4.0)
            client.close()
        finally:
            await hmi.stop()
            await plc.stop()
        rows = hmi.history()
        assert any(not row["ok"] for row in rows)
        assert any(
            row.get("write", {}).get("why", "").startswith("operator restores") for row in rows
        )
        assert hmi.corrections >= 1

    asyncio.run(main())


def _true_when(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


# -- the attack scenarios -----------------------------------------------------------------------


@pytest.fixture
def quick_scenarios(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        attacks_modbus,
        "TIMING",
        Timing(watch_s=0.6, toggle_s=0.3, restart_gap_s=0.3, listen_only_s=0.5, flood_s=0.5),
    )
    # the scan tries only the site's own (random) ports: never a lab somebody else runs
    monkeypatch.setattr(attacks_modbus, "SCAN_PORTS", ())


def test_every_scenario_technique_is_in_attack_for_ics() -> None:
    assert len(MODBUS_SCENARIOS) >= 10
    if not ATTACK.exists():
        pytest.skip("../shared/data/ics-attack.json not present")
    names: dict[str, str] = {}
    for obj in json.loads(ATTACK.read_text())["objects"]:
        if obj.get("type") == "attack-pattern" and not obj.get("revoked"):
            for ref in obj.get("external_references", []):
                if ref.get("source_name") == "mitre-attack":
                    names[ref["external_id"]] = obj["name"]
    for name in MODBUS_SCENARIOS:
        for technique in SCENARIOS[name].techniques:
            assert technique in names, (name, technique)


CHECKS: dict[str, Callable[[LabSite, PlcServer, dict[str, Any]], None]] = {
    "modbus_unit_id_scan": lambda site, plc, r: (
        _eq(r["units_found"], [site.modbus_unit]),
        _eq(plc.outcomes["gateway path unavailable"], 248),
    ),
    "modbus_network_scan": lambda site, plc, r: (
        _eq(site.modbus_port in r["open"][site.plc], True),
        _eq(r["modbus_servers"][f"{site.plc}:{site.modbus_port}"].startswith("Hydrion"), True),
        _eq(r["connections_attempted"], 254 * 2),  # the site's Modbus and OPC UA ports
    ),
    "modbus_device_identification": lambda site, plc, r: (
        _eq(r["identity"]["0x00"], IDENTITY[0]),
        _eq(r["identity"]["0x02"], IDENTITY[2]),
    ),
    "modbus_point_enumeration": lambda site, plc, r: (
        _eq(r["points"]["holding_registers"], list(range(6))),
        _eq(r["points"]["input_registers"], list(range(12))),
        _eq(r["points"]["coils"], list(range(16))),
    ),
    "modbus_rogue_master_write": lambda site, plc, r: (
        _eq(plc.process.inputs.mode, 0),
        _eq(plc.process.inputs.valve_sp_permille, 0),
        _eq(plc.process.pump_cmd, True),
    ),
    "modbus_setpoint_tampering": lambda site, plc, r: (
        _eq(r["settings_after"][1:4], [4500, 60000, 65000]),
        _eq(plc.process.inputs.alarm_hh_mm, 65000),
        _eq(all(state["pump_running"] for state in r["process_after"]), True),
    ),
    "modbus_coil_brute_force": lambda site, plc, r: (
        _eq(r["writes"] >= 36, True),
        _eq(plc.process.inputs.outlet_close, False),
    ),
    "modbus_restart_communications": lambda site, plc, r: (
        _eq(r["answers"], ["ok", "connection closed by the PLC"] * 2),
        _eq(plc.outcomes["communications restart"], 2),
    ),
    "modbus_force_listen_only": lambda site, plc, r: (
        _eq(r["checks"], {"before": "ok", "in listen-only": "no response", "after restart": "ok"}),
        _eq(plc.listen_only, False),
    ),
    "modbus_request_flood": lambda site, plc, r: (
        _eq(r["answered"], r["requests"]),
        _eq(r["requests"] > 500, True),
    ),
}


def _eq(got: object, expected: object) -> None:
    assert got == expected


@pytest.mark.usefixtures("quick_scenarios")
@pytest.mark.parametrize("name", MODBUS_SCENARIOS)
def test_scenario_runs_from_the_attacker_against_the_plc(site: LabSite, name: str) -> None:
    async def body(plc: PlcServer) -> None:
        started = time.monotonic()
        result = await SCENARIOS[name].run(site)
        assert time.monotonic() - started < 10
        json.dumps(result)  # goes into labels.json
        assert site.plc in result["targets"]
        assert set(plc.peers) == {site.attacker}
        await asyncio.sleep(0.3)  # a few PLC scans: the process has read the last writes
        CHECKS[name](site, plc, result)

    run_with_plc(site, body)


def test_a_scenario_reopens_a_connection_the_plc_closed(site: LabSite) -> None:
    async def body(plc: PlcServer) -> None:
        client = attacks_modbus._client(site)
        assert await client.connect()
        try:
            outcome, _ = await attacks_modbus._try(client, "diag_restart_communication", False)
            assert outcome == "ok"
            await asyncio.sleep(0.3)
            assert not client.connected  # the PLC restarted its communications
            outcome, response = await attacks_modbus._try(
                client, "read_holding_registers", 0, count=2, device_id=site.modbus_unit
            )
            assert outcome == "ok"
            assert response is not None
            assert response.registers == [1, 1200]
        finally:
            client.close()
        assert plc.peers[site.attacker] == 2

    run_with_plc(site, body)


def test_default_scenario_timing_fits_the_lab() -> None:
    timing = attacks_modbus.TIMING
    longest = max(
        timing.watch_s + 1,
        timing.toggle_s + 1,
        2 * (timing.restart_gap_s + 0.5),
        timing.listen_only_s + 1,
        timing.flood_s,
    )
    assert longest <= 12
