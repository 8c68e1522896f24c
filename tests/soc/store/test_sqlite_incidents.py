"""Listing incidents: every filter combination and page walk equals filtering and sorting in
Python (the store splits several statuses or levels into one ordered query each)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest

from soc.config import LEVELS
from soc.incidents.correlate import STATUSES, Incident
from soc.store.sqlite import SQLiteStore
from soc.store.sqlite_incidents import IncidentQuery, IncidentTables

SITES = ("water_plant", "smart_grid", "city_sensors")


@pytest.fixture(scope="module")
def incidents(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    rng = random.Random(5)
    path = tmp_path_factory.mktemp("incidents") / "soc.db"
    docs = []
    with SQLiteStore(path) as store:
        tables = IncidentTables(store)
        for i in range(120):
            last = 1_795_000_000_000_000 + rng.randrange(50) * 1_000_000  # many ties
            incident = Incident(
                f"inc-{i:03d}",
                rng.choice(SITES),
                created_us=last,
                first_us=last,
                last_us=last,
                status=rng.choice(STATUSES),
                level=rng.choice(LEVELS),
                severity=50,
            )
            doc = incident.doc()
            tables.save_change(doc, [], "test", last, ("setup", {}))
            docs.append(doc)
    return path, docs


def _walk(tables: IncidentTables, query: IncidentQuery) -> list[str]:
    ids: list[str] = []
    while True:
        docs, cursor = tables.list_incidents(query)
        ids += [d["id"] for d in docs]
        if cursor is None:
            return ids
        query = IncidentQuery(**{**query.__dict__, "cursor": cursor})


@pytest.mark.parametrize(
    ("statuses", "level", "sites"),
    list(
        itertools.product(
            [(), ("new",), ("new", "acknowledged", "investigating"), ("resolved", "new")],
            [None, "low", "high", "critical"],
            [None, ("water_plant",), ("smart_grid", "city_sensors")],
        )
    ),
)
def test_filters_and_pages_equal_python(
    incidents: tuple[Path, list[dict[str, Any]]],
    statuses: tuple[str, ...],
    level: str | None,
    sites: tuple[str, ...] | None,
) -> None:
    path, docs = incidents
    allowed = LEVELS[LEVELS.index(level) :] if level else LEVELS
    expected = [
        d
        for d in docs
        if (not statuses or d["status"] in statuses)
        and d["level"] in allowed
        and (sites is None or d["site"] in sites)
    ]
    order = {d["id"]: i for i, d in enumerate(docs)}  # insertion order = rowid order
    expected.sort(key=lambda d: (d["last_seen"], order[d["id"]]), reverse=True)
    with SQLiteStore(path) as store:
        got = _walk(
            IncidentTables(store),
            IncidentQuery(statuses=statuses, min_level=level, sites=sites, limit=7),
        )
    assert got == [d["id"] for d in expected]
