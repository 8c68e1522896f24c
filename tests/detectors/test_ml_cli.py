"""``soc detectors``: train on a site's stored events, score another period into stored alerts,
and the lab evaluation table."""

from __future__ import annotations

import json
from pathlib import Path

import apsw
import pytest
from click.testing import CliRunner

from detectors.runner import collect_captures
from lab.base import LabSite
from soc.cli import main
from soc.event import format_timestamp
from soc.store.sqlite import SQLiteStore

REFERENCE = Path(__file__).resolve().parents[2] / "lab" / "reference"


@pytest.fixture
def lab_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(__import__("os").environ):
        if key.startswith("SOC_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SOC_DATA_DIR", str(tmp_path))
    with SQLiteStore(tmp_path / "soc.db") as store:
        store.write_events(collect_captures([REFERENCE / "capture.pcap.gz"]))
    return tmp_path


def test_train_then_score_stores_explained_alerts(lab_store: Path) -> None:
    labels = json.loads((REFERENCE / "labels.json").read_text())
    normal_end = format_timestamp(labels["normal"]["end_us"])
    model = lab_store / "water.skops"
    runner = CliRunner()
    result = runner.invoke(main, ["detectors", "train", "--site", "water_plant", "--until",
                                  normal_end, "--window-s", "1", "--out", str(model)])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["detectors", "score", "--site", "water_plant", "--model",
                                  str(model), "--since", normal_end])  # fmt: skip
    assert result.exit_code == 0, result.output
    conn = apsw.Connection(str(lab_store / "soc.db"))
    docs = [json.loads(d) for (d,) in conn.execute(
        "SELECT doc FROM alerts WHERE rule_id = 'ml.communication'")]  # fmt: skip
    assert docs
    assert {d["source"]["ip"] for d in docs} <= {LabSite().attacker, LabSite().hmi}
    assert LabSite().attacker in {d["source"]["ip"] for d in docs}
    assert all(d["ics"]["ml"] for d in docs)  # each says why
    (lab_store / "water.json").write_text(
        (lab_store / "water.json").read_text().replace("requests_per_s", "requests_per_minute")
    )
    result = runner.invoke(main, ["detectors", "score", "--site", "water_plant", "--model",
                                  str(model)])  # fmt: skip
    assert result.exit_code == 2
    assert "--model" in result.output


def test_evaluate_prints_the_table_per_scenario() -> None:
    result = CliRunner().invoke(main, ["detectors", "evaluate", "--scenario",
                                       "modbus_request_flood", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output[result.output.index("{") :])
    [flood] = figures["scenarios"]
    assert (flood["scenario"], flood["recall"]) == ("modbus_request_flood", 1.0)
    assert figures["held_out"]["false_alerts"] == 0
    result = CliRunner().invoke(main, ["detectors", "evaluate", "--scenario", "nope"])
    assert result.exit_code == 2
