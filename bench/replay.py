"""Capture building shared by the collection benchmarks: corpus captures held in memory and
written again and again, each copy on fresh client ports and later timestamps, so one file holds
as many messages as a measurement needs and no two copies share a TCP conversation."""

from __future__ import annotations

import os
import struct
import sys
import time
from collections import Counter
from pathlib import Path

from collectors.capture import read_capture
from collectors.pipeline import Collector
from collectors.run import JsonlSink, collect_files
from soc.config import CollectSettings

GAP_US = 400_000_000  # beyond the 300 s idle timeout
PORTS = (20_000, 65_536)  # client ports handed out, cycling
START_US = 1_700_000_000_000_000  # the first copy's first frame (2023-11-14)

# where the IP header starts, by link type (the ones the corpus and tests use)
IP_OFFSET = {0: 4, 1: 14, 101: 0, 108: 4, 113: 16, 228: 0, 229: 0, 276: 20}

# one source frame: time relative to the capture's first, bytes, TCP header offset (-1: none)
SourceFrame = tuple[int, bytes, int]


class Source:
    """One capture, held in memory (the corpus captures are small), with its message count:
    ``summary["pdus"][protocol]`` of our collector on it alone."""

    def __init__(self, path: Path, protocol: str, settings: CollectSettings | None = None) -> None:
        self.path = path
        frames = list(read_capture(path))
        self.linktype = frames[0].linktype if frames else -1
        first = frames[0].ts_us if frames else 0
        self.duration = (frames[-1].ts_us - first) if frames else 0
        self.frames: list[SourceFrame] = [
            (f.ts_us - first, f.data, tcp_offset(f.linktype, f.data)) for f in frames
        ]
        collector = Collector(settings)
        with open(os.devnull, "wb") as null:
            collect_files([path], collector, JsonlSink(null))
        self.messages: int = collector.stats.pdus.get(protocol, 0)


def tcp_offset(linktype: int, data: bytes) -> int:
    """Where the TCP header starts in a frame, or -1 (not TCP over IPv4/IPv6, or truncated)."""
    ip = IP_OFFSET.get(linktype)
    if ip is None or len(data) < ip + 40:
        return -1
    if linktype == 1 and data[12:14] == b"\x81\x00":  # one VLAN tag
        ip += 4
    version = data[ip] >> 4
    if version == 4 and data[ip + 9] == 6:
        tcp = ip + (data[ip] & 0x0F) * 4
    elif version == 6 and data[ip + 6] == 6:
        tcp = ip + 40
    else:
        return -1
    return tcp if len(data) >= tcp + 20 else -1


def _adjust(checksum: int, old: int, new: int) -> int:
    """The internet checksum after one 16-bit word changed from ``old`` to ``new`` (RFC 1624)."""
    total = (~checksum & 0xFFFF) + (~old & 0xFFFF) + new
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _next_port(port: int, keep: frozenset[int]) -> int:
    port = port + 1 if port + 1 < PORTS[1] else PORTS[0]
    return port if port not in keep else _next_port(port, keep)


def build_pcap(
    out: Path, sources: list[Source], messages: int, keep: frozenset[int]
) -> tuple[int, int, int]:
    """Write copies of the sources, in turn, until ``messages`` messages; every TCP port not in
    ``keep`` (the protocol's server ports) mapped to a fresh one per copy, checksums updated,
    timestamps shifted past the idle timeout; (copies, frames, messages written, as counted on
    each source alone)."""
    linktype = sources[0].linktype
    record = struct.Struct("<IIII")
    ports = struct.Struct("!HH")
    check = struct.Struct("!H")
    next_port = PORTS[0]
    clock = START_US
    copies = frames = written = 0
    with out.open("wb") as stream:
        stream.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262_144, linktype))
        while written < messages:
            for source in sources:
                mapping = {port: port for port in keep}  # this copy's client ports
                for rel, data, tcp in source.frames:
                    if tcp >= 0:
                        frame = bytearray(data)
                        old = ports.unpack_from(frame, tcp)
                        (checksum,) = check.unpack_from(frame, tcp + 16)
                        for port in old:
                            if port not in mapping:
                                mapping[port] = next_port
                                next_port = _next_port(next_port, keep)
                            checksum = _adjust(checksum, port, mapping[port])
                        ports.pack_into(frame, tcp, mapping[old[0]], mapping[old[1]])
                        check.pack_into(frame, tcp + 16, checksum)
                        data = bytes(frame)
                    ts = clock + rel
                    stream.write(record.pack(ts // 1_000_000, ts % 1_000_000, len(data), len(data)))
                    stream.write(data)
                    frames += 1
                clock += source.duration + GAP_US
                copies += 1
                written += source.messages
                if written >= messages:
                    break
    return copies, frames, written


def load_sources(
    paths: list[Path], protocol: str, settings: CollectSettings | None = None
) -> list[Source]:
    """The captures with messages of ``protocol``, of the most common link type among them (a
    pcap has one)."""
    sources = [s for s in (Source(p, protocol, settings) for p in paths) if s.messages]
    if not sources:
        return []
    linktypes = Counter(s.linktype for s in sources)
    linktype = linktypes.most_common(1)[0][0]
    for skipped in (s for s in sources if s.linktype != linktype):
        print(f"skipped {skipped.path.name}: link type {skipped.linktype}, not {linktype}")
    return [s for s in sources if s.linktype == linktype]


def scapy_rate(path: Path, ports: frozenset[int], frames_max: int = 100_000) -> tuple[int, float]:
    """The naive path a script would take: scapy's ``PcapReader`` dissecting every packet and
    picking the TCP/UDP payloads on ``ports``; (frames read, seconds), first ``frames_max``."""
    from scapy.layers.inet import TCP, UDP
    from scapy.packet import Raw
    from scapy.utils import PcapReader

    frames = payloads = 0
    begin = time.perf_counter()
    with PcapReader(str(path)) as reader:
        for pkt in reader:
            frames += 1
            for layer in (TCP, UDP):
                if layer in pkt and ports & {pkt[layer].sport, pkt[layer].dport} and Raw in pkt:
                    payloads += 1
            if frames >= frames_max:
                break
    return frames, time.perf_counter() - begin


def soc_command() -> str:
    """The ``soc`` of this checkout's virtual environment (or of the running interpreter's)."""
    root = Path(__file__).resolve().parents[1]
    soc = root / ".venv" / "bin" / "soc"
    return str(soc) if soc.exists() else str(Path(sys.executable).with_name("soc"))
