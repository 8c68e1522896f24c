"""Learnt baselines in the SQLite store (migration ``0009_baselines``): one row per site and
revision, never changed; saving adds the next revision, with who and why."""

from __future__ import annotations

from typing import Any

import orjson

from detectors.baseline import Baseline
from soc.store.sqlite import SQLiteStore


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
