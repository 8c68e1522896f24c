"""Episodes and alert documents: what a rule's matching events become for an analyst.

**Correlation, in linear time.** pySigma's SQLite correlation SQL measures a window per matching
event with correlated sub-queries: quadratic in the events of a group (a request flood over the
lab's 13,000-event capture takes 30 s). Here a correlation rule (``event_count``,
``value_count``, ``temporal``) is evaluated over its base rules' matching rows (id, time, group-by
fields, the counted field), which pySigma's compiled SQL still selects: the same semantics as
pySigma's, with one sliding window per group (a deque, and a counter of values):

- a window ends at each distinct time ``t`` of a group's matches and holds the matches in
  ``[t - timespan, t]`` (both ends included, as pySigma's ``BETWEEN``);
- the metric is the number of distinct events (``event_count``), of distinct non-null values of
  the field, text compared case-insensitively (``value_count``), or of distinct referenced rules
  seen (``temporal``); the condition (``gte``, ``gt``, ``lte``, ``lt``, ``eq``, ``neq``) is the
  rule's;
- group-by values compare case-insensitively, and a match missing a group-by field is left out.

**One alert per episode.** pySigma raises one alert per qualifying window: a flood of 13,000
requests gives 12,500 overlapping alerts. Here qualifying windows of the same rule and group that
overlap (the next one starts before the previous one ends) are one *episode*: one alert with the
first and last time, the largest metric, and the events of all its windows. A rule without
correlation groups its hits the same way, per (source.ip, destination.ip), while consecutive hits
are at most ``gap`` seconds apart (:data:`EVENT_GAP_S`).

**Alert documents** (:func:`alert_document`) are ECS: ``event.kind: alert``, ``rule.*``,
``threat.*`` (ATT&CK for ICS, from ``rules/attack_ics.json``), ``source``/``destination`` and
``related.ip`` of the triggering events, and ``ics.alert.*`` (event ids, capped at
:data:`MAX_EVENT_IDS`, with their total count).
"""

from __future__ import annotations

import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, NamedTuple

from detectors.attack import AttackTable

#: Hits of a single-event rule within this many seconds of each other (same source and
#: destination) make one alert.
EVENT_GAP_S = 60.0
#: Event ids listed in an alert document (``ics.alert.event_ids``); the total is always counted.
MAX_EVENT_IDS = 1000
#: Sigma levels -> ``event.severity`` (the risk scores Elastic Security uses for them).
SEVERITY = {"informational": 1, "low": 21, "medium": 47, "high": 73, "critical": 99}
FRAMEWORK = "MITRE ATT&CK for ICS"
_NAMESPACE = uuid.UUID("5b0c3f7e-4f0e-4d8a-9a39-2f3c6c1c0a51")  # alert ids: uuid5 in this space


class Match(NamedTuple):
    """One event a base rule matched: what the windows and the alert need of it (a tuple:
    hundreds of thousands are made per run)."""

    id: str
    ts: int  # µs
    group: tuple[Any, ...]  # the group-by values, as the event carries them
    value: Any = None  # value_count: the counted field
    slot: int = 0  # which referenced rule matched (temporal)
    new: bool = True  # not seen by a previous run (incremental detection)
    source_ip: str | None = None
    destination_ip: str | None = None
    destination_port: int | None = None


@dataclass(frozen=True)
class Window:
    """How a rule's matches become episodes (see the module's documentation)."""

    kind: str  # event (a rule without correlation), event_count, value_count, temporal
    span_us: int  # the correlation's timespan (0 for a single-event rule)
    gap_us: int  # two qualifying windows this close make one episode
    op: str = "gte"
    count: int = 1
    slots: int = 1  # temporal: the number of referenced rules

    def qualifies(self, metric: int) -> bool:
        """The correlation's condition on a window's metric."""
        return _OPS[self.op](metric, self.count)


_OPS: Mapping[str, Callable[[int, int], bool]] = {
    "gte": lambda m, c: m >= c,
    "gt": lambda m, c: m > c,
    "lte": lambda m, c: m <= c,
    "lt": lambda m, c: m < c,
    "eq": lambda m, c: m == c,
    "neq": lambda m, c: m != c,
}


