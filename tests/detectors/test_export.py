"""``soc rules export``: the rules for Elasticsearch (Lucene, ES|QL, Elastic Security NDJSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from detectors.attack import load_table
from detectors.export import (
    DEFAULT_INDEX,
    TARGETS,
    Unsupported,
    export_rules,
    lucene_regex,
)
from detectors.export_cli import export
from detectors.sigma import compile_rules

SETPOINT_RANGE = "e27e60d9-670b-47f0-9dcb-23cfe0d2f557"  # |re on modbus.request.values
#: equality and |startswith on the list mqtt.topics: ES|QL compares a multi-valued field as null
MQTT_WILDCARD = "c32ffdfa-8b95-42cf-9df9-a6f46038e878"
FORCE_LISTEN_ONLY = "force_listen_only"


@pytest.fixture(scope="module")
def compiled() -> dict[str, Any]:
    return {rule.id: rule for rule in compile_rules()}


@pytest.fixture(scope="module")
def exports() -> dict[str, Any]:
    return {target: export_rules(target) for target in TARGETS}


def _by_id(docs: list[dict[str, Any]], key: str = "id") -> dict[str, dict[str, Any]]:
    return {str(doc[key]): doc for doc in docs}


@pytest.mark.parametrize("target", TARGETS)
def test_every_rule_converts_or_is_reported_with_a_reason(
    target: str, exports: dict[str, Any], compiled: dict[str, Any]
) -> None:
    result = exports[target]
    skipped = {rule_id: why for rule_id, _title, why in result.skipped}
    assert set(result.converted) | set(skipped) == set(compiled)
    assert not set(result.converted) & set(skipped)
    assert all(why.strip() for why in skipped.values())
    assert len(result.documents) == len(result.converted)
    for line in result.lines():
        json.loads(line)


def test_lucene_skips_correlations_and_the_numeric_regex(
    exports: dict[str, Any], compiled: dict[str, Any]
) -> None:
    result = exports["lucene"]
    skipped = {rule_id: why for rule_id, _title, why in result.skipped}
    correlations = {rid for rid, rule in compiled.items() if rule.is_correlation}
    assert correlations
    assert correlations <= set(skipped)
    for rid in correlations:
        assert "Lucene backend converts no correlation rule" in skipped[rid]
    assert "numeric field modbus.request.values" in skipped[SETPOINT_RANGE]
    assert set(skipped) == correlations | {SETPOINT_RANGE}


def test_esql_converts_the_correlations_with_stats_by(
    exports: dict[str, Any], compiled: dict[str, Any]
) -> None:
    result = exports["esql"]
    assert sorted(rid for rid, _t, _w in result.skipped) == sorted([SETPOINT_RANGE, MQTT_WILDCARD])
    reasons = {rid: why for rid, _t, why in result.skipped}
    assert "mqtt.topics holds a list" in reasons[MQTT_WILDCARD]
    docs = _by_id(result.documents)
    scan = next(r for r in compiled.values() if r.path.stem == "unit_id_scan" and r.is_correlation)
    query = docs[scan.id]["query"]
    assert query.startswith(f"from {DEFAULT_INDEX} ")
    assert 'event.dataset=="ics.modbus"' in query
    assert "| stats value_count=count_distinct(modbus.unit_id) by timebucket" in query
    assert "source.ip, destination.ip" in query
    assert "| where value_count > 32" in query
    assert 'not source.ip=="127.0.10.100"' in query  # the site's masters
    # a list field: ES|QL tests the joined elements (a multi-valued field compares as null)
    mismatch = next(r for r in compiled.values() if r.path.stem == "function_code_mismatch")
    assert (
        'mv_concat(modbus.anomalies, " ") like "*function_code_mismatch*"'
        in (docs[mismatch.id]["query"])
    )


def test_a_simple_rule_as_lucene(exports: dict[str, Any], compiled: dict[str, Any]) -> None:
    rule = next(r for r in compiled.values() if r.path.stem == FORCE_LISTEN_ONLY)
    doc = _by_id(exports["lucene"].documents)[rule.id]
    assert doc["title"] == rule.title
    assert doc["index"] == DEFAULT_INDEX
    query = doc["query"]
    for term in (
        "event.dataset:ics.modbus",
        "modbus.pdu_type:request",
        "modbus.function_code:8",
        "modbus.sub_function:4",
    ):
        assert term in query


def test_site_values_come_from_the_given_site(compiled: dict[str, Any]) -> None:
    site = {"modbus_masters": ["10.1.2.3", "10.1.2.4"]}
    from soc.config import LAB_SITE

    result = export_rules("lucene", site={**LAB_SITE, **site})
    rule = next(r for r in compiled.values() if r.path.stem == "request_from_unauthorized_master")
    query = _by_id(result.documents)[rule.id]["query"]
    assert "source.ip:(10.1.2.3 OR 10.1.2.4)" in query
    assert "127.0.10.100" not in query


def test_elastic_security_rules(exports: dict[str, Any], compiled: dict[str, Any]) -> None:
    result = exports["elastic-ndjson"]
    assert [rid for rid, _t, _w in result.skipped] == [SETPOINT_RANGE]
    table = load_table()
    docs = _by_id([json.loads(line) for line in result.lines()], key="rule_id")
    severities = {"informational": "low", "low": "low", "medium": "medium"}
    severities |= {"high": "high", "critical": "critical"}
    for rule_id, doc in docs.items():
        rule = compiled[rule_id]
        assert doc["name"] == rule.title
        assert doc["description"]
        assert doc["severity"] == severities[rule.level]
        assert 0 <= doc["risk_score"] <= 100
        assert doc["enabled"] is False
        assert doc["interval"] == "5m"
        assert doc["threat"], rule_id
        ids = set()
        for entry in doc["threat"]:
            assert entry["framework"] == "MITRE ATT&CK"
            tactic = entry["tactic"]
            assert tactic["id"] in {t.id for t in table.tactics}
            assert tactic["reference"] == f"https://attack.mitre.org/tactics/{tactic['id']}/"
            for technique in entry["technique"]:
                assert technique["id"] in table.techniques  # ICS ids only
                assert technique["name"] == table.techniques[technique["id"]].name
                ids.add(technique["id"])
        assert ids == set(rule.techniques)
        if rule.is_correlation:
            assert doc["type"] == "esql"
            assert doc["query"].startswith(f"from {DEFAULT_INDEX} ")
            assert "| stats " in doc["query"]
        else:
            assert doc["type"] == "query"
            assert doc["language"] == "lucene"
            assert doc["index"] == [DEFAULT_INDEX]
    critical = next(d for d in docs.values() if compiled[d["rule_id"]].level == "critical")
    assert critical["risk_score"] == 99


def test_kibana_saved_searches(exports: dict[str, Any]) -> None:
    for line in exports["kibana-ndjson"].lines():
        doc = json.loads(line)
        assert doc["type"] == "search"
        source = json.loads(doc["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        assert source["query"]["esql"].startswith(f"from {DEFAULT_INDEX} ")
        assert source["index"]["title"] == DEFAULT_INDEX


def test_lucene_regex() -> None:
    assert lucene_regex("^(1|2)$") == "(1|2)"
    assert lucene_regex("^a|b$") == "(a|b)"
    assert lucene_regex("abc") == ".*abc.*"
    assert lucene_regex("^abc") == "abc.*"
    for python_only in (r"^\d+$", r"a\s", "(?i)abc", "a^b"):
        with pytest.raises(Unsupported):
            lucene_regex(python_only)


def test_a_string_regex_converts_with_lucene_anchors(tmp_path: Path) -> None:
    folder = tmp_path / "modbus"
    folder.mkdir()
    (folder / "raw_regex.yml").write_text(
        """title: Raw payload regex
