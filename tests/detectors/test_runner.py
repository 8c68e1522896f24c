"""Incremental detection (detectors.runner): exactly-once alerts across runs and restarts, the
Python correlation against pySigma's SQL, alert documents, and `soc detect --pcap`."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from detectors.alerts import Match, Window, episodes
from detectors.runner import (
    STAGE_OLD_ALL,
    Detector,
    RulePlan,
    Staging,
    collect_captures,
    detect_events,
    load_plans,
)
from detectors.sigma import execute, memory_store, run_on_events
from soc.cli import main
from soc.store.base import AlertQuery
from soc.store.sqlite import SQLiteStore
from soc.types import Event

CAPTURE = Path(__file__).resolve().parents[2] / "lab" / "reference" / "capture.pcap.gz"
T0 = 1_714_557_600_000_000
SECOND = 1_000_000

RULES = """\
title: Modbus writes (test base rule)
id: 11111111-0000-4000-8000-000000000001
name: test_writes
status: test
description: Base rule of the test correlation.
author: ics-soc
date: 2026-11-25
logsource:
  product: ics
  service: modbus
detection:
  write:
    modbus.function_code: 5
  condition: write
---
title: Three writes from one client within 10 s
id: 11111111-0000-4000-8000-000000000002
status: test
description: Test correlation.
author: ics-soc
date: 2026-11-25
tags:
  - attack.ics
  - attack.t0855
correlation:
  type: event_count
  rules:
    - test_writes
  group-by:
    - source.ip
  timespan: 10s
  condition:
    gte: 3
falsepositives:
  - none
level: high
---
title: Diagnostics request (test single-event rule)
id: 11111111-0000-4000-8000-000000000003
status: test
description: Any diagnostics request.
author: ics-soc
date: 2026-11-25
tags:
  - attack.ics
  - attack.t0816
logsource:
  product: ics
  service: modbus
detection:
  diag:
    modbus.function_code: 8
  condition: diag
falsepositives:
  - none
