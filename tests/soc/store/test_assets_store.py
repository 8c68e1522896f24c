"""The store's assets table: incremental merges, filters, order, and the writer's asset messages."""

from __future__ import annotations

import time
from pathlib import Path

import apsw
import orjson
import pytest

from collectors.run import StoreSink
from soc.assets import AssetInventory
from soc.config import Settings, SqliteSettings, StoreSettings
from soc.errors import StoreError
from soc.store.base import AssetQuery
from soc.store.migrations import MIGRATIONS
from soc.store.sqlite import SQLiteStore
from soc.store.writer import StoreWriter
from tests.soc.test_assets import T0, modbus


def _docs(*events: dict[str, object]) -> list[dict[str, object]]:
    inventory = AssetInventory()
    inventory.observe_all(events)
    return inventory.docs()


def _traffic() -> list[dict[str, object]]:
    return [
        modbus("request", "10.0.0.10", "10.0.1.1", fc=3, unit=1),
        modbus(
            "response",
            "10.0.0.10",
            "10.0.1.1",
            fc=3,
            unit=1,
            ts_us=T0 + 10,
            identification={"vendor_name": "Acme"},
        ),
        modbus("request", "10.0.0.2", "10.0.1.1", fc=16, unit=2, ts_us=T0 + 20),
        modbus("request", "10.0.1.1", "192.168.5.5", fc=4, unit=9, ts_us=T0 + 30),
        modbus("request", "fd00::1", "10.0.1.1", fc=1, ts_us=T0 + 40),
    ]


def test_upserting_in_pieces_gives_what_one_upsert_gives(tmp_path: Path) -> None:
    events = _traffic()
    with SQLiteStore(tmp_path / "pieces.db") as pieces, SQLiteStore(tmp_path / "one.db") as one:
        for event in events:
            pieces.upsert_assets(_docs(event))
        assert one.upsert_assets(_docs(*events)) == 5
        assert pieces.list_assets(AssetQuery()) == one.list_assets(AssetQuery())
        server = next(d for d in one.list_assets(AssetQuery()) if d["ip"] == "10.0.1.1")
    assert server["modbus"]["function_codes"]["served"] == {"1": 1, "3": 1, "16": 1}
    assert server["roles"] == ["client", "server"]
    assert server["identity"]["vendor"] == "Acme"


def test_assets_are_listed_by_address_and_filtered(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "soc.db") as db:
        db.upsert_assets(_docs(*_traffic()))

        def ips(**query: str) -> list[str]:
            return [d["ip"] for d in db.list_assets(AssetQuery(**query))]

        everything = ["10.0.0.2", "10.0.0.10", "10.0.1.1", "192.168.5.5", "fd00::1"]
        assert ips() == everything  # numeric order, IPv4 before IPv6
        assert ips(role="server") == ["10.0.1.1", "192.168.5.5"]
        assert ips(role="slave", protocol="modbus") == ["10.0.1.1", "192.168.5.5"]
        assert ips(role="master") == ["10.0.0.2", "10.0.0.10", "10.0.1.1", "fd00::1"]
        assert ips(role="server", protocol="opcua") == []
        assert ips(protocol="modbus") == everything
        assert ips(network="10.0.0.0/24") == ["10.0.0.2", "10.0.0.10"]
        assert ips(network="10.0.1.1") == ["10.0.1.1"]
        assert ips(network="fd00::/8", role="client") == ["fd00::1"]
        with pytest.raises(StoreError, match="not an IP address or network"):
            AssetQuery(network="10.0.0.0/99")
        with pytest.raises(StoreError, match="unknown role"):
            AssetQuery(role="boss")


def test_replace_recomputes_the_table_in_one_transaction(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "soc.db") as db:
        db.upsert_assets(_docs(*_traffic()))
        db.upsert_assets(_docs(modbus("request", "10.0.0.2", "10.0.1.1")), replace=True)
        assert [d["ip"] for d in db.list_assets(AssetQuery())] == ["10.0.0.2", "10.0.1.1"]
        assert db.info().counts["assets"] == 2


def test_a_bad_document_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    good = _docs(modbus("request", "10.0.0.2", "10.0.1.1"))
    with SQLiteStore(tmp_path / "soc.db") as db:
        with pytest.raises(StoreError, match="not an asset document") as info:
            db.upsert_assets([*good, {"ip": "not-an-address"}])
        assert info.value.location == "asset #2"
        assert db.list_assets(AssetQuery()) == []


def test_the_row_columns_follow_the_document(tmp_path: Path) -> None:
    path = tmp_path / "soc.db"
    with SQLiteStore(path) as db:
        db.upsert_assets(_docs(*_traffic()))
    conn = apsw.Connection(str(path))  # the store's own SQLite library (see test_sqlite.py)
    row = conn.execute(
        "SELECT first_seen, last_seen, roles, protocols FROM assets WHERE ip = '10.0.1.1'"
    ).fetchone()
    conn.close()
    assert row is not None
    assert (row[0], row[1]) == (T0, T0 + 40)
    assert orjson.loads(row[2]) == ["modbus:client", "modbus:server"]
    assert orjson.loads(row[3]) == ["modbus"]


def test_a_store_of_the_previous_schema_gets_the_new_assets_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = apsw.Connection(str(path))
    conn.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    for migration in MIGRATIONS[:2]:
        for statement in migration.statements:
            conn.execute(statement)
        conn.execute("INSERT INTO _migrations VALUES (?, '2024-01-01')", (migration.name,))
    conn.close()
    with SQLiteStore(path) as db:
        assert "0003_asset_inventory" in db.applied_migrations()
        db.upsert_assets(_docs(*_traffic()))
        assert len(db.list_assets(AssetQuery())) == 5


def _settings(path: Path) -> Settings:
    return Settings(store=StoreSettings(batch_size=50), sqlite=SqliteSettings(path=path))


def test_the_writer_process_merges_the_assets_it_is_sent(tmp_path: Path) -> None:
    path = tmp_path / "soc.db"
    events = _traffic()
    with StoreWriter(_settings(path)) as writer:
        writer.write(events)
        writer.write_assets(_docs(*events[:2]))
        writer.write_assets(_docs(*events[2:]))
    assert writer.stats.assets == 2 + 4  # documents merged, in two messages
    assert writer.stats.result.written == 5
    with SQLiteStore(path) as db:
        assert db.list_assets(AssetQuery()) == _docs(*events)


def test_a_collection_updates_the_assets_while_it_runs(tmp_path: Path) -> None:
    path = tmp_path / "soc.db"
    sink = StoreSink(_settings(path), assets_every_s=0.0)  # send the assets with every batch
    try:
        sink.write(_traffic()[:2])
        deadline = time.monotonic() + 10
        listed: list[dict[str, object]] = []
        while time.monotonic() < deadline and not listed:
            with SQLiteStore(path) as db:
                listed = db.list_assets(AssetQuery())
            time.sleep(0.05)
        assert [d["ip"] for d in listed] == ["10.0.0.10", "10.0.1.1"]  # before the end
        sink.write(_traffic()[2:])
    finally:
        sink.close()
    assert sink.written == 5
    with SQLiteStore(path) as db:
        assert db.list_assets(AssetQuery()) == _docs(*_traffic())
