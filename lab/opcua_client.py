"""The SCADA/HMI's OPC UA client, and an asyncua client that connects from a chosen address.

:class:`OpcUaHmi` is the lab's normal OPC UA traffic: from ``site.hmi`` it logs in to the
OPC UA server with the site's user-name account (security policy None: the user name travels in
clear, the password RSA-encrypted as the server's token policy asks), subscribes to every Tank1
tag with a publishing interval of ``site.poll_s``, reads the server's status every 5 s as a
watchdog, and acts as an operator now and then: nudges SetpointHigh or SetpointLow every 25-50 s
(within 78-85 % and 25-35 %), and calls ResetAlarm some seconds after an alarm has latched and
its condition has gone. It reconnects (1, 2, 4, 5 s back-off) when the server goes away.
With ``secure=True`` it uses Basic256Sha256 SignAndEncrypt instead, with a self-signed client
certificate generated into a temporary directory (then nothing after OpenSecureChannel can be
read on the wire).

asyncua's :class:`~asyncua.Client` cannot bind a source address (its transport calls
``loop.create_connection(protocol, host, port)``). :class:`BoundClient` is a small subclass
whose transport passes ``local_addr=(source, 0)``, so each lab host has its own address on
loopback; everything else is asyncua's own code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import tempfile
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClient, UaClientState
from asyncua.common.node import Node
from asyncua.common.shortcuts import Shortcuts
from asyncua.common.subscription import DataChangeNotif, Subscription
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from asyncua.ua.uatypes import Double

from lab.base import LabSite, cancel_and_wait, now_us
from lab.opcua_server import NAMESPACE, TAGS, make_self_signed, nid, tag_nodeid

log = logging.getLogger(__name__)

HMI_URI = "urn:lab:water-plant:scada-hmi"

#: what a dropped or refused connection raises in asyncua
CONNECTION_ERRORS = (OSError, TimeoutError, ConnectionError, UaError, asyncio.TimeoutError)


class _BoundUaClient(UaClient):
    """asyncua's transport, connecting from ``source`` (any port)."""

    def __init__(self, timeout: float, source: str | None) -> None:
        super().__init__(timeout)
        self.source = source

    async def connect_socket(self, host: str, port: int) -> None:
        if self.source is None:
            await super().connect_socket(host, port)
            return
        self._set_state(UaClientState.CONNECTING)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(
                    self._make_protocol, host, port, local_addr=(self.source, 0)
                ),
                self._timeout,
            )
        except BaseException:
            self._set_state(UaClientState.DISCONNECTED)
            raise
        self._set_state(UaClientState.SOCKET_OPEN)


class BoundClient(Client):
    """An asyncua :class:`~asyncua.Client` whose socket binds ``source`` (an IP address)."""

    def __init__(self, url: str, source: str | None = None, timeout: float = 4.0) -> None:
        super().__init__(url, timeout=timeout)
        self.uaclient = _BoundUaClient(timeout, source)
        self.uaclient.pre_request_hook = self._wait_until_ready
        self.nodes = Shortcuts(self.uaclient.session)


class _Display:
    """The subscription's handler: keeps the latest value of each tag."""

    def __init__(self, names: dict[ua.NodeId, str]) -> None:
        self.names = names
        self.values: dict[str, Any] = {}
        self.notifications = 0

    def datachange_notification(self, node: Node, val: Any, data: DataChangeNotif) -> None:
        name = self.names.get(node.nodeid)
        if name is not None:
            self.values[name] = val
            self.notifications += 1

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        log.info("subscription status: %s", status.Status)


