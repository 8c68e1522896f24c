"""Capture files: pcap and pcapng read as a stream of raw frames, never whole into memory.

A frame is ``(number, ts_us, linktype, data)``: its 1-based position in the capture, capture time
in microseconds since the epoch, the link-layer type (LINKTYPE_* numbers of tcpdump.org) and the
bytes captured. Nothing here dissects: :mod:`collectors.packet` does, on the same frames the live
source (:mod:`collectors.live`) yields.

pcap (libpcap format)::

    global header  magic(4) version(2+2) thiszone(4) sigfigs(4) snaplen(4) linktype(4)
    record         ts_sec(4) ts_frac(4) incl_len(4) orig_len(4) data(incl_len)

    magic a1b2c3d4 = microseconds, a1b23c4d = nanoseconds, in either byte order.

pcapng (IETF draft-ietf-opsawg-pcapng): a sequence of blocks ``type(4) length(4) body
length(4)``. Section Header (0x0A0D0D0A) sets the byte order, Interface Description (1) the
link type and timestamp resolution (option if_tsresol), Enhanced Packet (6), Simple Packet (3)
and the obsolete Packet block (2) carry frames; other blocks are skipped.

Files ending in ``.gz`` are decompressed on the fly, and every capture inside a ``.zip`` is read.
A file that ends inside a record yields the frames before it and raises ``CaptureError`` naming
the file, the frame and the byte offset, so the caller counts it and goes on.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NamedTuple

from soc.errors import CaptureError

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER = 0x1A2B3C4D
CHUNK = 1 << 20  # bytes read at a time
MAX_RECORD = 262_144 * 4  # larger than any snaplen in use: a bigger length means corruption
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".dmp", ".pcap.gz", ".pcapng.gz", ".zip")


class Frame(NamedTuple):
    """One captured frame: position (1-based), time (µs since the epoch), link type, bytes."""

    number: int
    ts_us: int
    linktype: int
    data: bytes


RawFrame = tuple[int, int, int, bytes]
"""A frame as a plain tuple, in :class:`Frame`'s order (what :func:`read_batches` yields)."""


def read_capture(path: Path) -> Iterator[Frame]:
    """Frames of one capture file (pcap or pcapng, plain, ``.gz`` or inside a ``.zip``)."""
    for batch in read_batches(path):
        for raw in batch:
            yield Frame(*raw)


def read_batches(path: Path, size: int = 256) -> Iterator[list[RawFrame]]:
    """:func:`read_capture`'s frames in lists of up to ``size`` plain tuples: the collector's
    path (no object per frame beyond its tuple). When the file is damaged, the frames read
    before the damage come as a last list, then ``CaptureError`` is raised."""
    name = str(path)
    try:
        if path.suffix == ".zip":
            yield from _read_zip(path, size)
            return
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as stream:
            yield from read_stream_batches(stream, name, size)  # type: ignore[arg-type]
    except OSError as exc:  # includes a bad gzip stream
        raise CaptureError(f"cannot read the capture: {exc}", location=name) from exc


def _read_zip(path: Path, size: int) -> Iterator[list[RawFrame]]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise CaptureError(f"not a zip archive: {exc}", location=str(path)) from exc
    with archive:
        members = [m for m in archive.namelist() if m.endswith(CAPTURE_SUFFIXES[:5])]
        if not members:
            raise CaptureError("the zip archive holds no capture", location=str(path))
        for member in sorted(members):
            with archive.open(member) as stream:
                yield from read_stream_batches(stream, f"{path}!{member}", size)


def iter_capture_files(path: Path) -> list[Path]:
    """The capture files a path names: the file itself, or a directory's captures, sorted."""
    if path.is_dir():
        found = sorted(
            p for p in path.rglob("*") if p.is_file() and p.name.endswith(CAPTURE_SUFFIXES)
        )
        if not found:
            raise CaptureError("the directory holds no capture file", location=str(path))
        return found
    if not path.exists():
        raise CaptureError("no such file", location=str(path))
    return [path]


def read_stream(stream: IO[bytes], name: str) -> Iterator[Frame]:
    """Frames of a pcap or pcapng byte stream; ``name`` is used in error locations."""
    for batch in read_stream_batches(stream, name):
        for raw in batch:
            yield Frame(*raw)


