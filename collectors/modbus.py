"""Modbus/TCP: the MBAP framer and a dissector for every public function code.

Names follow the MODBUS Application Protocol Specification V1.1b3 and the MODBUS Messaging on
TCP/IP Implementation Guide V1.0b. A dissector is a pure function from bytes to a record (a
``dict`` of ``modbus.*`` fields); pairing and events live in :mod:`collectors.modbus_session`.

ADU on TCP (MBAP header, then the PDU)::

    0      2      4      6    7        8
    +------+------+------+----+--------+----------------+
    | tid  | pid  | len  |uid | fc     | data (len - 2) |
    +------+------+------+----+--------+----------------+
    tid transaction id, pid protocol id (0 = Modbus), len counts uid + PDU (2..254 bytes),
    uid unit id, fc function code (fc | 0x80 in an exception response, then one exception code).

The record of a request holds ``request.*`` (address, quantity, values ...); of a response,
``response.*``. Bit values are lists of booleans, register values lists of unsigned 16-bit ints.
A PDU too short for its function code raises :class:`soc.errors.DissectError`; an unknown or
vendor function code is kept with its raw bytes and flagged, never dropped.
"""

from __future__ import annotations

import struct
from typing import Any

from soc.errors import DissectError

MBAP_LENGTH = 7
MAX_LENGTH_FIELD = 254  # unit id + the largest PDU (253 bytes)

FUNCTION_NAMES: dict[int, str] = {
    1: "read_coils",
    2: "read_discrete_inputs",
    3: "read_holding_registers",
    4: "read_input_registers",
    5: "write_single_coil",
    6: "write_single_register",
    7: "read_exception_status",
    8: "diagnostics",
    11: "get_comm_event_counter",
    12: "get_comm_event_log",
    15: "write_multiple_coils",
    16: "write_multiple_registers",
    17: "report_server_id",
    20: "read_file_record",
    21: "write_file_record",
    22: "mask_write_register",
    23: "read_write_multiple_registers",
    24: "read_fifo_queue",
    43: "encapsulated_interface_transport",
}
MEI_TYPES = {13: "canopen_general_reference", 14: "read_device_identification"}
EXCEPTION_NAMES = {
    1: "illegal_function",
    2: "illegal_data_address",
    3: "illegal_data_value",
    4: "server_device_failure",
    5: "acknowledge",
    6: "server_device_busy",
    8: "memory_parity_error",
    10: "gateway_path_unavailable",
    11: "gateway_target_device_failed_to_respond",
}
DIAGNOSTIC_NAMES = {
    0: "return_query_data",
    1: "restart_communications_option",
    2: "return_diagnostic_register",
    3: "change_ascii_input_delimiter",
    4: "force_listen_only_mode",
    10: "clear_counters_and_diagnostic_register",
    11: "return_bus_message_count",
    12: "return_bus_communication_error_count",
    13: "return_bus_exception_error_count",
    14: "return_server_message_count",
    15: "return_server_no_response_count",
    16: "return_server_nak_count",
    17: "return_server_busy_count",
    18: "return_bus_character_overrun_count",
    20: "clear_overrun_counter_and_flag",
}
DEVICE_ID_OBJECTS = {
    0: "vendor_name",
    1: "product_code",
    2: "major_minor_revision",
    3: "vendor_url",
    4: "product_name",
    5: "model_name",
    6: "user_application_name",
}
READ_DEVICE_ID_CODES = {1: "basic", 2: "regular", 3: "extended", 4: "individual"}
#: Function codes that read (the rest write, diagnose or identify).
READ_FUNCTIONS = frozenset({1, 2, 3, 4, 7, 11, 12, 17, 20, 24, 43})
WRITE_FUNCTIONS = frozenset({5, 6, 15, 16, 21, 22, 23})

_HH = struct.Struct("!HH")
_HHH = struct.Struct("!HHH")
_MBAP = struct.Struct("!HHHB")


