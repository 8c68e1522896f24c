"""The detection engine's foundation: loading, compiling (pySigma -> SQLite), placeholders,
correlations, list fields, offline ATT&CK, ``soc rules check/test/list``, and every real rule's
test cases."""

from __future__ import annotations

import functools
import json
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from detectors.attack import DEFAULT_BUNDLE, build_table, load_table
from detectors.sigma import (
    LIST_FIELDS,
    check_rules,
    compile_rules,
    execute,
    memory_store,
    rule_files,
    run_file_tests,
    run_on_events,
)
from rules import rules_dir
from soc.cli import main
from soc.config import LAB_SITE, load_settings
from soc.errors import ConfigError, RuleError

T0 = "2024-05-01T10:00:00"
REAL_RULE_FILES = rule_files(rules_dir())


def ev(
    eid: str,
    second: float = 0,
    *,
    src: str = "127.0.66.6",
    dataset: str = "ics.modbus",
    **fields: Any,
) -> dict[str, Any]:
    """A small ECS event: ``modbus_unit_id=3`` becomes ``{"modbus": {"unit_id": 3}}``."""
    whole, frac = divmod(second, 1)
    minute, sec = divmod(int(whole), 60)
    doc: dict[str, Any] = {
        "@timestamp": f"2024-05-01T10:{minute:02d}:{sec:02d}.{round(frac * 1e6):06d}Z",
        "event": {"id": eid, "dataset": dataset},
        "source": {"ip": src},
    }
    for key, value in fields.items():
        node = doc
        *parents, leaf = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return doc


RULE_HEAD = """\
title: {title}
id: {id}
status: experimental
description: A rule of the tests.
author: ics-soc
date: 2024-05-01
tags: [attack.ics, attack.impair-process-control, attack.t0855]
logsource: {{product: ics, service: modbus}}
falsepositives: [Maintenance]
level: high
"""


def write_rule(
    folder: Path,
    slug: str,
    detection: str,
    *,
    rule_id: str = "5b1d5c1e-0000-4000-8000-000000000001",
    title: str = "Test rule",
    extra_docs: str = "",
    tests: dict[str, Any] | None = None,
    service: str = "modbus",
) -> Path:
    path = folder / service / f"{slug}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    head = RULE_HEAD.format(title=title, id=rule_id).replace(
        "service: modbus", f"service: {service}"
    )
    body = head + "detection:\n" + textwrap.indent(textwrap.dedent(detection).strip(), "  ") + "\n"
    path.write_text(
        body + (("---\n" + textwrap.dedent(extra_docs).strip() + "\n") if extra_docs else "")
    )
    if tests is not None:
        path.with_name(f"{slug}.tests.yml").write_text(json.dumps(tests))
    return path


WRITE_COIL = """
sel:
  modbus.function_code: 5
  modbus.pdu_type: request
condition: sel
"""


# -- compilation and matching -----------------------------------------------------------------


def test_a_simple_rule_compiles_and_matches_the_right_events_only(tmp_path: Path) -> None:
    write_rule(tmp_path, "write_single_coil", WRITE_COIL)
    (rule,) = compile_rules(tmp_path)
    assert rule.id == "5b1d5c1e-0000-4000-8000-000000000001"
    assert rule.techniques == ("T0855",)
    assert rule.tactics == ("impair-process-control",)
    assert rule.level == "high"
    assert not rule.is_correlation
    assert set(rule.fields) == {"event.dataset", "modbus.function_code", "modbus.pdu_type"}
    assert rule.query.startswith("SELECT * FROM logs WHERE")
    assert "`modbus.function_code`=5" in rule.query
    events = [
        ev("hit", 0, modbus__function_code=5, modbus__pdu_type="request"),
        ev("response", 1, modbus__function_code=5, modbus__pdu_type="response"),
        ev("read", 2, modbus__function_code=3, modbus__pdu_type="request"),
        ev(
            "other-dataset",
            3,
            dataset="ics.opcua",
            modbus__function_code=5,
            modbus__pdu_type="request",
        ),
        ev("case", 4, modbus__function_code=5, modbus__pdu_type="REQUEST"),  # Sigma: no case
        ev("no-modbus", 5),
    ]
    assert run_on_events([rule], events) == {rule.id: ["hit", "case"]}


