"""The passive asset inventory: every host seen in the traffic, what it does and what it is.

Pure: no I/O. :class:`AssetInventory` folds ECS events (as the collectors emit them) into one
asset document per IP address; the store keeps the documents (``assets`` table) and
:func:`merge` combines a stored document with a newer one, so the table is updated
incrementally, run after run.

An asset is keyed by its IP address, not its MAC: on a routed network every host behind a router
reaches the sensor with the router's MAC, so one MAC fronts many IPs, and one IP may show several
MACs over time (a replaced device, a redundant gateway). Every MAC seen with an IP is kept in
``macs``; read a MAC shared by many assets as a router's.

An asset document (JSON)::

    {"ip": "10.0.0.5", "macs": ["00-1D-9C-C7-B0-70"],
     "first_seen": "2024-05-01T10:00:00.000000Z", "last_seen": "...",  # from @timestamp
     "events": 1200,           # events this host took part in (as source or destination)
     "exceptions": 3,          # of which exception responses (sent or received)
     "roles": ["server"], "protocols": ["modbus"], "ports": [502], "peers": ["10.0.0.9"],
     "modbus": {
         "roles": ["server"],          # client = Modbus master, server = Modbus slave
         "ports": [502],               # TCP ports it serves Modbus on
         "unit_ids": [1, 2],           # unit ids addressed to it
         "function_codes": {"used": {}, "served": {"3": 1100, "16": 2}},  # requests, by code
         "exceptions_returned": 3, "exceptions_received": 0,
         "unanswered": 0,              # requests to it left unanswered
         "device_identification": {    # 43/14 answers, by unit id
             "1": {"vendor_name": {"value": "Schneider Electric", "seen": "2024-..."}}}},
     "identity": {"vendor": "Schneider Electric", "product_code": "BMX P34 2020",
                  "revision": "v2.7", "source": "modbus unit 1"}}

``identity`` is derived from the device identification answers (the lowest unit id that
answered); its names are protocol-neutral so that OPC UA's or DLMS's identification can fill
them later.

Each protocol adds its own fold, chosen by ``event.dataset`` (:data:`FOLDS`); a fold reduces an
event to one observation key ``(protocol, flags, client ip, client mac, server ip, server mac,
server port, unit, code)`` counted with its first and last time. Observing an event is a dict
lookup and a counter increment (about a microsecond); documents are built only when asked
(:meth:`AssetInventory.docs`, :meth:`AssetInventory.drain`), from a few hundred keys.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from soc.event import format_timestamp, parse_timestamp
from soc.types import Event

AssetDoc = dict[str, Any]
"""One asset, as stored and listed (see the module's documentation)."""

#: Observation flags: what an observation says beyond "these two hosts talked".
COUNT_CODE = 1  # a transaction: count its code (used by the client, served by the server)
EXCEPTION = 2  # an exception response
UNANSWERED = 4  # a request left unanswered (the event's time is a deadline, not a packet)
NO_ROLE = 8  # traffic that says nothing of roles (bytes on the port that are not the protocol)

#: The names a protocol gives to the generic observation fields in its part of the document.
_UNIT_FIELD = {
    "modbus": "unit_ids",
    "opcua": "security_policies",
    "dlms": "authentication",
    "mqtt": "client_ids",
}
_CODE_FIELD = {
    "modbus": "function_codes",
    "opcua": "services",
    "dlms": "services",
    "mqtt": "packets",
}

#: Role names of the protocols' own specifications, accepted as aliases of client and server.
ROLE_ALIASES = {"client": "client", "server": "server", "master": "client", "slave": "server"}

#: Device identification objects (Modbus 43/14 names) -> the protocol-neutral ``identity`` names.
_IDENTITY_NAMES = {
    "vendor_name": "vendor",
    "product_code": "product_code",
    "major_minor_revision": "revision",
    "vendor_url": "vendor_url",
    "product_name": "product",
    "model_name": "model",
    "user_application_name": "application",
    "application_name": "application",
    "application_uri": "application_uri",
    "product_uri": "product_uri",
    "meter_id": "serial",
    "system_title": "system_title",
}

_TOP_ORDER = (
    "ip",
    "macs",
    "first_seen",
    "last_seen",
    "events",
    "exceptions",
    "roles",
    "protocols",
    "ports",
    "peers",
)

Key = tuple[Any, ...]
Fold = Callable[["AssetInventory", Event], None]


class AssetInventory:
    """Assets folded from events: ``observe``/``observe_all`` on the hot path, ``docs`` when needed.

    ``drain()`` returns the documents of what was observed since the last drain and starts
    afresh: each drained document is a delta that :func:`merge` adds to the stored one, which is
    how the collectors update the store while they run.
    """

    def __init__(self, folds: Mapping[str, Fold] | None = None) -> None:
        self.folds: dict[str, Fold] = dict(FOLDS if folds is None else folds)
        #: observation key -> [count, first @timestamp, last @timestamp]
        self.flows: dict[Key, list[Any]] = {}
        #: (protocol, server ip, unit) -> object name -> (seen, value)
        self.identities: dict[tuple[str, str, Any], dict[str, tuple[str, str]]] = {}
        self.skipped = 0  # events that lack what a fold needs (addresses, a valid time)
        self._drained_ips: set[str] = set()

    def observe(self, doc: Event) -> None:
        """Fold one event (events of datasets with no fold are ignored)."""
        self.observe_all((doc,))

    def observe_all(self, events: Iterable[Event]) -> None:
        """Fold events, in any order; an event a fold cannot read is counted in ``skipped``."""
        folds = self.folds
        for doc in events:
            try:
                fold = folds.get(doc["event"]["dataset"])
                if fold is not None:
                    fold(self, doc)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError):
                self.skipped += 1

    def count(self, key: Key, ts: str) -> None:
        """Count one observation at ``ts`` (a canonical ``@timestamp``, see :func:`canonical_time`)."""
        stat = self.flows.get(key)
        if stat is None:
            self.flows[key] = [1, ts, ts]
        else:
            stat[0] += 1
            if ts > stat[2]:
                stat[2] = ts
            elif ts < stat[1]:
                stat[1] = ts

    def identify(
        self, protocol: str, server_ip: str, unit: Any, objects: Mapping[str, Any], ts: str
    ) -> None:
        """Record identification objects a server answered (the latest value of each wins)."""
        known = self.identities.setdefault((protocol, server_ip, unit), {})
        for name, value in objects.items():
            seen = (ts, str(value))
            if name not in known or seen > known[name]:
                known[name] = seen

    def docs(self) -> list[AssetDoc]:
        """The asset documents of what was observed (since the last drain), ordered by address."""
        return _build(self.flows, self.identities)

    def drain(self) -> list[AssetDoc]:
        """:meth:`docs`, then forget them: the next documents are deltas from here."""
        docs = self.docs()
        self._drained_ips.update(d["ip"] for d in docs)
        self.flows = {}
        self.identities = {}
        return docs

    @property
    def hosts(self) -> set[str]:
        """Every IP address seen since the inventory was made, drained or not."""
        current = {ip for key in self.flows for ip in (key[2], key[4]) if _ip_key(ip) is not None}
        return current | self._drained_ips

    def __len__(self) -> int:
        return len(self.hosts)


