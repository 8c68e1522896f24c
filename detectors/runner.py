"""Detection: the compiled rules over the store's new events, alerts exactly once.

**Plans** (:func:`load_plans`). Every alerting rule becomes a :class:`RulePlan`: the SQL of the
rule itself, or of each base rule a correlation refers to, as pySigma compiled it
(:mod:`detectors.sigma`'s backend and pipeline), selecting per matching event its id, time,
group-by fields, counted field and addresses; and the :class:`~detectors.alerts.Window` that
turns those rows into episodes (:func:`detectors.alerts.episodes`: the correlation evaluated in
Python, linearly, with pySigma's semantics).

**Incremental runs** (:class:`Detector`). Each rule has a checkpoint in the store (the highest
``events.seq`` it has processed, table ``detection_checkpoints``). A run goes through the events
after the checkpoints in steps (:class:`Staging`): the step's new events are copied once into a
temporary table with one column per field any rule reads (the JSON is parsed once per event, not
once per event and rule); a rule with a new hit there also reads the older events of its
look-back (for a correlation, its timespan: the windows ending on the new hits; for a
single-event rule, the grouping gap), staged likewise. Correlations that need at least N hits
only return hits with N neighbours within a timespan (:meth:`RulePlan.prefilter`), so floods of
ordinary traffic do not all travel to Python. Episodes with a new event are merged into
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
    field_sql,
    load_pipeline,
    load_rule_file,
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
#: A step stages the old events of every plan's look-back when they are at most this many (or
#: fewer than the new ones); beyond, only those of the plans with a new hit (found first).
STAGE_OLD_ALL = 20_000


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

    def statement(self, logs: str) -> str:
        """The SQL of the plan over ``logs`` (staged events: ``id``, ``ts``, ``_fresh`` and one
        column per field): every input's hits, ``(_slot, id, ts, _fresh, <group-by>, [value],
        <addresses>)``; for a correlation that can only qualify with enough hits, only the hits
        with enough others near them (:meth:`prefilter`)."""
        columns = ", ".join(_quote(f) for f in self._columns())
        hits = " UNION ALL ".join(
            f"SELECT {slot} AS _slot, id, ts, _fresh, {columns} FROM ({i.query})"  # noqa: S608
            for slot, i in enumerate(self.inputs)
        )
        head = f"WITH logs AS ({logs}), hits AS ({hits})"
        bound = self.prefilter()
        if bound is None:
            return f"{head} SELECT * FROM hits"  # noqa: S608 - pySigma's queries, our names
        return (
            f"{head} SELECT _slot, id, ts, _fresh, {columns}"  # noqa: S608 - checked names
            f" FROM (SELECT *, {bound[0]} AS _near FROM hits) WHERE _near >= {bound[1]}"
        )

    def extent(self, logs: str) -> str:
        """The SQL of the earliest and latest time among the plan's hits over ``logs``."""
        hits = " UNION ALL ".join(
            f"SELECT ts FROM ({i.query})"  # noqa: S608 - pySigma's queries
            for i in self.inputs
        )
        return f"WITH logs AS ({logs}) SELECT min(ts), max(ts) FROM ({hits})"  # noqa: S608

    def prefilter(self) -> tuple[str, int] | None:
        """For a correlation whose condition needs at least N hits (``gte``/``gt`` on a count,
        a number of distinct values or of referenced rules), the window expression counting
        each hit's neighbours in its group within one timespan either side, and N.

        Every window holding a hit lies within that range, so a hit with fewer neighbours is in
        no qualifying window; dropping it changes no qualifying window (the counts of the
        others only fall, and they did not qualify). Groups are compared in lower case, as
        :func:`detectors.alerts.normalise` does, and events matching two inputs count twice: the
        bound can only be loose, never too tight.
        """
        window = self.window
        if window.kind == "event" or window.op not in ("gte", "gt"):
            return None
        need = window.count + (window.op == "gt")
        if need <= 1:
            return None
        counted = (
            _quote(self.value_field) if window.kind == "value_count" and self.value_field else "*"
        )
        partition = ", ".join(f"lower({_quote(g)})" for g in self.group_by)
        over = f"PARTITION BY {partition} " if partition else ""
        span = window.span_us
        frame = f"RANGE BETWEEN {span} PRECEDING AND {span} FOLLOWING"
        return f"count({counted}) OVER ({over}ORDER BY ts {frame})", need

    def _columns(self) -> tuple[str, ...]:
        value = (self.value_field,) if self.value_field else ()
        return (*self.group_by, *value, *ADDRESS_FIELDS)

    def matches(self, rows: Iterable[Sequence[Any]]) -> list[Match]:
        """:class:`Match` objects from the rows of :meth:`statement`."""
        n = len(self.group_by)
        value_at = 4 + n if self.value_field is not None else None
        rest = 4 + n + (value_at is not None)
        out: list[Match] = []
        append = out.append
        for row in rows:
            sip, dip, dport = row[rest], row[rest + 1], row[rest + 2]
            append(
                Match(
                    str(row[1]),
                    int(row[2]),
                    tuple(row[4 : 4 + n]),
                    row[value_at] if value_at is not None else None,
                    row[0],
                    bool(row[3]),
                    sip if isinstance(sip, str) else None,
                    dip if isinstance(dip, str) else None,
                    dport if isinstance(dport, int) else None,
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
    staging_seconds: float = 0.0  # copying the events' fields out of their JSON, once
    rule_seconds: dict[str, float] = field(default_factory=dict)  # SQL, matches, alerts

    @property
    def alerts(self) -> int:
        """Alerts created or updated."""
        return sum(self.created.values()) + sum(self.updated.values())


Execute = Callable[[str, Sequence[Any]], list[Any]]

NEW_TABLE = "detect_new"
OLD_TABLE = "detect_old"
_NEW_LOGS = f"SELECT * FROM temp.{NEW_TABLE}"  # noqa: S608 - a constant name
_LOGS = (  # the new events and the old ones of a plan's look-back
    f"{_NEW_LOGS} UNION ALL SELECT * FROM temp.{OLD_TABLE} WHERE ts >= ? AND ts <= ?"  # noqa: S608
)


#: Protocol namespaces and their dataset: ``opcua.*`` is only read from ``ics.opcua`` events.
_NAMESPACES = {"modbus": "ics.modbus", "opcua": "ics.opcua", "dlms": "ics.dlms", "mqtt": "ics.mqtt"}


def _staged_field(name: str) -> str:
    """A field's SQL for staging: a protocol's field is read only from that protocol's events
    (others have none: NULL, as the JSON would say, without parsing it)."""
    sql = field_sql(name)
    dataset = _NAMESPACES.get(name.split(".", 1)[0])
    if dataset is None or not sql.startswith(("json_extract", "(doc")):
        return sql  # a column of its own, or a field every dataset has
    return f"CASE WHEN dataset = '{dataset}' THEN {sql} END"


class Staging:
    """One step's events, each field the plans read extracted from the JSON once.

    ``temp.detect_new`` holds the new events (``seq`` in the step), ``temp.detect_old`` the
    already processed events the active plans look back on; both with ``id``, ``ts``, ``_fresh``
    and one column per field, which the plans read as ``logs``. Every rule then reads columns,
    never the JSON: one parse per event instead of one per event and rule.
    """

    def __init__(
        self, execute: Execute, plans: Sequence[RulePlan], *, stage_old_all: int = STAGE_OLD_ALL
    ) -> None:
        self.execute = execute
        self.stage_old_all = stage_old_all
        self.fields = tuple(dict.fromkeys(f for p in plans for i in p.inputs for f in i.fields))
        self.staging_seconds = 0.0  # copying events into the temporary tables
        self.rule_seconds: dict[str, float] = {}  # per rule: its SQL and its matches

    def stage(self, table: str, fresh: bool, where: str, params: Sequence[Any]) -> None:
        """``temp.<table>``: the events satisfying ``where``, marked new or not."""
        columns = ", ".join(
            ["id", "ts", f"{int(fresh)} AS _fresh"]
            + [f"{_staged_field(f)} AS {_quote(f)}" for f in self.fields]
        )
        started = time.perf_counter()
        self.execute(f"DROP TABLE IF EXISTS temp.{table}", ())
        self.execute(
            f"CREATE TEMP TABLE {table} AS SELECT {columns} FROM events WHERE {where}",  # noqa: S608
            params,
        )
        self.staging_seconds += time.perf_counter() - started

    def drop(self) -> None:
        """Remove the step's tables."""
        for table in (NEW_TABLE, OLD_TABLE):
            self.execute(f"DROP TABLE IF EXISTS temp.{table}", ())

    def step(
        self, plans: Sequence[RulePlan], after: int, upto: int
    ) -> list[tuple[RulePlan, list[Match], int]]:
        """Each plan with a new hit in ``(after, upto]``: its matches (new ones, and the old ones
        of its look-back) and the time of its earliest new match."""
        self.stage(NEW_TABLE, True, "seq > ? AND seq <= ?", (after, upto))
        [(new_low, new_high, new_n)] = self.execute(
            f"SELECT min(ts), max(ts), count(*) FROM temp.{NEW_TABLE}",  # noqa: S608
            (),
        )
        if not new_n:
            return []
        where = "ts >= ? AND ts <= ? AND seq <= ?"
        if after == 0:  # nothing is old
            self.stage(OLD_TABLE, False, "0", ())
            return self._run([(plan, None, None) for plan in plans])
        lookback = max(plan.lookback_us for plan in plans)
        span = (new_low - lookback, new_high + lookback, after)
        limit = max(self.stage_old_all, new_n)
        [(old_n,)] = self.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM events WHERE {where} LIMIT ?)",  # noqa: S608
            (*span, limit + 1),
        )
        if old_n <= limit:  # few old events (a bulk step): stage them all, run every plan
            self.stage(OLD_TABLE, False, where, span)
            return self._run([(plan, None, None) for plan in plans])
        active: list[tuple[RulePlan, int | None, int | None]] = []
        for plan in plans:  # which plans have a new hit, and when: their look-back
            started = time.perf_counter()
            [(low, high)] = self.execute(plan.extent(_NEW_LOGS), ())
            self._spent(plan, started)
            if low is not None:
                active.append((plan, int(low), int(high)))
        if not active:
            return []
        start = min(low - plan.lookback_us for plan, low, _ in active if low is not None)
        end = max(high + plan.lookback_us for plan, _, high in active if high is not None)
        self.stage(OLD_TABLE, False, where, (start, end, after))
        return self._run(active)

    def _run(
        self, plans: Sequence[tuple[RulePlan, int | None, int | None]]
    ) -> list[tuple[RulePlan, list[Match], int]]:
        """Run each plan over the staged events; ``low``/``high``: its new hits' extent, or
        None (every old event staged is read, and the matches are trimmed to the look-back of
        the new ones)."""
        found = []
        for plan, low, high in plans:
            started = time.perf_counter()
            lookback = plan.lookback_us
            bounds = (
                (low - lookback, high + lookback)
                if low is not None and high is not None
                else (-(2**62), 2**62)
            )
            matches = plan.matches(self.execute(plan.statement(_LOGS), bounds))
            if low is None:
                fresh = [m.ts for m in matches if m.new]
                if fresh:
                    first, last = min(fresh) - lookback, max(fresh) + lookback
                    matches = [m for m in matches if m.new or first <= m.ts <= last]
                    low = min(fresh)
            self._spent(plan, started)
            if low is not None and any(m.new for m in matches):
                found.append((plan, matches, low))
        return found

    def _spent(self, plan: RulePlan, started: float) -> None:
        self.rule_seconds[plan.id] = (
            self.rule_seconds.get(plan.id, 0.0) + time.perf_counter() - started
        )