def test_hits_carry_time_and_the_statement_narrows_the_events(tmp_path: Path) -> None:
    write_rule(tmp_path, "write_single_coil", WRITE_COIL)
    (rule,) = compile_rules(tmp_path)
    events = [ev(f"e{i}", i, modbus__function_code=5, modbus__pdu_type="request") for i in range(4)]
    conn = memory_store(events)
    hits = execute(conn, rule)
    assert [h.event_ids for h in hits] == [("e0",), ("e1",), ("e2",), ("e3",)]
    assert hits[1].ts - hits[0].ts == 1_000_000  # µs
    later = execute(conn, rule, where="seq > ?", params=(2,))  # as the incremental runner will
    assert [h.event_ids[0] for h in later] == ["e2", "e3"]


def test_regular_expressions_and_wildcards(tmp_path: Path) -> None:
    write_rule(
        tmp_path,
        "device_identification",
        """
        sel:
          modbus.device_identification.vendor_name|re: '^Sim[a-z]+ Corp$'
          event.action|startswith: read_device
        condition: sel
        """,
    )
    (rule,) = compile_rules(tmp_path)
    events = [
        ev(
            "yes",
            0,
            modbus__device_identification__vendor_name="Simulated Corp",
            event__action="read_device_identification",
        ),
        ev(
            "no",
            1,
            modbus__device_identification__vendor_name="Real Corp",
            event__action="read_device_identification",
        ),
    ]
    assert run_on_events([rule], events)[rule.id] == ["yes"]


# -- placeholders ------------------------------------------------------------------------------

ROGUE_WRITE = """
write:
  modbus.function_code: [5, 6, 15, 16]
  modbus.pdu_type: request
master:
  source.ip|expand: '%modbus_masters%'
ews:
  source.ip|expand: '%engineering_workstations%'
condition: write and not master and not ews
"""


def test_placeholders_expand_from_the_configured_site(tmp_path: Path) -> None:
    write_rule(tmp_path, "rogue_master_write", ROGUE_WRITE)
    events = [
        ev("hmi", 0, src="127.0.10.100", modbus__function_code=6, modbus__pdu_type="request"),
        ev("attacker", 1, src="127.0.66.6", modbus__function_code=6, modbus__pdu_type="request"),
        ev("ews", 2, src="10.9.9.9", modbus__function_code=16, modbus__pdu_type="request"),
    ]
    lab = load_settings(env={}, cwd=tmp_path).detect.site
    assert lab == LAB_SITE
    assert lab["engineering_workstations"] == ()
    (rule,) = compile_rules(tmp_path, lab)
    assert "'127.0.10.100'" in rule.query
    assert run_on_events([rule], events)[rule.id] == ["attacker", "ews"]

    (tmp_path / "soc.toml").write_text(
        '[detect.site]\nmodbus_masters = ["127.0.66.6", "10.1.1.1"]\nengineering_workstations = ["10.9.9.9"]\n'
    )
    site = load_settings(env={}, cwd=tmp_path).detect.site
    (rule,) = compile_rules(tmp_path, site)
    assert run_on_events([rule], events)[rule.id] == ["hmi"]


def test_numeric_placeholders_become_numbers(tmp_path: Path) -> None:
    write_rule(
        tmp_path,
        "setpoint_write",
        """
        sel:
          modbus.function_code: 6
          modbus.request.address|expand: '%modbus_setpoint_registers%'
        condition: sel
        """,
    )
    (rule,) = compile_rules(tmp_path, LAB_SITE)  # registers 1-4
    events = [ev(f"a{a}", a, modbus__function_code=6, modbus__request__address=a) for a in range(7)]
    assert run_on_events([rule], events)[rule.id] == ["a1", "a2", "a3", "a4"]
    (rule,) = compile_rules(tmp_path, {**LAB_SITE, "modbus_setpoint_registers": ()})
    assert run_on_events([rule], events)[rule.id] == []
    with pytest.raises(RuleError, match="takes numbers"):
        compile_rules(tmp_path, {**LAB_SITE, "modbus_setpoint_registers": ("one",)})


def test_placeholders_in_regular_expressions(tmp_path: Path) -> None:
    write_rule(
        tmp_path,
        "value_out_of_range",
        """
        sel:
          modbus.request.values|re|expand: '%big_values%'
        condition: sel
        """,
    )
    events = [
        ev("big", 0, modbus__request__values=[100, 6000]),
        ev("small", 1, modbus__request__values=[100, 4000]),
    ]
    (rule,) = compile_rules(tmp_path, {**LAB_SITE, "big_values": ("^[5-9][0-9]{3}$",)})
    assert run_on_events([rule], events)[rule.id] == ["big"]
    (rule,) = compile_rules(tmp_path, {**LAB_SITE, "big_values": ()})
    assert run_on_events([rule], events)[rule.id] == []  # no pattern: nothing matches


