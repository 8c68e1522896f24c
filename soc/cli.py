"""The ``soc`` command: a thin layer over the library; each command calls one library function.

Errors the toolkit raises on purpose (:class:`~soc.errors.SocError`) print one line naming what
and where, and exit with status 2; nothing prints a traceback at a user.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import IO, Any

import click
import orjson

from soc import __version__
from soc.assets import FOLDS, ROLE_ALIASES, AssetDoc, AssetInventory
from soc.clictx import parse_time as _time
from soc.clictx import settings as _settings
from soc.config import Settings, iter_settings
from soc.errors import SocError, StoreError
from soc.store.base import AssetQuery, EventQuery, EventStore, iter_events, open_store
from soc.types import Event


class _Group(click.Group):
    """A group that turns a ``SocError`` into a one-line message and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SocError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="soc")
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Configuration file (default: ./soc.toml if present, or $SOC_CONFIG).",
)
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """Industrial SOC toolkit: collect ICS traffic, store ECS events, detect, serve."""
    ctx.obj = {"config": config}


# -- config ----------------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Show the effective configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Print every setting with its value and where it came from (default, soc.toml, SOC_*)."""
    rows = iter_settings(_settings(ctx))
    if as_json:
        click.echo(orjson.dumps({k: {"value": v, "source": s} for k, v, s in rows}).decode())
        return
    width = max(len(k) for k, _, _ in rows)
    for key, value, source in rows:
        click.echo(f"{key:<{width}}  {value!s:<30}  {source}")


# -- store -----------------------------------------------------------------------------------


@main.group()
def store() -> None:
    """Create, inspect and maintain the event store."""


@store.command("init")
@click.pass_context
def store_init(ctx: click.Context) -> None:
    """Create the store (or bring its schema up to date) and list the applied migrations."""
    with _open(ctx) as db:
        info = db.info()
    click.echo(f"{info.backend} store ready: {info.location}")
    for name in info.schema:
        click.echo(f"  migration {name}")


@store.command("info")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@click.pass_context
def store_info(ctx: click.Context, as_json: bool) -> None:
    """Show the backend, its location, the schema version and the rows in each table."""
    with _open(ctx) as db:
        info = db.info()
    if as_json:
        click.echo(orjson.dumps(info.__dict__).decode())
        return
    click.echo(f"backend   {info.backend}\nlocation  {info.location}")
    click.echo(f"schema    {', '.join(info.schema)}")
    for table, n in info.counts.items():
        click.echo(f"  {table:<24} {n:>12,}")


@store.command("check")
@click.pass_context
def store_check(ctx: click.Context) -> None:
    """Verify the database file's integrity; exit non-zero when it is damaged."""
    with _open(ctx) as db:
        problems, location = db.check(), db.info().location
    if problems != ["ok"]:
        for line in problems:
            click.echo(line, err=True)
        raise StoreError("integrity check failed", location=location)
    click.echo("ok")


@store.command("optimize")
@click.pass_context
def store_optimize(ctx: click.Context) -> None:
    """Refresh the query planner's statistics; run it after a large ingest."""
    with _open(ctx) as db:
        db.optimize()
    click.echo("ok")


def _open(ctx: click.Context) -> closing[EventStore]:
    return closing(open_store(_settings(ctx)))


# -- events ----------------------------------------------------------------------------------


@main.group()
def events() -> None:
    """Import, query and count ECS events."""


@events.command("ingest")
@click.argument("source", type=click.File("rb"))
@click.option(
    "--collect-errors",
    is_flag=True,
    help="Skip and count bad lines instead of stopping at the first one.",
)
@click.pass_context
def events_ingest(ctx: click.Context, source: IO[bytes], collect_errors: bool) -> None:
    """Store ECS events from a JSON-lines file (``-`` for standard input).

    Ingesting the same file again stores nothing new: events are keyed by ``event.id``.
    """
    errors: list[str] = []
    name = getattr(source, "name", "-")
    with _open(ctx) as db:
        result = db.write_events(_read_jsonl(source, name, errors, collect_errors))
    click.echo(
        f"{result.written:,} events stored, {result.duplicates:,} already present,"
        f" {len(errors):,} bad lines"
    )
    for line in errors[:20]:
        click.echo(f"  {line}", err=True)
    if errors:
        ctx.exit(1)


def _read_jsonl(source: IO[bytes], name: str, errors: list[str], collect: bool) -> Iterator[Event]:
    for number, line in enumerate(source, start=1):
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            error = StoreError(f"bad JSON line: {exc}", location=f"{name}:{number}")
            if not collect:
                raise error from exc
            errors.append(str(error))
            continue
        yield doc


