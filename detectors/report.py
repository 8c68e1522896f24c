"""The auditor's report on the rule set: inventory, ATT&CK for ICS coverage, test evidence, alerts.

``soc rules report --format html|md|json --out PATH`` (:mod:`detectors.report_cli`) gathers the
facts (:func:`generate`: compile the rules, run their test cases now, read each file's last change
and the store's alerts) and a pure core turns them into one JSON-able document
(:func:`build_report`) that three renderers write out:

- :func:`to_json`: the document itself, for machines;
- :func:`to_markdown`: tables for a review or a wiki;
- :func:`to_html`: one self-contained file an auditor archives: inline CSS, no script, font,
  image or link to fetch; the ATT&CK for ICS matrix is an HTML table styled as a picture (tactics
  as columns in the matrix's order, covered techniques shaded by their number of rules).

The report contains:

- **Inventory**: each alerting rule's id, title, status, level, techniques (with names), tactics,
  log source, file, whether it is a correlation (and its type), and the file's last change: the
  date of its last git commit when the file is in a git checkout and unchanged since, else its
  modification time (``last_change_source`` says which).
- **Coverage**: the matrix, techniques covered over the table's techniques, overall and per
  tactic (a technique under two tactics counts under both).
- **Test evidence**: each rule's test cases run at report time (``detectors.sigma.run_tests``,
  the lab's site the cases are written against), passed or failed, and when.
- **Alerts**: from the store, when there is one: the alerts of each rule over the period and the
  last time it fired (read only; an absent store or ``alerts`` table is said, not an error).

Nothing here opens a network connection.
"""

from __future__ import annotations

import html
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apsw
import orjson

from detectors.attack import AttackTable, load_table
from detectors.sigma import CaseResult, CompiledRule, compile_rules, load_rule_file, run_tests
from soc.config import LAB_SITE, Settings
from soc.errors import RuleError

FORMATS = ("html", "md", "json")
REPORT_VERSION = 1

# -- gathering the facts (impure) -------------------------------------------------------------


def _iso_us(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / 1_000_000, UTC).isoformat(timespec="seconds")


