"""``soc readings``: the meter readings the DLMS/COSEM collector stored (energy registers,
instantaneous values and load profiles), by meter, OBIS code and time.

Attached to ``soc`` by ``soc/cli.py``. Readings are personal data (a household's consumption):
this command reads the local store as its operator; the API serves them only under consent
(the energy feed).
"""

from __future__ import annotations

import sys
from contextlib import closing

import click
import orjson

from soc.clictx import parse_time
from soc.clictx import settings as _settings
from soc.errors import StoreError
from soc.event import format_timestamp
from soc.store.sqlite import SQLiteStore
from soc.store.sqlite_readings import ReadingQuery, ReadingTables


@click.command("readings")
@click.option("--meter", help="Only this meter (its system title, serial or address).")
@click.option("--obis", help="Only this OBIS code or codes starting so, e.g. 1-0:1.8.")
@click.option("--since", help="From this time (ISO 8601, UTC when no zone).")
@click.option("--until", help="Before this time (ISO 8601).")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=1000, show_default=True)
@click.option("--meters", "per_meter", is_flag=True, help="One line per meter: counts, times.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document per line.")
@click.pass_context
def readings(
    ctx: click.Context,
    meter: str | None,
    obis: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    per_meter: bool,
    as_json: bool,
) -> None:
    """List stored meter readings, oldest first: time, meter, OBIS code, value and unit (the
    register's scaler applied), import or export, and the profile interval."""
    settings = _settings(ctx)
    if settings.store.backend != "sqlite":
        raise StoreError("meter readings live in the sqlite backend", location="store.backend")
    query = ReadingQuery(
        meter, obis, parse_time(since, "--since"), parse_time(until, "--until"), limit
    )
    with closing(SQLiteStore.from_settings(settings)) as store:
        tables = ReadingTables(store)
        if per_meter:
            for meter_id, count, first, last in tables.meters():
                line = {"meter_id": meter_id, "readings": count, "first": format_timestamp(first),
                        "last": format_timestamp(last)}  # fmt: skip
                click.echo(
                    orjson.dumps(line).decode()
                    if as_json
                    else f"{meter_id}  {count:,} readings  {line['first']} .. {line['last']}"
                )
            return
        rows = tables.query(query)
    if as_json:
        out = sys.stdout.buffer
        for row in rows:
            out.write(orjson.dumps(row.doc()) + b"\n")
        out.flush()
        return
    if not rows:
        click.echo("no readings match (the DLMS collector stores them: `soc collect`)", err=True)
        return
    for row in rows:
        unit = f" {row.unit}" if row.unit else ""
        extra = "".join(
            f"  {part}" for part in (row.direction, row.interval_s and f"{row.interval_s}s") if part
        )
        click.echo(
            f"{format_timestamp(row.ts_us)}  {row.meter_id}  {row.obis}  {row.value:g}{unit}{extra}"
        )
