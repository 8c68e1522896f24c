"""Users and API keys in the SQLite store (tables ``users`` and ``api_keys``).

Passwords are stored as Argon2id hashes and key secrets as SHA-256 (:mod:`soc.access`); neither
is ever read back out of this module except to verify. Disabling a user or changing a password
bumps ``token_version``, which the API checks on every request: tokens issued before stop
working at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from soc.store.sqlite import SQLiteStore


@dataclass(frozen=True)
class UserRecord:
    """A user as the API and ``soc users`` see it (the hash only to verify)."""

    username: str
    roles: tuple[str, ...]
    sites: tuple[str, ...]
    disabled: bool
    created_ts: int
    token_version: int
    password_hash: str


@dataclass(frozen=True)
class KeyRecord:
    """An API key (its secret's hash only to verify)."""

    id: str
    name: str
    roles: tuple[str, ...]
    sites: tuple[str, ...]
    created_ts: int
    created_by: str
    revoked_ts: int | None
    last_used_ts: int | None
    secret_hash: str


_USER = "username, roles, sites, disabled, created_ts, token_version, password_hash"
_KEY = "id, name, roles, sites, created_ts, created_by, revoked_ts, last_used_ts, secret_hash"
_SELECT_USER = f"SELECT {_USER} FROM users"  # noqa: S608 - constant column names
_SELECT_KEY = f"SELECT {_KEY} FROM api_keys"  # noqa: S608 - constant column names


class AccessTables:
    """Users and API keys over an open :class:`SQLiteStore` (its connection)."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self._conn = store._conn  # the store package's own connection

    # -- users --------------------------------------------------------------------------------

    def add_user(
        self,
        username: str,
        password_hash: str,
        roles: Sequence[str],
        sites: Sequence[str],
        now_us: int,
    ) -> bool:
        """Create a user; False when the name is taken."""
        with self.store._errors("adding a user"), self.store._transaction():
            before = self._conn.total_changes()
            self._conn.execute(
                "INSERT OR IGNORE INTO users (username, password_hash, roles, sites, created_ts)"
                " VALUES (?, ?, ?, ?, ?)",
                (username, password_hash, _json(roles), _json(sites), now_us),
            )
            return bool(self._conn.total_changes() - before)

    def get_user(self, username: str) -> UserRecord | None:
        """One user, or None."""
        rows = self.store.read_rows(
            _SELECT_USER + " WHERE username = ?", (username,), "reading a user"
        )
        return _user(rows[0]) if rows else None

    def list_users(self) -> list[UserRecord]:
        """Every user, by name."""
        rows = self.store.read_rows(_SELECT_USER + " ORDER BY username", (), "listing users")
        return [_user(r) for r in rows]

    def set_disabled(self, username: str, disabled: bool) -> bool:
        """Disable (or enable) a user, revoking its tokens; False when unknown."""
        return self._update(
            "UPDATE users SET disabled = ?, token_version = token_version + 1 WHERE username = ?",
            (int(disabled), username),
        )

    def set_password(self, username: str, password_hash: str, *, revoke: bool = True) -> bool:
        """Store a new hash (``revoke``: and end the user's sessions); False when unknown."""
        bump = ", token_version = token_version + 1" if revoke else ""
        return self._update(
            f"UPDATE users SET password_hash = ?{bump} WHERE username = ?",  # noqa: S608
            (password_hash, username),
        )

    def set_grants(self, username: str, roles: Sequence[str], sites: Sequence[str]) -> bool:
        """Replace a user's roles and sites (its tokens are revoked); False when unknown."""
        return self._update(
            "UPDATE users SET roles = ?, sites = ?, token_version = token_version + 1"
            " WHERE username = ?",
            (_json(roles), _json(sites), username),
        )

    def _update(self, sql: str, params: Sequence[Any]) -> bool:
        with self.store._errors("changing a user"), self.store._transaction():
            before = self._conn.total_changes()
            self._conn.execute(sql, params)
            return bool(self._conn.total_changes() - before)

    # -- API keys -----------------------------------------------------------------------------

    def add_key(
        self,
        key_id: str,
        name: str,
        secret_hash: str,
        roles: Sequence[str],
        sites: Sequence[str],
        created_by: str,
        now_us: int,
    ) -> None:
        """Store a new key."""
        with self.store._errors("creating an API key"), self.store._transaction():
            self._conn.execute(
                "INSERT INTO api_keys (id, name, secret_hash, roles, sites, created_ts,"
                " created_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key_id, name, secret_hash, _json(roles), _json(sites), now_us, created_by),
            )

    def get_key(self, key_id: str) -> KeyRecord | None:
        """One key, or None."""
        rows = self.store.read_rows(_SELECT_KEY + " WHERE id = ?", (key_id,), "reading an API key")
        return _key(rows[0]) if rows else None

    def list_keys(self) -> list[KeyRecord]:
        """Every key, newest first."""
        rows = self.store.read_rows(
            _SELECT_KEY + " ORDER BY created_ts DESC", (), "listing API keys"
        )
        return [_key(r) for r in rows]

    def revoke_key(self, key_id: str, now_us: int) -> bool:
        """Revoke a key for good; False when unknown or already revoked."""
        return self._update(
            "UPDATE api_keys SET revoked_ts = ? WHERE id = ? AND revoked_ts IS NULL",
            (now_us, key_id),
        )

    def touch_key(self, key_id: str, now_us: int) -> None:
        """Record a key's use (at most about once a minute: a cheap, skippable write)."""
        with self.store._errors("recording an API key's use"), self.store._transaction():
            self._conn.execute(
                "UPDATE api_keys SET last_used_ts = ? WHERE id = ?"
                " AND (last_used_ts IS NULL OR last_used_ts < ?)",
                (now_us, key_id, now_us - 60_000_000),
            )


def _json(values: Sequence[str]) -> str:
    return orjson.dumps(sorted(set(values))).decode()


def _user(row: Sequence[Any]) -> UserRecord:
    return UserRecord(
        str(row[0]),
        tuple(orjson.loads(row[1])),
        tuple(orjson.loads(row[2])),
        bool(row[3]),
        int(row[4]),
        int(row[5]),
        str(row[6]),
    )


def _key(row: Sequence[Any]) -> KeyRecord:
    return KeyRecord(
        str(row[0]),
        str(row[1]),
        tuple(orjson.loads(row[2])),
        tuple(orjson.loads(row[3])),
        int(row[4]),
        str(row[5]),
        None if row[6] is None else int(row[6]),
        None if row[7] is None else int(row[7]),
        str(row[8]),
    )