def frame_length(buffer: bytes | bytearray) -> int:
    """Bytes of the next ADU at the start of ``buffer``: 0 when more are needed, -1 when the
    bytes are not a Modbus/TCP header (protocol id not 0, length out of range)."""
    if len(buffer) < 6:
        return 0
    if buffer[2] or buffer[3]:
        return -1
    length = (buffer[4] << 8) | buffer[5]
    if length < 2 or length > MAX_LENGTH_FIELD:
        return -1
    return 6 + length


def plausible_adu(payload: bytes) -> bool:
    """Content detection: the payload is one or more whole Modbus/TCP ADUs with known codes."""
    offset = 0
    while offset < len(payload):
        size = frame_length(payload[offset:])
        if size <= 0 or offset + size > len(payload):
            return False
        if payload[offset + 7] & 0x7F not in FUNCTION_NAMES:
            return False
        offset += size
    return offset > 0


def parse_mbap(adu: bytes) -> tuple[int, int, int, int]:
    """(transaction id, protocol id, length, unit id) of an ADU of at least 7 bytes."""
    return _MBAP.unpack_from(adu)


def dissect_pdu(pdu: bytes, *, request: bool, quantity: int | None = None) -> dict[str, Any]:
    """The ``modbus.*`` fields of one PDU (function code first).

    ``request`` says the direction (client to server); ``quantity`` is the paired request's
    quantity, which sizes the bit list of a read coils/discrete inputs response.
    """
    if not pdu:
        raise DissectError("empty PDU (no function code)")
    code = pdu[0]
    body = pdu[1:]
    if not request and code & 0x80:
        function = code & 0x7F
        record = _function(function)
        record["exception_code"] = _need(body, 1, function, "exception")[0]
        record["exception_name"] = EXCEPTION_NAMES.get(record["exception_code"], "unknown")
        return record
    record = _function(code)
    if code not in FUNCTION_NAMES:
        record["raw"] = body.hex()
        return record
    decoder = _REQUESTS[code] if request else _RESPONSES[code]
    part, extra = decoder(body, quantity)
    if part:
        record["request" if request else "response"] = part
    record.update(extra)
    return record


def _function(code: int) -> dict[str, Any]:
    return {"function_code": code, "function_name": FUNCTION_NAMES.get(code, "unknown")}


def _need(body: bytes, size: int, code: int, what: str = "data") -> bytes:
    if len(body) < size:
        raise DissectError(f"function {code} {what}: {len(body)} bytes, at least {size} expected")
    return body


def _bits(data: bytes, count: int) -> list[bool]:
    return [bool(data[i >> 3] >> (i & 7) & 1) for i in range(min(count, len(data) * 8))]