id: 5b1d5c1e-0000-4000-8000-0000000000aa
status: test
description: test
author: ics-soc
date: 2026-01-01
tags: [attack.ics, attack.t0855]
logsource: {product: ics, service: modbus}
detection:
  sel:
    modbus.raw|re: '^5a00(40|41)'
  condition: sel
falsepositives: [none]
level: high
""",
        encoding="utf-8",
    )
    (lucene,) = export_rules("lucene", tmp_path).documents
    assert "modbus.raw:/(5a00(40|41)).*/" in lucene["query"]
    (esql,) = export_rules("esql", tmp_path).documents
    assert 'modbus.raw rlike "(5a00(40|41)).*"' in esql["query"]


def test_the_command_writes_and_reports_offline(
    tmp_path: Path, no_network: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # pySigma's cache would land here
    monkeypatch.chdir(tmp_path)  # no soc.toml here: the configuration's defaults
    out = tmp_path / "rules.ndjson"
    result = CliRunner().invoke(
        export,
        ["--target", "elastic-ndjson", "--out", str(out), "--index", "logs-ics.modbus-*"],
    )
    assert result.exit_code == 0, result.output
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines
    for line in lines:
        doc = json.loads(line)
        if doc["type"] == "query":
            assert doc["index"] == ["logs-ics.modbus-*"]
        else:
            assert doc["query"].startswith("from logs-ics.modbus-* ")
    assert f"{SETPOINT_RANGE} " in result.stderr
    assert "skipped: " in result.stderr
    assert not (tmp_path / "home").exists()

    listed = CliRunner().invoke(export, ["--target", "lucene", "--out", "-"])
    assert listed.exit_code == 0
    assert all(json.loads(line)["query"] for line in listed.stdout.splitlines())


def test_a_bad_interval_is_an_error() -> None:
    result = CliRunner().invoke(export, ["--target", "esql", "--interval", "often"])
    assert result.exit_code != 0
    assert "not an interval" in result.output