def read_stream_batches(stream: IO[bytes], name: str, size: int = 256) -> Iterator[list[RawFrame]]:
    """:func:`read_stream`'s frames in lists (see :func:`read_batches`)."""
    head = stream.read(4)
    if len(head) < 4:
        raise CaptureError("empty or truncated file, not a capture", location=name)
    if head in (b"\x0a\x0d\x0d\x0a",):
        yield from _batched(_pcapng(stream, head, name), size)
        return
    for order in ("<", ">"):
        (magic,) = struct.unpack(order + "I", head)
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            yield from _pcap(stream, order, magic == PCAP_MAGIC_NS, name, size)
            return
    raise CaptureError(f"not a pcap or pcapng file (magic {head.hex()})", location=name)


def _batched(frames: Iterator[Frame], size: int) -> Iterator[list[RawFrame]]:
    batch: list[RawFrame] = []
    try:
        for frame in frames:
            batch.append(frame)
            if len(batch) == size:
                yield batch
                batch = []
    except CaptureError:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def _pcap(
    stream: IO[bytes], order: str, nanos: bool, name: str, size: int
) -> Iterator[list[RawFrame]]:
    header = stream.read(20)
    if len(header) < 20:
        raise CaptureError("truncated pcap global header", location=name)
    linktype = struct.unpack(order + "HHiIII", header)[5] & 0x0FFFFFFF  # top bits: FCS length
    unpack = struct.Struct(order + "IIII").unpack_from
    read = stream.read
    divisor = 1000 if nanos else 1
    buffer, pos, base, number, eof = b"", 0, 24, 0, False  # base: the file offset of buffer[0]
    while True:  # records are cut from chunks: one read per chunk, not two per frame
        end = len(buffer)
        batch: list[RawFrame] = []
        append = batch.append
        error = None
        while pos + 16 <= end:
            seconds, fraction, incl_len, _ = unpack(buffer, pos)
            if incl_len > MAX_RECORD:
                error = CaptureError(
                    f"record length {incl_len} is not plausible (corrupt file)",
                    location=f"{name}: frame {number + 1}, offset {base + pos}",
                )
                break
            stop = pos + 16 + incl_len
            if stop > end:
                break
            number += 1
            ts_us = seconds * 1_000_000 + fraction // divisor
            append((number, ts_us, linktype, buffer[pos + 16 : stop]))
            pos = stop
            if len(batch) == size:
                yield batch
                batch = []
                append = batch.append
        if error is None and eof and pos < end:
            where = f"{name}: frame {number + 1}, offset {base + pos}"
            if end - pos < 16:
                error = CaptureError("the file ends inside a record header", location=where)
            else:
                error = CaptureError(
                    f"the file ends inside a frame ({end - pos - 16} of "
                    f"{unpack(buffer, pos)[2]} bytes)",
                    location=where,
                )
        if batch:
            yield batch
        if error is not None:
            raise error
        if eof:
            return
        chunk = read(CHUNK)
        eof = not chunk
        base += pos
        buffer, pos = buffer[pos:] + chunk, 0


def _pcapng(stream: IO[bytes], first: bytes, name: str) -> Iterator[Frame]:
    order = "<"
    interfaces: list[tuple[int, int]] = []  # (linktype, ticks per second) per interface id
    offset = 0
    number = 0
    pending: bytes | None = first
    while True:
        head = (pending or b"") + stream.read(8 - len(pending or b""))
        pending = None
        if not head:
            return
        where = f"{name}: block at offset {offset}"
        if len(head) < 8:
            raise CaptureError("the file ends inside a block header", location=where)
        if head[:4] == b"\x0a\x0d\x0d\x0a":  # a section header: its byte-order magic decides
            magic = stream.read(4)
            if len(magic) < 4:
                raise CaptureError("the file ends inside a section header", location=where)
            order = "<" if struct.unpack("<I", magic)[0] == PCAPNG_BYTE_ORDER else ">"
            if struct.unpack(order + "I", magic)[0] != PCAPNG_BYTE_ORDER:
                raise CaptureError("bad pcapng byte-order magic", location=where)
            length = struct.unpack(order + "I", head[4:8])[0]
            body = magic + stream.read(length - 12) if length >= 16 else b""
            interfaces = []
        else:
            kind, length = struct.unpack(order + "II", head)
            if length < 12 or length > MAX_RECORD + 64 or length % 4:
                raise CaptureError(
                    f"block length {length} is not plausible (corrupt file)", location=where
                )
            body = stream.read(length - 8)
            if len(body) < length - 8:
                raise CaptureError("the file ends inside a block", location=where)
            body = body[:-4]  # the trailing copy of the length
            if kind == 1:
                interfaces.append(_interface(body, order))
            elif kind in (6, 2, 3):
                number += 1
                frame = _packet_block(kind, body, order, interfaces, number)
                if frame is None:
                    raise CaptureError(
                        "packet block for an undeclared interface or with a bad length",
                        location=f"{name}: frame {number}, offset {offset}",
                    )
                yield frame
        offset += length


