"""Incidents, their timeline and the audit trail in the SQLite store.

Tables (migrations ``0001`` and ``0005``): ``incidents`` (the document, and the columns lists
filter on: status, severity, level, site, owner, first/last alert time), ``alerts.incident_id``
(an alert belongs to one incident; NULL until correlated), ``incident_notes`` (the timeline:
alerts joining, status and owner changes, comments) and ``audit`` (who did what to which object,
when). A change to an incident, its note and its audit row are written in one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from soc.errors import StoreError
from soc.incidents.correlate import AlertView, Incident, Outcome
from soc.store.base import decode_cursor, encode_cursor
from soc.store.sqlite import SQLiteStore
from soc.types import Event

_INCIDENT_UPSERT = (
    "INSERT INTO incidents (id, created_ts, updated_ts, status, severity, owner, site,"
    " first_ts, last_ts, level, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET updated_ts = excluded.updated_ts, status = excluded.status,"
    " severity = excluded.severity, owner = excluded.owner, site = excluded.site,"
    " first_ts = excluded.first_ts, last_ts = excluded.last_ts, level = excluded.level,"
    " doc = excluded.doc"
)
LEVELS = ("low", "medium", "high", "critical")


@dataclass(frozen=True)
class IncidentQuery:
    """Which incidents to list, most recent activity first."""

    statuses: tuple[str, ...] = ()
    min_level: str | None = None
    sites: tuple[str, ...] | None = None  # None: every site; () none
    owner: str | None = None
    asset: str | None = None  # an address among the incident's assets or attackers
    since_us: int | None = None  # latest alert at or after
    until_us: int | None = None  # latest alert before
    limit: int = 50
    cursor: str | None = None


@dataclass(frozen=True)
class AuditQuery:
    """Which audit rows to list, newest first."""

    actor: str | None = None
    action: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    since_us: int | None = None
    limit: int = 100
    cursor: str | None = None


class IncidentTables:
    """Incidents, notes and audit over an open :class:`SQLiteStore` (its connection)."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self._conn = store._conn  # the store package's own connection

    # -- correlation --------------------------------------------------------------------------

    def uncorrelated_alerts(self, limit: int) -> list[AlertView]:
        """Alerts not yet in an incident, oldest first."""
        sql = (
            "SELECT id, ts, coalesce(end_ts, ts), rule_id, doc FROM alerts"
            " WHERE incident_id IS NULL ORDER BY ts, seq LIMIT ?"
        )
        rows = self.store.read_rows(sql, (limit,), "reading alerts to correlate")
        return [AlertView(r[0], r[1], r[2], r[3], orjson.loads(r[4])) for r in rows]

    def open_incidents(self, since_us: int) -> list[Incident]:
        """Incidents still open whose latest alert is at or after ``since_us``."""
        sql = (
            "SELECT doc FROM incidents WHERE status IN ('new', 'acknowledged', 'investigating')"
            " AND last_ts >= ?"
        )
        rows = self.store.read_rows(sql, (since_us,), "reading open incidents")
        return [Incident.from_doc(orjson.loads(r[0])) for r in rows]

    def save_correlation(self, outcome: Outcome, now_us: int) -> None:
        """Store what a correlation pass made, in one transaction: the incidents, each alert's
        incident, and a timeline note per alert that joined."""
        conn = self._conn
        with self.store._errors("storing incidents"), self.store._transaction():
            for incident in outcome.incidents.values():
                conn.execute(_INCIDENT_UPSERT, _incident_values(incident.doc()))
            conn.executemany(
                "UPDATE alerts SET incident_id = ? WHERE id = ?",
                [(incident, alert) for alert, incident in outcome.links],
            )
            conn.executemany(
                "INSERT INTO incident_notes (incident_id, ts, actor, kind, detail)"
                " VALUES (?, ?, 'correlation', ?, ?)",
                [
                    (incident, now_us, "alert", orjson.dumps({"alert_id": alert}).decode())
                    for alert, incident in outcome.links
                ],
            )

    # -- reading ------------------------------------------------------------------------------

    def list_incidents(self, query: IncidentQuery) -> tuple[list[dict[str, Any]], str | None]:
        """One page of incidents (latest alert first) and the next page's cursor."""
        rows, cursor = self.list_incident_rows(query)
        return [orjson.loads(text) for text in rows], cursor

    def list_incident_rows(self, query: IncidentQuery) -> tuple[list[str], str | None]:
        """:meth:`list_incidents` with each document as its stored JSON text (the API sends it
        as it is).

        Several statuses (or levels) are read as one ordered query per value, merged: each reads
        its index ``(status, last_ts)`` (or ``(level, last_ts)``) in order and stops after a
        page, where ``status IN (...)`` would sort every matching incident.
        """
        where: list[str] = []
        params: list[Any] = []
        levels = LEVELS[LEVELS.index(query.min_level) :] if query.min_level is not None else ()
        split: tuple[str, tuple[str, ...]] | None = None
        if len(query.statuses) > 1:
            split = ("status", query.statuses)
        elif query.statuses:
            where.append("status = ?")
            params.append(query.statuses[0])
        if levels and split is None and len(levels) > 1 and not query.statuses:
            split = ("level", tuple(levels))  # with one status, its index and a level filter
        elif levels:
            where.append(f"level IN ({', '.join('?' * len(levels))})")
            params += levels
        if query.sites is not None:
            if not query.sites:
                return [], None
            where.append(f"site IN ({', '.join('?' * len(query.sites))})")
            params += query.sites
        if query.owner is not None:
            where.append("owner = ?")
            params.append(query.owner)
        if query.asset is not None:
            where.append(
                "(EXISTS (SELECT 1 FROM json_each(doc, '$.assets') WHERE value = ?)"
                " OR EXISTS (SELECT 1 FROM json_each(doc, '$.attackers') WHERE value = ?))"
            )
            params += [query.asset, query.asset]
        if query.since_us is not None:
            where.append("last_ts >= ?")
            params.append(query.since_us)
        if query.until_us is not None:
            where.append("last_ts < ?")
            params.append(query.until_us)
        if query.cursor:
            where.append("(last_ts, rowid) < (?, ?)")  # a row value: the index seeks to it
            params += decode_cursor(query.cursor, 2)
        order = " ORDER BY last_ts DESC, rowid DESC LIMIT ?"
        page = query.limit + 1
        if split is None:
            sql = "SELECT rowid, last_ts, doc FROM incidents"
            if where:
                sql += " WHERE " + " AND ".join(where)
            rows = self.store.read_rows(sql + order, [*params, page], "listing incidents")
        else:
            column, values = split
            parts, all_params = [], []
            for value in values:
                clause = " AND ".join([f"{column} = ?", *where])
                parts.append(
                    f"SELECT * FROM (SELECT rowid, last_ts, doc FROM incidents"  # noqa: S608
                    f" WHERE {clause}{order})"
                )
                all_params += [value, *params, page]
            sql = " UNION ALL ".join(parts) + " ORDER BY 2 DESC, 1 DESC LIMIT ?"
            rows = self.store.read_rows(sql, [*all_params, page], "listing incidents")
        rows, cursor = _page(rows, query.limit, 1, 0)
        return [r[2] for r in rows], cursor

    def get_incident(self, incident_id: str) -> dict[str, Any] | None:
        """One incident's document."""
        with self.store._errors("reading an incident"):
            text = self._conn.execute("SELECT doc FROM incidents WHERE id = ?", (incident_id,)).get
        if text is None:
            return None
        doc: dict[str, Any] = orjson.loads(text)
        return doc

    def incident_alerts(
        self, incident_id: str, limit: int, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of an incident's alerts, in time order."""
        sql = "SELECT a.seq, a.ts, a.doc FROM alerts a WHERE a.incident_id = ?"
        return self._forward(sql, "a", incident_id, limit, cursor, "reading an incident's alerts")

    def incident_events(
        self, incident_id: str, limit: int, cursor: str | None = None
    ) -> tuple[list[Event], str | None]:
        """One page of the events of an incident's alerts, in time order (each once)."""
        sql = (
            "SELECT DISTINCT e.seq, e.ts, e.doc FROM alerts a"
            " JOIN alert_events ae ON ae.alert_id = a.id JOIN events e ON e.id = ae.event_id"
            " WHERE a.incident_id = ?"
        )
        return self._forward(sql, "e", incident_id, limit, cursor, "reading an incident's events")

    def _forward(
        self, sql: str, alias: str, incident_id: str, limit: int, cursor: str | None, doing: str
    ) -> tuple[list[Any], str | None]:
        """A page of ``sql``'s ``(seq, ts, doc)`` rows of ``alias``, oldest first, after
        ``cursor``; the documents parsed."""
        params: list[Any] = [incident_id]
        if cursor:
            sql += f" AND ({alias}.ts, {alias}.seq) > (?, ?)"
            params += decode_cursor(cursor, 2)
        sql += f" ORDER BY {alias}.ts, {alias}.seq LIMIT ?"
        params.append(limit + 1)
        rows, following = _page(self.store.read_rows(sql, params, doing), limit, 1, 0)
        return [orjson.loads(r[2]) for r in rows], following

    def list_alerts(
        self,
        *,
        rule_id: str | None = None,
        since_us: int | None = None,
        until_us: int | None = None,
        sites: tuple[str, ...] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of alerts, newest first; ``sites``: only those in an incident of these."""
        where: list[str] = []
        params: list[Any] = []
        if rule_id is not None:
            where.append("a.rule_id = ?")
            params.append(rule_id)
        if since_us is not None:
            where.append("a.ts >= ?")
            params.append(since_us)
        if until_us is not None:
            where.append("a.ts < ?")
            params.append(until_us)
        if sites is not None:
            if not sites:
                return [], None
            where.append(
                f"a.incident_id IN (SELECT id FROM incidents WHERE site IN"  # noqa: S608
                f" ({', '.join('?' * len(sites))}))"
            )
            params += sites
        if cursor:
            where.append("(a.ts, a.seq) < (?, ?)")
            params += decode_cursor(cursor, 2)
        sql = "SELECT a.seq, a.ts, a.doc, a.incident_id FROM alerts a"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY a.ts DESC, a.seq DESC LIMIT ?"
        params.append(limit + 1)
        rows = self.store.read_rows(sql, params, "listing alerts")
        rows, following = _page(rows, limit, 1, 0)
        docs = []
        for row in rows:
            doc = orjson.loads(row[2])
            if row[3] is not None:
                doc.setdefault("ics", {})["incident_id"] = row[3]
            docs.append(doc)
        return docs, following

    def timeline(self, incident_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """An incident's notes, oldest first."""
        sql = (
            "SELECT seq, ts, actor, kind, detail FROM incident_notes WHERE incident_id = ?"
            " ORDER BY seq LIMIT ?"
        )
        rows = self.store.read_rows(sql, (incident_id, limit), "reading an incident's timeline")
        return [
            {"seq": r[0], "ts": r[1], "actor": r[2], "kind": r[3], "detail": orjson.loads(r[4])}
            for r in rows
        ]

    # -- changing -----------------------------------------------------------------------------

    def save_change(
        self,
        doc: Mapping[str, Any],
        notes: Sequence[tuple[str, Mapping[str, Any]]],
        actor: str,
        now_us: int,
        audit: tuple[str, Mapping[str, Any]],
    ) -> None:
        """Write an incident's new document, its timeline notes (kind, detail) and one audit
        row (action, detail) in one transaction."""
        conn = self._conn
        with self.store._errors("changing an incident"), self.store._transaction():
            conn.execute(_INCIDENT_UPSERT, _incident_values(doc))
            conn.executemany(
                "INSERT INTO incident_notes (incident_id, ts, actor, kind, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (doc["id"], now_us, actor, kind, orjson.dumps(detail).decode())
                    for kind, detail in notes
                ],
            )
            self._audit(now_us, actor, audit[0], "incident", doc["id"], audit[1])

    # -- audit --------------------------------------------------------------------------------

    def audit(
        self,
        now_us: int,
        actor: str,
        action: str,
        object_type: str,
        object_id: str | None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Record one access or change."""
        with self.store._errors("writing the audit trail"):  # one statement: its own transaction
            self._audit(now_us, actor, action, object_type, object_id, detail or {})

    def _audit(
        self,
        now_us: int,
        actor: str,
        action: str,
        object_type: str,
        object_id: str | None,
        detail: Mapping[str, Any],
    ) -> None:
        self._conn.execute(
            "INSERT INTO audit (ts, actor, action, object_type, object_id, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (now_us, actor, action, object_type, object_id, orjson.dumps(detail).decode()),
        )

    def list_audit(self, query: AuditQuery) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the audit trail, newest first."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("actor", query.actor),
            ("action", query.action),
            ("object_type", query.object_type),
            ("object_id", query.object_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.since_us is not None:
            where.append("ts >= ?")
            params.append(query.since_us)
        if query.cursor:
            (seq,) = decode_cursor(query.cursor, 1)
            where.append("seq < ?")
            params.append(seq)
        sql = "SELECT seq, ts, actor, action, object_type, object_id, detail FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(query.limit + 1)
        rows = self.store.read_rows(sql, params, "reading the audit trail")
        rows, cursor = _page(rows, query.limit, 0)
        return [
            {
                "seq": r[0],
                "ts": r[1],
                "actor": r[2],
                "action": r[3],
                "object_type": r[4],
                "object_id": r[5],
                "detail": orjson.loads(r[6]),
            }
            for r in rows
        ], cursor


def _page(rows: list[Any], limit: int, *key: int) -> tuple[list[Any], str | None]:
    """The first ``limit`` of ``limit + 1`` rows read, and the cursor of the next page (from the
    last row's columns ``key``) when there is one."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(*(int(rows[-1][k]) for k in key))


def _incident_values(doc: Mapping[str, Any]) -> tuple[Any, ...]:
    from soc.incidents.correlate import parse_iso

    try:
        return (
            doc["id"],
            parse_iso(doc["created"]),
            parse_iso(doc["updated"]),
            doc["status"],
            int(doc["severity"]),
            doc.get("owner"),
            doc["site"],
            parse_iso(doc["first_seen"]),
            parse_iso(doc["last_seen"]),
            doc["level"],
            orjson.dumps(doc).decode(),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise StoreError(f"not an incident document: {exc}", location="incidents") from exc
