"""TCP reassembly and the collector, on frames crafted with scapy: segmented ADUs, several ADUs
in one segment, retransmissions, reordering, gaps, mid-stream starts, protocol detection, limits.
"""

from __future__ import annotations

from typing import Any

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from collectors.capture import Frame
from collectors.pipeline import Collector
from soc.config import CollectSettings

CLIENT, SERVER = "10.0.0.1", "10.0.0.2"
T0 = 1_700_000_000_000_000


def request(tid: int, address: int = 0, count: int = 2, unit: int = 1) -> bytes:
    """A read holding registers request ADU."""
    return (
        tid.to_bytes(2, "big")
        + bytes([0, 0, 0, 6, unit, 3])
        + address.to_bytes(2, "big")
        + count.to_bytes(2, "big")
    )


def response(tid: int, values: tuple[int, ...] = (7, 8), unit: int = 1) -> bytes:
    body = b"".join(v.to_bytes(2, "big") for v in values)
    return tid.to_bytes(2, "big") + bytes([0, 0, 0, 3 + len(body), unit, 3, len(body)]) + body


class Wire:
    """A client/server conversation as captured frames."""

    def __init__(self, sport: int = 40000, dport: int = 502) -> None:
        self.sport, self.dport = sport, dport
        self.seq = {True: 1000, False: 5000}
        self.frames: list[Frame] = []

    def send(self, to_server: bool, payload: bytes, *, seq: int | None = None, flags: str = "PA",
             advance: bool = True, ts: int | None = None) -> Frame:  # fmt: skip
        src, dst = (CLIENT, SERVER) if to_server else (SERVER, CLIENT)
        sport, dport = (self.sport, self.dport) if to_server else (self.dport, self.sport)
        start = self.seq[to_server] if seq is None else seq
        packet = (
            Ether()
            / IP(src=src, dst=dst)
            / TCP(sport=sport, dport=dport, seq=start, ack=self.seq[not to_server], flags=flags)
            / payload
        )
        if advance:
            self.seq[to_server] = max(self.seq[to_server], start + len(payload))
        number = len(self.frames) + 1
        frame = Frame(number, ts if ts is not None else T0 + number * 1000, 1, bytes(packet))
        self.frames.append(frame)
        return frame


def run(
    frames: list[Frame], settings: CollectSettings | None = None
) -> tuple[list[dict[str, Any]], Collector]:
    collector = Collector(settings)
    for frame in frames:
        collector.frame(frame)
    collector.finish()
    return [e["modbus"] for e in collector.take()], collector


