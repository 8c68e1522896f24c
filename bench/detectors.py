"""Benchmark: learning mode and the communication-pattern detector on an hour of traffic,
beside the collector's own rate, in the same run.

    python -m bench.detectors [--hours 1]

The lab reference capture's labelled normal period (10 s of the plant, meters and sensors) is
repeated, shifted in time, to make N hours of normal traffic (its event ids made unique per
copy); a second hour, the same again with the capture's attacks appended, is what is scored.
Measured, in process, one core:
- the collector on the reference capture (events/s): the rate detection must keep up with;
- learning mode: ``learn`` over the hour, ``check`` of the second hour (events/s);
- the communication-pattern detector: windows and training over the hour (the issue's target:
  under a minute), windows and scoring of the second hour (events/s).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from detectors.baseline import check, learn
from detectors.ml.communication import CommunicationModel
from detectors.ml.features import windows
from detectors.runner import collect_captures
from soc.event import format_timestamp, parse_timestamp

REFERENCE = Path(__file__).resolve().parents[1] / "lab" / "reference"


def shifted(events: list[dict[str, Any]], copies: int, span_us: int, offset_us: int) -> list[Any]:
    """``copies`` copies of ``events``, each ``span_us`` later than the previous, ids unique."""
    out = []
    for copy in range(copies):
        shift = offset_us + copy * span_us
        for doc in events:
            ts = parse_timestamp(doc["@timestamp"]) + shift
            event = {**doc["event"], "id": f"{doc['event']['id']}-{copy}"}
            out.append({**doc, "@timestamp": format_timestamp(ts), "event": event})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=1.0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    labels = json.loads((REFERENCE / "labels.json").read_text())
    start = time.perf_counter()
    events = collect_captures([REFERENCE / "capture.pcap.gz"])
    collect_s = time.perf_counter() - start
    collector_rate = len(events) / collect_s
    n0, n1 = labels["normal"]["start_us"], labels["normal"]["end_us"]
    normal = [e for e in events if n0 <= parse_timestamp(e["@timestamp"]) < n1]
    attacks = [e for e in events if parse_timestamp(e["@timestamp"]) >= n1]
    span = n1 - n0
    copies = max(1, round(args.hours * 3600e6 / span))
    hour = shifted(normal, copies, span, 0)
    later = shifted(normal, copies, span, copies * span) + shifted(attacks, 1, 0, 2 * copies * span)
    print(f"{len(hour):,} events of normal traffic ({copies:,} copies of the {span / 1e6:g} s "
          f"normal period: {copies * span / 3.6e9:.2f} h); {len(later):,} events scored")  # fmt: skip
    print(f"\n{'':44} {'seconds':>8} {'events/s':>10}")
    print(
        f"{'collector (soc collect, reference capture)':44} {collect_s:8.2f} {collector_rate:10,.0f}"
    )

    t = time.perf_counter()
    baseline = learn("lab", hour)
    learn_s = time.perf_counter() - t
    t = time.perf_counter()
    findings = check(baseline, later)
    check_s = time.perf_counter() - t
    print(f"{'learning mode: learn the hour':44} {learn_s:8.2f} {len(hour) / learn_s:10,.0f}")
    print(f"{'learning mode: check the next':44} {check_s:8.2f} {len(later) / check_s:10,.0f}"
          f"   ({len(findings):,} findings)")  # fmt: skip

    t = time.perf_counter()
    model = CommunicationModel().train(windows(hour, 10.0))
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    scored = model.score(windows(later, 10.0))
    score_s = time.perf_counter() - t
    anomalous = sum(s.anomalous for s in scored)
    print(
        f"{'ML: windows and training on the hour':44} {train_s:8.2f} {len(hour) / train_s:10,.0f}"
    )
    print(f"{'ML: windows and scoring of the next':44} {score_s:8.2f} {len(later) / score_s:10,.0f}"
          f"   ({len(scored):,} windows, {anomalous:,} anomalous)")  # fmt: skip
    print("\ntargets:")
    print(f"  training on {copies * span / 3.6e9:.2f} h within a minute: {train_s:.1f} s "
          f"{'met' if train_s < 60 else 'NOT met'}")  # fmt: skip
    for name, rate in (("learning mode check", len(later) / check_s),
                       ("ML scoring", len(later) / score_s)):  # fmt: skip
        verdict = "met" if rate >= collector_rate else "NOT met"
        print(f"  {name} keeps up with the collector: {rate:,.0f} vs {collector_rate:,.0f} "
              f"events/s {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
