"""``soc rules export``: the rules for Elasticsearch (:mod:`detectors.export`) as a click command.

Attached to the ``soc rules`` group by ``soc/cli.py`` (``rules.add_command(export)``); it also
runs alone (``CliRunner().invoke(export, [...])``), reading the configuration itself then.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from soc.clictx import settings as _settings


@click.command("export")
@click.option(
    "--target",
    type=click.Choice(["lucene", "esql", "elastic-ndjson", "kibana-ndjson"]),
    required=True,
    help="lucene / esql: one JSON line per rule (id, title, query); elastic-ndjson: Elastic"
    " Security detection rules to import in Kibana; kibana-ndjson: Kibana saved searches (ES|QL).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("-"),
    show_default=True,
    help="The file to write ('-': standard output).",
)
@click.option(
    "--index",
    default="logs-ics.*",
    show_default=True,
    help="The index pattern the queries read (the ics data streams: logs-ics.modbus-*, ...).",
)
@click.option(
    "--interval",
    default="5m",
    show_default=True,
    help="How often Elastic Security runs each rule (elastic-ndjson).",
)
@click.option(
    "--lab-site",
    is_flag=True,
    help="Use the lab's site values for the placeholders instead of the configured [detect.site].",
)
@click.option(
    "--rules",
    "rules_path",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Rules folder (default: detect.rules_dir, else the rules shipped with the toolkit).",
)
@click.pass_context
def export(
    ctx: click.Context,
    target: str,
    out: Path,
    index: str,
    interval: str,
    lab_site: bool,
    rules_path: Path | None,
) -> None:
    """Convert the rules for Elasticsearch with pySigma's backends (offline).

    The site's placeholders are filled from the configuration. A rule Elasticsearch cannot run as
    written is not exported: it is listed on standard error with the reason ("skipped: ...").
    Rules are exported disabled: enable them in Kibana once reviewed.
    """
    from detectors.export import export_rules
    from rules import rules_dir
    from soc.config import LAB_SITE
    from soc.errors import RuleError

    settings = _settings(ctx)
    folder = rules_path or settings.detect.rules_dir or rules_dir()
    site = LAB_SITE if lab_site else settings.detect.site
    try:
        result = export_rules(target, folder, site, index=index, interval=interval)
    except RuleError as exc:
        raise click.ClickException(str(exc)) from exc
    text = "".join(line + "\n" for line in result.lines())
    if str(out) == "-":
        sys.stdout.write(text)
    else:
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"cannot write {out}: {exc.strerror}") from exc
    for rule_id, title, why in result.skipped:
        click.echo(f"{rule_id} {title}: skipped: {why}", err=True)
    where = "" if str(out) == "-" else f" to {out}"
    click.echo(
        f"{target}: {len(result.converted)} rules exported{where}, {len(result.skipped)} skipped",
        err=True,
    )
