"""Learning mode: a site's communication baseline, and protect mode, which names what is new.

Pure functions, no I/O. :func:`learn` folds the request events of a period into a
:class:`Baseline`, a plain document an engineer can review (``soc baseline show`` writes it as
YAML) and edit: who talks to whom with which protocol and port (with the mean period of its
requests), and per protocol what each client asks of each server:

- Modbus: per client, server, unit id and function code, the register or coil ranges
  addressed (overlapping and adjacent ranges merged);
- OPC UA: per client, server and service, the nodes written and called;
- DLMS/COSEM: per client, meter, service (get, set, action, aarq, ...), class id and attribute
  or method;
- MQTT: per client, broker and packet type, the topics published or subscribed to.

:func:`check` reads events against a baseline and returns :class:`Finding` objects, one per
request that does something the baseline does not hold, each saying what is new and the nearest
known behaviour (the pair's known function codes, the nearest register range, the client's known
servers ...); :func:`alerts_of` groups them into alert documents like the rules' (one per kind,
client, server and novelty, with its events). :func:`accept` adds what an alert found to a
baseline, which is how an analyst says "this is normal".

Only requests define behaviour (their source is the client): answers follow from them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from detectors.alerts import RuleInfo, alert_document, alert_id
from detectors.attack import AttackTable
from soc.event import format_timestamp, parse_timestamp
from soc.types import Event

SCHEMA = 1
MAX_VALUES = 1000  # nodes or topics kept per behaviour
_MODBUS_WRITES = frozenset({5, 6, 15, 16, 22, 23})
_MQTT_FROM_CLIENT = frozenset({"CONNECT", "PUBLISH", "SUBSCRIBE", "UNSUBSCRIBE", "DISCONNECT"})

#: finding kind -> (title, level, ATT&CK for ICS techniques, tactics)
KINDS: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...]]] = {
    "new_communication": ("Communication not in the baseline: a new client, server or protocol",
                          "medium", (), ()),
    "new_modbus_function": ("Modbus function code or unit id not in the baseline of the pair",
                            "medium", (), ()),
    "new_modbus_write": ("Modbus write function not in the baseline of the pair", "high",
                         ("T0855",), ("impair-process-control",)),
    "modbus_address_outside_baseline": ("Modbus address outside the ranges the baseline holds",
                                        "medium", ("T0861",), ("discovery",)),
    "modbus_write_outside_baseline": ("Modbus write to an address outside the baseline's ranges",
                                      "high", ("T0836",), ("impair-process-control",)),
    "new_opcua_service": ("OPC UA service not in the baseline of the client and server",
                          "medium", (), ()),
    "new_opcua_node_written": ("OPC UA node written or method called that the baseline does not hold",
                               "high", ("T0855",), ("impair-process-control",)),
    "new_dlms_operation": ("DLMS/COSEM operation not in the baseline of the client and meter",
                           "medium", (), ()),
    "new_mqtt_packet": ("MQTT packet type not in the baseline of the client", "low", (), ()),
    "new_mqtt_topic": ("MQTT topic published or subscribed to that the baseline does not hold",
                       "medium", (), ()),
}  # fmt: skip


@dataclass
class Baseline:
    """A site's learnt behaviour (see the module). ``revision`` is the store's version number
    (0 before it is stored); ``accepted`` lists the alerts added since learning."""

    site: str
    start: str  # ISO 8601: the learning period
    end: str
    events: int = 0
    revision: int = 0
    #: behaviour key -> [requests, first @timestamp, last @timestamp, values]
    communications: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)
    modbus: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)
    opcua: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)
    dlms: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)
    mqtt: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)
    accepted: list[dict[str, Any]] = field(default_factory=list)

    # -- the document -----------------------------------------------------------------------

    def doc(self) -> dict[str, Any]:
        """As a reviewable document (JSON or YAML), sorted."""
        return {
            "schema": SCHEMA,
            "site": self.site,
            "revision": self.revision,
            "learned": {"start": self.start, "end": self.end, "events": self.events},
            "communications": [
                {"client": c, "server": s, "protocol": p, "port": port, "requests": v[0],
                 "period_s": _period(v), **_seen(v)}
                for (c, s, p, port), v in sorted(self.communications.items(), key=_sort)
            ],
            "modbus": [
                {"client": c, "server": s, "unit_id": u, "function_code": f, "requests": v[0],
                 "period_s": _period(v), **_seen(v), "ranges": [list(r) for r in v[3]]}
                for (c, s, u, f), v in sorted(self.modbus.items(), key=_sort)
            ],
            "opcua": [
                {"client": c, "server": s, "service": svc, "requests": v[0], **_seen(v),
                 "nodes": sorted(v[3])}
                for (c, s, svc), v in sorted(self.opcua.items(), key=_sort)
            ],
            "dlms": [
                {"client": c, "server": s, "service": svc, "class_id": cls, "member": m,
                 "requests": v[0], **_seen(v)}
                for (c, s, svc, cls, m), v in sorted(self.dlms.items(), key=_sort)
            ],
            "mqtt": [
                {"client": c, "server": s, "packet_type": t, "packets": v[0], **_seen(v),
                 "topics": sorted(v[3])}
                for (c, s, t), v in sorted(self.mqtt.items(), key=_sort)
            ],
            "accepted": list(self.accepted),
        }  # fmt: skip

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Baseline:
        """A baseline from its document (as stored, or edited by hand); ValueError naming what
        does not fit."""
        if doc.get("schema") != SCHEMA:
            raise ValueError(f"schema: expected {SCHEMA}, got {doc.get('schema')!r}")
        learned = doc.get("learned") or {}
        out = cls(str(doc.get("site") or ""), str(learned.get("start", "")),
                  str(learned.get("end", "")), int(learned.get("events", 0)),
                  int(doc.get("revision", 0)))  # fmt: skip
        key: tuple[Any, ...]
        try:
            for row in doc.get("communications") or []:
                key = (row["client"], row["server"], row["protocol"], row.get("port"))
                out.communications[key] = _stat(row, "requests", [])
            for row in doc.get("modbus") or []:
                ranges = [(int(r[0]), int(r[1])) for r in row.get("ranges") or []]
                key = (row["client"], row["server"], int(row["unit_id"]), int(row["function_code"]))
                out.modbus[key] = _stat(row, "requests", _merge(ranges))
            for row in doc.get("opcua") or []:
                key = (row["client"], row["server"], row["service"])
                out.opcua[key] = _stat(row, "requests", set(row.get("nodes") or []))
            for row in doc.get("dlms") or []:
                key = (row["client"], row["server"], row["service"], row.get("class_id"),
                       row.get("member"))  # fmt: skip
                out.dlms[key] = _stat(row, "requests", [])
            for row in doc.get("mqtt") or []:
                key = (row["client"], row["server"], row["packet_type"])
                out.mqtt[key] = _stat(row, "packets", set(row.get("topics") or []))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"a behaviour does not read: {type(exc).__name__}: {exc}") from exc
        out.accepted = list(doc.get("accepted") or [])
        return out


def _seen(stat: list[Any]) -> dict[str, str]:
    return {"first_seen": stat[1], "last_seen": stat[2]}


def _stat(row: dict[str, Any], count: str, values: Any) -> list[Any]:
    """A behaviour's statistics from its document row."""
    return [int(row.get(count, 0)), str(row.get("first_seen", "")),
            str(row.get("last_seen", "")), values]  # fmt: skip