def canonical_time(text: str) -> str:
    """``text`` as the collectors write ``@timestamp`` (27 characters, UTC, microseconds).

    Canonical timestamps order as strings, which keeps first/last seen a string comparison.
    """
    if len(text) == 27 and text[26] == "Z" and text[19] == ".":
        return text
    return format_timestamp(parse_timestamp(text))


# -- protocol folds --------------------------------------------------------------------------


def fold_modbus(inventory: AssetInventory, doc: Event) -> None:
    """One ``ics.modbus`` event: who is the client (master) and the server (slave), and how.

    A request's source is the client and its destination the server; a response's or an
    exception's source is the server. A response without its request (``modbus.orphan``: the
    request was not captured) counts as the transaction, as a request would have. An
    ``unanswered_request`` event counts against the server but not in the times seen (its time
    is a deadline). A ``protocol_violation`` only says the two hosts talked. An event from
    elsewhere with no ``modbus.pdu_type`` counts as one transaction whose server is the side
    on the lower port.
    """
    modbus = doc["modbus"]
    src = doc["source"]
    dst = doc["destination"]
    ts = doc["@timestamp"]
    if len(ts) != 27 or ts[26] != "Z":
        ts = canonical_time(ts)
    kind = modbus.get("pdu_type")
    if kind == "request":
        flags, client, server = COUNT_CODE, src, dst
    elif kind == "response":
        flags = COUNT_CODE if modbus.get("orphan") else 0
        client, server = dst, src
    elif kind == "exception":
        flags = EXCEPTION | COUNT_CODE if modbus.get("orphan") else EXCEPTION
        client, server = dst, src
    elif kind == "unanswered_request":
        flags, client, server = UNANSWERED, src, dst
    elif kind is None:
        flags = COUNT_CODE
        client, server = (src, dst) if dst.get("port", 0) <= src.get("port", 0) else (dst, src)
    else:  # protocol_violation, or a kind this version does not know
        flags, client, server = NO_ROLE, src, dst
    key = (
        "modbus",
        flags,
        client["ip"],
        client.get("mac"),
        server["ip"],
        server.get("mac"),
        server.get("port"),
        modbus.get("unit_id"),
        modbus.get("function_code"),
    )
    stat = inventory.flows.get(key)  # AssetInventory.count, inlined: this runs on every event
    if stat is None:
        inventory.flows[key] = [1, ts, ts]
    else:
        stat[0] += 1
        if ts > stat[2]:
            stat[2] = ts
        elif ts < stat[1]:
            stat[1] = ts
    if kind == "response" and modbus.get("device_identification"):  # 43/14 answers, rare
        inventory.identify("modbus", key[4], key[7], modbus["device_identification"], ts)


