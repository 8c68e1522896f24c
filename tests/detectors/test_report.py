"""The auditor's report (``soc rules report``): the document, its three renderings, the matrix,
the store's alerts read defensively, and no network."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import apsw
import pytest
from click.testing import CliRunner

from detectors.attack import load_table
from detectors.report import (
    alert_stats,
    build_report,
    generate,
    last_change,
    read_alerts,
    to_html,
    to_json,
    to_markdown,
)
from detectors.report_cli import report as report_command
from detectors.sigma import CaseResult, compile_rules
from rules import rules_dir
from soc.config import Settings, SqliteSettings
from soc.store.sqlite import SQLiteStore

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr", "source"}


@pytest.fixture(scope="module")
def compiled() -> list[Any]:
    return compile_rules(rules_dir())


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, sqlite=SqliteSettings(path=tmp_path / "soc.db"))


def _sample(compiled: list[Any]) -> dict[str, Any]:
    """A report over the real rules with made-up test results and alerts (pure)."""
    evil = replace(compiled[0], title='<script>alert("x")</script> | pipe')
    rules = [evil, *compiled[1:]]
    results = [
        CaseResult(str(evil.path), evil.id, evil.title, "positive", True, ("e1",), True),
        CaseResult(str(evil.path), evil.id, evil.title, "negative <b>", False, ("e2",), False),
    ]
    stats = {
        evil.id: {"count": 3, "last": "2026-11-25T11:00:00+00:00"},
        "gone-rule": {"count": 1, "last": "2026-11-01T00:00:00+00:00"},
    }
    return build_report(
        rules,
        results,
        load_table(),
        stats,
        NOW,
        changes={str(evil.path): {"date": "2026-11-20T10:00:00+00:00", "source": "git"}},
        logsources={evil.id: "ics/modbus"},
        rules_dir=rules_dir(),
    )


class _Checker(HTMLParser):
    """Every non-void tag closed, in order; the matrix cells collected."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.cells: dict[str, int] = {}
        self.covered: set[str] = set()
        self.tags: set[str] = set()
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        a = dict(attrs)
        for name in ("src", "href"):
            if a.get(name):
                self.external.append(f"{tag} {name}={a[name]}")
        if tag == "td" and a.get("data-technique"):
            tid = str(a["data-technique"])
            self.cells[tid] = int(a.get("data-rules") or 0)
            if "covered" in (a.get("class") or "").split():
                self.covered.add(tid)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()


def _check_html(text: str) -> _Checker:
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert checker.errors == []
    assert checker.stack == []  # every tag closed
    return checker


def test_json_structure(compiled: list[Any]) -> None:
    doc = json.loads(to_json(_sample(compiled)))
    assert set(doc) >= {"generated_at", "summary", "inventory", "coverage", "matrix", "tests"}
    assert doc["generated_at"] == "2026-11-25T12:00:00+00:00"
    assert len(doc["inventory"]) == len(compiled)
    first = doc["inventory"][0]
    assert set(first) >= {
        "id",
        "title",
        "status",
        "level",
        "techniques",
        "tactics",
        "logsource",
        "file",
        "last_change",
        "last_change_source",
        "correlation",
        "tests",
        "alerts",
    }
    assert first["last_change_source"] == "git"
    assert first["file"].startswith("rules/")
    assert all(t["name"] and t["id"].startswith("T0") for t in first["techniques"])
    assert first["tests"] | {"results": []} == {
        "ran_at": "2026-11-25T12:00:00+00:00",
        "cases": 2,
        "passed": 1,
        "failed": 1,
        "verdict": "fail",
        "results": [],
    }
    assert first["alerts"] == {"count": 3, "last": "2026-11-25T11:00:00+00:00"}
    assert doc["alerts"]["unknown_rules"] == {
        "gone-rule": {"count": 1, "last": "2026-11-01T00:00:00+00:00"}
    }
    table = load_table()
    # the matrix: the table's tactics in its order, every technique under each of its tactics
    assert [t["id"] for t in doc["matrix"]] == [t.id for t in table.tactics]
    assert [t["name"] for t in doc["matrix"]][:3] == [
        "Initial Access",
        "Execution",
        "Persistence",
    ]
    assert doc["matrix"][-1]["name"] == "Impact"
    techniques = {c["id"] for t in doc["matrix"] for c in t["techniques"]}
    assert techniques == set(table.techniques)
    covered = {t for rule in compiled for t in rule.techniques}
    assert set(doc["coverage"]["covered"]) == covered & set(table.techniques)
    assert doc["summary"]["techniques_covered"] == len(doc["coverage"]["covered"])
    assert doc["summary"]["techniques_total"] == len(table.techniques)
    for tactic, row in zip(doc["matrix"], doc["coverage"]["per_tactic"], strict=True):
        assert row["covered"] == sum(1 for c in tactic["techniques"] if c["rules"])


