"""The embedded store: one SQLite file in WAL mode, batched transactional writes.

SQLite is driven through APSW, which bundles a current SQLite (JSONB, a JSON parse cache, faster
``executemany``) instead of whatever the system's Python was built with; the file stays a plain
SQLite database any tool can open.

Writes go in batches of ``store.batch_size`` events; each batch is one transaction, so a batch is
stored whole or not at all, even if the process is killed. ``INSERT OR IGNORE`` on the unique
``event.id`` makes re-ingesting the same capture a no-op. Reads page with a keyset cursor on
(time, arrival order), which stays stable while new events arrive.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import apsw
import orjson

from soc.assets import AssetDoc, ip_sort_key, merge, network_range, parse_seen, role_tokens
from soc.errors import StoreError
from soc.event import get_field, missing_fields, parse_timestamp
from soc.store.base import (
    AlertQuery,
    AlertRow,
    AssetQuery,
    EventQuery,
    Page,
    StoreInfo,
    WriteResult,
    check_field_name,
    decode_cursor,
    encode_cursor,
)
from soc.store.migrations import MIGRATIONS, PROMOTED_FIELDS
from soc.types import Event

if TYPE_CHECKING:
    from soc.config import Settings

_COLUMNS = {"@timestamp": "ts", "event.id": "id", "event.dataset": "dataset", **PROMOTED_FIELDS}
_PROMOTED_PATHS = tuple(tuple(f.split(".")) for f in PROMOTED_FIELDS)
Row = tuple[Any, ...]
"""One row of the ``events`` table, as :func:`prepare_rows` makes it."""
_INSERT_COLUMNS = ("id", "ts", "dataset", *PROMOTED_FIELDS.values(), "doc")
_INSERT = f"INSERT OR IGNORE INTO events ({', '.join(_INSERT_COLUMNS)}) VALUES ({', '.join('?' * len(_INSERT_COLUMNS))})"  # noqa: S608
_TABLES = (
    "events",
    "alerts",
    "incidents",
    "assets",
    "energy_readings",
    "wellbeing_observations",
    "users",
    "audit",
)


class SQLiteStore:
    """The SQLite backend of :class:`soc.store.base.EventStore`."""

    backend = "sqlite"

    def __init__(
        self,
        path: Path | str,
        *,
        batch_size: int = 5000,
        busy_timeout_ms: int = 5000,
        synchronous: str = "NORMAL",
        cache_mb: int = 64,
        page_size: int = 16384,
    ) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.busy_timeout_ms = busy_timeout_ms
        self._conn = self._connect(synchronous, cache_mb, page_size)
        with self._errors("migrating the schema"):
            self._migrate()

    @classmethod
    def from_settings(cls, settings: Settings) -> SQLiteStore:
        """Open the store the configuration names."""
        return cls(
            settings.sqlite_path,
            batch_size=settings.store.batch_size,
            busy_timeout_ms=settings.sqlite.busy_timeout_ms,
            synchronous=settings.sqlite.synchronous,
            cache_mb=settings.sqlite.cache_mb,
            page_size=settings.sqlite.page_size,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._conn.close()

    # -- connection and schema ------------------------------------------------------------

    def _connect(self, synchronous: str, cache_mb: int, page_size: int) -> apsw.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the data directory: {exc.strerror}", location=str(self.path.parent)
            ) from exc
        with self._errors("opening"):
            conn = apsw.Connection(str(self.path))
            self._conn = conn
            conn.set_busy_timeout(int(self.busy_timeout_ms))
            conn.execute(f"PRAGMA page_size = {int(page_size)}")  # only takes on a new file
            mode = str(conn.execute("PRAGMA journal_mode = WAL").get)
            if mode.lower() != "wal":
                raise StoreError(f"cannot switch to WAL mode (got {mode})", location=str(self.path))
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute(f"PRAGMA cache_size = {-int(cache_mb) * 1024}")
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _migrate(self) -> None:
        conn = self._conn
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        applied = {row[0] for row in conn.execute("SELECT name FROM _migrations")}
        unknown = applied - {m.name for m in MIGRATIONS}
        if unknown:
            raise StoreError(
                f"the database has migrations this version does not know ({', '.join(sorted(unknown))}):"
                " it was written by a newer version",
                location=str(self.path),
            )
        for migration in MIGRATIONS:
            if migration.name in applied:
                continue
            with self._transaction():
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                    (migration.name, datetime.now(UTC).isoformat()),
                )
            conn.execute("ANALYZE")

    def applied_migrations(self) -> list[str]:
        """Names of the migrations applied to this database, in order."""
        with self._errors("reading the schema"):
            return [r[0] for r in self._conn.execute("SELECT name FROM _migrations ORDER BY name")]

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn SQLite's exceptions into a ``StoreError`` that names the file and what failed."""
        try:
            yield
        except apsw.Error as exc:
            raise StoreError(
                _explain(exc, doing, self.busy_timeout_ms), location=str(self.path)
            ) from exc

    # -- events -----------------------------------------------------------------------------

    def write_events(self, events: Iterable[Event]) -> WriteResult:
        """Store events in batches of ``batch_size``, each in one transaction.

        A batch that fails is rolled back whole and raises ``StoreError``; batches before it stay.
        """
        total = WriteResult()
        iterator = iter(events)
        while batch := list(itertools.islice(iterator, self.batch_size)):
            total.add(self.write_prepared(prepare_rows(batch, total.written + total.duplicates)))
        return total

    @staticmethod
    def prepare(events: Iterable[Event], position: int = 0) -> list[Row]:
        """Rows for :meth:`write_prepared`; see :func:`prepare_rows`."""
        return prepare_rows(events, position)

    def write_prepared(self, rows: Sequence[Row]) -> WriteResult:
        """Store rows made by :func:`prepare_rows` in one transaction per ``batch_size`` rows.

        This is the writer's half of the split the collectors use: the parsing process validates
        and serialises events into rows, a writer process (:mod:`soc.store.writer`) only inserts.
        """
        total = WriteResult()
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            with self._errors(f"writing a batch of {len(chunk)} events"), self._transaction():
                before = self._last_seq()
                self._conn.executemany(_INSERT, chunk)
                # new rows take the next seq; triggers' rows (meter readings) are not counted
                written = self._last_seq() - before
            total.add(WriteResult(written, len(chunk) - written, 1))
        return total

    def _last_seq(self) -> int:
        """The largest event ``seq`` (0 when empty): a row id lookup, not a scan."""
        row = self._conn.execute("SELECT max(seq) FROM events").fetchone()
        return int(row[0] or 0) if row else 0

    def query_events(self, query: EventQuery) -> Page:
        """One page of matching events, ordered by time then arrival."""
        where, params = _where(query)
        if query.cursor:
            ts, seq = decode_cursor(query.cursor, 2)
            where.append("(ts, seq) > (?, ?)")
            params += [ts, seq]
        sql = "SELECT seq, ts, doc FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts, seq LIMIT ?"
        params.append(query.limit + 1)
        with self._errors("querying events"):
            rows: list[Any] = self._conn.execute(sql, params).fetchall()
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        events = [orjson.loads(doc) for _, _, doc in rows]
        cursor = encode_cursor(rows[-1][1], rows[-1][0]) if more else None
        return Page(events, cursor)

    def count_events(self, query: EventQuery, by: str | None = None) -> list[tuple[Any, int]]:
        """Matching events counted by the values of ``by`` (most frequent first)."""
        where, params = _where(query)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        if by is None:
            sql = f"SELECT NULL, count(*) FROM events{clause}"  # noqa: S608 - built from checked names
        else:
            expr = _field_sql(check_field_name(by))
            sql = f"SELECT {expr} AS value, count(*) AS n FROM events{clause} GROUP BY value ORDER BY n DESC, value"  # noqa: S608
        with self._errors("counting events"):
            return [(value, n) for value, n in self._conn.execute(sql, params)]

    # -- assets -----------------------------------------------------------------------------

    def upsert_assets(self, docs: Iterable[AssetDoc], *, replace: bool = False) -> int:
        """Merge asset documents into the stored ones (:func:`soc.assets.merge`), in one
        transaction; ``replace`` empties the table first, in the same transaction.

        Documents of the same address are merged together first. A document without a valid
        ``ip`` or times is refused (``StoreError``) before anything is written.
        """
        pending: dict[str, AssetDoc] = {}
        for position, doc in enumerate(docs):
            _asset_row(doc, f"asset #{position}")  # validates
            ip = doc["ip"]
            pending[ip] = merge(pending[ip], doc) if ip in pending else doc
        conn = self._conn
        with self._errors(f"writing {len(pending)} assets"), self._transaction():
            if replace:
                conn.execute("DELETE FROM assets")
            elif pending:
                stored = conn.execute(
                    "SELECT ip, doc FROM assets WHERE ip IN (SELECT value FROM json_each(?))",
                    (orjson.dumps(list(pending)).decode(),),
                )
                for ip, text in list(stored):
                    try:
                        pending[ip] = merge(_stored_asset(text, ip), pending[ip])
                    except (AttributeError, KeyError, TypeError, ValueError) as exc:
                        raise StoreError(
                            f"cannot merge with the stored asset: {exc}", location=f"assets {ip}"
                        ) from exc
            conn.executemany(
                _UPSERT_ASSET, [_asset_row(doc, f"asset {ip}") for ip, doc in pending.items()]
            )
        return len(pending)

    def list_assets(self, query: AssetQuery) -> list[AssetDoc]:
        """The stored assets that match, ordered by address (numerically)."""
        where: list[str] = []
        params: list[Any] = []
        if query.network is not None:
            where.append("ip_key BETWEEN ? AND ?")
            params.extend(network_range(query.network))
        if query.role is not None and query.protocol is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(assets.roles) WHERE value = ?)")
            params.append(f"{query.protocol}:{query.role}")
        elif query.role is not None:
            where.append(
                "EXISTS (SELECT 1 FROM json_each(assets.roles)"
                " WHERE substr(value, instr(value, ':') + 1) = ?)"
            )
            params.append(query.role)
        elif query.protocol is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(assets.protocols) WHERE value = ?)")
            params.append(query.protocol)
        sql = "SELECT ip, doc FROM assets"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ip_key"
        with self._errors("listing assets"):
            rows: list[Any] = self._conn.execute(sql, params).fetchall()
        return [_stored_asset(text, ip) for ip, text in rows]

    # -- detection --------------------------------------------------------------------------

    def prepare_detection(self) -> None:
        """Give the connection what compiled rules call: ``REGEXP`` (Sigma's ``|re``)."""
        from detectors.sigma import prepare_connection  # detectors depend on the store

        prepare_connection(self._conn)

    def read_rows(
        self, sql: str, params: Sequence[Any] = (), doing: str = "running a query"
    ) -> list[Any]:
        """The rows of a read-only statement (the SQL detection compiles the rules to, the
        incident and access tables' reads); a failure says what was being ``doing``."""
        with self._errors(doing):
            return list(self._conn.execute(sql, tuple(params)))

    def detection_statement(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one of detection's statements: reading events, or creating and dropping its
        temporary tables (``temp.*``: this connection's own, never in the store file)."""
        with self._errors("running a detection query"):
            return list(self._conn.execute(sql, tuple(params)))

    def max_event_seq(self) -> int:
        """The arrival number (``events.seq``) of the newest event, 0 when there is none."""
        with self._errors("reading the newest event"):
            return int(self._conn.execute("SELECT coalesce(max(seq), 0) FROM events").get or 0)

    def detection_checkpoints(self) -> dict[str, int]:
        """Each rule's highest ``events.seq`` already processed by detection."""
        with self._errors("reading detection checkpoints"):
            return dict(self._conn.execute("SELECT rule_id, seq FROM detection_checkpoints"))

    def alerts_near(
        self, rule_id: str, group_key: str, start_us: int, end_us: int
    ) -> list[AlertRow]:
        """A rule's alerts for one group that reach into ``[start_us, end_us]``, oldest first."""
        sql = (
            f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE rule_id = ? AND group_key = ?"  # noqa: S608
            " AND end_ts >= ? AND ts <= ? ORDER BY ts"
        )
        with self._errors("reading alerts"):
            rows = self._conn.execute(sql, (rule_id, group_key, start_us, end_us)).fetchall()
        return [_alert(row) for row in rows]

    def commit_detection(
        self,
        rule_id: str,
        seq: int,
        alerts: Sequence[AlertRow],
        links: Sequence[tuple[str, str]],
    ) -> None:
        """In one transaction: link events to alerts (once each), store the alerts (their
        ``ics.alert.event_count`` set to the events linked), and move the rule's checkpoint."""
        conn = self._conn
        with self._errors(f"storing the alerts of rule {rule_id}"), self._transaction():
            conn.executemany(
                "INSERT OR IGNORE INTO alert_events (alert_id, event_id) VALUES (?, ?)", links
            )
            for row in alerts:
                count = int(
                    conn.execute(
                        "SELECT count(*) FROM alert_events WHERE alert_id = ?", (row.id,)
                    ).get
                    or 0
                )
                info = row.doc.get("ics", {}).get("alert", {})
                if isinstance(info, dict) and "event_count" in info:
                    info["event_count"] = count
                    info["event_ids_truncated"] = count > len(info.get("event_ids", []))
                conn.execute(_UPSERT_ALERT, _alert_values(row))
            conn.execute(
                "INSERT INTO detection_checkpoints (rule_id, seq, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (rule_id) DO UPDATE SET seq = excluded.seq,"
                " updated_at = excluded.updated_at",
                (rule_id, seq, datetime.now(UTC).isoformat()),
            )

    def write_alerts(self, alerts: Iterable[AlertRow]) -> int:
        """Store (or replace, by id) alert documents in one transaction."""
        rows = [_alert_values(row) for row in alerts]
        with self._errors(f"writing {len(rows)} alerts"), self._transaction():
            self._conn.executemany(_UPSERT_ALERT, rows)
        return len(rows)

    def query_alerts(self, query: AlertQuery) -> list[AlertRow]:
        """The stored alerts that match, newest first (by their first event)."""
        where: list[str] = []
        params: list[Any] = []
        if query.rule_id is not None:
            where.append("rule_id = ?")
            params.append(query.rule_id)
        if query.start_us is not None:
            where.append("ts >= ?")
            params.append(query.start_us)
        if query.end_us is not None:
            where.append("ts < ?")
            params.append(query.end_us)
        sql = f"SELECT {_ALERT_COLUMNS} FROM alerts"  # noqa: S608 - fixed names
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts DESC, seq DESC LIMIT ?"
        params.append(query.limit)
        with self._errors("listing alerts"):
            rows = self._conn.execute(sql, params).fetchall()
        return [_alert(row) for row in rows]

    def info(self) -> StoreInfo:
        """Backend, file, applied migrations and rows per table."""
        with self._errors("reading table sizes"):
            counts = {
                t: int(self._conn.execute(f"SELECT count(*) FROM {t}").get)  # noqa: S608
                for t in _TABLES
            }
        return StoreInfo(self.backend, str(self.path), self.applied_migrations(), counts)

    def optimize(self) -> None:
        """Refresh the query planner's statistics (``ANALYZE``); run after a large ingest."""
        with self._errors("analysing"):
            self._conn.execute("ANALYZE")

    def check(self) -> list[str]:
        """SQLite's ``integrity_check``: ``["ok"]`` when the file is sound."""
        with self._errors("checking integrity"):
            return [r[0] for r in self._conn.execute("PRAGMA integrity_check")]


def prepare_rows(events: Iterable[Event], position: int = 0) -> list[Row]:
    """Validate and serialise events into the rows of the ``events`` table.

    Pure and picklable, so it runs in the parsing process while a writer process inserts. A bad
    event raises ``StoreError`` naming its position (``position`` is the first event's).
    """
    return [_event_row(doc, position + i) for i, doc in enumerate(events)]


def _event_row(doc: Event, position: int) -> Row:
    try:  # the hot path: a well-formed nested document
        head = doc["event"]
        eid, dataset, stamp = head["id"], head["dataset"], doc["@timestamp"]
    except (KeyError, TypeError):
        missing = missing_fields(doc)
        if missing:
            raise StoreError(
                f"event lacks required field(s) {', '.join(missing)}", location=f"event #{position}"
            ) from None
        eid, dataset, stamp = (
            get_field(doc, f) for f in ("event.id", "event.dataset", "@timestamp")
        )
    if not (isinstance(eid, str) and eid and isinstance(dataset, str) and dataset):
        raise StoreError(
            "event.id and event.dataset must be non-empty strings", location=f"event #{position}"
        )
    try:
        ts = parse_timestamp(stamp)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"bad @timestamp: {exc}", location=f"event #{position}") from exc
    try:
        text = orjson.dumps(doc).decode()
    except orjson.JSONEncodeError as exc:
        raise StoreError(f"event is not JSON: {exc}", location=f"event #{position}") from exc
    return (eid, ts, dataset, *[_promoted(doc, keys, position) for keys in _PROMOTED_PATHS], text)


def _promoted(doc: Event, keys: tuple[str, ...], position: int) -> Any:
    try:
        if len(keys) == 2:
            value = doc[keys[0]][keys[1]]
        else:
            value = doc
            for key in keys:
                value = value[key]
    except (KeyError, TypeError, IndexError):
        return None
    if value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        return int(value)  # a bool is stored as 0 or 1, as SQLite's JSON functions read it
    raise StoreError(f"{'.'.join(keys)} must be a single value", location=f"event #{position}")


_UPSERT_ASSET = (
    "INSERT OR REPLACE INTO assets (ip, ip_key, first_seen, last_seen, roles, protocols, doc)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _asset_row(doc: AssetDoc, where: str) -> Row:
    """The ``assets`` row of a document; a document without a valid address or times is refused."""
    try:
        ip = doc["ip"]
        first, last = parse_seen(doc)
        return (
            ip,
            ip_sort_key(ip),
            first,
            last,
            orjson.dumps(role_tokens(doc)).decode(),
            orjson.dumps(list(doc.get("protocols", []))).decode(),
            orjson.dumps(doc).decode(),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"not an asset document: {exc!r}", location=where) from exc


def _stored_asset(text: str, ip: str) -> AssetDoc:
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise StoreError(f"the stored asset is not JSON: {exc}", location=f"assets {ip}") from exc
    if not isinstance(doc, dict):
        raise StoreError("the stored asset is not a JSON object", location=f"assets {ip}")
    return doc


_ALERT_COLUMNS = "id, rule_id, group_key, ts, end_ts, severity, doc"
_UPSERT_ALERT = (
    "INSERT INTO alerts (id, rule_id, group_key, ts, end_ts, severity, doc)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET group_key = excluded.group_key,"
    " ts = excluded.ts, end_ts = excluded.end_ts, severity = excluded.severity, doc = excluded.doc"
)


def _alert_values(row: AlertRow) -> Row:
    return (
        row.id,
        row.rule_id,
        row.group_key,
        row.ts,
        row.end_ts,
        row.severity,
        orjson.dumps(row.doc).decode(),
    )


def _alert(row: Sequence[Any]) -> AlertRow:
    ident, rule_id, group_key, ts, end_ts, severity, text = row
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise StoreError(
            f"the stored alert is not JSON: {exc}", location=f"alerts {ident}"
        ) from exc
    return AlertRow(
        ident,
        rule_id,
        group_key,
        int(ts),
        int(end_ts if end_ts is not None else ts),
        int(severity),
        doc,
    )


def _json_path(name: str) -> str:
    """SQLite's JSON path for a dotted field; ``@timestamp``-like segments are quoted.

    Only names checked by ``FIELD_NAME`` reach here, so the path is safe to put in the SQL.
    """
    return "$." + ".".join(p if p.isidentifier() else f'"{p}"' for p in name.split("."))


def _field_sql(name: str) -> str:
    return _COLUMNS.get(name) or f"json_extract(doc, '{_json_path(name)}')"


def _where(query: EventQuery) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if query.start_us is not None:
        where.append("ts >= ?")
        params.append(query.start_us)
    if query.end_us is not None:
        where.append("ts < ?")
        params.append(query.end_us)
    if query.datasets:
        where.append(f"dataset IN ({','.join('?' * len(query.datasets))})")
        params.extend(query.datasets)
    for name, values in query.where:
        marks = ",".join("?" * len(values))
        if name in _COLUMNS:
            where.append(f"{_COLUMNS[name]} IN ({marks})")
        else:  # any element of a list, or the scalar itself
            each = f"json_each(events.doc, '{_json_path(name)}')"  # a checked field name
            where.append(f"EXISTS (SELECT 1 FROM {each} WHERE value IN ({marks}))")  # noqa: S608
        params.extend(_sql_value(v) for v in values)
    return where, params


def _sql_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return value


def _explain(exc: apsw.Error, doing: str, busy_timeout_ms: int) -> str:
    reasons: dict[type[apsw.Error], str] = {
        apsw.BusyError: f"the database is locked by another process (waited {busy_timeout_ms} ms)",
        apsw.LockedError: "the database is locked",
        apsw.FullError: "the disk is full (or the database reached its size limit)",
        apsw.ReadOnlyError: "the database is read-only (check the file's permissions)",
        apsw.CantOpenError: "cannot open the database file (check the path and permissions)",
        apsw.NotADBError: "the file is not a SQLite database",
        apsw.CorruptError: "the database file is corrupt",
        apsw.IOError: "an I/O error occurred (is the disk full or failing?)",
        apsw.PermissionsError: "permission denied",
    }
    reason = next((text for kind, text in reasons.items() if isinstance(exc, kind)), str(exc))
    return f"{reason} while {doing} [{type(exc).__name__}: {exc}]"
