"""Detection: the compiled rules over the store's new events, alerts exactly once.

**Plans** (:func:`load_plans`). Every alerting rule becomes a :class:`RulePlan`: the SQL of the
rule itself, or of each base rule a correlation refers to, as pySigma compiled it
(:mod:`detectors.sigma`'s backend and pipeline), selecting per matching event its id, time,
group-by fields, counted field and addresses; and the :class:`~detectors.alerts.Window` that
turns those rows into episodes (:func:`detectors.alerts.episodes`: the correlation evaluated in
Python, linearly, with pySigma's semantics).

**Incremental runs** (:class:`Detector`). Each rule has a checkpoint in the store (the highest
``events.seq`` it has processed, table ``detection_checkpoints``). A run reads each rule's
matches among the events after its checkpoint, and, for a correlation, the matches of the
look-back before the earliest new one (its timespan) that fill the windows ending on them; for a
single-event rule the look-back is the grouping gap. Episodes with a new event are merged into
the stored alert of the same rule and group they continue (its last window overlaps the new
episode's first) or stored as a new alert with a deterministic id (rule, group, first event).
The alert, its events (table ``alert_events``: an event is listed once per alert) and the new
checkpoint are written in one transaction per rule: a run killed halfway is redone from the
checkpoints, and a matching event ends up in exactly one alert of the rule.

**A capture** (:func:`detect_events`): the same plans over events held in memory
(:func:`detectors.sigma.memory_store`); nothing touches the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import orjson
from sigma.correlations import SigmaCorrelationCondition, SigmaCorrelationRule
from sigma.rule import SigmaRule

from detectors.alerts import (
    EVENT_GAP_S,
    MAX_EVENT_IDS,
    Episode,
    Match,
    RuleInfo,
    Window,
    alert_document,
    alert_id,
    episodes,
    iso,
)
from detectors.attack import AttackTable, install_offline, load_table
from detectors.sigma import (
    CompiledRule,
    StoreBackend,
    _conversion_order,
    _quote,
    compile_rules,
    load_pipeline,
    load_rule_file,
    logs_select,
    memory_store,
    rule_files,
)
from soc.config import LAB_SITE, CollectSettings
from soc.errors import RuleError, StoreError
from soc.store.base import AlertRow
from soc.store.sqlite import SQLiteStore
from soc.types import Event

#: Fields every plan reads for the alert document (besides the rule's own).
ADDRESS_FIELDS = ("source.ip", "destination.ip", "destination.port")
#: A single-event rule's alerts group its hits per source and destination.
EVENT_GROUP_BY = ("source.ip", "destination.ip")
#: New events one rule reads at most per step of a run (memory stays bounded).
STEP_EVENTS = 250_000
_CORRELATIONS = {"event_count", "value_count", "temporal"}


@dataclass(frozen=True)
class Input:
    """One base query: ``WITH logs AS (...) SELECT id, ts, <columns> FROM (query)``."""

    query: str  # pySigma's: SELECT * FROM logs WHERE ...
    fields: tuple[str, ...]  # the logs columns it needs (its own, group-by, value, addresses)


@dataclass(frozen=True)
class RulePlan:
    """An alerting rule, ready to run: its metadata, its inputs, how its hits become alerts."""

    rule: CompiledRule
    info: RuleInfo
    inputs: tuple[Input, ...]
    window: Window
    group_by: tuple[str, ...]
    value_field: str | None = None

    @property
    def id(self) -> str:
        """The rule's id."""
        return self.rule.id

    @property
    def lookback_us(self) -> int:
        """How far before the new events a run reads old matches."""
        return max(self.window.span_us, self.window.gap_us)

    def statements(self, where: str) -> list[str]:
        """One SQL statement per input over the ``events`` rows satisfying ``where``."""
        columns = ", ".join(_quote(f) for f in self._columns())
        return [
            f"WITH logs AS ({logs_select(i.fields, 'events', where)})"  # noqa: S608 - checked
            f" SELECT id, ts, {columns} FROM ({i.query})"
            for i in self.inputs
        ]

    def _columns(self) -> tuple[str, ...]:
        value = (self.value_field,) if self.value_field else ()
        return (*self.group_by, *value, *ADDRESS_FIELDS)

    def matches(self, rows_per_input: Sequence[Iterable[Sequence[Any]]], new: bool) -> list[Match]:
        """:class:`Match` objects from the rows of :meth:`statements`."""
        n = len(self.group_by)
        has_value = self.value_field is not None
        out: list[Match] = []
        for slot, rows in enumerate(rows_per_input):
            for row in rows:
                rest = row[2 + n + has_value :]
                out.append(
                    Match(
                        str(row[0]),
                        int(row[1]),
                        tuple(row[2 : 2 + n]),
                        row[2 + n] if has_value else None,
                        slot,
                        new,
                        rest[0] if isinstance(rest[0], str) else None,
                        rest[1] if isinstance(rest[1], str) else None,
                        int(rest[2]) if isinstance(rest[2], int) else None,
                    )
                )
        return out


