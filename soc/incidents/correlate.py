"""Alerts into incidents: a pure fold, no I/O.

**Who and where.** An alert's attacker is its ``source.ip`` (the host that sent what the rule
matched) and its asset the ``destination.ip`` (the host it was sent to), swapped when the source
is in a site and the destination in none (a rule on a server's answers to an outside host); its
site is the first configured site (``[incidents.sites]``: name -> networks) holding the asset,
else the attacker, else ``unassigned``.

**Joining.** Alerts are taken in time order. An alert joins the open incident (status new,
acknowledged or investigating) of its site that shares its attacker or its asset and whose
latest alert is at most the window (``incidents.window_s``) before it; of several, the most
recent. Otherwise it opens a new incident, whose id is derived from the alert's (a re-run makes
the same incidents). A resolved or false-positive incident takes no new alert: the attack
coming back is a new incident.

**Duplicates** are merged with counts: an incident lists each rule once, with the number of its
alerts and their first and last time; ``alert_count`` counts every alert.

**Severity** (0-100, the ECS ``event.severity`` scale): the highest alert severity (low 21,
medium 47, high 73, critical 99), plus 10 when the asset is critical, plus 5 when high, minus 10
when low (``[incidents.criticality]``; unlisted assets are medium), plus 10 when the incident's
tactics span three or more stages of the ATT&CK for ICS matrix (a chain: discovery, then
collection, then impairing the process...), clamped to 1-100. Its level: critical from 90, high
from 70, medium from 40, else low.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

OPEN = ("new", "acknowledged", "investigating")
CLOSED = ("resolved", "false_positive")
STATUSES = (*OPEN, *CLOSED)
UNASSIGNED = "unassigned"
ALERT_SEVERITY = {"informational": 1, "low": 21, "medium": 47, "high": 73, "critical": 99}
CRITICALITY_BONUS = {"low": -10, "medium": 0, "high": 5, "critical": 10}
CHAIN_BONUS = 10
CHAIN_STAGES = 3
_NAMESPACE = uuid.UUID("8d0f4c1e-2b6a-4f4e-9d51-3c7a0e6b2f90")  # incident ids: uuid5 here

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SiteMap:
    """Sites and criticality levels from their networks (``[incidents.*]`` settings)."""

    def __init__(
        self, sites: Mapping[str, Sequence[str]], criticality: Mapping[str, Sequence[str]]
    ) -> None:
        self.sites = [(name, _network(n)) for name, nets in sites.items() for n in nets]
        self.levels = [(level, _network(n)) for level, nets in criticality.items() for n in nets]
        self.site_names = tuple(sites)

    def site_of(self, ip: str | None) -> str | None:
        """The first site whose networks hold ``ip``."""
        return _first(self.sites, ip)

    def criticality_of(self, ip: str | None) -> str:
        """The asset's criticality level (``medium`` when unlisted); the most specific network
        wins, then the higher level."""
        address = _address(ip)
        if address is None:
            return "medium"
        found = [
            (net.prefixlen, list(CRITICALITY_BONUS).index(level), level)
            for level, net in self.levels
            if address.version == net.version and address in net
        ]
        return max(found)[2] if found else "medium"


def _network(text: str) -> Network:
    return ipaddress.ip_network(text, strict=False)


@lru_cache(maxsize=4096)
def _address(ip: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not ip:
        return None
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None


def _first(table: Sequence[tuple[str, Network]], ip: str | None) -> str | None:
    address = _address(ip)
    if address is None:
        return None
    return next(
        (name for name, net in table if address.version == net.version and address in net),
        None,
    )


@dataclass(frozen=True)
class AlertView:
    """What correlation reads of a stored alert."""

    id: str
    ts: int  # µs: its first event
    end_ts: int  # µs: its last window
    rule_id: str
    doc: Mapping[str, Any]

    @property
    def attacker(self) -> str | None:
        """The host that sent what the rule matched."""
        value = _get(self.doc, "source", "ip")
        return value if isinstance(value, str) else None

    @property
    def asset(self) -> str | None:
        """The host it was sent to."""
        value = _get(self.doc, "destination", "ip")
        return value if isinstance(value, str) else None

    def roles(self, sites: SiteMap) -> tuple[str | None, str | None]:
        """(attacker, asset): the source and the destination, swapped when the source is in a
        site and the destination in none (an alert on the answers to an outside host)."""
        source, destination = self.attacker, self.asset
        if source and destination and sites.site_of(source) and not sites.site_of(destination):
            return destination, source
        return source, destination

    @property
    def level(self) -> str:
        """The rule's level."""
        return str(self.doc.get("labels", {}).get("level") or "medium")


