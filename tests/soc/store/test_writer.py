"""The writer process: what the collectors send is stored, and its failures reach the sender."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import apsw
import pytest

from soc.config import Settings, SqliteSettings, StoreSettings
from soc.errors import StoreError
from soc.store.base import EventQuery
from soc.store.sqlite import SQLiteStore
from soc.store.writer import StoreWriter
from tests.conftest import modbus_event


def _settings(path: Path, busy_timeout_ms: int = 5000) -> Settings:
    return Settings(
        store=StoreSettings(batch_size=50),
        sqlite=SqliteSettings(path=path, busy_timeout_ms=busy_timeout_ms),
    )


def test_events_sent_are_stored_once(tmp_path: Path) -> None:
    path = tmp_path / "soc.db"
    with StoreWriter(_settings(path)) as writer:
        writer.write(modbus_event(i) for i in range(120))
        writer.write(modbus_event(i) for i in range(100, 130))  # 20 already sent
    assert writer.stats.result.written == 130
    assert writer.stats.result.duplicates == 20
    assert writer.stats.busy_seconds > 0
    with SQLiteStore(path) as db:
        assert db.count_events(EventQuery()) == [(None, 130)]
        page = db.query_events(EventQuery(limit=1))
    assert page.events == [modbus_event(0)]


def test_a_bad_event_is_refused_in_the_sender_with_its_position(tmp_path: Path) -> None:
    events = [modbus_event(i) for i in range(10)]
    del events[7]["event"]["id"]
    with StoreWriter(_settings(tmp_path / "soc.db")) as writer:
        with pytest.raises(StoreError, match=r"event\.id") as info:
            writer.write(events)
        assert info.value.location == "event #7"


def test_an_unopenable_store_fails_at_start(tmp_path: Path) -> None:
    path = tmp_path / "soc.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a SQLite database") as info:
        StoreWriter(_settings(path))
    assert info.value.location == str(path)


def test_a_locked_database_reaches_the_sender(tmp_path: Path) -> None:
    path = tmp_path / "soc.db"
    SQLiteStore(path).close()
    holder = apsw.Connection(str(path))
    holder.execute("BEGIN EXCLUSIVE")
    try:
        writer = StoreWriter(_settings(path, busy_timeout_ms=100))
        writer.write(modbus_event(i) for i in range(10))
        with pytest.raises(StoreError, match="locked") as info:
            writer.close()
        assert info.value.location == str(path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_killed_writer_is_reported_and_committed_batches_stay(tmp_path: Path) -> None:
    path = tmp_path / "soc.db"
    writer = StoreWriter(_settings(path))
    writer.write(modbus_event(i) for i in range(50))
    pid = writer._process.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    writer._process.join()
    with pytest.raises(StoreError, match="ended unexpectedly"):
        writer.write(modbus_event(j) for j in range(50, 100))
    with SQLiteStore(path) as db:
        assert db.check() == ["ok"]
        ((_, stored),) = db.count_events(EventQuery())
    assert stored % 50 == 0  # whole batches only