def _sort(item: tuple[tuple[Any, ...], Any]) -> tuple[str, ...]:
    return tuple(str(k) for k in item[0])


def _period(stat: list[Any]) -> float | None:
    """The mean time between requests of a behaviour, when it repeated."""
    count, first, last = stat[0], stat[1], stat[2]
    if count < 2 or not first or not last:
        return None
    return round((parse_timestamp(last) - parse_timestamp(first)) / 1e6 / (int(count) - 1), 3)


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges sorted, the overlapping and adjacent ones merged."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


# -- what a request event says ------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request event reduced to its behaviour: the pair, the protocol's key and values."""

    client: str
    server: str
    protocol: str
    port: int | None
    key: tuple[Any, ...]  # the protocol's behaviour key (after client and server)
    values: tuple[Any, ...]  # a Modbus address range, OPC UA nodes, MQTT topics
    write: bool  # the request changes something (a Modbus write, an OPC UA Write or Call)


def request_of(doc: Event) -> Request | None:
    """The behaviour of a request event, or None (an answer, a violation, another dataset)."""
    dataset = doc.get("event", {}).get("dataset")
    src, dst = doc.get("source") or {}, doc.get("destination") or {}
    client, server, port = src.get("ip"), dst.get("ip"), dst.get("port")
    if not client or not server or doc["event"].get("action") == "unanswered_request":
        return None
    if dataset == "ics.modbus":
        modbus = doc.get("modbus") or {}
        fc, unit = modbus.get("function_code"), modbus.get("unit_id")
        if modbus.get("pdu_type") != "request" or fc is None or unit is None:
            return None
        request = modbus.get("request") or {}
        address, quantity = request.get("address"), request.get("quantity") or 1
        values: tuple[Any, ...] = ()
        if isinstance(address, int) and isinstance(quantity, int):
            values = ((address, address + max(quantity, 1) - 1),)
        return Request(client, server, "modbus", port, (unit, fc), values, fc in _MODBUS_WRITES)
    if dataset == "ics.opcua":
        opcua = doc.get("opcua") or {}
        service = str(opcua.get("service") or "")
        if not service.endswith("Request"):
            return None
        write = service in ("WriteRequest", "CallRequest")
        nodes = tuple(n for n in opcua.get("nodes") or () if isinstance(n, str)) if write else ()
        return Request(client, server, "opcua", port, (service,), nodes, write)
    if dataset == "ics.dlms":
        dlms = doc.get("dlms") or {}
        action = str(doc["event"].get("action") or "")
        if not (action.endswith("_request") or action in ("aarq", "rlrq")):
            return None
        service = action.removesuffix("_request")
        member = dlms.get("method") if "action" in service else dlms.get("attribute")
        class_id = dlms.get("class_id")
        if isinstance(class_id, list) or isinstance(member, list):  # with-list: one key each
            class_id, member = None, None
        return Request(client, server, "dlms", port, (service, class_id, member), (), False)
    if dataset == "ics.mqtt":
        mqtt = doc.get("mqtt") or {}
        kind = str(mqtt.get("packet_type") or "")
        if kind not in _MQTT_FROM_CLIENT or (kind == "PUBLISH" and src.get("port") == port):
            return None
        if kind == "PUBLISH" and (dst.get("port") or 0) > (src.get("port") or 0):
            return None  # the broker forwarding a message to a subscriber
        topics: tuple[Any, ...] = ()
        if kind == "PUBLISH" and isinstance(mqtt.get("topic"), str):
            topics = (mqtt["topic"],)
        elif kind in ("SUBSCRIBE", "UNSUBSCRIBE"):
            topics = tuple(t for t in mqtt.get("topics") or () if isinstance(t, str))
        return Request(client, server, "mqtt", port, (kind,), topics, kind == "PUBLISH")
    return None