def load_plans(
    rules_dir: Path | None = None,
    site: Mapping[str, Sequence[str]] | None = None,
    *,
    gap_s: float = EVENT_GAP_S,
    only: Callable[[CompiledRule], bool] | None = None,
) -> list[RulePlan]:
    """A plan for every alerting rule under ``rules_dir`` (default: the bundled rules).

    ``gap_s``: a single-event rule's hits at most this far apart (same source and destination)
    make one alert. ``only`` keeps the rules it accepts.
    """
    site = LAB_SITE if site is None else site
    compiled = [r for r in compile_rules(rules_dir, site) if only is None or only(r)]
    by_file: dict[Path, list[CompiledRule]] = {}
    for rule in compiled:
        by_file.setdefault(rule.path, []).append(rule)
    install_offline()
    plans: list[RulePlan] = []
    for path in rule_files(rules_dir):
        if path in by_file:
            plans += _file_plans(path, by_file[path], site, gap_s)
    return plans


def _file_plans(
    path: Path, compiled: list[CompiledRule], site: Mapping[str, Sequence[str]], gap_s: float
) -> list[RulePlan]:
    collection = load_rule_file(path)
    backend = StoreBackend(load_pipeline(site))
    queries: dict[int, Input] = {}
    ordered = _conversion_order(collection, path)
    for rule in ordered:  # every base rule, also those only a correlation uses
        if isinstance(rule, SigmaRule):
            output, rule._output = rule._output, True
            try:
                converted = backend.convert_rule(rule)  # type: ignore[no-untyped-call]
            except Exception as exc:
                raise RuleError(f"rule {rule.id}: {exc}", location=str(path)) from exc
            finally:
                rule._output = output
            if len(converted) != 1 or not isinstance(converted[0], str):
                raise RuleError(f"rule {rule.id}: expected one query", location=str(path))
            queries[id(rule)] = Input(converted[0], tuple(backend.fields_of(rule)))
    wanted = {r.id: r for r in compiled}
    plans = []
    for rule in ordered:
        meta = wanted.get(str(rule.id))
        if meta is None:
            continue
        if isinstance(rule, SigmaCorrelationRule):
            plans.append(_correlation_plan(rule, meta, queries, path))
        else:
            window = Window("event", 0, round(gap_s * 1e6))
            base = queries[id(rule)]
            plans.append(
                _plan(meta, (base,), window, EVENT_GROUP_BY, None),
            )
    return plans


def _correlation_plan(
    rule: SigmaCorrelationRule, meta: CompiledRule, queries: Mapping[int, Input], path: Path
) -> RulePlan:
    kind = rule.type.name.lower()
    if kind not in _CORRELATIONS:
        raise RuleError(
            f"rule {rule.id}: {kind} correlations are not supported by the runner",
            location=str(path),
        )
    inputs = []
    for ref in rule.referenced_rules:
        if id(ref.rule) not in queries:
            raise RuleError(
                f"rule {rule.id}: refers to a correlation (chained correlations are not supported)",
                location=str(path),
            )
        inputs.append(queries[id(ref.rule)])
    condition = rule.condition
    if condition is not None and not isinstance(condition, SigmaCorrelationCondition):
        raise RuleError(
            f"rule {rule.id}: extended correlation conditions are not supported by the runner",
            location=str(path),
        )
    value_field: str | None = None
    if kind == "value_count":
        fieldref = condition.fieldref if condition is not None else None
        if not isinstance(fieldref, str):
            raise RuleError(f"rule {rule.id}: value_count needs one field", location=str(path))
        value_field = fieldref
    if condition is None:  # a temporal correlation without condition: every rule seen
        op, count = "gte", len(inputs)
    else:
        op, count = condition.op.name.lower(), condition.count
    span = round(float(rule.timespan.seconds) * 1e6)
    window = Window(kind, span, span, op, count, len(inputs))
    return _plan(meta, tuple(inputs), window, tuple(rule.group_by or ()), value_field)


