"""Authentication and authorisation: OAuth2 password flow with signed JWTs, API keys, scopes.

**Tokens.** ``POST /auth/token`` (form: ``grant_type=password`` with ``username`` and
``password``, or ``grant_type=refresh_token`` with ``refresh_token``) returns a short-lived access
token (``api.access_token_minutes``) and a refresh token (``api.refresh_token_hours``), both JWTs
signed with HS256 by the key in ``<data_dir>/api-secret`` (32 random bytes, made on first use,
mode 0600). Claims: ``iss``, ``aud``, ``sub`` (the user), ``typ`` (access or refresh), ``ver``
(the user's token version), ``iat``, ``exp``, ``jti``. Verification accepts HS256 only (a token
with ``alg: none`` or another algorithm, a forged signature, a wrong audience or an expired token
is a 401), and checks on every request that the user still exists, is enabled and has the same
token version (disabling a user or changing its password ends its sessions at once).

**API keys** (machines) come in the ``X-API-Key`` header (:mod:`soc.access` for their form).
A revoked or unknown key is a 401.

**Scopes.** Each route declares what it needs with ``Security(authorize, scopes=[...])``; a
principal lacking one is a 403 naming it. Engineers are bound to their sites
(:attr:`Principal.sites`).

``authorize`` and the read and change routes are coroutines: they run on the event loop's thread
and its one connection (short indexed queries), so requests never wait for each other's SQLite
locks; the slow routes (password hashing at login, the rule report) run on the thread pool.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer, SecurityScopes

from api.deps import AppState, state
from api.problems import Problem
from soc.access import SCOPES, parse_api_key, scopes_of, secret_matches, site_bound
from soc.errors import AuthError

ISSUER = "ics-soc"
AUDIENCE = "ics-soc-api"
ALGORITHM = "HS256"
SECRET_BYTES = 32
KEY_TOUCH_US = 60_000_000

oauth2 = OAuth2PasswordBearer(tokenUrl="auth/token", scopes=dict(SCOPES), auto_error=False)
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user or an API key, its roles, scopes and sites."""

    name: str  # the user name, or key:<id>
    kind: str  # user or key
    roles: tuple[str, ...]
    scopes: frozenset[str]
    sites: tuple[str, ...] | None  # None: every site

    def may_see(self, site: str | None) -> bool:
        """Whether an object of ``site`` is visible to this principal."""
        return self.sites is None or (site is not None and site in self.sites)


def load_secret(path: Path) -> bytes:
    """The signing key at ``path``, made (32 random bytes, mode 0600) when missing."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = secrets.token_bytes(SECRET_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return load_secret(path)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return data
    if len(data) < SECRET_BYTES:
        raise AuthError("the API signing key is too short (32 bytes or more)", location=str(path))
    return data


def issue(secret: bytes, username: str, version: int, kind: str, lifetime_s: int) -> str:
    """A signed token of ``kind`` (access or refresh) for ``username``."""
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": username,
        "typ": kind,
        "ver": version,
        "iat": now,
        "exp": now + lifetime_s,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: bytes, token: str, kind: str) -> dict[str, Any]:
    """The claims of a valid token of ``kind``; an :class:`AuthError` says what is wrong."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "typ", "ver"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("the token has expired") from None
    except jwt.PyJWTError:
        raise AuthError("the token is not valid") from None
    if claims.get("typ") != kind:
        raise AuthError(f"not an {kind} token")
    return claims


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _user_principal(app: AppState, claims: dict[str, Any]) -> Principal:
    user = app.tables().access.get_user(str(claims["sub"]))
    if user is None or user.disabled or user.token_version != claims.get("ver"):
        raise _unauthorized("the token is no longer valid")
    sites = user.sites if site_bound(user.roles) else None
    return Principal(user.username, "user", user.roles, scopes_of(user.roles), sites)


def _key_principal(app: AppState, key: str) -> Principal:
    parsed = parse_api_key(key)
    if parsed is None:
        raise _unauthorized("not a valid API key")
    tables = app.tables()
    record = tables.access.get_key(parsed[0])
    if (
        record is None
        or record.revoked_ts is not None
        or not secret_matches(record.secret_hash, parsed[1])
    ):
        raise _unauthorized("unknown or revoked API key")
    now = time.time_ns() // 1000
    if record.last_used_ts is None or now - record.last_used_ts > KEY_TOUCH_US:
        tables.access.touch_key(record.id, now)  # a write at most once a minute per key
    sites = record.sites if site_bound(record.roles) else None
    return Principal(f"key:{record.id}", "key", record.roles, scopes_of(record.roles), sites)


async def authorize(
    security_scopes: SecurityScopes,
    request: Request,
    token: Annotated[str | None, Depends(oauth2)],
    key: Annotated[str | None, Depends(api_key_header)],
) -> Principal:
    """The caller, holding every scope the route declares (401 without credentials or with bad
    ones, 403 without a scope)."""
    app = state(request)
    if key:
        principal = _key_principal(app, key)
    elif token:
        try:
            claims = verify(app.secret, token, "access")
        except AuthError as exc:
            raise _unauthorized(exc.message) from None
        principal = _user_principal(app, claims)
    else:
        raise _unauthorized("authentication required: a bearer token or an X-API-Key header")
    missing = sorted(set(security_scopes.scopes) - principal.scopes)
    if missing:
        raise Problem(403, f"not allowed: needs the scope {', '.join(missing)}")
    request.state.principal = principal
    return principal
