"""The collector: frames in, ECS events out, with the run's counts.

:class:`Collector` is the hot loop's state and takes frames from any source (capture files,
a live interface): link and IP headers are decoded (:mod:`collectors.packet`), TCP flows tracked
and reassembled (:mod:`collectors.reassembly`), each flow's protocol found by port or, failing
that, by content (as Zeek's dynamic protocol detection does), and the bytes handed to that
protocol's session, which emits events. Events accumulate in :attr:`Collector.events` until
the caller takes them (:meth:`Collector.take`), so sinks are batched and the core does no I/O.
"""

from __future__ import annotations

import functools
import importlib
import socket
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from collectors import dlms, mqtt, opcua
from collectors.capture import Frame, RawFrame
from collectors.dlms import DlmsStats
from collectors.modbus import plausible_adu
from collectors.modbus_events import ModbusStats
from collectors.mqtt import MqttStats
from collectors.normalize import FlowContext
from collectors.opcua import OpcuaStats
from collectors.packet import TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Packet, decode
from collectors.reassembly import Direction, Flow, FlowTable, StreamStats, flow_key
from soc.config import CollectSettings
from soc.types import Event

NO_PROTOCOL = ""


@dataclass
class CollectStats:
    """What a run saw; :meth:`summary` is what ``soc collect`` prints at the end."""

    frames: int = 0
    tcp: int = 0
    udp: int = 0
    not_decoded: Counter[str] = field(default_factory=Counter)
    events: int = 0
    capture_errors: list[tuple[str, str]] = field(default_factory=list)
    stream: StreamStats = field(default_factory=StreamStats)
    modbus: ModbusStats = field(default_factory=ModbusStats)
    opcua: OpcuaStats = field(default_factory=OpcuaStats)
    mqtt: MqttStats = field(default_factory=MqttStats)
    dlms: DlmsStats = field(default_factory=DlmsStats)

    @property
    def pdus(self) -> dict[str, int]:
        """Protocol messages decoded, by protocol (Modbus requests, responses and exceptions;
        OPC UA, MQTT and DLMS messages)."""
        out = {}
        modbus = self.modbus.requests + self.modbus.responses
        if modbus:
            out["modbus"] = modbus
        for name in ("opcua", "mqtt", "dlms"):
            messages = getattr(self, name).messages
            if messages:
                out[name] = messages
        return out

    @property
    def parse_errors(self) -> int:
        """Malformed PDUs, protocol violations and unreadable capture records."""
        return (
            self.modbus.malformed
            + self.modbus.violations
            + self.opcua.malformed
            + self.opcua.partial
            + self.opcua.violations
            + self.mqtt.parse_errors
            + self.dlms.parse_errors
            + len(self.capture_errors)
        )

    def summary(self) -> dict[str, Any]:
        """The closing summary as plain data."""
        return {
            "frames": self.frames,
            "packets": {"tcp": self.tcp, "udp": self.udp, **dict(self.not_decoded)},
            "flows": self.stream.flows,
            "pdus": self.pdus,
            "events": self.events,
            "parse_errors": self.parse_errors,
            "gaps": self.stream.gaps,
            "gap_bytes": self.stream.gap_bytes,
            "retransmissions": self.stream.retransmitted,
            "out_of_order": self.stream.out_of_order,
            "evicted_flows": self.stream.evicted_flows,
            "modbus": {
                "requests": self.modbus.requests,
                "responses": self.modbus.responses,
                "exceptions": self.modbus.exceptions,
                "unanswered": self.modbus.unanswered,
                "orphans": self.modbus.orphans,
                "violations": self.modbus.violations,
                "malformed": self.modbus.malformed,
                "resyncs": self.modbus.resyncs,
            },
            "opcua": {
                "messages": self.opcua.messages,
                "requests": self.opcua.requests,
                "responses": self.opcua.responses,
                "service_faults": self.opcua.faults,
                "encrypted": self.opcua.encrypted,
                "aborted": self.opcua.aborted,
                "unanswered": self.opcua.unanswered,
                "orphans": self.opcua.orphans,
                "violations": self.opcua.violations,
                "malformed": self.opcua.malformed,
                "partial": self.opcua.partial,
                "resyncs": self.opcua.resyncs,
            },
            "mqtt": self.mqtt.summary(),
            "dlms": self.dlms.summary(),
            "errors": [
                {"location": loc, "message": msg}
                for loc, msg in (
                    self.capture_errors
                    + self.modbus.errors
                    + self.opcua.errors
                    + self.mqtt.errors
                    + self.dlms.errors
                )[:50]
            ],
        }