def _where(pairs: tuple[str, ...]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    grouped: dict[str, list[Any]] = {}
    for pair in pairs:
        field, sep, raw = pair.partition("=")
        if not sep or not field:
            raise click.BadParameter(f"expected FIELD=VALUE, got {pair!r}", param_hint="--where")
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = raw
        grouped.setdefault(field, []).append(value)
    return tuple((f, tuple(v)) for f, v in grouped.items())


@events.command("query")
@click.option("--since", help="Start time, inclusive (ISO 8601; UTC when no zone is given).")
@click.option("--until", help="End time, exclusive (ISO 8601).")
@click.option("--dataset", "datasets", multiple=True, help="e.g. ics.modbus; repeat for several.")
@click.option(
    "--where",
    "wheres",
    multiple=True,
    help="FIELD=VALUE (dotted ECS field; VALUE parsed as JSON when it can be); repeat: same field"
    " means any of the values, different fields must all match.",
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--cursor", help="Continue from the cursor a previous page printed.")
@click.option("--all", "everything", is_flag=True, help="Print every match, page after page.")
@click.option("--count-by", "count_by", help="Count matches by the values of this field instead.")
@click.pass_context
def events_query(
    ctx: click.Context,
    since: str | None,
    until: str | None,
    datasets: tuple[str, ...],
    wheres: tuple[str, ...],
    limit: int,
    cursor: str | None,
    everything: bool,
    count_by: str | None,
) -> None:
    """Print matching events as JSON lines, in time order.

    The next page's cursor goes to standard error as ``next-cursor: ...``.
    """
    query = EventQuery(
        start_us=_time(since, "--since"),
        end_us=_time(until, "--until"),
        datasets=datasets,
        where=_where(wheres),
        limit=limit,
        cursor=cursor,
    )
    out = sys.stdout.buffer
    with _open(ctx) as db:
        if count_by is not None:
            for value, n in db.count_events(query, by=count_by):
                out.write(orjson.dumps({count_by: value, "count": n}) + b"\n")
            return
        if everything:
            for doc in iter_events(db, query):
                out.write(orjson.dumps(doc) + b"\n")
            return
        page = db.query_events(query)
        for doc in page.events:
            out.write(orjson.dumps(doc) + b"\n")
        out.flush()
        if page.next_cursor:
            click.echo(f"next-cursor: {page.next_cursor}", err=True)


# -- collect ---------------------------------------------------------------------------------


_RULES_OPTION = click.option(
    "--rules",
    "rules_path",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Rules folder (default: detect.rules_dir, else the rules shipped with the toolkit).",
)


@main.command("collect")
@click.option(
    "--pcap",
    "captures",
    multiple=True,
    type=click.Path(path_type=Path, exists=True),
    help="A pcap/pcapng file (.gz, .zip too) or a directory of captures; repeat for several.",
)
@click.option("--iface", help="Capture live from this interface (needs root or CAP_NET_RAW).")
@click.option("--filter", "bpf", help="BPF filter for live capture, e.g. 'tcp port 502'.")
@click.option("--duration", type=click.FloatRange(min=0), help="Stop live capture after N seconds.")
@click.option(
    "--ring-mb",
    type=click.IntRange(min=2, max=4096),
    default=64,
    show_default=True,
    help="Live capture ring size in MiB: how long a burst the kernel can hold.",
)
@click.option(
    "--jsonl",
    "jsonl",
    type=click.File("wb", lazy=False),
    help="Write ECS events as JSON lines to this file ('-' for standard output) instead of the store.",
)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar (default: on a terminal)."
)
@click.option(
    "--detect",
    "inline_detect",
    is_flag=True,
    help="Run the detection rules on the store while collecting (as `soc detect`), alerts printed"
    " as they are raised.",
)
@click.option(
    "--detect-interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between detection runs with --detect.",
)
@_RULES_OPTION
@click.option("--summary-json", is_flag=True, help="Print the closing summary as JSON.")
@click.pass_context
def collect(
    ctx: click.Context,
    captures: tuple[Path, ...],
    iface: str | None,
    bpf: str | None,
    duration: float | None,
    ring_mb: int,
    jsonl: IO[bytes] | None,
    progress: bool | None,
    inline_detect: bool,
    detect_interval: float,
    rules_path: Path | None,
    summary_json: bool,
) -> None:
    """Dissect Modbus/TCP and OPC UA traffic from captures or a live interface into ECS events.

    Events go to the configured store, or to --jsonl. The summary (packets, flows, PDUs per
    protocol, parse errors with their location, gaps) is printed to standard error at the end.
    With --detect, the detection rules run on the store while collecting, and once more at the
    end over the last events (the same checkpoints as `soc detect`).
    """
    from collectors.pipeline import Collector
    from collectors.run import JsonlSink, StoreSink, collect_files, collect_frames, total_bytes

    if bool(captures) == bool(iface):
        raise click.UsageError("give --pcap FILE (one or more) or --iface IF")
    if inline_detect and jsonl is not None:
        raise click.UsageError(
            "--detect reads the store; for a capture to JSON lines use"
            " `soc detect --pcap FILE --jsonl OUT`"
        )
    settings = _settings(ctx)
    collector = Collector(settings.collect)
    live_summary: dict[str, int] | None = None
    sink: JsonlSink | StoreSink = JsonlSink(jsonl) if jsonl is not None else StoreSink(settings)
    try:
        inline = _inline_detection(ctx, rules_path, detect_interval) if inline_detect else None
    except BaseException:
        sink.close()
        raise
    try:
        if captures:
            show = sys.stderr.isatty() if progress is None else progress
            if show:
                with click.progressbar(
                    length=total_bytes(captures) or 1, label="collecting", file=sys.stderr
                ) as bar:
                    collect_files(captures, collector, sink, bar.update)
            else:
                collect_files(captures, collector, sink)
        else:
            assert iface is not None
            from collectors.live import LiveCapture

            stop = threading.Event()
            previous = {
                sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)
            }  # Ctrl-C, systemd or docker stop: read what the ring holds, then the summary
            try:
                with LiveCapture(iface, bpf, ring_mb=ring_mb) as live:
                    collector.source = f"live:{iface}"
                    click.echo(
                        f"capturing on {iface} (filter {bpf or 'none'}, ring {ring_mb} MiB); "
                        "Ctrl-C to stop",
                        err=True,
                    )
                    collect_frames(live.batches(stop, duration), collector, sink)
                    stats = live.stats()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            live_summary = {
                "received": stats.received,
                "kernel_packets": stats.kernel_packets,
                "kernel_dropped": stats.kernel_dropped,
                "kernel_freezes": stats.kernel_freezes,
            }
    finally:
        try:
            sink.close()
        finally:
            if inline is not None:
                inline.finish()  # the writer has stored everything: the last events' alerts
                inline.close()
    summary = collector.stats.summary()
    if live_summary is not None:
        summary["live"] = live_summary
    if inline is not None:
        totals = inline.totals
        summary["detection"] = {
            "runs": totals.runs,
            "failed_runs": totals.failures,
            "alerts_created": sum(totals.created.values()),
            "alerts_continued": sum(totals.updated.values()),
            "created_per_rule": totals.created,
            "incidents_created": totals.incidents_created,
            "incidents_continued": totals.incidents_updated,
        }
    summary["assets"] = len(sink.inventory)
    if isinstance(sink, StoreSink):
        summary["stored"] = {"written": sink.written, "duplicates": sink.duplicates}
    if summary_json:
        click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode(), err=True)
    else:
        _print_summary(summary)