level: critical
"""
CORRELATION = "11111111-0000-4000-8000-000000000002"
SINGLE = "11111111-0000-4000-8000-000000000003"


def _event(n: int, ts: int, fc: int, src: str = "10.0.0.9") -> Event:
    return {
        "@timestamp": _iso(ts),
        "event": {"id": f"e{n}", "dataset": "ics.modbus", "kind": "event"},
        "source": {"ip": src, "port": 40000},
        "destination": {"ip": "10.0.1.1", "port": 502},
        "modbus": {"function_code": fc, "pdu_type": "request"},
    }


def _iso(ts: int) -> str:
    from detectors.alerts import iso

    return iso(ts)


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> list[RulePlan]:
    folder = tmp_path_factory.mktemp("rules")
    (folder / "modbus").mkdir()
    (folder / "modbus" / "test.yml").write_text(RULES)
    return load_plans(folder)


@functools.cache
def _reference() -> list[Event]:
    return collect_captures([CAPTURE])


@functools.cache
def _bundled() -> list[RulePlan]:
    return load_plans()


def _alerts(store: SQLiteStore, rule: str) -> list[dict[str, Any]]:
    return [row.doc for row in store.query_alerts(AlertQuery(rule_id=rule, limit=1000))]


def _links(store: SQLiteStore) -> dict[str, list[str]]:
    rows = store.read_rows(
        "SELECT a.rule_id, e.event_id FROM alert_events e JOIN alerts a ON a.id = e.alert_id"
    )
    out: dict[str, list[str]] = {}
    for rule, event in rows:
        out.setdefault(rule, []).append(event)
    return out


#: Both ways a step reads the old events: all staged at once (few), or only those of the rules
#: with a new hit (many: a small step on a busy store).
STAGINGS = pytest.mark.parametrize("stage_old_all", [STAGE_OLD_ALL, 0], ids=["all-old", "active"])


@STAGINGS
def test_alerts_exactly_once_across_runs_with_a_window_spanning_them(
    store: SQLiteStore, plans: list[RulePlan], stage_old_all: int
) -> None:
    detector = Detector(store, plans, stage_old_all=stage_old_all)
    store.write_events([_event(1, T0, 5), _event(2, T0 + SECOND, 5), _event(3, T0 + SECOND, 8)])
    first = detector.run_once()
    assert first.created == {SINGLE: 1}
    assert _alerts(store, CORRELATION) == []  # 2 writes: not yet

    store.write_events([_event(4, T0 + 2 * SECOND, 5), _event(5, T0 + 3 * SECOND, 8)])
    second = detector.run_once()
    assert second.created == {CORRELATION: 1}
    assert second.updated == {SINGLE: 1}  # the diagnostics 2 s later continue the same alert
    (corr,) = _alerts(store, CORRELATION)
    assert corr["ics"]["alert"]["event_ids"] == ["e1", "e2", "e4"]  # e1, e2 from the first run

    store.write_events([_event(6, T0 + 4 * SECOND, 5)])
    third = detector.run_once()
    assert third.updated == {CORRELATION: 1}
    assert not third.created
    (corr,) = _alerts(store, CORRELATION)
    assert corr["ics"]["alert"]["event_ids"] == ["e1", "e2", "e4", "e6"]
    assert corr["ics"]["alert"]["event_count"] == 4
    assert corr["event"]["start"] == _iso(T0)
    assert corr["event"]["end"] == _iso(T0 + 4 * SECOND)

    assert detector.run_once().alerts == 0  # nothing new, nothing written
    links = _links(store)
    assert sorted(links[CORRELATION]) == ["e1", "e2", "e4", "e6"]
    assert sorted(links[SINGLE]) == ["e3", "e5"]


def test_a_later_episode_is_a_new_alert(store: SQLiteStore, plans: list[RulePlan]) -> None:
    detector = Detector(store, plans)
    store.write_events([_event(i, T0 + i * SECOND, 5) for i in range(3)])
    detector.run_once()
    store.write_events([_event(10 + i, T0 + (100 + i) * SECOND, 5) for i in range(3)])
    detector.run_once()
    docs = _alerts(store, CORRELATION)
    assert len(docs) == 2
    assert sorted(d["ics"]["alert"]["event_count"] for d in docs) == [3, 3]


def test_restart_and_an_interrupted_run_alert_once(
    tmp_path: Path, plans: list[RulePlan], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "soc.db"
    with SQLiteStore(path) as db:
        db.write_events([_event(i, T0 + i * SECOND, 5 if i % 2 else 8) for i in range(8)])
        calls = {"n": 0}
        original = SQLiteStore.commit_detection

        def failing(self: SQLiteStore, *args: Any, **kwargs: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("killed")
            original(self, *args, **kwargs)

        monkeypatch.setattr(SQLiteStore, "commit_detection", failing)
        with pytest.raises(RuntimeError):
            Detector(db, plans).run_once()
        monkeypatch.setattr(SQLiteStore, "commit_detection", original)
    with SQLiteStore(path) as db:  # a restart: the checkpoints say what is left
        Detector(db, plans).run_once()
        assert Detector(db, plans).run_once().alerts == 0
        links = _links(db)
        assert sorted(links[CORRELATION]) == ["e1", "e3", "e5", "e7"]
        assert sorted(links[SINGLE]) == ["e0", "e2", "e4", "e6"]
        assert len(_alerts(db, CORRELATION)) == len(_alerts(db, SINGLE)) == 1


def test_alert_document_fields(store: SQLiteStore, plans: list[RulePlan]) -> None:
    store.write_events([_event(1, T0, 8, src="10.0.0.66")])
    Detector(store, plans).run_once()
    (doc,) = _alerts(store, SINGLE)
    assert doc["event"]["kind"] == "alert"
    assert doc["event"]["dataset"] == "ics.alert"
    assert doc["event"]["severity"] == 99
    assert doc["labels"]["level"] == "critical"
    assert doc["rule"]["id"] == SINGLE
    assert doc["rule"]["name"].startswith("Diagnostics")
    assert doc["threat"]["framework"] == "MITRE ATT&CK for ICS"
    assert doc["threat"]["technique"]["id"] == ["T0816"]
    assert doc["threat"]["technique"]["name"] == ["Device Restart/Shutdown"]
    assert doc["threat"]["tactic"]["name"] == ["Inhibit Response Function"]
    assert doc["source"]["ip"] == "10.0.0.66"
    assert doc["destination"] == {"ip": "10.0.1.1", "port": 502}
    assert doc["related"]["ip"] == ["10.0.0.66", "10.0.1.1"]
    assert doc["ics"]["alert"]["event_ids"] == ["e1"]
    assert doc["@timestamp"] == doc["event"]["start"] == _iso(T0)


def _chunks(events: list[Event], n: int) -> Iterator[list[Event]]:
    size = -(-len(events) // n)
    for start in range(0, len(events), size):
        yield events[start : start + size]


@STAGINGS
def test_incremental_runs_equal_one_run_on_the_reference_capture(
    tmp_path: Path, stage_old_all: int
) -> None:
    events, plans = _reference(), _bundled()
    whole = {d["event"]["id"]: d for d in detect_events(events, plans)}
    with SQLiteStore(tmp_path / "soc.db") as db:
        detector = Detector(db, plans, stage_old_all=stage_old_all)
        for chunk in _chunks(events, 5):
            db.write_events(chunk)
            detector.run_once()
        stored = {row.id: row.doc for row in db.query_alerts(AlertQuery(limit=10_000))}
    assert set(stored) == set(whole)
    for ident, doc in whole.items():
        got = stored[ident]["ics"]["alert"]
        assert got["event_count"] == doc["ics"]["alert"]["event_count"], doc["rule"]["name"]
        assert got["event_ids"] == doc["ics"]["alert"]["event_ids"], doc["rule"]["name"]


def test_python_correlation_equals_pysigma_sql_on_the_reference_capture() -> None:
    """The union of pySigma's windows per rule is the union of our episodes' events (request
    flood left out: pySigma's SQL takes 30 s on it; the small cases below cover event_count)."""
    events = _reference()
    conn = memory_store(events)
    try:
        plans = _bundled()

        def run_sql(statement: str, params: Any) -> list[Any]:
            return list(conn.execute(statement, tuple(params)))

        found = {p.id: m for p, m, _ in Staging(run_sql, plans).step(plans, 0, len(events))}
        for plan in plans:
            if not plan.rule.is_correlation or plan.rule.title.startswith("Modbus request flood"):
                continue
            sql = {e for hit in execute(conn, plan.rule, materialize=True) for e in hit.event_ids}
            ours = {m.id for e in episodes(plan.window, found.get(plan.id, [])) for m in e.matches}
            assert ours == sql, plan.rule.title
    finally:
        conn.close()


@pytest.mark.parametrize(
    "times",
    [
        [0, 1, 2],
        [0, 5, 10, 21, 22],
        [0, 10, 10, 20],
        [0, 11, 22, 33],
        [0, 3, 3, 3, 14, 15, 16, 40, 41, 42, 43],
    ],
)
def test_event_count_equals_pysigma_on_small_cases(plans: list[RulePlan], times: list[int]) -> None:
    events = [_event(i, T0 + t * SECOND, 5, src=f"10.0.0.{1 + i % 2}") for i, t in enumerate(times)]
    events += [_event(100 + i, T0 + t * SECOND, 5) for i, t in enumerate(times)]
    (plan,) = [p for p in plans if p.id == CORRELATION]
    sql = set(run_on_events([plan.rule], events)[CORRELATION])
    assert {m.id for m in detect_matches(plan, events)} == sql


def detect_matches(plan: RulePlan, events: list[Event]) -> list[Match]:
    return [
        m
        for doc in detect_events(events, [plan])
        for m in [Match(e, 0, ()) for e in doc["ics"]["alert"]["event_ids"]]
    ]


@pytest.mark.parametrize(
    ("op", "count", "expected"),
    [
        ("gte", 2, {"a", "b", "c"}),
        ("gt", 2, {"a", "b", "c"}),
        ("lt", 2, {"a", "d"}),
        ("eq", 1, {"a", "d"}),
    ],
)
def test_value_count_conditions(op: str, count: int, expected: set[str]) -> None:
    window = Window("value_count", 10 * SECOND, 10 * SECOND, op, count)
    matches = [
        Match("a", T0, ("x",), 1),
        Match("b", T0 + SECOND, ("X",), 2),  # the same group: compared case-insensitively
        Match("c", T0 + 2 * SECOND, ("x",), 3),
        Match("d", T0 + 60 * SECOND, ("x",), 3),
        Match("e", T0 + 61 * SECOND, (None,), 4),  # no group: left out
    ]
    found = {m.id for e in episodes(window, matches) for m in e.matches}
    assert found == expected


def test_detect_pcap_writes_jsonl_without_a_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["detect", "--pcap", str(CAPTURE), "--jsonl", str(tmp_path / "alerts.jsonl")]
    )
    assert result.exit_code == 0, result.output
    docs = [orjson.loads(line) for line in (tmp_path / "alerts.jsonl").read_bytes().splitlines()]
    assert len(docs) >= 15
    assert all(d["event"]["kind"] == "alert" for d in docs)
    assert any(d["rule"]["name"].startswith("Modbus request flood") for d in docs)
    assert not (tmp_path / "soc-data").exists()


