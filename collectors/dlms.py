"""DLMS/COSEM (IEC 62056-5-3, -4-7, -46, -47): the wrapper and HDLC framing, xDLMS and ACSE
APDUs, A-XDR data. Pure functions, no I/O.

- **Framing.** :func:`frame_size` cuts a byte stream into IEC 62056-4-7 wrapper PDUs (version
  0x0001, source wPort, destination wPort, length) or HDLC frames (IEC 62056-46: flag 0x7E,
  frame format type 0xA with the segmentation bit and an 11-bit length). :func:`parse_hdlc`
  reads one HDLC frame: variable-length addresses (1, 2 or 4 bytes, the low bit of the last
  byte set), the control field (I, RR, RNR, SNRM, DISC, UA, DM, FRMR, UI), the header and frame
  check sequences (CRC-16/X.25, :func:`crc16_x25`), the LLC header (E6 E6 00 command, E6 E7 00
  response) and the SNRM/UA parameter negotiation. Reassembly of segmented I-frames is the
  session's (:mod:`collectors.dlms_events`).
- **APDUs.** :func:`decode_apdu` decodes ACSE (AARQ, AARE, RLRQ, RLRE, BER-encoded) and xDLMS
  APDUs (GET, SET, ACTION requests and responses of every choice, DataNotification,
  EventNotificationRequest, ExceptionResponse, ConfirmedServiceError, InitiateRequest and
  InitiateResponse, Access, General-Block-Transfer headers, the SN read/write services by name
  and item count) and records ciphered APDUs
  (glo-, ded-, general-glo-, general-ded-, general-ciphering) with their security header;
  :func:`decipher` decrypts them when the key of the sender's system title is known.
- **A-XDR** data (:func:`decode_data`) becomes JSON values: integers, booleans, floats, visible
  and UTF-8 strings, octet strings as hex (a 12-byte octet string that is a valid COSEM
  date-time as ISO 8601), date-time/date/time as ISO text, arrays, structures and compact arrays
  as lists; bounded by :data:`MAX_VALUES` values and :data:`MAX_DEPTH` nesting.
- **Secrets** never reach a record: the LLS password (calling-authentication-value) is
  recorded as its presence and length, HLS challenges as their lengths, the dedicated key of an
  InitiateRequest as its presence (:func:`dedicated_key` hands it to the session alone, to
  decipher ded- APDUs); :func:`scrub` zeroes authentication values in raw bytes kept as hex.
- **Meter readings** (:func:`readings`): a GET of a register's value (class 3, 4, 5) or of a
  load profile's buffer (class 7) becomes ``energy.readings`` items (:func:`reading`: OBIS,
  physical value, unit, direction, quantity; profile rows with their time and interval); the
  scaler and unit come from a GET of attribute 3 (scaler_unit) seen earlier on the flow, a
  profile's columns from its attribute 3 (capture objects) and 4 (capture period).

Why not dlms-cosem's parsers: dlms-cosem is a client library, and its APDU classes
(``dlms_cosem.protocol.xdlms``, ``.acse``) implement what a client needs. Run over every plain
APDU of the corpus captures that Gurux translates, they raise on 13 valid ones: selective access
other than a range descriptor and Float32 data (NotImplementedError), a range descriptor whose
bounds are not date-times, an empty RLRQ (IndexError), Gurux's RLRE whose ACSE length is short.
Their factories also raise NotImplementedError on every SET choice but normal and every ACTION
request choice but normal (dlms-cosem's own tests assert it), they have no EventNotification,
Access, SN read/write or general-ciphering beyond general-glo, and ``GetResponseNormal.to_bytes``
raises TypeError. Speed is not the reason (dlms-cosem decodes a GET request in about 6 µs, this
module in 4). So the APDUs, ACSE and A-XDR are read here by hand from the Green Book (DLMS UA
1000-2) structures, leniently where real devices are (Gurux's RLRE length); dlms-cosem is used
for decryption (:func:`dlms_cosem.security.decrypt`: AES-GCM with the DLMS IV and additional
data) and, in the tests, as an independent encoder and for its test vectors. Encryption without
authentication (security control 0x20, which the htanwar922 captures use) is AES-GCM without a
tag, which dlms-cosem does not decrypt: it is AES-CTR from the GCM counter J0 + 1, done here
with ``cryptography`` (:func:`_ctr`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from soc.errors import DissectError

MAX_VALUES = 512  # A-XDR values decoded per APDU; beyond, the data is cut (``truncated``)
MAX_DEPTH = 16  # nesting of arrays and structures
MAX_HEX = 256  # bytes of an octet string written as hex
MAX_TEXT = 1024  # bytes of a visible or UTF-8 string kept
MAX_APDU = 1 << 20  # bytes of an APDU reassembled from HDLC segments or blocks


@dataclass
class DlmsStats:
    """Counts of one collection run."""

    messages: int = 0  # APDUs (and HDLC link frames) given an event
    malformed: int = 0
    violations: int = 0
    resyncs: int = 0
    requests: int = 0
    responses: int = 0
    encrypted: int = 0  # ciphered APDUs
    decrypted: int = 0  # of which read (keys configured, or authentication only)
    link_frames: int = 0  # HDLC frames with no APDU (SNRM, UA, DISC, DM, FRMR, RR, RNR)
    bad_checksums: int = 0  # HDLC frames whose HCS or FCS is wrong
    orphans: int = 0
    unanswered: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (location, message), first 1000

    def summary(self) -> dict[str, Any]:
        """The closing summary's ``dlms`` section."""
        return {
            "messages": self.messages,
            "violations": self.violations,
            "malformed": self.malformed,
            "resyncs": self.resyncs,
            "requests": self.requests,
            "responses": self.responses,
            "encrypted": self.encrypted,
            "decrypted": self.decrypted,
            "link_frames": self.link_frames,
            "bad_checksums": self.bad_checksums,
            "orphans": self.orphans,
            "unanswered": self.unanswered,
        }

    @property
    def parse_errors(self) -> int:
        """Malformed APDUs and protocol violations."""
        return self.malformed + self.violations


# -- framing ----------------------------------------------------------------------------------

WRAPPER_HEADER = 8
HDLC_FLAG = 0x7E


def plausible(payload: bytes) -> bool:
    """Whether a flow's first bytes look like DLMS/COSEM: an IEC 62056-4-7 wrapper header
    (version 1) or an HDLC frame (flag 0x7E, frame format type 0xA)."""
    if len(payload) >= 9 and payload[:2] == b"\x00\x01":
        return int.from_bytes(payload[6:8], "big") == len(payload) - 8
    return len(payload) >= 9 and payload[0] == 0x7E and payload[1] >> 4 == 0xA


def frame_size(head: bytes) -> int:
    """The length of the wrapper PDU or HDLC frame starting with ``head`` (its first 8 bytes or
    fewer): 0 when more bytes are needed, -1 when ``head`` starts neither."""
    if not head:
        return 0
    if head[0] == HDLC_FLAG:
        if len(head) < 3:
            return 0
        if head[1] >> 4 != 0xA:
            return -1
        length = ((head[1] & 0x07) << 8) | head[2]
        return length + 2 if length >= 7 else -1
    if head[0] == 0x00:
        if len(head) < 2:
            return 0
        if head[1] != 0x01:
            return -1
        if len(head) < WRAPPER_HEADER:
            return 0
        length = (head[6] << 8) | head[7]
        return WRAPPER_HEADER + length if length else -1
    return -1


