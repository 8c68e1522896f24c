"""Every capture of the corpus, Modbus or not, fuzzed or malformed: no crash, no hang, and every
problem counted with its location."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.capture import Frame, iter_capture_files
from collectors.pipeline import Collector
from collectors.run import JsonlSink, collect_files
from tests.conftest import CORPUS


def _captures() -> list[Path]:
    if not CORPUS.exists():
        return []
    return [p for p in iter_capture_files(CORPUS) if p.stat().st_size < 20_000_000]


@pytest.mark.skipif(not CORPUS.exists(), reason="external corpus not present: ../shared/corpus")
def test_every_corpus_capture_runs_through_without_a_crash(tmp_path: Path) -> None:
    captures = _captures()
    assert len(captures) > 50
    collector = Collector()
    with (tmp_path / "out.jsonl").open("wb") as out:
        start = time.perf_counter()
        collect_files(captures, collector, JsonlSink(out))
        elapsed = time.perf_counter() - start
    summary = collector.stats.summary()
    assert summary["frames"] > 100_000
    assert summary["pdus"]["modbus"] > 10_000
    assert elapsed < 120  # a hang would not finish
    for error in summary["errors"]:  # each counted problem says where it is
        assert "frame" in error["location"] or error["location"].startswith(str(CORPUS))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=200), max_size=20))
def test_arbitrary_payloads_on_port_502_never_crash(payloads: list[bytes]) -> None:
    header = bytes.fromhex("00000000000200000000000108004500000000010000400600000a0000010a000002")
    collector = Collector()
    seq = 1000
    for number, payload in enumerate(payloads, start=1):
        ip_total = 20 + 20 + len(payload)
        ip = bytearray(header[14:34])
        ip[2:4] = ip_total.to_bytes(2, "big")
        tcp = (40000).to_bytes(2, "big") + (502).to_bytes(2, "big") + seq.to_bytes(4, "big")
        tcp += (1).to_bytes(4, "big") + bytes([0x50, 0x18]) + b"\xff\xff\x00\x00\x00\x00"
        collector.frame(
            Frame(
                number, 1_700_000_000_000_000 + number, 1, header[:14] + bytes(ip) + tcp + payload
            )
        )
        seq += len(payload)
    collector.finish()
    for event in collector.take():
        assert event["event"]["dataset"] == "ics.modbus"
        assert "pdu_type" in event["modbus"]