class Collector:
    """Frames to events; one instance per run (flows carry across the files of a directory)."""

    def __init__(self, settings: CollectSettings | None = None) -> None:
        self.settings = settings or CollectSettings()
        self.stats = CollectStats()
        self.events: list[Event] = []
        self.source = "capture"
        self.observer = {
            "name": self.settings.observer_name or socket.gethostname(),
            "type": "sensor",
            "vendor": "ics-soc",
            "product": "soc collect",
        }
        self.modbus_ports = frozenset(self.settings.modbus_ports)
        self.ports = {
            **dict.fromkeys(self.settings.dlms_ports, "dlms"),
            **dict.fromkeys(self.settings.mqtt_ports, "mqtt"),
            **dict.fromkeys(self.settings.opcua_ports, "opcua"),
            **dict.fromkeys(self.settings.modbus_ports, "modbus"),
        }
        self.udp_ports = dict.fromkeys(self.settings.dlms_udp_ports, "dlms")
        self._dlms_keys = self.settings.dlms_key_table()
        self._observation_topics = tuple(
            mqtt.ObservationTopic.parse(t) for t in self.settings.mqtt_observation_topics
        )
        self.udp_flows: dict[tuple[bytes, int, bytes, int], Flow] = {}
        self.flows = FlowTable(
            self.settings.max_flows, self.settings.idle_timeout_s * 1_000_000, self.stats.stream
        )
        self._timeout_us = self.settings.response_timeout_ms * 1000
        self._max_pending = self.settings.max_pending_kb * 1024
        self._next_tick = 0

    def take(self) -> list[Event]:
        """The events emitted since the last call, in emission order."""
        events = self.events.copy()
        self.events.clear()
        self.stats.events += len(events)
        return events

    def capture_error(self, location: str, message: str) -> None:
        """Count a capture that could not be read whole."""
        self.stats.capture_errors.append((location, message))

    def frame(self, frame: Frame) -> None:
        """One captured frame."""
        self.frames((frame,))

    def frames(self, batch: Iterable[RawFrame]) -> None:
        """Captured frames, in capture order: the hot loop.

        Ethernet/IPv4/TCP frames (the usual case) are decoded with one ``struct`` call here;
        any other frame goes through :func:`collectors.packet.decode`. Segments with no payload
        on a known flow (most are bare ACKs) only refresh the flow and its acknowledgements.
        """
        stats = self.stats
        sides = self.flows.sides
        unpack = _ETH_IPV4_TCP.unpack_from
        unpack4, unpack6 = _IPV4_TCP.unpack_from, _IPV6_TCP.unpack_from
        link_ip = _LINK_IP
        frames = tcp = 0
        try:
            for number, ts_us, linktype, data in batch:
                frames += 1
                if (
                    linktype == 1
                    and len(data) >= 54
                    and data[12] == 8
                    and not data[13]
                    and data[14] == 0x45
                    and data[23] == 6
                ):
                    (dst_mac, src_mac, _, _, total, fragment, _, src, dst,
                     sport, dport, seq, ack, offset, flags) = unpack(data)  # fmt: skip
                    end = 14 + total
                    start = 34 + (offset >> 4) * 4
                    if fragment & 0x3FFF or offset < 0x50 or start > end or end > len(data):
                        packet = decode(linktype, data)  # the general decoder says why
                        if not isinstance(packet, Packet):
                            stats.not_decoded[packet.reason] += 1
                            continue
                        payload = packet.payload
                    else:
                        payload = data[start:end]
                else:
                    # a fixed link header (BSD loopback, raw IP, Linux cooked) or Ethernet's
                    # IPv6, then IPv4 with no options or IPv6 with no extension, then TCP
                    ip = link_ip.get((linktype, data[: _LINK_KEY.get(linktype, 0)]), -1)
                    if ip < 0 and linktype == 1 and data[12:14] == b"\x86\xdd":
                        ip = 14
                    fast = False
                    if ip >= 0 and len(data) >= ip + 40:
                        head = data[ip]
                        if head == 0x45 and data[ip + 9] == 6:
                            (total, fragment, src, dst, sport, dport, seq, ack, offset,
                             flags) = unpack4(data, ip)  # fmt: skip
                            end = ip + total
                            start = ip + 20 + (offset >> 4) * 4
                            fast = not (
                                fragment & 0x3FFF or offset < 0x50 or start > end or end > len(data)
                            )
                        elif head >> 4 == 6 and data[ip + 6] == 6 and len(data) >= ip + 60:
                            (length, src, dst, sport, dport, seq, ack, offset,
                             flags) = unpack6(data, ip)  # fmt: skip
                            end = ip + 40 + length
                            start = ip + 40 + (offset >> 4) * 4
                            fast = not (offset < 0x50 or start > end or end > len(data))
                    if fast:
                        payload = data[start:end]
                        if linktype == 1:
                            dst_mac, src_mac = data[0:6], data[6:12]
                        else:
                            dst_mac = src_mac = b""
                    else:
                        packet = decode(linktype, data)
                        if not isinstance(packet, Packet):
                            stats.not_decoded[packet.reason] += 1
                            continue
                        if packet.transport != TCP:
                            if ts_us >= self._next_tick:
                                self._tick(ts_us)
                            stats.udp += 1
                            self._datagram(number, ts_us, packet)
                            continue
                        (src_mac, dst_mac, src, dst, _, sport, dport, seq, ack, flags,
                         payload) = packet  # fmt: skip
                tcp += 1
                if ts_us >= self._next_tick:
                    self._tick(ts_us)
                side = sides.get((src, sport, dst, dport))
                if (
                    side is None
                    or flags & (TCP_SYN | TCP_FIN | TCP_RST)
                    or side[0].protocol is None
                ):
                    self._segment(
                        side, number, ts_us, src_mac, dst_mac, src, sport, dst, dport, seq, ack,
                        flags, payload,
                    )  # fmt: skip
                    continue
                flow, to_server = side
                flow.last_ts = ts_us
                if not flow.protocol:
                    continue
                if to_server:
                    ahead, back = flow.to_server, flow.to_client
                else:
                    ahead, back = flow.to_client, flow.to_server
                if back.pending and flags & TCP_ACK:  # type: ignore[union-attr]
                    back.acknowledged(ack)  # type: ignore[union-attr]
                if payload:
                    ahead.segment(seq, payload, ts_us, number)  # type: ignore[union-attr]
        finally:
            stats.frames += frames
            stats.tcp += tcp

    def _segment(
        self,
        side: tuple[Flow, bool] | None,
        number: int,
        ts_us: int,
        src_mac: bytes,
        dst_mac: bytes,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        payload: bytes,
    ) -> None:
        """A TCP segment that opens, closes or identifies a flow: the general path."""
        flow = side[0] if side is not None else None
        if flow is not None and flow.closing and flags & TCP_SYN and not flags & TCP_ACK:
            self._close(self.flows.remove(flow.key))  # the port pair is reused by a new connection
            flow = None
        if flow is None:
            flow = self._new_flow(src_mac, dst_mac, src, sport, dst, dport, flags, ts_us)
        flow.last_ts = ts_us
        if flow.protocol is None:
            if not payload:
                return
            self._identify(flow, src, sport, payload)
        if flow.protocol == NO_PROTOCOL:
            if flags & (TCP_RST | TCP_FIN):
                self.flows.remove(flow.key)
            return
        to_server = (src, sport) == flow.client
        ahead, back = (
            (flow.to_server, flow.to_client) if to_server else (flow.to_client, flow.to_server)
        )
        assert ahead is not None
        assert back is not None
        if flags & TCP_ACK:  # first: bytes the peer acknowledged come before this segment's reply
            back.acknowledged(ack)
        ahead.segment(seq, payload, ts_us, number, bool(flags & TCP_SYN))
        if flags & (TCP_RST | TCP_FIN):  # kept until idle: retransmissions may still fill holes
            flow.closing |= 4 if flags & TCP_RST else (1 if to_server else 2)

    def finish(self) -> None:
        """End of input: close every flow (unanswered requests are reported)."""
        for flow in list(self.flows.drain()):
            self._close(flow)
        for flow in self.udp_flows.values():
            flow.session.close()
        self.udp_flows.clear()

    def _datagram(self, number: int, ts_us: int, packet: Packet) -> None:
        """A UDP datagram: to its protocol's session when one of its ports is known (DLMS/COSEM
        over UDP); the side on the known port is the server."""
        src, sport, dst, dport = packet.src_ip, packet.src_port, packet.dst_ip, packet.dst_port
        key = flow_key(src, sport, dst, dport)
        flow = self.udp_flows.get(key)
        if flow is None:
            protocol = self.udp_ports.get(dport) or self.udp_ports.get(sport)
            if protocol is None:
                return
            if dport in self.udp_ports:
                client, server = (src, sport), (dst, dport)
                macs = (packet.src_mac, packet.dst_mac)
            else:
                client, server = (dst, dport), (src, sport)
                macs = (packet.dst_mac, packet.src_mac)
            flow = Flow(key, client, server, ts_us, ts_us, False)
            flow.data["macs"] = macs
            self._start(flow, protocol, "udp")
            self.udp_flows[key] = flow
        flow.last_ts = ts_us
        flow.session.datagram((src, sport) == flow.client, packet.payload, ts_us, number)

    # -- flows ---------------------------------------------------------------------------------

    def _new_flow(
        self,
        src_mac: bytes,
        dst_mac: bytes,
        src_ip: bytes,
        sport: int,
        dst_ip: bytes,
        dport: int,
        flags: int,
        ts_us: int,
    ) -> Flow:
        src, dst = (src_ip, sport), (dst_ip, dport)
        syn, ack = flags & TCP_SYN, flags & TCP_ACK
        if syn and not ack:
            client, server, known = src, dst, True
        elif syn and ack:
            client, server, known = dst, src, True
        elif dport in self.ports or (sport not in self.ports and dport < sport):
            client, server, known = src, dst, False
        else:
            client, server, known = dst, src, False
        flow = Flow(flow_key(src_ip, sport, dst_ip, dport), client, server, ts_us, ts_us, known)
        flow.data["macs"] = (src_mac, dst_mac) if src == client else (dst_mac, src_mac)
        protocol = self.ports.get(server[1]) or self.ports.get(client[1])
        if protocol is not None:
            self._start(flow, protocol)
        for old in self.flows.add(flow):
            self._close(old)
        return flow

    def _identify(self, flow: Flow, src: bytes, sport: int, payload: bytes) -> None:
        """Dynamic protocol detection on the first payload of a flow on no known port."""
        if plausible_adu(payload):
            protocol = "modbus"
        elif opcua.plausible(payload):
            protocol = "opcua"
        elif mqtt.plausible(payload):
            protocol = "mqtt"
        elif dlms.plausible(payload):
            protocol = "dlms"
        else:
            flow.protocol = NO_PROTOCOL
            return
        server_first = protocol == "opcua" and payload[:3] in (b"ACK", b"ERR", b"RHE")
        if not flow.client_known and ((src, sport) == flow.server) != server_first:
            flow.client, flow.server = flow.server, flow.client  # the first message's sender
            flow.data["macs"] = flow.data["macs"][::-1]
            self.flows.orient(flow)
        self._start(flow, protocol)

    def _start(self, flow: Flow, protocol: str, transport: str = "tcp") -> None:
        flow.protocol = protocol
        client_mac, server_mac = flow.data["macs"]
        context = FlowContext(
            transport, protocol, (*flow.client, client_mac), (*flow.server, server_mac)
        )
        source = self.source
        extra: dict[str, Any] = {}
        if protocol == "dlms" and self._dlms_keys:
            extra["keys"] = self._dlms_keys
        elif protocol == "mqtt" and self._observation_topics:
            extra["observation_topics"] = self._observation_topics
        session: Any = _session_class(protocol)(
            context,
            self.events.append,
            getattr(self.stats, protocol),
            self.observer,
            lambda number: f"{source}: frame {number}",
            self._timeout_us,
            **extra,
        )
        flow.session = session
        if transport != "tcp":
            return
        stats, limit = self.stats.stream, self._max_pending
        flow.to_server = Direction(
            partial(session.data, True), partial(session.gap, True), stats, limit
        )
        flow.to_client = Direction(
            partial(session.data, False), partial(session.gap, False), stats, limit
        )

    def _close(self, flow: Flow | None) -> None:
        if flow is None or not flow.protocol:
            return
        assert flow.to_server is not None
        assert flow.to_client is not None
        flow.to_server.finish()
        flow.to_client.finish()
        flow.session.close()

    def _tick(self, now_us: int) -> None:
        """Once a second of capture time: idle flows closed, overdue requests reported."""
        self._next_tick = now_us + 1_000_000
        for flow in list(self.flows.expire(now_us)):
            self._close(flow)
        for flow in self.flows.flows.values():
            if flow.session is not None:
                flow.session.expire(now_us)
        if self.udp_flows:
            idle = now_us - self.settings.idle_timeout_s * 1_000_000
            for key in [k for k, f in self.udp_flows.items() if f.last_ts < idle]:
                self.udp_flows.pop(key).session.close()
            for flow in self.udp_flows.values():
                flow.session.expire(now_us)


