"""What every protocol session over TCP shares: the reassembled bytes of each direction cut into
messages, resynchronisation, protocol violations, errors with their location.

A protocol's session (:class:`collectors.modbus_events.ModbusSession`,
:class:`collectors.opcua_events.OpcuaSession`) says how long the message starting with some
bytes is (:meth:`StreamSession._size`: 0 when more bytes are needed, -1 when the bytes are not a
message header), where the next plausible header is (:meth:`StreamSession._resync`), and what a
whole message gives (:meth:`StreamSession._take`). Bytes that are not the protocol, once the
stream was in step (or with no plausible header ahead), give one ``protocol_violation`` event per
direction and count as parse errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from collectors.normalize import FlowContext
from soc.event import event_id
from soc.types import Event


class StreamSession:
    """Framing of both directions of one connection (see the module's documentation)."""

    DATASET = ""  # event.dataset of the protocol's events
    NAMESPACE = ""  # the events' protocol object: modbus, opcua
    HEADER = 8  # bytes :meth:`_size` needs to read a message's length
    NOT_PROTOCOL = ""  # the violation's anomaly and message
    VIOLATION_MESSAGE = ""

    def __init__(
        self,
        context: FlowContext,
        emit: Callable[[Event], None],
        stats: Any,
        observer: dict[str, Any],
        location: Callable[[int], str],
        timeout_us: int,
    ) -> None:
        self.context = context
        self.emit = emit
        self.stats = stats
        self.observer = observer
        self.location = location
        self.timeout_us = timeout_us
        self.buffers = {True: b"", False: b""}
        self.buffer_seq = {True: 0, False: 0}
        #: a message larger than the bytes at hand, collected in parts (joined once, when whole:
        #: appending each segment to one buffer would copy it again and again)
        self.parts: dict[bool, list[bytes]] = {True: [], False: []}
        self.collected = {True: 0, False: 0}
        self.wanted = {True: 0, False: 0}
        self.parts_seq = {True: 0, False: 0}
        self.synced = {True: False, False: False}  # a message parsed since the start or a gap
        self.violated = {True: False, False: False}
        self.tags = {d: context.stream_tag(self.DATASET, d) for d in (True, False)}

    # -- what a protocol says ------------------------------------------------------------------

    def _size(self, head: bytes) -> int:
        """The length of the message starting with ``head``: 0 for more bytes, -1 for none."""
        raise NotImplementedError

    def _resync(self, buffer: bytes, offset: int) -> int:
        """Bytes to skip from ``offset`` to a plausible message; -1 if none."""
        raise NotImplementedError

    def _take(self, to_server: bool, data: bytes, ts_us: int, frame: int, seq: int) -> None:
        """One whole message of the stream (``seq``: its first byte's TCP sequence number)."""
        raise NotImplementedError

    def _violation_fields(self, data: bytes) -> dict[str, Any]:
        """The protocol object of a violation event."""
        return {"anomalies": [self.NOT_PROTOCOL], "raw": data[:64].hex()}

    # -- the stream ----------------------------------------------------------------------------

    def data(self, to_server: bool, data: bytes, ts_us: int, frame: int, seq: int) -> None:
        """In-order bytes of one direction (``seq``: the first byte's TCP sequence number)."""
        self._cut(to_server, data, ts_us, frame, seq)

    def _cut(self, to_server: bool, data: bytes, ts_us: int, frame: int, seq: int) -> None:
        parts = self.parts[to_server]
        if parts:  # a large message being collected
            parts.append(data)
            self.collected[to_server] += len(data)
            if self.collected[to_server] < self.wanted[to_server]:
                return
            start_seq, buffer = self.parts_seq[to_server], b"".join(parts)
            parts.clear()
        elif self.buffers[to_server]:
            start_seq, buffer = self.buffer_seq[to_server], self.buffers[to_server] + data
        else:
            start_seq, buffer = seq, data
        offset, header = 0, self.HEADER
        size = 0
        while True:
            size = self._size(buffer[offset : offset + header])
            if size == 0 or offset + size > len(buffer):
                break
            if size < 0:
                skip = -1 if self.synced[to_server] else self._resync(buffer, offset)
                if skip > 0:  # a capture that starts mid-stream, or resumes after a gap
                    self.stats.resyncs += 1
                    offset += skip
                    continue
                self._violation(to_server, buffer[offset:], ts_us, frame, start_seq + offset)
                offset = len(buffer)
                break
            self.synced[to_server] = True
            self._take(to_server, buffer[offset : offset + size], ts_us, frame, start_seq + offset)
            offset += size
        rest_seq = (start_seq + offset) % (1 << 32)
        if size > 0 and offset + size > len(buffer):  # the head of a longer message: collect it
            self.parts[to_server] = [buffer[offset:]]
            self.collected[to_server] = len(buffer) - offset
            self.wanted[to_server] = size
            self.parts_seq[to_server] = rest_seq
            self.buffers[to_server] = b""
            return
        self.buffers[to_server] = buffer[offset:]
        self.buffer_seq[to_server] = rest_seq

    def pending(self, to_server: bool) -> tuple[bytes, int]:
        """The bytes of one direction not yet a whole message, and their first byte's sequence
        number (for a flow's end)."""
        if self.parts[to_server]:
            return b"".join(self.parts[to_server]), self.parts_seq[to_server]
        return self.buffers[to_server], self.buffer_seq[to_server]

    def gap(self, to_server: bool) -> None:
        """Bytes were lost: drop the partial message; the next segment starts afresh."""
        self.buffers[to_server] = b""
        self.parts[to_server] = []
        self.synced[to_server] = False

    def _violation(self, to_server: bool, data: bytes, ts_us: int, frame: int, seq: int) -> None:
        self.stats.violations += 1
        self._error(frame, self.VIOLATION_MESSAGE)
        if self.violated[to_server]:
            return
        self.violated[to_server] = True
        eid = event_id(ts_us, self.DATASET, self.context.community_id, "violation", to_server, seq)
        doc = self.context.event(to_server, ts_us, eid, self.DATASET, self.observer)
        doc["event"].update(
            {"action": "protocol_violation", "type": ["protocol", "info"], "outcome": "failure"}
        )
        doc[self.NAMESPACE] = self._violation_fields(data)
        self.emit(doc)

    def _error(self, frame: int, message: str) -> None:
        if len(self.stats.errors) < 1000:
            self.stats.errors.append((self.location(frame), message))