class OpcUaHmi:
    """The HMI/SCADA's OPC UA client (a :class:`lab.base.Service`)."""

    name = "opcua-hmi"
    device = "hmi.opcua"

    def __init__(
        self,
        site: LabSite,
        seed: int = 0,
        *,
        user: str | None = None,
        password: str | None = None,
        watchdog_s: float = 5.0,
        setpoint_every_s: tuple[float, float] = (25.0, 50.0),
        secure: bool = False,
    ) -> None:
        self.site = site
        self.rng = random.Random(seed)  # noqa: S311 (operator timing, not crypto)
        if user is None and site.opcua_users:
            user, password = site.opcua_users[0]
        self.user = user
        self.password = password
        self.watchdog_s = watchdog_s
        self.setpoint_every_s = setpoint_every_s
        self.secure = secure
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._cert: tuple[Path, Path] | None = None
        self.url = f"opc.tcp://{site.opcua}:{site.opcua_port}"
        self.connected = asyncio.Event()
        self.connections = 0
        self._history: list[dict[str, Any]] = []
        self._actions: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._client: BoundClient | None = None

    # -- Service ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-loop")
        # return once the first session is up, or after 1.5 s (it keeps trying)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), 1.5)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        await self._disconnect()
        tmp, self._tmp, self._cert = self._tmp, None, None
        if tmp is not None:
            tmp.cleanup()

    def history(self) -> list[dict[str, Any]]:
        return list(self._history)

    def actions(self) -> list[dict[str, Any]]:
        """The operator's writes and method calls: ``{"ts_us", "action", "node", "value",
        "status"}``."""
        return list(self._actions)

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            connections = self.connections
            try:
                await self._session()
            except CONNECTION_ERRORS as exc:
                log.info("%s: connection to %s lost or refused: %r", self.name, self.url, exc)
            except Exception:  # keep polling whatever happens: log it, reconnect
                log.exception("%s: session with %s failed", self.name, self.url)
            finally:
                self.connected.clear()
                await self._disconnect()
            if self.connections > connections:
                backoff = 1.0  # it was up: start the back-off again
            await asyncio.sleep(backoff)
            backoff = min(5.0, backoff * 2)

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 2.0)
        client.disconnect_socket()

    async def _session(self) -> None:
        client = BoundClient(self.url, source=self.site.hmi, timeout=4.0)
        client.session_timeout = 120_000  # ms
        client.name = client.description = "SCADA HMI"
        client.application_uri = HMI_URI
        if self.user is not None:
            client.set_user(self.user)
            client.set_password(self.password or "")
        self._client = client
        if self.secure:
            if self._cert is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="lab-opcua-hmi-")
                self._cert = await asyncio.to_thread(
                    make_self_signed, Path(self._tmp.name), "SCADA HMI", HMI_URI
                )
            cert, key = self._cert
            await client.set_security(
                SecurityPolicyBasic256Sha256,
                str(cert),
                str(key),
                mode=ua.MessageSecurityMode.SignAndEncrypt,
            )
        await client.connect()
        self.connections += 1
        ns = await client.get_namespace_index(NAMESPACE)
        nodes = {name: client.get_node(tag_nodeid(name, ns)) for name in TAGS}
        display = _Display({node.nodeid: name for name, node in nodes.items()})
        period_ms = self.site.poll_s * 1000.0
        subscription: Subscription = await client.create_subscription(period_ms, display)
        await subscription.subscribe_data_change(
            list(nodes.values()), sampling_interval=Double(period_ms)
        )
        self.connected.set()
        loop = asyncio.get_running_loop()
        next_watchdog = loop.time() + self.watchdog_s
        next_setpoint = loop.time() + self.rng.uniform(*self.setpoint_every_s)
        reset_at: float | None = None
        change_high = self.rng.random() < 0.5
        tank = client.get_node(nid("Tank1", ns))
        reset_alarm = nid("Tank1.ResetAlarm", ns)
        state = client.get_node(nid(ObjectIds.Server_ServerStatus_State))
        current_time = client.get_node(nid(ObjectIds.Server_ServerStatus_CurrentTime))
        while True:
            await asyncio.sleep(self.site.poll_s)
            if client.state is not UaClientState.CONNECTED:
                raise ConnectionError(f"client is {client.state.value}")
            now = loop.time()
            values = dict(display.values)
            if values:
                self._history.append({"ts_us": now_us(), "device": self.device, **values})
            if now >= next_watchdog:
                next_watchdog = now + self.watchdog_s
                await client.read_values([state, current_time])
            if now >= next_setpoint:
                next_setpoint = now + self.rng.uniform(*self.setpoint_every_s)
                if change_high:
                    name, value = "SetpointHigh", round(self.rng.uniform(78.0, 85.0), 1)
                else:
                    name, value = "SetpointLow", round(self.rng.uniform(25.0, 35.0), 1)
                change_high = not change_high
                await self._write(nodes[name], name, value)
            alarm = bool(values.get("AlarmHigh")) or bool(values.get("AlarmLow"))
            if alarm and reset_at is None:
                reset_at = now + self.rng.uniform(5.0, 15.0)  # the operator sees it, then acts
            if reset_at is not None and now >= reset_at:
                cleared = await tank.call_method(reset_alarm)
                self._actions.append(
                    {
                        "ts_us": now_us(),
                        "action": "call",
                        "node": "Tank1.ResetAlarm",
                        "value": cleared,
                        "status": "Good",
                    }
                )
                reset_at = None if cleared else now + self.rng.uniform(10.0, 20.0)

    async def _write(self, node: Node, name: str, value: float) -> None:
        status = "Good"
        try:
            await node.write_value(ua.Variant(value, ua.VariantType.Double))
        except UaStatusCodeError as exc:
            status = type(exc).__name__
        self._actions.append(
            {"ts_us": now_us(), "action": "write", "node": name, "value": value, "status": status}
        )