def test_html_well_formed_and_matrix_marks_exactly_the_covered(compiled: list[Any]) -> None:
    doc = _sample(compiled)
    text = to_html(doc)
    checker = _check_html(text)
    expected_covered = {t for rule in compiled for t in rule.techniques} & set(
        load_table().techniques
    )
    assert checker.covered == expected_covered
    assert set(checker.cells) == set(load_table().techniques)
    for tid, count in checker.cells.items():
        assert count == len(doc["coverage"]["rules_per_technique"].get(tid, []))
    # self-contained: no script, no external resource
    assert "script" not in checker.tags
    assert checker.external == []
    assert "http://" not in text
    assert "https://" not in text
    assert "@import" not in text
    assert "url(" not in text
    # everything escaped
    assert "<script>" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert "negative &lt;b&gt;" in text


def test_markdown_inventory_one_row_per_rule(compiled: list[Any]) -> None:
    text = to_markdown(_sample(compiled))
    lines = text.splitlines()
    start = lines.index("## Rule inventory")
    header = lines[start + 2]
    assert header.startswith("| ID | Title | Status | Level | Techniques")
    rows = []
    for line in lines[start + 4 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    assert len(rows) == len(compiled)
    assert {r.split(" | ")[0].lstrip("| ") for r in rows} == {rule.id for rule in compiled}
    # a pipe in a title does not split a cell
    assert any("\\| pipe" in r for r in rows)
    assert "## ATT&CK for ICS coverage" in text


def test_alert_stats_no_store_and_no_table(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert alert_stats(settings, None, None) == {}
    assert "no store" in str(read_alerts(settings, None, None)[1])
    conn = apsw.Connection(str(tmp_path / "soc.db"))
    conn.execute("CREATE TABLE events (id TEXT)")
    conn.close()
    stats, note = read_alerts(settings, None, None)
    assert stats == {}
    assert note is not None
    assert "no alerts table" in note


def test_alert_stats_counts_over_the_period(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with SQLiteStore(settings.sqlite_path):
        pass  # the store's schema, alerts table included
    conn = apsw.Connection(str(settings.sqlite_path))
    columns = [row[1] for row in conn.execute("PRAGMA table_info(alerts)")]
    base = 1_700_000_000_000_000
    rows = [("a1", base, "r1"), ("a2", base + 10, "r1"), ("a3", base + 100, "r2")]
    for aid, ts, rule in rows:
        values = {"id": aid, "ts": ts, "rule_id": rule, "severity": 47, "doc": "{}"}
        names = [c for c in values if c in columns]
        conn.execute(
            f"INSERT INTO alerts ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            tuple(values[n] for n in names),
        )
    conn.close()
    stats, note = read_alerts(settings, base + 5, base + 50)
    assert note is None
    assert stats["r1"]["count"] == 1
    assert stats["r1"]["last"] == datetime.fromtimestamp((base + 10) / 1e6, UTC).isoformat(
        timespec="seconds"
    )
    assert "r2" not in stats  # fired only after the period
    assert read_alerts(settings, None, None)[0]["r2"]["count"] == 1


def test_last_change(tmp_path: Path) -> None:
    from detectors.sigma import rule_files

    tracked = last_change(rule_files(rules_dir())[0])
    assert tracked["source"] == "git" or tracked["source"].startswith("mtime (")
    loose = tmp_path / "x.yml"
    loose.write_text("title: x\n")
    change = last_change(loose)
    assert change["source"].startswith("mtime (")
    assert change["date"]


def test_generating_opens_no_socket(tmp_path: Path, no_network: list[str]) -> None:
    doc = generate(_settings(tmp_path), rules_dir(), now=NOW)
    assert doc["summary"]["tests_passed"]
    for text in (to_html(doc), to_markdown(doc), to_json(doc)):
        assert text


def test_cli_writes_each_format(tmp_path: Path) -> None:
    env = {"SOC_DATA_DIR": str(tmp_path)}
    runner = CliRunner()
    for fmt in ("html", "md", "json"):
        out = tmp_path / f"report.{fmt}"
        result = runner.invoke(
            report_command,
            ["--format", fmt, "--out", str(out), "--since", "2026-01-01T00:00:00"],
            env=env,
            obj={"config": None},
        )
        assert result.exit_code == 0, result.output
        assert out.exists()
        assert "rules" in result.output
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["alerts"]["period"]["since"] == "2026-01-01T00:00:00+00:00"
    assert "no store" in doc["alerts"]["note"]
    _check_html((tmp_path / "report.html").read_text())
    bad = runner.invoke(
        report_command, ["--out", str(tmp_path / "x"), "--since", "yesterday"], obj={}
    )
    assert bad.exit_code == 2
