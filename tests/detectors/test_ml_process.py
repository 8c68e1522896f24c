"""The process-value detector: range, rate of change and stuck values learnt per tag, and the
generic labelled-table entry point (``soc detectors evaluate --csv``), on a table whose attacks
this test injects itself (so the expected detections come from the injection, not from us)."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from detectors.ml.process import ProcessModel, TagModel, evaluate_rows
from soc.cli import main

STEP_US = 1_000_000  # one row a second


def _level(i: int, rng: random.Random) -> float:
    """A tank level: a slow wave between about 1,200 and 3,400 mm, with sensor noise."""
    return 2300 + 1100 * math.sin(i / 300) + rng.gauss(0, 5)


def test_a_tag_learns_range_rate_and_longest_constant_run() -> None:
    series = [(0, 10.0), (1_000_000, 12.0), (2_000_000, 12.0), (3_000_000, 12.0), (4_000_000, 11.0)]
    model = TagModel.learn("t", series, margin=0.1)
    assert (model.low, model.high) == pytest.approx((9.8, 12.2))
    assert model.max_rate == pytest.approx(2.2)  # 2 per second, plus 10 %
    assert model.max_run_s == pytest.approx(2.0)
    assert model.varies


def test_each_kind_of_finding_names_the_tag_value_and_expectation() -> None:
    rng = random.Random(1)
    train = {"level": [(i * STEP_US, _level(i, rng)) for i in range(2000)]}
    model = ProcessModel().train(train)
    t = 3000 * STEP_US
    jump = {"level": [(t, 2000.0), (t + STEP_US, 2600.0)]}  # 600 mm in a second
    (finding,) = model.score(jump)
    assert (finding.kind, finding.value) == ("rate_of_change", 2600.0)
    assert "at most" in finding.expected
    high = model.score({"level": [(t, 9000.0)]})
    assert [f.kind for f in high] == ["out_of_range"]
    assert "9000" in high[0].message
    assert "learnt" in high[0].message
    frozen = [(t + i * STEP_US, 2500.0) for i in range(60)]
    kinds = {f.kind for f in model.score({"level": frozen})}
    assert kinds == {"stuck"}
    assert model.score({"level": [(t, 2500.0), (t + STEP_US, 2501.0)]}) == []
    assert model.score({"unknown": [(t, 1.0)]}) == []


def _table(path: Path) -> list[tuple[int, int]]:
    """A day of one row a second for two tags; three attacks injected: a setpoint written far
    out of range, a frozen level (a replay), a level jumping; their row spans returned."""
    rng = random.Random(7)
    attacks = [(20_000, 20_060), (40_000, 40_600), (60_000, 60_030)]
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["timestamp", "level_mm", "setpoint_mm", "attack"])
        for i in range(80_000):
            level, setpoint = _level(i, rng), 3000.0
            label = "normal"
            if attacks[0][0] <= i < attacks[0][1]:
                setpoint, label = 9999.0, "attack"
            elif attacks[1][0] <= i < attacks[1][1]:
                level, label = 2222.0, "attack"
            elif attacks[2][0] <= i < attacks[2][1]:
                level, label = _level(i, rng) + (400 if i % 2 else -400), "attack"
            writer.writerow([f"{i}", f"{level:.1f}", f"{setpoint:.1f}", label])
    return attacks


def test_labelled_rows_give_precision_recall_and_time_to_detect(tmp_path: Path) -> None:
    attacks = _table(tmp_path / "plant.csv")
    with (tmp_path / "plant.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    times = [int(r["timestamp"]) * STEP_US for r in rows]
    labels = [r["attack"] == "attack" for r in rows]
    columns = {c: [float(r[c]) for r in rows] for c in ("level_mm", "setpoint_mm")}
    train = [i < 15_000 for i in range(len(rows))]
    result, findings = evaluate_rows(times, labels, columns, train)
    assert result.segments == len(attacks)
    assert result.segments_detected == len(attacks)
    assert all(d is not None and d <= 60 for d in result.time_to_detect_s)
    assert result.precision >= 0.9
    assert result.recall >= 0.5  # a frozen level is only "stuck" after its longest normal run
    assert result.false_alerts_per_hour is not None
    assert result.false_alerts_per_hour <= 1.0
    assert {f.tag for f in findings} == {"level_mm", "setpoint_mm"}


def test_soc_detectors_evaluate_csv(tmp_path: Path) -> None:
    _table(tmp_path / "plant.csv")
    runner = CliRunner()
    args = ["detectors", "evaluate", "--csv", str(tmp_path / "plant.csv"), "--time-column",
            "timestamp", "--label-column", "attack"]  # fmt: skip
    result = runner.invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["segments_detected"] == figures["segments"] == 3
    assert figures["tags"] == 2
    assert figures["training_rows"] == 20_000  # the head: every row before the first attack
    result = runner.invoke(main, args)
    assert "attack segments detected: 3 of 3" in result.output
    result = runner.invoke(main, ["detectors", "evaluate", "--csv", str(tmp_path / "plant.csv"),
                                  "--time-column", "when", "--label-column", "attack"])  # fmt: skip
    assert result.exit_code == 2
    assert "no column 'when'" in result.output
