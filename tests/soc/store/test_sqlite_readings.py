"""Meter readings: stored from the ``energy.readings`` of DLMS events as the events are (the
migration's trigger), never twice, and read back by meter, OBIS code and time; ``soc readings``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from soc.cli import main
from soc.event import format_timestamp, parse_timestamp
from soc.store.sqlite import SQLiteStore
from soc.store.sqlite_readings import ReadingQuery, ReadingTables

T0 = parse_timestamp("2026-11-25T10:00:00+00:00")


def dlms_event(n: int, readings: list[dict[str, Any]], **energy: Any) -> dict[str, Any]:
    return {
        "@timestamp": format_timestamp(T0 + n * 1_000_000),
        "event": {"id": f"dlms-{n}", "dataset": "ics.dlms", "kind": "event"},
        "source": {"ip": "127.0.20.1", "port": 4059},
        "destination": {"ip": "127.0.20.100", "port": 40000},
        "energy": {**energy, "readings": readings},
    }


IMPORT = {"obis": "1-0:1.8.0*255", "value": 1234.5, "unit": "Wh", "direction": "import"}
EXPORT = {"obis": "1-0:2.8.0*255", "value": 10, "unit": "Wh", "direction": "export"}
TARIFF = {"obis": "1-0:1.8.1*255", "value": 600.25, "unit": "Wh", "direction": "import"}
PROFILE = {"obis": "1-0:99.1.0*255", "value": 7, "time": "2026-11-25T09:30:00+01:00",
           "interval_s": 1800}  # fmt: skip


def test_readings_are_stored_with_their_event_once(tmp_path: Path) -> None:
    events = [
        dlms_event(1, [IMPORT, EXPORT], meter_id="LGZ1030123456789"),
        dlms_event(2, [TARIFF, PROFILE, {"obis": "0-0:42.0.0*255", "value": "LGZ"}]),
        {**dlms_event(3, [IMPORT]), "event": {"id": "m-1", "dataset": "ics.modbus"}},
    ]
    with SQLiteStore(tmp_path / "soc.db") as store:
        first = store.write_events(events)
        again = store.write_events(events)  # a replay adds nothing
        rows = ReadingTables(store).query(ReadingQuery())
    assert (first.written, first.duplicates) == (3, 0)  # readings are not counted as events
    assert (again.written, again.duplicates) == (0, 3)
    got = [(r.meter_id, r.obis, r.value, r.unit, r.direction, r.interval_s) for r in rows]
    assert got == [
        ("127.0.20.1", "1-0:99.1.0*255", 7.0, None, None, 1800),  # its own time: 08:30 UTC
        ("LGZ1030123456789", "1-0:1.8.0*255", 1234.5, "Wh", "import", None),
        ("LGZ1030123456789", "1-0:2.8.0*255", 10.0, "Wh", "export", None),
        ("127.0.20.1", "1-0:1.8.1*255", 600.25, "Wh", "import", None),
    ]  # not the text value, not the Modbus event's
    assert rows[0].ts_us == parse_timestamp("2026-11-25T08:30:00+00:00")
    assert rows[1].ts_us == T0 + 1_000_000
    assert {r.event_id for r in rows} == {"dlms-1", "dlms-2"}


def test_queries_by_meter_obis_prefix_and_time(tmp_path: Path) -> None:
    events = [dlms_event(n, [IMPORT, TARIFF], meter_id=f"m{n % 2}") for n in range(10)]
    with SQLiteStore(tmp_path / "soc.db") as store:
        store.write_events(events)
        tables = ReadingTables(store)
        assert len(tables.query(ReadingQuery(meter_id="m1"))) == 10
        assert {r.obis for r in tables.query(ReadingQuery(obis="1-0:1.8"))} == {
            IMPORT["obis"],
            TARIFF["obis"],
        }
        assert {r.obis for r in tables.query(ReadingQuery(obis="1-0:1.8.1"))} == {TARIFF["obis"]}
        window = tables.query(ReadingQuery(start_us=T0 + 2_000_000, end_us=T0 + 4_000_000))
        assert sorted({r.ts_us for r in window}) == [T0 + 2_000_000, T0 + 3_000_000]
        assert len(tables.query(ReadingQuery(limit=3))) == 3
        assert tables.meters() == [("m0", 10, T0, T0 + 8_000_000), ("m1", 10, T0 + 1_000_000,
                                   T0 + 9_000_000)]  # fmt: skip


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("SOC_DATA_DIR", str(tmp_path))
    return CliRunner()


def test_soc_readings(runner: CliRunner, tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "soc.db") as store:
        store.write_events([dlms_event(1, [IMPORT, EXPORT], meter_id="meter-7")])
    result = runner.invoke(main, ["readings", "--meter", "meter-7", "--obis", "1-0:2.8"])
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["2026-11-25T10:00:01.000000Z", "meter-7", "1-0:2.8.0*255",
                                     "10", "Wh", "export"]  # fmt: skip
    result = runner.invoke(main, ["readings", "--json", "--since", "2026-11-25T10:00:01"])
    docs = [orjson.loads(line) for line in result.output.splitlines()]
    assert [d["value"] for d in docs] == [1234.5, 10.0]
    result = runner.invoke(main, ["readings", "--meters"])
    assert "meter-7  2 readings" in result.output
    result = runner.invoke(main, ["readings", "--since", "yesterday"])
    assert result.exit_code == 2
    assert "--since" in result.output
