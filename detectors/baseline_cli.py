"""``soc baseline``: learning mode and protect mode from the shell.

Attached to ``soc`` by ``soc/cli.py``. A site is one of ``[incidents.sites]`` (its networks): an
event belongs to it when its source or destination is in one of them. Baselines live in the
store, one revision per change (:mod:`soc.store.sqlite_baselines`); every change is audited.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import orjson
import yaml

from detectors.attack import load_table
from detectors.baseline import Baseline, alerts_of, check, learn
from soc.clictx import parse_time
from soc.clictx import settings as _settings
from soc.errors import StoreError
from soc.event import format_timestamp, parse_timestamp
from soc.incidents.cli import cli_actor
from soc.incidents.correlate import SiteMap
from soc.store.base import AlertRow, EventQuery, iter_events
from soc.store.sqlite import SQLiteStore
from soc.store.sqlite_baselines import BaselineTables, NotAcceptable
from soc.store.sqlite_incidents import IncidentTables
from soc.types import Event


@contextmanager
def site_store(ctx: click.Context) -> Iterator[tuple[SQLiteStore, SiteMap]]:
    """The store and the sites' networks, from the configuration (the sqlite backend)."""
    settings = _settings(ctx)
    if settings.store.backend != "sqlite":
        raise StoreError("baselines live in the sqlite backend", location="store.backend")
    sites = SiteMap(settings.incidents.sites, settings.incidents.criticality)
    with SQLiteStore.from_settings(settings) as store:
        yield store, sites


def site_events(
    store: SQLiteStore, sites: SiteMap, site: str, since: int | None, until: int | None
) -> Iterator[Event]:
    """The stored events of a period whose source or destination is in the site's networks
    (``--site`` must name a configured site)."""
    if site not in sites.site_names:
        raise click.BadParameter(
            f"{site!r} is not a site of [incidents.sites] ({', '.join(sites.site_names)})",
            param_hint="--site",
        )
    query = EventQuery(start_us=since, end_us=until, limit=10_000)
    for doc in iter_events(store, query):
        ips = ((doc.get("source") or {}).get("ip"), (doc.get("destination") or {}).get("ip"))
        if any(sites.site_of(ip) == site for ip in ips):
            yield doc


def _write_yaml(doc: dict[str, Any], out: str | None) -> None:
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    if out in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(str(out)).write_text(text, encoding="utf-8")


@click.group("baseline")
def baseline() -> None:
    """Learning mode: learn a site's normal communication, review it, and alert on what is new
    (protect mode); accept an alert into the baseline."""


_SITE = click.option("--site", required=True, help="A site of [incidents.sites].")
_AS = click.option("--as", "actor", help="Audited as this name (default: cli:<your login>).")


@baseline.command("learn")
@_SITE
@click.option("--since", help="Start of the learning period (ISO 8601).")
@click.option("--until", help="End of the learning period (ISO 8601).")
@click.option("--out", help="Also write the baseline as YAML to this file ('-': stdout).")
@_AS
@click.pass_context
def learn_command(
    ctx: click.Context,
    site: str,
    since: str | None,
    until: str | None,
    out: str | None,
    actor: str | None,
) -> None:
    """Learn a site's baseline from the stored events of a period; stored as a new revision."""
    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    with site_store(ctx) as (store, sites):
        learnt = learn(
            site,
            site_events(store, sites, site, start, end),
            format_timestamp(start) if start is not None else "",
            format_timestamp(end) if end is not None else "",
        )
        if not learnt.events:
            raise click.ClickException(f"no request of site {site} in the period: nothing learnt")
        now = time.time_ns() // 1000
        who = cli_actor(actor)
        revision = BaselineTables(store).save(learnt, who, "learnt", now)
        IncidentTables(store).audit(now, who, "baseline.learn", "baseline", f"{site}#{revision}",
                                    {"start": learnt.start, "end": learnt.end})  # fmt: skip
    doc = learnt.doc()
    click.echo(
        f"baseline of {site}, revision {revision}: {learnt.events:,} requests from "
        f"{learnt.start} to {learnt.end}; " + ", ".join(
            f"{len(doc[k])} {k}" for k in ("communications", "modbus", "opcua", "dlms", "mqtt")),
        err=True,
    )  # fmt: skip
    if out is not None:
        _write_yaml(doc, out)


@baseline.command("show")
@_SITE
@click.option("--revision", type=int, help="This revision (default: the latest).")
@click.option("--json", "as_json", is_flag=True, help="JSON, not YAML.")
@click.pass_context
def show(ctx: click.Context, site: str, revision: int | None, as_json: bool) -> None:
    """Write a site's baseline (YAML, to review or edit and `soc baseline import`)."""
    with site_store(ctx) as (store, _):
        found = BaselineTables(store).get(site, revision)
    if found is None:
        raise click.ClickException(f"no baseline for {site} (`soc baseline learn --site {site}`)")
    if as_json:
        click.echo(orjson.dumps(found.doc()).decode())
    else:
        _write_yaml(found.doc(), None)