def _plan(
    meta: CompiledRule,
    inputs: tuple[Input, ...],
    window: Window,
    group_by: tuple[str, ...],
    value_field: str | None,
) -> RulePlan:
    extra = (*group_by, *((value_field,) if value_field else ()), *ADDRESS_FIELDS)
    inputs = tuple(Input(i.query, tuple(dict.fromkeys((*i.fields, *extra)))) for i in inputs)
    service = meta.path.parent.name
    info = RuleInfo(
        meta.id,
        meta.title,
        meta.description,
        meta.level,
        meta.techniques,
        meta.tactics,
        meta.correlation_type,
        group_by,
        meta.timespan_s,
        service,
    )
    return RulePlan(meta, info, inputs, window, group_by, value_field)


# -- running -----------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """What one run did: alerts created and updated per rule, events read, time."""

    events: int = 0  # new events the run covered
    created: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def alerts(self) -> int:
        """Alerts created or updated."""
        return sum(self.created.values()) + sum(self.updated.values())


def _fetch(
    conn_rows: Callable[[str, Sequence[Any]], list[Any]],
    plan: RulePlan,
    where: str,
    params: Sequence[Any],
) -> list[list[Any]]:
    return [conn_rows(sql, params) for sql in plan.statements(where)]


class Detector:
    """Incremental detection over a store (see the module's documentation)."""

    def __init__(
        self,
        store: SQLiteStore,
        plans: Sequence[RulePlan],
        table: AttackTable | None = None,
        *,
        step_events: int = STEP_EVENTS,
    ) -> None:
        if not isinstance(store, SQLiteStore):
            raise StoreError("detection runs on the sqlite store backend", location="store.backend")
        self.store = store
        self.plans = list(plans)
        self.table = table or load_table()
        self.step_events = step_events
        store.prepare_detection()

    def run_once(self) -> RunSummary:
        """Every rule over the events stored after its checkpoint (up to the newest now)."""
        started = time.perf_counter()
        summary = RunSummary()
        high = self.store.max_event_seq()
        checkpoints = self.store.detection_checkpoints()
        lowest = high
        for plan in self.plans:
            done = checkpoints.get(plan.id, 0)
            lowest = min(lowest, done)
            while done < high:
                upto = min(high, done + self.step_events)
                created, updated = self._step(plan, done, upto)
                if created:
                    summary.created[plan.id] = summary.created.get(plan.id, 0) + created
                if updated:
                    summary.updated[plan.id] = summary.updated.get(plan.id, 0) + updated
                done = upto
        summary.events = max(0, high - lowest)
        summary.seconds = time.perf_counter() - started
        return summary

    def _step(self, plan: RulePlan, after: int, upto: int) -> tuple[int, int]:
        read = self.store.read_rows
        new = plan.matches(_fetch(read, plan, "seq > ? AND seq <= ?", (after, upto)), new=True)
        if not new:
            self.store.commit_detection(plan.id, upto, [], [])
            return 0, 0
        low = min(m.ts for m in new)
        high = max(m.ts for m in new)
        old = plan.matches(
            _fetch(
                read,
                plan,
                "ts >= ? AND ts <= ? AND seq <= ?",
                (low - plan.lookback_us, high + plan.lookback_us, after),
            ),
            new=False,
        )
        found = [e for e in episodes(plan.window, [*old, *new], anchor_from=low) if e.has_new]
        now = int(time.time() * 1e6)
        rows: list[AlertRow] = []
        links: list[tuple[str, str]] = []
        created = updated = 0
        for episode in found:
            row, ids, fresh = self._merge(plan, episode, now)
            rows.append(row)
            links += [(row.id, eid) for eid in ids]
            created += fresh
            updated += not fresh
        self.store.commit_detection(plan.id, upto, rows, links)
        return created, updated

    def _merge(
        self, plan: RulePlan, episode: Episode, now: int
    ) -> tuple[AlertRow, list[str], bool]:
        key = orjson.dumps(list(episode.key)).decode()
        gap = plan.window.gap_us
        stored = self.store.alerts_near(
            plan.id, key, episode.first_anchor - gap, episode.last_anchor + gap
        )
        ids = [m.id for m in episode.matches]
        if not stored:
            ident = alert_id(plan.id, episode.key, episode.matches[0].id)
            doc = _document(plan, self.table, ident, episode, ids, len(ids), now)
            return _row(plan, ident, key, episode, doc), ids, True
        previous = stored[0]
        before: dict[str, Any] = previous.doc
        listed = list(before["ics"]["alert"]["event_ids"])
        known = set(listed)
        added = [i for i in ids if i not in known]
        total = len(listed) + len(added)  # the store recounts from alert_events
        first = min(previous.ts, episode.first_ts)
        last = max(previous.end_ts, episode.last_anchor)
        merged = Episode(
            episode.key,
            episode.group,
            episode.first_anchor,
            last,
            max(int(before["ics"]["alert"]["metric"] or 0), episode.metric),
            episode.matches,
        )
        doc = _document(
            plan, self.table, previous.id, merged, (listed + added)[:MAX_EVENT_IDS], total, now
        )
        doc["@timestamp"] = doc["event"]["start"] = iso(first)
        doc["event"]["created"] = before["event"]["created"]
        doc["event"]["end"] = iso(last)
        related = sorted({*before.get("related", {}).get("ip", []), *doc["related"]["ip"]})
        doc["related"]["ip"] = related[:100]
        row = AlertRow(previous.id, plan.id, key, first, last, doc["event"]["severity"], doc)
        return row, ids, False