@dataclass
class Episode:
    """Overlapping qualifying windows of one rule and group: one alert."""

    key: tuple[Any, ...]  # the normalised group key
    group: tuple[Any, ...]  # the group-by values as first seen
    first_anchor: int  # µs: the end of the first qualifying window
    last_anchor: int  # µs: the end of the last one
    metric: int = 0
    matches: list[Match] = field(default_factory=list)

    @property
    def first_ts(self) -> int:
        """The time of the episode's earliest event."""
        return min(m.ts for m in self.matches)

    @property
    def has_new(self) -> bool:
        """Whether an event not seen by a previous run takes part."""
        return any(m.new for m in self.matches)


def normalise(value: Any) -> Any:
    """A value as Sigma compares it: text case-insensitively (SQLite's ``NOCASE``)."""
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, list):
        return tuple(normalise(v) for v in value)
    return value


def episodes(
    window: Window, matches: Iterable[Match], anchor_from: int | None = None
) -> list[Episode]:
    """The episodes of a rule over its matches (any order), in time order per group.

    ``anchor_from`` (µs): windows ending before it are not evaluated (an incremental run reads
    the matches of a look-back before its new events only to fill the windows that end on them).
    """
    groups: dict[tuple[Any, ...], list[Match]] = {}
    keys: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # group as carried -> as compared
    single = window.kind == "event"
    for match in matches:
        try:
            key = keys[match.group]
        except KeyError:
            key = keys[match.group] = tuple(normalise(v) for v in match.group)
        except TypeError:  # an unhashable value
            key = tuple(normalise(v) for v in match.group)
        if not single and None in key:
            continue  # pySigma leaves out a match without its group-by values
        rows = groups.get(key)
        if rows is None:
            groups[key] = [match]
        else:
            rows.append(match)
    found: list[Episode] = []
    order = attrgetter("ts", "id")
    for key, rows in groups.items():
        rows.sort(key=order)
        if window.kind != "temporal" and window.slots > 1:  # an event matching two referenced
            rows = list({m.id: m for m in rows}.values())  # rules counts once
        if single:
            found += _single_episodes(window, key, rows, anchor_from)
        else:
            found += _group_episodes(window, key, rows, anchor_from)
    found.sort(key=lambda e: (e.first_anchor, e.key))
    return found


def _single_episodes(
    window: Window, key: tuple[Any, ...], rows: Sequence[Match], anchor_from: int | None
) -> list[Episode]:
    """A rule without correlation: every match qualifies; matches at most the gap apart chain."""
    out: list[Episode] = []
    current: Episode | None = None
    gap = window.gap_us
    ties, previous = 0, None  # the metric: the most matches at one time
    for row in rows:
        t = row.ts
        if anchor_from is not None and t < anchor_from:
            continue
        ties = ties + 1 if t == previous else 1
        previous = t
        if current is None or t - current.last_anchor > gap:
            current = Episode(key, row.group, t, t)
            out.append(current)
        current.last_anchor = t
        current.metric = max(current.metric, ties)
        current.matches.append(row)
    return out


def _group_episodes(
    window: Window, key: tuple[Any, ...], rows: Sequence[Match], anchor_from: int | None
) -> list[Episode]:
    out: list[Episode] = []
    current: Episode | None = None
    inside: deque[int] = deque()  # indexes into rows of the current window
    values: Counter[Any] = Counter()  # value_count: values in the window (temporal: slots)
    taken = -1  # the highest index already in an episode
    kind, span, n, i = window.kind, window.span_us, len(rows), 0
    while i < n:
        t = rows[i].ts
        while i < n and rows[i].ts == t:  # every match at this time belongs to the window
            inside.append(i)
            if kind == "value_count":
                if rows[i].value is not None:
                    values[normalise(rows[i].value)] += 1
            elif kind == "temporal":
                values[rows[i].slot] += 1
            i += 1
        while rows[inside[0]].ts < t - span:
            gone = rows[inside.popleft()]
            if kind == "value_count" and gone.value is not None:
                _drop(values, normalise(gone.value))
            elif kind == "temporal":
                _drop(values, gone.slot)
        if anchor_from is not None and t < anchor_from:
            continue
        metric = len(values) if kind == "value_count" or kind == "temporal" else len(inside)
        if not window.qualifies(metric):
            continue
        if current is None or t - current.last_anchor > window.gap_us:
            current = Episode(key, rows[inside[0]].group, t, t)
            out.append(current)
        current.last_anchor = t
        current.metric = max(current.metric, metric)
        start = max(taken + 1, inside[0])
        current.matches.extend(rows[j] for j in range(start, inside[-1] + 1))
        taken = inside[-1]
    return out


