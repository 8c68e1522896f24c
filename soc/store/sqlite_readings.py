"""Meter readings in the SQLite store: the ``energy_readings`` table, filled by a trigger
(migration ``0007_energy_readings_from_events``) from the ``energy.readings`` of stored
``ics.dlms`` events, read here by meter, OBIS code and time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from soc.store.sqlite import SQLiteStore


@dataclass(frozen=True)
class ReadingQuery:
    """Which readings: a meter, an OBIS code (``1-0:1.8.0*255``; a prefix such as ``1-0:1.8``
    matches every tariff and billing period), a time range in µs since the epoch (start
    inclusive, end exclusive), at most ``limit`` rows, oldest first."""

    meter_id: str | None = None
    obis: str | None = None
    start_us: int | None = None
    end_us: int | None = None
    limit: int = 1000


@dataclass(frozen=True)
class Reading:
    """One value of one register or profile entry of one meter."""

    ts_us: int
    meter_id: str
    obis: str
    value: float
    unit: str | None
    direction: str | None
    interval_s: int | None
    event_id: str  # the event it came from ('' for a reading imported otherwise)

    def doc(self) -> dict[str, Any]:
        """As JSON (``energy.*`` names)."""
        return {
            "ts_us": self.ts_us,
            "meter_id": self.meter_id,
            "obis": self.obis,
            "value": self.value,
            "unit": self.unit,
            "direction": self.direction,
            "interval_s": self.interval_s,
            "event_id": self.event_id,
        }


class ReadingTables:
    """The meter readings of an open :class:`SQLiteStore`."""

    def __init__(self, store: SQLiteStore) -> None:
        self._conn = store._conn  # the store package's own connection

    def query(self, query: ReadingQuery) -> list[Reading]:
        """Readings matching ``query``, oldest first."""
        where: list[str] = []
        params: list[Any] = []
        if query.meter_id is not None:
            where.append("meter_id = ?")
            params.append(query.meter_id)
        if query.obis is not None:  # the code itself, or every code it is a prefix of
            where.append("obis >= ? AND obis < ?")
            params += [query.obis, query.obis + "\U0010ffff"]
        if query.start_us is not None:
            where.append("ts >= ?")
            params.append(query.start_us)
        if query.end_us is not None:
            where.append("ts < ?")
            params.append(query.end_us)
        # the conditions are the constants above; every value is a parameter
        sql = (
            "SELECT ts, meter_id, obis, value, nullif(unit, ''), nullif(direction, ''),"  # noqa: S608
            " nullif(interval_s, 0), coalesce(source, '') FROM energy_readings"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY ts, meter_id, obis LIMIT ?"
        )
        rows = self._conn.execute(sql, (*params, max(1, query.limit))).fetchall()
        return [Reading(*row) for row in rows]  # type: ignore[arg-type]  # the table's types

    def meters(self) -> list[tuple[str, int, int, int]]:
        """(meter id, readings, first and last time in µs) of every meter, by meter id."""
        sql = (
            "SELECT meter_id, count(*), min(ts), max(ts) FROM energy_readings"
            " GROUP BY meter_id ORDER BY meter_id"
        )
        return [tuple(row) for row in self._conn.execute(sql).fetchall()]  # type: ignore[misc]
