from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soc.errors import StoreError
from soc.event import format_timestamp, new_event
from soc.store.base import EventQuery, iter_events
from soc.store.migrations import MIGRATIONS
from soc.store.sqlite import SQLiteStore
from tests.conftest import modbus_event

HOUR = 3_600_000_000


def test_new_store_is_in_wal_mode_with_every_table(store: SQLiteStore) -> None:
    # the same SQLite library as the store: two copies in one process break POSIX locks
    conn = apsw.Connection(str(store.path))
    assert conn.execute("PRAGMA journal_mode").get == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {
        "events",
        "alerts",
        "incidents",
        "assets",
        "energy_readings",
        "wellbeing_observations",
        "users",
        "audit",
        "_migrations",
    } <= tables
    assert store.applied_migrations() == [m.name for m in MIGRATIONS]


def test_reopening_applies_nothing_twice(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "a.db").close()
    with SQLiteStore(tmp_path / "a.db") as again:
        assert again.applied_migrations() == [m.name for m in MIGRATIONS]


def test_same_event_id_twice_stays_one_row(store: SQLiteStore) -> None:
    events = [modbus_event(i) for i in range(120)]
    first = store.write_events(events)
    assert (first.written, first.duplicates, first.batches) == (120, 0, 3)
    again = store.write_events(events)
    assert (again.written, again.duplicates) == (0, 120)
    assert store.count_events(EventQuery()) == [(None, 120)]


def test_query_by_time_dataset_and_fields(store: SQLiteStore) -> None:
    base = 1_714_557_600_000_000
    store.write_events([modbus_event(i, ts_us=base, fc=3 if i % 2 else 16) for i in range(30)])
    other = new_event(ts_us=base, dataset="ics.opcua", id_parts=(1,))
    store.write_events([other])
    q = EventQuery(start_us=base + 10_000, end_us=base + 20_000, datasets=("ics.modbus",))
    got = store.query_events(q).events
    assert [e["modbus"]["transaction_id"] for e in got] == list(range(10, 20))
    by_fc = EventQuery(where=(("modbus.function_code", (16,)),))
    assert all(e["modbus"]["function_code"] == 16 for e in iter_events(store, by_fc))
    assert store.count_events(by_fc) == [(None, 15)]
    # a list field matches when any element matches, as in Elasticsearch
    related = EventQuery(where=(("related.ip", ("10.0.0.2",)),))
    assert store.count_events(related) == [(None, 10)]
    # a field that is not promoted to a column goes through the JSON document
    tid = EventQuery(where=(("modbus.transaction_id", (4, 5)),))
    assert sorted(e["modbus"]["transaction_id"] for e in store.query_events(tid).events) == [4, 5]
    counts = dict(
        store.count_events(EventQuery(datasets=("ics.modbus",)), by="modbus.function_code")
    )
    assert counts == {3: 15, 16: 15}
    assert dict(store.count_events(EventQuery(), by="event.dataset")) == {
        "ics.modbus": 30,
        "ics.opcua": 1,
    }


def test_pagination_is_stable_while_events_arrive(store: SQLiteStore) -> None:
    store.write_events([modbus_event(i) for i in range(0, 100, 2)])
    page = store.query_events(EventQuery(limit=10))
    seen = [e["event"]["id"] for e in page.events]
    # events arriving later, before and after the cursor, do not shift the pages
    store.write_events([modbus_event(i) for i in range(1, 100, 2)])
    cursor = page.next_cursor
    while cursor:
        page = store.query_events(EventQuery(limit=10, cursor=cursor))
        seen += [e["event"]["id"] for e in page.events]
        cursor = page.next_cursor
    assert len(seen) == len(set(seen))
    later = [modbus_event(i)["event"]["id"] for i in range(19, 100, 2)]
    earlier_even = [modbus_event(i)["event"]["id"] for i in range(0, 100, 2)]
    assert set(seen) == set(earlier_even) | set(later)


def test_bad_cursor_and_field_names_are_refused(store: SQLiteStore) -> None:
    with pytest.raises(StoreError, match="cursor"):
        store.query_events(EventQuery(cursor="not-a-cursor"))
    with pytest.raises(StoreError, match="field name"):
        EventQuery(where=(("x') OR 1=1 --", (1,)),))
    with pytest.raises(StoreError, match="field name"):
        store.count_events(EventQuery(), by="a'b")


def test_event_without_required_fields_is_refused_whole_batch(store: SQLiteStore) -> None:
    events: list[dict[str, Any]] = [modbus_event(i) for i in range(10)]
    events[7] = {"event": {"id": "x"}}
    with pytest.raises(StoreError, match=r"@timestamp, event.dataset.*event #7"):
        store.write_events(events)
    assert store.count_events(EventQuery()) == [(None, 0)]


def test_non_json_value_is_refused(store: SQLiteStore) -> None:
    doc = modbus_event(1)
    doc["modbus"]["raw"] = 2**70
    with pytest.raises(StoreError, match="not JSON"):
        store.write_events([doc])


