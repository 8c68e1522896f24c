"""What routes share: the settings, a store connection per worker thread, the clock.

FastAPI runs plain ``def`` routes and dependencies on a thread pool, each call possibly on another
thread; so a connection is never handed from a dependency to a route: whoever reads the store
calls :meth:`AppState.tables` on its own thread, which opens that thread's connection to the
SQLite store the first time (WAL: readers never wait for the writer).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from soc.config import Settings
from soc.store.sqlite import SQLiteStore
from soc.store.sqlite_access import AccessTables
from soc.store.sqlite_incidents import IncidentTables


@dataclass
class Tables:
    """One thread's store and the table groups over it."""

    store: SQLiteStore
    incidents: IncidentTables
    access: AccessTables


@dataclass
class AppState:
    """Held by the app (``app.state.soc``)."""

    settings: Settings
    secret: bytes
    local: threading.local = field(default_factory=threading.local)
    opened: list[SQLiteStore] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    cache: dict[str, Any] = field(default_factory=dict)
    generation: int = 0  # bumped by close(): a thread's older connection is closed

    def tables(self) -> Tables:
        """This thread's tables (opened on first use, and again after :meth:`close`)."""
        tables: Tables | None = getattr(self.local, "tables", None)
        if tables is None or getattr(self.local, "generation", -1) != self.generation:
            store = SQLiteStore.from_settings(self.settings)
            tables = Tables(store, IncidentTables(store), AccessTables(store))
            with self.lock:
                self.opened.append(store)
                self.local.tables, self.local.generation = tables, self.generation
        return tables

    def close(self) -> None:
        """Close every thread's connection (at shutdown; a later request opens anew)."""
        with self.lock:
            for store in self.opened:
                store.close()
            self.opened.clear()
            self.generation += 1


def state(request: Request) -> AppState:
    """The app's state."""
    found: AppState = request.app.state.soc
    return found


def now_us() -> int:
    """The time, µs since the epoch."""
    return time.time_ns() // 1000
