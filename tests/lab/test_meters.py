"""The smart meters (DLMS/COSEM over the TCP wrapper), the head-end and the DLMS attacks.

Every exchange goes through the dlms-cosem client against the meters on loopback, on a free
port. Most tests drive the meters' time with a fake clock, so that a quarter of an hour or a day
passes at once and the values can be checked against what a household does in that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from dlms_cosem import cosem, dlms_data
from dlms_cosem import enumerations as enums
from dlms_cosem.exceptions import DlmsClientException
from dlms_cosem.parsers import AssociationObjectListParser, ProfileGenericBufferParser

from lab import attacks_dlms  # noqa: F401 (registers the scenarios)
from lab.base import SCENARIOS, LabSite
from lab.head_end import (
    HeadEnd,
    attribute,
    dlms_session,
    encode_datetime,
    get_attribute,
    public_session,
    read_clock,
    read_profile,
    read_value,
)
from lab.meters import (
    ASSOCIATION,
    CLOCK,
    DISCONNECT_CONTROL,
    ENERGY_EXPORT,
    ENERGY_IMPORT,
    LOAD_PROFILE,
    LOGICAL_DEVICE_NAME,
    MAX_PDU,
    POWER_EXPORT,
    POWER_IMPORT,
    UNIT_V,
    UNIT_W,
    UNIT_WH,
    VOLTAGE_L1,
    Meters,
    build_model,
    obis,
)
from lab.sun import City

PARIS = ZoneInfo("Europe/Paris")
#: a Wednesday in June, at the evening peak
EVENING = datetime(2024, 6, 19, 19, 30, tzinfo=PARIS)


class FakeClock:
    """The meters' true time, moved by the test."""

    def __init__(self, when: datetime) -> None:
        self.t = when.timestamp()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def free_port(addresses: tuple[str, ...]) -> int:
    """A port free on every one of ``addresses``."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port: int = probe.getsockname()[1]
        try:
            with contextlib.ExitStack() as stack:
                for address in addresses:
                    sock = stack.enter_context(socket.socket())
                    sock.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def run(test: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(test(), timeout)

    asyncio.run(bounded())


@contextlib.asynccontextmanager
async def site_meters(**options: Any) -> AsyncIterator[tuple[LabSite, Meters]]:
    site = LabSite(dlms_port=free_port(LabSite().meters), meter_poll_s=0.3)
    meters = Meters(site, **{"backfill_days": 1.0, **options})
    await meters.start()
    try:
        yield site, meters
    finally:
        await meters.stop()


def disconnector(method: int) -> Any:
    """Disconnect control's remote_disconnect (1) or remote_reconnect (2)."""
    return cosem.CosemMethod(
        enums.CosemInterface.DISCONNECT_CONTROL, obis(DISCONNECT_CONTROL), method
    )


def session(site: LabSite, meter: str, **options: Any) -> Any:
    return dlms_session(meter, site.dlms_port, source=site.head_end, **options)


def test_clock_registers_and_energy_over_a_quarter_hour() -> None:
    clock = FakeClock(EVENING)

    async def scenario() -> None:
        async with site_meters(clock=clock) as (site, _meters):

            def read() -> None:
                with session(site, site.meters[0]) as client:
                    assert read_clock(client) == EVENING
                    assert read_value(client, 3, ENERGY_IMPORT, 3) == [0, UNIT_WH]
                    assert read_value(client, 3, POWER_IMPORT, 3) == [0, UNIT_W]
                    assert read_value(client, 3, VOLTAGE_L1, 3) == [-1, UNIT_V]
                    before = read_value(client, 3, ENERGY_IMPORT)
                    power = read_value(client, 3, POWER_IMPORT)
                    volts = read_value(client, 3, VOLTAGE_L1) / 10
                    assert 2_000_000 < before < 40_000_000  # years of a household, Wh
                    assert 40 <= power <= 12_000  # a household at the evening peak, W
                    assert read_value(client, 3, POWER_EXPORT) == 0  # no PV on this one
                    assert 207.0 <= volts <= 253.0  # EN 50160: 230 V +-10 %
                    clock.advance(900)
                    assert read_clock(client) == EVENING + timedelta(minutes=15)
                    gained = read_value(client, 3, ENERGY_IMPORT) - before
                    assert 10 <= gained <= 3000  # 40 W .. 12 kW for a quarter of an hour

            await asyncio.to_thread(read)

    run(scenario)


