"""Live capture: BPF compilation, the ring block parser, and real captures on loopback."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from collectors import live
from collectors.capture import Frame
from collectors.live import LiveCapture, LiveStats, compile_bpf, live_frames
from soc.errors import CaptureError

REPO = Path(__file__).resolve().parents[2]


def _can_capture() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except PermissionError:
        return False
    return True


needs_capture = pytest.mark.skipif(
    not _can_capture(), reason="live capture needs Linux and root or CAP_NET_RAW"
)


def _udp_sink() -> tuple[socket.socket, int]:
    """A bound UDP socket on loopback (so datagrams to it are not answered by ICMP) and its port."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    return sink, sink.getsockname()[1]


# --- compile_bpf: no privileges needed ---------------------------------------------------------


def _needs_compiler() -> None:
    if live._libpcap() is None and live._tcpdump() is None:
        pytest.skip("neither libpcap nor tcpdump is installed")


def test_compile_bpf_gives_a_classic_bpf_program() -> None:
    _needs_compiler()
    program = compile_bpf("tcp port 502")
    assert len(program) > 2
    assert all(len(insn) == 4 and all(isinstance(x, int) for x in insn) for insn in program)
    assert program[0] == (0x28, 0, 0, 12)  # ldh [12]: the EtherType
    assert (0x06, 0, 0, 65535) in program  # accept: snaplen bytes
    assert program[-1] == (0x06, 0, 0, 0)  # reject


def test_compile_bpf_honours_snaplen_and_raw_ip() -> None:
    _needs_compiler()
    assert (0x06, 0, 0, 128) in compile_bpf("udp", snaplen=128)
    raw = compile_bpf("udp", linktype=101)
    assert raw[0] == (0x30, 0, 0, 0)  # ldb [0]: the IP version nibble, no link header


def test_compile_bpf_bad_expression_names_it() -> None:
    _needs_compiler()
    with pytest.raises(CaptureError, match="tcp port nonsense!") as info:
        compile_bpf("tcp port nonsense!")
    assert "bad capture filter" in str(info.value)


def test_compile_bpf_unknown_linktype() -> None:
    with pytest.raises(CaptureError, match="link type 147"):
        compile_bpf("udp", linktype=147)


def test_compile_bpf_falls_back_to_tcpdump(monkeypatch: pytest.MonkeyPatch) -> None:
    if live._tcpdump() is None:
        pytest.skip("tcpdump is not installed")
    expected = compile_bpf("tcp port 502") if live._libpcap() is not None else None
    monkeypatch.setattr(live, "_libpcap", lambda: None)
    program = compile_bpf("tcp port 502")
    assert program[-1] == (0x06, 0, 0, 0)
    if expected is not None:
        assert program == expected
    with pytest.raises(CaptureError, match="bad capture filter 'tcp port'"):
        compile_bpf("tcp port")


def test_compile_bpf_without_libpcap_or_tcpdump(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "_libpcap", lambda: None)
    monkeypatch.setattr(live, "_tcpdump", lambda: None)
    with pytest.raises(CaptureError, match=r"libpcap \(Debian package libpcap0\.8\) or tcpdump"):
        compile_bpf("udp")


# --- the block parser, on a block built by hand ------------------------------------------------


def _packet(data: bytes, *, sec: int, nsec: int, pkttype: int, vlan: int | None = None) -> bytes:
    """One tpacket3_hdr + sockaddr_ll + frame, padded to 16 bytes, tp_next_offset filled later."""
    mac = 80  # after the 68 header bytes, aligned as the kernel does
    status = 0x10 if vlan is not None else 0
    header = struct.pack(
        "=IIIIIIHHIIHH8x", 0, sec, nsec, len(data), len(data), status, mac, mac, 0, vlan or 0, 0, 0
    )
    sll = struct.pack("=HHiHBB8s", socket.AF_PACKET, 0x0008, 1, 1, pkttype, 6, b"")
    body = header + sll
    body += b"\0" * (mac - len(body)) + data
    return body + b"\0" * (-len(body) % 16)


def _block(packets: list[bytes]) -> tuple[bytes, int]:
    first = 48
    chained = []
    for i, packet in enumerate(packets):
        step = len(packet) if i < len(packets) - 1 else 0
        chained.append(struct.pack("=I", step) + packet[4:])
    return b"\0" * first + b"".join(chained), first


def test_parse_block_layout_outgoing_and_vlan() -> None:
    frame = bytes(range(12)) + b"\x08\x00" + b"payload"
    block, first = _block(
        [
            _packet(frame, sec=1_700_000_000, nsec=123_456_789, pkttype=4),  # outgoing copy
            _packet(frame, sec=1_700_000_000, nsec=123_999_999, pkttype=0),
            _packet(frame, sec=1_700_000_001, nsec=5_000, pkttype=0, vlan=0x2064),
        ]
    )
    on_lo = live._parse_block(block, first, 3, 10, 1, True)
    assert on_lo == [
        Frame(11, 1_700_000_000_123_999, 1, frame),
        Frame(12, 1_700_000_001_000_005, 1, frame[:12] + b"\x81\x00\x20\x64" + frame[12:]),
    ]
    assert all(type(f) is Frame for f in on_lo)
    elsewhere = live._parse_block(block, first, 3, 0, 1, False)
    assert [f.number for f in elsewhere] == [1, 2, 3]
    assert elsewhere[0] == Frame(1, 1_700_000_000_123_456, 1, frame)


# --- argument and environment errors ----------------------------------------------------------


