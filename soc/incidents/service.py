"""Incidents over the store: correlating new alerts, and the workflow an analyst drives.

**Correlation** (:func:`correlate_store`): the alerts not yet in an incident, oldest first, are
folded (:func:`soc.incidents.correlate.correlate`) into the open incidents whose latest alert is
within the window; the result is stored in one transaction, and new or escalated incidents are
handed to a notifier (which never blocks). Runs after each detection run (``soc detect``,
``soc collect --detect``) and by itself (``soc incidents correlate``).

**Workflow** (:func:`change_incident`)::

    new ──► acknowledged ──► investigating ──► resolved
     │            │                │              │
     └────────────┴────────────────┴──► false_positive
    resolved, false_positive ──► investigating (reopened)

Every change (status, owner, comment) is a timeline note and an audit row, written with the new
document in one transaction. A status change that the diagram does not allow is an
:class:`IncidentError` naming the field.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from soc.config import Settings
from soc.errors import IncidentError
from soc.incidents.correlate import STATUSES, Outcome, SiteMap, correlate, iso
from soc.store.sqlite_incidents import IncidentTables

#: Allowed status changes.
TRANSITIONS: Mapping[str, frozenset[str]] = {
    "new": frozenset({"acknowledged", "investigating", "resolved", "false_positive"}),
    "acknowledged": frozenset({"investigating", "resolved", "false_positive"}),
    "investigating": frozenset({"resolved", "false_positive"}),
    "resolved": frozenset({"investigating"}),
    "false_positive": frozenset({"investigating"}),
}
#: Alerts read per correlation pass (memory stays bounded; the next pass takes the rest).
BATCH_ALERTS = 10_000
MAX_COMMENT = 10_000


@dataclass(frozen=True)
class CorrelationSummary:
    """What one :func:`correlate_store` did."""

    alerts: int
    created: int
    updated: int
    escalated: int


def site_map(settings: Settings) -> SiteMap:
    """The configured sites and criticality levels."""
    return SiteMap(settings.incidents.sites, settings.incidents.criticality)


def correlate_store(
    tables: IncidentTables,
    settings: Settings,
    tactic_order: Mapping[str, int],
    *,
    notify: Callable[[Mapping[str, Any], str], None] | None = None,
    now_us: int | None = None,
) -> CorrelationSummary:
    """Correlate every alert not yet in an incident (see the module's documentation)."""
    sites = site_map(settings)
    window = settings.incidents.window_s * 1_000_000
    totals = [0, 0, 0, 0]
    while True:
        alerts = tables.uncorrelated_alerts(BATCH_ALERTS)
        if not alerts:
            break
        now = now_us if now_us is not None else int(time.time() * 1e6)
        earliest = min(a.ts for a in alerts)
        outcome = correlate(
            alerts,
            tables.open_incidents(earliest - window),
            sites,
            window_us=window,
            tactic_order=tactic_order,
            now_us=now,
        )
        tables.save_correlation(outcome, now)
        _notify(outcome, notify)
        totals[0] += len(alerts)
        totals[1] += len(outcome.created)
        totals[2] += len(outcome.incidents) - len(outcome.created)
        totals[3] += len(outcome.escalated)
        if len(alerts) < BATCH_ALERTS:
            break
    return CorrelationSummary(*totals)


def _notify(outcome: Outcome, notify: Callable[[Mapping[str, Any], str], None] | None) -> None:
    if notify is None:
        return
    for ident, incident in outcome.incidents.items():
        if ident in outcome.created:
            notify(incident.doc(), "created")
        elif ident in outcome.escalated:
            notify(incident.doc(), "escalated")


def change_incident(
    tables: IncidentTables,
    incident_id: str,
    actor: str,
    *,
    status: str | None = None,
    owner: str | None = None,
    unassign: bool = False,
    comment: str | None = None,
    now_us: int | None = None,
) -> dict[str, Any]:
    """Apply a status change, an owner change and/or a comment; returns the new document.

    ``unassign`` clears the owner. Raises :class:`IncidentError` for an unknown incident
    (``location="incident"``), a status the workflow does not allow (``"status"``) or an empty
    or oversized comment (``"comment"``).
    """
    doc = tables.get_incident(incident_id)
    if doc is None:
        raise IncidentError(f"no incident {incident_id}", location="incident")
    now = now_us if now_us is not None else int(time.time() * 1e6)
    notes: list[tuple[str, Mapping[str, Any]]] = []
    changed: dict[str, Any] = {}
    if status is not None and status != doc["status"]:
        if status not in STATUSES:
            raise IncidentError(
                f"unknown status {status!r} (one of {', '.join(STATUSES)})", location="status"
            )
        if status not in TRANSITIONS[doc["status"]]:
            allowed = ", ".join(sorted(TRANSITIONS[doc["status"]])) or "none"
            raise IncidentError(
                f"an incident {doc['status']} cannot become {status} (allowed: {allowed})",
                location="status",
            )
        notes.append(("status", {"from": doc["status"], "to": status}))
        changed["status"] = {"from": doc["status"], "to": status}
        doc["status"] = status
    new_owner = None if unassign else owner
    if (unassign or owner is not None) and new_owner != doc.get("owner"):
        notes.append(("owner", {"from": doc.get("owner"), "to": new_owner}))
        changed["owner"] = {"from": doc.get("owner"), "to": new_owner}
        doc["owner"] = new_owner
    if comment is not None:
        text = comment.strip()
        if not text or len(text) > MAX_COMMENT:
            raise IncidentError(
                f"a comment has 1 to {MAX_COMMENT:,} characters", location="comment"
            )
        notes.append(("comment", {"text": text}))
        changed["comment"] = True
    if not notes:
        return doc
    doc["updated"] = iso(now)
    action = "comment" if set(changed) == {"comment"} else "update"
    tables.save_change(doc, notes, actor, now, (action, changed))
    return doc


class Correlator:
    """Correlation after each detection run, on a store's connection, notifying new and
    escalated incidents (when ``[notify]`` names a webhook or a syslog receiver)."""

    def __init__(
        self, tables: IncidentTables, settings: Settings, tactic_order: Mapping[str, int]
    ) -> None:
        from soc.incidents.notify import Notifier

        self.tables = tables
        self.settings = settings
        self.tactic_order = tactic_order
        notify = settings.notify
        wanted = notify.webhook_url is not None or notify.syslog_address is not None
        self.notifier = Notifier(notify) if wanted else None

    def run(self) -> CorrelationSummary:
        """Correlate the alerts not yet in an incident."""
        return correlate_store(
            self.tables,
            self.settings,
            self.tactic_order,
            notify=self.notifier.notify if self.notifier is not None else None,
        )

    def close(self) -> None:
        """Deliver what notifications are queued (a few seconds at most) and stop."""
        if self.notifier is not None:
            self.notifier.close()
