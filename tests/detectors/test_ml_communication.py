"""The communication-pattern ML detector: features computed on hand-made events, a model that
raises nothing on its training windows and flags (and explains) a flood and a write burst, a
save/load round trip that refuses a model of other features, and the lab's reference capture
(recall on the rate and mix scenarios, no false alert on the held-out normal half)."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from detectors.attack import load_table
from detectors.ml import model_io
from detectors.ml.communication import RULE_ID, CommunicationModel, LabEvaluation, evaluate_lab
from detectors.ml.features import FEATURES, Window, windows
from soc.event import format_timestamp, parse_timestamp

T0 = parse_timestamp("2026-11-26T08:00:00+00:00")  # a multiple of 10 s: windows start here
REFERENCE = Path(__file__).resolve().parents[2] / "lab" / "reference"
HMI, PLC, ROGUE = "10.0.0.9", "10.0.0.1", "10.0.0.66"


def modbus(t_ms: float, fc: int, address: int = 0, quantity: int = 1, *, src: str = HMI,
           pdu: str = "request", unit: int = 1, n: int = 0) -> dict[str, Any]:  # fmt: skip
    """A Modbus event at ``t_ms`` after T0 (a request from ``src``, or its answer)."""
    request = pdu == "request"
    ts = T0 + round(t_ms * 1000)
    return {
        "@timestamp": format_timestamp(ts),
        "event": {"id": f"{src}-{pdu}-{ts}-{n}", "dataset": "ics.modbus", "action": "read",
                  "outcome": "unknown" if request else ("failure" if pdu == "exception"
                                                        else "success")},
        "source": {"ip": src if request else PLC, "port": 40000 if request else 502},
        "destination": {"ip": PLC if request else src, "port": 502 if request else 40000},
        "modbus": {"pdu_type": pdu, "function_code": fc, "unit_id": unit,
                   "request": {"address": address, "quantity": quantity}},
    }  # fmt: skip


def unanswered(t_ms: float, src: str = HMI) -> dict[str, Any]:
    doc = modbus(t_ms, 3, src=src, pdu="unanswered_request")
    doc["event"]["action"] = "unanswered_request"
    doc["source"], doc["destination"] = {"ip": src, "port": 40000}, {"ip": PLC, "port": 502}
    return doc


def polling(seconds: int, start_s: int = 0) -> list[dict[str, Any]]:
    """The HMI's normal polling: holding registers and input registers every 0.5 s, with a
    deterministic jitter of up to 40 ms."""
    out = []
    for i in range(start_s * 2, (start_s + seconds) * 2):
        t = i * 500 + (i * 37) % 41
        out.append(modbus(t, 3, 0, 10, n=i))
        out.append(modbus(t + 5, 4, 0, 5, n=i))
    return out


# -- features -------------------------------------------------------------------------------


def test_features_of_hand_made_windows() -> None:
    events = [
        modbus(0, 3, 0, 10),
        modbus(1000, 3, 0, 10),
        modbus(3000, 6, 5),  # a write
        modbus(6000, 4, 100, 2),
        modbus(6001, 4, 100, 2, pdu="exception"),  # an error answer to the HMI
        unanswered(7000),
        modbus(12000, 3, 0, 10),  # the next window
    ]
    first, second = windows(events, window_s=10.0)
    f = first.features
    assert first.pair == (HMI, PLC, "modbus")
    assert (first.start_us, first.end_us) == (T0, T0 + 10_000_000)
    assert len(first.event_ids) == 4
    assert f["requests"] == 4
    assert f["requests_per_s"] == pytest.approx(0.4)
    assert f["distinct_codes"] == 3  # functions 3, 6, 4
    assert f["write_share"] == pytest.approx(0.25)
    assert f["read_share"] == pytest.approx(0.75)
    assert f["interarrival_mean_s"] == pytest.approx(2.0)  # gaps 1, 2, 3 s
    assert f["interarrival_std_s"] == pytest.approx(math.sqrt(2 / 3))
    assert f["error_share"] == pytest.approx(0.25)
    assert f["unanswered"] == 1
    assert f["distinct_targets"] == 3  # 0-9, 5, 100-101
    # the next window's only gap reaches back to the previous request: 6 s
    assert second.features["requests"] == 1
    assert second.features["interarrival_mean_s"] == pytest.approx(6.0)
    assert second.features["interarrival_std_s"] == 0.0
    assert len(first.values) == len(FEATURES)


def test_windows_are_per_pair_and_aligned() -> None:
    events = [modbus(2500, 3), modbus(2600, 3, src=ROGUE), modbus(2700, 3)]
    ws = windows(events, window_s=1.0)
    assert [(w.client, w.start_us - T0) for w in ws] == [(ROGUE, 2_000_000), (HMI, 2_000_000)]
    assert ws[1].features["interarrival_mean_s"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="window_s"):
        windows(events, window_s=0)


# -- the model ------------------------------------------------------------------------------


@functools.cache
def trained() -> tuple[CommunicationModel, tuple[Window, ...]]:
    training = tuple(windows(polling(120), 10.0))
    return CommunicationModel().train(training, seed=0, created_us=T0), training


def test_training_windows_raise_no_alert() -> None:
    model, training = trained()
    scored = model.score(training)
    assert len(scored) == 12
    assert not [s for s in scored if s.anomalous]
    assert model.alerts(scored, load_table(), T0, "plant") == []
    # normal polling later on: still quiet
    later = windows(polling(60, start_s=300), 10.0)
    assert not [s for s in model.score(later) if s.anomalous]
    assert model.metadata()["features"] == list(FEATURES)
    assert model.metadata()["training"]["windows"] == 12


def test_a_flood_from_a_new_client_is_flagged_and_explained_by_its_rate() -> None:
    model, _ = trained()
    flood = [modbus(200_000 + i * 4, 3, 0, 10, src=ROGUE, n=i) for i in range(2000)]
    scored = model.score(windows(polling(20, start_s=190) + flood, 10.0))
    rogue = [s for s in scored if s.window.client == ROGUE]
    assert rogue
    assert all(s.anomalous for s in rogue)
    assert not [s for s in scored if s.window.client == HMI and s.anomalous]
    top = rogue[0].reasons[0]
    assert top.feature in ("requests", "requests_per_s", "interarrival_mean_s")
    assert "requests" in rogue[0].explanation
    assert "learnt" in rogue[0].explanation
    assert any(r.feature == "requests_per_s" and r.value == 200 for r in rogue[0].reasons)


def test_a_write_burst_is_flagged_and_explained_by_its_write_share() -> None:
    model, _ = trained()
    writes = [modbus(200_000 + i * 250, 6, i % 4, n=i) for i in range(40)]  # normal rate
    [scored] = model.score(windows(writes, 10.0))
    assert scored.anomalous
    assert scored.reasons[0].feature == "write_share"
    assert scored.reasons[0].text == "100% of requests writing (learnt 0% to 0%)"


def test_a_protocol_absent_from_training_is_scored_against_all_windows() -> None:
    model, _ = trained()
    doc = modbus(200_000, 3, src=ROGUE)
    doc["event"]["dataset"] = "ics.dlms"
    doc["event"]["action"] = "get_request"
    doc["dlms"] = {"class_id": 3, "attribute": 2, "obis": "1-0:1.8.0*255"}
    [scored] = model.score(windows([doc], 10.0))
    assert scored.window.protocol == "dlms"
    assert scored.threshold == model.thresholds["*"]
    assert scored.anomalous  # one request in 10 s, nothing like the HMI's polling


def test_alert_documents_group_consecutive_windows() -> None:
    model, _ = trained()
    flood = [modbus(200_000 + i * 10, 3, src=ROGUE, n=i) for i in range(2500)]  # 25 s
    scored = model.score(windows(flood, 10.0))
    [alert] = model.alerts(scored, load_table(), T0 + 10**9, "plant")
    assert alert["rule"]["id"] == RULE_ID
    assert alert["event"]["kind"] == "alert"
    assert alert["event"]["dataset"] == "ics.alert"
    assert alert["related"]["ip"] == sorted([ROGUE, PLC])
    assert alert["source"]["ip"] == ROGUE
    assert alert["destination"]["ip"] == PLC
    info = alert["ics"]["alert"]
    assert info["group"] == {"client": ROGUE, "server": PLC, "protocol": "modbus"}
    assert info["metric"] == 3
    assert info["event_count"] == 2500
    assert parse_timestamp(info["triggered"]) == T0 + 210_000_000  # the first window's end
    ml = alert["ics"]["ml"]
    assert ml["score"] > ml["threshold"]
    assert ml["windows"] == 3
    assert ml["reasons"]
    assert ml["explanation"] in alert["message"]
    again = model.alerts(scored, load_table(), T0 + 10**9, "plant")
    assert again[0]["event"]["id"] == alert["event"]["id"]  # deterministic


# -- saving and loading ---------------------------------------------------------------------


def test_save_and_load_give_identical_scores(tmp_path: Path) -> None:
    model, _training = trained()
    model_path, meta_path = model_io.save(model, tmp_path / "communication")
    assert model_path.name == "communication.skops"
    assert meta_path.name == "communication.json"
    meta = json.loads(meta_path.read_text())
    assert meta["schema"] == model_io.SCHEMA
    assert meta["features"] == list(FEATURES)
    assert meta["window_s"] == 10.0
    assert "modbus" in meta["thresholds"]
    assert meta["training"]["start"]
    assert meta["training"]["end"]
    assert meta["created"]
    loaded = model_io.load(tmp_path / "communication")
    flood = [modbus(200_000 + i * 4, 3, src=ROGUE, n=i) for i in range(500)]
    ws = windows(polling(30, start_s=190) + flood, 10.0)
    before, after = model.score(ws), loaded.score(ws)
    assert [(s.score, s.anomalous, s.explanation) for s in before] == [
        (s.score, s.anomalous, s.explanation) for s in after
    ]
    assert loaded.thresholds == model.thresholds


def test_loading_a_model_of_other_features_or_schema_fails(tmp_path: Path) -> None:
    model, _ = trained()
    _, meta_path = model_io.save(model, tmp_path / "m")
    meta = json.loads(meta_path.read_text())
    other = {**meta, "features": [*meta["features"][:-1], "bytes_per_s"]}
    meta_path.write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"missing \['distinct_targets'\].*bytes_per_s"):
        model_io.load(tmp_path / "m")
    meta_path.write_text(json.dumps({**meta, "schema": 99}))
    with pytest.raises(ValueError, match="schema: expected 1, got 99"):
        model_io.load(tmp_path / "m")


def test_loading_refuses_untrusted_types(tmp_path: Path) -> None:
    import skops.io as sio  # type: ignore[import-untyped]

    model, _ = trained()
    model_path, _ = model_io.save(model, tmp_path / "m")
    sio.dump({"modbus": functools.partial(print)}, model_path)
    with pytest.raises(ValueError, match="untrusted types"):
        model_io.load(tmp_path / "m")


# -- the lab's reference capture ------------------------------------------------------------

RATE_AND_MIX = (
    "modbus_request_flood",
    "modbus_unit_id_scan",
    "modbus_coil_brute_force",
    "opcua_bruteforce",
)


@functools.cache
def lab() -> LabEvaluation:
    return evaluate_lab(REFERENCE)


def test_lab_recall_on_rate_and_mix_scenarios() -> None:
    result = lab()
    by_name = {s.scenario: s for s in result.scenarios}
    assert set(RATE_AND_MIX) <= set(by_name)
    for name in RATE_AND_MIX:
        score = by_name[name]
        assert score.recall == 1.0, name
        assert score.true_alerts >= 1, name
        assert score.time_to_detect_s is not None, name


def test_lab_no_false_alert_on_the_held_out_normal_half() -> None:
    result = lab()
    assert result.held_out_windows > 0
    assert result.held_out_s > 0
    assert result.held_out_false_alerts == 0, result.held_out_explanations
    assert result.training_windows > 0
