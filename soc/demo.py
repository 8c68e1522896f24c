"""``soc demo``: the main job on the embedded default, end to end, in about two minutes.

1. The lab runs (:mod:`lab.run`): the plant, meters and sensors, a normal period, then attacks.
2. Its loopback traffic is collected live into the SQLite store as it happens (the capture
   thread hands each batch of frames to the collector); without capture permission, the lab
   still runs and the committed reference capture (``lab/reference/``) is collected instead.
3. The Sigma rules run inline while the events are stored (``soc collect --detect``: every
   second, and once more at the end), each new alert said as it is raised; then the demo prints
   what to look at: events per dataset, the hosts found (the attacker among them), the alerts per rule, for
   each attack the events it left and the ATT&CK techniques alerted against its label, and
   ready-to-paste commands.

Everything the demo starts (servers, clients, capture, writer process) is stopped before it
returns, on success, on error and on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from collectors.capture import Frame
from collectors.pipeline import Collector
from collectors.run import StoreSink, collect_files
from lab.base import LabSite
from lab.run import LabResult, resolve_scenarios, run_lab
from soc.config import Settings
from soc.store.base import AlertQuery, AssetQuery, EventQuery, open_store
from soc.store.sqlite import SQLiteStore
from soc.store.sqlite_incidents import IncidentQuery, IncidentTables

REFERENCE = Path(__file__).resolve().parents[1] / "lab" / "reference"


@dataclass
class DemoReport:
    """What the demo found, for printing."""

    source: str  # "live capture" or the reference capture's path
    lab: LabResult | None
    summary: dict[str, Any]
    datasets: list[tuple[Any, int]]
    assets: list[dict[str, Any]]
    attacks: list[dict[str, Any]] = field(default_factory=list)
    alerts_by_rule: list[tuple[str, str, int]] = field(default_factory=list)  # rule, title, n
    detection_s: float = 0.0
    incidents: list[dict[str, Any]] = field(default_factory=list)


def run_demo(
    settings: Settings,
    *,
    normal_s: float = 20.0,
    gap_s: float = 2.0,
    scenarios: tuple[str, ...] = ("all",),
    out: Path | None = None,
    say: Callable[[str], None] = print,
) -> DemoReport:
    """Run the lab, collect its traffic into the store, and report what was seen."""
    site = LabSite()
    collect = replace(
        settings.collect,
        modbus_ports=tuple(sorted({*settings.collect.modbus_ports, site.modbus_port})),
    )
    out = out or settings.data_dir / "lab" / time.strftime("%Y%m%dT%H%M%S")
    collector = Collector(collect)
    collector.source = "live:lo"
    sink = StoreSink(settings)
    try:
        inline = _inline(settings, say)
    except BaseException:
        sink.close()
        raise
    lock = threading.Lock()

    def consume(batch: list[Frame]) -> None:
        with lock:
            collector.frames(batch)
            sink.write(collector.take())

    names = resolve_scenarios(scenarios)
    capture = os.geteuid() == 0
    lab: LabResult | None = None
    source = "live capture of loopback"
    try:
        if not capture:
            say("capturing loopback needs root: the lab runs, and the reference capture is used")
        lab = asyncio.run(
            run_lab(
                site,
                names,
                out,
                normal_s=normal_s,
                gap_s=gap_s,
                capture=capture,
                progress=say,
                consumer=consume,
            )
        )
        if lab.capture is None:
            reference = REFERENCE / "capture.pcap.gz"
            source = str(reference)
            say(f"collecting the reference capture {reference.name}")
            collector.source = str(reference)
            collect_files([reference], collector, sink)
        with lock:
            collector.finish()
            sink.write(collector.take())
    finally:
        try:
            sink.close()
        finally:
            inline.finish()  # the writer stored everything: the last events' alerts
            inline.close()
    summary = collector.stats.summary()
    summary["stored"] = {"written": sink.written, "duplicates": sink.duplicates}
    labels = lab.labels if lab is not None and lab.capture is not None else _reference_labels()
    report = _report(settings, source, lab, summary, labels, site)
    report.detection_s = inline.seconds
    return report


def _inline(settings: Settings, say: Callable[[str], None]) -> Any:
    """Detection inline with the collection (``soc collect --detect``), saying each new alert."""
    from detectors.inline import InlineDetection
    from detectors.runner import RunSummary, load_plans

    plans = load_plans(None, settings.detect.site)
    titles = {plan.id: plan.rule.title for plan in plans}

    def show(summary: RunSummary) -> None:
        for rule_id, n in sorted(summary.created.items(), key=lambda kv: titles[kv[0]]):
            say(f"  alert: {n} new  {titles[rule_id]}")

    return InlineDetection(settings, plans, interval=1.0, on_run=show).__enter__()


def _reference_labels() -> list[Any]:
    import orjson

    from lab.base import Label

    path = REFERENCE / "labels.json"
    if not path.exists():
        return []
    return [Label(**row) for row in orjson.loads(path.read_bytes())["scenarios"]]


def _rules(settings: Settings) -> dict[str, tuple[str, list[str]]]:
    """Rule id -> (title, techniques)."""
    from detectors.sigma import compile_rules

    return {r.id: (r.title, list(r.techniques)) for r in compile_rules(None, settings.detect.site)}


def _report(
    settings: Settings,
    source: str,
    lab: LabResult | None,
    summary: dict[str, Any],
    labels: list[Any],
    site: LabSite,
) -> DemoReport:
    rules = _rules(settings)
    store = open_store(settings)
    try:
        alerts = store.query_alerts(AlertQuery(limit=100_000))
        per_rule: dict[str, int] = {}
        for alert in alerts:
            per_rule[alert.rule_id] = per_rule.get(alert.rule_id, 0) + 1
        datasets = store.count_events(EventQuery(limit=1), by="event.dataset")
        assets = [dict(a) for a in store.list_assets(AssetQuery())]
        attacks = []
        for label in labels:
            window = EventQuery(
                start_us=label.start_us,
                end_us=label.end_us + 1_000_000,
                where=(("related.ip", (label.attacker,)),),
                limit=1,
            )
            by_action = store.count_events(window, by="event.action")
            techniques = sorted(
                {
                    t
                    for a in alerts
                    if label.start_us <= a.ts <= label.end_us + 6_000_000  # raised in it
                    and label.attacker in a.doc.get("related", {}).get("ip", [])
                    for t in rules.get(a.rule_id, ("", []))[1]
                }
            )
            attacks.append(
                {
                    "scenario": label.scenario,
                    "protocol": label.protocol,
                    "techniques": label.techniques,
                    "outcome": label.outcome,
                    "events": sum(n for _, n in by_action),
                    "actions": by_action[:4],
                    "alerted": techniques,
                }
            )
        incidents: list[dict[str, Any]] = []
        if isinstance(store, SQLiteStore):
            incidents, _ = IncidentTables(store).list_incidents(IncidentQuery(limit=20))
    finally:
        store.close()
    by_rule = sorted(
        ((rid, rules.get(rid, (rid, []))[0], n) for rid, n in per_rule.items()),
        key=lambda item: -item[2],
    )
    return DemoReport(source, lab, summary, datasets, assets, attacks, by_rule, incidents=incidents)


#: The demo's accounts: name -> (roles, sites, what it shows).
DEMO_ACCOUNTS = {
    "analyst": (["analyst"], [], "every incident, alert and asset"),
    "engineer": (["engineer"], ["water_plant"], "the water plant's incidents only"),
    "auditor": (["auditor"], [], "rules, reports and the audit trail"),
}


def demo_accounts(settings: Settings) -> dict[str, tuple[str, str]]:
    """Create (or reset) the demo accounts with new random passwords: name -> (password, what
    it shows)."""
    import secrets

    from soc.access import hash_password
    from soc.store.sqlite import SQLiteStore
    from soc.store.sqlite_access import AccessTables

    out = {}
    now = time.time_ns() // 1000
    with SQLiteStore.from_settings(settings) as store:
        access = AccessTables(store)
        for name, (roles, sites, what) in DEMO_ACCOUNTS.items():
            password = secrets.token_urlsafe(12)
            hashed = hash_password(password)
            if not access.add_user(name, hashed, roles, sites, now):
                access.set_password(name, hashed)
                access.set_grants(name, roles, sites)
                access.set_disabled(name, False)
            out[name] = (password, what)
    return out