def _inline_detection(ctx: click.Context, rules_path: Path | None, interval: float) -> Any:
    """Inline detection for `soc collect --detect`, printing each run's new alerts."""
    from detectors.inline import InlineDetection
    from detectors.runner import RunSummary, load_plans

    settings = _settings(ctx)
    if settings.store.backend != "sqlite":
        raise StoreError("detection runs on the sqlite backend", location="store.backend")
    plans = load_plans(_rules_dir(ctx, rules_path), settings.detect.site)
    titles = {plan.id: plan.rule.title for plan in plans}
    levels = {plan.id: plan.info.level or "-" for plan in plans}

    def show(summary: RunSummary) -> None:
        for rule_id, n in sorted(summary.created.items(), key=lambda kv: titles[kv[0]]):
            click.echo(f"alert: {n:,} new [{levels[rule_id]}] {titles[rule_id]}", err=True)

    return InlineDetection(settings, plans, interval=interval, on_run=show).__enter__()


def _print_summary(summary: dict[str, Any]) -> None:
    packets = summary["packets"]
    lines = [
        f"frames {summary['frames']:,}: tcp {packets.get('tcp', 0):,}, udp {packets.get('udp', 0):,}"
        + "".join(f", {k} {v:,}" for k, v in packets.items() if k not in ("tcp", "udp")),
        f"flows {summary['flows']:,}; gaps {summary['gaps']:,} ({summary['gap_bytes']:,} bytes); "
        f"retransmissions {summary['retransmissions']:,}; out of order {summary['out_of_order']:,}",
        "PDUs "
        + (", ".join(f"{k} {v:,}" for k, v in summary["pdus"].items()) or "none")
        + f"; events {summary['events']:,}",
        "modbus " + ", ".join(f"{k} {v:,}" for k, v in summary["modbus"].items()),
        "opcua " + ", ".join(f"{k} {v:,}" for k, v in summary["opcua"].items()),
        *(
            f"{name} " + ", ".join(f"{k} {v:,}" for k, v in summary[name].items())
            for name in ("mqtt", "dlms")
            if summary.get(name, {}).get("messages")
        ),
        f"parse errors {summary['parse_errors']:,}",
        f"assets {summary['assets']:,} hosts seen",
    ]
    if "live" in summary:
        live = summary["live"]
        lines.append(
            f"live: received {live['received']:,}, kernel packets {live['kernel_packets']:,}, "
            f"dropped by the kernel {live['kernel_dropped']:,} (ring full {live['kernel_freezes']:,} times)"
        )
    lines += [f"  {e['location']}: {e['message']}" for e in summary["errors"][:20]]
    if "detection" in summary:
        found = summary["detection"]
        lines.append(
            f"detection: {found['runs']:,} runs, {found['alerts_created']:,} alerts raised,"
            f" {found['alerts_continued']:,} continued; {found['incidents_created']:,} incidents"
            f" opened, {found['incidents_continued']:,} continued"
            + (f", {found['failed_runs']:,} runs failed" if found["failed_runs"] else "")
            + " (`soc alerts`, `soc incidents list`)"
        )
    if "stored" in summary:
        lines.append(
            f"stored {summary['stored']['written']:,} events "
            f"({summary['stored']['duplicates']:,} already present)"
        )
        if summary["stored"]["duplicates"]:
            lines.append(
                "  the assets' counts include the events already present:"
                " `soc assets --rebuild` recounts them from the stored events"
            )
    for line in lines:
        click.echo(line, err=True)