def read_alerts(
    settings: Settings, since_us: int | None, until_us: int | None
) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Alerts per rule from the store, opened read-only, and a note when there are none to read.

    ``count`` is the rule's alerts with ``since_us <= ts < until_us`` (either bound may be
    absent); ``last`` the time of its last alert before ``until_us`` (ISO 8601, UTC). The note is
    ``None`` when the table was read, else why not (no store, no ``alerts`` table yet, an error).
    """
    if settings.store.backend != "sqlite":
        return {}, f"alerts are read from the SQLite store; the store is {settings.store.backend}"
    path = settings.sqlite_path
    if not path.exists():
        return {}, f"no store at {path}"
    try:
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error as exc:
        return {}, f"cannot open the store {path} read-only: {exc}"
    try:
        conn.set_busy_timeout(int(settings.sqlite.busy_timeout_ms))
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alerts'"
        ).fetchall()
        if not found:
            return {}, f"no alerts table yet in {path} (run soc detect)"
        low = since_us if since_us is not None else -(2**62)
        high = until_us if until_us is not None else 2**62
        stats: dict[str, dict[str, Any]] = {}
        for rule_id, count in conn.execute(
            "SELECT rule_id, count(*) FROM alerts WHERE ts >= ? AND ts < ? GROUP BY rule_id",
            (low, high),
        ):
            stats[str(rule_id)] = {"count": int(count), "last": None}
        for rule_id, last in conn.execute(
            "SELECT rule_id, max(ts) FROM alerts WHERE ts < ? GROUP BY rule_id", (high,)
        ):
            entry = stats.setdefault(str(rule_id), {"count": 0, "last": None})
            entry["last"] = _iso_us(int(last)) if last is not None else None
        return stats, None
    except apsw.Error as exc:
        return {}, f"cannot read the alerts of {path}: {type(exc).__name__}: {exc}"
    finally:
        conn.close()


def alert_stats(
    settings: Settings, since_us: int | None, until_us: int | None
) -> dict[str, dict[str, Any]]:
    """``{rule_id: {"count": int, "last": iso | None}}`` from the store; ``{}`` when there is no
    store or no ``alerts`` table (see :func:`read_alerts`, which also says why)."""
    return read_alerts(settings, since_us, until_us)[0]


def _git(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed arguments, a file name after "--"
        ["git", *args],  # noqa: S607 - git from PATH, as a developer runs it
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def last_change(path: Path) -> dict[str, str]:
    """When a rule file last changed: ``{"date": iso, "source": ...}``.

    The date of the file's last git commit when it is tracked and unchanged since (source
    ``git``); otherwise its modification time (source ``mtime``, with why: not in a git checkout,
    not committed, changed since its last commit).
    """
    why = "not in a git checkout"
    try:
        logged = _git(["log", "-1", "--format=%cI", "--", path.name], path.parent)
        if logged.returncode == 0 and logged.stdout.strip():
            status = _git(["status", "--porcelain", "--", path.name], path.parent)
            if status.returncode == 0 and not status.stdout.strip():
                return {"date": logged.stdout.strip(), "source": "git"}
            why = "changed since its last commit"
        elif logged.returncode == 0:
            why = "not committed"
    except (OSError, subprocess.SubprocessError):
        why = "git not available"
    try:
        mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
    except OSError:
        return {"date": "", "source": f"unknown ({why}; file unreadable)"}
    return {"date": mtime, "source": f"mtime ({why})"}


def logsources(paths: Sequence[Path]) -> dict[str, str]:
    """Each alerting rule's log source (``ics/modbus``), by rule id; a correlation takes its
    rules' log sources."""
    out: dict[str, str] = {}
    for path in paths:
        try:
            collection = load_rule_file(path)
        except RuleError:
            continue
        for rule in collection:
            sources = []
            if hasattr(rule, "logsource"):
                sources.append(rule.logsource)
            for ref in getattr(rule, "referenced_rules", None) or []:
                if hasattr(ref.rule, "logsource"):
                    sources.append(ref.rule.logsource)
            names = [
                "/".join(str(p) for p in (s.product, s.category, s.service) if p) for s in sources
            ]
            if rule.id is not None:
                out[str(rule.id)] = ", ".join(dict.fromkeys(n for n in names if n))
    return out


@dataclass(frozen=True)
class Gathered:
    """Everything :func:`build_report` needs, read from the rules, the tests and the store."""

    rules: list[CompiledRule]
    test_results: list[CaseResult]
    tests_ran_at: datetime
    alerts: dict[str, dict[str, Any]]
    alerts_note: str | None
    changes: dict[str, dict[str, str]]
    logsources: dict[str, str]


def gather(
    settings: Settings,
    rules_dir: Path,
    since_us: int | None = None,
    until_us: int | None = None,
) -> Gathered:
    """Compile the rules (configured site), run their tests (lab site), read changes and alerts."""
    compiled = compile_rules(rules_dir, settings.detect.site)
    ran_at = datetime.now(UTC)
    results = run_tests(rules_dir, LAB_SITE)
    files = sorted({rule.path for rule in compiled})
    alerts, note = read_alerts(settings, since_us, until_us)
    return Gathered(
        rules=compiled,
        test_results=results,
        tests_ran_at=ran_at,
        alerts=alerts,
        alerts_note=note,
        changes={str(p): last_change(p) for p in files},
        logsources=logsources(files),
    )


