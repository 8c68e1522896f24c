"""Who may do what: roles and their scopes, password hashing, API key secrets. Pure functions.

**Roles -> scopes.** Each API route declares the scopes it needs; a principal (a user or an
API key) has the union of its roles' scopes. Engineers see only the sites they are assigned to
(``sites``); the other roles see every site.

=========  =============================================================================
role       scopes
=========  =============================================================================
analyst    incidents:read incidents:write alerts:read events:read assets:read rules:read
           baselines:read baselines:write
engineer   incidents:read incidents:write alerts:read events:read assets:read baselines:read
           (their sites)
auditor    rules:read reports:read audit:read baselines:read
admin      every scope, users:admin among them
=========  =============================================================================

**Passwords** are hashed with Argon2id (argon2-cffi's defaults, RFC 9106's second recommended
option); a hash made with older parameters is re-hashed at the next login.

**API keys** look like ``soc_<id>_<secret>``: the id (8 hex) is public and finds the key, the
secret (32 random bytes, URL-safe base64) is shown once and stored as its SHA-256: a key has 256
bits of entropy, so a fast hash suffices (a slow KDF protects low-entropy passwords).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

SCOPES: Mapping[str, str] = {
    "incidents:read": "list and read incidents, their alerts, events and timeline",
    "incidents:write": "change an incident's status and owner, comment on it",
    "alerts:read": "list and read alerts",
    "events:read": "read the events of incidents",
    "assets:read": "list and read assets",
    "rules:read": "the rule inventory",
    "reports:read": "the auditor's rule report",
    "audit:read": "the audit trail",
    "baselines:read": "read a site's learnt communication baseline",
    "baselines:write": "accept a protect-mode alert into a baseline",
    "users:admin": "manage users and API keys",
}
ROLES: Mapping[str, frozenset[str]] = {
    "analyst": frozenset(
        {
            "incidents:read",
            "incidents:write",
            "alerts:read",
            "events:read",
            "assets:read",
            "rules:read",
            "baselines:read",
            "baselines:write",
        }
    ),
    "engineer": frozenset(
        {
            "incidents:read",
            "incidents:write",
            "alerts:read",
            "events:read",
            "assets:read",
            "baselines:read",
        }
    ),
    "auditor": frozenset({"rules:read", "reports:read", "audit:read", "baselines:read"}),
    "admin": frozenset(SCOPES),
}
#: Roles limited to the sites assigned to them.
SITE_BOUND = frozenset({"engineer"})
USERNAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
MIN_PASSWORD = 12
KEY_PATTERN = re.compile(r"soc_([0-9a-f]{8})_([A-Za-z0-9_-]{43})")

_HASHER = PasswordHasher()


def scopes_of(roles: Iterable[str]) -> frozenset[str]:
    """The union of the roles' scopes (unknown roles give none)."""
    out: set[str] = set()
    for role in roles:
        out |= ROLES.get(role, frozenset())
    return frozenset(out)


def site_bound(roles: Iterable[str]) -> bool:
    """Whether a principal with these roles sees only its assigned sites: it has a site-bound
    role and no role that sees every site."""
    roles = set(roles)
    return bool(roles & SITE_BOUND) and not (roles - SITE_BOUND) & {"analyst", "admin"}


def check_roles(roles: Iterable[str]) -> list[str]:
    """The roles, checked; a ``ValueError`` names an unknown one."""
    out = []
    for role in roles:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        out.append(role)
    return sorted(set(out))


def check_username(name: str) -> str:
    """A user name: lowercase letters, digits and ``._@-``, 1 to 64 characters."""
    if not USERNAME.fullmatch(name):
        raise ValueError("a user name has 1 to 64 lowercase letters, digits, '.', '_', '@' or '-'")
    return name


def hash_password(password: str) -> str:
    """An Argon2id hash of ``password`` (at least :data:`MIN_PASSWORD` characters)."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password has at least {MIN_PASSWORD} characters")
    return _HASHER.hash(password)


def verify_password(stored: str, password: str) -> tuple[bool, str | None]:
    """(matches, a new hash when the stored one uses outdated parameters)."""
    try:
        _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False, None
    return True, (_HASHER.hash(password) if _HASHER.check_needs_rehash(stored) else None)


def dummy_verify(password: str) -> None:
    """Spend the time a verification takes (an unknown user: no timing oracle)."""
    verify_password(_DUMMY, password)


_DUMMY = _HASHER.hash("not a password anyone has")


def new_api_key() -> tuple[str, str, str]:
    """(key id, the full key shown once, the stored hash of its secret)."""
    key_id = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    return key_id, f"soc_{key_id}_{secret}", hash_secret(secret)


def hash_secret(secret: str) -> str:
    """The stored form of an API key's secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_api_key(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    match = KEY_PATTERN.fullmatch(key)
    return (match.group(1), match.group(2)) if match else None


def secret_matches(stored_hash: str, secret: str) -> bool:
    """Compare in constant time."""
    return hmac.compare_digest(stored_hash, hash_secret(secret))