#: each protocol's session class (module, class), imported when a flow of it is first seen:
#: asyncua and dlms-cosem cost their import only to runs that meet OPC UA or DLMS
_SESSIONS = {
    "modbus": ("collectors.modbus_events", "ModbusSession"),
    "opcua": ("collectors.opcua_events", "OpcuaSession"),
    "mqtt": ("collectors.mqtt_events", "MqttSession"),
    "dlms": ("collectors.dlms_events", "DlmsSession"),
}


@functools.cache
def _session_class(protocol: str) -> Any:
    module, name = _SESSIONS[protocol]
    return getattr(importlib.import_module(module), name)


#: Ethernet, IPv4 with no options, TCP up to its flags: the hot loop's one ``struct`` call
_ETH_IPV4_TCP = struct.Struct("!6s6sHBxHxxHxB2x4s4sHHIIBB")
#: IPv4 with no options then TCP, from the IP header: total length, fragment, addresses, ports,
#: sequence and acknowledgement numbers, data offset, flags
_IPV4_TCP = struct.Struct("!2xH2xH4x4s4sHHIIBB")
#: IPv6 with TCP as next header then TCP: payload length, addresses, ports, ..., flags
_IPV6_TCP = struct.Struct("!4xH2x16s16sHHIIBB")
#: (link type, the link header's bytes that say IP) -> where the IP header starts; the bytes
#: compared are the first _LINK_KEY[link type] of the frame (none for raw IP)
_LINK_KEY = {0: 4, 108: 4}
_LINK_IP: dict[tuple[int, bytes], int] = {
    **{
        (0, family.to_bytes(4, order)): 4
        for family in (2, 24, 28, 30)
        for order in ("little", "big")
    },
    **{(108, family.to_bytes(4, "big")): 4 for family in (2, 24, 28, 30)},
    **{(linktype, b""): 0 for linktype in (12, 14, 101, 228, 229)},
}
