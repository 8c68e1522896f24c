from __future__ import annotations

import re
from pathlib import Path

import click
import orjson
import pytest
from click.testing import CliRunner

from soc.cli import main
from tests.conftest import modbus_event

README = Path(__file__).resolve().parents[2] / "README.md"


def _commands(group: click.Group, prefix: str = "soc") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        found.append((path, command))
        if isinstance(command, click.Group):
            found += _commands(command, path)
    return found


@pytest.mark.parametrize(("path", "command"), _commands(main), ids=lambda v: str(v))
def test_every_command_has_help_and_is_in_the_readme(path: str, command: click.Command) -> None:
    assert (command.help or "").strip(), f"{path} has no help text"
    assert re.search(rf"`{re.escape(path)}\b", README.read_text()), f"{path} is not in README.md"


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    for key in list(__import__("os").environ):
        if key.startswith("SOC_"):
            monkeypatch.delenv(key)
    return CliRunner()


def test_ingest_then_query_round_trip(runner: CliRunner, tmp_path: Path) -> None:
    lines = b"".join(orjson.dumps(modbus_event(i, fc=3 + i % 2)) + b"\n" for i in range(25))
    (tmp_path / "in.jsonl").write_bytes(lines)
    result = runner.invoke(main, ["events", "ingest", "in.jsonl"])
    assert result.exit_code == 0, result.output
    assert "25 events stored" in result.output
    again = runner.invoke(main, ["events", "ingest", "in.jsonl"])
    assert "0 events stored, 25 already present" in again.output
    assert (tmp_path / "soc-data" / "soc.db").exists()  # the default data directory

    out = runner.invoke(main, ["events", "query", "--where", "modbus.function_code=4", "--all"])
    docs = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert len(docs) == 12
    assert all(d["modbus"]["function_code"] == 4 for d in docs)

    page = runner.invoke(main, ["events", "query", "--limit", "10"])
    assert len(page.stdout.splitlines()) == 10
    cursor = re.search(r"next-cursor: (\S+)", page.stderr)
    assert cursor
    rest = runner.invoke(main, ["events", "query", "--limit", "100", "--cursor", cursor[1]])
    assert len(rest.stdout.splitlines()) == 15

    counts = runner.invoke(main, ["events", "query", "--count-by", "modbus.function_code"])
    assert [orjson.loads(x) for x in counts.stdout.splitlines()] == [
        {"modbus.function_code": 3, "count": 13},
        {"modbus.function_code": 4, "count": 12},
    ]
    window = runner.invoke(
        main,
        [
            "events",
            "query",
            "--since",
            "2024-05-01T10:00:00.005",
            "--until",
            "2024-05-01T10:00:00.007Z",
        ],
    )
    assert len(window.stdout.splitlines()) == 2


def test_bad_line_is_located_and_fails(runner: CliRunner, tmp_path: Path) -> None:
    good = orjson.dumps(modbus_event(1)).decode()
    (tmp_path / "in.jsonl").write_text(f"{good}\nnot json\n")
    result = runner.invoke(main, ["events", "ingest", "in.jsonl"])
    assert result.exit_code == 2
    assert "in.jsonl:2" in result.stderr
    collected = runner.invoke(main, ["events", "ingest", "--collect-errors", "in.jsonl"])
    assert collected.exit_code == 1
    assert "1 events stored" in collected.stdout  # nothing good is lost
    assert "1 bad lines" in collected.stdout


def test_bad_configuration_exits_2_naming_the_key(runner: CliRunner) -> None:
    result = runner.invoke(main, ["store", "info"], env={"SOC_STORE_BATCH_SIZE": "lots"})
    assert result.exit_code == 2
    assert "store.batch_size" in result.stderr
    assert "Traceback" not in result.output


def test_bad_option_value_exits_2(runner: CliRunner) -> None:
    result = runner.invoke(main, ["events", "query", "--where", "novalue"])
    assert result.exit_code == 2
    assert "--where" in result.stderr


def test_store_commands(runner: CliRunner) -> None:
    init = runner.invoke(main, ["store", "init"])
    assert init.exit_code == 0
    assert "0001_initial" in init.stdout
    info = runner.invoke(main, ["store", "info", "--json"])
    assert orjson.loads(info.stdout)["counts"]["events"] == 0
    assert runner.invoke(main, ["store", "check"]).stdout.strip() == "ok"
    assert runner.invoke(main, ["store", "optimize"]).exit_code == 0
    shown = runner.invoke(main, ["config", "show", "--json"])
    assert orjson.loads(shown.stdout)["store.backend"] == {"value": "sqlite", "source": "default"}


def test_corrupt_store_exits_2_naming_the_file(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "soc-data").mkdir()
    (tmp_path / "soc-data" / "soc.db").write_bytes(b"garbage" * 1000)
    result = runner.invoke(main, ["store", "info"])
    assert result.exit_code == 2
    assert "soc.db" in result.stderr
    assert "not a SQLite database" in result.stderr
