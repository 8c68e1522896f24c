"""Live capture on Linux: an AF_PACKET socket with a TPACKET_V3 memory-mapped ring, read in batches.

It yields the same :class:`collectors.capture.Frame` ``(number, ts_us, linktype, data)`` as the
capture files, without any dissection, so that pure Python keeps up with 100,000+ packets/s: the
kernel writes packets straight into a ring shared with this process, one poll() wakes us for a
whole block of packets, and a block is parsed with one ``struct`` call per packet.

How it is set up (the order matters, so that no packet from another interface slips in)::

    socket(AF_PACKET, SOCK_RAW, 0)             protocol 0: receives nothing yet
    setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
    setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)       loopback only, Linux >= 4.20
    setsockopt(SOL_PACKET, PACKET_RX_RING, tpacket_req3)    then mmap() the whole ring
    setsockopt(SOL_SOCKET, SO_ATTACH_FILTER, sock_fprog)    the BPF filter, or "accept snaplen"
    bind((iface, ETH_P_ALL))                   starts reception on that interface only
    setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC)   unless promisc=False

The ring (``ring_mb`` blocks of 1 MiB, mapped read-write, shared with the kernel)::

    +---------+---------+---------+-----+-------------+
    | block 0 | block 1 | block 2 | ... | block nr-1  |     each block: 1 MiB, page-aligned
    +---------+---------+---------+-----+-------------+

    one block: struct tpacket_block_desc (48 bytes), then packets at offset_to_first_pkt

    off  size  field (tpacket_block_desc + tpacket_hdr_v1)
      0   4    version
      4   4    offset_to_priv
      8   4    block_status     TP_STATUS_KERNEL (0): the kernel fills it;
                                TP_STATUS_USER (1): ours, hand it back by writing 0
     12   4    num_pkts
     16   4    offset_to_first_pkt
     20   4    blk_len          bytes in use, padding included
     24   8    seq_num
     32   8    ts_first_pkt     (sec, nsec)
     40   8    ts_last_pkt      (sec, nsec)

    each packet, 16-byte aligned (TPACKET_ALIGNMENT):

    off  size  field (struct tpacket3_hdr, 48 bytes)
      0   4    tp_next_offset   from this header to the next one (0 on the last)
      4   4    tp_sec
      8   4    tp_nsec          ts_us = tp_sec * 1_000_000 + tp_nsec // 1000
     12   4    tp_snaplen       bytes captured
     16   4    tp_len           bytes on the wire
     20   4    tp_status        TP_STATUS_VLAN_VALID (0x10): the kernel took the 802.1Q tag out
     24   2    tp_mac           from this header to the first byte of the frame
     26   2    tp_net           from this header to the network header
     28   4    hv1.tp_rxhash
     32   4    hv1.tp_vlan_tci
     36   2    hv1.tp_vlan_tpid valid when TP_STATUS_VLAN_TPID_VALID (0x40), else 0x8100
     38  10    padding
     48  20    struct sockaddr_ll at TPACKET_ALIGN(sizeof(tpacket3_hdr)) = 48:
               family(2) protocol(2, big-endian) ifindex(4) hatype(2) pkttype(1, at 58)
               halen(1) addr(8)
    tp_mac ... frame bytes (tp_snaplen of them), then padding to the next header

Everything in the ring is in host byte order (``=`` in ``struct``), except sll_protocol. A block
is copied out (one memcpy of ``blk_len`` bytes) and handed back to the kernel before it is parsed,
so the kernel can refill it while Python works. When every block is ours the kernel drops
packets and counts them, with the number of times the ring froze (``PACKET_STATISTICS``, struct
tpacket_stats_v3 ``{tp_packets, tp_drops, tp_freeze_q_cnt}``, reset by each read, so summed here).

Sizes: a block of 1 MiB holds about 6,000 small packets (header 68 bytes + frame, 16-aligned), so
the per-block Python overhead (poll, list, copy) is paid once per thousands of packets, and one
64 KiB GRO/TSO super-packet always fits. 64 blocks (64 MiB, ``ring_mb``) absorb about half a
second of a saturated 1 Gb/s link while the consumer is busy. ``timeout_ms`` is the block retire
timeout (``tp_retire_blk_tov``): a partly filled block is delivered after at most that long, so
quiet links still have low latency.

On loopback every packet passes twice, once outgoing and once incoming: the outgoing copy is
ignored (in the kernel with ``PACKET_IGNORE_OUTGOING``, or here by ``sll_pkttype``), so one packet
gives one frame. On other interfaces outgoing frames are kept (a SPAN port sees both directions
as incoming anyway). A VLAN tag taken out by the NIC is put back into the frame, as libpcap does.

Filters are tcpdump expressions, compiled to classic BPF by libpcap (through ctypes; Debian
package libpcap0.8) or, without it, by ``tcpdump -ddd``, and run in the kernel.

Capturing needs root or the CAP_NET_RAW capability; the link type comes from the interface
(Ethernet and loopback: LINKTYPE_ETHERNET 1; tun and raw IP: LINKTYPE_RAW 101).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import functools
import mmap
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass

from collectors.capture import Frame
from soc.errors import CaptureError

__all__ = ["LiveCapture", "LiveStats", "compile_bpf", "live_frames"]

# linux/if_ether.h, linux/socket.h, linux/if_packet.h, asm-generic/socket.h, linux/sockios.h
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23
PACKET_MR_PROMISC = 1
TPACKET_V3 = 2
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SIOCGIFHWADDR = 0x8927
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1 << 0
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
TPACKET_ALIGNMENT = 16
TPACKET3_HDRLEN = 48 + 20  # TPACKET_ALIGN(sizeof(struct tpacket3_hdr)) + sizeof(sockaddr_ll)
BPF_MAXINSNS = 4096
BPF_RET_K = 0x06  # BPF_RET | BPF_K: accept that many bytes

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
ARPHRD_LINKTYPES = {
    1: LINKTYPE_ETHERNET,  # ARPHRD_ETHER (also bridges, bonds, veth, VLAN devices)
    772: LINKTYPE_ETHERNET,  # ARPHRD_LOOPBACK: a 14-byte Ethernet header of zeros
    519: LINKTYPE_RAW,  # ARPHRD_RAWIP (some LTE modems)
    0xFFFE: LINKTYPE_RAW,  # ARPHRD_NONE (tun, WireGuard)
}
# LINKTYPE_* (the file format numbers) -> libpcap DLT_* and tcpdump -y names (DLT_RAW is 12)
_DLT = {LINKTYPE_ETHERNET: (1, "EN10MB"), LINKTYPE_RAW: (12, "RAW")}

BLOCK_SIZE = 1 << 20
_IGNORE_OUTGOING_IN_KERNEL = True  # tests turn it off to exercise the sll_pkttype path
MAX_SNAPLEN = 262_144
PERMISSION_HINT = (
    "needs root or the CAP_NET_RAW capability (for example: "
    "sudo setcap cap_net_raw,cap_net_admin=eip $(readlink -f .venv/bin/python))"
)

_BLOCK_STATUS = struct.Struct("=I")  # at offset 8 of a block
_BLOCK_HEAD = struct.Struct("=III")  # num_pkts, offset_to_first_pkt, blk_len at offset 12
# tp_next_offset, tp_sec, tp_nsec, tp_snaplen, (tp_len), tp_status, tp_mac, (tp_net, rxhash),
# tp_vlan_tci, tp_vlan_tpid, (padding, sll_family .. sll_hatype), sll_pkttype at 58
_PACKET = struct.Struct("=IIII4xIH6xIH20xB")
_STATS = struct.Struct("=III")  # struct tpacket_stats_v3
_REQ3 = struct.Struct("=7I")  # struct tpacket_req3
_VLAN = struct.Struct("!HH")
_new_tuple = tuple.__new__


@dataclass(frozen=True)
class LiveStats:
    """Counters of a live capture.

    ``received``: frames handed to the caller. ``kernel_packets``: packets the kernel accepted
    through the filter, dropped ones included. ``kernel_dropped``: packets lost because the ring
    was full (the consumer is too slow). ``kernel_freezes``: times the ring filled up.
    """

    received: int
    kernel_packets: int
    kernel_dropped: int
    kernel_freezes: int


class LiveCapture:
    """Live capture from one network interface through a TPACKET_V3 ring (Linux only).

    ``bpf`` is a tcpdump filter expression run in the kernel (``None``: everything);
    ``snaplen`` the most bytes kept per frame; ``ring_mb`` the ring size in MiB (1 MiB blocks, at
    least 2); ``timeout_ms`` how long a partly filled block may wait before it is delivered;
    ``promisc`` puts the interface into promiscuous mode for as long as the capture is open
    (needed on a SPAN port whose NIC would otherwise discard frames not addressed to it).

    Use it as a context manager, read with :meth:`batches`, from one thread; to stop from
    another thread set the ``stop`` event rather than calling :meth:`close`.
    """

    def __init__(
        self,
        iface: str,
        bpf: str | None = None,
        *,
        snaplen: int = 65535,
        ring_mb: int = 64,
        timeout_ms: int = 100,
        promisc: bool = True,
    ) -> None:
        """Open the socket, map the ring, attach the filter and start capturing on ``iface``."""
        self.iface = iface
        self.snaplen = snaplen
        self._sock: socket.socket | None = None
        self._ring: mmap.mmap | None = None
        self._block = 0
        self._number = 0
        self._received = 0
        self._kernel = [0, 0, 0]  # packets, drops, freezes: summed over reads
        if not sys.platform.startswith("linux"):
            raise CaptureError(f"live capture needs Linux (this is {sys.platform})", location=iface)
        if not 1 <= snaplen <= MAX_SNAPLEN:
            raise CaptureError(f"snaplen {snaplen} is not within 1..{MAX_SNAPLEN}", location=iface)
        if ring_mb < 2:
            raise CaptureError(f"ring_mb {ring_mb} is too small (at least 2)", location=iface)
        if not 1 <= timeout_ms <= 60_000:
            raise CaptureError(f"timeout_ms {timeout_ms} is not within 1..60000", location=iface)
        self.timeout_ms = timeout_ms
        self._block_nr = ring_mb
        ifindex = _ifindex(iface)
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError as exc:
            raise CaptureError(f"capturing on {iface} {PERMISSION_HINT}", location=iface) from exc
        except OSError as exc:
            raise CaptureError(f"cannot open a packet socket: {exc}", location=iface) from exc
        try:
            self._setup(ifindex, bpf, promisc)
        except BaseException:
            self.close()
            raise

    def _setup(self, ifindex: int, bpf: str | None, promisc: bool) -> None:
        sock = self._sock
        assert sock is not None
        iface = self.iface
        hatype = _hatype(sock, iface)
        if hatype not in ARPHRD_LINKTYPES:
            raise CaptureError(
                f"interface type ARPHRD {hatype} is not supported "
                "(Ethernet, loopback, tun or raw IP interfaces are)",
                location=iface,
            )
        self.linktype = ARPHRD_LINKTYPES[hatype]
        self._skip_outgoing = hatype == 772  # loopback: every packet is also seen outgoing
        program = compile_bpf(bpf, self.linktype, self.snaplen) if bpf else None
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        except OSError as exc:
            raise CaptureError(
                f"the kernel lacks TPACKET_V3 (3.2+): {exc}", location=iface
            ) from exc
        if self._skip_outgoing and _IGNORE_OUTGOING_IN_KERNEL:
            # Linux 4.20+: the outgoing copy never reaches the ring; on older kernels the
            # parser skips it by sll_pkttype.
            with contextlib.suppress(OSError):
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        # frame_size only has to be consistent for V3 (frames are packed); older kernels also
        # clip snaplen to it, so make a whole snaplen fit.
        frame_size = min(_align(TPACKET3_HDRLEN + TPACKET_ALIGNMENT + self.snaplen), BLOCK_SIZE)
        frames = (BLOCK_SIZE // frame_size) * self._block_nr
        req = _REQ3.pack(BLOCK_SIZE, self._block_nr, frame_size, frames, self.timeout_ms, 0, 0)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self._ring = mmap.mmap(
                sock.fileno(),
                BLOCK_SIZE * self._block_nr,
                mmap.MAP_SHARED,
                mmap.PROT_READ | mmap.PROT_WRITE,
            )
        except OSError as exc:
            raise CaptureError(
                f"cannot set up a {self._block_nr} MiB capture ring: {exc} (try a smaller ring_mb)",
                location=iface,
            ) from exc
        _attach_filter(sock, program or [(BPF_RET_K, 0, 0, self.snaplen)], bpf or "", iface)
        try:
            sock.bind((iface, ETH_P_ALL))
            if promisc:
                mreq = struct.pack("=iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        except OSError as exc:
            raise CaptureError(f"cannot capture on the interface: {exc}", location=iface) from exc
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN | select.POLLERR)

    def batches(
        self, stop: threading.Event | None = None, duration_s: float | None = None
    ) -> Iterator[list[Frame]]:
        """Lists of frames as they arrive: one list per ring block.

        An empty list comes when nothing arrived within ``timeout_ms``, so the caller gets
        control back regularly. When ``stop`` is set or ``duration_s`` seconds have passed, the
        blocks the kernel has already filled are still read (nothing captured is lost
        uncounted), then it ends; it also ends when the capture is closed. Frame numbers go on
        from 1 across calls.
        """
        deadline = None if duration_s is None else time.monotonic() + duration_s
        status_at = _BLOCK_STATUS.unpack_from
        set_status = _BLOCK_STATUS.pack_into
        head_at = _BLOCK_HEAD.unpack_from
        draining = False  # stopping: the blocks already filled are still read, then it ends
        grace = True
        while self._ring is not None:
            if not draining and (
                (stop is not None and stop.is_set())
                or (deadline is not None and time.monotonic() >= deadline)
            ):
                draining = True
            ring = self._ring
            base = self._block * BLOCK_SIZE
            ready = status_at(ring, base + 8)[0] & TP_STATUS_USER
            if draining and not ready:
                if grace:  # the block being filled is handed over after timeout_ms: wait once
                    grace = False
                    self._poll.poll(self.timeout_ms + 20)
                    continue
                return
            if ready:
                count, first, length = head_at(ring, base + 12)
                block = ring[base : base + length] if count else b""
                set_status(ring, base + 8, TP_STATUS_KERNEL)  # the kernel may refill it now
                self._block = (self._block + 1) % self._block_nr
                if count:
                    frames = _parse_block(
                        block, first, count, self._number, self.linktype, self._skip_outgoing
                    )
                    self._number += len(frames)
                    self._received += len(frames)
                    if frames:
                        yield frames
                continue
            wait = self.timeout_ms
            if deadline is not None:
                wait = max(1, min(wait, int((deadline - time.monotonic()) * 1000) + 1))
            events = self._poll.poll(wait)
            if not events:
                yield []
            elif events[0][1] & (select.POLLERR | select.POLLNVAL):
                self._check_error()

    def _check_error(self) -> None:
        sock = self._sock
        if sock is None:
            return
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code in (0, errno.ENETDOWN):  # link down: the kernel resumes when it comes back up
            if code == 0:
                time.sleep(self.timeout_ms / 1000)  # no busy loop on a spurious POLLERR
            return
        raise CaptureError(f"capture stopped: {os.strerror(code)}", location=self.iface)

    def stats(self) -> LiveStats:
        """Frames received and the kernel's counters so far (summed; the kernel resets them)."""
        self._read_kernel_stats()
        packets, drops, freezes = self._kernel
        return LiveStats(self._received, packets, drops, freezes)

    def _read_kernel_stats(self) -> None:
        if self._sock is None:
            return
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
        for i, value in enumerate(_STATS.unpack(raw)):
            self._kernel[i] += value

    def close(self) -> None:
        """Stop capturing: unmap the ring and close the socket (idempotent)."""
        sock, ring = self._sock, self._ring
        if sock is None:
            return
        with contextlib.suppress(OSError):
            self._read_kernel_stats()  # keep the last counters for stats() after close
        self._ring = None
        self._sock = None
        if ring is not None:
            ring.close()
        sock.close()

    def __enter__(self) -> LiveCapture:
        """The capture itself."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the capture."""
        self.close()

    def __del__(self) -> None:
        """Close the capture if the owner forgot to."""
        if getattr(self, "_sock", None) is not None:
            self.close()


