"""Link, network and transport headers: a captured frame to a :class:`Packet`, or ``None``.

Pure functions over bytes, no scapy layer objects: this runs once per frame on the hot path.
Addresses stay raw bytes here (flow keys hash them cheaply); :func:`ip_text` and :func:`mac_text`
format them, cached, when an event is built.

Link types handled (LINKTYPE_* of tcpdump.org): ETHERNET (1, with 802.1Q/802.1ad VLAN tags), NULL
(0) and LOOP (108) loopback, RAW (101, and the historical 12 and 14), IPV4 (228), IPV6 (229),
LINUX_SLL (113) and LINUX_SLL2 (276). IPv4 and IPv6 (skipping extension headers); TCP and UDP.
Ethernet padding is trimmed with the IP length, so a payload never carries trailer bytes.
"""

from __future__ import annotations

import functools
import socket
import struct
from typing import NamedTuple

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = (0x8100, 0x88A8, 0x9100)
TCP = 6
UDP = 17
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_IPV6_EXTENSIONS = (0, 43, 60)  # hop-by-hop, routing, destination options (fragment 44: stop)
_NULL_IPV6 = (24, 28, 30)  # AF_INET6 on the BSDs, Darwin, Linux


class Packet(NamedTuple):
    """A TCP or UDP packet's headers and payload; addresses as raw bytes."""

    src_mac: bytes
    dst_mac: bytes
    src_ip: bytes
    dst_ip: bytes
    transport: int  # 6 TCP, 17 UDP
    src_port: int
    dst_port: int
    seq: int  # TCP only
    ack: int
    flags: int
    payload: bytes


class NotDecoded(NamedTuple):
    """Why a frame gave no packet: ``other`` (not IP, or not TCP/UDP), ``fragment``, ``truncated``."""

    reason: str


_H = struct.Struct("!H")
_TCP = struct.Struct("!HHIIBB")
_UDP = struct.Struct("!HH")


def decode(linktype: int, data: bytes) -> Packet | NotDecoded:
    """The TCP/UDP packet in a frame, or why there is none."""
    src_mac = dst_mac = b""
    if linktype == 1:
        if len(data) < 14:
            return NotDecoded("truncated")
        dst_mac, src_mac = data[0:6], data[6:12]
        ethertype = _H.unpack_from(data, 12)[0]
        offset = 14
        while ethertype in ETHERTYPE_VLAN:
            if len(data) < offset + 4:
                return NotDecoded("truncated")
            ethertype = _H.unpack_from(data, offset + 2)[0]
            offset += 4
    elif linktype in (0, 108):
        if len(data) < 4:
            return NotDecoded("truncated")
        family = int.from_bytes(data[:4], "little" if linktype == 0 else "big")
        if linktype == 0 and family > 0xFFFF:  # written on a big-endian host
            family = int.from_bytes(data[:4], "big")
        ethertype = ETHERTYPE_IPV4 if family == 2 else ETHERTYPE_IPV6 if family in _NULL_IPV6 else 0
        offset = 4
    elif linktype in (101, 12, 14, 228, 229):
        if not data:
            return NotDecoded("truncated")
        ethertype = ETHERTYPE_IPV4 if data[0] >> 4 == 4 else ETHERTYPE_IPV6
        offset = 0
    elif linktype == 113:
        if len(data) < 16:
            return NotDecoded("truncated")
        ethertype, offset = _H.unpack_from(data, 14)[0], 16
    elif linktype == 276:
        if len(data) < 20:
            return NotDecoded("truncated")
        ethertype, offset = _H.unpack_from(data, 0)[0], 20
    else:
        return NotDecoded("other")
    if ethertype == ETHERTYPE_IPV4:
        return _ipv4(data, offset, src_mac, dst_mac)
    if ethertype == ETHERTYPE_IPV6:
        return _ipv6(data, offset, src_mac, dst_mac)
    return NotDecoded("other")


def _ipv4(data: bytes, offset: int, src_mac: bytes, dst_mac: bytes) -> Packet | NotDecoded:
    if len(data) < offset + 20:
        return NotDecoded("truncated")
    header = (data[offset] & 0x0F) * 4
    total = _H.unpack_from(data, offset + 2)[0]
    if header < 20 or total < header:
        return NotDecoded("truncated")
    if _H.unpack_from(data, offset + 6)[0] & 0x3FFF:  # more fragments, or a fragment offset
        return NotDecoded("fragment")
    proto = data[offset + 9]
    end = min(len(data), offset + total)
    return _transport(
        data[offset + header : end],
        proto,
        data[offset + 12 : offset + 16],
        data[offset + 16 : offset + 20],
        src_mac,
        dst_mac,
        truncated=offset + total > len(data),
    )


def _ipv6(data: bytes, offset: int, src_mac: bytes, dst_mac: bytes) -> Packet | NotDecoded:
    if len(data) < offset + 40:
        return NotDecoded("truncated")
    length = _H.unpack_from(data, offset + 4)[0]
    proto = data[offset + 6]
    src, dst = data[offset + 8 : offset + 24], data[offset + 24 : offset + 40]
    end = min(len(data), offset + 40 + length)
    pos = offset + 40
    while proto in _IPV6_EXTENSIONS:
        if end < pos + 8:
            return NotDecoded("truncated")
        proto, pos = data[pos], pos + 8 + data[pos + 1] * 8
    if proto == 44:
        return NotDecoded("fragment")
    return _transport(
        data[pos:end], proto, src, dst, src_mac, dst_mac, truncated=offset + 40 + length > len(data)
    )


def _transport(
    segment: bytes,
    proto: int,
    src: bytes,
    dst: bytes,
    src_mac: bytes,
    dst_mac: bytes,
    *,
    truncated: bool,
) -> Packet | NotDecoded:
    if proto == TCP:
        if len(segment) < 20:
            return NotDecoded("truncated")
        sport, dport, seq, ack, off, flags = _TCP.unpack_from(segment)
        header = (off >> 4) * 4
        if header < 20 or header > len(segment):
            return NotDecoded("truncated")
        if truncated:  # a snaplen-cut frame: the payload would be a lie about the stream
            return NotDecoded("truncated")
        return Packet(
            src_mac, dst_mac, src, dst, TCP, sport, dport, seq, ack, flags, segment[header:]
        )
    if proto == UDP:
        if len(segment) < 8 or truncated:
            return NotDecoded("truncated")
        sport, dport = _UDP.unpack_from(segment)
        return Packet(src_mac, dst_mac, src, dst, UDP, sport, dport, 0, 0, 0, segment[8:])
    return NotDecoded("other")


@functools.lru_cache(maxsize=65536)
def ip_text(raw: bytes) -> str:
    """An address in its usual text form (``10.0.0.1``, ``fe80::1``)."""
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


@functools.lru_cache(maxsize=65536)
def mac_text(raw: bytes) -> str:
    """A MAC address in ECS's form (``00-1D-9C-C7-B0-10``), or ``""`` when there is none."""
    return raw.hex("-").upper()