def parse_wrapper(pdu: bytes) -> dict[str, Any]:
    """The header of an IEC 62056-4-7 wrapper PDU (version, source and destination wPorts,
    length)."""
    version, source, destination, length = struct.unpack_from("!HHHH", pdu)
    return {"version": version, "source_wport": source, "destination_wport": destination,
            "length": length}  # fmt: skip


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16_x25(data: bytes) -> int:
    """CRC-16/X.25 (the HDLC HCS and FCS of IEC 62056-46): reflected polynomial 0x1021, initial
    value and final XOR 0xFFFF; sent least significant byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFF


#: unnumbered (U) frames by control field without the poll/final bit
_U_FRAMES = {0x83: "snrm", 0x43: "disc", 0x63: "ua", 0x0F: "dm", 0x87: "frmr", 0x03: "ui"}
#: SNRM/UA parameter identifiers (IEC 62056-46 6.4.4.4.3.2)
_HDLC_PARAMETERS = {5: "max_info_tx", 6: "max_info_rx", 7: "window_tx", 8: "window_rx"}
LLC_432 = 0x90  # first byte of the IEC 61334-4-32 LLC header before an APDU (S-FSK PLC)
LLC_COMMAND = b"\xe6\xe6\x00"
LLC_RESPONSE = b"\xe6\xe7\x00"


@dataclass
class HdlcFrame:
    """One HDLC frame of IEC 62056-46 (flags included in ``length`` + 2)."""

    segmented: bool
    length: int
    destination: dict[str, int]  # upper (logical device) and lower (physical) HDLC address
    source: dict[str, int]
    control: int
    frame_type: str  # i, rr, rnr, snrm, disc, ua, dm, frmr, ui, unknown
    poll_final: bool
    send_sequence: int | None
    receive_sequence: int | None
    hcs_ok: bool
    fcs_ok: bool
    information: bytes  # the information field (LLC header included)
    anomalies: list[str] = field(default_factory=list)

    def fields(self) -> dict[str, Any]:
        """The ``dlms.hdlc`` object of an event."""
        out: dict[str, Any] = {
            "frame_type": self.frame_type,
            "control": self.control,
            "segmented": self.segmented,
            "destination_address": self.destination,
            "source_address": self.source,
            "poll_final": self.poll_final,
        }
        if self.send_sequence is not None:
            out["send_sequence"] = self.send_sequence
        if self.receive_sequence is not None:
            out["receive_sequence"] = self.receive_sequence
        if self.frame_type in ("snrm", "ua") and self.information:
            parameters = hdlc_parameters(self.information)
            if parameters:
                out["parameters"] = parameters
        return out


def _hdlc_address(frame: bytes, offset: int) -> tuple[dict[str, int], int]:
    end = offset
    while end < len(frame) and not frame[end] & 1:
        end += 1
        if end - offset >= 4:
            raise DissectError("HDLC address longer than 4 bytes")
    if end >= len(frame):
        raise DissectError("HDLC address runs past the frame")
    raw = frame[offset : end + 1]
    size = len(raw)
    if size == 1:
        return {"upper": raw[0] >> 1}, end + 1
    if size == 2:
        return {"upper": raw[0] >> 1, "lower": raw[1] >> 1}, end + 1
    if size == 4:
        return {"upper": ((raw[0] >> 1) << 7) | (raw[1] >> 1),
                "lower": ((raw[2] >> 1) << 7) | (raw[3] >> 1)}, end + 1  # fmt: skip
    raise DissectError(f"HDLC address of {size} bytes (1, 2 or 4 allowed)")


def parse_hdlc(frame: bytes) -> HdlcFrame:
    """One HDLC frame, opening and closing flags included (see :func:`frame_size`)."""
    if len(frame) < 9 or frame[0] != HDLC_FLAG or frame[1] >> 4 != 0xA:
        raise DissectError("not an HDLC frame of format type 3")
    length = ((frame[1] & 0x07) << 8) | frame[2]
    if length + 2 != len(frame):
        raise DissectError("HDLC frame length does not match its bytes")
    body = frame[1:-1]  # format .. FCS
    anomalies = []
    if frame[-1] != HDLC_FLAG:
        anomalies.append("missing_closing_flag")
    destination, offset = _hdlc_address(body, 2)
    source, offset = _hdlc_address(body, offset)
    if offset >= len(body) - 2:
        raise DissectError("HDLC frame too short for its control field and FCS")
    control = body[offset]
    header_end = offset + 1
    fcs_ok = crc16_x25(body[:-2]) == int.from_bytes(body[-2:], "little")
    if len(body) > header_end + 2:  # an information field: HCS then information
        if len(body) < header_end + 4:
            raise DissectError("HDLC frame too short for its HCS and FCS")
        hcs_ok = crc16_x25(body[:header_end]) == int.from_bytes(
            body[header_end : header_end + 2], "little"
        )
        information = bytes(body[header_end + 2 : -2])
    else:
        hcs_ok, information = True, b""
    if not hcs_ok:
        anomalies.append("bad_hcs")
    if not fcs_ok:
        anomalies.append("bad_fcs")
    poll_final = bool(control & 0x10)
    send_sequence = receive_sequence = None
    if not control & 1:
        frame_type = "i"
        send_sequence, receive_sequence = (control >> 1) & 7, control >> 5
    elif control & 3 == 1:
        frame_type = {0x01: "rr", 0x05: "rnr"}.get(control & 0x0F, "unknown")
        receive_sequence = control >> 5
    else:
        frame_type = _U_FRAMES.get(control & 0xEF, "unknown")
    return HdlcFrame(
        segmented=bool(frame[1] & 0x08),
        length=length,
        destination=destination,
        source=source,
        control=control,
        frame_type=frame_type,
        poll_final=poll_final,
        send_sequence=send_sequence,
        receive_sequence=receive_sequence,
        hcs_ok=hcs_ok,
        fcs_ok=fcs_ok,
        information=information,
        anomalies=anomalies,
    )


def hdlc_parameters(information: bytes) -> dict[str, int]:
    """The SNRM/UA parameter negotiation (format 0x81, group 0x80): maximum information field
    lengths and window sizes; empty when absent or not of that form."""
    if len(information) < 3 or information[0] != 0x81 or information[1] != 0x80:
        return {}
    out, offset, end = {}, 3, min(len(information), 3 + information[2])
    while offset + 2 <= end:
        ident, size = information[offset], information[offset + 1]
        value = information[offset + 2 : offset + 2 + size]
        if len(value) != size:
            break
        if ident in _HDLC_PARAMETERS:
            out[_HDLC_PARAMETERS[ident]] = int.from_bytes(value, "big")
        offset += 2 + size
    return out


def strip_llc(information: bytes) -> tuple[bytes, str | None]:
    """The information field without its LLC header, and the header's kind (command,
    response) or None when absent."""
    head = information[:3]
    if head == LLC_COMMAND:
        return information[3:], "command"
    if head == LLC_RESPONSE:
        return information[3:], "response"
    return information, None


# -- names of the Green Book --------------------------------------------------------------------

#: APDU tags (DLMS UA 1000-2, xDLMS-APDU and ACSE-APDU): the event.action of each
APDU_NAMES = {
    0x01: "initiate_request", 0x05: "read_request", 0x06: "write_request",
    0x08: "initiate_response", 0x0C: "read_response", 0x0D: "write_response",
    0x0E: "confirmed_service_error", 0x0F: "data_notification",
    0x16: "unconfirmed_write_request", 0x18: "information_report_request",
    0x21: "glo_initiate_request", 0x25: "glo_read_request", 0x26: "glo_write_request",
    0x28: "glo_initiate_response", 0x2C: "glo_read_response", 0x2D: "glo_write_response",
    0x2E: "glo_confirmed_service_error", 0x36: "glo_unconfirmed_write_request",
    0x38: "glo_information_report_request",
    0x41: "ded_initiate_request", 0x48: "ded_initiate_response",
    0x4E: "ded_confirmed_service_error",
    0x60: "aarq", 0x61: "aare", 0x62: "rlrq", 0x63: "rlre",
    0xC0: "get_request", 0xC1: "set_request", 0xC2: "event_notification_request",
    0xC3: "action_request", 0xC4: "get_response", 0xC5: "set_response",
    0xC7: "action_response",
    0xC8: "glo_get_request", 0xC9: "glo_set_request", 0xCA: "glo_event_notification_request",
    0xCB: "glo_action_request", 0xCC: "glo_get_response", 0xCD: "glo_set_response",
    0xCF: "glo_action_response",
    0xD0: "ded_get_request", 0xD1: "ded_set_request", 0xD2: "ded_event_notification_request",
    0xD3: "ded_action_request", 0xD4: "ded_get_response", 0xD5: "ded_set_response",
    0xD7: "ded_action_response", 0xD8: "exception_response", 0xD9: "access_request",
    0xDA: "access_response",
    0xDB: "general_glo_ciphering", 0xDC: "general_ded_ciphering", 0xDD: "general_ciphering",
    0xDF: "general_signing", 0xE0: "general_block_transfer",
}  # fmt: skip
#: service-specific ciphered APDUs: tag of the ciphered APDU -> tag of the plain one
_CIPHERED = {
    0x21: 0x01, 0x28: 0x08, 0x2E: 0x0E, 0x25: 0x05, 0x26: 0x06, 0x2C: 0x0C, 0x2D: 0x0D,
    0x36: 0x16, 0x38: 0x18, 0x41: 0x01, 0x48: 0x08, 0x4E: 0x0E,
    **{0xC8 + i: 0xC0 + i for i in range(8) if i != 6},
    **{0xD0 + i: 0xC0 + i for i in range(8) if i != 6},
}  # fmt: skip
_GENERAL_CIPHERED = frozenset({0xDB, 0xDC, 0xDD})
REQUESTS = frozenset({0x01, 0x05, 0x06, 0x16, 0x60, 0x62, 0xC0, 0xC1, 0xC3, 0xD9})
RESPONSES = frozenset({0x08, 0x0C, 0x0D, 0x0E, 0x61, 0x63, 0xC4, 0xC5, 0xC7, 0xD8, 0xDA})

APPLICATION_CONTEXTS = {
    1: "logical_name_referencing_no_ciphering",
    2: "short_name_referencing_no_ciphering",
    3: "logical_name_referencing_with_ciphering",
    4: "short_name_referencing_with_ciphering",
}
MECHANISMS = {
    0: "none", 1: "lls", 2: "hls", 3: "hls_md5", 4: "hls_sha1", 5: "hls_gmac",
    6: "hls_sha256", 7: "hls_ecdsa",
}  # fmt: skip
ASSOCIATION_RESULTS = {0: "accepted", 1: "rejected_permanent", 2: "rejected_transient"}
ACSE_SERVICE_USER = {
    0: "null", 1: "no_reason_given", 2: "application_context_name_not_supported",
    3: "calling_ap_title_not_recognized", 4: "calling_ap_invocation_identifier_not_recognized",
    5: "calling_ae_qualifier_not_recognized", 6: "calling_ae_invocation_identifier_not_recognized",
    7: "called_ap_title_not_recognized", 8: "called_ap_invocation_identifier_not_recognized",
    9: "called_ae_qualifier_not_recognized", 10: "called_ae_invocation_identifier_not_recognized",
    11: "authentication_mechanism_name_not_recognised",
    12: "authentication_mechanism_name_required", 13: "authentication_failure",
    14: "authentication_required",
}  # fmt: skip
ACSE_SERVICE_PROVIDER = {0: "null", 1: "no_reason_given", 2: "no_common_acse_version"}
RELEASE_REQUEST_REASONS = {0: "normal", 1: "urgent", 30: "user_defined"}
RELEASE_RESPONSE_REASONS = {0: "normal", 1: "not_finished", 30: "user_defined"}
DATA_ACCESS_RESULTS = {
    0: "success", 1: "hardware_fault", 2: "temporary_failure", 3: "read_write_denied",
    4: "object_undefined", 9: "object_class_inconsistent", 11: "object_unavailable",
    12: "type_unmatched", 13: "scope_of_access_violated", 14: "data_block_unavailable",
    15: "long_get_aborted", 16: "no_long_get_in_progress", 17: "long_set_aborted",
    18: "no_long_set_in_progress", 19: "data_block_number_invalid", 250: "other_reason",
}  # fmt: skip
ACTION_RESULTS = {
    **DATA_ACCESS_RESULTS, 15: "long_action_aborted", 16: "no_long_action_in_progress",
    17: "long_action_aborted", 18: "no_long_action_in_progress",
}  # fmt: skip
STATE_ERRORS = {1: "service_not_allowed", 2: "service_unknown"}
SERVICE_ERRORS = {
    1: "operation_not_possible", 2: "service_not_supported", 3: "other_reason",
    4: "pdu_too_long", 5: "deciphering_error", 6: "invocation_counter_error",
}  # fmt: skip
CONFIRMED_SERVICES = {1: "initiate", 2: "get_status", 3: "get_name_list", 4: "get_variable_attribute",
                      5: "read", 6: "write", 7: "get_data_set_attribute", 8: "get_ti_attribute",
                      9: "change_scope", 10: "start", 11: "stop", 12: "resume",
                      13: "make_usable", 14: "initiate_load", 15: "load_segment",
                      16: "terminate_load", 17: "initiate_upload", 18: "upload_segment",
                      19: "terminate_upload"}  # fmt: skip
SERVICE_ERROR_KINDS = {0: "application_reference", 1: "hardware_resource", 2: "vde_state_error",
                       3: "service", 4: "definition", 5: "access", 6: "initiate",
                       7: "load_data_set", 8: "change_scope", 9: "task", 10: "other"}  # fmt: skip
#: ServiceError values of the kinds most met (DLMS UA 1000-2, ConfirmedServiceError)
_SERVICE_ERROR_CODES = {
    1: {0: "other", 1: "memory_unavailable", 2: "processor_resource_unavailable",
        3: "mass_storage_unavailable", 4: "other_resource_unavailable"},
    3: {0: "other", 1: "pdu_size", 2: "service_unsupported"},
    5: {0: "other", 1: "scope_of_access_violated", 2: "object_access_violated",
        3: "hardware_fault", 4: "object_unavailable"},
    6: {0: "other", 1: "dlms_version_too_low", 2: "incompatible_conformance",
        3: "pdu_size_too_short", 4: "refused_by_the_vde_handler"},
}  # fmt: skip
#: conformance block bits, bit 0 the most significant of the 24 (DLMS UA 1000-2 9.4.6.1)
CONFORMANCE_BITS = (
    "reserved_zero", "general_protection", "general_block_transfer", "read", "write",
    "unconfirmed_write", "delta_value_encoding", "reserved_seven",
    "attribute0_supported_with_set", "priority_mgmt_supported", "attribute0_supported_with_get",
    "block_transfer_with_get_or_read", "block_transfer_with_set_or_write",
    "block_transfer_with_action", "multiple_references", "information_report",
    "data_notification", "access", "parameterized_access", "get", "set", "selective_access",
    "event_notification", "action",
)  # fmt: skip
_GET_TYPES = {1: "normal", 2: "next", 3: "with_list"}
_GET_RESPONSE_TYPES = {1: "normal", 2: "with_datablock", 3: "with_list"}
_SET_TYPES = {1: "normal", 2: "with_first_datablock", 3: "with_datablock", 4: "with_list",
              5: "with_list_and_first_datablock"}  # fmt: skip
_SET_RESPONSE_TYPES = {1: "normal", 2: "datablock", 3: "last_datablock",
                       4: "last_datablock_with_list", 5: "with_list"}  # fmt: skip
_ACTION_TYPES = {1: "normal", 2: "next_pblock", 3: "with_list", 4: "with_first_pblock",
                 5: "with_list_and_first_pblock", 6: "with_pblock"}  # fmt: skip
_ACTION_RESPONSE_TYPES = {1: "normal", 2: "with_pblock", 3: "with_list", 4: "next_pblock"}
#: COSEM interface classes (Blue Book) named on the event
CLASS_NAMES = {
    1: "data", 3: "register", 4: "extended_register", 5: "demand_register",
    6: "register_activation", 7: "profile_generic", 8: "clock", 9: "script_table",
    10: "schedule", 11: "special_days_table", 12: "association_sn", 15: "association_ln",
    17: "sap_assignment", 18: "image_transfer", 19: "iec_local_port_setup",
    20: "activity_calendar", 21: "register_monitor", 22: "single_action_schedule",
    23: "iec_hdlc_setup", 26: "utility_tables", 40: "push_setup", 41: "tcp_udp_setup",
    42: "ipv4_setup", 43: "mac_address_setup", 45: "gprs_modem_setup", 48: "ipv6_setup",
    61: "register_table", 62: "compact_data", 63: "status_mapping", 64: "security_setup",
    70: "disconnect_control", 71: "limiter", 72: "mbus_client", 111: "account",
    112: "credit", 113: "charge", 115: "token_gateway",
}  # fmt: skip
#: physical units of the Blue Book (enum of scaler_unit), the common ones
UNITS = {
    1: "a", 2: "mo", 3: "wk", 4: "d", 5: "h", 6: "min", 7: "s", 8: "°", 9: "°C",
    10: "currency", 11: "m", 12: "m/s", 13: "m3", 14: "m3", 15: "m3/h", 16: "m3/h",
    17: "m3/d", 18: "m3/d", 19: "l", 20: "kg", 21: "N", 22: "Nm", 23: "Pa", 24: "bar",
    25: "J", 26: "J/h", 27: "W", 28: "VA", 29: "var", 30: "Wh", 31: "VAh", 32: "varh",
    33: "A", 34: "C", 35: "V", 36: "V/m", 37: "F", 38: "Ω", 39: "Ωm2/m", 40: "Wb", 41: "T",
    42: "A/m", 43: "H", 44: "Hz", 45: "1/(Wh)", 46: "1/(varh)", 47: "1/(VAh)", 48: "V2h",
    49: "A2h", 50: "kg/s", 51: "S", 52: "K", 53: "1/(V2h)", 54: "1/(A2h)", 55: "1/m3",
    56: "%", 57: "Ah", 60: "Wh/m3", 61: "J/m3", 62: "Mol %", 63: "g/m3", 64: "Pa s",
    65: "J/kg", 70: "dBm", 71: "dBµV", 72: "dB", 253: "reserved", 254: "other", 255: "count",
}  # fmt: skip
_SECURITY_SUITES = {0: "aes_gcm_128", 1: "ecdh_ecdsa_aes_gcm_128_sha256",
                    2: "ecdh_ecdsa_aes_gcm_256_sha384"}  # fmt: skip


def obis_text(raw: bytes) -> str:
    """An OBIS code as ``A-B:C.D.E*F``."""
    a, b, c, d, e, f = raw
    return f"{a}-{b}:{c}.{d}.{e}*{f}"


def obis_dotted(raw: bytes) -> str:
    """An OBIS code as ``A.B.C.D.E.F``."""
    return ".".join(str(v) for v in raw)


# -- readers ------------------------------------------------------------------------------------


class _Reader:
    """A cursor over an APDU's bytes; every read past the end raises :class:`DissectError`."""

    __slots__ = ("budget", "data", "pos", "truncated")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos
        self.budget = MAX_VALUES
        self.truncated = False

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise DissectError(f"{size} bytes needed at offset {self.pos}, {self.left()} left")
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return bytes(out)

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise DissectError(f"1 byte needed at offset {self.pos}, none left")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def i8(self) -> int:
        value = self.u8()
        return value - 256 if value > 127 else value

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def length(self) -> int:
        """An A-XDR (and BER) length: one byte below 0x80, else 0x8N and N bytes."""
        first = self.u8()
        if first < 0x80:
            return first
        size = first & 0x7F
        if not 0 < size <= 4:
            raise DissectError(f"length of {size} bytes at offset {self.pos - 1}")
        return int.from_bytes(self.take(size), "big")

    def octets(self) -> bytes:
        return self.take(self.length())

    def rest(self) -> bytes:
        return self.take(self.left())