class Detector:
    """Incremental detection over a store (see the module's documentation)."""

    def __init__(
        self,
        store: SQLiteStore,
        plans: Sequence[RulePlan],
        table: AttackTable | None = None,
        *,
        step_events: int = STEP_EVENTS,
        stage_old_all: int = STAGE_OLD_ALL,
    ) -> None:
        if not isinstance(store, SQLiteStore):
            raise StoreError("detection runs on the sqlite store backend", location="store.backend")
        self.store = store
        self.plans = list(plans)
        self.table = table or load_table()
        self.step_events = step_events
        self.staging = Staging(store.detection_statement, self.plans, stage_old_all=stage_old_all)
        store.prepare_detection()

    def run_once(self) -> RunSummary:
        """Every rule over the events stored after its checkpoint (up to the newest now).

        Rules at the same checkpoint (all of them, but for a rule added since the last run)
        share each step's staged events.
        """
        started = time.perf_counter()
        summary = RunSummary()
        high = self.store.max_event_seq()
        checkpoints = self.store.detection_checkpoints()
        cohorts: dict[int, list[RulePlan]] = {}
        for plan in self.plans:
            cohorts.setdefault(checkpoints.get(plan.id, 0), []).append(plan)
        staging = self.staging
        staging.staging_seconds, staging.rule_seconds = 0.0, {}
        try:
            for done, plans in sorted(cohorts.items()):
                while done < high:
                    upto = min(high, done + self.step_events)
                    for rule, (created, updated) in self._step(plans, done, upto).items():
                        if created:
                            summary.created[rule] = summary.created.get(rule, 0) + created
                        if updated:
                            summary.updated[rule] = summary.updated.get(rule, 0) + updated
                    done = upto
        finally:
            self.staging.drop()
        summary.events = max(0, high - min(cohorts, default=high))
        summary.seconds = time.perf_counter() - started
        summary.staging_seconds = staging.staging_seconds
        summary.rule_seconds = dict(staging.rule_seconds)
        return summary

    def _step(self, plans: Sequence[RulePlan], after: int, upto: int) -> dict[str, tuple[int, int]]:
        counts: dict[str, tuple[int, int]] = {}
        found = {
            plan.id: (matches, low) for plan, matches, low in self.staging.step(plans, after, upto)
        }
        for plan in plans:
            if plan.id not in found:
                self.store.commit_detection(plan.id, upto, [], [])
                continue
            matches, low = found[plan.id]
            started = time.perf_counter()
            counts[plan.id] = self._commit(plan, matches, low, upto)
            self.staging._spent(plan, started)
        return counts

    def _commit(self, plan: RulePlan, matches: list[Match], low: int, upto: int) -> tuple[int, int]:
        now = int(time.time() * 1e6)
        rows: list[AlertRow] = []
        links: list[tuple[str, str]] = []
        created = updated = 0
        for episode in episodes(plan.window, matches, anchor_from=low):
            if not episode.has_new:
                continue
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
        if "triggered" in before["ics"]["alert"]:  # when the stored alert was first raised
            doc["ics"]["alert"]["triggered"] = before["ics"]["alert"]["triggered"]
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
        triggered_us=episode.first_anchor,
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

    def execute(sql: str, params: Sequence[Any]) -> list[Any]:
        return list(conn.execute(sql, tuple(params)))

    now = int(time.time() * 1e6)
    docs: list[dict[str, Any]] = []
    staging = Staging(execute, plans)
    try:
        found = staging.step(plans, 0, int(conn.execute("SELECT max(seq) FROM events").get or 0))
    finally:
        staging.drop()
    for plan, matches, _ in found:
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
