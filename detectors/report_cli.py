"""``soc rules report``: the auditor's report (:mod:`detectors.report`) as a click command.

Attached to the ``soc rules`` group by ``soc/cli.py`` (``rules.add_command(report)``); it also
runs alone (``CliRunner().invoke(report, [...])``), reading the configuration itself then.
"""

from __future__ import annotations

from pathlib import Path

import click

from soc.clictx import parse_time as _time
from soc.clictx import settings as _settings


@click.command("report")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "md", "json"]),
    default="html",
    show_default=True,
    help="html: one self-contained page (the ATT&CK for ICS matrix as a picture); md; json.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The file to write ('-': standard output).",
)
@click.option("--since", help="Alerts from this time, inclusive (ISO 8601; UTC when no zone).")
@click.option("--until", help="Alerts before this time (ISO 8601; default: now).")
@click.option(
    "--rules",
    "rules_path",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Rules folder (default: detect.rules_dir, else the rules shipped with the toolkit).",
)
@click.pass_context
def report(
    ctx: click.Context,
    fmt: str,
    out: Path,
    since: str | None,
    until: str | None,
    rules_path: Path | None,
) -> None:
    """Write the auditor's report on the rules: inventory, ATT&CK for ICS coverage, tests, alerts.

    The rules' test cases run now (the report shows when); alerts per rule over the period and
    the last time each fired come from the store, opened read-only, when there is one.
    """
    from detectors.report import generate, render, write_report
    from rules import rules_dir

    since_us = _time(since, "--since")
    until_us = _time(until, "--until")
    if since_us is not None and until_us is not None and since_us >= until_us:
        raise click.BadParameter("must be after --since", param_hint="--until")
    settings = _settings(ctx)
    folder = rules_path or settings.detect.rules_dir or rules_dir()
    doc = generate(settings, folder, since_us, until_us)
    if str(out) == "-":
        click.echo(render(doc, fmt), nl=False)
    else:
        try:
            write_report(doc, fmt, out)
        except OSError as exc:
            raise click.ClickException(f"cannot write {out}: {exc.strerror or exc}") from exc
    s = doc["summary"]
    alerts = doc["alerts"]["note"] or f"{s['alerts']} alerts"
    click.echo(
        f"{'' if str(out) == '-' else f'{out}: '}{s['rules']} rules,"
        f" {s['techniques_covered']}/{s['techniques_total']} ATT&CK for ICS techniques covered,"
        f" {s['test_cases']} test cases ({s['test_cases_failed']} failed); {alerts}",
        err=True,
    )