def fold_opcua(inventory: AssetInventory, doc: Event) -> None:
    """One ``ics.opcua`` event: the client (its source when it sends a request, HEL or OPN; its
    destination otherwise) and the server; services used and served (by name, ``Read`` for
    ``ReadRequest``), security policies (short names, as ``units``), service faults and bad
    results as exceptions, and the server's application and endpoints from GetEndpoints and
    CreateSession answers as its identification."""
    opcua = doc["opcua"]
    src, dst = doc["source"], doc["destination"]
    ts = doc["@timestamp"]
    if len(ts) != 27 or ts[26] != "Z":
        ts = canonical_time(ts)
    service = opcua.get("service") or ""
    action = doc["event"].get("action")
    from_client = service.endswith("Request") or opcua.get("message_type") in ("HEL", "OPN", "CLO")
    if (
        service.endswith("Response")
        or service == "ServiceFault"
        or opcua.get("message_type")
        in (
            "ACK",
            "ERR",
        )
    ):
        from_client = False
    client, server = (src, dst) if from_client else (dst, src)
    flags = 0
    code = None
    if action == "unanswered_request":
        flags, client, server = UNANSWERED, src, dst
    elif service.endswith("Request"):
        flags, code = COUNT_CODE, service[: -len("Request")]
    elif "anomalies" in opcua and not service:
        flags = NO_ROLE
    if service == "ServiceFault" or (
        not from_client and str(opcua.get("status_code", "0x0"))[2:3] in ("8", "9", "A", "B")
    ):
        flags |= EXCEPTION
    policy = opcua.get("security_policy_uri")
    unit = policy.rsplit("#", 1)[-1] if isinstance(policy, str) and "#" in policy else None
    key = ("opcua", flags, client["ip"], client.get("mac"), server["ip"], server.get("mac"),
           server.get("port"), unit, code)  # fmt: skip
    inventory.count(key, ts)
    endpoints = opcua.get("endpoints")
    if endpoints and not from_client:
        first = endpoints[0]
        objects = {
            "application_uri": first.get("application_uri"),
            "endpoint_urls": ", ".join(sorted({str(e.get("url")) for e in endpoints})),
            "security_policies_offered": ", ".join(
                sorted(
                    {str(e.get("security_policy_uri", "")).rsplit("#", 1)[-1] for e in endpoints}
                )
            ),
            "security_modes_offered": ", ".join(
                sorted({str(e.get("security_mode")) for e in endpoints})
            ),
            "user_token_types": ", ".join(
                sorted({t for e in endpoints for t in e.get("user_token_types", [])})
            ),
        }
        inventory.identify(
            "opcua", server["ip"], "endpoints", {k: v for k, v in objects.items() if v}, ts
        )


_DLMS_FROM_SERVER = ("_response", "aare", "rlre", "notification", "confirmed_service_error")