def test_detect_and_alerts_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with SQLiteStore(tmp_path / "soc-data" / "soc.db") as db:
        db.write_events(_reference())
    runner = CliRunner()
    first = runner.invoke(main, ["detect"])
    assert first.exit_code == 0, first.output
    assert f"{len(_reference()):,} new events" in first.output
    assert "Modbus request flood" in first.output
    again = runner.invoke(main, ["detect", "--json"])
    assert orjson.loads(again.output)["created"] == {}
    listed = runner.invoke(main, ["alerts", "--json", "--limit", "1000"])
    docs = [orjson.loads(line) for line in listed.output.splitlines()]
    assert len(docs) == len(detect_events(_reference(), _bundled()))
    table = runner.invoke(main, ["alerts", "--since", "2026-11-25T20:45:40"])
    assert "Force Listen Only" in table.output
    assert "address scan" not in table.output


def test_collect_with_inline_detection_raises_the_alerts_soc_detect_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`soc collect --detect` on a capture: the same alerts as detecting over it afterwards,
    printed as they are raised, and the checkpoints left where `soc detect` finds nothing new."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "collect",
            "--pcap",
            str(CAPTURE),
            "--detect",
            "--detect-interval",
            "0.1",
            "--summary-json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.output[result.output.index("{") :])
    expected = detect_events(_reference(), _bundled())
    assert summary["detection"]["failed_runs"] == 0
    assert summary["detection"]["runs"] >= 1
    listed = runner.invoke(main, ["alerts", "--json", "--limit", "1000"])
    docs = [orjson.loads(line) for line in listed.output.splitlines()]
    assert sorted(d["rule"]["id"] for d in docs) == sorted(d["rule"]["id"] for d in expected)
    assert "alert: " in result.output
    assert "Modbus request flood" in result.output
    again = runner.invoke(main, ["detect", "--json"])
    assert orjson.loads(again.output)["created"] == {}


def test_collect_detect_refuses_jsonl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["collect", "--pcap", str(CAPTURE), "--detect", "--jsonl", str(tmp_path / "e")]
    )
    assert result.exit_code == 2
    assert "soc detect --pcap" in result.output
