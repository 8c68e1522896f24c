"""Modbus/TCP sessions: ADUs cut from the reassembled stream, requests paired with responses,
one ECS event per message.

Every ADU on the wire becomes exactly one event (``event.dataset: ics.modbus``) in the order its
last byte was captured. A response carries its request's fields (``modbus.request.*``) and the
response time; a response with no request in flight is flagged ``modbus.orphan``. A request left
unanswered for ``collect.response_timeout_ms`` (or when its flow ends) adds one
``unanswered_request`` event that names it, timed at the deadline. Bytes on a Modbus port that
are not Modbus/TCP give one ``protocol_violation`` event per direction, never garbage fields.
A PDU too short for its function code still gives its event, flagged ``malformed``, with its raw
bytes, and is counted as a parse error with its location.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from collectors.modbus import (
    MAX_LENGTH_FIELD,
    READ_FUNCTIONS,
    WRITE_FUNCTIONS,
    dissect_pdu,
    frame_length,
    plausible_adu,
)
from collectors.normalize import FlowContext
from collectors.session import StreamSession
from soc.errors import DissectError
from soc.event import event_id, stream_event_id
from soc.types import Event

DATASET = "ics.modbus"
_ECHOES = frozenset({5, 6, 15, 16, 22})  # responses that repeat the request's address
MAX_IN_FLIGHT = 1024  # requests awaiting a response per flow; beyond, the oldest are reported
_MBAP = struct.Struct("!HHHB")


@dataclass
class ModbusStats:
    """Counts of one collection run."""

    requests: int = 0
    responses: int = 0
    exceptions: int = 0
    orphans: int = 0
    unanswered: int = 0
    violations: int = 0
    malformed: int = 0
    resyncs: int = 0  # times the framing skipped bytes to find an ADU header (mid-stream, gaps)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (location, message), first 1000


@dataclass
class _InFlight:
    ts_us: int
    frame: int
    event_id: str
    function_code: int
    request: dict[str, Any]


class ModbusSession(StreamSession):
    """One Modbus/TCP connection: framing both directions, pairing, events."""

    DATASET = DATASET
    NAMESPACE = "modbus"
    HEADER = 6
    NOT_PROTOCOL = "not_modbus"
    VIOLATION_MESSAGE = "bytes on a Modbus port that are not Modbus/TCP (protocol id or length)"

    def __init__(
        self,
        context: FlowContext,
        emit: Callable[[Event], None],
        stats: ModbusStats,
        observer: dict[str, Any],
        location: Callable[[int], str],
        timeout_us: int,
    ) -> None:
        super().__init__(context, emit, stats, observer, location, timeout_us)
        self.stats: ModbusStats = stats
        #: requests awaiting a response by (transaction id, unit id), oldest first
        self.in_flight: dict[tuple[int, int], list[_InFlight]] = {}
        self.in_flight_count = 0

    # -- stream ------------------------------------------------------------------------------

    def data(self, to_server: bool, data: bytes, ts_us: int, frame: int, seq: int) -> None:
        """In-order bytes of one direction (``seq``: the first byte's TCP sequence number)."""
        size = len(data)
        if (  # the usual case first: one whole ADU in one segment, nothing buffered
            not self.buffers[to_server]
            and size >= 8
            and not data[2]
            and not data[3]
            and ((data[4] << 8) | data[5]) + 6 == size
            and size <= MAX_LENGTH_FIELD + 6
        ):
            self.synced[to_server] = True
            self._adu(to_server, data, ts_us, frame, seq)
            return
        self._cut(to_server, data, ts_us, frame, seq)

    def _size(self, head: bytes) -> int:
        return frame_length(head)

    def _resync(self, buffer: bytes, offset: int) -> int:
        return _resync(buffer, offset)

    def _take(self, to_server: bool, data: bytes, ts_us: int, frame: int, seq: int) -> None:
        self._adu(to_server, data, ts_us, frame, seq)

    def _violation_fields(self, data: bytes) -> dict[str, Any]:
        return {"pdu_type": "protocol_violation", **super()._violation_fields(data)}

    def expire(self, now_us: int) -> None:
        """Report requests whose response is overdue."""
        if not self.in_flight_count:
            return
        limit = now_us - self.timeout_us
        for key in list(self.in_flight):
            queue = self.in_flight[key]
            while queue and queue[0].ts_us < limit:
                self._unanswered(queue.pop(0))
                self.in_flight_count -= 1
            if not queue:
                del self.in_flight[key]

    def close(self) -> None:
        """The flow ended: every request still in flight is unanswered."""
        for queue in self.in_flight.values():
            for pending in queue:
                self._unanswered(pending)
        self.in_flight.clear()
        self.in_flight_count = 0

    # -- messages ----------------------------------------------------------------------------

    def _adu(self, to_server: bool, adu: bytes, ts_us: int, frame: int, seq: int) -> None:
        tid, _, length, unit = _MBAP.unpack_from(adu)
        eid = stream_event_id(ts_us, self.tags[to_server], seq)
        pending = None if to_server else self._pair(tid, unit, adu)
        try:
            record = dissect_pdu(
                adu[7:],
                request=to_server,
                quantity=pending.request.get("quantity") if pending else None,
            )
        except DissectError as exc:
            self.stats.malformed += 1
            self._error(frame, f"Modbus {'request' if to_server else 'response'}: {exc.message}")
            code = adu[7] if len(adu) > 7 else 0
            record = {"function_code": code & 0x7F, "function_name": "unknown",
                      "raw": adu[8:].hex(), "anomalies": ["malformed"]}  # fmt: skip
        code = record["function_code"]
        if to_server:
            self.stats.requests += 1
            outcome = "unknown"
            record["pdu_type"] = "request"
            self._track(tid, unit, ts_us, frame, eid, code, record.get("request"))
        else:
            outcome = self._response(record, pending, ts_us)
        if record["function_name"] == "unknown" and "anomalies" not in record:
            record["anomalies"] = ["unknown_function_code"]
        doc = self.context.event(to_server, ts_us, eid, DATASET, self.observer)
        event = doc["event"]
        event["action"] = record["function_name"]
        event["type"] = ["protocol", "access" if code in _ACCESS else "info"]
        event["outcome"] = outcome
        doc["modbus"] = {"transaction_id": tid, "protocol_id": 0, "length": length,
                         "unit_id": unit, "frame": frame, **record}  # fmt: skip
        self.emit(doc)

    def _response(self, record: dict[str, Any], pending: _InFlight | None, ts_us: int) -> str:
        """Pairing fields of a response or exception; its ``event.outcome``."""
        self.stats.responses += 1
        if "exception_code" in record:
            self.stats.exceptions += 1
            record["pdu_type"] = "exception"
            outcome = "failure"
        else:
            record["pdu_type"] = "response"
            outcome = "success"
        if pending is None:
            self.stats.orphans += 1
            record["orphan"] = True
            return outcome
        record["response_time_us"] = ts_us - pending.ts_us
        record["request_frame"] = pending.frame
        record["request_event_id"] = pending.event_id
        if pending.request:
            record["request"] = pending.request
        if pending.function_code != record["function_code"]:
            record.setdefault("anomalies", []).append("function_code_mismatch")
        return outcome

    def _pair(self, tid: int, unit: int, adu: bytes) -> _InFlight | None:
        """The request a response answers: the oldest in flight with its transaction and unit
        ids; for the write codes whose response echoes the address, the oldest with that address
        (a second response to an answered write is then an orphan, not a wrong pair)."""
        queue = self.in_flight.get((tid, unit))
        if not queue:
            return None
        index = 0
        if len(adu) >= 10 and adu[7] in _ECHOES:
            address = (adu[8] << 8) | adu[9]
            index = next(
                (i for i, r in enumerate(queue) if r.request.get("address") == address), -1
            )
            if index < 0:
                return None
        pending = queue.pop(index)
        self.in_flight_count -= 1
        if not queue:
            del self.in_flight[(tid, unit)]
        return pending

    def _track(
        self,
        tid: int,
        unit: int,
        ts_us: int,
        frame: int,
        eid: str,
        code: int,
        request: dict[str, Any] | None,
    ) -> None:
        if self.in_flight_count >= MAX_IN_FLIGHT:  # report the oldest rather than grow
            key = min(self.in_flight, key=lambda k: self.in_flight[k][0].ts_us)
            self._unanswered(self.in_flight[key].pop(0))
            self.in_flight_count -= 1
            if not self.in_flight[key]:
                del self.in_flight[key]
        summary = {k: v for k, v in request.items() if k != "values"} if request else {}
        self.in_flight.setdefault((tid, unit), []).append(
            _InFlight(ts_us, frame, eid, code, summary)
        )
        self.in_flight_count += 1

    def _unanswered(self, pending: _InFlight) -> None:
        self.stats.unanswered += 1
        ts_us = pending.ts_us + self.timeout_us
        eid = event_id(ts_us, DATASET, "unanswered", pending.event_id)
        doc = self.context.event(True, ts_us, eid, DATASET, self.observer)
        event = doc["event"]
        event.update({"action": "unanswered_request", "type": ["protocol", "info"],
                      "outcome": "failure"})  # fmt: skip
        doc["modbus"] = {
            "function_code": pending.function_code,
            "pdu_type": "unanswered_request",
            "request_frame": pending.frame,
            "request_event_id": pending.event_id,
            "request": pending.request,
            "response_timeout_us": self.timeout_us,
        }
        self.emit(doc)


def _resync(buffer: bytes, offset: int) -> int:
    """Bytes to skip from ``offset`` to a point where the rest is whole, plausible ADUs; -1 if none."""
    for skip in range(1, min(len(buffer) - offset, 260)):
        if plausible_adu(buffer[offset + skip :]):
            return skip
    return -1


_ACCESS = READ_FUNCTIONS | WRITE_FUNCTIONS  # ECS event.type "access": reads and writes of data