def test_unknown_interface_is_named() -> None:
    with pytest.raises(CaptureError, match="no network interface named 'nosuch0'") as info:
        LiveCapture("nosuch0")
    assert info.value.location == "nosuch0"
    if sys.platform.startswith("linux"):
        assert "lo" in str(info.value)  # the available ones are listed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"ring_mb": 1}, "ring_mb 1"), ({"snaplen": 0}, "snaplen 0"), ({"timeout_ms": 0}, "timeout")],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only")
    with pytest.raises(CaptureError, match=message):
        LiveCapture("lo", **kwargs)


def test_without_cap_net_raw_the_message_says_what_to_do() -> None:
    setpriv = shutil.which("setpriv")
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to drop CAP_NET_RAW in a child")
    code = "from collectors.live import LiveCapture\nLiveCapture('lo')\n"
    drop = ["--inh-caps=-net_raw", "--ambient-caps=-net_raw", "--bounding-set=-net_raw"]
    done = subprocess.run(
        [setpriv, *drop, sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "CaptureError: capturing on lo needs root or the CAP_NET_RAW capability" in done.stderr
    assert "setcap cap_net_raw,cap_net_admin=eip" in done.stderr


# --- real captures on loopback ----------------------------------------------------------------


@needs_capture
@pytest.mark.parametrize("kernel_ignores_outgoing", [True, False])
def test_capture_udp_on_loopback_exactly_once(
    monkeypatch: pytest.MonkeyPatch, kernel_ignores_outgoing: bool
) -> None:
    # False: the kernel passes both copies and the parser drops the outgoing one by sll_pkttype
    monkeypatch.setattr(live, "_IGNORE_OUTGOING_IN_KERNEL", kernel_ignores_outgoing)
    count = 2000
    token = secrets.token_bytes(8)
    sink, port = _udp_sink()
    frames: list[Frame] = []
    with sink, LiveCapture("lo", f"udp port {port}", ring_mb=4, timeout_ms=20) as cap:
        assert cap.linktype == 1
        before_us = time.time_ns() // 1000
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(count):
                sender.sendto(token + i.to_bytes(4, "big"), ("127.0.0.1", port))
        for batch in cap.batches(duration_s=10):
            frames.extend(batch)
            if len(frames) >= count:
                break
        for batch in cap.batches(duration_s=0.3):  # anything more would be a duplicate
            frames.extend(batch)
        after_us = time.time_ns() // 1000
        stats = cap.stats()
    assert len(frames) == count
    assert [f.number for f in frames] == list(range(1, count + 1))
    payloads = [f.data[14 + 20 + 8 :] for f in frames]  # Ethernet + IPv4 + UDP headers
    assert sorted(payloads) == [token + i.to_bytes(4, "big") for i in range(count)]
    assert all(f.linktype == 1 and f.data[12:14] == b"\x08\x00" for f in frames)
    assert all(struct.unpack_from("!H", f.data, 36)[0] == port for f in frames)
    stamps = [f.ts_us for f in frames]
    assert stamps == sorted(stamps)
    assert stamps[0] >= before_us - 100_000  # the same clock as time.time(), give or take
    assert stamps[-1] <= after_us + 100_000
    assert stats.received == count
    assert stats.kernel_dropped == 0
    assert stats.kernel_packets == (count if kernel_ignores_outgoing else 2 * count)
    assert cap.stats() == stats  # after close: the final counters


@needs_capture
def test_snaplen_cuts_frames_and_filter_less_capture() -> None:
    sink, port = _udp_sink()
    with sink, LiveCapture("lo", snaplen=40, ring_mb=2, timeout_ms=20) as cap:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"z" * 500, ("127.0.0.1", port))
        mine: list[Frame] = []
        for batch in cap.batches(duration_s=5):
            mine.extend(f for f in batch if f.data[36:38] == port.to_bytes(2, "big"))
            if mine:
                break
    assert len(mine) == 1
    assert len(mine[0].data) == 40


@needs_capture
def test_quiet_capture_returns_control_and_stops() -> None:
    sink, port = _udp_sink()
    with sink, LiveCapture("lo", f"udp port {port}", ring_mb=2, timeout_ms=20) as cap:
        started = time.monotonic()
        batches = list(cap.batches(duration_s=0.2))
        assert time.monotonic() - started < 2
        assert batches
        assert all(batch == [] for batch in batches)  # empty lists on poll timeouts
        already = threading.Event()
        already.set()
        assert list(cap.batches(stop=already)) == []
        stop = threading.Event()
        timer = threading.Timer(0.1, stop.set)  # a stop from another thread ends the loop
        timer.start()
        started = time.monotonic()
        list(cap.batches(stop=stop, duration_s=5))
        timer.join()
        assert time.monotonic() - started < 2
    cap.close()  # idempotent
    assert list(cap.batches()) == []  # a closed capture yields nothing
    assert cap.stats() == LiveStats(0, 0, 0, 0)


@needs_capture
def test_live_frames_flattens() -> None:
    sink, port = _udp_sink()
    frames = live_frames("lo", f"udp port {port}", ring_mb=2, timeout_ms=20, duration_s=5)
    got: list[Frame] = []
    with sink, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:

        def send() -> None:
            for i in range(3):
                sender.sendto(b"%d" % i, ("127.0.0.1", port))

        timer = threading.Timer(0.3, send)  # after live_frames has opened the capture
        timer.start()
        for frame in frames:
            got.append(frame)
            if len(got) == 3:
                break
        frames.close()
        timer.join()
    assert [f.number for f in got] == [1, 2, 3]
    assert [f.data[42:] for f in got] == [b"0", b"1", b"2"]
