"""The lab's OPC UA server, HMI and attack scenarios, with real asyncua clients on loopback."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.uaerrors import BadUserAccessDenied

import lab.attacks_opcua
from lab.base import SCENARIOS, LabSite
from lab.opcua_client import BoundClient, OpcUaHmi
from lab.opcua_server import (
    ALARM_HIGH_PCT,
    MODE_MANUAL,
    NAMESPACE,
    TAGS,
    OpcUaServer,
    TankProcess,
    make_self_signed,
)

USER, PASSWORD = LabSite().opcua_users[0]


def free_site(**overrides: Any) -> LabSite:
    """The default site with the OPC UA server on a free port (tests run in parallel)."""
    with socket.socket() as s:
        s.bind((LabSite.opcua, 0))
        port = s.getsockname()[1]
    return LabSite(opcua_port=port, **overrides)


def with_server(
    body: Callable[[OpcUaServer, LabSite], Awaitable[None]], **server_args: Any
) -> None:
    """Run ``body`` against a started server, then check that stop() leaves no task behind."""

    async def main() -> None:
        site = free_site(poll_s=0.2)
        server = OpcUaServer(site, seed=7, **server_args)
        await server.start()
        try:
            await body(server, site)
        finally:
            await server.stop()
        await asyncio.sleep(0)
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert left == []

    asyncio.run(main())


def tank(client: Client, ns: int, name: str) -> Any:
    return client.get_node(f"ns={ns};s=Tank1.{name}")


# -- the server ----------------------------------------------------------------------------


def test_anonymous_and_user_sessions_read_live_tags() -> None:
    async def body(server: OpcUaServer, site: LabSite) -> None:
        async with BoundClient(server.url, source=site.attacker) as anonymous:
            assert {host for host, _ in server.peers()} == {site.attacker}  # its own address
            ns = await anonymous.get_namespace_index(NAMESPACE)
            folder = await anonymous.nodes.objects.get_child([f"{ns}:Plant", f"{ns}:Tank1"])
            children = {(await c.read_browse_name()).Name for c in await folder.get_children()}
            assert set(TAGS) | {"ResetAlarm", "EmergencyStop"} <= children
            level = tank(anonymous, ns, "Level")
            first = await level.read_value()
            eu = await (await level.get_child("0:EngineeringUnits")).read_value()
            assert eu.DisplayName.Text == "%"
            eu_range = await (await level.get_child("0:EURange")).read_value()
            assert (eu_range.Low, eu_range.High) == (0.0, 100.0)
            await asyncio.sleep(0.6)
            assert await level.read_value() != first  # the process runs
            assert 0.0 <= first <= 100.0
            assert await tank(anonymous, ns, "SetpointHigh").read_value() == 80.0

        user = Client(server.url)
        user.set_user(USER)
        user.set_password(PASSWORD)
        async with user:
            values = await user.read_values([tank(user, ns, name) for name in TAGS])
            assert dict(zip(TAGS, values, strict=True))["Mode"] == 1  # Auto
            await tank(user, ns, "SetpointLow").write_value(28.5)
        assert server.process.sp_low == 28.5
        assert server.writes()[-1]["user"] == USER

        rows = server.history()
        assert len(rows) >= 5
        assert rows[0]["device"] == "opcua.tank1"
        assert all(a["ts_us"] < b["ts_us"] for a, b in itertools.pairwise(rows))
        assert {"level_pct", "inflow_m3h", "outflow_m3h", "pump_on", "mode"} <= set(rows[-1])

    with_server(body)


def test_wrong_password_and_unknown_user_are_refused() -> None:
    async def body(server: OpcUaServer, site: LabSite) -> None:
        for user, password in ((USER, "wrong"), ("admin", "admin"), (USER, "")):
            client = Client(server.url)
            client.set_user(user)
            client.set_password(password)
            with pytest.raises(BadUserAccessDenied):
                await client.connect()
        for _ in range(20):  # every refused connection is closed (the server sees it soon)
            if not server.peers():
                break
            await asyncio.sleep(0.05)
        assert server.peers() == []

    with_server(body)


def test_signed_and_encrypted_endpoint(tmp_path: Path) -> None:
    async def body(server: OpcUaServer, site: LabSite) -> None:
        discovery = Client(server.url)
        endpoints = await discovery.connect_and_get_server_endpoints()
        offered = {(e.SecurityPolicyUri.rsplit("#")[-1], e.SecurityMode) for e in endpoints}
        assert ("Basic256Sha256", ua.MessageSecurityMode.SignAndEncrypt) in offered
        assert ("None", ua.MessageSecurityMode.None_) in offered

        app_uri = "urn:lab:test:client"
        cert, key = await asyncio.to_thread(make_self_signed, tmp_path, "test client", app_uri)
        client = Client(server.url)
        client.application_uri = app_uri
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            str(cert),
            str(key),
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
        client.set_user(USER)
        client.set_password(PASSWORD)
        async with client:
            ns = await client.get_namespace_index(NAMESPACE)
            assert 0.0 <= await tank(client, ns, "Level").read_value() <= 100.0
            policy = client.uaclient.security_policy
            assert policy.URI == SecurityPolicyBasic256Sha256.URI
            assert policy.Mode == ua.MessageSecurityMode.SignAndEncrypt

        hmi = OpcUaHmi(site, secure=True)  # the HMI can use the encrypted endpoint too
        await hmi.start()
        try:
            await asyncio.wait_for(hmi.connected.wait(), 5.0)
            await asyncio.sleep(0.5)
            assert hmi.history()
        finally:
            await hmi.stop()

    with_server(body)


# -- the HMI -------------------------------------------------------------------------------


def test_hmi_subscribes_from_its_address_writes_setpoints_and_reconnects() -> None:
    async def body(server: OpcUaServer, site: LabSite) -> None:
        hmi = OpcUaHmi(site, seed=3, watchdog_s=0.5, setpoint_every_s=(0.3, 0.6))
        await hmi.start()
        try:
            assert hmi.connected.is_set()
            assert {host for host, _ in server.peers()} == {site.hmi}
            await asyncio.sleep(1.6)
            levels = {row["Level"] for row in hmi.history()}
            assert len(levels) > 1  # the subscription delivers changes
            writes = [w for w in server.writes() if w["user"] == USER]
            assert writes
            for w in writes:
                assert w["status"] == "Good"
                if w["node"].endswith("SetpointHigh"):
                    assert 78.0 <= w["value"] <= 85.0
                else:
                    assert w["node"].endswith("SetpointLow")
                    assert 25.0 <= w["value"] <= 35.0

            # the server goes away and comes back: the HMI logs in again
            await server.stop()
            for _ in range(40):
                if not hmi.connected.is_set():
                    break
                await asyncio.sleep(0.05)
            assert not hmi.connected.is_set()  # it noticed
            await server.start()
            await asyncio.wait_for(hmi.connected.wait(), 8.0)
            assert hmi.connections == 2
        finally:
            await hmi.stop()

    with_server(body)


# -- the scenarios -------------------------------------------------------------------------


def test_scenarios_run_against_the_server() -> None:
    assert lab.attacks_opcua  # registers the scenarios
    names = ("opcua_anonymous_login", "opcua_browse", "opcua_bruteforce", "opcua_setpoint_tamper")

    async def body(server: OpcUaServer, site: LabSite) -> None:
        results = {}
        for name in names:
            assert SCENARIOS[name].protocol == "opcua"
            results[name] = await asyncio.wait_for(SCENARIOS[name].run(site), 20.0)
            assert results[name]["targets"] == [site.opcua]

        login = results["opcua_anonymous_login"]
        assert login["anonymous"] is True
        assert login["server"]["ProductName"] == "Tank1 OPC UA Gateway"
        assert {"policy": "Basic256Sha256", "mode": "SignAndEncrypt"}.items() <= next(
            e for e in login["endpoints"] if e["mode"] == "SignAndEncrypt"
        ).items()

        browse = results["opcua_browse"]
        assert browse["nodes_browsed"] > 1000  # the whole address space, types included
        assert {t["path"] for t in browse["tags"]} >= {
            f"/Objects/Plant/Tank1/{name}" for name in TAGS
        }
        assert "/Objects/Plant/Tank1/SetpointHigh" in browse["writable"]
        assert "/Objects/Plant/Tank1/Level" not in browse["writable"]
        assert "/Objects/Plant/Tank1/ResetAlarm" in browse["methods"]

        brute = results["opcua_bruteforce"]
        assert brute["user_found"] == USER
        assert brute["attempts"] >= 10
        assert brute["failures"] == brute["attempts"] - 1
        assert {a["status"] for a in brute["log"][:-1]} == {"BadUserAccessDenied"}

        tamper = results["opcua_setpoint_tamper"]
        assert tamper["status"] == "Good"
        assert tamper["written"] > tamper["eu_range"][1]
        assert server.process.sp_high == tamper["written"]
        assert server.writes()[-1]["user"] is None  # an anonymous session

    with_server(body)


def test_read_only_anonymous_sessions_cannot_tamper() -> None:
    async def body(server: OpcUaServer, site: LabSite) -> None:
        result = await SCENARIOS["opcua_setpoint_tamper"].run(site)
        assert result["status"] == "BadUserAccessDenied"
        assert result["after"] == result["before"] == server.process.sp_high

    with_server(body, anonymous_write=False)


# -- the process ---------------------------------------------------------------------------


def run_process(process: TankProcess, seconds: float, hour: float = 13.0) -> list[float]:
    levels = []
    for _ in range(int(seconds * 10)):
        process.step(0.1, hour)
        levels.append(process.level_pct)
    return levels


def test_process_cycles_between_setpoints_deterministically() -> None:
    for hour in (3.5, 7.5, 19.5):
        process = TankProcess(seed=4, hour=hour)
        levels = run_process(process, 1800, hour)
        assert min(levels[600:]) > 29.0
        assert max(levels[600:]) < 82.0
        assert process.pump_starts >= 3
        assert not process.alarm_high
        assert not process.alarm_low
    a, b = TankProcess(seed=9), TankProcess(seed=9)
    assert run_process(a, 60) == run_process(b, 60)
    assert a.measure() == b.measure()
    assert run_process(TankProcess(seed=10), 60) != run_process(TankProcess(seed=9), 60)


def test_tampered_setpoint_overflows_and_alarm_latches() -> None:
    process = TankProcess(seed=4)
    process.set_setpoint_high(150.0)
    levels = run_process(process, 900)
    assert max(levels) == 100.0
    assert process.alarm_high
    assert process.pump_cmd
    assert not process.reset_alarms()  # still above the limit: the alarm stays
    process.set_setpoint_high(80.0)
    process.set_mode(MODE_MANUAL)
    process.set_pump(False)
    run_process(process, 120)
    assert process.level_pct < ALARM_HIGH_PCT - 2
    assert process.reset_alarms()
    assert not process.alarm_high
