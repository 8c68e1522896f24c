"""Detection inline with collection (``soc collect --detect``).

A thread beside the collector runs :meth:`detectors.runner.Detector.run_once` on the store every
``interval`` seconds, then correlates the new alerts into incidents
(:class:`soc.incidents.service.Correlator`, which also sends the notifications), on its own connection, while the store writer process stores the events;
when collection ends (the writer flushed everything), one last run covers the remaining events.
Alerts are the same as ``soc detect``'s (same checkpoints: running ``soc detect`` afterwards finds
nothing new). A failing run (the store busy or full) is reported and retried at the next
interval; it never stops the collection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from detectors.attack import tactic_order
from detectors.runner import Detector, RulePlan, RunSummary
from soc.config import Settings
from soc.errors import SocError
from soc.incidents.service import Correlator
from soc.store.sqlite import SQLiteStore
from soc.store.sqlite_incidents import IncidentTables

log = logging.getLogger(__name__)


@dataclass
class InlineTotals:
    """What the inline runs did, over the whole collection."""

    runs: int = 0
    failures: int = 0
    seconds: float = 0.0  # spent in the runs
    created: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    incidents_created: int = 0
    incidents_updated: int = 0
    last_error: str | None = None

    def add(self, summary: RunSummary) -> None:
        """Count one run's alerts."""
        self.runs += 1
        self.seconds += summary.seconds
        for rule, n in summary.created.items():
            self.created[rule] = self.created.get(rule, 0) + n
        for rule, n in summary.updated.items():
            self.updated[rule] = self.updated.get(rule, 0) + n


class InlineDetection:
    """Detection over the store on a thread while collecting (see the module's documentation).

    ``on_run`` receives each run's summary (the CLI prints the new alerts as they come).
    """

    def __init__(
        self,
        settings: Settings,
        plans: Sequence[RulePlan],
        *,
        interval: float = 1.0,
        on_run: Callable[[RunSummary], None] | None = None,
    ) -> None:
        self.settings = settings
        self.plans = list(plans)
        self.interval = interval
        self.on_run = on_run
        self.totals = InlineTotals()
        self._stop = threading.Event()
        self._store = SQLiteStore.from_settings(settings)
        self._detector = Detector(self._store, self.plans)
        self._correlator = Correlator(
            IncidentTables(self._store), settings, tactic_order(self._detector.table)
        )
        self._thread = threading.Thread(target=self._loop, name="inline-detection", daemon=True)

    def __enter__(self) -> InlineDetection:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.run()

    def run(self) -> RunSummary | None:
        """One run over the events stored since the last; None when it failed (reported)."""
        try:
            summary = self._detector.run_once()
            incidents = self._correlator.run()
        except SocError as exc:
            self.totals.failures += 1
            self.totals.last_error = str(exc)
            log.warning("inline detection failed, retrying in %.1f s: %s", self.interval, exc)
            return None
        self.totals.add(summary)
        self.totals.incidents_created += incidents.created
        self.totals.incidents_updated += incidents.updated
        if self.on_run is not None:
            self.on_run(summary)
        return summary

    @property
    def seconds(self) -> float:
        """Time spent detecting, over all runs."""
        return self.totals.seconds

    def finish(self) -> None:
        """Stop the periodic runs and run once more over what is left (call after the writer
        has flushed the last events)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.run()

    def close(self) -> None:
        """Stop the thread (without a last run if :meth:`finish` was not called) and release
        the store."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._correlator.close()
        self._store.close()