def _interface(body: bytes, order: str) -> tuple[int, int]:
    linktype = struct.unpack_from(order + "H", body, 0)[0]
    ticks = 1_000_000
    pos = 8
    while pos + 4 <= len(body):
        code, size = struct.unpack_from(order + "HH", body, pos)
        if code == 0:
            break
        if code == 9 and size >= 1:  # if_tsresol: 10^-n, or 2^-n with the top bit set
            value = body[pos + 4]
            ticks = 2 ** (value & 0x7F) if value & 0x80 else 10**value
        pos += 4 + size + (-size % 4)
    return linktype, ticks


def _packet_block(
    kind: int, body: bytes, order: str, interfaces: list[tuple[int, int]], number: int
) -> Frame | None:
    if kind == 3:  # simple packet: interface 0, no timestamp
        if not interfaces or len(body) < 4:
            return None
        linktype, _ = interfaces[0]
        orig = struct.unpack_from(order + "I", body, 0)[0]
        return Frame(number, 0, linktype, body[4 : 4 + min(orig, len(body) - 4)])
    if len(body) < 20:
        return None
    if kind == 6:
        iface, high, low, caplen = struct.unpack_from(order + "IIII", body, 0)
    else:
        iface, _, high, low, caplen = struct.unpack_from(order + "HHIII", body, 0)
    if iface >= len(interfaces) or 20 + caplen > len(body):
        return None
    linktype, ticks = interfaces[iface]
    stamp = (high << 32) | low
    ts_us = stamp if ticks == 1_000_000 else stamp * 1_000_000 // ticks
    return Frame(number, ts_us, linktype, body[20 : 20 + caplen])


class PcapWriter:
    """Write frames to a pcap file (microsecond timestamps, one link type), as they come.

    ``with PcapWriter(path, linktype) as out: out.write(frame)``; the file is flushed on each
    :meth:`flush` and closed at the end, so a capture cut short keeps what was written.
    """

    def __init__(self, path: Path, linktype: int, snaplen: int = 262_144) -> None:
        self.path = path
        self.linktype = linktype
        self.frames = 0
        self._record = struct.Struct("<IIII")
        try:
            self._stream: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed in close()
            self._stream.write(
                struct.pack("<IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, linktype)
            )
        except OSError as exc:
            raise CaptureError(f"cannot write the capture: {exc}", location=str(path)) from exc

    def write(self, frame: RawFrame) -> None:
        """Append one frame (its link type must be the file's)."""
        _, ts_us, linktype, data = frame
        if linktype != self.linktype:
            raise CaptureError(
                f"frame of link type {linktype} in a capture of link type {self.linktype}",
                location=str(self.path),
            )
        seconds, micros = divmod(ts_us, 1_000_000)
        try:
            self._stream.write(self._record.pack(seconds, micros, len(data), len(data)) + data)
        except OSError as exc:
            raise CaptureError(f"cannot write the capture: {exc}", location=str(self.path)) from exc
        self.frames += 1

    def flush(self) -> None:
        """Push what was written to the file."""
        self._stream.flush()

    def close(self) -> None:
        """Flush and close the file."""
        if not self._stream.closed:
            self._stream.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