def live_frames(
    iface: str,
    bpf: str | None = None,
    *,
    snaplen: int = 65535,
    ring_mb: int = 64,
    timeout_ms: int = 100,
    stop: threading.Event | None = None,
    duration_s: float | None = None,
) -> Generator[Frame, None, None]:
    """Frames captured on ``iface`` one by one, until ``stop`` is set or ``duration_s`` passes.

    Closing the generator (or breaking out of a ``for`` loop and dropping it) closes the capture.
    """
    with LiveCapture(iface, bpf, snaplen=snaplen, ring_mb=ring_mb, timeout_ms=timeout_ms) as cap:
        for batch in cap.batches(stop, duration_s):
            yield from batch


def _parse_block(
    block: bytes, offset: int, count: int, number: int, linktype: int, skip_outgoing: bool
) -> list[Frame]:
    """Frames of one ring block copied out (``count`` packets from ``offset``), numbered on."""
    frames: list[Frame] = []
    append = frames.append
    unpack = _PACKET.unpack_from
    ethernet = linktype == LINKTYPE_ETHERNET
    for _ in range(count):
        step, sec, nsec, snaplen, status, mac, tci, tpid, pkttype = unpack(block, offset)
        if pkttype != PACKET_OUTGOING or not skip_outgoing:
            start = offset + mac
            data = block[start : start + snaplen]
            if status & TP_STATUS_VLAN_VALID and ethernet:
                tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                data = data[:12] + _VLAN.pack(tpid, tci & 0xFFFF) + data[12:]
            number += 1
            append(_new_tuple(Frame, (number, sec * 1_000_000 + nsec // 1000, linktype, data)))
        offset += step
    return frames


def _align(size: int) -> int:
    return (size + TPACKET_ALIGNMENT - 1) & ~(TPACKET_ALIGNMENT - 1)


def _ifindex(iface: str) -> int:
    try:
        return socket.if_nametoindex(iface)
    except (OSError, ValueError):
        names = ", ".join(name for _, name in socket.if_nameindex())
        raise CaptureError(
            f"no network interface named {iface!r} (available: {names})", location=iface
        ) from None


def _hatype(sock: socket.socket, iface: str) -> int:
    """The interface's ARPHRD_* hardware type (SIOCGIFHWADDR: struct ifreq, sa_family at 16)."""
    request = struct.pack("=16s24x", iface.encode())
    try:
        answer = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, request)
    except OSError as exc:
        raise CaptureError(f"cannot read the interface type: {exc}", location=iface) from exc
    return int(struct.unpack_from("=H", answer, 16)[0])


class _SockFilter(ctypes.Structure):
    """struct sock_filter (linux/filter.h) and struct bpf_insn (pcap/bpf.h): the same layout."""

    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class _SockFprog(ctypes.Structure):
    """struct sock_fprog {unsigned short len; struct sock_filter *filter}."""

    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter)))


