"""Capture files as users hand them over: written by us (the lab), read by scapy and tshark."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from collectors.capture import Frame, PcapWriter, read_batches, read_capture
from soc.errors import CaptureError


def _frames(count: int) -> list[Frame]:
    frames = []
    for n in range(count):
        packet = Ether() / IP(src="127.0.10.100", dst="127.0.10.1") / TCP(sport=40000, dport=5020)
        frames.append(Frame(n + 1, 1_700_000_000_000_000 + n * 1_234_567, 1, bytes(packet)))
    return frames


def test_what_the_writer_writes_reads_back_frame_for_frame(tmp_path: Path) -> None:
    frames = _frames(600)  # more than one batch
    with PcapWriter(tmp_path / "out.pcap", linktype=1) as out:
        for frame in frames:
            out.write(frame)
    assert list(read_capture(tmp_path / "out.pcap")) == frames
    assert sum(len(b) for b in read_batches(tmp_path / "out.pcap", 256)) == 600


def test_scapy_and_tshark_read_the_written_capture(tmp_path: Path) -> None:
    frames = _frames(3)
    path = tmp_path / "out.pcap"
    with PcapWriter(path, linktype=1) as out:
        for frame in frames:
            out.write(frame)
    packets = rdpcap(str(path))
    assert [bytes(p) for p in packets] == [f.data for f in frames]
    assert [int(p.time * 1_000_000) for p in packets] == [f.ts_us for f in frames]
    if shutil.which("tshark"):
        shown = subprocess.run(
            ["tshark", "-r", str(path), "-T", "fields", "-e", "tcp.dstport"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert shown == ["5020"] * 3


def test_a_frame_of_another_link_type_is_refused(tmp_path: Path) -> None:
    with PcapWriter(tmp_path / "out.pcap", linktype=1) as out, pytest.raises(CaptureError):
        out.write(Frame(1, 0, 101, b"\x45"))


def test_a_file_cut_inside_a_frame_keeps_the_frames_before(tmp_path: Path) -> None:
    frames = _frames(300)
    path = tmp_path / "out.pcap"
    with PcapWriter(path, linktype=1) as out:
        for frame in frames:
            out.write(frame)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])
    got: list[Frame] = []
    with pytest.raises(CaptureError) as caught:
        got.extend(read_capture(path))
    assert got == frames[:-1]
    assert "frame 300" in str(caught.value)