# -- A-XDR data ---------------------------------------------------------------------------------

DATA_TYPES = {
    0: "null_data", 1: "array", 2: "structure", 3: "boolean", 4: "bit_string",
    5: "double_long", 6: "double_long_unsigned", 9: "octet_string", 10: "visible_string",
    12: "utf8_string", 13: "bcd", 15: "integer", 16: "long", 17: "unsigned",
    18: "long_unsigned", 19: "compact_array", 20: "long64", 21: "long64_unsigned", 22: "enum",
    23: "float32", 24: "float64", 25: "date_time", 26: "date", 27: "time", 255: "dont_care",
}  # fmt: skip
_FIXED = {3: 1, 5: 4, 6: 4, 13: 1, 15: 1, 16: 2, 17: 1, 18: 2, 20: 8, 21: 8, 22: 1, 23: 4,
          24: 8, 25: 12, 26: 5, 27: 4, 0: 0, 255: 0}  # fmt: skip
_SIGNED = frozenset({5, 15, 16, 20})


def _hex(raw: bytes) -> str:
    return raw[:MAX_HEX].hex() + ("…" if len(raw) > MAX_HEX else "")


def date_time_text(raw: bytes) -> str | None:
    """A COSEM date-time (12 bytes) as ISO 8601, or None when a field is unspecified or out of
    range (the deviation, minutes local time is behind UTC, becomes the offset)."""
    if len(raw) != 12:
        return None
    year = (raw[0] << 8) | raw[1]
    month, day, _dow, hour, minute, second, hundredths = raw[2:9]
    deviation = int.from_bytes(raw[9:11], "big", signed=True)
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 60):
        return None
    if year in (0, 0xFFFF):
        return None
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    if 0 < hundredths < 100:
        text += f".{hundredths:02d}"
    if deviation != -0x8000 and -780 <= deviation <= 780:
        offset = -deviation
        sign = "+" if offset >= 0 else "-"
        text += f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    return text


