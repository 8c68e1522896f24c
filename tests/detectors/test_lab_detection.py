"""The rule set on the lab's labelled reference capture (lab/reference): every Modbus attack
scenario raises the ATT&CK for ICS techniques its label promises (recall per scenario), and the
normal period before the first attack raises nothing (precision). ``pytest -s`` prints the
per-scenario table."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from detectors.runner import RulePlan, collect_captures, detect_events, load_plans
from soc.event import parse_timestamp

REFERENCE = Path(__file__).resolve().parents[2] / "lab" / "reference"
#: a request the server never answers becomes an ``unanswered_request`` event after this timeout
RESPONSE_TIMEOUT_US = 5_000_000


@functools.cache
def _run() -> tuple[list[dict[str, Any]], dict[str, int], dict[str, RulePlan]]:
    events = collect_captures([REFERENCE / "capture.pcap.gz"])
    plans = load_plans()
    times = {e["event"]["id"]: parse_timestamp(e["@timestamp"]) for e in events}
    return detect_events(events, plans), times, {p.id: p for p in plans}


def _labels() -> dict[str, Any]:
    labels: dict[str, Any] = json.loads((REFERENCE / "labels.json").read_text())
    return labels


def _scenarios() -> list[dict[str, Any]]:
    return [s for s in _labels()["scenarios"] if s["protocol"] == "modbus"]


def _waits_for_timeout(plan: RulePlan) -> bool:
    return any("unanswered_request" in i.query for i in plan.inputs)


def _alerts_in(start: int, end: int, *, timeout: bool) -> list[dict[str, Any]]:
    """The alerts with a triggering event in ``[start, end]`` (``end`` + the response timeout
    for rules on unanswered requests, when ``timeout``)."""
    alerts, times, plans = _run()
    found = []
    for doc in alerts:
        late = (
            RESPONSE_TIMEOUT_US if timeout and _waits_for_timeout(plans[doc["rule"]["id"]]) else 0
        )
        if any(start <= times[e] <= end + late for e in doc["ics"]["alert"]["event_ids"]):
            found.append(doc)
    return found


def _table() -> list[tuple[str, list[str], list[str], list[str]]]:
    rows = []
    for scenario in _scenarios():
        docs = _alerts_in(scenario["start_us"], scenario["end_us"], timeout=True)
        techniques = sorted({t for d in docs for t in d["threat"]["technique"]["id"]})
        rules = sorted({d["rule"]["name"] for d in docs})
        rows.append((scenario["scenario"], sorted(scenario["techniques"]), techniques, rules))
    return rows


def test_print_the_per_scenario_table() -> None:
    print(
        "\nscenario                        expected     alerted                        rules fired"
    )
    for name, expected, alerted, rules in _table():
        missing = sorted(set(expected) - set(alerted))
        flag = f"  MISSING {','.join(missing)}" if missing else ""
        print(f"{name:31s} {','.join(expected):12s} {','.join(alerted):30s}{flag}")
        for rule in rules:
            print(f"{'':44s}  - {rule}")
    normal = _labels()["normal"]
    print(
        f"normal period: {len(_alerts_in(normal['start_us'], normal['end_us'], timeout=False))} alerts"
    )


@pytest.mark.parametrize("scenario", _scenarios(), ids=lambda s: s["scenario"])
def test_every_scenario_raises_the_techniques_of_its_label(scenario: dict[str, Any]) -> None:
    docs = _alerts_in(scenario["start_us"], scenario["end_us"], timeout=True)
    alerted = {t for d in docs for t in d["threat"]["technique"]["id"]}
    missing = set(scenario["techniques"]) - alerted
    assert not missing, (
        f"{scenario['scenario']}: no alert for {sorted(missing)} (got {sorted(alerted)})"
    )


def test_the_normal_period_raises_no_alert() -> None:
    normal = _labels()["normal"]
    docs = _alerts_in(normal["start_us"], normal["end_us"], timeout=False)
    assert docs == [], [d["rule"]["name"] for d in docs]


def test_alerts_are_about_the_attacker() -> None:
    """Every alert of the capture involves the attacker, except the loss of view the flood
    causes to the HMI (its unanswered requests)."""
    alerts, _, plans = _run()
    attacker = _labels()["site"]["attacker"]
    others = [d for d in alerts if attacker not in d["related"]["ip"]]
    assert all(_waits_for_timeout(plans[d["rule"]["id"]]) for d in others), [
        d["rule"]["name"] for d in others
    ]