def _count(table: dict[Any, list[Any]], key: Any, ts: str, with_set: bool = False) -> list[Any]:
    stat = table.get(key)
    if stat is None:
        stat = table[key] = [0, ts, ts, set() if with_set else []]
    stat[0] += 1
    if ts < stat[1] or not stat[1]:
        stat[1] = ts
    if ts > stat[2]:
        stat[2] = ts
    return stat


def learn(site: str, events: Iterable[Event], start: str = "", end: str = "") -> Baseline:
    """The baseline of ``events`` (the learning period's, already chosen by site and time)."""
    baseline = Baseline(site, start, end)
    first = last = ""
    for doc in events:
        request = request_of(doc)
        if request is None:
            continue
        ts = str(doc.get("@timestamp", ""))
        first = ts if not first or ts < first else first
        last = max(last, ts)
        baseline.events += 1
        _add(baseline, request, ts)
    baseline.start, baseline.end = start or first, end or last
    for stat in baseline.modbus.values():
        stat[3] = _merge(stat[3])
    return baseline


def _add(baseline: Baseline, request: Request, ts: str) -> None:
    pair = (request.client, request.server)
    _count(baseline.communications, (*pair, request.protocol, request.port), ts)
    if request.protocol == "modbus":
        stat = _count(baseline.modbus, (*pair, *request.key), ts)
        stat[3].extend(request.values)
        if len(stat[3]) > 64:
            stat[3] = _merge(stat[3])
    elif request.protocol == "opcua":
        stat = _count(baseline.opcua, (*pair, *request.key), ts, with_set=True)
        if len(stat[3]) < MAX_VALUES:
            stat[3].update(request.values)
    elif request.protocol == "dlms":
        _count(baseline.dlms, (*pair, *request.key), ts)
    elif request.protocol == "mqtt":
        stat = _count(baseline.mqtt, (*pair, *request.key), ts, with_set=True)
        if len(stat[3]) < MAX_VALUES:
            stat[3].update(request.values)