def fold_dlms(inventory: AssetInventory, doc: Event) -> None:
    """One ``ics.dlms`` event: the client (head-end, or any host that associates) and the server
    (the meter): requests come from the client; responses, AARE, RLRE, exceptions and
    notifications (a meter pushes them) from the meter. The services used and served are the
    APDUs' names (``get``, ``set``, ``action``, ``aarq``); the authentication mechanisms of the
    AARQs are the meter's units; a rejected association, a failed result or an exception counts
    as an exception; the meter's id (logical device name or serial read, else system title)
    identifies it."""
    dlms = doc["dlms"]
    src, dst = doc["source"], doc["destination"]
    ts = doc["@timestamp"]
    if len(ts) != 27 or ts[26] != "Z":
        ts = canonical_time(ts)
    action = str(doc["event"].get("action") or "")
    if action == "unanswered_request":
        flags, client, server = UNANSWERED, src, dst
    elif action == "protocol_violation" or action.startswith("hdlc_"):
        flags, client, server = NO_ROLE, src, dst
    elif action.endswith(_DLMS_FROM_SERVER) or action == "exception_response":
        flags, client, server = 0, dst, src
    else:
        flags, client, server = COUNT_CODE, src, dst
    if doc["event"].get("outcome") == "failure" and client is dst:
        flags |= EXCEPTION
    code = action[: -len("_request")] if action.endswith("_request") else action
    unit = dlms.get("authentication_mechanism") if action == "aarq" else None
    key = ("dlms", flags, client["ip"], client.get("mac"), server["ip"], server.get("mac"),
           server.get("port"), unit, code if flags & COUNT_CODE else None)  # fmt: skip
    inventory.count(key, ts)
    energy = doc.get("energy")
    meter_id = energy.get("meter_id") if isinstance(energy, dict) else None
    title = dlms.get("responding_ap_title") if action == "aare" else None
    if (meter_id or title) and client is dst:
        objects = {"meter_id": meter_id, "system_title": title}
        inventory.identify(
            "dlms", server["ip"], "meter", {k: v for k, v in objects.items() if v}, ts
        )


#: packets only a client sends, and only a broker
_MQTT_CLIENT = frozenset({"CONNECT", "SUBSCRIBE", "UNSUBSCRIBE", "PINGREQ"})
_MQTT_BROKER = frozenset({"CONNACK", "SUBACK", "UNSUBACK", "PINGRESP"})


def fold_mqtt(inventory: AssetInventory, doc: Event) -> None:
    """One ``ics.mqtt`` event: the client and the broker. CONNECT, SUBSCRIBE, UNSUBSCRIBE and
    PINGREQ come from a client, their acknowledgements from the broker; a PUBLISH or its
    acknowledgements travel both ways, so the broker is then the side on the lower port (it
    listens on a well-known one). The packets used and served are the packet types; a client's
    client id is its unit on the broker (and, with its user name, its identification); a refused
    connection or subscription counts as an exception."""
    mqtt = doc["mqtt"]
    src, dst = doc["source"], doc["destination"]
    ts = doc["@timestamp"]
    if len(ts) != 27 or ts[26] != "Z":
        ts = canonical_time(ts)
    action = doc["event"].get("action")
    kind = str(mqtt.get("packet_type") or "")
    if action == "unanswered_request":
        flags, client, server = UNANSWERED, src, dst
    elif action == "protocol_violation":
        flags, client, server = NO_ROLE, src, dst
    elif kind in _MQTT_CLIENT:
        flags, client, server = COUNT_CODE, src, dst
    elif kind in _MQTT_BROKER:
        flags, client, server = 0, dst, src
    else:
        from_client = dst.get("port", 0) <= src.get("port", 0)
        flags = COUNT_CODE if from_client else 0
        client, server = (src, dst) if from_client else (dst, src)
    if doc["event"].get("outcome") == "failure":
        flags |= EXCEPTION
    client_id = mqtt.get("client_id") if kind == "CONNECT" else None
    key = ("mqtt", flags, client["ip"], client.get("mac"), server["ip"], server.get("mac"),
           server.get("port"), client_id, kind if flags & COUNT_CODE else None)  # fmt: skip
    inventory.count(key, ts)
    if client_id:
        objects = {"client_id": client_id, "user_name": mqtt.get("username")}
        inventory.identify(
            "mqtt", client["ip"], "client", {k: v for k, v in objects.items() if v}, ts
        )


#: event.dataset -> the fold of its events
FOLDS: dict[str, Fold] = {
    "ics.modbus": fold_modbus,
    "ics.opcua": fold_opcua,
    "ics.dlms": fold_dlms,
    "ics.mqtt": fold_mqtt,
}


# -- documents -------------------------------------------------------------------------------