# -- assets ----------------------------------------------------------------------------------


@main.command("assets")
@click.option(
    "--role",
    type=click.Choice(sorted(ROLE_ALIASES)),
    help="Only clients or servers (Modbus: master = client, slave = server).",
)
@click.option("--protocol", help="Only assets speaking this protocol, e.g. modbus.")
@click.option("--ip", "network", help="Only this address or network, e.g. 10.0.0.0/24.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document per line, not a table.")
@click.option(
    "--rebuild",
    is_flag=True,
    help="Recompute the assets from the stored events first (after `soc events ingest`).",
)
@click.pass_context
def assets(
    ctx: click.Context,
    role: str | None,
    protocol: str | None,
    network: str | None,
    as_json: bool,
    rebuild: bool,
) -> None:
    """List the hosts seen in the traffic: MACs, roles, ports, unit ids, function codes, times
    seen and the identity their devices reported."""
    query = AssetQuery(network=network, role=role, protocol=protocol)
    with closing(open_store(_settings(ctx), create=False)) as db:
        if rebuild:
            inventory = AssetInventory()
            inventory.observe_all(iter_events(db, EventQuery(datasets=tuple(FOLDS), limit=10_000)))
            count = db.upsert_assets(inventory.docs(), replace=True)
            click.echo(f"rebuilt {count:,} assets from the stored events", err=True)
        docs = db.list_assets(query)
    if as_json:
        out = sys.stdout.buffer
        for doc in docs:
            out.write(orjson.dumps(doc) + b"\n")
        out.flush()
        return
    if not docs:
        filtered = network or role or protocol
        click.echo(
            "no assets match"
            if filtered
            else "no assets yet: `soc collect` finds them (`soc assets --rebuild` after"
            " `soc events ingest`)",
            err=True,
        )
        return
    _print_table(_ASSET_COLUMNS, [_asset_row(doc) for doc in docs])


_ASSET_COLUMNS = (
    "IP",
    "ROLES",
    "PROTOCOLS",
    "UNITS",
    "CODES",
    "EVENTS",
    "EXC",
    "FIRST SEEN",
    "LAST SEEN",
    "MACS",
    "IDENTITY",
)


