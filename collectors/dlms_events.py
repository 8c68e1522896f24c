"""DLMS/COSEM sessions: wrapper PDUs or HDLC frames cut from TCP streams or UDP datagrams, HDLC
segments and GET data blocks reassembled, requests paired with responses, one ECS event per APDU.

- **Framing.** The first bytes of each message of a direction say its framing: the IEC
  62056-4-7 wrapper (``00 01``) or HDLC (``7E``); a TCP stream may carry either. Frames whose
  opening flag is the previous frame's closing flag (IEC 62056-46 allows one shared flag) are
  accepted, and so are extra flags between frames. A UDP datagram holds one wrapper PDU, one
  or more HDLC frames, an APDU behind the 3-byte IEC 61334-4-32 LLC header (``dlms.framing:
  iec_61334_4_32_llc``) or a bare APDU (``apdu``) (:meth:`DlmsSession.datagram`). A stream that starts mid-message is
  resynchronised on the next wrapper header, or HDLC frame with a good FCS.
- **One event per APDU** (``event.dataset: ics.dlms``, ``event.action`` the snake_case APDU
  name, :data:`collectors.dlms.APDU_NAMES`), once its HDLC segments are reassembled; the event
  carries ``dlms.wrapper.*`` or ``dlms.hdlc.*`` (of the last frame) and ``dlms.hdlc.segments``.
  HDLC link frames with no APDU: SNRM, UA, DISC, DM and FRMR give one event each (action
  ``hdlc_snrm``, ``hdlc_ua``...) with ``dlms.hdlc.*`` (UA/SNRM with their negotiated
  parameters); RR and RNR (flow control, one per segment) are only counted
  (``DlmsStats.link_frames``). An HDLC frame whose HCS or FCS is wrong gives one
  ``hdlc_frame`` event flagged ``bad_hcs``/``bad_fcs`` and is not used.
- **Malformed APDUs** give their event all the same (action the APDU name when the tag is known,
  else ``malformed``) with ``dlms.anomalies: [malformed]``, ``dlms.raw`` (first 64 bytes, hex),
  and a counted parse error with its location. No library call can raise past this module.
- **Ciphered APDUs** are recorded with their security header (``dlms.encrypted: true``,
  ``dlms.security_control``, ``dlms.security_suite``, its ``authentication`` and ``encryption``
  flags, ``dlms.system_title``, ``dlms.invocation_counter``); the sender's system title is the
  one its AARQ (calling-AP-title) or AARE (responding-AP-title) named, or the general-ciphering
  APDU's own. They are decrypted when :attr:`DlmsSession.keys` (system title -> (block cipher
  key, authentication key)) knows the title: the event is then the plain APDU's (its action,
  fields, pairing) with ``dlms.decrypted: true`` and ``dlms.ciphered_apdu_type``. APDUs
  protected by authentication only are read without keys.
- **Direction.** A request sent by the server or a response sent by the client (a fuzzer, a
  spoofed or misrouted APDU) is flagged ``request_from_server`` / ``response_from_client`` in
  ``dlms.anomalies``.
- **Pairing.** GET, SET, ACTION, AARQ and RLRQ requests are paired with their responses by
  service and invoke id per connection (ciphered ones without keys in order); a response carries
  ``dlms.request_event_id``, ``dlms.request_frame``, ``dlms.response_time_us`` and the
  request's summary (``dlms.request``), and the request's ``class_id``, ``obis``,
  ``attribute`` or ``method`` at its top level; one with no request is ``dlms.orphan``. Requests left
  unanswered for ``collect.response_timeout_ms`` (or at the flow's end) give an
  ``unanswered_request`` event. A response answers the newest request of its service and invoke
  id (clients reuse invoke ids; an older request with the same id was abandoned), an
  ExceptionResponse the newest request in flight.
- **Meter readings.** A GET response of a register's value or a load profile's buffer gives
  ``energy.readings`` (see :func:`collectors.dlms.readings`): scaler and unit come from a GET of
  the register's attribute 3 seen earlier on the connection, a profile's columns and period
  from its attributes 3 and 4. ``energy.meter_id`` names the meter: its logical device name
  (0-0:42.0.0) or device id (0-0:96.1.0) read on the connection, else its system title. A DataNotification's body gives
  the (OBIS, value) pairs it pushes (:func:`collectors.dlms.notification_readings`).
- **Security-relevant operations** (``dlms.security_relevant: true``,
  ``dlms.security_action``): disconnect control (class 70) methods and control SETs, image
  transfer (class 18), clock SETs and adjustments (class 8), security setup (class 64),
  association secrets (class 15) and script executions (class 9 method 1: the meter reset and
  tariff scripts). A response carries its request's flag.
- **Secrets never emitted**: LLS passwords, HLS challenges and dedicated keys appear as their
  presence and length; the values of secret-carrying SETs and ACTIONs (the LLS secret, HLS
  secret change, HLS pass 3 and 4 proofs and their response's return data, key transfer) as
  ``{"redacted": true}``; the raw hex of malformed APDUs and violations has its authentication
  values zeroed (:func:`collectors.dlms.scrub`). The dedicated key of a deciphered
  glo-InitiateRequest is kept in the session, never emitted, to decipher the association's ded-
  APDUs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from collectors import dlms
from collectors.normalize import FlowContext
from collectors.session import StreamSession
from soc.errors import DissectError
from soc.event import event_id, stream_event_id
from soc.types import Event

DATASET = "ics.dlms"
MAX_IN_FLIGHT = 256  # requests awaiting a response per connection
MAX_OBJECTS = 4096  # registers and profiles whose scaler or columns a session keeps
#: request APDU tag -> (service family); the response tag of the same family answers it
_FAMILY = {0x60: "association", 0x61: "association", 0x62: "release", 0x63: "release",
           0xC0: "get", 0xC4: "get", 0xC1: "set", 0xC5: "set", 0xC3: "action", 0xC7: "action",
           0x05: "read", 0x0C: "read", 0x06: "write", 0x0D: "write", 0xD9: "access",
           0xDA: "access"}  # fmt: skip
_CIPHERED_FAMILY = {0xC8: "get", 0xCC: "get", 0xC9: "set", 0xCD: "set", 0xCB: "action",
                    0xCF: "action", 0xD0: "get", 0xD4: "get", 0xD1: "set", 0xD5: "set",
                    0xD3: "action", 0xD7: "action", 0x25: "read", 0x2C: "read",
                    0x26: "write", 0x2D: "write"}  # fmt: skip
_CIPHERED_REQUESTS = frozenset({0xC8, 0xC9, 0xCB, 0xD0, 0xD1, 0xD3, 0x21, 0x25, 0x26})
#: ECS event.type by service family
_EVENT_TYPES = {
    "association": ["protocol", "connection", "start"],
    "release": ["protocol", "connection", "end"],
    "get": ["protocol", "access"],
    "read": ["protocol", "access"],
    "set": ["protocol", "change"],
    "write": ["protocol", "change"],
    "action": ["protocol", "change"],
    "access": ["protocol", "access"],
}
#: fields of a request kept for its response and the unanswered event
_SUMMARY = ("apdu_type", "request_type", "invoke_id", "class_id", "class_name", "obis",
            "obis_dotted", "attribute", "method", "attributes", "methods",
            "security_action")  # fmt: skip
_CLOCK_METHODS = {1: "adjust_to_quarter", 2: "adjust_to_measuring_period",
                  3: "adjust_to_minute", 4: "adjust_to_preset_time", 5: "preset_adjusting_time",
                  6: "shift_time"}  # fmt: skip
_IMAGE_METHODS = {1: "image_transfer_initiate", 2: "image_block_transfer",
                  3: "image_verify", 4: "image_activate"}  # fmt: skip
_SECURITY_METHODS = {1: "security_activate", 2: "key_transfer", 3: "key_agreement",
                     4: "generate_key_pair", 5: "generate_certificate_request",
                     6: "import_certificate", 7: "export_certificate",
                     8: "remove_certificate"}  # fmt: skip


#: security-relevant SETs: (class id, attribute id or None for any) -> name
_SECURITY_SETS = {
    (70, None): "disconnect_control_change", (18, None): "image_transfer_change",
    (64, None): "security_setup_change", (8, 2): "clock_set", (8, None): "clock_change",
    (15, 7): "association_secret_change", (15, 2): "association_change",
    (15, 5): "association_change", (15, 6): "association_change", (15, 9): "association_change",
}  # fmt: skip
#: security-relevant ACTIONs: class id -> (method names, the name of any other method)
_SECURITY_ACTIONS = {
    70: ({1: "remote_disconnect", 2: "remote_reconnect"}, "disconnect_control"),
    18: (_IMAGE_METHODS, "image_transfer"),
    8: ({k: f"clock_{v}" for k, v in _CLOCK_METHODS.items()}, "clock_adjust"),
    64: (_SECURITY_METHODS, "security_setup"),
    15: ({2: "association_secret_change", 5: "association_change", 6: "association_change"}, ""),
    9: ({1: "script_execute"}, ""),  # script table: global meter reset, tariff switches...
}


def security_action(apdu_type: str, class_id: int, member: int) -> str | None:
    """The name of a security-relevant SET (``member``: attribute) or ACTION (method) on a
    COSEM object of ``class_id`` (Blue Book: disconnect control 70, image transfer 18, clock 8,
    security setup 64, association LN 15, script table 9), or None."""
    if apdu_type == "set_request":
        return _SECURITY_SETS.get((class_id, member)) or _SECURITY_SETS.get((class_id, None))
    if apdu_type == "action_request" and class_id in _SECURITY_ACTIONS:
        names, other = _SECURITY_ACTIONS[class_id]
        return names.get(member, other) or None
    return None


def _secret(apdu_type: str, class_id: int, member: int) -> bool:
    """Whether a SET's value or an ACTION's parameters are a secret: the LLS secret (class 15
    attribute 7), HLS pass 3 and secret change (class 15 methods 1, 2), security setup's
    security_activate, key_transfer and key_agreement (class 64 methods 1 to 3)."""
    if apdu_type == "set_request":
        return class_id == 15 and member == 7
    return apdu_type == "action_request" and (
        (class_id == 15 and member in (1, 2)) or (class_id == 64 and member in (1, 2, 3))
    )


@dataclass
class _InFlight:
    ts_us: int
    frame: int
    event_id: str
    family: str
    request: dict[str, Any]
    descriptors: list[tuple[int, bytes, int]]  # (class id, OBIS, attribute) of a GET's items


class DlmsSession(StreamSession):
    """One DLMS/COSEM association's transport (a TCP connection or a UDP flow): framing,
    reassembly, pairing, events (see the module's documentation)."""

    DATASET = DATASET
    NAMESPACE = "dlms"
    HEADER = 8
    NOT_PROTOCOL = "not_dlms"
    VIOLATION_MESSAGE = "bytes on a DLMS port that are neither wrapper PDUs nor HDLC frames"

    def __init__(
        self,
        context: FlowContext,
        emit: Callable[[Event], None],
        stats: dlms.DlmsStats,
        observer: dict[str, Any],
        location: Callable[[int], str],
        timeout_us: int,
        keys: dict[bytes, tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(context, emit, stats, observer, location, timeout_us)
        self.stats: dlms.DlmsStats = stats
        #: system title -> (block cipher key, authentication key), for decryption
        self.keys: dict[bytes, tuple[bytes, bytes]] = dict(keys or {})
        self.in_flight: list[_InFlight] = []
        self.system_titles: dict[bool, bytes] = {}  # sender's system title per direction
        self.segments: dict[bool, list[bytes]] = {True: [], False: []}  # HDLC I-frame infos
        self.segment_bytes = {True: 0, False: 0}
        self.blocks: dict[bool, bytearray] = {True: bytearray(), False: bytearray()}
        self.scalers: dict[tuple[int, bytes], tuple[int, int]] = {}
        self.profiles: dict[bytes, dlms.Profile] = {}
        self.meter_id: str | None = None  # the logical device name or device id read
        #: the GET whose data blocks are being received, per direction
        self.block_descriptors: dict[bool, list[tuple[int, bytes, int]]] = {True: [], False: []}
        self.shared_flag = {True: False, False: False}  # the last frame's flag may open the next
        self.dedicated_key: bytes | None = None  # of the association (never emitted)
        self._direction = True

    # -- stream ------------------------------------------------------------------------------

    def data(self, to_server: bool, data: bytes, ts_us: int, frame: int, seq: int) -> None:
        """In-order bytes of one direction (``seq``: the first byte's TCP sequence number)."""
        self._direction = to_server
        self._cut(to_server, data, ts_us, frame, seq)

    def _size(self, head: bytes) -> int:
        if head[:2] == b"\x7e\x7e":  # a flag between frames (inter-frame fill): one byte
            return 1
        size = dlms.frame_size(head)
        if size < 0 and self.shared_flag[self._direction] and head and head[0] >> 4 == 0xA:
            size = dlms.frame_size(b"\x7e" + head[:7])
            return size - 1 if size > 0 else size
        return size

    def _resync(self, buffer: bytes, offset: int) -> int:
        end = min(len(buffer), offset + 4096)
        for start in range(offset + 1, end):
            byte = buffer[start]
            if byte not in (0x7E, 0x00):
                continue
            size = dlms.frame_size(buffer[start : start + 8])
            if size <= 0 or start + size > len(buffer):
                continue
            candidate = buffer[start : start + size]
            if byte == 0x7E:
                try:
                    if dlms.parse_hdlc(candidate).fcs_ok:
                        return start - offset
                except DissectError:
                    continue
            elif candidate[8] in dlms.APDU_NAMES:
                return start - offset
        return -1

    def _take(self, to_server: bool, data: bytes, ts_us: int, frame: int, seq: int) -> None:
        if data == b"\x7e":  # an inter-frame fill flag
            return
        eid = stream_event_id(ts_us, self.tags[to_server], seq)
        if data[0] >> 4 == 0xA:  # an HDLC frame whose opening flag closed the previous one
            data = b"\x7e" + data
        self._frame(to_server, data, ts_us, frame, eid)

    def datagram(self, to_server: bool, data: bytes, ts_us: int, frame: int) -> None:
        """One UDP datagram: a wrapper PDU, one or more HDLC frames, an APDU behind the IEC
        61334-4-32 LLC header (three bytes, the first 0x90: DLMS over S-FSK PLC, as the
        Wireshark DLMS plugin reads it), or a bare APDU."""
        offset, index = 0, 0
        community = self.context.community_id
        first = data[0] if data else -1
        if first == dlms.LLC_432 and len(data) > 3:
            eid = event_id(ts_us, DATASET, community, frame, 0)
            self.synced[to_server] = True
            llc = {"iec_61334_4_32_llc": {"header": data[:3].hex()}}
            self._apdu(to_server, data[3:], ts_us, frame, eid, llc)
            return
        if first not in (0x00, dlms.HDLC_FLAG) and first in dlms.APDU_NAMES:
            eid = event_id(ts_us, DATASET, community, frame, 0)
            self._apdu(to_server, data, ts_us, frame, eid, {"apdu": {"length": len(data)}})
            return
        while offset < len(data):
            if data[offset : offset + 2] == b"\x7e\x7e":  # inter-frame fill
                offset += 1
                continue
            head = data[offset : offset + 8]
            size = dlms.frame_size(head)
            if size < 0 and index and head[0] >> 4 == 0xA:  # a flag shared with the last frame
                size = dlms.frame_size(b"\x7e" + head[:7]) - 1
                chunk = b"\x7e" + data[offset : offset + size]
            else:
                chunk = data[offset : offset + size]
            if size <= 0 or offset + size > len(data):
                self._violation(to_server, data[offset:], ts_us, frame, offset)
                return
            eid = event_id(ts_us, DATASET, community, frame, index)
            self._frame(to_server, chunk, ts_us, frame, eid)
            offset += size
            index += 1

    def _violation_fields(self, data: bytes) -> dict[str, Any]:
        return {"apdu_type": "protocol_violation", **super()._violation_fields(dlms.scrub(data))}

    def expire(self, now_us: int) -> None:
        """Report requests whose response is overdue."""
        limit = now_us - self.timeout_us
        while self.in_flight and self.in_flight[0].ts_us < limit:
            self._unanswered(self.in_flight.pop(0))

    def close(self) -> None:
        """The flow ended: every request still in flight is unanswered."""
        for pending in self.in_flight:
            self._unanswered(pending)
        self.in_flight.clear()

    # -- frames ------------------------------------------------------------------------------

    def _frame(self, to_server: bool, data: bytes, ts_us: int, frame: int, eid: str) -> None:
        """One wrapper PDU or HDLC frame (flags included)."""
        if data[0] != dlms.HDLC_FLAG:
            self.synced[to_server] = True
            wrapper = dlms.parse_wrapper(data)
            self._apdu(to_server, data[8:], ts_us, frame, eid, {"wrapper": wrapper})
            return
        self.shared_flag[to_server] = True
        try:
            hdlc = dlms.parse_hdlc(data)
        except DissectError as exc:
            self._malformed(to_server, data, ts_us, frame, eid, "hdlc_frame", exc.message, {})
            return
        fields = hdlc.fields()
        if not (hdlc.hcs_ok and hdlc.fcs_ok):
            self.stats.bad_checksums += 1
            fields["anomalies"] = hdlc.anomalies
            self._malformed(to_server, data, ts_us, frame, eid, "hdlc_frame",
                            f"HDLC frame with {' and '.join(hdlc.anomalies)}",
                            {"hdlc": fields})  # fmt: skip
            return
        if hdlc.frame_type in ("i", "ui"):
            self.segments[to_server].append(hdlc.information)
            self.segment_bytes[to_server] += len(hdlc.information)
            if hdlc.segmented:
                if self.segment_bytes[to_server] > dlms.MAX_APDU:
                    self.segments[to_server] = []
                    self.segment_bytes[to_server] = 0
                    self._error(frame, "HDLC segmented APDU beyond its size limit: dropped")
                self.stats.link_frames += 1
                return
            parts = self.segments[to_server]
            self.segments[to_server] = []
            self.segment_bytes[to_server] = 0
            information = b"".join(parts)
            apdu, llc = dlms.strip_llc(information)
            if len(parts) > 1:
                fields["segments"] = len(parts)
            if llc:
                fields["llc"] = llc
            if not apdu:
                self.stats.link_frames += 1
                return
            self._apdu(to_server, apdu, ts_us, frame, eid, {"hdlc": fields})
            return
        self.stats.link_frames += 1
        if hdlc.frame_type in ("rr", "rnr"):
            return
        if hdlc.frame_type in ("snrm", "disc"):  # a new or closed link: partial APDUs go
            self.segments = {True: [], False: []}
            self.segment_bytes = {True: 0, False: 0}
        self.stats.messages += 1
        doc = self.context.event(to_server, ts_us, eid, DATASET, self.observer)
        failure = hdlc.frame_type in ("dm", "frmr")
        doc["event"].update({"action": f"hdlc_{hdlc.frame_type}",
                             "type": ["protocol", "connection"],
                             "outcome": "failure" if failure else "success"})  # fmt: skip
        doc["dlms"] = {"framing": "hdlc", "apdu_type": f"hdlc_{hdlc.frame_type}",
                       "frame": frame, "hdlc": fields}  # fmt: skip
        self.emit(doc)

    # -- APDUs -------------------------------------------------------------------------------

    def _apdu(
        self,
        to_server: bool,
        apdu: bytes,
        ts_us: int,
        frame: int,
        eid: str,
        framing: dict[str, Any],
    ) -> None:
        name = dlms.APDU_NAMES.get(apdu[0], "malformed") if apdu else "malformed"
        try:
            record = dlms.decode_apdu(apdu)
        except DissectError as exc:
            self._malformed(to_server, apdu, ts_us, frame, eid, name, exc.message, framing)
            return
        except Exception as exc:  # a defect of ours must not stop the collection
            self._malformed(to_server, apdu, ts_us, frame, eid, name, repr(exc), framing)
            return
        try:
            record = self._plain(to_server, record, frame)
            if record["tag"] in (0x60, 0x61, 0x62, 0x63):
                self._association(to_server, record, frame)
        except Exception as exc:  # the same: a deciphered APDU that trips a defect
            self._malformed(to_server, apdu, ts_us, frame, eid, name, repr(exc), framing)
            return
        self.stats.messages += 1
        tag = record["tag"]
        doc = self.context.event(to_server, ts_us, eid, DATASET, self.observer)
        out: dict[str, Any] = {"framing": next(iter(framing)), "frame": frame, **framing}
        self._security(record)
        energy: list[dict[str, Any]] = []
        outcome = "unknown"
        family = _FAMILY.get(tag) or _CIPHERED_FAMILY.get(tag)
        if tag in dlms.REQUESTS or tag in _CIPHERED_REQUESTS:
            self.stats.requests += 1
            if not to_server:
                record.setdefault("anomalies", []).append("request_from_server")
            if family:
                self._track(ts_us, frame, eid, family, record)
        elif tag in dlms.RESPONSES or tag in _CIPHERED_FAMILY:
            self.stats.responses += 1
            if to_server:
                record.setdefault("anomalies", []).append("response_from_client")
            outcome = self._response(record, out, family, ts_us, to_server, energy)
        elif tag == 0x0F and "body" in record:
            energy.extend(dlms.notification_readings(record["body"]))
        if record.get("apdu_type") == "aare" and "result" in record:
            outcome = "success" if record["result"] == "accepted" else "failure"
        if record.get("encrypted"):
            self.stats.encrypted += 1
        event = doc["event"]
        event["action"] = record["apdu_type"]
        event["type"] = _EVENT_TYPES.get(family or "", ["protocol", "info"])
        if tag in (0x0E, 0xD8):
            event["type"] = ["protocol", "error"]
        elif tag == 0x0F:
            event["type"] = ["protocol", "info"]
        event["outcome"] = outcome
        record.pop("ciphered_content", None)
        record.pop("raw_data", None)
        record.pop("tag", None)
        out.update(record)
        doc["dlms"] = out
        if energy:
            server_title = self.system_titles.get(False)  # the meter's (AARE)
            meter = self.meter_id or (server_title.hex() if server_title else None)
            doc["energy"] = {"readings": energy}
            if meter:
                doc["energy"]["meter_id"] = meter
        self.emit(doc)

    def _plain(self, to_server: bool, record: dict[str, Any], frame: int) -> dict[str, Any]:
        """A ciphered APDU's plain APDU decoded into the record when it can be read (keys known,
        or authentication only); the record as it is otherwise."""
        if not record.get("encrypted") or "ciphered_content" not in record:
            return record
        title_hex = record.get("system_title") or record.get("originator_system_title")
        title = bytes.fromhex(title_hex) if title_hex else self.system_titles.get(to_server)
        if title:
            record["system_title"] = title.hex()
        plain = dlms.authenticated_plain(record)
        if plain is None and title and title in self.keys:
            key, authentication_key = self.keys[title]
            if record.get("scope") == "dedicated" or record["tag"] == 0xDC:
                if self.dedicated_key is None:
                    return record
                key = self.dedicated_key
            try:
                plain = dlms.decipher(record, title, key, authentication_key)
            except DissectError as exc:
                self._error(frame, f"DLMS {record['apdu_type']}: {exc.message}")
                record.setdefault("anomalies", []).append("decryption_failed")
        if plain is None:
            return record
        try:
            inner = dlms.decode_apdu(plain)
        except DissectError as exc:
            self.stats.malformed += 1
            self._error(frame, f"DLMS deciphered {record['apdu_type']}: {exc.message}")
            record.setdefault("anomalies", []).append("malformed")
            record["raw"] = dlms.scrub(plain)[:64].hex()
            return record
        self.stats.decrypted += 1
        if inner["apdu_type"] == "initiate_request" and inner.get("dedicated_key_present"):
            self.dedicated_key = dlms.dedicated_key(plain)  # kept for ded- APDUs, never emitted
        security = {k: record[k] for k in record if k not in ("apdu_type", "tag",
                    "ciphered_content", "encrypted")}  # fmt: skip
        inner["ciphered_apdu_type"] = record["apdu_type"]
        inner["encrypted"] = True
        inner["decrypted"] = True
        inner.update({k: v for k, v in security.items() if k not in inner})
        return inner

    def _association(self, to_server: bool, record: dict[str, Any], frame: int) -> None:
        """An AARQ's or AARE's system title (the sender's, for deciphering what it sends), and
        an ACSE APDU's ciphered user-information (glo-initiate) decrypted when the keys are
        known."""
        name = record["apdu_type"]
        if name == "aarq" and "calling_ap_title" in record:
            self.system_titles[to_server] = bytes.fromhex(record["calling_ap_title"])
        elif name == "aare" and "responding_ap_title" in record:
            self.system_titles[to_server] = bytes.fromhex(record["responding_ap_title"])
        information = record.get("user_information")
        if isinstance(information, dict) and "ciphered_content" in information:
            information = self._plain(to_server, information, frame)
            information.pop("ciphered_content", None)
            information.pop("tag", None)
            record["user_information"] = information

    def _security(self, record: dict[str, Any]) -> None:
        """A SET's or ACTION's security-relevant flag, and its secret values redacted."""
        name = record["apdu_type"]
        if name in ("set_request", "action_request"):
            items = (
                [record]
                if "class_id" in record
                else record.get("attributes") or record.get("methods", [])
            )
            for item in items:
                member = item.get("attribute", item.get("method", 0))
                action = security_action(name, item["class_id"], member)
                if action:
                    record["security_relevant"] = True
                    record.setdefault("security_action", action)
                if _secret(name, item["class_id"], member):
                    for key in ("value", "parameters", "values"):
                        if key in record:
                            record[key] = {"redacted": True}

    # -- pairing -----------------------------------------------------------------------------

    def _track(self, ts_us: int, frame: int, eid: str, family: str, record: dict[str, Any]) -> None:
        if len(self.in_flight) >= MAX_IN_FLIGHT:
            self._unanswered(self.in_flight.pop(0))
        descriptors: list[tuple[int, bytes, int]] = []
        items = [record] if "class_id" in record else record.get("attributes", [])
        for item in items:
            if "obis_dotted" in item and "attribute" in item:
                obis = bytes(int(v) for v in item["obis_dotted"].split("."))
                descriptors.append((item["class_id"], obis, item["attribute"]))
        summary = {k: record[k] for k in _SUMMARY if k in record}
        self.in_flight.append(_InFlight(ts_us, frame, eid, family, summary, descriptors))

    def _pair(self, family: str | None, invoke_id: int | None) -> _InFlight | None:
        """The request a response answers: the newest in flight of its service family and
        invoke id (any, for an ExceptionResponse). A client has one confirmed request per
        invoke id outstanding, so an older one with the same id was abandoned: it stays in
        flight and is reported unanswered."""
        for index in range(len(self.in_flight) - 1, -1, -1):
            pending = self.in_flight[index]
            if family is None or (
                pending.family == family
                and (invoke_id is None or pending.request.get("invoke_id") in (None, invoke_id))
            ):
                return self.in_flight.pop(index)
        return None

    def _response(
        self,
        record: dict[str, Any],
        out: dict[str, Any],
        family: str | None,
        ts_us: int,
        to_server: bool,
        energy: list[dict[str, Any]],
    ) -> str:
        """Pairing fields of a response; its ``event.outcome``."""
        tag = record["tag"]
        pending = self._pair(None if tag in (0x0E, 0xD8) else family, record.get("invoke_id"))
        if pending is None:
            self.stats.orphans += 1
            out["orphan"] = True
        else:
            out["request_event_id"] = pending.event_id
            out["request_frame"] = pending.frame
            out["response_time_us"] = ts_us - pending.ts_us
            out["request"] = pending.request
            for key in ("class_id", "class_name", "obis", "obis_dotted", "attribute", "method"):
                if key in pending.request and key not in record:
                    record[key] = pending.request[key]  # what the response is about
            if pending.request.get("class_id") == 15 and pending.request.get("method") in (1, 2):
                for key in ("return_data", "results"):  # HLS pass 4 f(CtoS), a secret's result
                    if key in record:
                        record[key] = {"redacted": True}
            if pending.request.get("security_action"):
                record["security_relevant"] = True
                record["security_action"] = pending.request["security_action"]
        if tag == 0xC4:
            self._get_values(record, pending, to_server, energy)
        result = record.get("result")
        if tag in (0x0E, 0xD8):
            return "failure"
        if result is None:
            return "unknown" if record.get("encrypted") else "success"
        return "success" if result in ("success", "accepted") else "failure"

    def _get_values(
        self,
        record: dict[str, Any],
        pending: _InFlight | None,
        to_server: bool,
        energy: list[dict[str, Any]],
    ) -> None:
        """Block reassembly of a GET response, scalers learned, meter readings."""
        values: list[Any] = []
        descriptors = pending.descriptors if pending else []
        if record.get("response_type") == "with_datablock" and "raw_data" in record:
            if descriptors:
                self.block_descriptors[to_server] = descriptors
            descriptors = self.block_descriptors[to_server]
            blocks = self.blocks[to_server]
            if record.get("block_number") == 1:
                blocks.clear()
            if len(blocks) + len(record["raw_data"]) <= dlms.MAX_APDU:
                blocks.extend(record["raw_data"])
            if not record.get("last_block"):
                return
            raw = bytes(blocks)
            blocks.clear()
            record["reassembled_length"] = len(raw)
            try:
                record["data"] = dlms.decode_data(raw)
            except DissectError as exc:
                record.setdefault("anomalies", []).append("malformed_block_data")
                record["block_error"] = exc.message
                return
            values = [record["data"]]
        elif "results" in record:
            values = [r.get("data") for r in record["results"]]
        elif "data" in record:
            values = [record["data"]]
        for (class_id, obis, attribute), value in zip(descriptors, values, strict=False):
            if value is not None:
                self._learn(class_id, obis, attribute, value)
                energy.extend(
                    dlms.readings(class_id, obis, attribute, value, self.scalers, self.profiles)
                )

    def _learn(self, class_id: int, obis: bytes, attribute: int, value: Any) -> None:
        """What a GET response teaches about the meter: a register's scaler and unit, a load
        profile's capture objects and period, the meter's name (logical device name 0-0:42.0.0
        or device id 0-0:96.1.0)."""
        if attribute == 3 and class_id in (3, 4, 5):
            known = dlms.scaler_unit(value)
            if known and len(self.scalers) < MAX_OBJECTS:
                self.scalers[(class_id, obis)] = known
        elif class_id == 7 and attribute in (3, 4) and len(self.profiles) < MAX_OBJECTS:
            profile = self.profiles.setdefault(obis, dlms.Profile())
            if attribute == 3:
                profile.columns = dlms.capture_objects(value) or []
            elif isinstance(value, int) and not isinstance(value, bool):
                profile.capture_period_s = value
        elif attribute == 2 and obis[:5] in (b"\x00\x00\x2a\x00\x00", b"\x00\x00\x60\x01\x00"):
            name = _printable(value)
            if name and (obis[2] == 42 or self.meter_id is None):
                self.meter_id = name

    def _unanswered(self, pending: _InFlight) -> None:
        self.stats.unanswered += 1
        ts_us = pending.ts_us + self.timeout_us
        eid = event_id(ts_us, DATASET, "unanswered", pending.event_id)
        doc = self.context.event(True, ts_us, eid, DATASET, self.observer)
        doc["event"].update({"action": "unanswered_request", "type": ["protocol", "info"],
                             "outcome": "failure"})  # fmt: skip
        doc["dlms"] = {"apdu_type": "unanswered_request", "request_frame": pending.frame,
                       "request_event_id": pending.event_id, "request": pending.request,
                       "response_timeout_us": self.timeout_us}  # fmt: skip
        self.emit(doc)

    # -- errors ------------------------------------------------------------------------------

    def _malformed(
        self,
        to_server: bool,
        data: bytes,
        ts_us: int,
        frame: int,
        eid: str,
        name: str,
        message: str,
        framing: dict[str, Any],
    ) -> None:
        self.stats.malformed += 1
        self._error(frame, f"DLMS {name}: {message}")
        doc = self.context.event(to_server, ts_us, eid, DATASET, self.observer)
        doc["event"].update({"action": name, "type": ["protocol", "error"],
                             "outcome": "failure"})  # fmt: skip
        out: dict[str, Any] = {"framing": next(iter(framing), "hdlc"), "frame": frame, **framing}
        out.update({"apdu_type": name, "anomalies": ["malformed"], "raw": dlms.scrub(data)[:64].hex(),
                    "error": message})  # fmt: skip
        doc["dlms"] = out
        self.emit(doc)


def _printable(value: Any) -> str | None:
    """A name read from the meter (a visible string, or an octet string of printable ASCII
    written as hex), or None."""
    if isinstance(value, str) and value and all(c in "0123456789abcdef" for c in value):
        try:
            text = bytes.fromhex(value).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            return None
        return text if text.isprintable() and text.strip() else None
    if isinstance(value, str) and value.isprintable() and value.strip():
        return value
    return None