class _Protocol:
    __slots__ = (
        "exc_received",
        "exc_returned",
        "ids",
        "ports",
        "roles",
        "served",
        "unanswered",
        "units",
        "used",
    )

    def __init__(self) -> None:
        self.roles: set[str] = set()
        self.ports: set[int] = set()
        self.units: set[Any] = set()
        self.used: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.exc_returned = 0
        self.exc_received = 0
        self.unanswered = 0
        self.ids: dict[str, dict[str, dict[str, str]]] = {}

    def doc(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "roles": sorted(self.roles),
            "ports": sorted(self.ports),
            _UNIT_FIELD.get(name, "units"): sorted(self.units, key=_order),
            _CODE_FIELD.get(name, "codes"): {
                "used": _counts(self.used),
                "served": _counts(self.served),
            },
            "exceptions_returned": self.exc_returned,
            "exceptions_received": self.exc_received,
            "unanswered": self.unanswered,
        }
        if self.ids:
            out["device_identification"] = self.ids
        return out


class _Asset:
    __slots__ = ("events", "exceptions", "first", "ip", "last", "macs", "peers", "protocols")

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.macs: set[str] = set()
        self.peers: set[str] = set()
        self.first: str | None = None
        self.last: str | None = None
        self.events = 0
        self.exceptions = 0
        self.protocols: dict[str, _Protocol] = {}

    def seen(self, mac: Any, n: int, first: str, last: str, timed: bool, peer: str) -> None:
        if isinstance(mac, str) and mac:
            self.macs.add(mac)
        self.events += n
        self.peers.add(peer)
        if timed:
            if self.first is None or first < self.first:
                self.first = first
            if self.last is None or last > self.last:
                self.last = last

    def protocol(self, name: str) -> _Protocol:
        part = self.protocols.get(name)
        if part is None:
            part = self.protocols[name] = _Protocol()
        return part

    def doc(self) -> AssetDoc:
        parts = {name: part.doc(name) for name, part in sorted(self.protocols.items())}
        doc: AssetDoc = {
            "ip": self.ip,
            "macs": sorted(self.macs),
            "first_seen": self.first,
            "last_seen": self.last,
            "events": self.events,
            "exceptions": self.exceptions,
            "roles": sorted({r for p in parts.values() for r in p["roles"]}),
            "protocols": sorted(parts),
            "ports": sorted({port for p in parts.values() for port in p["ports"]}),
            "peers": sorted(self.peers),
            **parts,
        }
        return _finish(doc)


def _build(
    flows: Mapping[Key, list[Any]],
    identities: Mapping[tuple[str, str, Any], Mapping[str, tuple[str, str]]],
) -> list[AssetDoc]:
    assets: dict[str, _Asset] = {}

    def asset(ip: Any) -> _Asset | None:
        found = assets.get(ip)
        if found is None and _ip_key(ip) is not None:
            found = assets[ip] = _Asset(ip)
        return found

    for (proto, flags, cip, cmac, sip, smac, sport, unit, code), (n, first, last) in flows.items():
        client, server = asset(cip), asset(sip)
        if client is None or server is None:
            continue
        timed = not flags & UNANSWERED
        client.seen(cmac, n, first, last, timed, sip)
        if server is not client:
            server.seen(smac, n, first, last, timed, cip)
        elif isinstance(smac, str) and smac:
            server.macs.add(smac)
        if flags & EXCEPTION:
            client.exceptions += n
            if server is not client:
                server.exceptions += n
        if flags & NO_ROLE:
            continue
        cpart, spart = client.protocol(proto), server.protocol(proto)
        cpart.roles.add("client")
        spart.roles.add("server")
        if isinstance(sport, int):
            spart.ports.add(sport)
        if unit is not None:
            spart.units.add(unit)
        if flags & COUNT_CODE and code is not None:
            cpart.used[str(code)] += n
            spart.served[str(code)] += n
        if flags & EXCEPTION:
            cpart.exc_received += n
            spart.exc_returned += n
        if flags & UNANSWERED:
            spart.unanswered += n
    for (proto, sip, unit), objects in identities.items():
        server = asset(sip)
        if server is None:
            continue
        table = server.protocol(proto).ids.setdefault(str(unit), {})
        for name, (seen, value) in objects.items():
            table[name] = {"value": value, "seen": seen}
    return [a.doc() for _, a in sorted((ip_sort_key(ip), a) for ip, a in assets.items())]