def _asset_row(doc: AssetDoc) -> tuple[str, ...]:
    protocols = [p for p in doc.get("protocols", []) if isinstance(doc.get(p), dict)]
    units: list[str] = []
    codes: list[str] = []
    for name in protocols:
        part = doc[name]
        units += [str(u) for u in part.get("unit_ids", part.get("units", []))]
        for side, listed in (part.get("function_codes") or part.get("codes") or {}).items():
            if listed:
                codes.append(f"{side} {','.join(listed)}")
    identity = doc.get("identity", {})
    return (
        doc["ip"],
        ",".join(doc.get("roles", [])) or "-",
        ",".join(
            f"{p}/{'+'.join(map(str, doc[p].get('ports', [])))}" if doc[p].get("ports") else p
            for p in protocols
        )
        or "-",
        ",".join(units) or "-",
        "; ".join(codes) or "-",
        f"{doc.get('events', 0):,}",
        f"{doc.get('exceptions', 0):,}",
        _short_time(doc.get("first_seen")),
        _short_time(doc.get("last_seen")),
        ",".join(doc.get("macs", [])) or "-",
        " / ".join(
            str(identity[k])
            for k in ("vendor", "product", "product_code", "revision")
            if k in identity
        ),
    )


def _short_time(value: Any) -> str:
    return value[:19].replace("T", " ") if isinstance(value, str) else "-"


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# -- lab and demo ----------------------------------------------------------------------------

from lab.cli import lab as _lab_group  # noqa: E402 - the lab's commands live with the lab

main.add_command(_lab_group)


def _attach_incident_and_api_commands() -> None:
    from api.cli import keys, serve, users
    from detectors.baseline_cli import baseline
    from detectors.ml_cli import detectors
    from soc.incidents.cli import audit, incidents
    from soc.readings_cli import readings

    for command in (incidents, audit, serve, users, keys, readings, baseline, detectors):
        main.add_command(command)


_attach_incident_and_api_commands()


@main.command("demo")
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=20.0,
    show_default=True,
    help="Seconds of normal operation before the attacks.",
)
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    default=("all",),
    show_default=True,
    help="Attack scenarios to run (repeatable; see `soc lab list`).",
)
@click.option(
    "--serve/--no-serve",
    default=True,
    show_default=True,
    help="Serve the API at the end (with demo accounts) until Ctrl-C.",
)
@click.option("--port", type=click.IntRange(1, 65535), help="The API's port (default: api.port).")
@click.pass_context
def demo(
    ctx: click.Context,
    duration: float,
    scenarios: tuple[str, ...],
    serve: bool,
    port: int | None,
) -> None:
    """The main job on the embedded store: lab, attacks, live collection, detection, incidents,
    and the API serving them; what to look at."""
    from soc.demo import run_demo

    settings = _settings(ctx)
    started = time.monotonic()
    with closing(open_store(settings)):
        pass  # creates the store and applies migrations before the writer starts
    try:
        report = run_demo(
            settings,
            normal_s=duration,
            scenarios=scenarios,
            say=lambda message: click.echo(f"  {message}", err=True),
        )
    except KeyError as exc:
        raise click.BadParameter(
            f"unknown scenario {exc.args[0]!r} (see `soc lab list`)", param_hint="--scenario"
        ) from None
    elapsed = time.monotonic() - started
    lab = report.lab
    echo = click.echo
    echo("")
    echo(f"Demo done in {elapsed:.0f} s. Traffic: {report.source}.")
    if lab is not None:
        echo(f"  lab services: {', '.join(lab.services) or 'none'}; {lab.capture_note}")
        for name, why in lab.failed_services.items():
            echo(f"  service {name} did not start: {why}")
    stored = report.summary["stored"]
    echo(
        f"Events stored: {stored['written']:,} "
        + "("
        + ", ".join(f"{k} {v:,}" for k, v in report.datasets)
        + f"); parse errors {report.summary['parse_errors']:,}"
    )
    echo(f"Hosts found (soc assets): {len(report.assets)}")
    for doc in report.assets:
        roles = ",".join(doc.get("roles", [])) or "-"
        echo(f"  {doc['ip']:15} {roles:14} {doc.get('events', 0):>8,} events")
    echo("Attacks (ground truth) and the events to or from the attacker in each one's window:")
    collected = {str(name).removeprefix("ics.") for name, _ in report.datasets}
    for attack in report.attacks:
        actions = ", ".join(f"{a} {n:,}" for a, n in attack["actions"])
        outcome = "" if attack["outcome"] == "done" else f" [{attack['outcome']}]"
        seen = (
            f"{attack['events']:>7,} events{outcome}" + (f": {actions}" if actions else "")
            if attack["protocol"] in collected
            else f"(in the capture; the {attack['protocol']} collector is not built yet){outcome}"
        )
        alerted = attack.get("alerted") or []
        if attack["protocol"] in collected:
            missing = sorted(set(attack["techniques"]) - set(alerted))
            seen += f"\n  {'':29} alerts raised: {', '.join(alerted) or 'none new'}" + (
                f" (no new alert for {', '.join(missing)})" if missing else ""
            )
        echo(f"  {attack['scenario']:29} {','.join(attack['techniques']):12} {seen}")
    total = sum(n for _, _, n in report.alerts_by_rule)
    echo(
        f"Detection (inline, as soc collect --detect; {report.detection_s:.1f} s): {total:,} alerts from "
        f"{len(report.alerts_by_rule)} rules"
    )
    for _rule, title, count in report.alerts_by_rule[:12]:
        echo(f"  {count:>5,}  {title}")
    echo(f"Incidents (alerts correlated by site, attacker and asset): {len(report.incidents)}")
    for doc in report.incidents:
        echo(
            f"  {doc['id'][:8]}  {doc['level']:8} {doc['site']:13} {doc['alert_count']:4} alerts"
            f"  {doc['title']}"
        )
    echo("Look at:")
    from lab.base import LabSite

    attacker = LabSite().attacker
    echo("  soc assets")
    echo(f"  soc events query --where source.ip={attacker} --limit 5")
    echo("  soc events query --count-by event.action --dataset ics.modbus")
    echo("  soc alerts --limit 5")
    echo("  soc incidents list; soc audit")
    echo("  soc rules report --format html --out rules-report.html")
    if lab is not None:
        echo(f"  labels and process values: {lab.out / 'labels.json'}, {lab.out / 'values.json'}")
        if lab.capture is not None:
            echo(f"  the capture: {lab.capture} (open it in Wireshark)")
    if serve:
        _serve_demo(settings, port or settings.api.port)


