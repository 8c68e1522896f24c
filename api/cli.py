"""``soc serve``, ``soc users`` and ``soc keys``: run the API and manage who may use it.

Attached to ``soc`` by ``soc/cli.py``. Every change is written to the audit trail under
``cli:<your login>``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from soc.access import check_roles, check_username, hash_password, new_api_key
from soc.clictx import settings as _settings
from soc.config import Settings
from soc.incidents.cli import cli_actor
from soc.store.sqlite import SQLiteStore
from soc.store.sqlite_access import AccessTables
from soc.store.sqlite_incidents import IncidentTables


@contextmanager
def _tables(settings: Settings) -> Iterator[tuple[AccessTables, IncidentTables]]:
    with SQLiteStore.from_settings(settings) as store:
        yield AccessTables(store), IncidentTables(store)


def _now() -> int:
    return time.time_ns() // 1000


def _roles(values: tuple[str, ...]) -> list[str]:
    try:
        return check_roles(values)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--role") from None


def _check_sites(settings: Settings, sites: tuple[str, ...]) -> list[str]:
    known = set(settings.incidents.sites)
    unknown = sorted(set(sites) - known)
    if unknown:
        raise click.BadParameter(
            f"unknown site {', '.join(unknown)} (configured: {', '.join(sorted(known))})",
            param_hint="--site",
        )
    return sorted(set(sites))


@click.command("serve")
@click.option("--host", help="Address to listen on (default: api.host).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: api.port).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    help="Server processes (default: api.workers); one per core serves the most.",
)
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the API (OpenAPI document at /openapi.json, interactive docs at /docs)."""
    import os

    import uvicorn

    from api.app import build_app
    from api.auth import load_secret

    settings = _settings(ctx)
    host = host or settings.api.host
    port = port or settings.api.port
    workers = workers or settings.api.workers
    click.echo(
        f"serving on http://{host}:{port} (docs: http://{host}:{port}/docs)"
        + (f", {workers} workers" if workers > 1 else ""),
        err=True,
    )
    options: dict[str, Any] = {"log_level": "warning", "access_log": False}
    if workers == 1:
        uvicorn.run(build_app(settings), host=host, port=port, **options)
        return
    SQLiteStore.from_settings(settings).close()  # migrated once, before the workers start
    load_secret(settings.api_secret_path)  # made once: every worker signs with the same key
    config = ctx.find_root().obj.get("config") if isinstance(ctx.find_root().obj, dict) else None
    if config is not None:
        os.environ["SOC_CONFIG"] = str(config)  # the workers read the same configuration
    uvicorn.run(
        "api.app:create_app", factory=True, host=host, port=port, workers=workers, **options
    )


@click.group("users")
def users() -> None:
    """Add, list, disable and enable the API's users."""


@users.command("add")
@click.argument("username")
@click.option(
    "--role", "roles", multiple=True, required=True, help="analyst, engineer, auditor, admin"
)
@click.option("--site", "sites", multiple=True, help="A site an engineer is assigned to.")
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    envvar="SOC_NEW_PASSWORD",
    help="Prompted when not given (or SOC_NEW_PASSWORD); 12 characters or more.",
)
@click.pass_context
def users_add(
    ctx: click.Context, username: str, roles: tuple[str, ...], sites: tuple[str, ...], password: str
) -> None:
    """Create a user with roles (and sites, for engineers)."""
    settings = _settings(ctx)
    try:
        check_username(username)
        hashed = hash_password(password)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    role_list, site_list = _roles(roles), _check_sites(settings, sites)
    if "engineer" in role_list and not site_list:
        raise click.BadParameter("an engineer needs at least one site", param_hint="--site")
    with _tables(settings) as (access, audit):
        if not access.add_user(username, hashed, role_list, site_list, _now()):
            raise click.BadParameter(f"user {username!r} exists", param_hint="USERNAME")
        audit.audit(
            _now(),
            cli_actor(None),
            "user_add",
            "user",
            username,
            {"roles": role_list, "sites": site_list},
        )
    click.echo(
        f"user {username}: {', '.join(role_list)}"
        + (f" on {', '.join(site_list)}" if site_list else "")
    )


@users.command("list")
@click.pass_context
def users_list(ctx: click.Context) -> None:
    """Every user, its roles, sites and state."""
    with _tables(_settings(ctx)) as (access, _):
        found = access.list_users()
    if not found:
        click.echo("no users (add one with `soc users add NAME --role analyst`)", err=True)
    for user in found:
        state = "disabled" if user.disabled else "enabled"
        click.echo(
            f"{user.username:24} {state:9} {','.join(user.roles):24} {','.join(user.sites) or '-'}"
        )


def _set_disabled(ctx: click.Context, username: str, disabled: bool) -> None:
    with _tables(_settings(ctx)) as (access, audit):
        if not access.set_disabled(username, disabled):
            raise click.BadParameter(f"no user {username!r}", param_hint="USERNAME")
        action = "user_disable" if disabled else "user_enable"
        audit.audit(_now(), cli_actor(None), action, "user", username)
    click.echo(
        f"user {username} {'disabled: its tokens no longer work' if disabled else 'enabled'}"
    )


@users.command("disable")
@click.argument("username")
@click.pass_context
def users_disable(ctx: click.Context, username: str) -> None:
    """Disable a user: its tokens stop working at once."""
    _set_disabled(ctx, username, True)


@users.command("enable")
@click.argument("username")
@click.pass_context
def users_enable(ctx: click.Context, username: str) -> None:
    """Enable a disabled user again (it logs in anew)."""
    _set_disabled(ctx, username, False)


@click.group("keys")
def keys() -> None:
    """Create, list and revoke API keys for machines."""


@keys.command("create")
@click.argument("name")
@click.option("--role", "roles", multiple=True, required=True)
@click.option("--site", "sites", multiple=True)
@click.pass_context
def keys_create(
    ctx: click.Context, name: str, roles: tuple[str, ...], sites: tuple[str, ...]
) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    settings = _settings(ctx)
    role_list, site_list = _roles(roles), _check_sites(settings, sites)
    key_id, key, secret_hash = new_api_key()
    actor = cli_actor(None)
    with _tables(settings) as (access, audit):
        access.add_key(key_id, name, secret_hash, role_list, site_list, actor, _now())
        audit.audit(
            _now(), actor, "key_create", "api_key", key_id, {"name": name, "roles": role_list}
        )
    click.echo(key)
    click.echo(f"key {key_id} ({name}): shown once, store it now; send it as X-API-Key", err=True)


@keys.command("list")
@click.pass_context
def keys_list(ctx: click.Context) -> None:
    """Every key (never its secret)."""
    with _tables(_settings(ctx)) as (access, _):
        found = access.list_keys()
    for key in found:
        state = "revoked" if key.revoked_ts else "active"
        click.echo(
            f"{key.id}  {state:8} {key.name:24} {','.join(key.roles):20} {','.join(key.sites) or '-'}"
        )


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key for good."""
    with _tables(_settings(ctx)) as (access, audit):
        if not access.revoke_key(key_id, _now()):
            raise click.BadParameter(f"no active key {key_id!r}", param_hint="KEY_ID")
        audit.audit(_now(), cli_actor(None), "key_revoke", "api_key", key_id)
    click.echo(f"key {key_id} revoked")
