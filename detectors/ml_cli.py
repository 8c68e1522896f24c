"""``soc detectors``: the ML detectors from the shell (train, score, evaluate).

Attached to ``soc`` by ``soc/cli.py``. The communication-pattern detector
(:mod:`detectors.ml.communication`) learns a site's windows of traffic from the stored events of
a period (``train``), scores another period and stores its alerts with the rules' (``score``),
and is measured on a labelled lab capture (``evaluate``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from detectors.attack import load_table
from detectors.baseline_cli import alert_row, site_events, site_store
from detectors.ml import model_io
from detectors.ml.communication import LAB_WINDOW_S, CommunicationModel, evaluate_events
from detectors.ml.features import windows
from detectors.runner import collect_captures
from soc.clictx import parse_time
from soc.event import format_timestamp

REFERENCE = Path(__file__).resolve().parents[1] / "lab" / "reference"


@click.group("detectors")
def detectors() -> None:
    """ML detectors: learn a site's traffic patterns, score new traffic, measure on the lab."""


@detectors.command("train")
@click.option("--site", required=True, help="A site of [incidents.sites].")
@click.option("--since", help="Start of the training period (ISO 8601).")
@click.option("--until", help="End of the training period (ISO 8601).")
@click.option("--window-s", type=click.FloatRange(0.1, 3600), default=10.0, show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The model file.")
@click.pass_context
def train(
    ctx: click.Context, site: str, since: str | None, until: str | None, window_s: float, out: Path
) -> None:
    """Train the communication-pattern model on a site's stored events of a period."""
    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    with site_store(ctx) as (store, sites):
        training = windows(site_events(store, sites, site, start, end), window_s)
    if not training:
        raise click.ClickException(f"no request of site {site} in the period: nothing to learn")
    began = time.perf_counter()
    model = CommunicationModel().train(training)
    spent = time.perf_counter() - began
    model_file, meta_file = model_io.save(model, out)
    click.echo(
        f"trained on {len(training):,} windows of {window_s:g} s in {spent:.2f} s: "
        f"{model_file.name}, {meta_file.name}; thresholds "
        + ", ".join(f"{p} {t:.2f}" for p, t in sorted(model.thresholds.items())),
        err=True,
    )


@detectors.command("score")
@click.option("--site", required=True, help="A site of [incidents.sites].")
@click.option("--model", "path", required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--since", help="From this time (ISO 8601).")
@click.option("--until", help="Before this time (ISO 8601).")
@click.option("--no-store", is_flag=True, help="Print the alerts only; do not store them.")
@click.pass_context
def score(
    ctx: click.Context,
    site: str,
    path: Path,
    since: str | None,
    until: str | None,
    no_store: bool,
) -> None:
    """Score a site's stored events of a period: alerts for windows unlike the training's."""
    try:
        model = model_io.load(path)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from exc
    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    with site_store(ctx) as (store, sites):
        scored = model.score(windows(site_events(store, sites, site, start, end), model.window_s))
        docs = model.alerts(scored, load_table(), time.time_ns() // 1000, site)
        if docs and not no_store:
            store.write_alerts(alert_row(doc) for doc in docs)
    for doc in docs:
        click.echo(f"alert {doc['event']['id']}  {doc['@timestamp']}  {doc['message']}")
    anomalous = sum(s.anomalous for s in scored)
    click.echo(f"{len(scored):,} windows scored, {anomalous:,} anomalous, {len(docs):,} alerts"
               + ("" if no_store else " (stored)"), err=True)  # fmt: skip


@detectors.command("evaluate")
@click.option("--capture", type=click.Path(path_type=Path, exists=True),
              help="A labelled lab capture (default: the reference capture).")  # fmt: skip
@click.option("--labels", type=click.Path(path_type=Path, exists=True), help="Its labels.json.")
@click.option("--scenario", "scenarios", multiple=True, default=("all",),
              help="Scenarios to show (repeatable; default all).")  # fmt: skip
@click.option("--window-s", type=click.FloatRange(0.1, 3600), default=LAB_WINDOW_S,
              show_default=True)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="The figures as JSON.")
def evaluate(
    capture: Path | None,
    labels: Path | None,
    scenarios: tuple[str, ...],
    window_s: float,
    as_json: bool,
) -> None:
    """Measure the communication-pattern detector on a labelled lab capture: trained on its
    normal period, per scenario the alerts, recall and time to detect; the false alerts of a
    normal half it did not learn from."""
    capture = capture or REFERENCE / "capture.pcap.gz"
    labels = labels or capture.with_name("labels.json")
    truth = json.loads(labels.read_text(encoding="utf-8"))
    result = evaluate_events(collect_captures([capture]), truth, load_table(), window_s=window_s)
    wanted = set(scenarios)
    known = {s.scenario for s in result.scenarios}
    if "all" not in wanted and not wanted <= known:
        raise click.BadParameter(f"unknown scenario {sorted(wanted - known)[0]!r}",
                                 param_hint="--scenario")  # fmt: skip
    rows = [s for s in result.scenarios if "all" in wanted or s.scenario in wanted]
    if as_json:
        click.echo(json.dumps({**result.as_dict(), "scenarios": [
            {**s.__dict__, "recall": s.recall} for s in rows]}, indent=2))  # fmt: skip
        return
    click.echo(f"communication patterns, {window_s:g} s windows, trained on the normal period "
               f"in {result.scenario_training_time_s:.3f} s")  # fmt: skip
    click.echo(f"{'scenario':32} {'alerts':>6} {'true':>5} {'recall':>6} {'detect':>8}")
    for s in rows:
        detect = f"{s.time_to_detect_s:.2f}s" if s.time_to_detect_s is not None else "-"
        click.echo(f"{s.scenario:32} {s.alerts:6} {s.true_alerts:5} {s.recall:6.2f} {detect:>8}")
    found = sum(s.detected for s in rows)
    click.echo(
        f"detected {found} of {len(rows)} scenarios (recall {found / max(len(rows), 1):.2f})"
    )
    click.echo(
        f"held-out normal half: {result.held_out_false_alerts} false alerts in "
        f"{result.held_out_s:g} s ({result.held_out_windows} windows; trained on the first half,"
        f" {result.training_windows} windows)"
    )
    for line in result.held_out_explanations:
        click.echo(f"  {line}")
    click.echo(f"evaluated {format_timestamp(time.time_ns() // 1000)}", err=True)