def _drop(counter: Counter[Any], value: Any) -> None:
    counter[value] -= 1
    if counter[value] <= 0:
        del counter[value]


def alert_id(rule_id: str, key: Sequence[Any], first_event_id: str) -> str:
    """The deterministic id of the alert of an episode: the rule, the group, its first event."""
    return str(uuid.uuid5(_NAMESPACE, f"{rule_id}|{key!r}|{first_event_id}"))


def iso(ts_us: int) -> str:
    """An ECS ``@timestamp`` (µs, UTC, ``Z``) from µs since the epoch."""
    return datetime.fromtimestamp(ts_us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class RuleInfo:
    """What an alert document says about its rule (from a compiled rule)."""

    id: str
    title: str
    description: str
    level: str | None
    techniques: tuple[str, ...]
    tactics: tuple[str, ...]
    correlation: str | None  # the correlation type, None for a single-event rule
    group_by: tuple[str, ...]
    timespan_s: float | None
    service: str | None


def threat(info: RuleInfo, table: AttackTable) -> dict[str, Any]:
    """ECS ``threat.*`` of a rule: ATT&CK for ICS techniques and tactics (arrays)."""
    techniques = [table.techniques[t] for t in info.techniques if t in table.techniques]
    tactics = [t for t in (table.tactic(name) for name in info.tactics) if t is not None]
    return {
        "framework": FRAMEWORK,
        "technique": {
            "id": [t.id for t in techniques],
            "name": [t.name for t in techniques],
            "reference": [f"https://attack.mitre.org/techniques/{t.id}/" for t in techniques],
        },
        "tactic": {
            "id": [t.id for t in tactics],
            "name": [t.name for t in tactics],
            "reference": [f"https://attack.mitre.org/tactics/{t.id}/" for t in tactics],
        },
    }


def alert_document(
    info: RuleInfo,
    table: AttackTable,
    *,
    alert: str,
    group: Sequence[Any],
    first_ts: int,
    last_ts: int,
    metric: int,
    event_ids: Sequence[str],
    event_count: int,
    matches: Sequence[Match],
    created_us: int,
    triggered_us: int | None = None,
) -> dict[str, Any]:
    """The ECS document of one alert (``matches``: its triggering events, for the addresses;
    ``triggered_us``: the event time the rule's condition was first met, default ``first_ts``)."""
    level = info.level or "medium"
    sources = Counter(m.source_ip for m in matches if m.source_ip)
    destinations = Counter(m.destination_ip for m in matches if m.destination_ip)
    ports = Counter(m.destination_port for m in matches if m.destination_port is not None)
    related = sorted({*sources, *destinations})
    doc: dict[str, Any] = {
        "@timestamp": iso(first_ts),
        "event": {
            "kind": "alert",
            "dataset": "ics.alert",
            "id": alert,
            "category": ["intrusion_detection"],
            "type": ["indicator"],
            "severity": SEVERITY.get(level, SEVERITY["medium"]),
            "risk_score": float(SEVERITY.get(level, SEVERITY["medium"])),
            "start": iso(first_ts),
            "end": iso(last_ts),
            "created": iso(created_us),
        },
        "rule": {
            "id": info.id,
            "uuid": info.id,
            "name": info.title,
            "description": info.description.strip(),
            "ruleset": "ics-soc",
            "category": info.service or "ics",
        },
        "labels": {"level": level},
        "threat": threat(info, table),
        "related": {"ip": related[:100]},
        "ics": {
            "alert": {
                "level": level,
                "correlation": info.correlation,
                "group": dict(zip(info.group_by, group, strict=False)),
                "timespan_s": info.timespan_s,
                "metric": metric,
                "triggered": iso(first_ts if triggered_us is None else triggered_us),
                "event_count": event_count,
                "event_ids": list(event_ids[:MAX_EVENT_IDS]),
                "event_ids_truncated": event_count > min(len(event_ids), MAX_EVENT_IDS),
            }
        },
    }
    if sources:
        doc["source"] = {"ip": sources.most_common(1)[0][0]}
    if destinations:
        doc["destination"] = {"ip": destinations.most_common(1)[0][0]}
        if ports:
            doc["destination"]["port"] = ports.most_common(1)[0][0]
    return doc
