"""TCP reassembly: per flow and direction, the byte stream in order, with gaps counted.

Shared by every TCP protocol. A :class:`Direction` takes segments in capture order and hands
in-order bytes to its consumer; it handles retransmissions and overlaps (old bytes dropped),
out-of-order segments (held until the hole fills), captures that start mid-stream (the first
segment seen starts the stream) and gaps: a hole is given up when the peer acknowledges bytes
beyond it (the capture missed them), when too many bytes wait behind it, or when the flow ends.
The consumer is then told, so a framer drops its partial PDU and resynchronises.

Memory is bounded: at most ``max_pending`` bytes wait per direction, and the flow table
(:class:`FlowTable`) holds at most ``max_flows`` flows, evicting the longest idle first, so a
flood of half-open connections cannot exhaust memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

SEQ_MOD = 1 << 32
CLOSED_LINGER_US = 5_000_000  # a closed (FIN or RST) flow stays this long for late segments
HALF = 1 << 31

#: consumer(data, ts_us, frame_number, seq_of_first_byte)
Deliver = Callable[[bytes, int, int, int], None]


@dataclass
class StreamStats:
    """What reassembly saw, summed over flows."""

    segments: int = 0
    bytes: int = 0
    retransmitted: int = 0
    out_of_order: int = 0
    gaps: int = 0
    gap_bytes: int = 0
    flows: int = 0
    evicted_flows: int = 0


class Direction:
    """One direction of a TCP connection."""

    __slots__ = (
        "consumer",
        "gap_handler",
        "max_pending",
        "next_seq",
        "pending",
        "pending_bytes",
        "stats",
    )

    def __init__(
        self,
        consumer: Deliver,
        gap_handler: Callable[[], None],
        stats: StreamStats,
        max_pending: int,
    ) -> None:
        self.consumer = consumer
        self.gap_handler = gap_handler
        self.stats = stats
        self.max_pending = max_pending
        self.next_seq: int | None = None
        self.pending: dict[int, tuple[bytes, int, int]] = {}
        self.pending_bytes = 0

    def segment(self, seq: int, data: bytes, ts_us: int, frame: int, syn: bool = False) -> None:
        """A segment of this direction, in capture order."""
        if syn:
            self.next_seq = (seq + 1) % SEQ_MOD
            seq = self.next_seq
        if not data:
            return
        stats = self.stats
        stats.segments += 1
        if self.next_seq is None:  # mid-stream start: the first segment seen begins the stream
            self.next_seq = seq
        ahead = (seq - self.next_seq) % SEQ_MOD
        if ahead == 0 and not self.pending:
            self.next_seq = (seq + len(data)) % SEQ_MOD
            stats.bytes += len(data)
            self.consumer(data, ts_us, frame, seq)
            return
        if ahead >= HALF:  # starts before what was delivered: a retransmission or an overlap
            old = SEQ_MOD - ahead
            if old >= len(data):
                stats.retransmitted += 1
                return
            data, seq, ahead = data[old:], self.next_seq, 0
        if ahead:
            stats.out_of_order += 1
            if seq not in self.pending or len(self.pending[seq][0]) < len(data):
                self.pending_bytes += len(data) - len(self.pending.get(seq, (b"",))[0])
                self.pending[seq] = (data, ts_us, frame)
            if self.pending_bytes > self.max_pending:
                self.give_up_hole()
            return
        self._deliver(data, ts_us, frame, seq)
        self._drain()

    def acknowledged(self, ack: int) -> None:
        """The peer acknowledged up to ``ack``: a hole before it will never be filled."""
        if self.pending and self.next_seq is not None:
            beyond = (ack - self.next_seq) % SEQ_MOD
            if 0 < beyond < HALF:
                self.give_up_hole()

    def give_up_hole(self) -> None:
        """Skip to the first waiting segment: count the gap and tell the consumer."""
        if not self.pending or self.next_seq is None:
            return
        base = self.next_seq
        first = min(self.pending, key=lambda s: (s - base) % SEQ_MOD)
        self.stats.gaps += 1
        self.stats.gap_bytes += (first - base) % SEQ_MOD
        self.gap_handler()
        self.next_seq = first
        self._drain()

    def finish(self) -> None:
        """The flow ended: deliver what waits behind holes."""
        while self.pending:
            self.give_up_hole()

    def _deliver(self, data: bytes, ts_us: int, frame: int, seq: int) -> None:
        self.next_seq = (seq + len(data)) % SEQ_MOD
        self.stats.bytes += len(data)
        self.consumer(data, ts_us, frame, seq)

    def _drain(self) -> None:
        while self.pending and self.next_seq is not None:
            base = self.next_seq
            seq = min(self.pending, key=lambda s: _signed(s - base))
            offset = _signed(seq - base)
            if offset > 0:
                return  # a hole remains before the next waiting segment
            data, ts_us, frame = self.pending.pop(seq)
            self.pending_bytes -= len(data)
            if -offset >= len(data):
                self.stats.retransmitted += 1
                continue
            self._deliver(data[-offset:], ts_us, frame, base)


def _signed(delta: int) -> int:
    """A sequence-number difference in (-2**31, 2**31]."""
    delta %= SEQ_MOD
    return delta - SEQ_MOD if delta >= HALF else delta


@dataclass
class Flow:
    """A connection: its endpoints (client first when known), state and the protocol session."""

    key: tuple[bytes, int, bytes, int]
    client: tuple[bytes, int]
    server: tuple[bytes, int]
    first_ts: int
    last_ts: int
    client_known: bool
    protocol: str | None = None
    session: Any = None
    to_server: Direction | None = None
    to_client: Direction | None = None
    closing: int = 0  # FIN seen per direction (bit 1 to server, bit 2 to client)
    data: dict[str, Any] = field(default_factory=dict)


def flow_key(src: bytes, sport: int, dst: bytes, dport: int) -> tuple[bytes, int, bytes, int]:
    """The same key for both directions of a connection."""
    return (src, sport, dst, dport) if (src, sport) <= (dst, dport) else (dst, dport, src, sport)


Side = tuple[bytes, int, bytes, int]
"""A direction's key: (source address, source port, destination address, destination port)."""


