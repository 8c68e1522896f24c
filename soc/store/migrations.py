"""Named, transactional schema migrations for the SQLite store.

Each migration is a name and a list of statements, applied once, in order, inside one
transaction, and recorded in the ``_migrations`` table. Never edit a migration that has shipped:
add a new one.

Events keep their whole ECS document as JSON text in ``doc``. Beside it, the store copies a few
hot scalar fields into columns of their own (``PROMOTED_FIELDS``) with an index on (value, time):
reading a dict in Python is far cheaper than SQLite parsing the JSON for each expression index,
and the common queries (by host, by function code, over a time range) then read only an index.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One named schema step."""

    name: str
    statements: tuple[str, ...]


#: Scalar event fields kept in a column of their own, indexed with time: field -> column.
#: A migration that adds a column adds its entry here.
PROMOTED_FIELDS: dict[str, str] = {
    "source.ip": "source_ip",
    "destination.ip": "destination_ip",
    "modbus.function_code": "modbus_function_code",
}

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001_initial",
        (
            """CREATE TABLE events (
                seq INTEGER PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                ts INTEGER NOT NULL,
                dataset TEXT NOT NULL,
                source_ip TEXT,
                destination_ip TEXT,
                doc TEXT NOT NULL
            )""",
            # one time index that also answers the dataset filter without reading rows
            "CREATE INDEX events_ts_dataset ON events (ts, dataset)",
            "CREATE INDEX events_source_ip ON events (source_ip, ts)",
            "CREATE INDEX events_destination_ip ON events (destination_ip, ts)",
            """CREATE TABLE alerts (
                seq INTEGER PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                ts INTEGER NOT NULL,
                rule_id TEXT NOT NULL,
                severity INTEGER NOT NULL,
                incident_id TEXT,
                doc TEXT NOT NULL
            )""",
            "CREATE INDEX alerts_ts ON alerts (ts)",
            "CREATE INDEX alerts_incident ON alerts (incident_id)",
            """CREATE TABLE alert_events (
                alert_id TEXT NOT NULL,
                event_id TEXT NOT NULL,
                PRIMARY KEY (alert_id, event_id)
            ) WITHOUT ROWID""",
            """CREATE TABLE incidents (
                id TEXT PRIMARY KEY,
                created_ts INTEGER NOT NULL,
                updated_ts INTEGER NOT NULL,
                status TEXT NOT NULL DEFAULT 'new',
                severity INTEGER NOT NULL,
                owner TEXT,
                site TEXT,
                doc TEXT NOT NULL
            )""",
            "CREATE INDEX incidents_status ON incidents (status, updated_ts)",
            """CREATE TABLE assets (
                id TEXT PRIMARY KEY,
                ip TEXT,
                mac TEXT,
                first_seen INTEGER NOT NULL,
                last_seen INTEGER NOT NULL,
                doc TEXT NOT NULL
            )""",
            "CREATE INDEX assets_ip ON assets (ip)",
            """CREATE TABLE energy_readings (
                meter_id TEXT NOT NULL,
                obis TEXT NOT NULL,
                ts INTEGER NOT NULL,
                interval_s INTEGER NOT NULL DEFAULT 0,
                direction TEXT NOT NULL,
                value REAL NOT NULL,
                unit TEXT NOT NULL,
                zone TEXT,
                source TEXT,
                PRIMARY KEY (meter_id, obis, ts)
            ) WITHOUT ROWID""",
            "CREATE INDEX energy_readings_zone_ts ON energy_readings (zone, ts)",
            """CREATE TABLE wellbeing_observations (
                sensor_id TEXT NOT NULL,
                quantity TEXT NOT NULL,
                ts INTEGER NOT NULL,
                zone TEXT,
                value REAL NOT NULL,
                unit TEXT NOT NULL,
                flags TEXT NOT NULL DEFAULT '[]',
                PRIMARY KEY (sensor_id, quantity, ts)
            ) WITHOUT ROWID""",
            "CREATE INDEX wellbeing_zone_ts ON wellbeing_observations (zone, quantity, ts)",
            """CREATE TABLE users (
                id INTEGER PRIMARY KEY,
                username TEXT NOT NULL UNIQUE,
                password_hash TEXT NOT NULL,
                roles TEXT NOT NULL DEFAULT '[]',
                sites TEXT NOT NULL DEFAULT '[]',
                disabled INTEGER NOT NULL DEFAULT 0,
                created_ts INTEGER NOT NULL
            )""",
            """CREATE TABLE audit (
                seq INTEGER PRIMARY KEY,
                ts INTEGER NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                object_type TEXT NOT NULL,
                object_id TEXT,
                detail TEXT NOT NULL DEFAULT '{}'
            )""",
            "CREATE INDEX audit_ts ON audit (ts)",
        ),
    ),
    Migration(
        "0002_modbus_function_code",
        (
            "ALTER TABLE events ADD COLUMN modbus_function_code INTEGER",
            "CREATE INDEX events_modbus_function_code ON events (modbus_function_code, ts)",
        ),
    ),
    # The first assets table (keyed by an id, one MAC) was never written; the passive inventory
    # (soc.assets) keys assets by IP and keeps every MAC seen in the document. ``ip_key`` is the
    # address as 16 bytes (IPv4 mapped into IPv6): it orders addresses numerically and answers a
    # network (CIDR) filter as a range. ``roles`` holds ``protocol:role`` tokens, ``protocols``
    # the protocol names (JSON arrays), for the role and protocol filters.
    Migration(
        "0003_asset_inventory",
        (
            "DROP TABLE assets",
            """CREATE TABLE assets (
                ip TEXT PRIMARY KEY,
                ip_key BLOB NOT NULL,
                first_seen INTEGER,
                last_seen INTEGER,
                roles TEXT NOT NULL DEFAULT '[]',
                protocols TEXT NOT NULL DEFAULT '[]',
                doc TEXT NOT NULL
            )""",
            "CREATE INDEX assets_ip_key ON assets (ip_key)",
            "CREATE INDEX assets_last_seen ON assets (last_seen)",
        ),
    ),
    # Detection (detectors.runner): an alert is one episode of a rule for one group (its
    # group-by values, JSON text in ``group_key``), from ``ts`` to ``end_ts`` (µs: its first
    # event and the end of its last window); a run continues the alert whose window the new
    # episode overlaps, found by (rule_id, group_key, end_ts). ``detection_checkpoints`` holds
    # each rule's highest ``events.seq`` processed.
    Migration(
        "0004_detection",
        (
            "ALTER TABLE alerts ADD COLUMN group_key TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE alerts ADD COLUMN end_ts INTEGER",
            "CREATE INDEX alerts_rule_ts ON alerts (rule_id, ts)",
            "CREATE INDEX alerts_rule_group ON alerts (rule_id, group_key, end_ts)",
            """CREATE TABLE detection_checkpoints (
                rule_id TEXT PRIMARY KEY,
                seq INTEGER NOT NULL,
                updated_at TEXT NOT NULL
            )""",
        ),
    ),
    # Incidents (soc.incidents): ``last_ts`` is the time of an incident's latest alert, which the
    # correlation window is measured from; ``incident_notes`` its timeline (alerts joining, status
    # and owner changes, comments). Access: users' ``token_version`` is bumped to revoke their
    # refresh tokens (disable, password change); API keys are stored as a SHA-256 of the secret
    # under a public prefix; the audit trail is searchable by the object it concerns.
    Migration(
        "0005_incidents_access",
        (
            "ALTER TABLE incidents ADD COLUMN first_ts INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE incidents ADD COLUMN last_ts INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE incidents ADD COLUMN level TEXT NOT NULL DEFAULT 'medium'",
            "CREATE INDEX incidents_site_last ON incidents (site, last_ts)",
            "CREATE INDEX incidents_last ON incidents (last_ts)",
            """CREATE TABLE incident_notes (
                seq INTEGER PRIMARY KEY,
                incident_id TEXT NOT NULL,
                ts INTEGER NOT NULL,
                actor TEXT NOT NULL,
                kind TEXT NOT NULL,
                detail TEXT NOT NULL DEFAULT '{}'
            )""",
            "CREATE INDEX incident_notes_incident ON incident_notes (incident_id, seq)",
            "ALTER TABLE users ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0",
            """CREATE TABLE api_keys (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                secret_hash TEXT NOT NULL,
                roles TEXT NOT NULL DEFAULT '[]',
                sites TEXT NOT NULL DEFAULT '[]',
                created_ts INTEGER NOT NULL,
                created_by TEXT NOT NULL,
                revoked_ts INTEGER,
                last_used_ts INTEGER
            )""",
            "CREATE INDEX audit_object ON audit (object_type, object_id, ts)",
            "CREATE INDEX audit_actor ON audit (actor, ts)",
        ),
    ),
    # Listing incidents by status, newest first, reads this index in order instead of sorting
    # every incident of the status (found by bench/api.py: 75 ms -> 0.2 ms at 100,000).
    Migration(
        "0006_incidents_status_last",
        (
            "DROP INDEX incidents_status",
            "CREATE INDEX incidents_status_last ON incidents (status, last_ts)",
            "CREATE INDEX incidents_level_last ON incidents (level, last_ts)",
        ),
    ),
    # Meter readings (DLMS/COSEM GET answers and notifications of energy registers and load
    # profiles) and sensor observations (MQTT PUBLISHes on the configured topics) are time
    # series, not network events: triggers copy the ``energy.readings`` of an ``ics.dlms`` event
    # and the ``wellbeing`` of an ``ics.mqtt`` event into the tables 0001 made for them, in the
    # event's own transaction, so a replayed capture stores nothing twice (a reading is keyed by
    # meter, OBIS code and time; an observation by sensor, quantity and time).
    Migration(
        "0007_energy_readings_from_events",
        (
            """CREATE TRIGGER events_energy_readings AFTER INSERT ON events
            WHEN NEW.dataset = 'ics.dlms'
                AND json_type(NEW.doc, '$.energy.readings') = 'array'
            BEGIN
                INSERT OR IGNORE INTO energy_readings
                    (meter_id, obis, ts, interval_s, direction, value, unit, zone, source)
                SELECT
                    COALESCE(json_extract(NEW.doc, '$.energy.meter_id'), NEW.source_ip, ''),
                    json_extract(r.value, '$.obis'),
                    COALESCE(
                        CAST(ROUND((julianday(json_extract(r.value, '$.time')) - 2440587.5)
                                   * 86400000.0) AS INTEGER) * 1000,
                        NEW.ts),
                    COALESCE(json_extract(r.value, '$.interval_s'), 0),
                    COALESCE(json_extract(r.value, '$.direction'), ''),
                    json_extract(r.value, '$.value'),
                    COALESCE(json_extract(r.value, '$.unit'), ''),
                    NULL,
                    NEW.id
                FROM json_each(NEW.doc, '$.energy.readings') AS r
                WHERE json_type(r.value, '$.value') IN ('integer', 'real')
                    AND json_type(r.value, '$.obis') = 'text';
            END""",
        ),
    ),
    Migration(
        "0008_wellbeing_observations_from_events",
        (
            "ALTER TABLE wellbeing_observations ADD COLUMN source TEXT",
            "ALTER TABLE wellbeing_observations ADD COLUMN publisher_ip TEXT",
            """CREATE TRIGGER events_wellbeing_observations AFTER INSERT ON events
            WHEN NEW.dataset = 'ics.mqtt' AND json_type(NEW.doc, '$.wellbeing') = 'object'
                AND json_type(NEW.doc, '$.wellbeing.value') IN ('integer', 'real')
                AND json_type(NEW.doc, '$.wellbeing.sensor_id') = 'text'
                AND json_type(NEW.doc, '$.wellbeing.quantity') = 'text'
            BEGIN
                INSERT OR IGNORE INTO wellbeing_observations
                    (sensor_id, quantity, ts, zone, value, unit, source, publisher_ip)
                VALUES (
                    json_extract(NEW.doc, '$.wellbeing.sensor_id'),
                    json_extract(NEW.doc, '$.wellbeing.quantity'),
                    COALESCE(
                        CAST(ROUND((julianday(json_extract(NEW.doc, '$.wellbeing.time'))
                                    - 2440587.5) * 86400000.0) AS INTEGER) * 1000,
                        NEW.ts),
                    json_extract(NEW.doc, '$.wellbeing.zone'),
                    json_extract(NEW.doc, '$.wellbeing.value'),
                    COALESCE(json_extract(NEW.doc, '$.wellbeing.unit'), ''),
                    NEW.id,
                    NEW.source_ip);
            END""",
        ),
    ),
    # Learnt baselines (learning mode), one row per site and revision: a revision is never
    # changed, accepting an alert or importing a reviewed file adds the next.
    Migration(
        "0009_baselines",
        (
            """CREATE TABLE baselines (
                site TEXT NOT NULL,
                revision INTEGER NOT NULL,
                created_ts INTEGER NOT NULL,
                created_by TEXT NOT NULL,
                reason TEXT NOT NULL,
                doc TEXT NOT NULL,
                PRIMARY KEY (site, revision)
            ) WITHOUT ROWID""",
        ),
    ),
)
