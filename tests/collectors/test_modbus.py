"""The Modbus dissector against PDUs encoded by pymodbus (an independent implementation).

Each row builds a message with pymodbus, encodes it, and checks that our dissector reads back
the arguments pymodbus was given: the expected values come from the rows, not from our output.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadCoilsResponse,
    WriteMultipleCoilsRequest,
    WriteSingleCoilRequest,
)
from pymodbus.pdu.diag_message import ReturnDiagnosticRegisterRequest
from pymodbus.pdu.exceptionresponse import ExceptionResponse
from pymodbus.pdu.mei_message import ReadDeviceInformationRequest, ReadDeviceInformationResponse
from pymodbus.pdu.other_message import GetCommEventCounterResponse
from pymodbus.pdu.register_message import (
    MaskWriteRegisterRequest,
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadWriteMultipleRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterRequest,
)

from collectors.modbus import dissect_pdu, frame_length, plausible_adu
from soc.errors import DissectError


def _pdu(message: ModbusPDU) -> bytes:
    return bytes([message.function_code]) + message.encode()


GOLDEN: list[tuple[str, ModbusPDU, bool, dict[str, Any]]] = [
    ("read coils", ReadCoilsRequest(address=19, count=37), True,
     {"function_code": 1, "request": {"address": 19, "quantity": 37}}),
    ("read coils response", ReadCoilsResponse(bits=[True, False, True, True] + [False] * 4), False,
     {"function_code": 1, "response": {"byte_count": 1,
                                       "values": [True, False, True, True] + [False] * 4}}),
    ("read holding registers", ReadHoldingRegistersRequest(address=107, count=3), True,
     {"function_code": 3, "request": {"address": 107, "quantity": 3}}),
    ("read holding response", ReadHoldingRegistersResponse(registers=[0x022B, 0, 0x64]), False,
     {"function_code": 3, "response": {"byte_count": 6, "values": [555, 0, 100]}}),
    ("read input registers", ReadInputRegistersRequest(address=8, count=1), True,
     {"function_code": 4, "request": {"address": 8, "quantity": 1}}),
    ("write single coil on", WriteSingleCoilRequest(address=172, bits=[True]), True,
     {"function_code": 5, "request": {"address": 172, "values": [True]}}),
    ("write single register", WriteSingleRegisterRequest(address=1, registers=[3]), True,
     {"function_code": 6, "request": {"address": 1, "values": [3]}}),
    ("diagnostics", ReturnDiagnosticRegisterRequest(), True,
     {"function_code": 8, "sub_function": 2, "sub_function_name": "return_diagnostic_register"}),
    ("comm event counter", GetCommEventCounterResponse(count=264, status=False), False,
     {"function_code": 11, "response": {"status": 0xFFFF, "event_count": 264}}),  # busy
    ("write multiple coils", WriteMultipleCoilsRequest(address=19, bits=[True, False, True]), True,
     {"function_code": 15, "request": {"address": 19, "quantity": 3, "byte_count": 1,
                                       "values": [True, False, True]}}),
    ("write multiple registers", WriteMultipleRegistersRequest(address=1, registers=[10, 258]),
     True, {"function_code": 16, "request": {"address": 1, "quantity": 2, "byte_count": 4,
                                             "values": [10, 258]}}),
    ("write multiple response", WriteMultipleRegistersResponse(address=1, count=2), False,
     {"function_code": 16, "response": {"address": 1, "quantity": 2}}),
    ("mask write", MaskWriteRegisterRequest(address=4, and_mask=0xF2, or_mask=0x25), True,
     {"function_code": 22, "request": {"address": 4, "and_mask": 0xF2, "or_mask": 0x25}}),
    ("read/write multiple", ReadWriteMultipleRegistersRequest(
        read_address=3, read_count=6, write_address=14, write_registers=[0xFF, 0xFF, 0xFF]), True,
     {"function_code": 23, "request": {"read_address": 3, "read_quantity": 6, "address": 14,
                                       "quantity": 3, "byte_count": 6,
                                       "values": [255, 255, 255]}}),
    ("read device identification", ReadDeviceInformationRequest(read_code=1, object_id=0), True,
     {"function_code": 43, "mei_type": 14, "request": {"read_device_id_code": 1, "object_id": 0}}),
    ("device identification response", ReadDeviceInformationResponse(
        read_code=1, information={0: b"Schneider", 1: b"BMX P34", 2: b"V2.6"}), False,
     {"function_code": 43, "mei_type": 14, "device_identification": {
         "vendor_name": "Schneider", "product_code": "BMX P34", "major_minor_revision": "V2.6"}}),
    ("exception", ExceptionResponse(3, 2), False,
     {"function_code": 3, "exception_code": 2, "exception_name": "illegal_data_address"}),
]  # fmt: skip


def _subset(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _subset(v, actual[k]) for k, v in expected.items()
        )
    return bool(expected == actual)


@pytest.mark.parametrize(
    ("name", "message", "request_", "expected"), GOLDEN, ids=[g[0] for g in GOLDEN]
)
def test_reads_what_pymodbus_encodes(
    name: str, message: ModbusPDU, request_: bool, expected: dict[str, Any]
) -> None:
    record = dissect_pdu(_pdu(message), request=request_)
    assert _subset(expected, record), record


def test_unknown_function_codes_are_kept_raw() -> None:
    record = dissect_pdu(bytes([90, 1, 2, 3]), request=True)
    assert record == {"function_code": 90, "function_name": "unknown", "raw": "010203"}


def test_a_short_pdu_is_a_dissect_error_naming_the_function() -> None:
    with pytest.raises(DissectError, match="function 3"):
        dissect_pdu(bytes([3, 0, 1]), request=True)


def test_a_non_conformant_device_identification_response_is_flagged_not_trusted() -> None:
    # modbus-eit.pcap frame 2's bytes: "more follows" 0x4D (only 0x00 or 0xFF are allowed,
    # Modbus Application Protocol 1.1b3 section 6.21), then 4 bytes after the 0 objects declared
    record = dissect_pdu(bytes.fromhex("2b0e01004db70000000000"), request=False)
    assert record["anomalies"] == ["invalid_more_follows", "trailing_bytes"]
    assert record["trailing"] == "00000000"
    assert record["device_identification"] == {}


def test_framer_needs_more_and_refuses_non_modbus() -> None:
    assert frame_length(b"\x00\x01\x00\x00") == 0
    assert frame_length(b"\x00\x01\x00\x00\x00\x06") == 12
    assert frame_length(b"GET / HTTP/1.1") == -1
    assert frame_length(b"\x00\x01\x00\x00\x01\x00") == -1  # length 256 > 254
    assert plausible_adu(bytes.fromhex("000100000006010300000001"))
    assert not plausible_adu(bytes.fromhex("0001000000060103000000"))  # one byte short


@given(st.binary(max_size=300), st.booleans(), st.one_of(st.none(), st.integers(0, 2000)))
def test_any_bytes_give_a_record_or_a_dissect_error(
    data: bytes, request: bool, quantity: int | None
) -> None:
    try:
        record = dissect_pdu(data, request=request, quantity=quantity)
    except DissectError:
        return
    assert record["function_code"] == data[0] & (0xFF if request else 0x7F)