class _BpfProgram(ctypes.Structure):
    """struct bpf_program {u_int bf_len; struct bpf_insn *bf_insns} (pcap/bpf.h)."""

    _fields_ = (("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_SockFilter)))


def _attach_filter(
    sock: socket.socket, program: list[tuple[int, int, int, int]], expr: str, iface: str
) -> None:
    if not 1 <= len(program) <= BPF_MAXINSNS:
        raise CaptureError(
            f"the filter {expr!r} compiles to {len(program)} instructions "
            f"(the kernel takes 1..{BPF_MAXINSNS})",
            location=iface,
        )
    insns = (_SockFilter * len(program))(*(_SockFilter(*insn) for insn in program))
    fprog = _SockFprog(len(program), ctypes.cast(insns, ctypes.POINTER(_SockFilter)))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
    except OSError as exc:
        raise CaptureError(
            f"the kernel refused the filter {expr!r} ({len(program)} instructions): {exc}",
            location=iface,
        ) from exc


_PCAP_LOCK = threading.Lock()  # pcap_compile is not thread-safe before libpcap 1.8
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF


@functools.cache
def _libpcap() -> ctypes.CDLL | None:
    """libpcap through ctypes, with the few signatures used here; None when it is absent."""
    names = [ctypes.util.find_library("pcap"), "libpcap.so.1", "libpcap.so.0.8", "libpcap.so"]
    for name in names:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.pcap_open_dead.argtypes = (ctypes.c_int, ctypes.c_int)
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_compile.argtypes = (
            ctypes.c_void_p,
            ctypes.POINTER(_BpfProgram),
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint32,
        )
        lib.pcap_compile.restype = ctypes.c_int
        lib.pcap_geterr.argtypes = (ctypes.c_void_p,)
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_freecode.argtypes = (ctypes.POINTER(_BpfProgram),)
        lib.pcap_freecode.restype = None
        lib.pcap_close.argtypes = (ctypes.c_void_p,)
        lib.pcap_close.restype = None
        return lib
    return None


def _tcpdump() -> str | None:
    return shutil.which("tcpdump") or next(
        (p for p in ("/usr/sbin/tcpdump", "/usr/bin/tcpdump") if os.access(p, os.X_OK)), None
    )


def compile_bpf(
    expr: str, linktype: int = LINKTYPE_ETHERNET, snaplen: int = 65535
) -> list[tuple[int, int, int, int]]:
    """Compile a tcpdump filter expression to classic BPF ``(code, jt, jf, k)`` instructions.

    ``linktype`` is LINKTYPE_ETHERNET (1) or LINKTYPE_RAW (101); an accepted packet is cut to
    ``snaplen`` bytes. Uses libpcap through ctypes, else ``tcpdump -ddd``; needs no privileges.
    Raises :class:`CaptureError` for a bad expression (with libpcap's message) or when neither
    is installed.
    """
    if linktype not in _DLT:
        raise CaptureError(
            f"cannot compile a filter for link type {linktype} (only 1 and 101)", location=expr
        )
    dlt, name = _DLT[linktype]
    lib = _libpcap()
    if lib is not None:
        return _compile_libpcap(lib, expr, dlt, snaplen)
    tcpdump = _tcpdump()
    if tcpdump is not None:
        return _compile_tcpdump(tcpdump, expr, name, snaplen)
    raise CaptureError(
        "capture filters need libpcap (Debian package libpcap0.8) or tcpdump; install one, "
        "or capture without a filter",
        location=expr,
    )


def _compile_libpcap(
    lib: ctypes.CDLL, expr: str, dlt: int, snaplen: int
) -> list[tuple[int, int, int, int]]:
    with _PCAP_LOCK:
        handle = lib.pcap_open_dead(dlt, snaplen)
        if not handle:
            raise CaptureError("libpcap cannot open a compiler handle", location=expr)
        try:
            program = _BpfProgram()
            code = lib.pcap_compile(
                handle, ctypes.byref(program), expr.encode(), 1, PCAP_NETMASK_UNKNOWN
            )
            if code != 0:
                message = (lib.pcap_geterr(handle) or b"").decode(errors="replace")
                raise CaptureError(f"bad capture filter {expr!r}: {message}", location=expr)
            try:
                insns = program.bf_insns
                return [
                    (insns[i].code, insns[i].jt, insns[i].jf, insns[i].k)
                    for i in range(program.bf_len)
                ]
            finally:
                lib.pcap_freecode(ctypes.byref(program))
        finally:
            lib.pcap_close(handle)


def _compile_tcpdump(
    tcpdump: str, expr: str, dlt_name: str, snaplen: int
) -> list[tuple[int, int, int, int]]:
    command = [tcpdump, "-ddd", "-s", str(snaplen), "-y", dlt_name, "--", expr]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CaptureError(f"tcpdump cannot compile the filter: {exc}", location=expr) from exc
    if done.returncode != 0:
        message = done.stderr.strip().removeprefix("tcpdump: ")
        raise CaptureError(f"bad capture filter {expr!r}: {message}", location=expr)
    try:
        lines = done.stdout.split("\n")
        count = int(lines[0])
        program = [tuple(int(x) for x in line.split()) for line in lines[1 : 1 + count]]
        if len(program) != count or any(len(insn) != 4 for insn in program):
            raise ValueError("instruction count or shape")
    except ValueError as exc:
        raise CaptureError(f"unexpected output of tcpdump -ddd: {exc}", location=expr) from exc
    return [(a, b, c, d) for a, b, c, d in program]