class FlowTable:
    """Flows by key, bounded: the longest idle flows are evicted when ``max_flows`` is reached.

    Besides the canonical key (:func:`flow_key`), each flow is indexed by both directions
    (:attr:`sides`: side key to ``(flow, to_server)``), so a packet finds its flow and its
    direction with one lookup of the key its own header gives.
    """

    def __init__(self, max_flows: int, idle_timeout_us: int, stats: StreamStats) -> None:
        self.max_flows = max_flows
        self.idle_timeout_us = idle_timeout_us
        self.stats = stats
        self.flows: dict[tuple[bytes, int, bytes, int], Flow] = {}
        self.sides: dict[Side, tuple[Flow, bool]] = {}
        self._last_sweep = 0

    def get(self, key: tuple[bytes, int, bytes, int]) -> Flow | None:
        """The flow of a key, if tracked."""
        return self.flows.get(key)

    def add(self, flow: Flow) -> list[Flow]:
        """Track a new flow; returns the flows evicted to make room."""
        evicted: list[Flow] = []
        if len(self.flows) >= self.max_flows:
            idle = sorted(self.flows.values(), key=lambda f: f.last_ts)
            for old in idle[: max(1, self.max_flows // 10)]:
                evicted.append(self._pop(old.key))
            self.stats.evicted_flows += len(evicted)
        self.flows[flow.key] = flow
        self.orient(flow)
        self.stats.flows += 1
        return evicted

    def orient(self, flow: Flow) -> None:
        """(Re)index a flow's two directions after its client and server are (re)decided."""
        client, server = flow.client, flow.server
        self.sides[(*client, *server)] = (flow, True)
        self.sides[(*server, *client)] = (flow, False)

    def remove(self, key: tuple[bytes, int, bytes, int]) -> Flow | None:
        """Stop tracking a flow (it ended)."""
        return self._pop(key) if key in self.flows else None

    def expire(self, now_us: int) -> Iterator[Flow]:
        """Flows idle longer than the timeout, removed; checked at most once a second of capture."""
        if now_us - self._last_sweep < 1_000_000:
            return
        self._last_sweep = now_us
        limit = now_us - self.idle_timeout_us
        closed = now_us - CLOSED_LINGER_US
        for key in [
            k for k, f in self.flows.items() if f.last_ts < (closed if f.closing else limit)
        ]:
            yield self._pop(key)

    def drain(self) -> Iterator[Flow]:
        """Every flow still tracked, removed (end of capture)."""
        while self.flows:
            _, flow = self.flows.popitem()
            self._unindex(flow)
            yield flow

    def _pop(self, key: tuple[bytes, int, bytes, int]) -> Flow:
        flow = self.flows.pop(key)
        self._unindex(flow)
        return flow

    def _unindex(self, flow: Flow) -> None:
        client, server = flow.client, flow.server
        self.sides.pop((*client, *server), None)
        self.sides.pop((*server, *client), None)