def _serve_demo(settings: Settings, port: int) -> None:
    """Serve the API over the demo's store with fresh demo accounts, until Ctrl-C."""
    import uvicorn

    from api.app import build_app
    from soc.demo import demo_accounts

    accounts = demo_accounts(settings)
    app = build_app(settings)
    base = f"http://{settings.api.host}:{port}"
    echo = click.echo
    echo(f"API: {base}/docs (OpenAPI: {base}/openapi.json); Ctrl-C stops it.")
    echo("  demo accounts (new passwords each run):")
    for name, (password, what) in accounts.items():
        echo(f"    {name:9} {password}  {what}")
    user, (password, _) = next(iter(accounts.items()))
    echo(
        f"  TOKEN=$(curl -s -d grant_type=password -d username={user} -d password={password}"
        f" {base}/auth/token | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')"
    )
    echo(f'  curl -s -H "Authorization: Bearer $TOKEN" {base}/incidents')
    echo(f"serving on {base}", err=True)
    uvicorn.run(app, host=settings.api.host, port=port, log_level="warning", access_log=False)


# -- rules -----------------------------------------------------------------------------------


@main.group()
def rules() -> None:
    """List, check, test and report on the Sigma detection rules."""


def _attach_rules_commands() -> None:
    from detectors.evaluate_cli import evaluate as rules_evaluate
    from detectors.export_cli import export as rules_export
    from detectors.report_cli import report as rules_report

    rules.add_command(rules_report)
    rules.add_command(rules_export)
    rules.add_command(rules_evaluate)


_attach_rules_commands()


def _rules_dir(ctx: click.Context, given: Path | None) -> Path:
    from rules import rules_dir

    return given or _settings(ctx).detect.rules_dir or rules_dir()


@rules.command("list")
@_RULES_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON document per rule.")
@click.pass_context
def rules_list(ctx: click.Context, rules_path: Path | None, as_json: bool) -> None:
    """List the alerting rules: id, level, ATT&CK for ICS techniques and title."""
    from detectors.sigma import compile_rules

    compiled = compile_rules(_rules_dir(ctx, rules_path), _settings(ctx).detect.site)
    if as_json:
        for rule in compiled:
            doc = {
                "id": rule.id,
                "title": rule.title,
                "level": rule.level,
                "status": rule.status,
                "techniques": list(rule.techniques),
                "tactics": list(rule.tactics),
                "correlation": rule.correlation_type,
                "file": str(rule.path),
            }
            click.echo(orjson.dumps(doc).decode())
        return
    if not compiled:
        click.echo("no rules", err=True)
        return
    rows: list[tuple[str, ...]] = [
        (rule.id, rule.level or "-", ",".join(rule.techniques) or "-", rule.title)
        for rule in sorted(compiled, key=lambda r: (str(r.path), r.title))
    ]
    _print_table(("ID", "LEVEL", "TECHNIQUES", "TITLE"), rows)


