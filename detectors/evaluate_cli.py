"""``soc rules evaluate``: precision and recall of the rule set on a labelled lab capture.

Attached to the ``soc rules`` group by ``soc/cli.py``; the scoring is :mod:`detectors.evaluate`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import orjson

from soc.clictx import settings as _settings
from soc.errors import SocError

REFERENCE = Path(__file__).resolve().parents[1] / "lab" / "reference"


@click.command("evaluate")
@click.option(
    "--capture",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=REFERENCE / "capture.pcap.gz",
    show_default="lab/reference/capture.pcap.gz",
    help="A lab run's capture (`soc lab run --out DIR` writes DIR/capture.pcap).",
)
@click.option(
    "--labels",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=REFERENCE / "labels.json",
    show_default="lab/reference/labels.json",
    help="The run's ground truth (DIR/labels.json).",
)
@click.option(
    "--rules",
    "rules_path",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Rules folder (default: detect.rules_dir, else the rules shipped with the toolkit).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the scores as one JSON document.")
@click.pass_context
def evaluate(
    ctx: click.Context, capture: Path, labels: Path, rules_path: Path | None, as_json: bool
) -> None:
    """Run the rules over a labelled capture and print precision and recall per scenario.

    An alert belongs to a scenario when one of its events falls in the scenario's span; it is
    true when it involves the scenario's attacker. Recall: the label's techniques alerted.
    Alerts during the normal period are false positives. Time to detect: from the scenario's
    start to the first true alert's trigger.
    """
    from detectors.evaluate import evaluate as score
    from detectors.evaluate import format_table
    from detectors.runner import collect_captures, detect_events, load_plans
    from rules import rules_dir
    from soc.event import parse_timestamp

    settings = _settings(ctx)
    try:
        truth = json.loads(labels.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"cannot read the labels: {exc}", param_hint="--labels") from exc
    if not isinstance(truth, dict) or "scenarios" not in truth:
        raise click.BadParameter("not a lab labels file (no 'scenarios')", param_hint="--labels")
    folder = rules_path or settings.detect.rules_dir or rules_dir()
    try:
        plans = load_plans(folder, settings.detect.site)
        events = collect_captures([capture], settings.collect)
    except SocError as exc:
        raise click.ClickException(str(exc)) from exc
    times = {e["event"]["id"]: parse_timestamp(e["@timestamp"]) for e in events}
    result = score(
        detect_events(events, plans),
        times,
        truth,
        {p.info.service for p in plans if p.info.service},
    )
    if as_json:
        click.echo(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"{len(events):,} events, {len(plans)} rules, {capture.name} against {labels.name}")
    for line in format_table(result):
        click.echo(line)
