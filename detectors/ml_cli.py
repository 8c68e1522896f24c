"""``soc detectors``: the ML detectors from the shell (train, score, evaluate).

Attached to ``soc`` by ``soc/cli.py``. The communication-pattern detector
(:mod:`detectors.ml.communication`) learns a site's windows of traffic from the stored events of
a period (``train``), scores another period and stores its alerts with the rules' (``score``),
and is measured on a labelled lab capture (``evaluate``).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import click

from detectors.attack import load_table
from detectors.baseline_cli import alert_row, site_events, site_store
from detectors.ml import model_io
from detectors.ml.communication import LAB_WINDOW_S, CommunicationModel, evaluate_events
from detectors.ml.features import windows
from detectors.ml.process import evaluate_rows
from detectors.runner import collect_captures
from soc.clictx import parse_time
from soc.event import format_timestamp, parse_timestamp

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
@click.option("--csv", "csv_path", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A labelled table of process values (the process detector) instead of a capture.")  # fmt: skip
@click.option("--time-column", help="With --csv: the time column (ISO 8601 or seconds).")
@click.option("--label-column", help="With --csv: the label column (0/normal/false: normal).")
@click.option("--train-on", type=click.Choice(["head", "normal"]), default="head",
              show_default=True,
              help="With --csv: learn from the rows before the first attack (head), or from "
              "every normal row of the first --train-fraction (normal).")  # fmt: skip
@click.option("--train-fraction", type=click.FloatRange(0.01, 0.99), default=0.3,
              show_default=True)  # fmt: skip
@click.option("--capture", type=click.Path(path_type=Path, exists=True),
              help="A labelled lab capture (default: the reference capture).")  # fmt: skip
@click.option("--labels", type=click.Path(path_type=Path, exists=True), help="Its labels.json.")
@click.option("--scenario", "scenarios", multiple=True, default=("all",),
              help="Scenarios to show (repeatable; default all).")  # fmt: skip
@click.option("--window-s", type=click.FloatRange(0.1, 3600), default=LAB_WINDOW_S,
              show_default=True)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="The figures as JSON.")
def evaluate(
    csv_path: Path | None,
    time_column: str | None,
    label_column: str | None,
    train_on: str,
    train_fraction: float,
    capture: Path | None,
    labels: Path | None,
    scenarios: tuple[str, ...],
    window_s: float,
    as_json: bool,
) -> None:
    """Measure a detector. On a labelled lab capture (default), the communication-pattern
    detector: trained on its normal period, per scenario the alerts, recall and time to
    detect, and the false alerts of a normal half it did not learn from. With --csv, the
    process-value detector on any labelled table: precision, recall, F1, attack segments
    detected with their time to detect, and false alerts per hour."""
    if csv_path is not None:
        if not time_column or not label_column:
            raise click.BadParameter("--csv needs --time-column and --label-column",
                                     param_hint="--time-column")  # fmt: skip
        _evaluate_csv(csv_path, time_column, label_column, train_on, train_fraction, as_json)
        return
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


_NORMAL_LABELS = frozenset({"", "0", "0.0", "normal", "false", "no", "benign"})


def _evaluate_csv(
    path: Path, time_column: str, label_column: str, train_on: str, fraction: float, as_json: bool
) -> None:
    """Read a labelled table: the time and label columns, every other numeric column a tag."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        for column, option in ((time_column, "--time-column"), (label_column, "--label-column")):
            if column not in fields:
                raise click.BadParameter(f"no column {column!r} in {path.name}", param_hint=option)
        rows = list(reader)
    if not rows:
        raise click.BadParameter(f"{path.name} has no rows", param_hint="--csv")
    times, labels = [], []
    for number, row in enumerate(rows, start=2):
        try:
            times.append(_time_us(row[time_column]))
        except ValueError as exc:
            raise click.BadParameter(f"line {number}: {exc}", param_hint="--time-column") from exc
        labels.append(str(row[label_column]).strip().lower() not in _NORMAL_LABELS)
    columns: dict[str, list[float | None]] = {}
    for name in fields:
        if name in (time_column, label_column):
            continue
        values = [_number(row.get(name)) for row in rows]
        if any(v is not None for v in values):
            columns[name] = values
    cut = int(len(rows) * fraction)
    if train_on == "head":
        first_attack = next((i for i, a in enumerate(labels) if a), len(rows))
        train = [i < min(first_attack, max(cut, 2)) for i in range(len(rows))]
    else:
        train = [i < cut and not labels[i] for i in range(len(rows))]
    result, findings = evaluate_rows(times, labels, columns, train)
    figures = {
        **result.__dict__,
        "false_alerts_per_hour": result.false_alerts_per_hour,
        "training_rows": sum(train),
        "tags": len(columns),
        "first_findings": [f.message for f in findings[:10]],
    }
    if as_json:
        click.echo(json.dumps(figures, indent=2, default=list))
        return
    click.echo(f"process values: {len(columns)} tags, trained on {sum(train):,} rows "
               f"({train_on}), {result.rows:,} rows scored ({result.attack_rows:,} attack)")  # fmt: skip
    click.echo(f"precision {result.precision:.3f}  recall {result.recall:.3f}  "
               f"F1 {result.f1:.3f}  (rows flagged {result.flagged_rows:,})")  # fmt: skip
    detected = [d for d in result.time_to_detect_s if d is not None]
    click.echo(f"attack segments detected: {result.segments_detected} of {result.segments}"
               + (f"; time to detect median {sorted(detected)[len(detected) // 2]:g} s"
                  if detected else ""))  # fmt: skip
    per_hour = result.false_alerts_per_hour
    click.echo(f"false alerts: {result.false_alerts} in {result.normal_hours:.2f} h of normal rows"
               + (f" ({per_hour:.2f} per hour)" if per_hour is not None else ""))  # fmt: skip
    for finding in findings[:10]:
        click.echo(f"  {format_timestamp(finding.ts_us)}  {finding.message}")


def _time_us(text: str) -> int:
    text = text.strip()
    try:
        return round(float(text) * 1e6)
    except ValueError:
        pass
    for candidate in (text, text + "+00:00"):
        try:
            return parse_timestamp(candidate.replace(" ", "T", 1))
        except ValueError:
            continue
    raise ValueError(f"not a time: {text!r}")


def _number(text: str | None) -> float | None:
    try:
        value = float(str(text))
    except (TypeError, ValueError):
        return None
    return value if value == value else None