def _get(doc: Mapping[str, Any], *path: str) -> Any:
    value: Any = doc
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


@dataclass
class Incident:
    """An incident being built or continued (its stored document is :meth:`doc`)."""

    id: str
    site: str
    created_us: int
    first_us: int
    last_us: int
    status: str = "new"
    owner: str | None = None
    attackers: list[str] = field(default_factory=list)
    assets: list[str] = field(default_factory=list)
    criticality: str = "medium"
    alert_count: int = 0
    event_count: int = 0
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    techniques: dict[str, str] = field(default_factory=dict)
    tactics: dict[str, str] = field(default_factory=dict)  # id -> name
    severity: int = 0
    level: str = "low"
    updated_us: int = 0

    @property
    def open(self) -> bool:
        """Whether new alerts may join it."""
        return self.status in OPEN

    def title(self) -> str:
        """The worst rule's title, the asset and how many other rules fired."""
        if not self.rules:
            return f"incident on {self.site}"
        worst = max(
            self.rules.values(), key=lambda r: (ALERT_SEVERITY.get(r["level"], 0), r["count"])
        )
        target = self.assets[0] if self.assets else (self.attackers or ["?"])[0]
        more = len(self.rules) - 1
        tail = f" (and {more} other rule{'s' if more > 1 else ''})" if more else ""
        return f"{worst['name']} on {target}{tail}"

    def doc(self) -> dict[str, Any]:
        """The stored and served document."""
        order = sorted(self.rules.values(), key=lambda r: (r["first"], r["name"]))
        return {
            "id": self.id,
            "title": self.title(),
            "status": self.status,
            "owner": self.owner,
            "site": self.site,
            "severity": self.severity,
            "level": self.level,
            "created": iso(self.created_us),
            "updated": iso(self.updated_us or self.created_us),
            "first_seen": iso(self.first_us),
            "last_seen": iso(self.last_us),
            "attackers": self.attackers,
            "assets": self.assets,
            "asset_criticality": self.criticality,
            "alert_count": self.alert_count,
            "event_count": self.event_count,
            "rules": [{**r, "first": iso(r["first"]), "last": iso(r["last"])} for r in order],
            "techniques": [{"id": k, "name": v} for k, v in sorted(self.techniques.items())],
            "tactics": [{"id": k, "name": v} for k, v in self.tactics.items()],
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Incident:
        """Back from :meth:`doc`."""
        return cls(
            id=doc["id"],
            site=doc["site"],
            created_us=parse_iso(doc["created"]),
            first_us=parse_iso(doc["first_seen"]),
            last_us=parse_iso(doc["last_seen"]),
            status=doc["status"],
            owner=doc.get("owner"),
            attackers=list(doc.get("attackers", [])),
            assets=list(doc.get("assets", [])),
            criticality=doc.get("asset_criticality", "medium"),
            alert_count=int(doc.get("alert_count", 0)),
            event_count=int(doc.get("event_count", 0)),
            rules={
                r["id"]: {**r, "first": parse_iso(r["first"]), "last": parse_iso(r["last"])}
                for r in doc.get("rules", [])
            },
            techniques={t["id"]: t["name"] for t in doc.get("techniques", [])},
            tactics={t["id"]: t["name"] for t in doc.get("tactics", [])},
            severity=int(doc.get("severity", 0)),
            level=doc.get("level", "low"),
            updated_us=parse_iso(doc["updated"]) if doc.get("updated") else 0,
        )


def iso(us: int) -> str:
    """ISO 8601 UTC with microseconds."""
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> int:
    """µs since the epoch from :func:`iso`'s text."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return round(moment.timestamp() * 1e6)


def incident_id(first_alert_id: str) -> str:
    """The deterministic id of the incident an alert opened."""
    return str(uuid.uuid5(_NAMESPACE, first_alert_id))


def score(incident: Incident, tactic_order: Mapping[str, int]) -> tuple[int, str]:
    """The incident's severity and level (see the module's documentation)."""
    worst = max((ALERT_SEVERITY.get(r["level"], 47) for r in incident.rules.values()), default=47)
    stages = {tactic_order[t] for t in incident.tactics if t in tactic_order}
    chain = CHAIN_BONUS if len(stages) >= CHAIN_STAGES else 0
    value = max(1, min(100, worst + CRITICALITY_BONUS.get(incident.criticality, 0) + chain))
    return value, level_of(value)


def level_of(severity: int) -> str:
    """The level of a 0-100 severity."""
    if severity >= 90:
        return "critical"
    if severity >= 70:
        return "high"
    if severity >= 40:
        return "medium"
    return "low"


@dataclass
class Outcome:
    """What one correlation pass did."""

    incidents: dict[str, Incident] = field(default_factory=dict)  # created or changed, by id
    created: set[str] = field(default_factory=set)
    escalated: set[str] = field(default_factory=set)  # level rose (created ones aside)
    links: list[tuple[str, str]] = field(default_factory=list)  # (alert id, incident id)


def correlate(
    alerts: Iterable[AlertView],
    open_incidents: Iterable[Incident],
    sites: SiteMap,
    *,
    window_us: int,
    tactic_order: Mapping[str, int],
    now_us: int,
) -> Outcome:
    """Fold ``alerts`` (not yet in an incident) into ``open_incidents`` or new ones."""
    out = Outcome()
    pool = [i for i in open_incidents if i.open]
    levels = {i.id: i.level for i in pool}
    for alert in sorted(alerts, key=lambda a: (a.ts, a.id)):
        attacker, asset = alert.roles(sites)
        site = sites.site_of(asset) or sites.site_of(attacker) or UNASSIGNED
        target = _join(pool, attacker, asset, alert.ts, site, window_us)
        if target is None:
            target = Incident(
                incident_id(alert.id),
                site,
                created_us=now_us,
                first_us=alert.ts,
                last_us=alert.end_ts,
                criticality="low",
            )
            pool.append(target)
            out.created.add(target.id)
        _add(target, alert, attacker, asset, sites)
        target.severity, target.level = score(target, tactic_order)
        target.updated_us = now_us
        out.incidents[target.id] = target
        out.links.append((alert.id, target.id))
    for ident, incident in out.incidents.items():
        before = levels.get(ident)
        if before is not None and _rank(incident.level) > _rank(before):
            out.escalated.add(ident)
    return out


def _rank(level: str) -> int:
    return list(CRITICALITY_BONUS).index(level) if level in CRITICALITY_BONUS else 0


def _join(
    pool: list[Incident],
    attacker: str | None,
    asset: str | None,
    ts: int,
    site: str,
    window_us: int,
) -> Incident | None:
    best: Incident | None = None
    for incident in pool:
        if incident.site != site or ts - incident.last_us > window_us:
            continue
        shares = (attacker is not None and attacker in incident.attackers) or (
            asset is not None and asset in incident.assets
        )
        if shares and (best is None or incident.last_us > best.last_us):
            best = incident
    return best


def _add(
    incident: Incident, alert: AlertView, attacker: str | None, asset: str | None, sites: SiteMap
) -> None:
    doc = alert.doc
    for ip, names in ((attacker, incident.attackers), (asset, incident.assets)):
        if ip and ip not in names:
            names.append(ip)
    incident.criticality = max(
        (sites.criticality_of(ip) for ip in incident.assets),
        key=lambda level: CRITICALITY_BONUS.get(level, 0),
        default="medium",
    )
    incident.first_us = min(incident.first_us, alert.ts)
    incident.last_us = max(incident.last_us, alert.end_ts, alert.ts)
    incident.alert_count += 1
    incident.event_count += int(_get(doc, "ics", "alert", "event_count") or 0)
    rule = incident.rules.get(alert.rule_id)
    if rule is None:
        incident.rules[alert.rule_id] = {
            "id": alert.rule_id,
            "name": str(_get(doc, "rule", "name") or alert.rule_id),
            "level": alert.level,
            "count": 1,
            "first": alert.ts,
            "last": alert.end_ts,
        }
    else:
        rule["count"] += 1
        rule["first"] = min(rule["first"], alert.ts)
        rule["last"] = max(rule["last"], alert.end_ts)
    technique = _get(doc, "threat", "technique") or {}
    for tid, name in zip(technique.get("id", []), technique.get("name", []), strict=False):
        incident.techniques[tid] = name
    tactic = _get(doc, "threat", "tactic") or {}
    for tid, name in zip(tactic.get("id", []), tactic.get("name", []), strict=False):
        incident.tactics[tid] = name
