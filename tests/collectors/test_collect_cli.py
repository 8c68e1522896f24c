"""``soc collect`` end to end: JSON lines, the store, the summary, damaged captures."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from soc.cli import main
from tests.conftest import corpus_path

EXAMPLE = "icsnpp-modbus/testing/traces/modbus_example.pcap"


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("SOC_"):
            monkeypatch.delenv(key)
    return CliRunner()


def test_jsonl_to_stdout_one_event_per_message(runner: CliRunner) -> None:
    result = runner.invoke(main, ["collect", "--pcap", str(corpus_path(EXAMPLE)), "--jsonl", "-"])
    assert result.exit_code == 0, result.output
    events = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(events) == 48  # tshark decodes 48 Modbus PDUs in this capture
    assert {e["event"]["dataset"] for e in events} == {"ics.modbus"}
    assert len({e["event"]["id"] for e in events}) == 48
    assert "parse errors 0" in result.stderr


def test_into_the_store_and_again_without_duplicates(runner: CliRunner) -> None:
    capture = str(corpus_path(EXAMPLE))
    first = runner.invoke(main, ["collect", "--pcap", capture])
    assert first.exit_code == 0, first.output
    assert "stored 48 events (0 already present)" in first.stderr
    again = runner.invoke(main, ["collect", "--pcap", capture])
    assert "stored 0 events (48 already present)" in again.stderr
    counted = runner.invoke(main, ["events", "query", "--count-by", "modbus.pdu_type"])
    counts = {
        r["modbus.pdu_type"]: r["count"] for r in map(orjson.loads, counted.stdout.splitlines())
    }
    assert counts == {"request": 24, "response": 23, "exception": 1}


def test_a_truncated_capture_keeps_its_frames_and_names_where_it_ends(
    runner: CliRunner, tmp_path: Path
) -> None:
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(corpus_path(EXAMPLE).read_bytes()[:5000])
    result = runner.invoke(main, ["collect", "--pcap", str(cut), "--jsonl", "-", "--summary-json"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()  # the frames before the cut became events
    summary = orjson.loads(result.stderr)
    assert summary["parse_errors"] == 1
    (error,) = summary["errors"]
    assert error["location"].startswith(f"{cut}: frame ")
    assert "ends inside" in error["message"]


def test_not_a_capture_is_an_error_naming_the_file(runner: CliRunner, tmp_path: Path) -> None:
    bogus = tmp_path / "notes.pcap"
    bogus.write_text("hello")
    result = runner.invoke(
        main, ["collect", "--pcap", str(bogus), "--jsonl", "-", "--summary-json"]
    )
    summary = orjson.loads(result.stderr)
    assert summary["errors"][0]["location"] == str(bogus)
    assert "not a pcap" in summary["errors"][0]["message"]


def test_a_source_is_required(runner: CliRunner) -> None:
    result = runner.invoke(main, ["collect", "--jsonl", "-"])
    assert result.exit_code == 2
    assert "--pcap" in result.output