# -- protect mode -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One request doing what the baseline does not hold: its kind, what is new, the nearest
    known behaviour (text an analyst reads), and what :func:`accept` adds."""

    kind: str
    event_id: str
    ts_us: int
    client: str
    server: str
    protocol: str
    new: str
    nearest: str
    behaviour: dict[str, Any]


def check(baseline: Baseline, events: Iterable[Event]) -> list[Finding]:
    """The findings of ``events`` against ``baseline``, in event order: the most general novelty
    of each request (a new pair is not also a new function code)."""
    out = []
    for doc in events:
        request = request_of(doc)
        if request is None:
            continue
        finding = _novelty(baseline, request)
        if finding is None:
            continue
        kind, new, nearest, behaviour = finding
        event = doc["event"]
        out.append(Finding(kind, str(event.get("id")), parse_timestamp(doc["@timestamp"]),
                           request.client, request.server, request.protocol, new, nearest,
                           behaviour))  # fmt: skip
    return out


def _novelty(baseline: Baseline, r: Request) -> tuple[str, str, str, dict[str, Any]] | None:
    pair = (r.client, r.server)
    behaviour: dict[str, Any] = {
        "protocol": r.protocol,
        "client": r.client,
        "server": r.server,
        "port": r.port,
    }
    if (*pair, r.protocol, r.port) not in baseline.communications:
        return ("new_communication", f"{r.client} -> {r.server}:{r.port} ({r.protocol})",
                _known_peers(baseline, r), behaviour)  # fmt: skip
    if r.protocol == "modbus":
        unit, fc = r.key
        stat = baseline.modbus.get((*pair, unit, fc))
        behaviour.update(unit_id=unit, function_code=fc, ranges=[list(v) for v in r.values])
        if stat is None:
            codes = sorted({(u, f) for (c, s, u, f) in baseline.modbus if (c, s) == pair})
            return ("new_modbus_write" if r.write else "new_modbus_function",
                    f"unit {unit} function code {fc}",
                    _known(f"unit {u} fc {f}" for u, f in codes),
                    behaviour)  # fmt: skip
        for start, end in r.values:
            if not _covered(stat[3], start, end):
                behaviour["ranges"] = [[start, end]]
                return ("modbus_write_outside_baseline" if r.write
                        else "modbus_address_outside_baseline",
                        f"addresses {start}-{end} (unit {unit} fc {fc})",
                        f"nearest known range {_nearest(stat[3], start)}", behaviour)  # fmt: skip
        return None
    if r.protocol == "opcua":
        (service,) = r.key
        stat = baseline.opcua.get((*pair, service))
        behaviour["service"] = service
        if stat is None:
            services = sorted({svc for (c, s, svc) in baseline.opcua if (c, s) == pair})
            return ("new_opcua_service", service, _known(services),
                    behaviour)  # fmt: skip
        new_nodes = [n for n in r.values if n not in stat[3]]
        if new_nodes:
            behaviour["nodes"] = new_nodes
            return ("new_opcua_node_written", f"{service} on {', '.join(new_nodes[:5])}",
                    _known(sorted(stat[3])), behaviour)  # fmt: skip
        return None
    if r.protocol == "dlms":
        service, class_id, member = r.key
        behaviour.update(service=service, class_id=class_id, member=member)
        if (*pair, service, class_id, member) in baseline.dlms:
            return None
        operations = sorted(
            {f"{svc} class {cls} #{m}" for (c, s, svc, cls, m) in baseline.dlms if (c, s) == pair}
        )
        return ("new_dlms_operation", f"{service} class {class_id} #{member}",
                _known(operations), behaviour)  # fmt: skip
    if r.protocol == "mqtt":
        (kind,) = r.key
        stat = baseline.mqtt.get((*pair, kind))
        behaviour["packet_type"] = kind
        if stat is None:
            kinds = sorted({t for (c, s, t) in baseline.mqtt if (c, s) == pair})
            return ("new_mqtt_packet", kind, _known(kinds), behaviour)
        new_topics = [t for t in r.values if t not in stat[3]]
        if new_topics:
            behaviour["topics"] = new_topics
            return ("new_mqtt_topic", f"{kind} {', '.join(new_topics[:5])}",
                    _known(sorted(stat[3])), behaviour)  # fmt: skip
    return None


def _known(items: Iterable[str], most: int = 8) -> str:
    """``known: a, b, c and 4 more`` (what an analyst reads beside a novelty)."""
    listed = list(items)
    if not listed:
        return "known: none"
    more = f" and {len(listed) - most} more" if len(listed) > most else ""
    return "known: " + ", ".join(listed[:most]) + more


def _known_peers(baseline: Baseline, r: Request) -> str:
    servers = sorted({f"{s}:{port} ({p})" for (c, s, p, port) in baseline.communications
                      if c == r.client})  # fmt: skip
    if servers:
        return f"{r.client} is known to talk to " + ", ".join(servers[:5])
    clients = sorted({c for (c, s, p, _) in baseline.communications
                      if s == r.server and p == r.protocol})  # fmt: skip
    if clients:
        return f"{r.server} is known to serve {r.protocol} to " + ", ".join(clients[:5])
    return f"neither {r.client} nor {r.server} is in the baseline"


def _covered(ranges: Sequence[tuple[int, int]], start: int, end: int) -> bool:
    i = bisect.bisect_right(ranges, (start, float("inf"))) - 1
    return i >= 0 and ranges[i][0] <= start and end <= ranges[i][1]


def _nearest(ranges: Sequence[tuple[int, int]], address: int) -> str:
    if not ranges:
        return "none"
    start, end = min(ranges, key=lambda r: 0 if r[0] <= address <= r[1] else min(
        abs(address - r[0]), abs(address - r[1])))  # fmt: skip
    return f"{start}-{end}"


# -- alerts and acceptance ------------------------------------------------------------------------


def rule_info(kind: str) -> RuleInfo:
    """The pseudo-rule a finding kind raises its alerts under (``baseline.<kind>``)."""
    title, level, techniques, tactics = KINDS[kind]
    description = (
        "Protect mode: a request doing what the site's learnt baseline does not hold (learning "
        "mode, `soc baseline learn`). The alert says what is new and the nearest known "
        "behaviour; `soc baseline accept` adds it to the baseline when it is normal."
    )
    return RuleInfo(f"baseline.{kind}", title, description, level, techniques, tactics, None,
                    ("source.ip", "destination.ip"), None, "baseline")  # fmt: skip


def alerts_of(
    findings: Sequence[Finding], table: AttackTable, created_us: int, site: str, revision: int
) -> list[dict[str, Any]]:
    """One alert document per kind, client, server and novelty, with its findings' events."""
    groups: dict[tuple[str, str, str, str], list[Finding]] = {}
    for f in findings:
        groups.setdefault((f.kind, f.client, f.server, f.new), []).append(f)
    out = []
    for (kind, client, server, new), items in groups.items():
        info = rule_info(kind)
        first, last = items[0], items[-1]
        doc = alert_document(
            info, table,
            alert=alert_id(info.id, (client, server, new), first.event_id),
            group=(client, server), first_ts=first.ts_us, last_ts=last.ts_us, metric=len(items),
            event_ids=[f.event_id for f in items], event_count=len(items), matches=[],
            created_us=created_us,
        )  # fmt: skip
        doc["source"] = {"ip": client}
        doc["destination"] = {"ip": server}
        doc["related"] = {"ip": sorted({client, server})}
        doc["message"] = f"{info.title}: {new}; {first.nearest}"
        doc["ics"]["baseline"] = {
            "site": site,
            "revision": revision,
            "kind": kind,
            "new": new,
            "nearest": first.nearest,
            "behaviour": _union(items),
        }
        out.append(doc)
    return out