def messages(records: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return [(r["pdu_type"], r.get("transaction_id", -1), r.get("frame", -1)) for r in records]


def test_an_adu_split_over_segments_gives_one_event_at_its_last_frame() -> None:
    wire = Wire()
    adu = request(1)
    wire.send(True, adu[:5])
    wire.send(True, adu[5:])
    records, _ = run(wire.frames)
    assert messages(records)[0] == ("request", 1, 2)


def test_several_adus_in_one_segment_give_one_event_each() -> None:
    wire = Wire()
    wire.send(True, request(1) + request(2) + request(3))
    wire.send(False, response(1) + response(2) + response(3))
    records, collector = run(wire.frames)
    assert messages(records) == [("request", 1, 1), ("request", 2, 1), ("request", 3, 1),
                                 ("response", 1, 2), ("response", 2, 2), ("response", 3, 2)]  # fmt: skip
    assert [r.get("response_time_us") for r in records[3:]] == [1000, 1000, 1000]
    assert collector.stats.modbus.unanswered == 0


def test_a_retransmission_does_not_duplicate_events() -> None:
    wire = Wire()
    wire.send(True, request(1))
    wire.send(True, request(1), seq=1000)
    records, collector = run(wire.frames)
    assert messages(records) == [("request", 1, 1), ("unanswered_request", -1, -1)]
    assert collector.stats.stream.retransmitted == 1


def test_out_of_order_segments_are_put_back_in_order() -> None:
    wire = Wire()
    wire.send(True, b"", seq=999, flags="S", advance=False)  # the handshake fixes the start
    first, second = request(1), request(2)
    wire.send(True, second, seq=1000 + len(first), advance=False)
    wire.send(True, first, seq=1000)
    records, collector = run(wire.frames)
    assert [m[:2] for m in messages(records)[:2]] == [("request", 1), ("request", 2)]
    assert collector.stats.stream.out_of_order == 1


def test_a_gap_is_counted_and_the_stream_resumes() -> None:
    wire = Wire()
    wire.send(True, request(1))
    wire.send(True, request(2), advance=True, seq=1012)
    lost = wire.frames.pop()  # never captured
    wire.seq[True] = 1024
    wire.send(True, request(3))  # waits behind the hole
    wire.send(False, response(3))  # the server acknowledges past the hole
    wire.frames = [f._replace(number=i + 1) for i, f in enumerate(wire.frames)]
    records, collector = run(wire.frames)
    assert lost not in wire.frames
    assert [m[:2] for m in messages(records) if m[0] != "unanswered_request"] == [
        ("request", 1),
        ("request", 3),
        ("response", 3),
    ]
    assert collector.stats.stream.gaps == 1
    assert collector.stats.stream.gap_bytes == 12


def test_a_capture_starting_mid_stream_is_decoded() -> None:
    wire = Wire()
    wire.send(True, request(9)[-5:] + request(10))  # the tail of an ADU whose start was missed
    wire.send(False, response(10))
    records, collector = run(wire.frames)
    assert [m[:2] for m in messages(records)] == [("request", 10), ("response", 10)]
    assert collector.stats.modbus.resyncs == 1
    assert collector.stats.parse_errors == 0


def test_bytes_that_are_not_modbus_on_port_502_are_a_violation_not_garbage() -> None:
    wire = Wire()
    wire.send(True, b"GET / HTTP/1.1\r\nHost: plc\r\n\r\n")
    wire.send(True, b"more text that is not modbus at all")
    records, collector = run(wire.frames)
    assert [r["pdu_type"] for r in records] == ["protocol_violation"]
    assert records[0]["anomalies"] == ["not_modbus"]
    assert collector.stats.parse_errors == 2
    assert collector.stats.modbus.errors[0][0] == "capture: frame 1"


def test_modbus_on_another_port_is_found_by_content() -> None:
    wire = Wire(sport=40001, dport=15020)
    wire.send(True, request(1))
    wire.send(False, response(1))
    records, _ = run(wire.frames)
    assert [m[:2] for m in messages(records)] == [("request", 1), ("response", 1)]
    assert records[1]["request"] == {"address": 0, "quantity": 2}


def test_other_protocols_on_other_ports_are_ignored() -> None:
    wire = Wire(sport=40001, dport=8080)
    wire.send(True, b"GET / HTTP/1.1\r\n\r\n")
    records, collector = run(wire.frames)
    assert records == []
    assert collector.stats.parse_errors == 0


def test_unanswered_requests_and_orphan_responses_are_reported() -> None:
    wire = Wire()
    wire.send(True, request(1))
    wire.send(False, response(2))  # answers nothing in flight
    wire.send(True, request(3), ts=T0 + 10_000_000)  # 10 s later: request 1 has timed out
    records, collector = run(wire.frames, CollectSettings(response_timeout_ms=2000))
    kinds = messages(records)
    assert ("response", 2, 2) in kinds
    assert records[1]["orphan"] is True
    unanswered = [r for r in records if r["pdu_type"] == "unanswered_request"]
    assert [u["request_frame"] for u in unanswered] == [1, 3]  # 1 timed out, 3 at the end
    assert collector.stats.modbus.orphans == 1


def test_a_flood_of_half_open_flows_stays_bounded() -> None:
    frames = []
    for i in range(2000):
        packet = (
            Ether()
            / IP(src=f"10.9.{i // 250}.{i % 250}", dst=SERVER)
            / TCP(sport=1024 + i, dport=502, flags="S", seq=i)
        )
        frames.append(Frame(i + 1, T0 + i, 1, bytes(packet)))
    collector = Collector(CollectSettings(max_flows=100))
    for frame in frames:
        collector.frame(frame)
    assert len(collector.flows.flows) <= 100
    assert collector.stats.stream.evicted_flows >= 1900