def test_an_unknown_placeholder_is_an_error_naming_the_rule(tmp_path: Path) -> None:
    path = write_rule(
        tmp_path,
        "unknown_placeholder",
        """
        sel:
          source.ip|expand: '%plc_programmers%'
        condition: sel
        """,
        rule_id="5b1d5c1e-0000-4000-8000-0000000000aa",
    )
    with pytest.raises(RuleError) as info:
        compile_rules(tmp_path)
    assert "%plc_programmers%" in str(info.value)
    assert "5b1d5c1e-0000-4000-8000-0000000000aa" in str(info.value)
    assert info.value.location == str(path)


def test_site_settings_from_file_and_environment(tmp_path: Path) -> None:
    (tmp_path / "soc.toml").write_text(
        '[detect.site]\nmodbus_setpoint_registers = [10, 11]\nplc_programmers = ["10.0.0.7"]\n'
    )
    env = {
        "SOC_DETECT_SITE_MODBUS_MASTERS": "10.0.0.1, 10.0.0.2",
        "SOC_DETECT_SITE_OPCUA_CLIENTS": "",
    }
    settings = load_settings(env=env, cwd=tmp_path)
    site = settings.detect.site
    assert site["modbus_setpoint_registers"] == ("10", "11")
    assert site["plc_programmers"] == ("10.0.0.7",)  # a site may add names for its own rules
    assert site["modbus_masters"] == ("10.0.0.1", "10.0.0.2")
    assert site["opcua_clients"] == ()
    assert site["dlms_head_ends"] == LAB_SITE["dlms_head_ends"]  # not set: the default
    assert settings.sources["detect.site.modbus_masters"] == "SOC_DETECT_SITE_MODBUS_MASTERS"
    assert settings.sources["detect.site.plc_programmers"] == "soc.toml"
    (tmp_path / "soc.toml").write_text("[detect.site]\nmodbus_masters = [true]\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, cwd=tmp_path)
    assert info.value.location == "detect.site.modbus_masters"
    with pytest.raises(ConfigError) as info:
        load_settings(env={"SOC_DETECT_SITE_MY-HOSTS": "10.0.0.1"}, cwd=tmp_path / "none")
    assert info.value.location == "detect.site.my-hosts"


# -- correlations -----------------------------------------------------------------------------

UNIT_SCAN = """
title: Modbus unit id scan
id: 5b1d5c1e-0000-4000-8000-000000000002
status: experimental
description: One source addresses many unit ids in a short time.
author: ics-soc
date: 2024-05-01
tags: [attack.ics, attack.discovery, attack.t0846]
correlation:
  type: value_count
  rules: [modbus_request_to_unit]
  group-by: [source.ip]
  timespan: 10s
  condition:
    field: modbus.unit_id
    gte: 3
falsepositives: [A gateway polling several slaves]
level: medium
"""

UNIT_REQUEST = """
sel:
  modbus.pdu_type: request
condition: sel
"""


def _unit_scan_rule(folder: Path) -> Path:
    path = write_rule(folder, "unit_id_scan", UNIT_REQUEST, extra_docs=UNIT_SCAN)
    text = path.read_text().replace(
        "title: Test rule\n", "title: Modbus request to a unit\nname: modbus_request_to_unit\n"
    )
    path.write_text(text.replace("level: high\n", "", 1))
    return path


def test_a_value_count_correlation_fires_only_above_its_threshold(tmp_path: Path) -> None:
    _unit_scan_rule(tmp_path)
    (rule,) = compile_rules(tmp_path)  # the base rule has no output of its own
    assert rule.is_correlation
    assert rule.correlation_type == "value_count"
    assert rule.id == "5b1d5c1e-0000-4000-8000-000000000002"
    assert rule.timespan_s == 10
    assert rule.group_by == ("source.ip",)
    assert rule.techniques == ("T0846",)
    assert rule.tactics == ("discovery",)

    def request(eid: str, second: float, unit: int, src: str = "127.0.66.6") -> dict[str, Any]:
        return ev(eid, second, src=src, modbus__pdu_type="request", modbus__unit_id=unit)

    two_units = [request("a", 0, 1), request("b", 1, 2), request("c", 2, 2)]
    assert run_on_events([rule], two_units)[rule.id] == []
    three_units = [*two_units, request("d", 9.5, 3)]
    assert sorted(run_on_events([rule], three_units)[rule.id]) == ["a", "b", "c", "d"]
    spread = [request("a", 0, 1), request("b", 6, 2), request("c", 12, 3), request("d", 18, 4)]
    assert run_on_events([rule], spread)[rule.id] == []  # never three within 10 s
    sources = [request("a", 0, 1), request("b", 1, 2, "10.0.0.1"), request("c", 2, 3, "10.0.0.2")]
    assert run_on_events([rule], sources)[rule.id] == []  # three units, but three sources
    responses = [ev(f"r{u}", u, modbus__pdu_type="response", modbus__unit_id=u) for u in range(5)]
    assert run_on_events([rule], responses)[rule.id] == []  # the base rule selects requests

    conn = memory_store(three_units)
    (hit,) = execute(conn, rule)
    assert hit.group == {"source.ip": "127.0.66.6"}
    assert hit.metric == 3
    assert hit.window_start is not None
    assert hit.ts - hit.window_start == 10_000_000
    assert execute(conn, rule, materialize=True) == [hit]  # pySigma's plan, stage by stage
    assert execute(conn, rule, where="ts < ?", params=(hit.ts,), materialize=True) == []
    assert conn.execute("SELECT count(*) FROM temp.sqlite_master").get == 0  # cleaned up


def test_an_event_count_correlation(tmp_path: Path) -> None:
    flood = UNIT_SCAN.replace("type: value_count", "type: event_count").replace(
        "  condition:\n    field: modbus.unit_id\n    gte: 3", "  condition:\n    gt: 4"
    )
    path = write_rule(tmp_path, "request_flood", UNIT_REQUEST, extra_docs=flood)
    path.write_text(
        path.read_text().replace(
            "title: Test rule\n", "title: Request\nname: modbus_request_to_unit\n"
        )
    )
    (rule,) = compile_rules(tmp_path)
    four = [ev(f"e{i}", i * 0.5, modbus__pdu_type="request") for i in range(4)]
    assert run_on_events([rule], four)[rule.id] == []
    five = [*four, ev("e4", 9, modbus__pdu_type="request")]
    assert run_on_events([rule], five)[rule.id] == ["e0", "e1", "e2", "e3", "e4"]
    spread = [ev(f"e{i}", i * 3, modbus__pdu_type="request") for i in range(5)]
    assert run_on_events([rule], spread)[rule.id] == []  # 12 s: at most four in 10 s


# -- list fields ------------------------------------------------------------------------------


def test_list_fields_match_any_element(tmp_path: Path) -> None:
    assert {"modbus.anomalies", "related.ip", "modbus.request.values"} <= LIST_FIELDS
    write_rule(
        tmp_path,
        "illegal_coil_value",
        """
        anomaly:
          modbus.anomalies: illegal_coil_value
        host:
          related.ip: 127.0.10.1
        coil_on:
          modbus.request.values: 1
        condition: anomaly and host and not coil_on
        """,
    )
    (rule,) = compile_rules(tmp_path)
    assert "json_each(`modbus.anomalies`)" in rule.query
    events = [
        ev(
            "hit",
            0,
            modbus__anomalies=["trailing_bytes", "illegal_coil_value"],
            related__ip=["127.0.66.6", "127.0.10.1"],
            modbus__request__values=[0],
        ),
        ev("other-anomaly", 1, modbus__anomalies=["trailing_bytes"], related__ip=["127.0.10.1"]),
        ev("other-host", 2, modbus__anomalies=["illegal_coil_value"], related__ip=["10.0.0.1"]),
        ev("no-values", 3, modbus__anomalies=["illegal_coil_value"], related__ip=["127.0.10.1"]),
        ev(
            "value-on",
            4,
            modbus__anomalies=["illegal_coil_value"],
            related__ip=["127.0.10.1"],
            modbus__request__values=[0, 1],
        ),
        ev("scalar", 5, modbus__anomalies="illegal_coil_value", related__ip="127.0.10.1"),
        ev("none", 6),
    ]
    assert run_on_events([rule], events)[rule.id] == ["hit", "no-values", "scalar"]


def test_an_undeclared_list_field_is_reported_by_the_test_run(tmp_path: Path) -> None:
    path = write_rule(
        tmp_path,
        "undeclared_list",
        "sel:\n  modbus.response.registers: 7\ncondition: sel\n",
        tests={
            "rule": "5b1d5c1e-0000-4000-8000-000000000001",
            "cases": [
                {
                    "name": "list",
                    "match": True,
                    "events": [ev("a", modbus__response__registers=[7])],
                },
            ],
        },
    )
    (result,) = run_file_tests(path)
    assert not result.passed
    assert result.error is not None
    assert "LIST_FIELDS" in result.error


# -- offline ----------------------------------------------------------------------------------


def test_nothing_in_check_or_compile_touches_the_network(
    tmp_path: Path, no_network: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # pySigma's cache would land here
    write_rule(tmp_path, "write_single_coil", WRITE_COIL)
    _unit_scan_rule(tmp_path)
    assert len(compile_rules(tmp_path)) == 2
    check_rules(tmp_path)
    check_rules()  # the real rules too (their problems are collected, not raised)
    from sigma.data import mitre_attack

    assert mitre_attack.mitre_attack_techniques["T0855"] == "Unauthorized Command Message"
    assert "T1059" not in mitre_attack.mitre_attack_techniques  # ICS only, no Enterprise data
    assert not (tmp_path / "home").exists()


def test_the_attack_table() -> None:
    table = load_table()
    assert table.techniques["T0855"].name == "Unauthorized Command Message"
    assert table.techniques["T0855"].tactics == ("impair-process-control",)
    assert [t.short_name for t in table.tactics][:2] == ["initial-access", "execution"]
    assert "T0841" in table.retired
    assert "T0841" not in table.techniques
    if not DEFAULT_BUNDLE.exists():
        pytest.skip("../shared/data/ics-attack.json not present: the table is not re-derived")
    derived = build_table(json.loads(DEFAULT_BUNDLE.read_bytes()))
    committed = json.loads((rules_dir() / "attack_ics.json").read_text())
    assert derived["techniques"] == committed["techniques"]
    assert derived["tactics"] == committed["tactics"]
    assert derived["retired"] == committed["retired"]


# -- soc rules check / test / list ------------------------------------------------------------


def _good_tests(rule_id: str = "5b1d5c1e-0000-4000-8000-000000000001") -> dict[str, Any]:
    return {
        "rule": rule_id,
        "cases": [
            {
                "name": "write",
                "match": True,
                "events": [ev("a", modbus__function_code=5, modbus__pdu_type="request")],
            },
            {
                "name": "read",
                "match": False,
                "events": [ev("b", modbus__function_code=1, modbus__pdu_type="request")],
            },
        ],
    }


def test_check_passes_a_sound_rule_and_reports_one_without_tests(tmp_path: Path) -> None:
    good = write_rule(tmp_path, "write_single_coil", WRITE_COIL, tests=_good_tests())
    bare = write_rule(
        tmp_path,
        "write_without_tests",
        WRITE_COIL,
        rule_id="5b1d5c1e-0000-4000-8000-000000000009",
        title="Another",
    )
    problems = check_rules(tmp_path)
    assert problems[good] == []
    assert problems[bare] == ["no test cases: write_without_tests.tests.yml is missing"]


def test_check_reports_what_a_rule_lacks(tmp_path: Path) -> None:
    path = write_rule(tmp_path, "write_single_coil", WRITE_COIL, tests=_good_tests())
    text = path.read_text()
    path.write_text(
        text.replace("attack.t0855", "attack.t0841")  # deprecated in ATT&CK for ICS
        .replace("falsepositives: [Maintenance]\n", "")
        .replace("level: high\n", "")
    )
    other = write_rule(
        tmp_path,
        "enterprise_tag",
        WRITE_COIL,
        rule_id="5b1d5c1e-0000-4000-8000-000000000003",
        title="Test rule",  # the same title as the first
        tests={
            "rule": "5b1d5c1e-0000-4000-8000-000000000003",
            "cases": [_good_tests()["cases"][0]],
        },
    )
    other.write_text(other.read_text().replace("attack.t0855", "attack.t1059"))
    problems = check_rules(tmp_path)
    found = "\n".join(problems[path])
    assert "missing level, falsepositives" in found
    assert "attack.t0841 is Network Service Scanning (deprecated)" in found
    assert "no attack.tXXXX tag of an ATT&CK for ICS technique" in found
    found = "\n".join(problems[other])
    assert "Invalid MITRE ATT&CK tagging" in found  # pySigma's validator, with our ICS data
    assert "Rule title used by multiple rules" in found
    assert "has no negative (match: false) case" in found


def test_check_reports_a_rule_that_does_not_load_or_compile(tmp_path: Path) -> None:
    broken = tmp_path / "modbus" / "broken_yaml.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text("title: [unclosed\n")
    windows = write_rule(
        tmp_path,
        "windows_logsource",
        WRITE_COIL,
        rule_id="5b1d5c1e-0000-4000-8000-000000000004",
        title="W",
    )
    windows.write_text(
        windows.read_text().replace(
            "{product: ics, service: modbus}", "{product: windows, service: security}"
        )
    )
    problems = check_rules(tmp_path)
    assert any("not valid YAML" in p and "line" in p for p in problems[broken])
    assert any("not in the taxonomy" in p for p in problems[windows])
    assert any(
        "does not compile" in p and "log source not in the ics-soc taxonomy" in p
        for p in problems[windows]
    )
    with pytest.raises(RuleError) as info:
        compile_rules(tmp_path)
    assert info.value.location == str(broken)


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    for key in list(__import__("os").environ):
        if key.startswith("SOC_"):
            monkeypatch.delenv(key)
    return CliRunner()


def test_the_rules_commands(tmp_path: Path, runner: CliRunner) -> None:
    folder = tmp_path / "myrules"
    write_rule(folder, "write_single_coil", WRITE_COIL, tests=_good_tests())
    listed = runner.invoke(main, ["rules", "list", "--rules", str(folder)])
    assert listed.exit_code == 0, listed.output
    assert "5b1d5c1e-0000-4000-8000-000000000001  high   T0855" in listed.output
    as_json = runner.invoke(main, ["rules", "list", "--rules", str(folder), "--json"])
    assert orjson.loads(as_json.stdout)["techniques"] == ["T0855"]

    checked = runner.invoke(main, ["rules", "check", "--rules", str(folder)])
    assert checked.exit_code == 0, checked.output
    assert "1 rule files, 0 with problems" in checked.output
    tested = runner.invoke(main, ["rules", "test", "--rules", str(folder)])
    assert tested.exit_code == 0, tested.output
    assert "PASS  5b1d5c1e-0000-4000-8000-000000000001  Test rule :: write" in tested.output
    assert "2 cases: 2 passed, 0 failed" in tested.output

    wrong = _good_tests()
    wrong["cases"][1]["match"] = True  # a read does not match: this case fails
    (folder / "modbus" / "write_single_coil.tests.yml").write_text(json.dumps(wrong))
    (folder / "soc.toml").write_text("")
    failed = runner.invoke(main, ["rules", "test", "--rules", str(folder), "--json"])
    assert failed.exit_code == 1
    report = orjson.loads(failed.stdout)
    assert report["passed"] is False
    assert report["failed"] == 1
    assert report["cases"] == 2
    assert report["results"][1]["case"] == "read"
    assert report["results"][1]["passed"] is False

    write_rule(
        folder,
        "write_without_tests",
        WRITE_COIL,
        rule_id="5b1d5c1e-0000-4000-8000-000000000005",
        title="B",
    )
    checked = runner.invoke(main, ["rules", "check", "--rules", str(folder)])
    assert checked.exit_code == 1
    assert "no test cases: write_without_tests.tests.yml is missing" in checked.output

    (tmp_path / "soc.toml").write_text(f'[detect]\nrules_dir = "{folder}"\n')
    listed = runner.invoke(main, ["rules", "list"])  # detect.rules_dir from the configuration
    assert "5b1d5c1e-0000-4000-8000-000000000005" in listed.output


# -- the real rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", REAL_RULE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_rule_passes_its_test_cases(path: Path) -> None:
    results = run_file_tests(path, LAB_SITE)
    assert results, f"{path} has no test cases"
    failures = [r for r in results if not r.passed]
    assert not failures, "\n".join(
        f"{r.rule_id} {r.case}: {r.error or ('expected a match' if r.expected else 'expected none')}"
        for r in failures
    )


@pytest.mark.parametrize("path", REAL_RULE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_rule_passes_the_check(path: Path) -> None:
    assert _real_problems()[path] == []


@functools.cache
def _real_problems() -> dict[Path, list[str]]:
    return check_rules(rules_dir(), LAB_SITE)


def test_the_real_rules_compile_quickly() -> None:
    started = time.perf_counter()
    compiled = compile_rules(rules_dir(), LAB_SITE)
    elapsed = time.perf_counter() - started
    assert elapsed < 1 + 0.2 * len(compiled), f"{len(compiled)} rules compiled in {elapsed:.1f} s"