def _registers(data: bytes) -> list[int]:
    return list(struct.unpack(f"!{len(data) // 2}H", data[: len(data) // 2 * 2]))


Decoded = tuple[dict[str, Any], dict[str, Any]]


def _address_quantity(body: bytes, quantity: int | None, code: int = 0) -> Decoded:
    address, count = _HH.unpack_from(_need(body, 4, code))
    return {"address": address, "quantity": count}, {}


def _count_check(body: bytes, count: int) -> dict[str, Any]:
    """The anomaly of a byte count that does not match the bytes that follow it."""
    return {} if count == len(body) - 1 else {"anomalies": ["byte_count_mismatch"]}


def _read_bits_response(body: bytes, quantity: int | None) -> Decoded:
    count = _need(body, 1, 1)[0]
    data = body[1 : 1 + count]
    bits = _bits(data, quantity if quantity is not None else count * 8)
    return {"byte_count": count, "values": bits}, _count_check(body, count)


def _read_registers_response(body: bytes, quantity: int | None) -> Decoded:
    count = _need(body, 1, 3)[0]
    extra = _count_check(body, count)
    if count % 2 and not extra:
        extra = {"anomalies": ["byte_count_mismatch"]}
    return {"byte_count": count, "values": _registers(body[1 : 1 + count])}, extra


def _write_single_coil(body: bytes, quantity: int | None) -> Decoded:
    address, value = _HH.unpack_from(_need(body, 4, 5))
    part: dict[str, Any] = {"address": address, "values": [value == 0xFF00]}
    extra = {} if value in (0, 0xFF00) else {"anomalies": ["illegal_coil_value"]}
    return part, extra


def _write_single_register(body: bytes, quantity: int | None) -> Decoded:
    address, value = _HH.unpack_from(_need(body, 4, 6))
    return {"address": address, "values": [value]}, {}


def _nothing(body: bytes, quantity: int | None) -> Decoded:
    return {}, {}


def _exception_status(body: bytes, quantity: int | None) -> Decoded:
    return {"values": _bits(_need(body, 1, 7), 8)}, {}


def _diagnostics(body: bytes, quantity: int | None) -> Decoded:
    sub = struct.unpack_from("!H", _need(body, 2, 8))[0]
    data = body[2:]
    extra = {"sub_function": sub, "sub_function_name": DIAGNOSTIC_NAMES.get(sub, "unknown")}
    return {"data": data.hex()}, extra


def _comm_event_counter(body: bytes, quantity: int | None) -> Decoded:
    status, count = _HH.unpack_from(_need(body, 4, 11))
    return {"status": status, "event_count": count}, {}


def _comm_event_log(body: bytes, quantity: int | None) -> Decoded:
    count = _need(body, 7, 12)[0]
    status, events, messages = _HHH.unpack_from(body, 1)
    return {
        "byte_count": count,
        "status": status,
        "event_count": events,
        "message_count": messages,
        "events": list(body[7 : 1 + count]),
    }, {}


def _write_multiple_coils(body: bytes, quantity: int | None) -> Decoded:
    address, count, size = struct.unpack_from("!HHB", _need(body, 5, 15))
    return {"address": address, "quantity": count, "byte_count": size,
            "values": _bits(body[5 : 5 + size], count)}, {}  # fmt: skip


def _write_multiple_registers(body: bytes, quantity: int | None) -> Decoded:
    address, count, size = struct.unpack_from("!HHB", _need(body, 5, 16))
    return {"address": address, "quantity": count, "byte_count": size,
            "values": _registers(body[5 : 5 + size])}, {}  # fmt: skip


def _report_server_id(body: bytes, quantity: int | None) -> Decoded:
    count = _need(body, 1, 17)[0]
    data = body[1 : 1 + count]
    part: dict[str, Any] = {"byte_count": count, "server_id": data[:-1].hex()}
    if data:
        part["run_indicator"] = data[-1] == 0xFF
    return part, {}


def _file_records(body: bytes, write: bool) -> list[dict[str, Any]]:
    records = []
    pos, end = 1, 1 + body[0]
    while pos + 7 <= min(end, len(body)):
        ref, file, record, length = struct.unpack_from("!BHHH", body, pos)
        item = {"reference_type": ref, "file_number": file, "record_number": record,
                "record_length": length}  # fmt: skip
        pos += 7
        if write:
            item["values"] = _registers(body[pos : pos + 2 * length])
            pos += 2 * length
        records.append(item)
    return records


def _read_file_request(body: bytes, quantity: int | None) -> Decoded:
    _need(body, 1, 20)
    return {"byte_count": body[0], "records": _file_records(body, write=False)}, {}


def _write_file(body: bytes, quantity: int | None) -> Decoded:
    _need(body, 1, 21)
    return {"byte_count": body[0], "records": _file_records(body, write=True)}, {}


def _read_file_response(body: bytes, quantity: int | None) -> Decoded:
    size = _need(body, 1, 20)[0]
    records, pos, end = [], 1, min(1 + size, len(body))
    while pos + 2 <= end:
        length, ref = body[pos], body[pos + 1]
        records.append({"reference_type": ref,
                        "values": _registers(body[pos + 2 : pos + 1 + length])})  # fmt: skip
        pos += 1 + max(length, 1)
    return {"byte_count": size, "records": records}, {}


def _mask_write(body: bytes, quantity: int | None) -> Decoded:
    address, and_mask, or_mask = _HHH.unpack_from(_need(body, 6, 22))
    return {"address": address, "and_mask": and_mask, "or_mask": or_mask}, {}


def _read_write_request(body: bytes, quantity: int | None) -> Decoded:
    raddr, rcount, waddr, wcount, size = struct.unpack_from("!HHHHB", _need(body, 9, 23))
    return {
        "read_address": raddr,
        "read_quantity": rcount,
        "address": waddr,
        "quantity": wcount,
        "byte_count": size,
        "values": _registers(body[9 : 9 + size]),
    }, {}


def _fifo_request(body: bytes, quantity: int | None) -> Decoded:
    return {"address": struct.unpack_from("!H", _need(body, 2, 24))[0]}, {}


def _fifo_response(body: bytes, quantity: int | None) -> Decoded:
    size, count = _HH.unpack_from(_need(body, 4, 24))
    return {
        "byte_count": size,
        "quantity": count,
        "values": _registers(body[4 : 4 + 2 * count]),
    }, {}


def _mei_request(body: bytes, quantity: int | None) -> Decoded:
    mei = _need(body, 1, 43)[0]
    extra: dict[str, Any] = {"mei_type": mei, "mei_name": MEI_TYPES.get(mei, "unknown")}
    if mei == 14 and len(body) >= 3:
        return {"read_device_id_code": body[1], "object_id": body[2]}, extra
    return {"data": body[1:].hex()}, extra


def _mei_response(body: bytes, quantity: int | None) -> Decoded:
    mei = _need(body, 1, 43)[0]
    extra: dict[str, Any] = {"mei_type": mei, "mei_name": MEI_TYPES.get(mei, "unknown")}
    if mei != 14:
        return {"data": body[1:].hex()}, extra
    code, conformity, more, next_id, count = struct.unpack_from("!BBBBB", _need(body, 6, 43), 1)
    objects: dict[str, str] = {}
    pos = 6
    for _ in range(count):
        if pos + 2 > len(body):
            raise DissectError("function 43/14: object list ends early")
        object_id, length = body[pos], body[pos + 1]
        value = body[pos + 2 : pos + 2 + length]
        if len(value) < length:
            raise DissectError("function 43/14: object value ends early")
        key = DEVICE_ID_OBJECTS.get(object_id, f"object_{object_id}")
        objects[key] = value.decode("latin-1")
        pos += 2 + length
    extra["device_identification"] = objects
    anomalies = []
    if more not in (0x00, 0xFF):  # the specification allows only these two values
        anomalies.append("invalid_more_follows")
    if pos < len(body):
        anomalies.append("trailing_bytes")
        extra["trailing"] = body[pos:].hex()
    if anomalies:
        extra["anomalies"] = anomalies
    return {
        "read_device_id_code": code,
        "conformity_level": conformity,
        "more_follows": more == 0xFF,
        "next_object_id": next_id,
        "number_of_objects": count,
    }, extra


def _code(code: int, decoder: Any) -> Any:
    return lambda body, quantity: decoder(body, quantity, code)


_REQUESTS: dict[int, Any] = {
    1: _code(1, _address_quantity),
    2: _code(2, _address_quantity),
    3: _code(3, _address_quantity),
    4: _code(4, _address_quantity),
    5: _write_single_coil,
    6: _write_single_register,
    7: _nothing,
    8: _diagnostics,
    11: _nothing,
    12: _nothing,
    15: _write_multiple_coils,
    16: _write_multiple_registers,
    17: _nothing,
    20: _read_file_request,
    21: _write_file,
    22: _mask_write,
    23: _read_write_request,
    24: _fifo_request,
    43: _mei_request,
}
_RESPONSES: dict[int, Any] = {
    1: _read_bits_response,
    2: _read_bits_response,
    3: _read_registers_response,
    4: _read_registers_response,
    5: _write_single_coil,
    6: _write_single_register,
    7: _exception_status,
    8: _diagnostics,
    11: _comm_event_counter,
    12: _comm_event_log,
    15: _code(15, _address_quantity),
    16: _code(16, _address_quantity),
    17: _report_server_id,
    20: _read_file_response,
    21: _write_file,
    22: _mask_write,
    23: _read_registers_response,
    24: _fifo_response,
    43: _mei_response,
}