@rules.command("check")
@_RULES_OPTION
@click.pass_context
def rules_check(ctx: click.Context, rules_path: Path | None) -> None:
    """Validate every rule (pySigma's validators, offline, and ours); exit 1 on a problem.

    Each rule file must load, pass pySigma's validators (identifiers and titles unique, tags,
    conditions, modifiers ...), carry id, status, level, description, falsepositives and an
    ATT&CK for ICS technique tag, compile for the configured site, and have a .tests.yml with a
    positive and a negative case.
    """
    from detectors.sigma import check_rules

    problems = check_rules(_rules_dir(ctx, rules_path), _settings(ctx).detect.site)
    bad = 0
    for path, found in problems.items():
        if not found:
            click.echo(f"ok    {path}")
            continue
        bad += 1
        click.echo(f"FAIL  {path}")
        for problem in found:
            click.echo(f"        {problem}")
    total = sum(len(found) for found in problems.values())
    click.echo(f"{len(problems)} rule files, {bad} with problems ({total} problems)")
    if bad:
        ctx.exit(1)


@rules.command("test")
@_RULES_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON report instead of text.")
@click.option(
    "--configured-site",
    is_flag=True,
    help="Compile with the configured [detect.site] instead of the lab's site the cases are"
    " written against.",
)
@click.pass_context
def rules_test(
    ctx: click.Context, rules_path: Path | None, as_json: bool, configured_site: bool
) -> None:
    """Run every rule's test cases (<slug>.tests.yml); exit 1 when one fails."""
    from datetime import UTC, datetime

    from detectors.sigma import rule_files, run_tests, tests_path
    from soc.config import LAB_SITE

    folder = _rules_dir(ctx, rules_path)
    site = _settings(ctx).detect.site if configured_site else LAB_SITE
    started = datetime.now(UTC)
    results = run_tests(folder, site)
    untested = [str(p) for p in rule_files(folder) if not tests_path(p).exists()]
    failed = [r for r in results if not r.passed]
    if as_json:
        report = {
            "ran_at": started.isoformat(timespec="seconds"),
            "rules_dir": str(folder),
            "site": "configured" if configured_site else "lab",
            "passed": not failed,
            "cases": len(results),
            "failed": len(failed),
            "untested_files": untested,
            "results": [r.as_dict() for r in results],
        }
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        for result in results:
            verdict = "PASS" if result.passed else "FAIL"
            if result.rule_id == "-":  # the file did not load or compile
                click.echo(f"{verdict}  {result.file}")
            else:
                click.echo(f"{verdict}  {result.rule_id}  {result.title} :: {result.case}")
            if result.error:
                click.echo(f"        error: {result.error}")
            elif not result.passed:
                expected = "a match" if result.expected else "no match"
                click.echo(f"        expected {expected}, matched {len(result.matched)} events")
        for path in untested:
            click.echo(f"NONE  {path}: no test cases")
        click.echo(
            f"{len(results)} cases: {len(results) - len(failed)} passed, {len(failed)} failed"
        )
    if failed:
        ctx.exit(1)


# -- detect ----------------------------------------------------------------------------------


@main.command("detect")
@_RULES_OPTION
@click.option(
    "--follow", is_flag=True, help="Keep running: detect over new events every --interval seconds."
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between runs with --follow.",
)
@click.option(
    "--pcap",
    "captures",
    multiple=True,
    type=click.Path(path_type=Path, exists=True),
    help="Detect over a capture collected in memory instead of the store (repeat for several).",
)
@click.option(
    "--jsonl",
    type=click.File("wb", lazy=False),
    help="With --pcap: write the alerts as JSON lines to this file ('-' for standard output).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run's summary as JSON.")
