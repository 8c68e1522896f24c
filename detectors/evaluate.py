"""Precision and recall of alerts against a lab run's labels (``labels.json``), per scenario.

The labels say, per attack scenario, its attacker, targets, time span and the ATT&CK for ICS
techniques it performs; the normal period before the first attack has no attack at all.

- An alert **belongs to** a scenario when one of its events falls within the scenario's span
  (extended by the collector's response timeout: a request left unanswered becomes an event
  only then), and to the normal period when one falls within it.
- It is **true** when it involves the attacker (``related.ip``) of a scenario it belongs to and
  names one of that scenario's techniques (scenarios follow each other closely, and an alert
  may span two). Alerts about side effects (the HMI's requests a flooded PLC left unanswered)
  count against precision: they are real, but not what the label describes.
- **Recall** of a scenario: the share of its label's techniques named by its true alerts.
  **Precision**: true alerts among the alerts belonging to it. Every alert of the normal period
  is a false positive.
- **Time to detect**: from the scenario's start to the earliest ``ics.alert.triggered`` (the
  event time the rule's condition was met) of its true alerts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from soc.event import parse_timestamp

#: The collector's default Modbus response timeout: an unanswered request's event comes then.
RESPONSE_TIMEOUT_US = 5_000_000


@dataclass(frozen=True)
class ScenarioScore:
    """One scenario's figures."""

    scenario: str
    protocol: str
    expected: tuple[str, ...]  # the label's techniques
    alerted: tuple[str, ...]  # the label's techniques its true alerts name
    alerts: int  # alerts belonging to it
    true_alerts: int
    rules: tuple[str, ...]  # titles of the rules of its true alerts
    time_to_detect_s: float | None
    covered: bool  # whether any rule exists for its protocol

    @property
    def precision(self) -> float | None:
        """True alerts among its alerts (None without alerts)."""
        return self.true_alerts / self.alerts if self.alerts else None

    @property
    def recall(self) -> float:
        """Share of the label's techniques alerted."""
        if not self.expected:
            return 1.0
        return len(set(self.expected) & set(self.alerted)) / len(self.expected)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {**asdict(self), "precision": self.precision, "recall": self.recall}


@dataclass(frozen=True)
class Evaluation:
    """Every scenario's score and the normal period's false positives."""

    scenarios: tuple[ScenarioScore, ...]
    normal_alerts: int
    normal_rules: tuple[str, ...]

    @property
    def covered(self) -> tuple[ScenarioScore, ...]:
        """The scenarios of protocols the rule set covers."""
        return tuple(s for s in self.scenarios if s.covered)

    @property
    def precision(self) -> float | None:
        """Over the covered scenarios and the normal period: true alerts among all."""
        alerts = sum(s.alerts for s in self.covered) + self.normal_alerts
        return sum(s.true_alerts for s in self.covered) / alerts if alerts else None

    @property
    def recall(self) -> float | None:
        """Mean recall of the covered scenarios."""
        covered = self.covered
        return sum(s.recall for s in covered) / len(covered) if covered else None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "scenarios": [s.as_dict() for s in self.scenarios],
            "normal": {"alerts": self.normal_alerts, "rules": list(self.normal_rules)},
            "precision": self.precision,
            "recall": self.recall,
        }


def evaluate(
    alerts: Sequence[Mapping[str, Any]],
    event_times: Mapping[str, int],
    labels: Mapping[str, Any],
    services: Iterable[str],
    *,
    timeout_us: int = RESPONSE_TIMEOUT_US,
) -> Evaluation:
    """Score ``alerts`` (ECS alert documents) against ``labels``.

    ``event_times``: µs per event id of the labelled capture; ``services``: the protocols the
    rule set has rules for (the others' scenarios are listed, marked uncovered).
    """
    covered = set(services)
    spans = [
        (doc, [event_times[e] for e in doc["ics"]["alert"]["event_ids"] if e in event_times])
        for doc in alerts
    ]

    def within(start: int, end: int) -> list[Mapping[str, Any]]:
        return [doc for doc, times in spans if any(start <= t <= end for t in times)]

    scenarios = list(labels.get("scenarios", []))
    members = [within(int(x["start_us"]), int(x["end_us"]) + timeout_us) for x in scenarios]
    true_ids = {  # alerts naming a technique of a scenario they touch, about its attacker
        id(doc)
        for label, docs in zip(scenarios, members, strict=True)
        for doc in docs
        if _about(doc, label)
    }
    scores = []
    for label, docs in zip(scenarios, members, strict=True):
        start = int(label["start_us"])
        expected = tuple(sorted(label["techniques"]))
        mine = [d for d in docs if _about(d, label)]
        alerted = tuple(sorted({t for d in mine for t in _techniques(d)} & set(expected)))
        triggers = [
            parse_timestamp(d["ics"]["alert"].get("triggered") or d["@timestamp"]) for d in mine
        ]
        scores.append(
            ScenarioScore(
                label["scenario"],
                label["protocol"],
                expected,
                alerted,
                len(docs),
                sum(id(d) in true_ids for d in docs),
                tuple(sorted({d["rule"]["name"] for d in mine})),
                round(max(0, min(triggers) - start) / 1e6, 3) if triggers else None,
                label["protocol"] in covered,
            )
        )
    normal = labels.get("normal") or {}
    normal_docs = within(int(normal["start_us"]), int(normal["end_us"])) if normal else []
    return Evaluation(
        tuple(scores), len(normal_docs), tuple(sorted({d["rule"]["name"] for d in normal_docs}))
    )


def _techniques(doc: Mapping[str, Any]) -> set[str]:
    return set(doc.get("threat", {}).get("technique", {}).get("id", []))


def _about(doc: Mapping[str, Any], label: Mapping[str, Any]) -> bool:
    """Whether an alert names one of the scenario's techniques and involves its attacker."""
    return label["attacker"] in doc.get("related", {}).get("ip", []) and bool(
        _techniques(doc) & set(label["techniques"])
    )


def format_table(result: Evaluation) -> list[str]:
    """The per-scenario table ``soc rules evaluate`` prints."""
    lines = [
        f"{'scenario':32} {'expected':14} {'alerted':14} {'alerts':>6} {'prec.':>6}"
        f" {'recall':>6} {'detect':>7}"
    ]
    for s in result.scenarios:
        if not s.covered:
            lines.append(f"{s.scenario:32} {','.join(s.expected):14} (no {s.protocol} rules yet)")
            continue
        precision = f"{s.precision:.2f}" if s.precision is not None else "-"
        ttd = f"{s.time_to_detect_s:.2f}s" if s.time_to_detect_s is not None else "-"
        lines.append(
            f"{s.scenario:32} {','.join(s.expected):14} {','.join(s.alerted) or '-':14}"
            f" {s.alerts:6} {precision:>6} {s.recall:6.2f} {ttd:>7}"
        )
    lines.append(
        f"normal period: {result.normal_alerts} alerts (false positives)"
        + (f": {', '.join(result.normal_rules)}" if result.normal_rules else "")
    )
    precision = f"{result.precision:.3f}" if result.precision is not None else "-"
    recall = f"{result.recall:.3f}" if result.recall is not None else "-"
    lines.append(
        f"covered scenarios ({len(result.covered)} of {len(result.scenarios)}):"
        f" precision {precision}, recall {recall}"
    )
    return lines