def test_load_profile_backfilled_in_blocks_and_read_by_range() -> None:
    clock = FakeClock(EVENING)

    async def scenario() -> None:
        async with site_meters(clock=clock) as (site, _meters):

            def read() -> None:
                with session(site, site.meters[0]) as client:
                    assert read_value(client, 7, LOAD_PROFILE, 4) == 900
                    captured = read_value(client, 7, LOAD_PROFILE, 3)
                    assert [(c[0], bytes(c[1]), c[2]) for c in captured] == [
                        (8, bytes([0, 0, 1, 0, 0, 255]), 2),
                        (3, bytes([1, 0, 1, 8, 0, 255]), 2),
                        (3, bytes([1, 0, 2, 8, 0, 255]), 2),
                    ]
                    raw = get_attribute(client, 7, LOAD_PROFILE, 2)  # the whole buffer
                    assert isinstance(raw, bytes)
                    assert len(raw) > MAX_PDU  # so it came in GET blocks
                    parser = ProfileGenericBufferParser(
                        capture_objects=[
                            attribute(8, CLOCK, 2),
                            attribute(3, ENERGY_IMPORT, 2),
                            attribute(3, ENERGY_EXPORT, 2),
                        ],
                        capture_period=15,
                    )
                    entries = [[c.value for c in row] for row in parser.parse_bytes(raw)]
                    assert len(entries) == 96  # one day of quarter-hours
                    assert entries[-1][0] == EVENING
                    steps = {b[0] - a[0] for a, b in itertools.pairwise(entries)}
                    assert steps == {timedelta(minutes=15)}
                    imports = [row[1] for row in entries]
                    assert imports == sorted(imports)
                    daily = imports[-1] - imports[0]
                    assert 5_000 <= daily <= 20_000  # a household's day, Wh
                    recent = read_profile(client, EVENING - timedelta(hours=2), EVENING)
                    assert [row["clock"] for row in recent] == [
                        EVENING - timedelta(minutes=15 * k) for k in range(8, -1, -1)
                    ]
                    assert [row["energy_import_wh"] for row in recent] == imports[-9:]

            await asyncio.to_thread(read)

    run(scenario)


def test_remote_disconnect_stops_import_and_reconnect_restores_it() -> None:
    clock = FakeClock(EVENING)

    async def scenario() -> None:
        async with site_meters(clock=clock) as (site, meters):

            def act() -> None:
                with session(site, site.meters[1]) as client:
                    assert read_value(client, 70, DISCONNECT_CONTROL, 3) == 1  # connected
                    assert read_value(client, 3, POWER_IMPORT) > 0
                    client.action(disconnector(1), dlms_data.IntegerData(0).to_bytes())
                    assert read_value(client, 70, DISCONNECT_CONTROL, 3) == 0  # disconnected
                    assert read_value(client, 70, DISCONNECT_CONTROL, 2) is False  # output
                    assert read_value(client, 3, POWER_IMPORT) == 0
                    frozen = read_value(client, 3, ENERGY_IMPORT)
                    clock.advance(1800)
                    assert read_value(client, 3, ENERGY_IMPORT) == frozen
                    client.action(disconnector(2), dlms_data.IntegerData(0).to_bytes())
                    assert read_value(client, 70, DISCONNECT_CONTROL, 3) == 1
                    assert read_value(client, 3, POWER_IMPORT) > 0
                    clock.advance(900)
                    assert read_value(client, 3, ENERGY_IMPORT) > frozen

            await asyncio.to_thread(act)
            events = [row for row in meters.history() if row["kind"] == "event"]
            assert [row["event"] for row in events] == ["remote_disconnect", "remote_reconnect"]
            assert {row["client"] for row in events} == {site.head_end}

    run(scenario)


def test_clock_set_moves_the_meter_clock_and_its_profile() -> None:
    clock = FakeClock(EVENING)
    shifted = EVENING + timedelta(days=365)

    async def scenario() -> None:
        async with site_meters(clock=clock) as (site, meters):

            def act() -> None:
                with session(site, site.meters[2]) as client:
                    response = client.set(attribute(8, CLOCK, 2), encode_datetime(shifted))
                    assert response.result == enums.DataAccessResult.SUCCESS
                    assert read_clock(client) == shifted
                    clock.advance(900)
                    assert read_clock(client) == shifted + timedelta(minutes=15)
                    last = read_profile(client, shifted, shifted + timedelta(hours=1))
                    assert [row["clock"] for row in last] == [shifted + timedelta(minutes=15)]

            await asyncio.to_thread(act)
            meters.sample()
            sample = [r for r in meters.history() if r["device"] == site.meters[2]][-1]
            assert sample["clock_offset_s"] == pytest.approx(365 * 86400, abs=1)

    run(scenario)