def _union(items: Sequence[Finding]) -> dict[str, Any]:
    """The behaviour of a group's findings: the first's, with the address ranges, nodes or
    topics of them all (what accepting the alert adds)."""
    out = dict(items[0].behaviour)
    if "ranges" in out:
        merged = _merge(tuple(r) for f in items for r in f.behaviour.get("ranges", ()))
        out["ranges"] = [list(r) for r in merged]
    for name in ("nodes", "topics"):
        if name in out:
            out[name] = sorted({v for f in items for v in f.behaviour.get(name, ())})
    return out


def accept(baseline: Baseline, alert: dict[str, Any], actor: str, now_us: int) -> Baseline:
    """``baseline`` with what a protect-mode alert found added (a new revision is the store's
    to number); ValueError when the alert is not one of a baseline's."""
    found = (alert.get("ics") or {}).get("baseline")
    if not isinstance(found, dict) or not isinstance(found.get("behaviour"), dict):
        raise ValueError("not a protect-mode alert (no ics.baseline.behaviour)")
    b = found["behaviour"]
    ts = format_timestamp(now_us)
    pair = (b["client"], b["server"])
    _count(baseline.communications, (*pair, b["protocol"], b.get("port")), ts)
    if b["protocol"] == "modbus" and "function_code" in b:
        stat = _count(baseline.modbus, (*pair, b["unit_id"], b["function_code"]), ts)
        stat[3] = _merge([*stat[3], *(tuple(r) for r in b.get("ranges") or [])])
    elif b["protocol"] == "opcua" and "service" in b:
        _count(baseline.opcua, (*pair, b["service"]), ts, with_set=True)[3].update(
            b.get("nodes") or []
        )
    elif b["protocol"] == "dlms" and "service" in b:
        _count(baseline.dlms, (*pair, b["service"], b.get("class_id"), b.get("member")), ts)
    elif b["protocol"] == "mqtt" and "packet_type" in b:
        _count(baseline.mqtt, (*pair, b["packet_type"]), ts, with_set=True)[3].update(
            b.get("topics") or []
        )
    baseline.accepted.append({"alert": alert["event"]["id"], "kind": found.get("kind"),
                              "new": found.get("new"), "by": actor, "at": ts})  # fmt: skip
    return baseline
