"""OPC UA Binary sessions: chunks cut from the reassembled stream, messages reassembled from
their chunks, requests paired with responses, one ECS event per message.

- **One event per message** (``event.dataset: ics.opcua``), in the order its last chunk was
  captured: HEL, ACK, ERR, RHE, and every OPN, MSG and CLO once its final chunk arrives
  (``opcua.chunks`` counts them; an abort chunk gives an ``abort`` event with its status code and
  reason). Chunks are reassembled per direction, secure channel and request id.
- **Services** are decoded by :mod:`collectors.opcua_services` (the lean decoder built from
  asyncua's type definitions); the event names the service (``opcua.service``, e.g. ``ReadRequest``) and its fields. A body that does not
  decode on a channel whose security policy is not None (Sign and Encrypt, or asymmetrically
  encrypted OPN) is recorded with its metadata and ``opcua.encrypted: true``; on a channel known
  to be unsecured it is ``malformed`` and a counted parse error.
- **Pairing.** A response carries its request's service, event id, frame and the response time;
  requests are matched by secure channel and request id. A request left unanswered for
  ``collect.response_timeout_ms`` (or at the end of its flow) gives one ``unanswered_request``
  event; not CloseSecureChannel (it has no response) nor Publish (the server holds it until it
  has notifications). An OpenSecureChannel response is paired with a request sent on channel 0
  (before the server assigned the channel id). A response with no request seen (a capture that starts mid-session) is decoded all the
  same and flagged ``orphan``.
- **Sessions.** A request's AuthenticationToken (never emitted: it is a bearer secret) names
  the session CreateSession opened; requests and responses carry ``opcua.session.session_id``
  and the identity ActivateSession activated it with.
- **Mid-session captures** (no HEL or OPN seen): the stream is resynchronised on the first
  plausible chunk header and every message that decodes is kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from collectors.normalize import FlowContext
from collectors.opcua import (
    HEADER_SIZE,
    NONE_POLICY,
    SECURITY_MODES,
    OpcuaStats,
    chunk_size,
    connection_fields,
    parse_chunk,
)
from collectors.opcua_services import decode_service, service_fields, snake_case
from collectors.opcua_services import node as node_text
from collectors.session import StreamSession
from soc.errors import DissectError
from soc.event import event_id, stream_event_id
from soc.types import Event

DATASET = "ics.opcua"
MAX_IN_FLIGHT = 4096  # requests awaiting a response per flow
MAX_PARTIAL = 64  # messages being reassembled per flow
MAX_MESSAGE = 1 << 26  # 64 MiB: a message reassembled beyond is dropped (counted)
MAX_SESSIONS = 1024  # sessions followed per flow
#: Requests without a response (CLO), and requests a server holds until it has notifications.
_NO_ANSWER = frozenset({"CloseSecureChannelRequest"})
_HELD = frozenset({"PublishRequest"})
_ACTIONS = {"HEL": "hello", "ACK": "acknowledge", "ERR": "error", "RHE": "reverse_hello"}
_ACCESS = ("ReadRequest", "WriteRequest", "CallRequest", "HistoryReadRequest",
           "HistoryUpdateRequest", "AddNodesRequest", "DeleteNodesRequest")  # fmt: skip


@dataclass
class _InFlight:
    ts_us: int
    frame: int
    event_id: str
    service: str
    token: str | None = None  # the session's AuthenticationToken (never emitted: a secret)
    session: dict[str, Any] | None = None  # what the request said of its session

    @property
    def held(self) -> bool:
        """A request the server keeps until it has something to say (no timeout applies)."""
        return self.service in _HELD


@dataclass
class _Partial:
    chunks: list[bytes]
    size: int
    first_frame: int


class OpcuaSession(StreamSession):
    """One OPC UA connection: framing both directions, reassembly, pairing, events."""

    DATASET = DATASET
    NAMESPACE = "opcua"
    HEADER = HEADER_SIZE
    NOT_PROTOCOL = "not_opcua"
    VIOLATION_MESSAGE = "bytes on an OPC UA port that are not OPC UA Binary chunks"

    def __init__(
        self,
        context: FlowContext,
        emit: Callable[[Event], None],
        stats: OpcuaStats,
        observer: dict[str, Any],
        location: Callable[[int], str],
        timeout_us: int,
    ) -> None:
        super().__init__(context, emit, stats, observer, location, timeout_us)
        self.stats: OpcuaStats = stats
        self.policies: dict[int, str] = {}  # secure channel -> security policy URI (from OPN)
        self.modes: dict[int, str] = {}  # secure channel -> security mode (OPN request)
        self.partial: dict[tuple[bool, int, int], _Partial] = {}
        self.in_flight: dict[tuple[int, int], _InFlight] = {}
        #: AuthenticationToken -> the session it stands for: its id and name (CreateSession),
        #: the identity that activated it (ActivateSession)
        self.sessions: dict[str, dict[str, Any]] = {}

    # -- stream ------------------------------------------------------------------------------

    def _size(self, head: bytes) -> int:
        return chunk_size(head)

    def _resync(self, buffer: bytes, offset: int) -> int:
        return _resync(buffer, offset)

    def _take(self, to_server: bool, data: bytes, ts_us: int, frame: int, seq: int) -> None:
        self._chunk(to_server, data, ts_us, frame, seq)

    def gap(self, to_server: bool) -> None:
        """Bytes were lost: drop the partial chunk and messages; resynchronise."""
        super().gap(to_server)
        for key in [k for k in self.partial if k[0] == to_server]:
            del self.partial[key]

    def expire(self, now_us: int) -> None:
        """Report requests whose response is overdue."""
        if not self.in_flight:
            return
        limit = now_us - self.timeout_us
        overdue = [k for k, v in self.in_flight.items() if v.ts_us < limit and not v.held]
        for key in overdue:
            self._unanswered(key, self.in_flight.pop(key))

    def close(self) -> None:
        """The flow ended: every request still in flight is unanswered."""
        for key, pending in list(self.in_flight.items()):
            if not pending.held:
                self._unanswered(key, pending)
        self.in_flight.clear()
        self.partial.clear()

    # -- chunks and messages -----------------------------------------------------------------

    def _chunk(self, to_server: bool, data: bytes, ts_us: int, frame: int, seq: int) -> None:
        eid = stream_event_id(ts_us, self.tags[to_server], seq)
        try:
            chunk = parse_chunk(data)
        except DissectError as exc:
            self._malformed(to_server, data, ts_us, frame, eid, exc.message)
            return
        fields: dict[str, Any] = {
            "message_type": chunk.message_type,
            "chunk_type": chunk.chunk_type,
            "message_size": chunk.size,
            "frame": frame,
        }
        kind = chunk.message_type
        if kind in _ACTIONS:
            try:
                fields.update(connection_fields(kind, chunk.body))
            except DissectError as exc:
                self._malformed(to_server, data, ts_us, frame, eid, exc.message)
                return
            outcome = "failure" if kind == "ERR" else "success"
            self._emit(to_server, ts_us, eid, _ACTIONS[kind], fields, outcome, "connection")
            return
        channel = chunk.secure_channel_id or 0
        fields["secure_channel_id"] = channel
        for name in ("token_id", "sequence_number", "request_id"):
            if getattr(chunk, name) is not None:
                fields[name] = getattr(chunk, name)
        if kind == "OPN":
            fields["security_policy_uri"] = chunk.security_policy_uri
            fields["sender_certificate_length"] = chunk.sender_certificate_length
            fields["receiver_thumbprint_length"] = chunk.receiver_thumbprint_length
            if chunk.security_policy_uri is not None:
                self.policies[channel] = chunk.security_policy_uri
            if chunk.request_id is None:  # asymmetrically encrypted: no readable sequence header
                self.stats.encrypted += 1
                fields["encrypted"] = True
                self._message_event(to_server, ts_us, eid, fields, None)
                return
        elif channel in self.policies:
            fields["security_policy_uri"] = self.policies[channel]
        if channel in self.modes:
            fields["security_mode"] = self.modes[channel]
        key = (to_server, channel, chunk.request_id or 0)
        if chunk.chunk_type == "C":
            self._intermediate(key, chunk.body, frame)
            return
        partial = self.partial.pop(key, None)
        if chunk.chunk_type == "A":
            self.stats.aborted += 1
            with contextlib.suppress(DissectError):
                fields.update(connection_fields("ERR", chunk.body))
            fields["chunks"] = (len(partial.chunks) if partial else 0) + 1
            self._emit(to_server, ts_us, eid, "abort", fields, "failure", "connection")
            return
        body = chunk.body if partial is None else b"".join([*partial.chunks, chunk.body])
        fields["chunks"] = (len(partial.chunks) if partial else 0) + 1
        if partial is not None:
            fields["first_frame"] = partial.first_frame
        self._message(to_server, ts_us, frame, eid, fields, body, channel)

    def _intermediate(self, key: tuple[bool, int, int], body: bytes, frame: int) -> None:
        partial = self.partial.get(key)
        if partial is None:
            if len(self.partial) >= MAX_PARTIAL:
                self.partial.pop(next(iter(self.partial)))
            partial = self.partial[key] = _Partial([], 0, frame)
        partial.chunks.append(body)
        partial.size += len(body)
        if partial.size > MAX_MESSAGE:
            del self.partial[key]
            self._error(frame, f"OPC UA message over {MAX_MESSAGE} bytes in chunks: dropped")

    def _message(
        self,
        to_server: bool,
        ts_us: int,
        frame: int,
        eid: str,
        fields: dict[str, Any],
        body: bytes,
        channel: int,
    ) -> None:
        policy = self.policies.get(channel)
        if self.modes.get(channel) == "SignAndEncrypt":
            self.stats.encrypted += 1
            fields["encrypted"] = True
            self._message_event(to_server, ts_us, eid, fields, None)
            return
        try:
            service = decode_service(body)
        except DissectError as exc:
            if policy is not None and policy != NONE_POLICY:
                self.stats.encrypted += 1
                fields["encrypted"] = True
                self._message_event(to_server, ts_us, eid, fields, None)
                return
            self.stats.malformed += 1
            self._error(frame, f"OPC UA {fields['message_type']}: {exc.message}")
            fields["anomalies"] = ["malformed"]
            fields["raw"] = body[:64].hex()
            self._message_event(to_server, ts_us, eid, fields, None)
            return
        record = service_fields(service)
        if service.value is None:  # the header decoded, not the rest: counted, not guessed
            self.stats.partial += 1
            self._error(frame, f"OPC UA {fields['message_type']}: {service.error}")
        if service.trailing:
            record["trailing_bytes"] = service.trailing  # a signature (Sign mode) or padding
        if service.name == "OpenSecureChannelRequest" and "security_mode" in record:
            self.modes[channel] = record["security_mode"]
            fields["security_mode"] = record.pop("security_mode")
        fields.update(record)
        token = None
        if service.name.endswith("Request"):
            header = service.header or getattr(service.value, "RequestHeader", None)
            token = _token(getattr(header, "AuthenticationToken", None))
            session = self.sessions.get(token) if token is not None else None
            if session is not None:
                fields["session"] = {**session, **fields.get("session", {})}
        self._message_event(to_server, ts_us, eid, fields, frame, token, service.value)

    def _message_event(
        self,
        to_server: bool,
        ts_us: int,
        eid: str,
        fields: dict[str, Any],
        frame: int | None,
        token: str | None = None,
        value: Any = None,
    ) -> None:
        service = fields.get("service")
        channel, request = fields.get("secure_channel_id", 0), fields.get("request_id")
        outcome = "unknown"
        if service is None:
            action = "encrypted_message" if fields.get("encrypted") else "malformed_message"
        elif service.endswith("Request"):
            action = service[: -len("Request")]
            self.stats.requests += 1
            if request is not None and service not in _NO_ANSWER:
                pending = _InFlight(
                    ts_us, fields["frame"], eid, service, token, fields.get("session")
                )
                self._track((channel, request), pending)
        else:
            action = service[: -len("Response")] if service.endswith("Response") else service
            self.stats.responses += 1
            if service == "ServiceFault":
                self.stats.faults += 1
            outcome = (
                "success"
                if fields.get("status_code", "0x00000000")[2:4] in ("00", "40")
                else "failure"
            )
            pending = None
            if request is not None:
                pending = self.in_flight.pop((channel, request), None)
                if pending is None and service == "OpenSecureChannelResponse":
                    pending = self.in_flight.pop((0, request), None)  # asked before it had an id
            if pending is None:
                self.stats.orphans += 1
                fields["orphan"] = True
            else:
                fields["response_time_us"] = ts_us - pending.ts_us
                fields["request_frame"] = pending.frame
                fields["request_event_id"] = pending.event_id
                fields["request_service"] = pending.service
                if outcome == "success" and value is not None:
                    self._follow_session(service, pending, value)
                if pending.session:
                    fields["session"] = {**pending.session, **fields.get("session", {})}
        kind = "access" if service in _ACCESS else "info"
        self._emit(to_server, ts_us, eid, snake_case(action), fields, outcome, kind)

    def _follow_session(self, service: str, request: _InFlight, value: Any) -> None:
        """A session created, activated (with an identity) or closed, as its response says."""
        if service == "CreateSessionResponse":
            token = _token(getattr(value.Parameters, "AuthenticationToken", None))
            if token is not None:
                asked = request.session or {}
                session = {"session_id": node_text(value.Parameters.SessionId)}
                if asked.get("name") is not None:
                    session["name"] = asked["name"]
                if len(self.sessions) >= MAX_SESSIONS:  # forget the oldest rather than grow
                    del self.sessions[next(iter(self.sessions))]
                self.sessions[token] = session
        elif service == "ActivateSessionResponse" and request.token is not None:
            session = self.sessions.setdefault(request.token, {})
            for key in ("identity_token", "user_name", "policy_id"):
                if request.session and key in request.session:
                    session[key] = request.session[key]
                else:
                    session.pop(key, None)
        elif service == "CloseSessionResponse" and request.token is not None:
            self.sessions.pop(request.token, None)

    def _track(self, key: tuple[int, int], pending: _InFlight) -> None:
        if len(self.in_flight) >= MAX_IN_FLIGHT:  # report the oldest rather than grow
            oldest = min(self.in_flight, key=lambda k: self.in_flight[k].ts_us)
            self._unanswered(oldest, self.in_flight.pop(oldest))
        self.in_flight[key] = pending

    def _emit(
        self,
        to_server: bool,
        ts_us: int,
        eid: str,
        action: str,
        fields: dict[str, Any],
        outcome: str,
        kind: str,
    ) -> None:
        self.stats.messages += 1
        doc = self.context.event(to_server, ts_us, eid, DATASET, self.observer)
        event = doc["event"]
        event["action"] = action
        event["type"] = ["protocol", kind]
        event["outcome"] = outcome
        doc["opcua"] = fields
        self.emit(doc)

    def _unanswered(self, key: tuple[int, int], pending: _InFlight) -> None:
        self.stats.unanswered += 1
        ts_us = pending.ts_us + self.timeout_us
        eid = event_id(ts_us, DATASET, "unanswered", pending.event_id)
        doc = self.context.event(True, ts_us, eid, DATASET, self.observer)
        doc["event"].update(
            {"action": "unanswered_request", "type": ["protocol", "info"], "outcome": "failure"}
        )
        doc["opcua"] = {
            "message_type": "MSG",
            "secure_channel_id": key[0],
            "request_id": key[1],
            "request_service": pending.service,
            "request_frame": pending.frame,
            "request_event_id": pending.event_id,
            "response_timeout_us": self.timeout_us,
        }
        self.emit(doc)

    def _malformed(
        self, to_server: bool, data: bytes, ts_us: int, frame: int, eid: str, message: str
    ) -> None:
        self.stats.malformed += 1
        self._error(frame, f"OPC UA chunk: {message}")
        fields = {
            "message_type": data[:3].decode("latin-1"),
            "message_size": len(data),
            "frame": frame,
            "anomalies": ["malformed"],
            "raw": data[:64].hex(),
        }
        self._emit(to_server, ts_us, eid, "malformed_message", fields, "failure", "info")


def _token(value: Any) -> str | None:
    """An AuthenticationToken as a key (None when null: before a session exists)."""
    text = node_text(value)
    return None if text in (None, "i=0") else text


def _resync(buffer: bytes, offset: int) -> int:
    """Bytes to skip from ``offset`` to the next plausible chunk header; -1 if none within 64 KiB."""
    limit = min(len(buffer) - HEADER_SIZE, offset + 65536)
    for start in range(offset + 1, limit + 1):
        if chunk_size(buffer[start : start + HEADER_SIZE]) > 0:
            return start - offset
    return -1


__all__ = ["DATASET", "SECURITY_MODES", "OpcuaSession", "OpcuaStats"]