def test_public_client_reads_identity_only_and_lls_is_checked() -> None:
    async def scenario() -> None:
        async with site_meters() as (site, meters):

            def probe() -> None:
                meter = site.meters[0]
                with public_session(meter, site.dlms_port, source=site.attacker) as client:
                    name = bytes(read_value(client, 1, LOGICAL_DEVICE_NAME))
                    assert len(name) == 16
                    assert name.startswith(b"LAB")
                    assert get_attribute(client, 3, ENERGY_IMPORT, 2) == (
                        enums.DataAccessResult.READ_WRITE_DENIED
                    )
                    assert get_attribute(client, 3, "1.0.3.8.0.255", 2) == (
                        enums.DataAccessResult.OBJECT_UNDEFINED
                    )
                    refused = client.set(attribute(8, CLOCK, 2), encode_datetime(EVENING))
                    assert refused.result == enums.DataAccessResult.READ_WRITE_DENIED
                    listed = AssociationObjectListParser.parse_bytes(
                        client.get(attribute(15, ASSOCIATION, 2))
                    )
                    codes = {item.logical_name.to_string(separator=".") for item in listed}
                    assert {CLOCK, ENERGY_IMPORT, LOAD_PROFILE, DISCONNECT_CONTROL} <= codes
                with pytest.raises(DlmsClientException), session(site, meter, password=b"0000"):
                    pass
                # the management client without LLS
                with pytest.raises(DlmsClientException), session(site, meter, password=None):
                    pass

            await asyncio.to_thread(probe)
            refusals = [r for r in meters.history() if r.get("event") == "association_rejected"]
            assert [r["diagnostic"] for r in refusals] == [
                "authentication_failed",
                "authentication_required",
            ]

    run(scenario)


def test_household_and_prosumer_over_a_summer_day() -> None:
    morning = datetime(2024, 6, 19, 6, 0, tzinfo=PARIS)
    clock = FakeClock(morning)

    async def scenario() -> None:
        async with site_meters(clock=clock) as (site, _meters):

            def day() -> dict[str, tuple[int, int, int, int]]:
                before = {}
                for meter in site.meters:
                    with session(site, meter) as client:
                        before[meter] = (
                            read_value(client, 3, ENERGY_IMPORT),
                            read_value(client, 3, ENERGY_EXPORT),
                        )
                clock.advance(12 * 3600)
                out = {}
                for meter in site.meters:
                    with session(site, meter) as client:
                        out[meter] = (
                            *before[meter],
                            read_value(client, 3, ENERGY_IMPORT),
                            read_value(client, 3, ENERGY_EXPORT),
                        )
                return out

            readings = await asyncio.to_thread(day)
            *households, prosumer = site.meters
            for meter in households:
                imp0, exp0, imp1, exp1 = readings[meter]
                assert 2_000 <= imp1 - imp0 <= 12_000  # 06:00-18:00, Wh
                assert exp1 == exp0
            imp0, exp0, imp1, exp1 = readings[prosumer]
            assert exp1 - exp0 >= 8_000  # a June day of rooftop PV, most of it exported
            assert imp1 - imp0 < 4_000  # the house runs on its own PV by day

    run(scenario, timeout=30)


def test_values_are_deterministic_given_the_seed() -> None:
    start = EVENING.timestamp()

    def day(seed: int) -> tuple[int, int]:
        model = build_model("127.0.20.4", 3, seed, True, City(), start)
        model.advance(start + 86400)
        return int(model.energy_import_wh), int(model.energy_export_wh)

    assert day(7) == day(7)
    assert day(7) != day(8)


def test_head_end_polls_every_meter_from_its_address() -> None:
    async def scenario() -> None:
        async with site_meters() as (site, meters):
            head_end = HeadEnd(site, profile_every_s=0.0)
            await head_end.start()
            try:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    readings = [r for r in head_end.history() if r["kind"] == "reading"]
                    if all(sum(r["device"] == m for r in readings) >= 2 for m in site.meters):
                        break
                    await asyncio.sleep(0.1)
            finally:
                await head_end.stop()
            rows = head_end.history()
            assert not [r for r in rows if r["kind"] == "error"]
            for meter in site.meters:
                mine = [r for r in rows if r["device"] == meter and r["kind"] == "reading"]
                assert len(mine) >= 2
                assert all(abs(r["clock_offset_s"]) < 2 for r in mine)
                assert all(r["control_state"] == 1 for r in mine)
                energies = [r["energy_import_wh"] for r in mine]
                assert energies == sorted(energies)
                assert all(0 <= r["import_w"] <= 12_000 for r in mine)
                assert all(207 <= r["voltage_v"] <= 253 for r in mine)
                profiles = [r for r in rows if r["device"] == meter and r["kind"] == "profile"]
                assert profiles
                assert profiles[0]["entries"]  # the last two hours, at least
            # the meters saw the head-end's own address (the bound source)
            await asyncio.to_thread(_disconnect_and_reconnect, site)
            events = [r for r in meters.history() if r["kind"] == "event"]
            assert {r["client"] for r in events} == {site.head_end}

    run(scenario)


