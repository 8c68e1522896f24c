"""Every capture of the corpus, Modbus or not, fuzzed or malformed: no crash, no hang, and every
problem counted with its location."""

from __future__ import annotations

import time
from pathlib import Path
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.capture import Frame, iter_capture_files
from collectors.modbus_events import ModbusSession
from collectors.packet import Packet, decode
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


# -- the hot loop's fast paths read a frame as the general decoder does ------------------------

_LINK_HEADERS = {
    0: lambda v: (2 if v == 4 else 30).to_bytes(4, "little"),  # BSD loopback, little-endian host
    108: lambda v: (2 if v == 4 else 24).to_bytes(4, "big"),  # OpenBSD loopback
    1: lambda v: bytes(6) + b"\x02" * 6 + (b"\x08\x00" if v == 4 else b"\x86\xdd"),
    101: lambda v: b"",  # raw IP
    228: lambda v: b"",  # raw IPv4 (an IPv6 packet read by its version nibble)
}


@st.composite
def _frames(draw: st.DrawFn) -> tuple[int, bytes]:
    """A TCP segment to port 502 in IPv4 (options or not, fragment bits or not) or IPv6 (an
    extension header or not), behind one of the link headers, possibly cut or padded."""
    linktype = draw(st.sampled_from(sorted(_LINK_HEADERS)))
    version = draw(st.sampled_from([4, 6]))
    payload = draw(st.binary(max_size=40))
    tcp_options = b"\x01\x01\x01\x01" * draw(st.integers(0, 2))
    flags = draw(st.sampled_from([0x18, 0x10, 0x02, 0x12, 0x11, 0x04]))
    tcp = (40000).to_bytes(2, "big") + (502).to_bytes(2, "big") + (1000).to_bytes(4, "big")
    tcp += (7).to_bytes(4, "big") + bytes([(5 + len(tcp_options) // 4) << 4, flags])
    tcp += b"\xff\xff\x00\x00\x00\x00" + tcp_options + payload
    if version == 4:
        options = b"\x01\x01\x01\x01" * draw(st.integers(0, 1))
        fragment = draw(st.sampled_from([0, 0, 0x2000, 0x0001, 0x4000]))
        total = 20 + len(options) + len(tcp) + draw(st.sampled_from([0, 0, -3, 5]))
        ip = bytes([0x40 | (5 + len(options) // 4), 0]) + max(total, 0).to_bytes(2, "big")
        ip += b"\x00\x01" + fragment.to_bytes(2, "big") + b"\x40\x06\x00\x00"
        ip += bytes([10, 0, 0, 1, 10, 0, 0, 2]) + options
    else:
        extension = draw(st.booleans())
        body = (bytes([6, 0]) + bytes(6) if extension else b"") + tcp
        length = len(body) + draw(st.sampled_from([0, 0, -3, 5]))
        ip = b"\x60\x00\x00\x00" + max(length, 0).to_bytes(2, "big")
        ip += bytes([0 if extension else 6, 64]) + b"\xfd" + bytes(14) + b"\x01"
        ip += b"\xfd" + bytes(14) + b"\x02"
        tcp = body
    frame = _LINK_HEADERS[linktype](version) + ip + tcp
    cut = draw(st.sampled_from([0, 0, 0, 1, 7, 30]))
    return linktype, frame[: len(frame) - cut] if cut else frame + bytes(draw(st.integers(0, 3)))


@settings(max_examples=400, deadline=None)
@given(_frames())
def test_fast_paths_see_what_the_general_decoder_sees(linktype_frame: tuple[int, bytes]) -> None:
    linktype, data = linktype_frame
    collector = Collector()
    delivered: list[bytes] = []

    def data_of(session: object, to_server: bool, payload: bytes, *rest: object) -> None:
        delivered.append(payload)

    with patch.object(ModbusSession, "data", data_of):
        collector.frame(Frame(1, 1_700_000_000_000_000, linktype, data))
    expected = decode(linktype, data)
    if not isinstance(expected, Packet):
        assert collector.stats.not_decoded == {expected.reason: 1}
        assert collector.stats.tcp == 0
        return
    assert collector.stats.tcp == 1
    assert not collector.stats.not_decoded
    (flow,) = collector.flows.flows.values()
    ends = {(expected.src_ip, expected.src_port), (expected.dst_ip, expected.dst_port)}
    assert {flow.client, flow.server} == ends
    macs = (expected.src_mac, expected.dst_mac)
    assert flow.data["macs"] in (macs, macs[::-1])
    assert b"".join(delivered) == expected.payload
