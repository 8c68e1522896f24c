"""Correlation of alerts into incidents (pure), and the workflow over a store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from soc.config import Settings
from soc.errors import IncidentError
from soc.incidents.correlate import AlertView, SiteMap, correlate, level_of
from soc.incidents.service import TRANSITIONS, change_incident, correlate_store
from soc.store.base import AlertRow
from soc.store.sqlite import SQLiteStore
from soc.store.sqlite_incidents import AuditQuery, IncidentQuery, IncidentTables

S = 1_000_000
T0 = 1_795_640_000 * S
SITES = SiteMap(
    {"plant": ("10.1.0.0/16",), "grid": ("10.2.0.0/16",)},
    {"critical": ("10.1.0.1",), "high": ("10.1.0.0/24",), "low": ("10.2.0.0/16",)},
)
# ATT&CK for ICS tactic ids in matrix order (a subset): discovery, collection, impair, impact
ORDER = {"TA0102": 5, "TA0100": 7, "TA0106": 10, "TA0105": 11}
TACTICS = {"TA0102": "Discovery", "TA0100": "Collection", "TA0106": "Impair Process Control"}


def alert(
    ident: str,
    at_s: float,
    src: str,
    dst: str,
    *,
    rule: str = "r1",
    level: str = "high",
    tactic: str = "TA0106",
) -> AlertView:
    ts = T0 + round(at_s * S)
    doc: dict[str, Any] = {
        "rule": {"id": rule, "name": f"rule {rule}"},
        "labels": {"level": level},
        "source": {"ip": src},
        "destination": {"ip": dst},
        "threat": {
            "technique": {"id": ["T0855"], "name": ["Unauthorized Command Message"]},
            "tactic": {"id": [tactic], "name": [TACTICS.get(tactic, tactic)]},
        },
        "ics": {"alert": {"event_count": 3}},
    }
    return AlertView(ident, ts, ts, rule, doc)


def run(alerts: list[AlertView], window_s: float = 1800, existing: Any = ()) -> Any:
    return correlate(
        alerts, list(existing), SITES, window_us=round(window_s * S), tactic_order=ORDER, now_us=T0
    )


def test_same_attacker_within_the_window_is_one_incident_with_counted_duplicates() -> None:
    out = run(
        [
            alert("a1", 0, "10.9.9.9", "10.1.0.1"),
            alert("a2", 60, "10.9.9.9", "10.1.0.1"),  # same rule again: counted
            alert("a3", 120, "10.9.9.9", "10.1.0.7", rule="r2", level="medium"),
        ]
    )
    assert len(out.incidents) == 1
    (incident,) = out.incidents.values()
    assert incident.site == "plant"
    assert incident.alert_count == 3
    assert incident.event_count == 9
    assert {r["id"]: r["count"] for r in incident.rules.values()} == {"r1": 2, "r2": 1}
    assert incident.attackers == ["10.9.9.9"]
    assert incident.assets == ["10.1.0.1", "10.1.0.7"]
    assert [a for a, _ in out.links] == ["a1", "a2", "a3"]


def test_window_site_and_unrelated_hosts_split_incidents() -> None:
    out = run(
        [
            alert("a1", 0, "10.9.9.9", "10.1.0.1"),
            alert("late", 4000, "10.9.9.9", "10.1.0.1"),  # beyond 1,800 s: a new incident
            alert("grid", 10, "10.9.9.9", "10.2.0.5"),  # same attacker, another site
            alert("other", 20, "10.8.8.8", "10.1.0.9"),  # nothing shared
            alert("asset", 30, "10.7.7.7", "10.1.0.1"),  # a new attacker on a known asset: joins
        ]
    )
    by_first = {inc.id: [a for a, i in out.links if i == inc.id] for inc in out.incidents.values()}
    assert sorted(by_first.values()) == [["a1", "asset"], ["grid"], ["late"], ["other"]]


def test_answers_to_an_outside_host_name_it_the_attacker() -> None:
    out = run(
        [
            alert("req", 0, "10.9.9.9", "10.1.0.1"),
            alert("resp", 1, "10.1.0.1", "10.9.9.9"),  # a rule on the PLC's exceptions to it
        ]
    )
    (incident,) = out.incidents.values()
    assert incident.attackers == ["10.9.9.9"]
    assert incident.assets == ["10.1.0.1"]


@pytest.mark.parametrize(
    ("level", "asset", "tactics", "severity"),
    [
        ("high", "10.1.0.1", ["TA0106"], 83),  # critical asset: +10
        ("high", "10.1.0.5", ["TA0106"], 78),  # high asset: +5
        ("high", "10.1.9.9", ["TA0106"], 73),  # unlisted: medium, +0
        ("critical", "10.2.0.5", ["TA0106"], 89),  # low asset: -10
        ("medium", "10.1.9.9", ["TA0102", "TA0100", "TA0106"], 57),  # a chain of three: +10
        ("critical", "10.1.0.1", ["TA0102", "TA0100", "TA0106"], 100),  # clamped
    ],
)
def test_severity_from_alerts_criticality_and_chain(
    level: str, asset: str, tactics: list[str], severity: int
) -> None:
    alerts = [
        alert(f"a{i}", i, "10.9.9.9", asset, rule=f"r{i}", level=level, tactic=t)
        for i, t in enumerate(tactics)
    ]
    (incident,) = run(alerts).incidents.values()
    assert incident.severity == severity
    assert incident.level == level_of(severity)


def test_a_closed_incident_takes_no_new_alert_and_escalation_is_reported() -> None:
    first = run([alert("a1", 0, "10.9.9.9", "10.1.9.9", level="medium")])
    (incident,) = first.incidents.values()
    assert incident.level == "medium"
    grown = run(
        [alert("a2", 10, "10.9.9.9", "10.1.9.9", rule="r2", level="critical")], existing=[incident]
    )
    assert grown.escalated == {incident.id}
    assert not grown.created
    incident.status = "resolved"
    again = run([alert("a3", 20, "10.9.9.9", "10.1.9.9")], existing=[incident])
    assert len(again.created) == 1
    assert incident.id not in again.incidents


def _row(a: AlertView) -> AlertRow:
    return AlertRow(a.id, a.rule_id, "[]", a.ts, a.end_ts, 73, dict(a.doc))


def test_store_correlation_is_idempotent_and_notifies(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    sent: list[tuple[str, str]] = []
    with SQLiteStore(tmp_path / "soc.db") as store:
        store.write_alerts([_row(alert("a1", 0, "127.0.66.6", "127.0.10.1"))])
        tables = IncidentTables(store)
        done = correlate_store(
            tables, settings, ORDER, notify=lambda d, c: sent.append((d["id"], c))
        )
        assert (done.alerts, done.created) == (1, 1)
        assert correlate_store(tables, settings, ORDER).alerts == 0
        store.write_alerts([_row(alert("a2", 5, "127.0.66.6", "127.0.10.1", rule="r9"))])
        assert correlate_store(tables, settings, ORDER).updated == 1
        docs, _ = tables.list_incidents(IncidentQuery())
        assert len(docs) == 1
        assert docs[0]["site"] == "water_plant"  # the lab's sites by default
        assert docs[0]["asset_criticality"] == "critical"  # the PLC
        assert sent == [(docs[0]["id"], "created")]
        kinds = [n["kind"] for n in tables.timeline(docs[0]["id"])]
        assert kinds == ["alert", "alert"]


@pytest.mark.parametrize("start", sorted(TRANSITIONS))
@pytest.mark.parametrize("target", sorted(TRANSITIONS))
def test_workflow_transitions(tmp_path: Path, start: str, target: str) -> None:
    settings = Settings(data_dir=tmp_path)
    with SQLiteStore(tmp_path / "soc.db") as store:
        store.write_alerts([_row(alert("a1", 0, "127.0.66.6", "127.0.10.1"))])
        tables = IncidentTables(store)
        correlate_store(tables, settings, ORDER)
        (doc,), _ = tables.list_incidents(IncidentQuery())
        doc["status"] = start
        tables.save_change(doc, [], "setup", T0, ("setup", {}))
        if target == start:
            assert change_incident(tables, doc["id"], "ana", status=target)["status"] == start
        elif target in TRANSITIONS[start]:
            changed = change_incident(tables, doc["id"], "ana", status=target, comment="why")
            assert changed["status"] == target
            (row, *_), _ = tables.list_audit(AuditQuery(actor="ana"))
            assert row["detail"]["status"] == {"from": start, "to": target}
        else:
            with pytest.raises(IncidentError) as caught:
                change_incident(tables, doc["id"], "ana", status=target)
            assert caught.value.location == "status"
            assert tables.get_incident(doc["id"])["status"] == start  # type: ignore[index]
