"""Learnt baselines in the SQLite store (migration ``0009_baselines``): one row per site and
revision, never changed; saving adds the next revision, with who and why."""

from __future__ import annotations

from typing import Any

import orjson

from detectors.baseline import Baseline, accept
from soc.store.sqlite import SQLiteStore
from soc.store.sqlite_incidents import IncidentTables


class NotAcceptable(LookupError):
    """An alert that cannot be accepted: ``missing`` (no such alert or baseline) or not a
    protect-mode alert of the expected site (``message`` says which)."""

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(message)
        self.message = message
        self.missing = missing


class BaselineTables:
    """The baselines of an open :class:`SQLiteStore`."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self._conn = store._conn  # the store package's own connection

    def save(self, baseline: Baseline, actor: str, reason: str, now_us: int) -> int:
        """Store ``baseline`` as its site's next revision (set on it too); the revision."""
        with self.store._errors("saving a baseline"), self.store._transaction():
            row = self._conn.execute(
                "SELECT max(revision) FROM baselines WHERE site = ?", (baseline.site,)
            ).fetchone()
            baseline.revision = int(row[0] or 0) + 1 if row else 1
            self._conn.execute(
                "INSERT INTO baselines (site, revision, created_ts, created_by, reason, doc)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (baseline.site, baseline.revision, now_us, actor, reason,
                 orjson.dumps(baseline.doc()).decode()),
            )  # fmt: skip
        return baseline.revision

    def accept_alert(
        self, alert_id: str, actor: str, now_us: int, site: str | None = None
    ) -> tuple[str, int]:
        """Accept a stored protect-mode alert into its site's latest baseline (``site``, when
        given, must be the alert's): a new revision, written to the audit trail under
        ``actor``; (site, revision). :class:`NotAcceptable` otherwise."""
        rows = self.store.read_rows(
            "SELECT doc FROM alerts WHERE id = ?", (alert_id,), "reading an alert"
        )
        if not rows:
            raise NotAcceptable(f"no alert {alert_id}", missing=True)
        alert = orjson.loads(rows[0][0])
        found = ((alert.get("ics") or {}).get("baseline") or {}).get("site")
        if not found or (site is not None and found != site):
            raise NotAcceptable(
                f"alert {alert_id} is not a protect-mode alert of "
                + (f"baseline {site}" if site else "a baseline"),
                missing=False,
            )
        current = self.get(str(found))
        if current is None:
            raise NotAcceptable(f"no baseline for {found}", missing=True)
        changed = accept(current, alert, actor, now_us)
        revision = self.save(changed, actor, f"accepted alert {alert_id}", now_us)
        IncidentTables(self.store).audit(now_us, actor, "baseline.accept", "baseline",
                                         f"{found}#{revision}", {"alert": alert_id})  # fmt: skip
        return str(found), revision

    def get(self, site: str, revision: int | None = None) -> Baseline | None:
        """A site's baseline: the given revision, else the latest; None when there is none."""
        sql = "SELECT doc FROM baselines WHERE site = ?"
        params: tuple[Any, ...] = (site,)
        if revision is not None:
            sql += " AND revision = ?"
            params = (site, revision)
        sql += " ORDER BY revision DESC LIMIT 1"
        with self.store._errors("reading a baseline"):
            row = self._conn.execute(sql, params).fetchone()
        return Baseline.from_doc(orjson.loads(row[0])) if row else None

    def revisions(self, site: str | None = None) -> list[tuple[str, int, int, str, str]]:
        """(site, revision, created µs, by, why) of every stored revision, oldest first."""
        sql = "SELECT site, revision, created_ts, created_by, reason FROM baselines"
        params: tuple[Any, ...] = ()
        if site is not None:
            sql += " WHERE site = ?"
            params = (site,)
        rows = self._conn.execute(sql + " ORDER BY site, revision", params).fetchall()
        return [(str(a), int(str(b)), int(str(c)), str(d), str(e)) for a, b, c, d, e in rows]
