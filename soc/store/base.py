"""The store interface every backend implements, and the query types it takes."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from soc.assets import ROLE_ALIASES, AssetDoc, network_range
from soc.errors import StoreError
from soc.types import Event

if TYPE_CHECKING:
    from soc.config import Settings

#: A field name a query may name: dotted ECS paths, ``@timestamp``.
FIELD_NAME = re.compile(r"^@?[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def check_field_name(name: str) -> str:
    """``name`` when it is a dotted field name, else a ``StoreError`` (names reach the SQL)."""
    if not FIELD_NAME.match(name):
        raise StoreError(f"not a field name: {name!r}", location="query")
    return name


@dataclass(frozen=True)
class EventQuery:
    """Which events to read: a time range, datasets, and field values (all must match).

    ``where`` maps a dotted field to the values it may take (any of them). A field holding a list
    (``related.ip``) matches when any element matches, as in Elasticsearch.
    """

    start_us: int | None = None  # inclusive, microseconds since the epoch
    end_us: int | None = None  # exclusive
    datasets: tuple[str, ...] = ()
    where: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    limit: int = 100
    cursor: str | None = None

    def __post_init__(self) -> None:
        for name, values in self.where:
            check_field_name(name)
            if not values:
                raise StoreError(f"no value given for {name}", location="query")
        if self.limit < 1:
            raise StoreError("limit must be at least 1", location="query")


@dataclass(frozen=True)
class AssetQuery:
    """Which assets to list: an address or network (``10.0.0.0/24``), a role, a protocol.

    ``role`` is ``client`` or ``server`` (``master`` and ``slave`` are accepted for Modbus's
    names); with ``protocol`` too, the asset must play that role in that protocol.
    """

    network: str | None = None
    role: str | None = None
    protocol: str | None = None

    def __post_init__(self) -> None:
        if self.network is not None:
            try:
                network_range(self.network)
            except ValueError:
                raise StoreError(
                    f"not an IP address or network: {self.network!r}", location="query.network"
                ) from None
        if self.role is not None:
            if self.role not in ROLE_ALIASES:
                raise StoreError(
                    f"unknown role {self.role!r} (client, server, master or slave)",
                    location="query.role",
                )
            object.__setattr__(self, "role", ROLE_ALIASES[self.role])


@dataclass(frozen=True)
class Page:
    """One page of events, in time order, and the cursor of the next page (``None`` at the end)."""

    events: list[Event]
    next_cursor: str | None


@dataclass
class WriteResult:
    """What a write did: events stored, and events already present (same ``event.id``)."""

    written: int = 0
    duplicates: int = 0
    batches: int = 0

    def add(self, other: WriteResult) -> None:
        """Fold another batch's result into this one."""
        self.written += other.written
        self.duplicates += other.duplicates
        self.batches += other.batches


@dataclass(frozen=True)
class StoreInfo:
    """What ``soc store info`` shows."""

    backend: str
    location: str
    schema: list[str]
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AlertRow:
    """One stored alert: its ECS document and the columns detection finds it by.

    ``group_key`` is the JSON text of the rule's normalised group-by values; ``ts`` and ``end_ts``
    (µs) the alert's first event and the end of its last window.
    """

    id: str
    rule_id: str
    group_key: str
    ts: int
    end_ts: int
    severity: int
    doc: dict[str, Any]


@dataclass(frozen=True)
class AlertQuery:
    """Which alerts to list: a rule, a time range (on the alert's first event), newest first."""

    rule_id: str | None = None
    start_us: int | None = None
    end_us: int | None = None
    limit: int = 100

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise StoreError("limit must be at least 1", location="query")


class EventStore(Protocol):
    """What the collectors, detectors and the API need from a store."""

    def write_events(self, events: Iterable[Event]) -> WriteResult:
        """Store events in batches; each batch is all or nothing; known ids are skipped."""
        ...

    def prepare(self, events: Iterable[Event], position: int = 0) -> Sequence[Any]:
        """Validate and serialise events into what :meth:`write_prepared` stores (picklable)."""
        ...

    def write_prepared(self, prepared: Sequence[Any]) -> WriteResult:
        """Store what :meth:`prepare` made; the writer process's half of a write."""
        ...

    def query_events(self, query: EventQuery) -> Page:
        """One page of matching events in (time, arrival) order."""
        ...

    def count_events(self, query: EventQuery, by: str | None = None) -> list[tuple[Any, int]]:
        """Matching events counted by the values of a field (one row ``(None, n)`` without one)."""
        ...

    def upsert_assets(self, docs: Iterable[AssetDoc], *, replace: bool = False) -> int:
        """Merge asset documents into the stored ones (:func:`soc.assets.merge`), in one
        transaction; ``replace`` empties the table first, in the same transaction. Returns the
        number of assets written."""
        ...

    def list_assets(self, query: AssetQuery) -> list[AssetDoc]:
        """The stored assets that match, ordered by address."""
        ...

    def query_alerts(self, query: AlertQuery) -> list[AlertRow]:
        """The stored alerts that match, newest first."""
        ...

    def info(self) -> StoreInfo:
        """Backend, location, applied migrations, rows per table."""
        ...

    def check(self) -> list[str]:
        """Problems found by the backend's integrity check; ``["ok"]`` when sound."""
        ...

    def optimize(self) -> None:
        """Refresh the statistics the backend plans queries with."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


def iter_events(store: EventStore, query: EventQuery) -> Iterator[Event]:
    """Every matching event, following the cursors page by page."""
    while True:
        page = store.query_events(query)
        yield from page.events
        if page.next_cursor is None:
            return
        query = replace(query, cursor=page.next_cursor)


def encode_cursor(*parts: int) -> str:
    """An opaque pagination cursor from integers."""
    text = ":".join(str(p) for p in parts)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> tuple[int, ...]:
    """The integers of a cursor made by :func:`encode_cursor`; a bad one is a ``StoreError``."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        parts = tuple(int(p) for p in text.split(":"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError("not a valid cursor", location="query.cursor") from exc
    if len(parts) != arity:
        raise StoreError("not a valid cursor", location="query.cursor")
    return parts


def prepare_function(settings: Settings) -> Callable[[Iterable[Event], int], Sequence[Any]]:
    """The configured backend's pure ``prepare`` step, usable without opening the store."""
    if settings.store.backend == "sqlite":
        from soc.store.sqlite import prepare_rows

        return prepare_rows
    raise StoreError(
        f"the {settings.store.backend} backend is not available in this version",
        location="store.backend",
    )


def open_store(settings: Settings, *, create: bool = True) -> EventStore:
    """Open the configured backend (``store.backend``); ``create=False``: a missing store is a
    ``StoreError`` instead of a new, empty one."""
    if settings.store.backend == "sqlite":
        from soc.store.sqlite import SQLiteStore

        if not create and not settings.sqlite_path.exists():
            raise StoreError(
                "no store here yet: fill it with `soc collect` or `soc events ingest`"
                " (or create it with `soc store init`)",
                location=str(settings.sqlite_path),
            )
        return SQLiteStore.from_settings(settings)
    raise StoreError(
        f"the {settings.store.backend} backend is not available in this version",
        location="store.backend",
    )
