"""``soc incidents`` and ``soc audit``: correlate, list, show and change incidents from the shell.

Attached to ``soc`` by ``soc/cli.py``. A change made here is audited under the name given with
``--as`` (default: the operating-system user, prefixed ``cli:``).
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import orjson

from soc.clictx import parse_time as _time
from soc.clictx import settings as _settings
from soc.errors import IncidentError, StoreError
from soc.incidents.correlate import STATUSES
from soc.store.sqlite import SQLiteStore
from soc.store.sqlite_incidents import AuditQuery, IncidentQuery, IncidentTables

LEVELS = ("low", "medium", "high", "critical")


@contextmanager
def _tables(ctx: click.Context) -> Iterator[IncidentTables]:
    settings = _settings(ctx)
    if settings.store.backend != "sqlite":
        raise StoreError("incidents live in the sqlite backend", location="store.backend")
    with SQLiteStore.from_settings(settings) as store:
        yield IncidentTables(store)


def tactic_order() -> dict[str, int]:
    """ATT&CK for ICS tactic ids in the matrix's order (for the chain bonus)."""
    from detectors.attack import tactic_order as order

    return order()


def cli_actor(given: str | None) -> str:
    """Who a change made from the shell is audited under."""
    return given or f"cli:{getpass.getuser()}"


@click.group("incidents")
def incidents() -> None:
    """Correlate alerts into incidents; list, show and change them."""


@incidents.command("correlate")
@click.pass_context
def correlate_command(ctx: click.Context) -> None:
    """Fold the alerts not yet in an incident into incidents (soc detect does it after each
    run)."""
    from soc.incidents.service import correlate_store

    with _tables(ctx) as tables:
        done = correlate_store(tables, _settings(ctx), tactic_order())
    click.echo(
        f"{done.alerts:,} alerts: {done.created:,} new incidents, {done.updated:,} continued,"
        f" {done.escalated:,} escalated"
    )


@incidents.command("list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES))
@click.option("--level", type=click.Choice(LEVELS), help="This level or above.")
@click.option("--site", help="Only this site.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One incident document per line.")
@click.pass_context
def list_command(
    ctx: click.Context,
    statuses: tuple[str, ...],
    level: str | None,
    site: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Incidents, latest activity first."""
    query = IncidentQuery(
        statuses=statuses,
        min_level=level,
        sites=(site,) if site else None,
        limit=limit,
    )
    with _tables(ctx) as tables:
        docs, _ = tables.list_incidents(query)
    if as_json:
        for doc in docs:
            click.echo(orjson.dumps(doc).decode())
        return
    if not docs:
        click.echo("no incidents", err=True)
        return
    for doc in docs:
        click.echo(
            f"{doc['id'][:8]}  {doc['last_seen'][:19].replace('T', ' ')}  {doc['level']:8}"
            f" {doc['status']:14} {doc['site']:14} {doc['alert_count']:5,} alerts  {doc['title']}"
        )


@incidents.command("show")
@click.argument("incident_id")
@click.pass_context
def show_command(ctx: click.Context, incident_id: str) -> None:
    """One incident and its timeline (JSON)."""
    with _tables(ctx) as tables:
        doc = _find(tables, incident_id)
        doc["timeline"] = tables.timeline(doc["id"])
    click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


def _find(tables: IncidentTables, prefix: str) -> dict[str, Any]:
    doc = tables.get_incident(prefix)
    if doc is not None:
        return doc
    docs, _ = tables.list_incidents(IncidentQuery(limit=100_000))
    found = [d for d in docs if d["id"].startswith(prefix)]
    if len(found) != 1:
        raise click.BadParameter(
            "no incident with this id" if not found else "ambiguous id prefix",
            param_hint="INCIDENT_ID",
        )
    return found[0]


@incidents.command("update")
@click.argument("incident_id")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--owner")
@click.option("--unassign", is_flag=True)
@click.option("--comment")
@click.option("--as", "actor", help="Audited as this name (default: cli:<your login>).")
@click.pass_context
def update_command(
    ctx: click.Context,
    incident_id: str,
    status: str | None,
    owner: str | None,
    unassign: bool,
    comment: str | None,
    actor: str | None,
) -> None:
    """Change an incident's status (along the workflow) or owner, or comment on it."""
    from soc.incidents.service import change_incident

    with _tables(ctx) as tables:
        doc = _find(tables, incident_id)
        try:
            doc = change_incident(
                tables,
                doc["id"],
                cli_actor(actor),
                status=status,
                owner=owner,
                unassign=unassign,
                comment=comment,
            )
        except IncidentError as exc:
            raise click.BadParameter(exc.message, param_hint=f"--{exc.location}") from None
    click.echo(f"{doc['id']}: {doc['status']}, owner {doc.get('owner') or '-'}")


@click.command("audit")
@click.option("--actor")
@click.option("--action")
@click.option("--object-type")
@click.option("--object-id")
@click.option("--since", help="ISO 8601; UTC when no zone.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One audit row per line.")
@click.pass_context
def audit(
    ctx: click.Context,
    actor: str | None,
    action: str | None,
    object_type: str | None,
    object_id: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The audit trail, newest first: every access to incidents and every change, with who and
    when."""
    query = AuditQuery(
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        since_us=_time(since, "--since"),
        limit=limit,
    )
    with _tables(ctx) as tables:
        rows, _ = tables.list_audit(query)
    if as_json:
        for row in rows:
            click.echo(orjson.dumps(row).decode())
        return
    if not rows:
        click.echo("no audit rows", err=True)
        return
    for row in rows:
        moment = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["ts"] / 1e6))
        detail = orjson.dumps(row["detail"]).decode() if row["detail"] else ""
        click.echo(
            f"{moment}  {row['actor']:20} {row['action']:14} {row['object_type']}"
            f" {row['object_id'] or '-'}  {detail}"
        )