def merge(existing: AssetDoc, new: AssetDoc) -> AssetDoc:
    """One asset's stored document combined with a newer one (the same ``ip``).

    Associative and commutative, so that folding a capture in pieces, run after run, gives what
    one run gives: times seen take the min and the max, counts add up, sets (MACs, roles, ports,
    unit ids, peers) are unions, and each identification object keeps its latest value.
    ``identity`` is derived again from the result.
    """
    if existing.get("ip") != new.get("ip"):
        raise ValueError(f"cannot merge assets {existing.get('ip')!r} and {new.get('ip')!r}")
    a = {k: v for k, v in existing.items() if k != "identity"}
    b = {k: v for k, v in new.items() if k != "identity"}
    return _finish(_merge_dict(a, b))


def _merge_value(key: str, a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    if key == "first_seen":
        return min(a, b)
    if key == "last_seen":
        return max(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        if "seen" in a and "value" in a and "seen" in b and "value" in b:  # an observed value
            return max(a, b, key=lambda v: (v["seen"], v["value"]))
        return _merge_dict(a, b)
    if isinstance(a, list) and isinstance(b, list):
        return sorted({*a, *b}, key=_order)
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a or b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b
    return a if a == b else max(str(a), str(b))


def _merge_dict(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _merge_value(key, a.get(key), b.get(key)) for key in sorted({*a, *b}, key=_order)}


def _finish(doc: AssetDoc) -> AssetDoc:
    """Canonical key order (the top-level fields first) and the derived ``identity``."""
    out: AssetDoc = {k: doc[k] for k in _TOP_ORDER if k in doc}
    out.update((k, v) for k, v in sorted(doc.items()) if k not in out and k != "identity")
    identity = _identity(out)
    if identity:
        out["identity"] = identity
    return out


def _identity(doc: AssetDoc) -> dict[str, Any]:
    for proto in doc.get("protocols", ()):
        part = doc.get(proto)
        units = part.get("device_identification") if isinstance(part, dict) else None
        if not units:
            continue
        unit = min(units, key=_order)
        objects = units[unit]
        names = [
            *(n for n in _IDENTITY_NAMES if n in objects),
            *sorted(set(objects) - set(_IDENTITY_NAMES)),
        ]
        identity: dict[str, Any] = {_IDENTITY_NAMES.get(n, n): objects[n]["value"] for n in names}
        identity["source"] = f"{proto} unit {unit}"
        return identity
    return {}


def _counts(counter: Counter[str]) -> dict[str, int]:
    return {k: counter[k] for k in sorted(counter, key=_order)}


def _order(value: Any) -> tuple[int, Any]:
    """Numbers (or numeric strings) in numeric order, before other strings."""
    if isinstance(value, int):
        return (0, value)
    text = str(value)
    return (0, int(text)) if text.isdigit() else (1, text)


# -- addresses -------------------------------------------------------------------------------


def _ip_key(ip: Any) -> bytes | None:
    if not isinstance(ip, str):
        return None
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv4Address):
        return b"\0" * 10 + b"\xff\xff" + address.packed
    return address.packed


def ip_sort_key(ip: str) -> bytes:
    """16 bytes that order addresses numerically (IPv4 mapped into IPv6): the store's ``ip_key``.

    Raises ``ValueError`` when ``ip`` is not an address.
    """
    key = _ip_key(ip)
    if key is None:
        raise ValueError(f"not an IP address: {ip!r}")
    return key


def network_range(text: str) -> tuple[bytes, bytes]:
    """The first and last :func:`ip_sort_key` of an address or a network (``10.0.0.0/24``).

    Raises ``ValueError`` when ``text`` is neither.
    """
    network = ipaddress.ip_network(text.strip(), strict=False)
    return (
        ip_sort_key(str(network.network_address)),
        ip_sort_key(str(network.broadcast_address)),
    )


def role_tokens(doc: AssetDoc) -> list[str]:
    """``protocol:role`` for each role the asset plays (``modbus:server``): the store's filter."""
    return sorted(
        f"{proto}:{role}"
        for proto in doc.get("protocols", ())
        if isinstance(doc.get(proto), dict)
        for role in doc[proto].get("roles", ())
    )


def parse_seen(doc: AssetDoc) -> tuple[int | None, int | None]:
    """``first_seen`` and ``last_seen`` as microseconds since the epoch (``None`` when unknown)."""
    first, last = doc.get("first_seen"), doc.get("last_seen")
    return (
        parse_timestamp(first) if isinstance(first, str) else None,
        parse_timestamp(last) if isinstance(last, str) else None,
    )