@baseline.command("list")
@click.option("--site", help="Only this site.")
@click.pass_context
def list_command(ctx: click.Context, site: str | None) -> None:
    """List the stored baseline revisions: site, revision, when, who and why."""
    with site_store(ctx) as (store, _):
        rows = BaselineTables(store).revisions(site)
    for name, revision, created, by, reason in rows:
        click.echo(f"{name}  #{revision}  {format_timestamp(created)}  {by}  {reason}")


@baseline.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_AS
@click.pass_context
def import_command(ctx: click.Context, path: Path, actor: str | None) -> None:
    """Store a reviewed baseline file (YAML or JSON) as its site's next revision."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        reviewed = Baseline.from_doc(loaded if isinstance(loaded, dict) else {})
    except (yaml.YAMLError, ValueError) as exc:
        raise click.BadParameter(f"{path.name}: {exc}", param_hint="PATH") from exc
    with site_store(ctx) as (store, sites):
        if reviewed.site not in sites.site_names:
            raise click.BadParameter(f"{path.name}: site {reviewed.site!r} is not configured")
        now, who = time.time_ns() // 1000, cli_actor(actor)
        revision = BaselineTables(store).save(reviewed, who, f"imported {path.name}", now)
        IncidentTables(store).audit(now, who, "baseline.import", "baseline",
                                    f"{reviewed.site}#{revision}", {"file": path.name})  # fmt: skip
    click.echo(f"baseline of {reviewed.site}: revision {revision}", err=True)


@baseline.command("check")
@_SITE
@click.option("--since", help="From this time (ISO 8601; default: the baseline's end).")
@click.option("--until", help="Before this time (ISO 8601).")
@click.option("--no-store", is_flag=True, help="Print the alerts only; do not store them.")
@click.option("--json", "as_json", is_flag=True, help="The alert documents, one per line.")
@click.pass_context
def check_command(
    ctx: click.Context,
    site: str,
    since: str | None,
    until: str | None,
    no_store: bool,
    as_json: bool,
) -> None:
    """Protect mode: alert on the requests of a period that the site's baseline does not hold,
    each alert saying what is new and the nearest known behaviour."""
    with site_store(ctx) as (store, sites):
        learnt = BaselineTables(store).get(site)
        if learnt is None:
            raise click.ClickException(f"no baseline for {site} (`soc baseline learn`)")
        start = parse_time(since, "--since")
        if start is None and learnt.end:
            start = parse_timestamp(learnt.end) + 1
        events = site_events(store, sites, site, start, parse_time(until, "--until"))
        found = check(learnt, events)
        now = time.time_ns() // 1000
        docs = alerts_of(found, load_table(), now, site, learnt.revision)
        if docs and not no_store:
            store.write_alerts(alert_row(doc) for doc in docs)
    if as_json:
        for doc in docs:
            click.echo(orjson.dumps(doc).decode())
        return
    for doc in docs:
        count = doc["ics"]["alert"]["event_count"]
        click.echo(f"alert {doc['event']['id']}  {count:,} events  {doc['message']}")
    click.echo(f"{len(docs):,} alerts from {len(found):,} requests not in revision "
               f"{learnt.revision}" + ("" if no_store else " (stored)"), err=True)  # fmt: skip


def alert_row(doc: dict[str, Any]) -> AlertRow:
    """An alert document as the store's row (what ``soc detect`` stores for the rules')."""
    alert = doc["ics"]["alert"]
    return AlertRow(
        doc["event"]["id"],
        doc["rule"]["id"],
        orjson.dumps([doc["source"]["ip"], doc["destination"]["ip"]]).decode(),
        parse_timestamp(doc["event"]["start"]),
        parse_timestamp(doc["event"]["end"]),
        int(doc["event"]["severity"]),
        {**doc, "ics": {**doc["ics"], "alert": alert}},
    )


@baseline.command("accept")
@click.argument("alert_id")
@_AS
@click.pass_context
def accept_command(ctx: click.Context, alert_id: str, actor: str | None) -> None:
    """Accept a protect-mode alert: what it found becomes part of its site's baseline (a new
    revision, audited)."""
    with site_store(ctx) as (store, _):
        try:
            site, revision = BaselineTables(store).accept_alert(
                alert_id, cli_actor(actor), time.time_ns() // 1000
            )
        except NotAcceptable as exc:
            raise click.BadParameter(exc.message, param_hint="ALERT_ID") from exc
    click.echo(f"baseline of {site}: revision {revision} holds what alert {alert_id} found")