def generate(
    settings: Settings,
    rules_dir: Path,
    since_us: int | None = None,
    until_us: int | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The whole report (:func:`gather`, then :func:`build_report`)."""
    now = now or datetime.now(UTC)
    facts = gather(settings, rules_dir, since_us, until_us)
    return build_report(
        facts.rules,
        facts.test_results,
        load_table(),
        facts.alerts,
        now,
        tests_ran_at=facts.tests_ran_at,
        changes=facts.changes,
        logsources=facts.logsources,
        alerts_note=facts.alerts_note,
        since_us=since_us,
        until_us=until_us,
        rules_dir=rules_dir,
    )


# -- the document (pure) ----------------------------------------------------------------------


def _display_path(path: Path, rules_dir: Path | None) -> str:
    if rules_dir is not None:
        try:
            return str(path.relative_to(rules_dir.parent))
        except ValueError:
            pass
    return str(path)


def build_report(
    rules: Sequence[CompiledRule],
    test_results: Sequence[CaseResult],
    attack_table: AttackTable,
    alert_stats: Mapping[str, Mapping[str, Any]],
    generated_at: datetime,
    *,
    tests_ran_at: datetime | None = None,
    changes: Mapping[str, Mapping[str, str]] | None = None,
    logsources: Mapping[str, str] | None = None,
    alerts_note: str | None = None,
    since_us: int | None = None,
    until_us: int | None = None,
    rules_dir: Path | None = None,
) -> dict[str, Any]:
    """The report as one JSON-able document (see the module's documentation for its parts).

    ``changes`` maps a rule file (``str(path)``) to :func:`last_change`'s answer, ``logsources``
    a rule id to its log source, ``alert_stats`` a rule id to ``{"count", "last"}``;
    ``alerts_note`` says why there are no alerts to read (``None``: the store was read).
    """
    changes = changes or {}
    logsources = logsources or {}
    table = attack_table
    ordered = sorted(rules, key=lambda r: (str(r.path), r.title, r.id))
    by_rule: dict[str, list[CaseResult]] = {}
    file_errors: list[dict[str, Any]] = []
    for result in test_results:
        if result.rule_id == "-":
            file_errors.append({"file": result.file, "error": result.error or "failed"})
        else:
            by_rule.setdefault(result.rule_id, []).append(result)
    ran_at = (tests_ran_at or generated_at).isoformat(timespec="seconds")

    inventory: list[dict[str, Any]] = []
    for rule in ordered:
        change = changes.get(str(rule.path), {})
        cases = by_rule.get(rule.id, [])
        stats = alert_stats.get(rule.id)
        inventory.append(
            {
                "id": rule.id,
                "title": rule.title,
                "status": rule.status,
                "level": rule.level,
                "techniques": [
                    {
                        "id": t,
                        "name": table.techniques[t].name
                        if t in table.techniques
                        else table.retired.get(t, "unknown technique"),
                    }
                    for t in rule.techniques
                ],
                "tactics": [
                    {"short_name": s, "name": tactic.name if tactic else s}
                    for s in rule.tactics
                    for tactic in [table.tactic(s)]
                ],
                "logsource": logsources.get(rule.id, ""),
                "file": _display_path(rule.path, rules_dir),
                "last_change": change.get("date") or None,
                "last_change_source": change.get("source", "unknown"),
                "correlation": rule.correlation_type if rule.is_correlation else None,
                "tests": {
                    "ran_at": ran_at,
                    "cases": len(cases),
                    "passed": sum(1 for c in cases if c.passed),
                    "failed": sum(1 for c in cases if not c.passed),
                    "verdict": "none"
                    if not cases
                    else "pass"
                    if all(c.passed for c in cases)
                    else "fail",
                    "results": [
                        {
                            "case": c.case,
                            "expected_match": c.expected,
                            "matched_events": len(c.matched),
                            "passed": c.passed,
                            "error": c.error,
                        }
                        for c in cases
                    ],
                },
                "alerts": {
                    "count": int(stats.get("count", 0)) if stats else 0,
                    "last": stats.get("last") if stats else None,
                },
            }
        )

    rules_per_technique: dict[str, list[str]] = {}
    for rule in ordered:
        for t in rule.techniques:
            rules_per_technique.setdefault(t, []).append(rule.id)
    matrix: list[dict[str, Any]] = []
    for tactic in table.tactics:
        techniques = sorted(
            (t for t in table.techniques.values() if tactic.short_name in t.tactics),
            key=lambda t: (t.name.lower(), t.id),
        )
        cells = [
            {"id": t.id, "name": t.name, "rules": len(rules_per_technique.get(t.id, []))}
            for t in techniques
        ]
        matrix.append(
            {
                "id": tactic.id,
                "short_name": tactic.short_name,
                "name": tactic.name,
                "techniques": cells,
                "covered": sum(1 for c in cells if c["rules"]),
                "total": len(cells),
            }
        )
    covered = sorted(t for t in rules_per_technique if t in table.techniques)
    outside = sorted(t for t in rules_per_technique if t not in table.techniques)

    failed_cases = sum(1 for r in test_results if not r.passed)
    period = {
        "since": _iso_us(since_us) if since_us is not None else None,
        "until": _iso_us(until_us) if until_us is not None else None,
    }
    return {
        "report": "ICS detection rules: inventory, ATT&CK for ICS coverage, tests, alerts",
        "version": REPORT_VERSION,
        "generated_at": generated_at.isoformat(timespec="seconds"),
        "rules_dir": str(rules_dir) if rules_dir is not None else None,
        "attack": {
            "domain": table.domain,
            "modified": table.modified,
            "source_sha256": table.source_sha256,
        },
        "summary": {
            "rules": len(inventory),
            "correlation_rules": sum(1 for r in ordered if r.is_correlation),
            "techniques_covered": len(covered),
            "techniques_total": len(table.techniques),
            "coverage_percent": round(100 * len(covered) / len(table.techniques), 1)
            if table.techniques
            else 0.0,
            "test_cases": len(test_results),
            "test_cases_failed": failed_cases,
            "tests_passed": failed_cases == 0 and bool(test_results),
            "tests_ran_at": ran_at,
            "alerts": sum(r["alerts"]["count"] for r in inventory),
        },
        "inventory": inventory,
        "coverage": {
            "covered": covered,
            "outside_table": outside,
            "rules_per_technique": {t: rules_per_technique[t] for t in sorted(rules_per_technique)},
            "per_tactic": [
                {
                    "tactic": m["name"],
                    "id": m["id"],
                    "covered": m["covered"],
                    "total": m["total"],
                }
                for m in matrix
            ],
        },
        "matrix": matrix,
        "tests": {"ran_at": ran_at, "file_errors": file_errors},
        "alerts": {
            "period": period,
            "source": "store" if alerts_note is None else None,
            "note": alerts_note,
            "unknown_rules": {
                rid: dict(v)
                for rid, v in sorted(alert_stats.items())
                if rid not in {r.id for r in ordered}
            },
        },
    }


# -- renderers --------------------------------------------------------------------------------


def to_json(report: Mapping[str, Any]) -> str:
    """The report as indented JSON."""
    return orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n"


def _period_text(report: Mapping[str, Any]) -> str:
    period = report["alerts"]["period"]
    since = period["since"] or "the beginning"
    until = period["until"] or f"the report's time ({report['generated_at']})"
    return f"from {since} to {until}"


def _md(text: Any) -> str:
    """A value for a Markdown table cell: pipes escaped, one line."""
    value = "-" if text is None or text == "" else str(text)
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(_md(c) for c in cells) + " |"


def _tech_list(rule: Mapping[str, Any]) -> str:
    return ", ".join(f"{t['id']} {t['name']}" for t in rule["techniques"])


def to_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: summary, inventory, coverage, matrix, tests, alerts."""
    s = report["summary"]
    out: list[str] = [
        "# ICS detection rules: audit report",
        "",
        f"Generated {report['generated_at']}; rules from `{report['rules_dir']}`; ATT&CK for ICS"
        f" data modified {report['attack']['modified'][:10]}.",
        "",
        f"- Rules: {s['rules']} ({s['correlation_rules']} correlation rules)",
        f"- ATT&CK for ICS techniques covered: {s['techniques_covered']} of"
        f" {s['techniques_total']} ({s['coverage_percent']} %)",
        f"- Test cases: {s['test_cases']}, failed: {s['test_cases_failed']}"
        f" (run {s['tests_ran_at']})",
        f"- Alerts {_period_text(report)}: "
        + (str(s["alerts"]) if report["alerts"]["note"] is None else report["alerts"]["note"]),
        "",
        "## Rule inventory",
        "",
        _md_row(
            (
                "ID",
                "Title",
                "Status",
                "Level",
                "Techniques",
                "Tactics",
                "Log source",
                "Correlation",
                "File",
                "Last change",
                "Tests",
                "Alerts",
                "Last fired",
            )
        ),
        "|" + "---|" * 13,
    ]
    for rule in report["inventory"]:
        tests = rule["tests"]
        out.append(
            _md_row(
                (
                    rule["id"],
                    rule["title"],
                    rule["status"],
                    rule["level"],
                    _tech_list(rule),
                    ", ".join(t["name"] for t in rule["tactics"]),
                    rule["logsource"],
                    rule["correlation"] or "no",
                    rule["file"],
                    f"{rule['last_change'] or '?'} ({rule['last_change_source']})",
                    f"{tests['verdict']} {tests['passed']}/{tests['cases']}",
                    rule["alerts"]["count"],
                    rule["alerts"]["last"],
                )
            )
        )
    out += ["", "## ATT&CK for ICS coverage", "", _md_row(("Tactic", "Covered", "Total", "%"))]
    out.append("|---|---|---|---|")
    for tactic in report["coverage"]["per_tactic"]:
        pct = round(100 * tactic["covered"] / tactic["total"]) if tactic["total"] else 0
        out.append(
            _md_row(
                (f"{tactic['tactic']} ({tactic['id']})", tactic["covered"], tactic["total"], pct)
            )
        )
    out += ["", "Covered techniques (number of rules):", ""]
    for tactic in report["matrix"]:
        cells = [
            f"{c['id']} {c['name']} ({c['rules']})" for c in tactic["techniques"] if c["rules"]
        ]
        out.append(f"- **{_md(tactic['name'])}**: {_md(', '.join(cells) or 'none')}")
    if report["coverage"]["outside_table"]:
        out.append(
            f"- Tagged but not in the ATT&CK for ICS table: "
            f"{', '.join(report['coverage']['outside_table'])}"
        )
    out += ["", "## Test evidence", "", f"Test cases run {report['tests']['ran_at']}.", ""]
    for error in report["tests"]["file_errors"]:
        out.append(f"- FAIL `{_md(error['file'])}`: {_md(error['error'])}")
    out += [
        _md_row(("Rule", "Case", "Expected", "Matched events", "Result")),
        "|---|---|---|---|---|",
    ]
    for rule in report["inventory"]:
        for case in rule["tests"]["results"]:
            result = "pass" if case["passed"] else f"FAIL {case['error'] or ''}".strip()
            expected = "match" if case["expected_match"] else "no match"
            out.append(
                _md_row((rule["title"], case["case"], expected, case["matched_events"], result))
            )
        if not rule["tests"]["results"]:
            out.append(_md_row((rule["title"], "(no test case)", "-", "-", "none")))
    out += ["", "## Alerts", "", f"Period: {_period_text(report)}.", ""]
    if report["alerts"]["note"] is not None:
        out.append(f"No alerts read: {report['alerts']['note']}.")
    else:
        out += [_md_row(("Rule", "Alerts", "Last fired")), "|---|---|---|"]
        for rule in report["inventory"]:
            out.append(_md_row((rule["title"], rule["alerts"]["count"], rule["alerts"]["last"])))
        for rid, stats in report["alerts"]["unknown_rules"].items():
            out.append(_md_row((f"{rid} (not in the rule set)", stats["count"], stats["last"])))
    out += [
        "",
        "---",
        "",
        "MITRE ATT&CK for ICS (c) The MITRE Corporation, reproduced with its"
        " permission (rules/attack_ics.json carries the licence).",
        "",
    ]
    return "\n".join(out)


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 color:#1d232a;margin:24px;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:2px solid #d0d7de}
.meta{color:#57606a;margin:0 0 12px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{border:1px solid #d0d7de;border-radius:6px;padding:8px 14px;min-width:150px}
.card b{display:block;font-size:22px}.card.bad b{color:#cf222e}.card.good b{color:#1a7f37}
table{border-collapse:collapse}
table.data{width:100%;font-size:12.5px}
table.data th,table.data td{border:1px solid #d0d7de;padding:4px 6px;vertical-align:top;text-align:left}
table.data th{background:#f6f8fa}
table.data tr:nth-child(even) td{background:#fbfcfd}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:11.5px}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}.none{color:#9a6700}
.matrix-wrap{overflow-x:auto;border:1px solid #d0d7de;border-radius:6px;padding:8px;background:#f6f8fa}
table.matrix{table-layout:fixed;border-spacing:3px;border-collapse:separate}
table.matrix th{width:112px;background:#24292f;color:#fff;font-size:11.5px;padding:6px 4px;
 vertical-align:top;border-radius:3px}
table.matrix th small{display:block;font-weight:normal;color:#d0d7de}
table.matrix td{width:112px;height:38px;font-size:10.5px;line-height:1.2;padding:3px 4px;
 vertical-align:top;border-radius:3px;overflow-wrap:anywhere}
table.matrix td.tech{background:#fff;border:1px solid #d8dee4;color:#57606a}
table.matrix td.empty{background:transparent}
table.matrix td.covered{color:#fff;border:1px solid #0b5394;font-weight:600}
table.matrix td.c1{background:#4a90d9}table.matrix td.c2{background:#2f6fb5}
table.matrix td.c3{background:#1a4f8b}
table.matrix td .tid{display:block;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:9.5px}
table.matrix td .n{float:right;background:#fff;color:#1a4f8b;border-radius:8px;padding:0 5px;
 font-size:10px}
.legend{display:flex;gap:14px;align-items:center;font-size:12px;margin:8px 0}
.legend i{display:inline-block;width:14px;height:14px;border-radius:3px;vertical-align:middle;
 margin-right:4px;border:1px solid #d8dee4}
.bar{display:inline-block;height:8px;background:#2f6fb5;border-radius:2px;vertical-align:middle}
.barbg{display:inline-block;width:120px;height:8px;background:#e6ebf1;border-radius:2px}
footer{margin-top:32px;color:#57606a;font-size:12px}
@media print{.matrix-wrap{overflow:visible}body{margin:8mm}}
"""


def _e(value: Any) -> str:
    """Text for HTML: escaped; ``-`` for nothing."""
    return html.escape("-" if value is None or value == "" else str(value))


def _matrix_html(report: Mapping[str, Any]) -> str:
    matrix = report["matrix"]
    depth = max((len(t["techniques"]) for t in matrix), default=0)
    head = "".join(
        f'<th scope="col" title="{_e(t["id"])}">{_e(t["name"])}'
        f"<small>{t['covered']}/{t['total']} covered</small></th>"
        for t in matrix
    )
    rows: list[str] = []
    for i in range(depth):
        cells: list[str] = []
        for tactic in matrix:
            if i >= len(tactic["techniques"]):
                cells.append('<td class="empty"></td>')
                continue
            cell = tactic["techniques"][i]
            count = int(cell["rules"])
            if count:
                shade = f"c{min(count, 3)}"
                badge = f'<span class="n">{count}</span>'
                label = f"{count} rule{'s' if count != 1 else ''}"
                cells.append(
                    f'<td class="tech covered {shade}" data-technique="{_e(cell["id"])}"'
                    f' data-rules="{count}" title="{_e(cell["id"])} {_e(cell["name"])}: {label}">'
                    f'{badge}<span class="tid">{_e(cell["id"])}</span>{_e(cell["name"])}</td>'
                )
            else:
                cells.append(
                    f'<td class="tech" data-technique="{_e(cell["id"])}" data-rules="0"'
                    f' title="{_e(cell["id"])} {_e(cell["name"])}: not covered">'
                    f'<span class="tid">{_e(cell["id"])}</span>{_e(cell["name"])}</td>'
                )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<div class="matrix-wrap"><table class="matrix" id="attack-matrix">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def to_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS; nothing fetched)."""
    s = report["summary"]
    note = report["alerts"]["note"]
    tests_class = "good" if s["tests_passed"] else "bad"
    cards = [
        ("Rules", s["rules"], f"{s['correlation_rules']} correlation", ""),
        (
            "Techniques covered",
            f"{s['techniques_covered']}/{s['techniques_total']}",
            f"{s['coverage_percent']} % of ATT&CK for ICS",
            "",
        ),
        (
            "Test cases",
            f"{s['test_cases'] - s['test_cases_failed']}/{s['test_cases']}",
            f"passed, run {s['tests_ran_at']}",
            tests_class,
        ),
        ("Alerts", s["alerts"] if note is None else "-", _period_text(report), ""),
    ]
    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>ICS detection rules: audit report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>ICS detection rules: audit report</h1>",
        f'<p class="meta">Generated {_e(report["generated_at"])} &middot; rules from'
        f' <span class="mono">{_e(report["rules_dir"])}</span> &middot; ATT&amp;CK for ICS data'
        f" modified {_e(report['attack']['modified'][:10])}</p>",
        '<div class="cards">',
    ]
    for title, value, sub, cls in cards:
        parts.append(
            f'<div class="card {cls}">{_e(title)}<b>{_e(value)}</b>'
            f'<span class="meta">{_e(sub)}</span></div>'
        )
    parts.append("</div>")

    parts += [
        "<h2>ATT&amp;CK for ICS matrix</h2>",
        '<div class="legend">Rules per technique:'
        '<span><i style="background:#fff"></i>none</span>'
        '<span><i style="background:#4a90d9"></i>1</span>'
        '<span><i style="background:#2f6fb5"></i>2</span>'
        '<span><i style="background:#1a4f8b"></i>3 or more</span></div>',
        _matrix_html(report),
        "<h2>Coverage per tactic</h2>",
        '<table class="data" id="coverage"><thead><tr><th>Tactic</th><th>ID</th>'
        "<th>Covered</th><th>Total</th><th>Share</th></tr></thead><tbody>",
    ]
    for tactic in report["coverage"]["per_tactic"]:
        share = tactic["covered"] / tactic["total"] if tactic["total"] else 0.0
        parts.append(
            f"<tr><td>{_e(tactic['tactic'])}</td><td>{_e(tactic['id'])}</td>"
            f"<td>{tactic['covered']}</td><td>{tactic['total']}</td>"
            f'<td><span class="barbg"><span class="bar" style="width:{round(120 * share)}px">'
            f"</span></span> {round(100 * share)} %</td></tr>"
        )
    parts.append("</tbody></table>")
    if report["coverage"]["outside_table"]:
        parts.append(
            "<p>Tagged but not in the ATT&amp;CK for ICS table: "
            f"{_e(', '.join(report['coverage']['outside_table']))}</p>"
        )

    parts += [
        "<h2>Rule inventory</h2>",
        '<table class="data" id="inventory"><thead><tr><th>ID</th><th>Title</th><th>Status</th>'
        "<th>Level</th><th>Techniques</th><th>Tactics</th><th>Log source</th>"
        "<th>Correlation</th><th>File</th><th>Last change</th><th>Tests</th><th>Alerts</th>"
        "<th>Last fired</th></tr></thead><tbody>",
    ]
    for rule in report["inventory"]:
        tests = rule["tests"]
        techniques = "<br>".join(
            f'<span class="mono">{_e(t["id"])}</span> {_e(t["name"])}' for t in rule["techniques"]
        )
        parts.append(
            f'<tr data-rule="{_e(rule["id"])}"><td class="mono">{_e(rule["id"])}</td>'
            f"<td>{_e(rule['title'])}</td><td>{_e(rule['status'])}</td>"
            f"<td>{_e(rule['level'])}</td><td>{techniques or '-'}</td>"
            f"<td>{_e(', '.join(t['name'] for t in rule['tactics']))}</td>"
            f"<td>{_e(rule['logsource'])}</td><td>{_e(rule['correlation'] or 'no')}</td>"
            f'<td class="mono">{_e(rule["file"])}</td>'
            f"<td>{_e(rule['last_change'])}<br><small>{_e(rule['last_change_source'])}</small></td>"
            f'<td class="{_e(tests["verdict"])}">{_e(tests["verdict"])}'
            f" {tests['passed']}/{tests['cases']}</td>"
            f"<td>{rule['alerts']['count'] if note is None else '-'}</td>"
            f"<td>{_e(rule['alerts']['last'])}</td></tr>"
        )
    parts.append("</tbody></table>")

    parts += [
        "<h2>Test evidence</h2>",
        f"<p>Every rule's test cases were run when this report was made, at"
        f" {_e(report['tests']['ran_at'])}, with the lab's site values the cases are written"
        " against.</p>",
    ]
    for error in report["tests"]["file_errors"]:
        parts.append(
            f'<p class="fail">FAIL <span class="mono">{_e(error["file"])}</span>:'
            f" {_e(error['error'])}</p>"
        )
    parts.append(
        '<table class="data" id="tests"><thead><tr><th>Rule</th><th>Case</th><th>Expected</th>'
        "<th>Matched events</th><th>Result</th></tr></thead><tbody>"
    )
    for rule in report["inventory"]:
        for case in rule["tests"]["results"]:
            verdict = (
                '<span class="pass">pass</span>'
                if case["passed"]
                else f'<span class="fail">FAIL</span> {_e(case["error"] or "")}'
            )
            parts.append(
                f"<tr><td>{_e(rule['title'])}</td><td>{_e(case['case'])}</td>"
                f"<td>{'match' if case['expected_match'] else 'no match'}</td>"
                f"<td>{case['matched_events']}</td><td>{verdict}</td></tr>"
            )
        if not rule["tests"]["results"]:
            parts.append(
                f"<tr><td>{_e(rule['title'])}</td><td>(no test case)</td><td>-</td><td>-</td>"
                '<td class="none">none</td></tr>'
            )
    parts.append("</tbody></table>")

    parts += ["<h2>Alerts</h2>", f"<p>Period: {_e(_period_text(report))}.</p>"]
    if note is not None:
        parts.append(f"<p>No alerts read: {_e(note)}.</p>")
    else:
        parts.append(
            '<table class="data" id="alerts"><thead><tr><th>Rule</th><th>Alerts</th>'
            "<th>Last fired</th></tr></thead><tbody>"
        )
        for rule in sorted(report["inventory"], key=lambda r: -r["alerts"]["count"]):
            parts.append(
                f"<tr><td>{_e(rule['title'])}</td><td>{rule['alerts']['count']}</td>"
                f"<td>{_e(rule['alerts']['last'])}</td></tr>"
            )
        for rid, stats in report["alerts"]["unknown_rules"].items():
            parts.append(
                f'<tr><td class="mono">{_e(rid)} (not in the rule set)</td>'
                f"<td>{_e(stats.get('count'))}</td><td>{_e(stats.get('last'))}</td></tr>"
            )
        parts.append("</tbody></table>")
    parts += [
        "<footer>MITRE ATT&amp;CK&reg; for ICS &copy; The MITRE Corporation. This work is"
        " reproduced and distributed with the permission of The MITRE Corporation (the licence"
        " is carried in rules/attack_ics.json). Report format version"
        f" {report['version']}.</footer>",
        "</body></html>",
        "",
    ]
    return "\n".join(parts)


def render(report: Mapping[str, Any], fmt: str) -> str:
    """The report in ``fmt`` (``html``, ``md`` or ``json``)."""
    if fmt == "html":
        return to_html(report)
    if fmt == "md":
        return to_markdown(report)
    if fmt == "json":
        return to_json(report)
    raise ValueError(f"unknown report format {fmt!r} (one of {', '.join(FORMATS)})")


def write_report(report: Mapping[str, Any], fmt: str, out: Path) -> None:
    """Write the report atomically (a temporary file beside ``out``, then renamed)."""
    text = render(report, fmt)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
