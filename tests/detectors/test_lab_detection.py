"""The rule set on the lab's labelled reference capture (lab/reference): every attack scenario
(Modbus, OPC UA, DLMS/COSEM, MQTT) raises the ATT&CK for ICS techniques its label promises (recall per scenario), and the
normal period before the first attack raises nothing, and most alerts during an attack are
about it (precision), scored by :mod:`detectors.evaluate` as ``soc rules evaluate`` prints it
(``pytest -s`` prints the table)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from detectors.evaluate import Evaluation, evaluate, format_table
from detectors.runner import RulePlan, collect_captures, detect_events, load_plans
from soc.event import parse_timestamp

REFERENCE = Path(__file__).resolve().parents[2] / "lab" / "reference"


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
    return list(_labels()["scenarios"])


def _waits_for_timeout(plan: RulePlan) -> bool:
    return any("unanswered_request" in i.query for i in plan.inputs)


@functools.cache
def _evaluation() -> Evaluation:
    alerts, times, plans = _run()
    return evaluate(
        alerts, times, _labels(), {p.info.service for p in plans.values() if p.info.service}
    )


def test_print_the_per_scenario_table() -> None:
    print()
    for line in format_table(_evaluation()):
        print(line)


@pytest.mark.parametrize("scenario", _scenarios(), ids=lambda s: s["scenario"])
def test_every_scenario_raises_the_techniques_of_its_label(scenario: dict[str, Any]) -> None:
    [score] = [s for s in _evaluation().scenarios if s.scenario == scenario["scenario"]]
    assert score.covered
    assert score.recall == 1.0, f"{score.scenario}: alerted {score.alerted} of {score.expected}"
    assert score.time_to_detect_s is not None
    assert score.time_to_detect_s < 6


def test_most_alerts_during_an_attack_are_about_it() -> None:
    for score in _evaluation().covered:
        assert score.precision is not None, score
        assert score.precision >= 0.5, score


def test_the_normal_period_raises_no_alert() -> None:
    result = _evaluation()
    assert result.normal_alerts == 0, result.normal_rules


def test_the_evaluation_counts_false_and_missed_alerts() -> None:
    """The scoring itself, on a made-up run: a scenario half detected, an alert about another
    host, an alert in the normal period."""
    labels = {
        "normal": {"start_us": 0, "end_us": 99},
        "scenarios": [
            {
                "scenario": "s",
                "protocol": "modbus",
                "attacker": "10.0.0.6",
                "techniques": ["T0846", "T0888"],
                "start_us": 1_000_000,
                "end_us": 2_000_000,
            },
            {
                "scenario": "o",
                "protocol": "opcua",
                "attacker": "10.0.0.6",
                "techniques": ["T0886"],
                "start_us": 3_000_000,
                "end_us": 4_000_000,
            },
        ],
    }

    def alert(
        name: str, techniques: list[str], ips: list[str], events: list[str]
    ) -> dict[str, Any]:
        return {
            "@timestamp": "1970-01-01T00:00:00.001500Z",
            "rule": {"name": name},
            "threat": {"technique": {"id": techniques}},
            "related": {"ip": ips},
            "ics": {"alert": {"event_ids": events, "triggered": "1970-01-01T00:00:01.750000Z"}},
        }

    times = {"n": 50, "a": 1_500_000, "b": 1_600_000}
    alerts = [
        alert("scan", ["T0846"], ["10.0.0.6", "10.0.0.1"], ["a"]),
        alert("side effect", ["T0814"], ["10.0.0.9", "10.0.0.1"], ["b"]),
        alert("noise", ["T0801"], ["10.0.0.9"], ["n"]),
    ]
    result = evaluate(alerts, times, labels, {"modbus"}, timeout_us=0)
    s, o = result.scenarios
    assert (s.alerts, s.true_alerts, s.precision, s.recall) == (2, 1, 0.5, 0.5)
    assert s.alerted == ("T0846",)
    assert s.rules == ("scan",)
    assert s.time_to_detect_s == 0.75
    assert not o.covered
    assert result.covered == (s,)
    assert (result.normal_alerts, result.normal_rules) == (1, ("noise",))
    assert result.precision == 1 / 3
    assert result.recall == 0.5


def test_alerts_are_about_the_attacker() -> None:
    """Every alert of the capture involves the attacker, except the loss of view the flood
    causes to the HMI (its unanswered requests)."""
    alerts, _, plans = _run()
    attacker = _labels()["site"]["attacker"]
    others = [d for d in alerts if attacker not in d["related"]["ip"]]
    assert all(_waits_for_timeout(plans[d["rule"]["id"]]) for d in others), [
        d["rule"]["name"] for d in others
    ]