def _document(
    plan: RulePlan,
    table: AttackTable,
    ident: str,
    episode: Episode,
    ids: Sequence[str],
    total: int,
    now: int,
) -> dict[str, Any]:
    return alert_document(
        plan.info,
        table,
        alert=ident,
        group=episode.group,
        first_ts=episode.first_ts,
        last_ts=episode.last_anchor,
        metric=episode.metric,
        event_ids=ids,
        event_count=total,
        matches=episode.matches,
        created_us=now,
    )


def _row(plan: RulePlan, ident: str, key: str, episode: Episode, doc: dict[str, Any]) -> AlertRow:
    return AlertRow(
        ident, plan.id, key, episode.first_ts, episode.last_anchor, doc["event"]["severity"], doc
    )


def detect_events(
    events: Iterable[Event],
    plans: Sequence[RulePlan],
    table: AttackTable | None = None,
) -> list[dict[str, Any]]:
    """The alerts of ``plans`` over ``events`` held in memory (a capture), in time order."""
    table = table or load_table()
    conn = memory_store(events)
    try:
        return detect_connection(conn, plans, table)
    finally:
        conn.close()


def detect_connection(
    conn: apsw.Connection, plans: Sequence[RulePlan], table: AttackTable
) -> list[dict[str, Any]]:
    """The alerts of ``plans`` over every event of ``conn`` (prepared by ``memory_store``)."""

    def read(sql: str, params: Sequence[Any]) -> list[Any]:
        return list(conn.execute(sql, tuple(params)))

    now = int(time.time() * 1e6)
    docs: list[dict[str, Any]] = []
    for plan in plans:
        matches = plan.matches(_fetch(read, plan, "1", ()), new=True)
        for episode in episodes(plan.window, matches):
            ids = [m.id for m in episode.matches]
            ident = alert_id(plan.id, episode.key, ids[0])
            docs.append(_document(plan, table, ident, episode, ids, len(ids), now))
    docs.sort(key=lambda d: (d["@timestamp"], d["rule"]["id"]))
    return docs


class ListSink:
    """A collection sink that keeps the events in memory (``soc detect --pcap``)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def write(self, events: list[Event]) -> None:
        """Keep the batch."""
        self.events.extend(events)

    def close(self) -> None:
        """Nothing to release."""


def collect_captures(paths: Iterable[Path], settings: CollectSettings | None = None) -> list[Event]:
    """The ECS events of capture files (or folders of them), collected in memory."""
    from collectors.pipeline import Collector
    from collectors.run import collect_files

    sink = ListSink()
    collector = Collector(settings)
    collect_files(list(paths), collector, sink)
    return sink.events