# -- property tests --------------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(min_size=1, max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_events = st.builds(
    lambda ts, key, extra: {
        **new_event(ts_us=ts, dataset="ics.test", id_parts=(key,)),
        "labels": extra,
    },
    st.integers(min_value=0, max_value=4_102_444_800_000_000),
    st.binary(max_size=8),
    st.dictionaries(st.text(min_size=1, max_size=8), _json, max_size=5),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_events, max_size=20, unique_by=lambda e: e["event"]["id"]))
def test_written_events_read_back_equal_and_rewriting_changes_nothing(
    tmp_path: Path, batch: list[dict[str, Any]]
) -> None:
    with SQLiteStore(tmp_path / f"p{os.getpid()}-{time.monotonic_ns()}.db", batch_size=7) as db:
        db.write_events(batch)
        before = list(iter_events(db, EventQuery(limit=3)))
        result = db.write_events(batch)
        after = list(iter_events(db, EventQuery(limit=3)))
    assert result.written == 0
    assert after == before
    key = lambda e: (e["@timestamp"], e["event"]["id"])  # noqa: E731
    assert sorted(before, key=key) == sorted(batch, key=key)


# -- faults: a clear error naming the file, no half-written batch ----------------------------


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "soc.db"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError) as info:
        SQLiteStore(bad)
    assert info.value.location == str(bad)
    assert "not a SQLite database" in str(info.value)


def test_unwritable_place_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError) as info:
        SQLiteStore(blocker / "sub" / "soc.db")  # a file where a folder should be
    assert str(blocker) in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "soc.db"
    SQLiteStore(path).close()
    tmp_path.chmod(0o500)
    path.chmod(0o400)
    try:
        with pytest.raises(StoreError, match=r"soc\.db"):
            SQLiteStore(path).write_events([modbus_event(1)])
    finally:
        tmp_path.chmod(0o700)


def test_full_disk_rolls_back_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "soc.db"
    with SQLiteStore(path, batch_size=500) as db:
        db.write_events([modbus_event(i) for i in range(500)])
        # SQLite reports SQLITE_FULL exactly as on a full disk once the file hits this limit
        pages = db._conn.execute("PRAGMA page_count").get
        db._conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        with pytest.raises(StoreError) as info:
            db.write_events([modbus_event(i) for i in range(500, 1000)])
        assert "disk is full" in str(info.value)
        assert str(path) in str(info.value)
        # the failed batch left nothing behind; the store still works
        assert db.count_events(EventQuery()) == [(None, 500)]
        db._conn.execute("PRAGMA max_page_count = 1073741823")
        assert db.write_events([modbus_event(i) for i in range(500, 1000)]).written == 500


def test_locked_database_is_reported_not_hung(tmp_path: Path) -> None:
    path = tmp_path / "soc.db"
    SQLiteStore(path).close()
    holder = apsw.Connection(str(path))
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with SQLiteStore(path, busy_timeout_ms=200) as db, pytest.raises(StoreError) as info:
            db.write_events([modbus_event(1)])
        assert "locked" in str(info.value)
        assert str(path) in str(info.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "soc.db"
    SQLiteStore(path).close()
    conn = apsw.Connection(str(path))
    conn.execute("INSERT INTO _migrations VALUES ('9999_future', 'x')")
    conn.close()
    with pytest.raises(StoreError, match="newer version"):
        SQLiteStore(path)


_WRITER = textwrap.dedent(
    """
    import sys
    from soc.event import new_event
    from soc.store.sqlite import SQLiteStore
    batch = int(sys.argv[2])
    def events():
        i = 0
        while True:
            yield new_event(ts_us=1_714_557_600_000_000 + i, dataset="ics.test", id_parts=(i,))
            i += 1
    with SQLiteStore(sys.argv[1], batch_size=batch) as db:
        print("ready", flush=True)
        db.write_events(events())
    """
)


def test_kill_9_mid_batch_leaves_whole_batches_only(tmp_path: Path) -> None:
    path = tmp_path / "soc.db"
    batch = 2000
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(batch)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until a few batches are committed, then kill
        time.sleep(0.2)
        with closing(apsw.Connection(str(path))) as probe:
            if probe.execute("SELECT count(*) FROM events").get >= 3 * batch:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    with SQLiteStore(path) as db:
        assert db.check() == ["ok"]
        ((_, n),) = db.count_events(EventQuery())
        assert n >= 3 * batch
        assert n % batch == 0, f"{n} events: a batch was half written"
        # exactly the first n events, with no gap
        last = db.query_events(EventQuery(start_us=1_714_557_600_000_000 + n - 1)).events
        assert [e["@timestamp"] for e in last] == [format_timestamp(1_714_557_600_000_000 + n - 1)]


def test_hourly_count_uses_an_index(store: SQLiteStore) -> None:
    store.write_events([modbus_event(i) for i in range(50)])
    store.optimize()
    plan = store._conn.execute(
        "EXPLAIN QUERY PLAN SELECT modbus_function_code, count(*) FROM events"
        " WHERE ts >= ? AND ts < ? GROUP BY modbus_function_code",
        (0, HOUR),
    ).fetchall()
    assert "INDEX" in " ".join(str(row[-1]) for row in plan)