def _date_text(raw: bytes) -> str:
    year = (raw[0] << 8) | raw[1]
    month, day = raw[2], raw[3]
    if year not in (0, 0xFFFF) and 1 <= month <= 12 and 1 <= day <= 31:
        return f"{year:04d}-{month:02d}-{day:02d}"
    return raw.hex()


def _time_text(raw: bytes) -> str:
    hour, minute, second = raw[0], raw[1], raw[2]
    if hour < 24 and minute < 60 and second < 60:
        return f"{hour:02d}:{minute:02d}:{second:02d}"
    return raw.hex()


def _bits(reader: _Reader) -> str:
    """A bit-string as its bits ("0101..."), the first ``MAX_HEX`` * 8 of them."""
    bits = reader.length()
    raw = reader.take((bits + 7) // 8)[:MAX_HEX]
    return "".join(f"{b:08b}" for b in raw)[:bits]


def _fixed(tag: int, raw: bytes) -> Any:
    if tag in (0, 255):
        return None
    if tag == 3:
        return bool(raw[0])
    if tag == 23:
        return struct.unpack("!f", raw)[0]
    if tag == 24:
        return struct.unpack("!d", raw)[0]
    if tag == 25:
        return date_time_text(raw) or raw.hex()
    if tag == 26:
        return _date_text(raw)
    if tag == 27:
        return _time_text(raw)
    if tag == 13:
        return raw.hex()
    return int.from_bytes(raw, "big", signed=tag in _SIGNED)


def _value(reader: _Reader, depth: int) -> Any:
    """One A-XDR Data value."""
    tag = reader.u8()
    reader.budget -= 1
    if tag in _FIXED:
        return _fixed(tag, reader.take(_FIXED[tag]))
    if tag in (1, 2):
        count = reader.length()
        if depth >= MAX_DEPTH:
            raise DissectError(f"A-XDR nesting deeper than {MAX_DEPTH}")
        items = []
        for _ in range(count):
            if reader.budget <= 0:
                reader.truncated = True
                _skip_value(reader, depth + 1)
                continue
            items.append(_value(reader, depth + 1))
        return items
    if tag == 4:
        return _bits(reader)
    if tag == 9:
        raw = reader.octets()
        return date_time_text(raw) or _hex(raw)
    if tag == 10:
        return reader.octets()[:MAX_TEXT].decode("latin-1")
    if tag == 12:
        return reader.octets()[:MAX_TEXT].decode("utf-8", "replace")
    if tag == 19:
        return _compact_array(reader, depth)
    raise DissectError(f"unknown A-XDR data type {tag} at offset {reader.pos - 1}")


def _skip_value(reader: _Reader, depth: int) -> None:
    """Steps over one value once the budget is spent (no Python objects built)."""
    tag = reader.u8()
    if tag in _FIXED:
        reader.take(_FIXED[tag])
    elif tag in (1, 2):
        if depth >= MAX_DEPTH:
            raise DissectError(f"A-XDR nesting deeper than {MAX_DEPTH}")
        for _ in range(reader.length()):
            _skip_value(reader, depth + 1)
    elif tag == 4:
        reader.take((reader.length() + 7) // 8)
    elif tag in (9, 10, 12):
        reader.octets()
    elif tag == 19:
        _compact_array(reader, depth)
    else:
        raise DissectError(f"unknown A-XDR data type {tag} at offset {reader.pos - 1}")


def _type_description(reader: _Reader, depth: int) -> Any:
    """A compact array's TypeDescription: a tag, (array: count, element), (structure: items)."""
    if depth >= MAX_DEPTH:
        raise DissectError(f"A-XDR nesting deeper than {MAX_DEPTH}")
    tag = reader.u8()
    if tag == 1:
        return (1, reader.u16(), _type_description(reader, depth + 1))
    if tag == 2:
        return (2, [_type_description(reader, depth + 1) for _ in range(reader.length())])
    if tag in _FIXED or tag in (4, 9, 10, 12):
        return (tag,)
    raise DissectError(f"unknown type {tag} in a compact array's description")


def _typed(reader: _Reader, description: Any, depth: int) -> Any:
    """One value of a compact array's contents, of the type ``description`` says."""
    if reader.budget <= 0:  # values of no bytes (null-data, empty structures) end here too
        raise _Spent
    tag = description[0]
    reader.budget -= 1
    if tag == 1:
        return [_typed(reader, description[2], depth + 1) for _ in range(description[1])]
    if tag == 2:
        return [_typed(reader, item, depth + 1) for item in description[1]]
    if tag in _FIXED:
        return _fixed(tag, reader.take(_FIXED[tag]))
    if tag == 4:
        return _bits(reader)
    raw = reader.octets()
    if tag == 9:
        return date_time_text(raw) or _hex(raw)
    return raw[:MAX_TEXT].decode("latin-1" if tag == 10 else "utf-8", "replace")


class _Spent(Exception):
    """The value budget ran out inside a compact array."""


def _compact_array(reader: _Reader, depth: int) -> list[Any]:
    """A compact array: its type description, then its contents (an octet string of values of
    that type, with no tags)."""
    description = _type_description(reader, depth)
    contents = _Reader(reader.octets())
    contents.budget = reader.budget
    items = []
    try:
        while contents.left() and contents.budget > 0:
            items.append(_typed(contents, description, depth + 1))
    except _Spent:
        contents.truncated = True
    reader.truncated |= contents.truncated or bool(contents.left())
    reader.budget = contents.budget
    return items


def decode_data(raw: bytes) -> Any:
    """One A-XDR Data value from ``raw`` (all of it), as JSON (see the module documentation)."""
    return _value(_Reader(raw), 0)


# -- xDLMS services -----------------------------------------------------------------------------


def _invoke(record: dict[str, Any], byte: int) -> None:
    """Invoke-Id-And-Priority: invoke id (bits 0-3), service class (bit 6), priority (bit 7)."""
    record["invoke_id"] = byte & 0x0F
    record["service_class"] = "confirmed" if byte & 0x40 else "unconfirmed"
    record["priority"] = "high" if byte & 0x80 else "normal"


def _descriptor(reader: _Reader, method: bool = False) -> dict[str, Any]:
    """A Cosem-Attribute-Descriptor (or Cosem-Method-Descriptor)."""
    class_id = reader.u16()
    instance = reader.take(6)
    member = reader.i8()
    out: dict[str, Any] = {"class_id": class_id, "obis": obis_text(instance),
                           "obis_dotted": obis_dotted(instance)}  # fmt: skip
    if class_id in CLASS_NAMES:
        out["class_name"] = CLASS_NAMES[class_id]
    out["method" if method else "attribute"] = member
    return out


def _selection(reader: _Reader, descriptor: dict[str, Any], limits: _Reader) -> None:
    """The optional Selective-Access-Descriptor after an attribute descriptor."""
    if reader.u8():
        descriptor["access_selection"] = True
        descriptor["access_selector"] = reader.u8()
        descriptor["access_parameters"] = _value(reader, 1)
    else:
        descriptor["access_selection"] = False


def _data(reader: _Reader, record: dict[str, Any], key: str = "data") -> None:
    value = _value(reader, 0)
    record[key] = value
    if reader.truncated:
        record["truncated"] = True


def _get_data_result(reader: _Reader) -> dict[str, Any]:
    """A Get-Data-Result: data or a data-access-result."""
    choice = reader.u8()
    if choice == 0:
        return {"result": "success", "data": _value(reader, 1)}
    if choice == 1:
        code = reader.u8()
        return {"result": DATA_ACCESS_RESULTS.get(code, f"unknown_{code}"), "result_code": code}
    raise DissectError(f"Get-Data-Result choice {choice}")


def _access_result(record: dict[str, Any], code: int, names: dict[int, str]) -> None:
    record["result"] = names.get(code, f"unknown_{code}")
    record["result_code"] = code


def _datablock(reader: _Reader, record: dict[str, Any], raw_data: bool = True) -> None:
    """DataBlock-G/-SA: last-block, block-number, then raw data (or a result)."""
    record["last_block"] = bool(reader.u8())
    record["block_number"] = reader.u32()
    if raw_data:
        raw = reader.octets()
        record["raw_data_length"] = len(raw)


def _get_request(reader: _Reader, record: dict[str, Any]) -> None:
    kind = reader.u8()
    record["request_type"] = _GET_TYPES.get(kind, f"unknown_{kind}")
    _invoke(record, reader.u8())
    if kind == 1:
        descriptor = _descriptor(reader)
        _selection(reader, descriptor, reader)
        record.update(descriptor)
    elif kind == 2:
        record["block_number"] = reader.u32()
    elif kind == 3:
        items = []
        for _ in range(reader.length()):
            descriptor = _descriptor(reader)
            _selection(reader, descriptor, reader)
            items.append(descriptor)
        record["attributes"] = items
        record["obis"] = [item["obis"] for item in items]
    else:
        raise DissectError(f"Get-Request choice {kind}")


def _get_response(reader: _Reader, record: dict[str, Any]) -> None:
    kind = reader.u8()
    record["response_type"] = _GET_RESPONSE_TYPES.get(kind, f"unknown_{kind}")
    _invoke(record, reader.u8())
    if kind == 1:
        record.update(_get_data_result(reader))
    elif kind == 2:
        record["last_block"] = bool(reader.u8())
        record["block_number"] = reader.u32()
        choice = reader.u8()
        if choice == 0:
            record["raw_data"] = reader.octets()  # removed by the session after reassembly
            record["result"] = "success"
        elif choice == 1:
            _access_result(record, reader.u8(), DATA_ACCESS_RESULTS)
        else:
            raise DissectError(f"DataBlock-G result choice {choice}")
    elif kind == 3:
        record["results"] = [_get_data_result(reader) for _ in range(reader.length())]
        failed = [r["result"] for r in record["results"] if r["result"] != "success"]
        record["result"] = failed[0] if failed else "success"
    else:
        raise DissectError(f"Get-Response choice {kind}")
    if reader.truncated:
        record["truncated"] = True


def _set_request(reader: _Reader, record: dict[str, Any]) -> None:
    kind = reader.u8()
    record["request_type"] = _SET_TYPES.get(kind, f"unknown_{kind}")
    _invoke(record, reader.u8())
    if kind in (1, 2):
        descriptor = _descriptor(reader)
        _selection(reader, descriptor, reader)
        record.update(descriptor)
        if kind == 1:
            _data(reader, record, "value")
        else:
            _datablock(reader, record)
    elif kind == 3:
        _datablock(reader, record)
    elif kind in (4, 5):
        items = []
        for _ in range(reader.length()):
            descriptor = _descriptor(reader)
            _selection(reader, descriptor, reader)
            items.append(descriptor)
        record["attributes"] = items
        record["obis"] = [item["obis"] for item in items]
        if kind == 4:
            record["values"] = [_value(reader, 1) for _ in range(reader.length())]
        else:
            _datablock(reader, record)
    else:
        raise DissectError(f"Set-Request choice {kind}")


def _set_response(reader: _Reader, record: dict[str, Any]) -> None:
    kind = reader.u8()
    record["response_type"] = _SET_RESPONSE_TYPES.get(kind, f"unknown_{kind}")
    _invoke(record, reader.u8())
    if kind == 1:
        _access_result(record, reader.u8(), DATA_ACCESS_RESULTS)
    elif kind == 2:
        record["block_number"] = reader.u32()
        record["result"] = "success"
    elif kind == 3:
        _access_result(record, reader.u8(), DATA_ACCESS_RESULTS)
        record["block_number"] = reader.u32()
    elif kind in (4, 5):
        codes = [reader.u8() for _ in range(reader.length())]
        record["results"] = [DATA_ACCESS_RESULTS.get(c, f"unknown_{c}") for c in codes]
        failed = [r for r in record["results"] if r != "success"]
        record["result"] = failed[0] if failed else "success"
        if kind == 4:
            record["block_number"] = reader.u32()
    else:
        raise DissectError(f"Set-Response choice {kind}")


def _action_request(reader: _Reader, record: dict[str, Any]) -> None:
    kind = reader.u8()
    record["request_type"] = _ACTION_TYPES.get(kind, f"unknown_{kind}")
    _invoke(record, reader.u8())
    if kind in (1, 4):
        record.update(_descriptor(reader, method=True))
        if kind == 1:
            if reader.u8():
                _data(reader, record, "parameters")
        else:
            _datablock(reader, record)
    elif kind == 2:
        record["block_number"] = reader.u32()
    elif kind in (3, 5):
        record["methods"] = [_descriptor(reader, method=True) for _ in range(reader.length())]
        record["obis"] = [item["obis"] for item in record["methods"]]
        if kind == 3:
            record["parameters"] = [_value(reader, 1) for _ in range(reader.length())]
        else:
            _datablock(reader, record)
    elif kind == 6:
        _datablock(reader, record)
    else:
        raise DissectError(f"Action-Request choice {kind}")


def _action_result(reader: _Reader) -> dict[str, Any]:
    """Action-Response-With-Optional-Data."""
    out: dict[str, Any] = {}
    _access_result(out, reader.u8(), ACTION_RESULTS)
    if reader.left() and reader.u8():
        returned = _get_data_result(reader)
        if "data" in returned:
            out["return_data"] = returned["data"]
        else:
            out["return_result"] = returned["result"]
    return out


def _action_response(reader: _Reader, record: dict[str, Any]) -> None:
    kind = reader.u8()
    record["response_type"] = _ACTION_RESPONSE_TYPES.get(kind, f"unknown_{kind}")
    _invoke(record, reader.u8())
    if kind == 1:
        record.update(_action_result(reader))
    elif kind == 2:
        _datablock(reader, record)
        record["result"] = "success"
    elif kind == 3:
        record["results"] = [_action_result(reader) for _ in range(reader.length())]
        failed = [r["result"] for r in record["results"] if r["result"] != "success"]
        record["result"] = failed[0] if failed else "success"
    elif kind == 4:
        record["block_number"] = reader.u32()
        record["result"] = "success"
    else:
        raise DissectError(f"Action-Response choice {kind}")


def _event_notification(reader: _Reader, record: dict[str, Any]) -> None:
    if reader.u8():
        raw = reader.octets()
        record["time"] = date_time_text(raw) or raw.hex()
    record.update(_descriptor(reader))
    _data(reader, record, "value")


def _data_notification(reader: _Reader, record: dict[str, Any]) -> None:
    long_invoke = reader.u32()
    record["long_invoke_id"] = long_invoke & 0x00FFFFFF
    record["service_class"] = "confirmed" if long_invoke & 0x40000000 else "unconfirmed"
    record["priority"] = "high" if long_invoke & 0x80000000 else "normal"
    raw = reader.octets()
    if raw:
        record["date_time"] = date_time_text(raw) or raw.hex()
    _data(reader, record, "body")


def _exception_response(reader: _Reader, record: dict[str, Any]) -> None:
    state, service = reader.u8(), reader.u8()
    record["state_error"] = STATE_ERRORS.get(state, f"unknown_{state}")
    record["service_error"] = SERVICE_ERRORS.get(service, f"unknown_{service}")
    if service == 6 and reader.left() >= 4:
        record["invocation_counter"] = reader.u32()


def _confirmed_service_error(reader: _Reader, record: dict[str, Any]) -> None:
    service, kind, code = reader.u8(), reader.u8(), reader.u8()
    record["service"] = CONFIRMED_SERVICES.get(service, f"unknown_{service}")
    record["error_kind"] = SERVICE_ERROR_KINDS.get(kind, f"unknown_{kind}")
    record["error_code"] = code
    names = _SERVICE_ERROR_CODES.get(kind)
    if names:
        record["error"] = names.get(code, f"unknown_{code}")


def _conformance(raw: bytes) -> list[str]:
    bits = int.from_bytes(raw, "big")
    return [name for i, name in enumerate(CONFORMANCE_BITS) if bits & (1 << (23 - i))]


def _conformance_block(reader: _Reader) -> list[str]:
    if reader.take(2) != b"\x5f\x1f":
        raise DissectError("conformance block tag is not 5F1F")
    if reader.u8() != 4:
        raise DissectError("conformance block length is not 4")
    reader.u8()  # unused bits
    return _conformance(reader.take(3))


def _initiate_request(reader: _Reader, record: dict[str, Any]) -> None:
    if reader.u8():
        record["dedicated_key_present"] = True
        reader.octets()  # a key: never recorded
    if reader.u8():
        record["response_allowed"] = bool(reader.u8())
    if reader.u8():
        record["proposed_quality_of_service"] = reader.u8()
    record["proposed_dlms_version"] = reader.u8()
    record["proposed_conformance"] = _conformance_block(reader)
    record["client_max_receive_pdu_size"] = reader.u16()


def dedicated_key(initiate_request: bytes) -> bytes | None:
    """The dedicated key of a plain InitiateRequest APDU (a secret: for the session's use in
    deciphering ded- APDUs, never for an event), or None."""
    if len(initiate_request) < 3 or initiate_request[0] != 0x01 or not initiate_request[1]:
        return None
    try:
        return _Reader(initiate_request, 2).octets()
    except DissectError:
        return None


def _initiate_response(reader: _Reader, record: dict[str, Any]) -> None:
    if reader.u8():
        record["negotiated_quality_of_service"] = reader.u8()
    record["negotiated_dlms_version"] = reader.u8()
    record["negotiated_conformance"] = _conformance_block(reader)
    record["server_max_receive_pdu_size"] = reader.u16()
    vaa = reader.u16()
    record["vaa_name"] = vaa


def _access(reader: _Reader, record: dict[str, Any]) -> None:
    """Access-Request / Access-Response (DLMS UA 1000-2 Ed. 9): the long invoke id, the
    date-time and the count of requests or responses (the bodies are not followed)."""
    long_invoke = reader.u32()
    record["long_invoke_id"] = long_invoke & 0x00FFFFFF
    record["service_class"] = "confirmed" if long_invoke & 0x40000000 else "unconfirmed"
    record["priority"] = "high" if long_invoke & 0x80000000 else "normal"
    raw = reader.octets()
    if raw:
        record["date_time"] = date_time_text(raw) or raw.hex()
    record["items"] = reader.length()


def _general_block_transfer(reader: _Reader, record: dict[str, Any]) -> None:
    """General-Block-Transfer: block-control (last-block, streaming, window), block number, the
    number acknowledged and the block's length (blocks are not reassembled)."""
    control = reader.u8()
    record["last_block"] = bool(control & 0x80)
    record["streaming"] = bool(control & 0x40)
    record["window"] = control & 0x3F
    record["block_number"] = reader.u16()
    record["block_number_ack"] = reader.u16()
    record["block_length"] = len(reader.octets())


def _sn_service(reader: _Reader, record: dict[str, Any]) -> None:
    """SN referencing (read, write, ...): the count of items only."""
    record["items"] = reader.length()


# -- ciphering ----------------------------------------------------------------------------------


def security_control(byte: int) -> dict[str, Any]:
    """The security control byte: suite (bits 0-3), authentication (4), encryption (5), key set
    (6: 0 unicast, 1 broadcast), compression (7)."""
    suite = byte & 0x0F
    return {
        "security_control": byte,
        "security_suite": suite,
        "security_suite_name": _SECURITY_SUITES.get(suite, f"unknown_{suite}"),
        "authentication": bool(byte & 0x10),
        "encryption": bool(byte & 0x20),
        "broadcast_key": bool(byte & 0x40),
        "compressed": bool(byte & 0x80),
    }


def _ciphered(reader: _Reader, record: dict[str, Any], tag: int) -> None:
    """A ciphered APDU's header; ``record['ciphered_content']`` keeps the bytes to decrypt."""
    record["encrypted"] = True
    if tag in (0xDB, 0xDC):
        title = reader.octets()
        record["system_title"] = title.hex()
    elif tag == 0xDD:
        record["transaction_id"] = reader.octets().hex()
        record["originator_system_title"] = reader.octets().hex()
        record["recipient_system_title"] = reader.octets().hex()
        reader.octets()  # date-time
        reader.octets()  # other-information
        if reader.u8():  # key-info: not followed further
            record["key_info"] = True
            record["ciphered_length"] = reader.left()
            return
    content = reader.octets()
    if len(content) < 5:
        raise DissectError("ciphered content shorter than its security header")
    record.update(security_control(content[0]))
    record["invocation_counter"] = int.from_bytes(content[1:5], "big")
    record["ciphered_length"] = len(content) - 5
    record["ciphered_content"] = content


_SERVICES = {
    0x01: _initiate_request, 0x08: _initiate_response, 0xC0: _get_request,
    0xC1: _set_request, 0xC2: _event_notification, 0xC3: _action_request,
    0xC4: _get_response, 0xC5: _set_response, 0xC7: _action_response,
    0x0F: _data_notification, 0xD8: _exception_response, 0x0E: _confirmed_service_error,
    0x05: _sn_service, 0x06: _sn_service, 0x0C: _sn_service, 0x0D: _sn_service,
    0x16: _sn_service, 0x18: _sn_service, 0xD9: _access, 0xDA: _access,
    0xE0: _general_block_transfer,
}  # fmt: skip


# -- ACSE ---------------------------------------------------------------------------------------


def _ber_items(raw: bytes) -> list[tuple[int, bytes]]:
    """The (tag, value) pairs of a BER-encoded sequence (tags of one byte, as ACSE uses)."""
    reader = _Reader(raw)
    items = []
    while reader.left():
        tag = reader.u8()
        size = reader.length()
        if tag == 0xBE and size != reader.left():  # user-information, always last
            items.append((tag, reader.rest()))  # (Gurux's RLRE: one byte more than it says)
            break
        items.append((tag, reader.take(size)))
    return items


def _oid_last(value: bytes, prefix: bytes) -> int:
    """The last arc of a DLMS object identifier (2.16.756.5.8.x.y) whose body starts with
    ``prefix``; -1 when it is not of that form."""
    if len(value) == len(prefix) + 1 and value.startswith(prefix):
        return value[-1]
    return -1


_CONTEXT_PREFIX = bytes.fromhex("608574050801")
_MECHANISM_PREFIX = bytes.fromhex("608574050802")


def _application_context(value: bytes, record: dict[str, Any]) -> None:
    """application-context-name: [1] EXPLICIT OBJECT IDENTIFIER (2.16.756.5.8.1.x)."""
    if len(value) >= 2 and value[0] == 0x06:
        if value[1] + 2 != len(value):
            raise DissectError("application-context-name: OBJECT IDENTIFIER length mismatch")
        value = value[2:]
    ident = _oid_last(value, _CONTEXT_PREFIX)
    record["application_context"] = APPLICATION_CONTEXTS.get(ident, value.hex())
    record["application_context_id"] = ident
    if ident in (3, 4):
        record["ciphered_context"] = True


def _mechanism(value: bytes, record: dict[str, Any]) -> None:
    ident = _oid_last(value, _MECHANISM_PREFIX)
    record["authentication_mechanism"] = MECHANISMS.get(ident, value.hex())
    record["authentication_mechanism_id"] = ident


def _ap_title(value: bytes) -> str:
    if len(value) >= 2 and value[0] == 0x04:  # EXPLICIT OCTET STRING
        return value[2 : 2 + value[1]].hex()
    return value.hex()


def _authentication_value(value: bytes, record: dict[str, Any], key: str) -> None:
    """Authentication-value CHOICE: only its presence and length (never the secret)."""
    secret = value[2 : 2 + value[1]] if len(value) >= 2 else value
    record[f"{key}_present"] = True
    record[f"{key}_length"] = len(secret)


def _user_information(value: bytes, record: dict[str, Any]) -> None:
    """User-information: an OCTET STRING holding an xDLMS Initiate APDU (plain or ciphered)."""
    if len(value) < 2 or value[0] != 0x04:
        raise DissectError("user-information is not an OCTET STRING")
    inner = _Reader(value, 1).octets()
    if not inner:
        return
    information = decode_apdu(inner)
    if "ciphered_content" not in information:  # a glo-initiate's: the session deciphers it
        information.pop("tag", None)
    record["user_information"] = information


def _int(value: bytes) -> int:
    if len(value) >= 3 and value[0] == 0x02:  # [n] EXPLICIT INTEGER
        return int.from_bytes(value[2 : 2 + value[1]], "big")
    return int.from_bytes(value, "big") if value else 0


def _aarq(items: list[tuple[int, bytes]], record: dict[str, Any]) -> None:
    record["authentication_mechanism"] = "none"
    for tag, value in items:
        if tag == 0xA1:
            _application_context(value, record)
        elif tag == 0xA2:
            record["called_ap_title"] = _ap_title(value)
        elif tag == 0xA6:
            record["calling_ap_title"] = _ap_title(value)
        elif tag == 0xA7:
            record["calling_ae_qualifier_length"] = len(value)
        elif tag == 0x8A:
            record["sender_acse_requirements"] = value.hex()
        elif tag == 0x8B:
            _mechanism(value, record)
        elif tag == 0xAC:
            _authentication_value(value, record, "calling_authentication_value")
        elif tag == 0xBE:
            _user_information(value, record)


def _aare(items: list[tuple[int, bytes]], record: dict[str, Any]) -> None:
    for tag, value in items:
        if tag == 0xA1:
            _application_context(value, record)
        elif tag == 0xA2:
            code = _int(value)
            record["result"] = ASSOCIATION_RESULTS.get(code, f"unknown_{code}")
            record["result_code"] = code
        elif tag == 0xA3 and len(value) >= 2:
            source, inner = value[0], value[2:]
            code = _int(inner)
            if source == 0xA1:
                record["diagnostic_source"] = "acse_service_user"
                record["diagnostic"] = ACSE_SERVICE_USER.get(code, f"unknown_{code}")
            else:
                record["diagnostic_source"] = "acse_service_provider"
                record["diagnostic"] = ACSE_SERVICE_PROVIDER.get(code, f"unknown_{code}")
            record["diagnostic_code"] = code
        elif tag == 0xA4:
            record["responding_ap_title"] = _ap_title(value)
        elif tag == 0x88:
            record["responder_acse_requirements"] = value.hex()
        elif tag == 0x89:
            _mechanism(value, record)
        elif tag == 0xAA:
            _authentication_value(value, record, "responding_authentication_value")
        elif tag == 0xBE:
            _user_information(value, record)


def _release(items: list[tuple[int, bytes]], record: dict[str, Any], names: dict[int, str]) -> None:
    for tag, value in items:
        if tag == 0x80:
            code = _int(value)
            record["reason"] = names.get(code, f"unknown_{code}")
        elif tag == 0xBE:
            _user_information(value, record)


# -- APDUs --------------------------------------------------------------------------------------


def scrub(raw: bytes) -> bytes:
    """``raw`` with the value of any ACSE authentication-value (``AC len 80 len value``, the LLS
    password or an HLS challenge) zeroed: what malformed and violation events keep as raw hex."""
    out = bytearray(raw)
    start = out.find(b"\xac")
    while 0 <= start < len(out) - 3:
        size = out[start + 1]
        if out[start + 2] == 0x80 and out[start + 3] == size - 2:
            end = min(len(out), start + 4 + out[start + 3])
            out[start + 4 : end] = bytes(end - start - 4)
        start = out.find(b"\xac", start + 1)
    return bytes(out)


def decode_apdu(apdu: bytes) -> dict[str, Any]:
    """One xDLMS or ACSE APDU: ``apdu_type`` (the snake_case name, :data:`APDU_NAMES`), ``tag``,
    and the fields of its kind; raises :class:`DissectError` on bytes that do not decode."""
    if not apdu:
        raise DissectError("empty APDU")
    tag = apdu[0]
    name = APDU_NAMES.get(tag)
    if name is None:
        raise DissectError(f"unknown APDU tag 0x{tag:02x}")
    record: dict[str, Any] = {"apdu_type": name, "tag": tag}
    reader = _Reader(apdu, 1)
    if tag in (0x60, 0x61, 0x62, 0x63):
        body = reader.octets()
        if reader.left():  # a length short of the bytes (Gurux's RLRE): read them all
            record["anomalies"] = ["acse_length_mismatch"]
            body += reader.rest()
        items = _ber_items(body)
        if tag == 0x60:
            _aarq(items, record)
        elif tag == 0x61:
            _aare(items, record)
        else:
            _release(items, record, RELEASE_REQUEST_REASONS if tag == 0x62
                     else RELEASE_RESPONSE_REASONS)  # fmt: skip
    elif tag in _CIPHERED or tag in _GENERAL_CIPHERED:
        if tag in _CIPHERED:
            content = reader.octets()
            if len(content) < 5:
                raise DissectError("ciphered APDU shorter than its security header")
            record["encrypted"] = True
            record.update(security_control(content[0]))
            record["invocation_counter"] = int.from_bytes(content[1:5], "big")
            record["ciphered_length"] = len(content) - 5
            record["ciphered_content"] = content
            record["scope"] = "global" if tag < 0x40 or 0xC8 <= tag <= 0xCF else "dedicated"
        else:
            _ciphered(reader, record, tag)
    elif tag in _SERVICES:
        _SERVICES[tag](reader, record)
    else:  # general-signing: named only
        record["length"] = len(apdu)
    return record


def decipher(
    record: dict[str, Any], system_title: bytes, key: bytes, authentication_key: bytes
) -> bytes:
    """The plain APDU inside a ciphered APDU ``record`` (from :func:`decode_apdu`), with the
    sender's ``system_title`` and keys; authenticated-only content is checked by its tag only
    when keys are given (here: returned without the tag). Raises :class:`DissectError`."""
    from dlms_cosem import security  # type: ignore[import-untyped]  # only runs with keys pay

    content: bytes = record["ciphered_content"]
    control = content[0]
    body = content[5:]
    invocation_counter = int.from_bytes(content[1:5], "big")
    if not control & 0x20:  # authenticated only: the APDU is in clear, followed by the tag
        return body[:-12] if control & 0x10 else body
    if not control & 0x10:  # encryption only: AES-GCM without its tag is AES-CTR from J0 + 1
        return _ctr(key, system_title + content[1:5], body)
    try:
        field = security.SecurityControlField(
            security_suite=control & 0x0F,
            authenticated=True,
            encrypted=True,
            broadcast_key=bool(control & 0x40),
            compressed=bool(control & 0x80),
        )
        plain: bytes = security.decrypt(
            security_control=field,
            system_title=system_title,
            invocation_counter=invocation_counter,
            key=key,
            cipher_text=body,
            auth_key=authentication_key,
        )
    except Exception as exc:  # dlms-cosem raises its DecryptionError, ValueError, ...
        raise DissectError(f"decryption failed: {exc}") from exc
    return plain


def _ctr(key: bytes, iv: bytes, body: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if len(iv) != 12 or len(key) not in (16, 32):
        raise DissectError("system title or key of the wrong length")
    decryptor = Cipher(algorithms.AES(key), modes.CTR(iv + b"\x00\x00\x00\x02")).decryptor()
    return bytes(decryptor.update(body) + decryptor.finalize())


def authenticated_plain(record: dict[str, Any]) -> bytes | None:
    """The APDU of a ciphered APDU protected by authentication only (no keys needed to read
    it), or None."""
    content = record.get("ciphered_content")
    if not content or content[0] & 0x30 != 0x10 or len(content) < 5 + 12:
        return None
    return bytes(content[5:-12])


# -- meter readings -----------------------------------------------------------------------------

#: OBIS value groups C (electricity, A = 1) of energy and instantaneous quantities
_ENERGY_C = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16, 21, 22, 23, 24, 31, 32,
                       41, 42, 43, 44, 51, 52, 61, 62, 63, 64, 71, 72, 81, 91})  # fmt: skip
_REGISTER_CLASSES = frozenset({3, 4, 5})
#: OBIS C modulo 20 (the phase blocks 21-40, 41-60, 61-80 repeat 1-20) -> direction
_DIRECTIONS = {1: "import", 3: "import", 9: "import", 2: "export", 4: "export", 10: "export"}
_QUANTITIES = {11: "current", 12: "voltage", 13: "power_factor", 14: "frequency"}


@dataclass
class Profile:
    """What a session knows of a load profile (class 7): its capture objects (attribute 3:
    class id, OBIS, attribute, data index of each column) and capture period (attribute 4)."""

    columns: list[tuple[int, bytes, int]] = field(default_factory=list)
    capture_period_s: int | None = None


def energy_obis(obis: bytes) -> bool:
    """Whether an OBIS code names an electricity energy, power, voltage or current value
    (1-b:C.D.e, D 4-8 or 24-29: demand, instantaneous, energy) or a load profile (1-b:99.x.e)."""
    a, _b, c, d = obis[0], obis[1], obis[2], obis[3]
    return a == 1 and ((c in _ENERGY_C and d in (4, 5, 6, 7, 8, 24, 25, 27, 29)) or c == 99)


def scaler_unit(value: Any) -> tuple[int, int] | None:
    """A register's attribute 3 (scaler_unit: structure of integer scaler and unit enum)."""
    if isinstance(value, list) and len(value) == 2:
        scaler, unit = value
        if isinstance(scaler, int) and isinstance(unit, int) and -128 <= scaler <= 127:
            return scaler, unit
    return None


def capture_objects(value: Any) -> list[tuple[int, bytes, int]] | None:
    """A profile's attribute 3: (class id, OBIS, attribute) of each column, or None when the
    value is not an array of capture-object definitions."""
    if not isinstance(value, list):
        return None
    columns = []
    for item in value:
        if not (isinstance(item, list) and len(item) >= 3 and isinstance(item[1], str)):
            return None
        class_id, obis_hex, attribute = item[0], item[1], item[2]
        if not (isinstance(class_id, int) and isinstance(attribute, int) and len(obis_hex) == 12):
            return None
        try:
            columns.append((class_id, bytes.fromhex(obis_hex), attribute))
        except ValueError:
            return None
    return columns


def reading(obis: bytes, value: float, known: tuple[int, int] | None) -> dict[str, Any]:
    """One ``energy.readings`` item: ``value`` the physical value (scaled when the register's
    scaler is ``known``; ``raw_value`` and ``scaler`` then say from what), ``unit``,
    ``direction`` (import, export) and ``quantity`` (energy, power, current...) from the OBIS
    code."""
    out: dict[str, Any] = {"obis": obis_text(obis), "value": value}
    if known:
        scaler, unit = known
        scaled = value * 10**scaler
        out["value"] = round(scaled, -scaler) if scaler < 0 else scaled
        out["raw_value"] = value
        out["scaler"] = scaler
        out["unit"] = UNITS.get(unit, str(unit))
    c, d = obis[2], obis[3]
    direction = _DIRECTIONS.get(c % 20) if c < 81 else None
    if direction:
        out["direction"] = direction
    quantity = _QUANTITIES.get(c % 20) if c < 81 else None
    out["quantity"] = quantity or ("energy" if d in (8, 9, 29) else "power")
    return out


def readings(
    class_id: int,
    obis: bytes,
    attribute: int,
    value: Any,
    scalers: dict[tuple[int, bytes], tuple[int, int]],
    profiles: dict[bytes, Profile] | None = None,
    limit: int = 4096,
) -> list[dict[str, Any]]:
    """The meter readings a GET response's (or notification's) ``value`` of (``class_id``,
    ``obis``, ``attribute``) carries: a register's value (classes 3, 4, 5, attribute 2) of an
    energy OBIS code, scaled and with its unit when ``scalers`` (class and OBIS -> scaler, unit)
    knows them; or a load profile's buffer (class 7, attribute 2) whose capture objects
    ``profiles`` knows: each energy column of each row, at the row's clock (``time``) and with
    the capture period (``interval_s``). Empty for anything else."""
    if attribute != 2 or not energy_obis(obis):
        return []
    if class_id in _REGISTER_CLASSES:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [reading(obis, value, scalers.get((class_id, obis)))]
        return []
    profile = (profiles or {}).get(obis)
    if class_id != 7 or not isinstance(value, list) or profile is None or not profile.columns:
        return []
    found: list[dict[str, Any]] = []
    for row in value:
        if not isinstance(row, list) or len(row) != len(profile.columns):
            continue
        time = next(
            (v for (c, _, a), v in zip(profile.columns, row, strict=True)
             if c == 8 and a == 2 and isinstance(v, str)), None,
        )  # fmt: skip
        for (column_class, column_obis, column_attribute), cell in zip(
            profile.columns, row, strict=True
        ):
            if column_attribute != 2 or not energy_obis(column_obis) or column_obis[2] == 99:
                continue
            if not isinstance(cell, (int, float)) or isinstance(cell, bool):
                continue
            item = reading(column_obis, cell, scalers.get((column_class, column_obis)))
            if time:
                item["time"] = time
            if profile.capture_period_s:
                item["interval_s"] = profile.capture_period_s
            item["profile"] = obis_text(obis)
            found.append(item)
            if len(found) >= limit:
                return found
    return found


def notification_readings(body: Any, limit: int = 64) -> list[dict[str, Any]]:
    """The meter readings of a DataNotification's body (a push of a Push setup's objects): in
    any structure, an energy OBIS code (a 6-byte octet string) followed by a number, and by a
    scaler_unit structure when there is one. At most ``limit`` readings."""
    found: list[dict[str, Any]] = []
    stack = [body]
    while stack and len(found) < limit:
        item = stack.pop()
        if not isinstance(item, list):
            continue
        for index, element in enumerate(item):
            if isinstance(element, list):
                stack.append(element)
                continue
            if not (isinstance(element, str) and len(element) == 12) or index + 1 >= len(item):
                continue
            try:
                obis = bytes.fromhex(element)
            except ValueError:
                continue
            value = item[index + 1]
            if not energy_obis(obis) or isinstance(value, bool):
                continue
            if not isinstance(value, (int, float)):
                continue
            known = scaler_unit(item[index + 2]) if index + 2 < len(item) else None
            found.append(reading(obis, value, known))
    return found