@click.pass_context
def detect(
    ctx: click.Context,
    rules_path: Path | None,
    follow: bool,
    interval: float,
    captures: tuple[Path, ...],
    jsonl: IO[bytes] | None,
    as_json: bool,
) -> None:
    """Run the detection rules over the events stored since the last run (a checkpoint per rule).

    Every matching event alerts exactly once, across runs and restarts; alerts go to the store's
    alerts table (see `soc alerts`). With --pcap FILE --jsonl OUT, the capture is collected in
    memory and its alerts written as JSON lines; the store is not touched.
    """
    from detectors.attack import tactic_order
    from detectors.runner import Detector, collect_captures, detect_events, load_plans
    from soc.incidents.service import Correlator
    from soc.store.sqlite import SQLiteStore
    from soc.store.sqlite_incidents import IncidentTables

    settings = _settings(ctx)
    if captures and follow:
        raise click.UsageError("--follow reads the store; it does not go with --pcap")
    if jsonl is not None and not captures:
        raise click.UsageError("--jsonl goes with --pcap")
    plans = load_plans(_rules_dir(ctx, rules_path), settings.detect.site)
    if captures:
        started = time.perf_counter()
        found = detect_events(collect_captures(captures, settings.collect), plans)
        out = jsonl if jsonl is not None else sys.stdout.buffer
        for doc in found:
            out.write(orjson.dumps(doc) + b"\n")
        out.flush()
        counts: dict[str, int] = {}
        for doc in found:
            counts[doc["rule"]["name"]] = counts.get(doc["rule"]["name"], 0) + 1
        click.echo(f"{len(found)} alerts in {time.perf_counter() - started:.2f} s", err=True)
        for name, n in sorted(counts.items()):
            click.echo(f"  {n:6,}  {name}", err=True)
        return
    titles = {plan.id: plan.rule.title for plan in plans}
    with closing(open_store(settings)) as opened:
        if not isinstance(opened, SQLiteStore):
            raise StoreError("detection runs on the sqlite backend", location="store.backend")
        detector = Detector(opened, plans)
        correlator = Correlator(IncidentTables(opened), settings, tactic_order(detector.table))
        stop = threading.Event()
        previous = (
            {
                sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)
            }
            if follow
            else {}
        )
        try:
            while True:
                summary = detector.run_once()
                incidents = correlator.run()
                if as_json:
                    doc = {
                        "events": summary.events,
                        "seconds": round(summary.seconds, 3),
                        "created": summary.created,
                        "updated": summary.updated,
                        "incidents": {
                            "created": incidents.created,
                            "updated": incidents.updated,
                            "escalated": incidents.escalated,
                        },
                    }
                    click.echo(orjson.dumps(doc).decode())
                elif summary.alerts or not follow:
                    click.echo(
                        f"{summary.events:,} new events, {sum(summary.created.values()):,} new"
                        f" alerts, {sum(summary.updated.values()):,} continued"
                        f" ({summary.seconds:.2f} s)"
                    )
                    for rule_id in sorted(
                        {*summary.created, *summary.updated}, key=lambda r: titles.get(r, r)
                    ):
                        click.echo(
                            f"  {summary.created.get(rule_id, 0):5,} new"
                            f" {summary.updated.get(rule_id, 0):5,} continued  {titles[rule_id]}"
                        )
                    if incidents.alerts:
                        click.echo(
                            f"incidents: {incidents.created:,} new, {incidents.updated:,}"
                            f" continued, {incidents.escalated:,} escalated"
                            " (`soc incidents list`)"
                        )
                if not follow or stop.wait(interval):
                    break
        finally:
            correlator.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@main.command("alerts")
@click.option("--rule", "rule_id", help="Only the alerts of this rule id.")
@click.option("--since", help="Alerts whose first event is at or after this time (ISO 8601).")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One alert document per line.")
@click.pass_context
def alerts(
    ctx: click.Context, rule_id: str | None, since: str | None, limit: int, as_json: bool
) -> None:
    """List the stored alerts, newest first (`soc detect` raises them)."""
    from soc.store.base import AlertQuery

    query = AlertQuery(rule_id=rule_id, start_us=_time(since, "--since"), limit=limit)
    with _open(ctx) as opened:
        found = opened.query_alerts(query)
    if as_json:
        for row in found:
            click.echo(orjson.dumps(row.doc).decode())
        return
    if not found:
        click.echo("no alerts", err=True)
        return
    rows: list[tuple[str, ...]] = [
        (
            _short_time(row.doc.get("@timestamp")),
            str(row.doc.get("labels", {}).get("level", "-")),
            ",".join(row.doc.get("threat", {}).get("technique", {}).get("id", [])) or "-",
            str(row.doc.get("source", {}).get("ip", "-")),
            str(row.doc.get("destination", {}).get("ip", "-")),
            f"{row.doc.get('ics', {}).get('alert', {}).get('event_count', 0):,}",
            str(row.doc.get("rule", {}).get("name", row.rule_id)),
        )
        for row in found
    ]
    _print_table(("FIRST", "LEVEL", "TECHNIQUES", "SOURCE", "DESTINATION", "EVENTS", "RULE"), rows)