def _disconnect_and_reconnect(site: LabSite) -> None:
    with session(site, site.meters[3]) as client:
        for method in (1, 2):  # remote_disconnect, remote_reconnect
            client.action(disconnector(method), dlms_data.IntegerData(0).to_bytes())


def test_scenarios_are_registered_with_their_techniques() -> None:
    assert SCENARIOS["meter_remote_disconnect"].techniques == ("T0855",)
    assert SCENARIOS["meter_clock_manipulation"].techniques == ("T0836",)
    assert SCENARIOS["meter_enumeration"].techniques == ("T0888", "T0861")
    for name in ("meter_remote_disconnect", "meter_clock_manipulation", "meter_enumeration"):
        assert SCENARIOS[name].protocol == "dlms"


def test_remote_disconnect_scenario() -> None:
    async def scenario() -> None:
        async with site_meters() as (site, meters):
            result = await SCENARIOS["meter_remote_disconnect"].run(site)
            target = site.meters[0]
            assert result["targets"] == [target]
            assert (result["control_state_before"], result["control_state_after"]) == (1, 0)
            assert not meters.meters[target].model.connected
            meters.sample()
            sample = [r for r in meters.history() if r["device"] == target][-1]
            assert (sample["import_w"], sample["connected"]) == (0, False)
            event = [r for r in meters.history() if r.get("event") == "remote_disconnect"]
            assert [(e["client"], e["client_sap"]) for e in event] == [(site.attacker, 1)]

    run(scenario)


def test_clock_manipulation_scenario() -> None:
    async def scenario() -> None:
        async with site_meters() as (site, meters):
            result = await SCENARIOS["meter_clock_manipulation"].run(site)
            target = site.meters[1]
            assert result["targets"] == [target]
            assert result["result"] == "success"
            offset = meters.meters[target].model.clock_offset_s
            assert offset == pytest.approx(-365 * 86400, abs=2)
            before = datetime.fromisoformat(result["clock_before"])
            after = datetime.fromisoformat(result["clock_after"])
            assert (before - after).days in (364, 365)

    run(scenario)


def test_enumeration_scenario() -> None:
    async def scenario() -> None:
        async with site_meters() as (site, meters):
            result = await SCENARIOS["meter_enumeration"].run(site)
            assert result["targets"] == list(site.meters)
            for meter in site.meters:
                found = result["meters"][meter]
                assert found["logical_device_name"] == meters.meters[meter].model.ldn.decode()
                assert f"3/{ENERGY_IMPORT}" in found["object_list"]
                assert found["sweep"][f"3/{ENERGY_IMPORT}"] == "read_write_denied"
                assert found["sweep"]["3/1.0.3.8.0.255"] == "object_undefined"
                assert found["sweep"][f"8/{CLOCK}"] == "read"
                assert found["management_association"] == "rejected"

    run(scenario)


def test_stop_closes_the_meters() -> None:
    async def scenario() -> None:
        async with site_meters() as (site, meters):
            pass
        await meters.stop()  # idempotent
        with pytest.raises(OSError), socket.create_connection((site.meters[0], site.dlms_port), 1):
            pass

    run(scenario)


def test_undecodable_request_gets_an_exception_response() -> None:
    async def scenario() -> None:
        async with site_meters() as (site, _meters):
            reader, writer = await asyncio.open_connection(site.meters[0], site.dlms_port)
            try:
                junk = b"\xff\x01\x02"  # no such APDU tag
                writer.write(b"\x00\x01\x00\x10\x00\x01" + len(junk).to_bytes(2, "big") + junk)
                header = await reader.readexactly(8)
                body = await reader.readexactly(int.from_bytes(header[6:8], "big"))
                assert header[:6] == b"\x00\x01\x00\x01\x00\x10"  # wrapper v1, ports swapped
                assert body[0] == 216  # EXCEPTION-Response
            finally:
                writer.close()
                await writer.wait_closed()

    run(scenario)
