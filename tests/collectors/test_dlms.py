"""The DLMS/COSEM dissector on bytes built here from the Green Book and IEC 62056-46/-47
structures, or encoded by dlms-cosem (an independent encoder): no corpus needed."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from dlms_cosem import cosem
from dlms_cosem import enumerations as enums
from dlms_cosem.protocol import acse, xdlms
from dlms_cosem.security import SecurityControlField, encrypt
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors import dlms
from collectors.capture import Frame
from collectors.dlms_events import DlmsSession
from collectors.normalize import FlowContext
from collectors.pipeline import Collector
from soc.config import CollectSettings
from soc.errors import DissectError

CLIENT = b"\x0a\x00\x00\x01"
SERVER = b"\x0a\x00\x00\x02"
TS = 1_700_000_000_000_000
PASSWORD = b"S3cr3tPw"


# -- builders ---------------------------------------------------------------------------------


def wrapper(apdu: bytes, source: int = 16, destination: int = 1) -> bytes:
    """An IEC 62056-4-7 wrapper PDU: version 1, source wPort, destination wPort, length."""
    return struct.pack("!HHHH", 1, source, destination, len(apdu)) + apdu


def hdlc(
    information: bytes,
    control: int,
    destination: bytes = b"\x03",
    source: bytes = b"\x21",
    segmented: bool = False,
    bad_fcs: bool = False,
) -> bytes:
    """An HDLC frame of IEC 62056-46 (format type 0xA), flags, HCS and FCS included."""
    length = (
        2 + len(destination) + len(source) + 1 + 2 + (len(information) + 2 if information else 0)
    )
    head = (0xA000 | (0x0800 if segmented else 0) | length).to_bytes(2, "big")
    head += destination + source + bytes([control])
    body = head
    if information:
        body += dlms.crc16_x25(head).to_bytes(2, "little") + information
    fcs = dlms.crc16_x25(body) ^ (0xFFFF if bad_fcs else 0)
    return b"\x7e" + body + fcs.to_bytes(2, "little") + b"\x7e"


def i_frame(apdu: bytes, ns: int = 0, nr: int = 0, command: bool = True) -> bytes:
    llc = dlms.LLC_COMMAND if command else dlms.LLC_RESPONSE
    control = (nr << 5) | 0x10 | (ns << 1)
    if command:
        return hdlc(llc + apdu, control)
    return hdlc(llc + apdu, control, destination=b"\x21", source=b"\x03")


def attribute(interface: enums.CosemInterface, obis: str, member: int) -> cosem.CosemAttribute:
    return cosem.CosemAttribute(interface, cosem.Obis.from_string(obis), member)


def get_request(interface: enums.CosemInterface, obis: str, member: int, invoke: int = 1) -> bytes:
    request = xdlms.GetRequestNormal(
        cosem_attribute=attribute(interface, obis, member),
        invoke_id_and_priority=xdlms.InvokeIdAndPriority(invoke, True, True),
    )
    return bytes(request.to_bytes())


def get_response(data: bytes, invoke: int = 1) -> bytes:
    """Get-Response-Normal with data (by hand: dlms-cosem 's GetResponseNormal.to_bytes appends
    the invoke-id byte string to a bytearray, a TypeError)."""
    return bytes([0xC4, 0x01, 0xC0 | invoke, 0x00]) + data


def aarq_lls() -> bytes:
    """An AARQ with low-level security (the password in calling-authentication-value)."""
    request = acse.ApplicationAssociationRequest(
        user_information=acse.UserInformation(
            content=xdlms.InitiateRequest(
                proposed_conformance=xdlms.Conformance(get=True, set=True, action=True),
            )
        ),
        authentication=enums.AuthenticationMechanism.LLS,
        authentication_value=PASSWORD,
    )
    return bytes(request.to_bytes())


class Run:
    """One DLMS session over a fake TCP or UDP flow, with the events it emits."""

    def __init__(self, transport: str = "tcp", **kwargs: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self.stats = dlms.DlmsStats()
        context = FlowContext(transport, "dlms", (CLIENT, 40000, b""), (SERVER, 4059, b""))
        self.session = DlmsSession(
            context, self.events.append, self.stats, {}, lambda f: f"frame {f}", 5_000_000,
            **kwargs,
        )  # fmt: skip
        self.seq = {True: 1000, False: 5000}
        self.frame = 0

    def send(self, to_server: bool, data: bytes, ts: int = TS) -> None:
        self.frame += 1
        self.session.data(to_server, data, ts + self.frame, self.frame, self.seq[to_server])
        self.seq[to_server] += len(data)

    def datagram(self, to_server: bool, data: bytes) -> None:
        self.frame += 1
        self.session.datagram(to_server, data, TS + self.frame, self.frame)

    def actions(self) -> list[str]:
        return [e["event"]["action"] for e in self.events]


# -- framing ----------------------------------------------------------------------------------


def test_crc16_x25_check_value() -> None:
    assert dlms.crc16_x25(b"123456789") == 0x906E  # the CRC-16/X.25 catalogue check value


def test_frame_size_of_wrapper_and_hdlc() -> None:
    pdu = wrapper(b"\x62\x00")
    assert dlms.frame_size(pdu[:8]) == len(pdu)
    assert dlms.frame_size(pdu[:5]) == 0
    frame = hdlc(b"", 0x93)
    assert dlms.frame_size(frame[:8]) == len(frame) == 9
    assert dlms.frame_size(b"\x7e") == 0
    assert dlms.frame_size(b"GET / HTTP/1.1") == -1
    assert dlms.frame_size(b"\x7e\x10\x00") == -1  # not frame format type 3


def test_wrapper_pdu_over_tcp_split_across_segments() -> None:
    run = Run()
    pdu = wrapper(get_request(enums.CosemInterface.CLOCK, "0.0.1.0.0.255", 2))
    run.send(True, pdu[:5])
    run.send(True, pdu[5:])
    (event,) = run.events
    assert event["event"]["action"] == "get_request"
    record = event["dlms"]
    assert record["framing"] == "wrapper"
    assert record["wrapper"] == {"version": 1, "source_wport": 16, "destination_wport": 1,
                                 "length": 13}  # fmt: skip
    assert (record["class_id"], record["obis"], record["obis_dotted"], record["attribute"]) == (
        8, "0-0:1.0.0*255", "0.0.1.0.0.255", 2,
    )  # fmt: skip
    assert record["invoke_id"] == 1
    assert record["priority"] == "high"


def test_hdlc_link_frames_and_parameters() -> None:
    run = Run()
    run.send(True, hdlc(b"", 0x93))  # SNRM
    ua_info = bytes.fromhex("818012050180060180070400000001080400000001")
    run.send(False, hdlc(ua_info, 0x73, destination=b"\x21", source=b"\x03"))
    run.send(True, hdlc(b"", 0x31))  # RR: counted only
    run.send(True, hdlc(b"", 0x53))  # DISC
    assert run.actions() == ["hdlc_snrm", "hdlc_ua", "hdlc_disc"]
    ua = run.events[1]["dlms"]["hdlc"]
    assert ua["parameters"] == {"max_info_tx": 128, "max_info_rx": 128, "window_tx": 1,
                                "window_rx": 1}  # fmt: skip
    assert ua["destination_address"] == {"upper": 16}
    assert ua["source_address"] == {"upper": 1}
    assert run.stats.link_frames == 4


def test_hdlc_addresses_of_two_and_four_bytes() -> None:
    frame = dlms.parse_hdlc(hdlc(b"", 0x93, destination=b"\x02\x23", source=b"\x21"))
    assert frame.destination == {"upper": 1, "lower": 17}
    frame = dlms.parse_hdlc(hdlc(b"", 0x93, destination=b"\x00\x02\x00\x23", source=b"\x21"))
    assert frame.destination == {"upper": 1, "lower": 17}


def test_hdlc_control_fields() -> None:
    kinds = {0x93: "snrm", 0x53: "disc", 0x73: "ua", 0x1F: "dm", 0x97: "frmr", 0x13: "ui",
             0x31: "rr", 0x35: "rnr", 0x54: "i"}  # fmt: skip
    for control, kind in kinds.items():
        assert dlms.parse_hdlc(hdlc(b"", control)).frame_type == kind
    frame = dlms.parse_hdlc(hdlc(b"", 0x54))
    assert (frame.send_sequence, frame.receive_sequence) == (2, 2)


def test_hdlc_i_frame_apdu_and_bad_fcs() -> None:
    run = Run()
    run.send(True, i_frame(get_request(enums.CosemInterface.DATA, "0.0.42.0.0.255", 2)))
    assert run.actions() == ["get_request"]
    assert run.events[0]["dlms"]["hdlc"]["llc"] == "command"
    bad = hdlc(dlms.LLC_COMMAND + get_request(enums.CosemInterface.DATA, "0.0.42.0.0.255", 2),
               0x32, bad_fcs=True)  # fmt: skip
    run.send(True, bad)
    assert run.actions() == ["get_request", "hdlc_frame"]
    assert run.events[1]["dlms"]["hdlc"]["anomalies"] == ["bad_fcs"]
    assert run.stats.bad_checksums == 1
    assert run.stats.malformed == 1
    assert run.stats.errors[-1][0] == "frame 2"


def test_hdlc_segmented_response_is_reassembled() -> None:
    """A GET response cut into three I-frames (segmentation bit on the first two): one event."""
    value = dlms_octet_string(bytes(range(200)))
    apdu = dlms.LLC_RESPONSE + get_response(value)
    parts = [apdu[:80], apdu[80:160], apdu[160:]]
    run = Run()
    for index, part in enumerate(parts):
        control = 0x10 | (index << 1)
        run.send(False, hdlc(part, control, b"\x21", b"\x03", segmented=index < 2))
        if index < 2:
            run.send(True, hdlc(b"", 0x31 | ((index + 1) << 5)))  # RR asking the next segment
    (event,) = run.events
    assert event["event"]["action"] == "get_response"
    assert event["dlms"]["hdlc"]["segments"] == 3
    assert event["dlms"]["data"] == bytes(range(200)).hex()


def test_hdlc_frames_sharing_one_flag() -> None:
    first = i_frame(get_request(enums.CosemInterface.DATA, "0.0.42.0.0.255", 2))
    second = i_frame(get_request(enums.CosemInterface.DATA, "0.0.96.1.0.255", 2, invoke=2), ns=1)
    run = Run()
    run.send(True, first + second[1:])  # the closing flag of the first opens the second
    assert [e["dlms"]["obis"] for e in run.events] == ["0-0:42.0.0*255", "0-0:96.1.0*255"]


def test_hdlc_extra_flags_between_frames() -> None:
    first = i_frame(get_request(enums.CosemInterface.DATA, "0.0.42.0.0.255", 2))
    second = i_frame(get_request(enums.CosemInterface.DATA, "0.0.96.1.0.255", 2, invoke=2), ns=1)
    run = Run()
    run.send(True, first + b"\x7e\x7e" + second)
    assert run.actions() == ["get_request", "get_request"]
    assert run.stats.violations == 0
    udp = Run("udp")
    udp.datagram(True, b"\x7e" + first + b"\x7e" + second)
    assert udp.actions() == ["get_request", "get_request"]


def test_hdlc_in_udp_datagrams() -> None:
    run = Run("udp")
    request = get_request(enums.CosemInterface.REGISTER, "1.0.1.8.0.255", 2, invoke=3)
    run.datagram(True, hdlc(b"", 0x93) + i_frame(request))
    run.datagram(False, i_frame(get_response(b"\x06\x00\x00\x01\x00", invoke=3), command=False))
    assert run.actions() == ["hdlc_snrm", "get_request", "get_response"]
    ids = {e["event"]["id"] for e in run.events}
    assert len(ids) == 3
    assert run.events[2]["dlms"]["request_event_id"] == run.events[1]["event"]["id"]


def test_iec_61334_4_32_llc_and_bare_apdus_in_udp() -> None:
    run = Run("udp")
    request = get_request(enums.CosemInterface.DATA, "0.0.42.0.0.255", 2)
    run.datagram(True, b"\x90\x01\x01" + request)
    run.datagram(False, get_response(b"\x11\x07"))
    assert run.actions() == ["get_request", "get_response"]
    assert run.events[0]["dlms"]["framing"] == "iec_61334_4_32_llc"
    assert run.events[1]["dlms"]["framing"] == "apdu"
    assert run.events[1]["dlms"]["request_event_id"] == run.events[0]["event"]["id"]


def test_wrapper_in_udp_datagram() -> None:
    run = Run("udp")
    run.datagram(True, wrapper(get_request(enums.CosemInterface.DATA, "0.0.42.0.0.255", 2)))
    assert run.actions() == ["get_request"]
    run.datagram(True, b"\x99" * 20)
    assert run.actions()[-1] == "protocol_violation"
    assert run.stats.violations == 1


# -- ACSE ---------------------------------------------------------------------------------------


def test_aarq_lls_never_carries_the_password() -> None:
    run = Run()
    run.send(True, wrapper(aarq_lls()))
    (event,) = run.events
    record = event["dlms"]
    assert event["event"]["action"] == "aarq"
    assert record["authentication_mechanism"] == "lls"
    assert record["calling_authentication_value_present"] is True
    assert record["calling_authentication_value_length"] == len(PASSWORD)
    assert record["application_context"] == "logical_name_referencing_no_ciphering"
    assert record["user_information"]["apdu_type"] == "initiate_request"
    assert set(record["user_information"]["proposed_conformance"]) == {"get", "set", "action"}
    text = json.dumps(event)
    assert PASSWORD.hex() not in text
    assert PASSWORD.decode() not in text


def test_malformed_aarq_raw_hex_has_the_password_zeroed() -> None:
    apdu = bytearray(aarq_lls())
    apdu[1] += 40  # the ACSE length now runs past the bytes
    run = Run()
    run.send(True, wrapper(bytes(apdu)))
    (event,) = run.events
    assert event["dlms"]["anomalies"] == ["malformed"]
    assert PASSWORD.hex() not in json.dumps(event)
    assert run.stats.malformed == 1


@pytest.mark.parametrize(
    ("mechanism", "name"),
    [(2, "hls"), (3, "hls_md5"), (4, "hls_sha1"), (5, "hls_gmac"), (6, "hls_sha256"),
     (7, "hls_ecdsa")],
)  # fmt: skip
def test_aarq_hls_mechanisms_and_challenge_length(mechanism: int, name: str) -> None:
    challenge = b"K56iVagY" * 2
    body = (
        bytes.fromhex("a109060760857405080101")
        + bytes.fromhex("a60a0408") + b"MMM\x00\x00\xbcaN"
        + bytes.fromhex("8a020780")
        + bytes.fromhex("8b0760857405080201")[:-1] + bytes([mechanism])
        + bytes([0xAC, len(challenge) + 2, 0x80, len(challenge)]) + challenge
    )  # fmt: skip
    record = dlms.decode_apdu(bytes([0x60, len(body)]) + body)
    assert record["authentication_mechanism"] == name
    assert record["calling_ap_title"] == b"MMM\x00\x00\xbcaN".hex()
    assert record["calling_authentication_value_length"] == 16
    assert challenge.hex() not in json.dumps(record)


def test_aare_rejected_is_a_failure() -> None:
    aare = bytes.fromhex("6129a109060760857405080101a203020101a305a10302010d"
                         "be10040e0800065f1f040000101d04000007")  # fmt: skip
    aare = bytes([0x61, len(aare) - 2]) + aare[2:]
    run = Run()
    run.send(True, wrapper(aarq_lls()))
    run.send(False, wrapper(aare, 1, 16))
    event = run.events[1]
    assert event["event"]["outcome"] == "failure"
    assert event["dlms"]["result"] == "rejected_permanent"
    assert event["dlms"]["diagnostic"] == "authentication_failure"
    assert event["dlms"]["request_event_id"] == run.events[0]["event"]["id"]


def test_release() -> None:
    assert dlms.decode_apdu(bytes.fromhex("6203800100"))["reason"] == "normal"
    assert dlms.decode_apdu(bytes.fromhex("6303800100"))["apdu_type"] == "rlre"


# -- xDLMS --------------------------------------------------------------------------------------


def dlms_octet_string(raw: bytes) -> bytes:
    return b"\x09" + _length(len(raw)) + raw


def _length(size: int) -> bytes:
    return bytes([size]) if size < 0x80 else b"\x82" + size.to_bytes(2, "big")


def test_get_normal_with_scaler_and_energy_reading() -> None:
    run = Run()
    run.send(True, wrapper(get_request(enums.CosemInterface.REGISTER, "1.0.1.8.0.255", 3, 1)))
    run.send(False, wrapper(get_response(bytes.fromhex("02020f01161e"), 1), 1, 16))  # 10^1 Wh
    run.send(True, wrapper(get_request(enums.CosemInterface.REGISTER, "1.0.1.8.0.255", 2, 2)))
    run.send(False, wrapper(get_response(bytes.fromhex("0600003039"), 2), 1, 16))
    response = run.events[3]
    assert response["dlms"]["data"] == 12345
    assert response["energy"]["readings"] == [
        {"obis": "1-0:1.8.0*255", "value": 123450, "raw_value": 12345, "scaler": 1,
         "unit": "Wh", "direction": "import", "quantity": "energy"}
    ]  # fmt: skip
    assert response["dlms"]["request"]["attribute"] == 2
    assert (response["dlms"]["obis"], response["dlms"]["attribute"]) == ("1-0:1.8.0*255", 2)
    assert response["dlms"]["response_time_us"] == 1


def test_readings_without_scaler_and_of_other_objects() -> None:
    obis = bytes([1, 0, 32, 7, 0, 255])
    assert dlms.readings(3, obis, 2, 2301, {}) == [
        {"obis": "1-0:32.7.0*255", "value": 2301, "quantity": "voltage"}
    ]
    scaled = dlms.readings(3, obis, 2, 2301, {(3, obis): (-1, 35)})[0]
    assert (scaled["value"], scaled["unit"]) == (230.1, "V")
    export = dlms.readings(3, bytes([1, 0, 2, 8, 1, 255]), 2, 7, {})[0]
    assert (export["direction"], export["quantity"]) == ("export", "energy")
    power = dlms.readings(3, bytes([1, 0, 21, 7, 0, 255]), 2, 7, {})[0]
    assert (power["direction"], power["quantity"]) == ("import", "power")
    assert dlms.readings(1, bytes([0, 0, 42, 0, 0, 255]), 2, "x", {}) == []
    rows = [["2024-01-01T00:00:00", 5]]
    assert dlms.readings(7, bytes([1, 0, 99, 1, 0, 255]), 2, rows, {}) == []  # columns unknown


def test_load_profile_rows_become_readings() -> None:
    """A load profile read as the head-ends do: capture objects (attribute 3), capture period
    (attribute 4), then the buffer (attribute 2) with selective access."""
    profile = "1.0.99.1.0.255"
    columns = bytes.fromhex(
        "0102"
        "020412000809060000010000ff0f021200 00"  # clock 0-0:1.0.0, attribute 2
        "020412000309060100010800ff0f021200 00"  # register 1-0:1.8.0, attribute 2
        .replace(" ", "")
    )  # fmt: skip
    buffer = bytes.fromhex(
        "0102"
        "0202090c07e8010100000000ff800000 0600000064"
        "0202090c07e8010100000f00ff800000 0600000066"
        .replace(" ", "")
    )  # fmt: skip
    run = Run()
    for invoke, (member, data) in enumerate(
        [(3, columns), (4, bytes.fromhex("0600000384")), (2, buffer)], start=1
    ):
        run.send(True, wrapper(get_request(enums.CosemInterface.PROFILE_GENERIC, profile, member,
                                           invoke)))  # fmt: skip
        run.send(False, wrapper(get_response(data, invoke), 1, 16))
    readings = run.events[-1]["energy"]["readings"]
    assert readings == [
        {"obis": "1-0:1.8.0*255", "value": 100, "direction": "import", "quantity": "energy",
         "time": "2024-01-01T00:00:00", "interval_s": 900, "profile": "1-0:99.1.0*255"},
        {"obis": "1-0:1.8.0*255", "value": 102, "direction": "import", "quantity": "energy",
         "time": "2024-01-01T00:15:00", "interval_s": 900, "profile": "1-0:99.1.0*255"},
    ]  # fmt: skip


def test_meter_id_from_the_logical_device_name() -> None:
    name = b"LGZ1030123456789"
    run = Run()
    run.send(True, wrapper(get_request(enums.CosemInterface.DATA, "0.0.42.0.0.255", 2, 1)))
    run.send(False, wrapper(get_response(dlms_octet_string(name), 1), 1, 16))
    run.send(True, wrapper(get_request(enums.CosemInterface.REGISTER, "1.0.1.8.0.255", 2, 2)))
    run.send(False, wrapper(get_response(bytes.fromhex("0600003039"), 2), 1, 16))
    assert run.events[3]["energy"]["meter_id"] == name.decode()


def test_get_with_list() -> None:
    request = xdlms.GetRequestWithList(
        cosem_attributes_with_selection=[
            cosem.CosemAttributeWithSelection(
                attribute(enums.CosemInterface.REGISTER, "1.0.31.7.0.255", 2), None),
            cosem.CosemAttributeWithSelection(
                attribute(enums.CosemInterface.REGISTER, "1.0.32.7.0.255", 2), None),
        ],
        invoke_id_and_priority=xdlms.InvokeIdAndPriority(4, True, True),
    )  # fmt: skip
    response = bytes.fromhex("c403c4020012000a0101")  # long-unsigned 10, then hardware-fault
    run = Run()
    run.send(True, wrapper(bytes(request.to_bytes())))
    run.send(False, wrapper(response, 1, 16))
    record = run.events[0]["dlms"]
    assert record["request_type"] == "with_list"
    assert [a["obis"] for a in record["attributes"]] == ["1-0:31.7.0*255", "1-0:32.7.0*255"]
    assert record["obis"] == ["1-0:31.7.0*255", "1-0:32.7.0*255"]
    answer = run.events[1]
    assert answer["dlms"]["results"] == [
        {"result": "success", "data": 10},
        {"result": "hardware_fault", "result_code": 1},
    ]
    assert answer["event"]["outcome"] == "failure"
    assert answer["energy"]["readings"] == [
        {"obis": "1-0:31.7.0*255", "value": 10, "quantity": "current"}
    ]


def test_get_block_transfer_reassembles_the_data() -> None:
    data = b"\x01\x03" + b"".join(b"\x12" + i.to_bytes(2, "big") for i in (1, 2, 3))
    blocks = [data[:5], data[5:]]
    run = Run()
    run.send(True, wrapper(get_request(enums.CosemInterface.PROFILE_GENERIC, "1.0.99.1.0.255", 2)))
    for number, block in enumerate(blocks, start=1):
        last = number == len(blocks)
        response = xdlms.GetResponseLastBlock if last else xdlms.GetResponseWithBlock
        apdu = response(data=block, block_number=number,
                        invoke_id_and_priority=xdlms.InvokeIdAndPriority(1, True, True))  # fmt: skip
        run.send(False, wrapper(bytes(apdu.to_bytes()), 1, 16))
        if not last:
            run.send(True, wrapper(bytes(xdlms.GetRequestNext(
                block_number=number,
                invoke_id_and_priority=xdlms.InvokeIdAndPriority(1, True, True)).to_bytes())))  # fmt: skip
    assert run.actions() == ["get_request", "get_response", "get_request", "get_response"]
    assert run.events[2]["dlms"]["request_type"] == "next"
    final = run.events[3]["dlms"]
    assert final["last_block"] is True
    assert final["reassembled_length"] == len(data)
    assert final["data"] == [1, 2, 3]
    assert "energy" not in run.events[3]  # the profile's capture objects were not read


def test_set_normal_clock_is_security_relevant() -> None:
    request = xdlms.SetRequestNormal(
        cosem_attribute=attribute(enums.CosemInterface.CLOCK, "0.0.1.0.0.255", 2),
        data=dlms_octet_string(bytes.fromhex("07e80102ff0c000000ff8880")),
        invoke_id_and_priority=xdlms.InvokeIdAndPriority(5, True, True),
    )
    run = Run()
    run.send(True, wrapper(bytes(request.to_bytes())))
    run.send(False, wrapper(bytes.fromhex("c501c500"), 1, 16))
    record = run.events[0]["dlms"]
    assert run.events[0]["event"]["action"] == "set_request"
    assert record["value"] == "2024-01-02T12:00:00+02:00"
    assert record["security_relevant"] is True
    assert record["security_action"] == "clock_set"
    answer = run.events[1]
    assert answer["event"]["outcome"] == "success"
    assert answer["dlms"]["result"] == "success"
    assert answer["dlms"]["security_action"] == "clock_set"


def test_set_of_the_lls_secret_is_redacted() -> None:
    request = xdlms.SetRequestNormal(
        cosem_attribute=attribute(enums.CosemInterface.ASSOCIATION_LN, "0.0.40.0.0.255", 7),
        data=dlms_octet_string(PASSWORD),
        invoke_id_and_priority=xdlms.InvokeIdAndPriority(5, True, True),
    )
    run = Run()
    run.send(True, wrapper(bytes(request.to_bytes())))
    record = run.events[0]["dlms"]
    assert record["security_action"] == "association_secret_change"
    assert record["value"] == {"redacted": True}
    assert PASSWORD.hex() not in json.dumps(run.events)


def test_action_remote_disconnect_is_flagged() -> None:
    request = xdlms.ActionRequestNormal(
        cosem_method=cosem.CosemMethod(
            enums.CosemInterface.DISCONNECT_CONTROL, cosem.Obis.from_string("0.0.96.3.10.255"), 1
        ),
        data=b"\x0f\x00",
        invoke_id_and_priority=xdlms.InvokeIdAndPriority(2, True, True),
    )
    run = Run()
    run.send(True, wrapper(bytes(request.to_bytes())))
    run.send(False, wrapper(bytes.fromhex("c701c20000"), 1, 16))
    event = run.events[0]
    assert event["event"]["action"] == "action_request"
    assert event["dlms"]["class_id"] == 70
    assert event["dlms"]["method"] == 1
    assert event["dlms"]["security_action"] == "remote_disconnect"
    assert event["dlms"]["parameters"] == 0
    assert run.events[1]["dlms"]["result"] == "success"
    assert run.events[1]["dlms"]["request"]["security_action"] == "remote_disconnect"


def test_hls_pass_3_and_4_proofs_are_redacted() -> None:
    proof = b"\x10" + bytes(range(0xA0, 0xB1))
    request = bytes([0xC3, 1, 0xC1, 0, 15]) + bytes([0, 0, 40, 0, 0, 255, 1, 1])
    request += b"\x09" + bytes([len(proof)]) + proof
    answer = bytes([0xC7, 1, 0xC1, 0, 1, 0]) + b"\x09" + bytes([len(proof)]) + proof
    run = Run()
    run.send(True, wrapper(request))
    run.send(False, wrapper(answer, 1, 16))
    assert run.events[0]["dlms"]["parameters"] == {"redacted": True}
    assert run.events[1]["dlms"]["return_data"] == {"redacted": True}
    assert proof.hex() not in json.dumps(run.events)


@pytest.mark.parametrize(
    ("class_id", "method", "expected"),
    [(70, 2, "remote_reconnect"), (18, 1, "image_transfer_initiate"), (18, 4, "image_activate"),
     (8, 6, "clock_shift_time"), (64, 2, "key_transfer"), (9, 1, "script_execute")],
)  # fmt: skip
def test_security_relevant_actions(class_id: int, method: int, expected: str) -> None:
    apdu = bytes([0xC3, 1, 0xC1]) + class_id.to_bytes(2, "big") + bytes(6) + bytes([method, 0])
    run = Run()
    run.send(True, wrapper(apdu))
    assert run.events[0]["dlms"]["security_action"] == expected


def test_data_notification_and_event_notification() -> None:
    notification = bytes.fromhex("0f00000001") + b"\x0c" + bytes.fromhex("07e80102ff0c000000ff8880")
    notification += bytes.fromhex("020209060100010800ff0600000064")
    record = dlms.decode_apdu(notification)
    assert record["apdu_type"] == "data_notification"
    assert record["date_time"] == "2024-01-02T12:00:00+02:00"
    assert record["body"] == ["0100010800ff", 100]
    event = dlms.decode_apdu(bytes.fromhex("c200000800000100 00ff0209 0c07e80102ff0c000000ff8880"
                                           .replace(" ", "")))  # fmt: skip
    assert event["apdu_type"] == "event_notification_request"
    assert event["class_id"] == 8
    assert event["attribute"] == 2


def test_general_block_transfer_and_sn_services() -> None:
    gbt = dlms.decode_apdu(bytes.fromhex("e0c1000200010401020304"))
    assert gbt["apdu_type"] == "general_block_transfer"
    assert (gbt["last_block"], gbt["streaming"], gbt["window"]) == (True, True, 1)
    assert (gbt["block_number"], gbt["block_number_ack"], gbt["block_length"]) == (2, 1, 4)
    read = dlms.decode_apdu(bytes.fromhex("0501020fa00208"))
    assert read["apdu_type"] == "read_request"
    assert read["items"] == 1


def test_exception_response_and_confirmed_service_error() -> None:
    run = Run()
    run.send(True, wrapper(get_request(enums.CosemInterface.DATA, "0.0.42.0.0.255", 2)))
    run.send(False, wrapper(bytes.fromhex("d80102"), 1, 16))
    event = run.events[1]
    assert event["event"]["action"] == "exception_response"
    assert event["event"]["outcome"] == "failure"
    assert event["dlms"]["state_error"] == "service_not_allowed"
    assert event["dlms"]["service_error"] == "service_not_supported"
    assert event["dlms"]["request_event_id"] == run.events[0]["event"]["id"]
    error = dlms.decode_apdu(bytes.fromhex("0e010600"))
    assert (error["service"], error["error_kind"]) == ("initiate", "initiate")


def test_data_access_result_failure_outcome() -> None:
    run = Run()
    run.send(True, wrapper(get_request(enums.CosemInterface.DATA, "0.0.42.0.0.255", 2)))
    run.send(False, wrapper(bytes.fromhex("c401c10104"), 1, 16))
    event = run.events[1]
    assert event["dlms"]["result"] == "object_undefined"
    assert event["event"]["outcome"] == "failure"


def test_unanswered_request_after_the_timeout() -> None:
    run = Run()
    run.send(True, wrapper(get_request(enums.CosemInterface.DATA, "0.0.42.0.0.255", 2)))
    run.session.expire(TS + 1_000_000)
    assert run.actions() == ["get_request"]
    run.session.expire(TS + 6_000_000)
    assert run.actions() == ["get_request", "unanswered_request"]
    assert run.events[1]["dlms"]["request"]["obis"] == "0-0:42.0.0*255"


def test_response_pairs_with_the_newest_request_of_its_invoke_id() -> None:
    run = Run()
    run.send(True, wrapper(get_request(enums.CosemInterface.DATA, "0.0.42.0.0.255", 2)))
    run.send(True, wrapper(get_request(enums.CosemInterface.DATA, "0.0.96.1.0.255", 2)))
    run.send(False, wrapper(get_response(b"\x11\x05"), 1, 16))
    assert run.events[2]["dlms"]["request"]["obis"] == "0-0:96.1.0*255"
    run.session.close()
    assert run.events[3]["event"]["action"] == "unanswered_request"
    assert run.events[3]["dlms"]["request"]["obis"] == "0-0:42.0.0*255"


def test_wrong_direction_is_flagged() -> None:
    run = Run()
    run.send(True, wrapper(bytes.fromhex("c501c100")))
    run.send(False, wrapper(get_request(enums.CosemInterface.DATA, "0.0.42.0.0.255", 2), 1, 16))
    assert run.events[0]["dlms"]["anomalies"] == ["response_from_client"]
    assert run.events[1]["dlms"]["anomalies"] == ["request_from_server"]


def test_orphan_response() -> None:
    run = Run()
    run.send(False, wrapper(get_response(b"\x11\x05"), 1, 16))
    assert run.events[0]["dlms"]["orphan"] is True
    assert run.stats.orphans == 1


def test_unanswered_request_at_close() -> None:
    run = Run()
    run.send(True, wrapper(get_request(enums.CosemInterface.DATA, "0.0.42.0.0.255", 2)))
    run.session.close()
    assert run.actions() == ["get_request", "unanswered_request"]
    assert run.stats.unanswered == 1


# -- A-XDR --------------------------------------------------------------------------------------


def test_axdr_types() -> None:
    cases = {
        "00": None,
        "0301": True,
        "05fffffffe": -2,
        "0600000010": 16,
        "0f80": -128,
        "10ff00": -256,
        "1180": 128,
        "120100": 256,
        "14ffffffffffffffff": -1,
        "150000000000000001": 1,
        "1603": 3,
        "173f800000": 1.0,
        "0a03616263": "abc",
        "0c02c3a9": "é",
        "090401020304": "01020304",
        "04081f": "00011111"[:8],
        "0d12": "12",
        "1a07e80102ff": "2024-01-02",
        "1b0c1e00ff": "12:30:00",
        "0102110111 02": [1, 2],
    }
    for raw, expected in cases.items():
        data = bytes.fromhex(raw.replace(" ", ""))
        if raw == "04081f":
            assert dlms.decode_data(data) == "00011111"
            continue
        assert dlms.decode_data(data) == expected, raw


def test_compact_array() -> None:
    # compact-array of structure {long-unsigned, unsigned}: 2 rows
    data = bytes.fromhex("13 02 02 12 11 06 0001 05 0002 06".replace(" ", ""))
    assert dlms.decode_data(data) == [[1, 5], [2, 6]]


def test_date_time_unspecified_fields_stay_hex() -> None:
    assert dlms.date_time_text(bytes.fromhex("ffff0102ff0c000000800000")) is None
    assert dlms.decode_data(b"\x09\x0c" + bytes.fromhex("ffff0102ff0c000000800000")) == (
        "ffff0102ff0c000000800000"
    )


def test_large_data_is_truncated() -> None:
    count = dlms.MAX_VALUES + 100
    data = b"\x01\x82" + count.to_bytes(2, "big") + b"\x11\x01" * count
    apdu = bytes.fromhex("c401c100") + data
    record = dlms.decode_apdu(apdu)
    assert record["truncated"] is True
    assert len(record["data"]) < count


def test_compact_array_of_empty_values_ends() -> None:
    # array(65535) of array(65535) of null-data: no bytes per value, 4 billion values
    data = bytes.fromhex("13 01ffff 01ffff 00 01 00".replace(" ", ""))
    value = dlms.decode_data(data)
    assert isinstance(value, list)


def test_deep_nesting_is_a_dissect_error() -> None:
    data = b"\x01\x01" * (dlms.MAX_DEPTH + 5) + b"\x00"
    with pytest.raises(DissectError):
        dlms.decode_data(data)


# -- ciphering ----------------------------------------------------------------------------------

KEY = bytes(range(16))
AUTH_KEY = bytes(range(0xD0, 0xE0))
CLIENT_TITLE = b"MMM\x00\x00\xbcaN"


def glo(tag: int, plain: bytes, counter: int = 7, control: int = 0x30) -> bytes:
    field = SecurityControlField(security_suite=0, authenticated=bool(control & 0x10),
                                 encrypted=bool(control & 0x20))  # fmt: skip
    ciphered = encrypt(field, CLIENT_TITLE, counter, KEY, plain, AUTH_KEY)
    content = bytes([control]) + counter.to_bytes(4, "big") + ciphered
    return bytes([tag]) + _length(len(content)) + content


def _ciphered_aarq() -> bytes:
    body = bytes.fromhex("a109060760857405080103") + bytes.fromhex("a60a0408") + CLIENT_TITLE
    return bytes([0x60, len(body)]) + body


def test_ciphered_apdu_without_keys_is_recorded_encrypted() -> None:
    plain = get_request(enums.CosemInterface.DATA, "0.0.42.0.0.255", 2)
    run = Run()
    run.send(True, wrapper(_ciphered_aarq()))
    run.send(True, wrapper(glo(0xC8, plain)))
    event = run.events[1]
    record = event["dlms"]
    assert event["event"]["action"] == "glo_get_request"
    assert record["encrypted"] is True
    assert record["authentication"] is True
    assert record["security_suite"] == 0
    assert record["invocation_counter"] == 7
    assert record["system_title"] == CLIENT_TITLE.hex()
    assert "ciphered_content" not in record
    assert run.stats.encrypted == 1


def test_ciphered_apdu_with_keys_is_decrypted() -> None:
    plain = get_request(enums.CosemInterface.REGISTER, "1.0.1.8.0.255", 2)
    run = Run(keys={CLIENT_TITLE: (KEY, AUTH_KEY)})
    run.send(True, wrapper(_ciphered_aarq()))
    run.send(True, wrapper(glo(0xC8, plain)))
    event = run.events[1]
    assert event["event"]["action"] == "get_request"
    assert event["dlms"]["ciphered_apdu_type"] == "glo_get_request"
    assert event["dlms"]["decrypted"] is True
    assert event["dlms"]["obis"] == "1-0:1.8.0*255"
    assert run.stats.decrypted == 1


def test_wrong_key_is_an_anomaly_not_a_crash() -> None:
    plain = get_request(enums.CosemInterface.DATA, "0.0.42.0.0.255", 2)
    run = Run(keys={CLIENT_TITLE: (bytes(16), AUTH_KEY)})
    run.send(True, wrapper(_ciphered_aarq()))
    run.send(True, wrapper(glo(0xC8, plain)))
    assert run.events[1]["dlms"]["anomalies"] == ["decryption_failed"]


def test_general_glo_ciphering_carries_its_system_title() -> None:
    plain = get_request(enums.CosemInterface.DATA, "0.0.42.0.0.255", 2)
    inner = glo(0xC8, plain)[2:]  # security header and ciphertext
    apdu = b"\xdb\x08" + CLIENT_TITLE + _length(len(inner)) + inner
    record = dlms.decode_apdu(apdu)
    assert record["apdu_type"] == "general_glo_ciphering"
    assert record["system_title"] == CLIENT_TITLE.hex()
    run = Run(keys={CLIENT_TITLE: (KEY, AUTH_KEY)})
    run.send(True, wrapper(apdu))
    assert run.events[0]["event"]["action"] == "get_request"


def test_authenticated_only_apdu_is_read_without_keys() -> None:
    plain = get_request(enums.CosemInterface.DATA, "0.0.42.0.0.255", 2)
    content = b"\x10" + (9).to_bytes(4, "big") + plain + bytes(12)
    run = Run()
    run.send(True, wrapper(bytes([0xC8, len(content)]) + content))
    event = run.events[0]
    assert event["event"]["action"] == "get_request"
    assert event["dlms"]["encrypted"] is True
    assert event["dlms"]["authentication"] is True
    assert event["dlms"]["encryption"] is False


def _glo_initiate_aarq(dedicated: bytes) -> bytes:
    """An AARQ (LN with ciphering) whose user-information is a glo-initiate-request carrying
    a dedicated key."""
    initiate = b"\x01\x01\x10" + dedicated + bytes.fromhex("0000065f1f040000101dffff")
    user = glo(0x21, initiate, counter=1)
    body = (
        bytes.fromhex("a109060760857405080103")
        + bytes.fromhex("a60a0408") + CLIENT_TITLE
        + bytes([0xBE, len(user) + 2, 0x04, len(user)]) + user
    )  # fmt: skip
    return bytes([0x60, len(body)]) + body


def test_glo_initiate_and_ded_apdu_with_the_dedicated_key() -> None:
    dedicated = bytes(range(0x40, 0x50))
    run = Run(keys={CLIENT_TITLE: (KEY, AUTH_KEY)})
    run.send(True, wrapper(_glo_initiate_aarq(dedicated)))
    information = run.events[0]["dlms"]["user_information"]
    assert information["apdu_type"] == "initiate_request"
    assert information["dedicated_key_present"] is True
    assert dedicated.hex() not in json.dumps(run.events)
    plain = get_request(enums.CosemInterface.DATA, "0.0.96.1.0.255", 2)
    field = SecurityControlField(security_suite=0, authenticated=True, encrypted=True)
    ciphered = encrypt(field, CLIENT_TITLE, 2, dedicated, plain, AUTH_KEY)
    content = b"\x30" + (2).to_bytes(4, "big") + ciphered
    run.send(True, wrapper(bytes([0xD0, len(content)]) + content))
    event = run.events[1]
    assert event["event"]["action"] == "get_request"
    assert event["dlms"]["ciphered_apdu_type"] == "ded_get_request"
    assert event["dlms"]["obis"] == "0-0:96.1.0*255"


def test_ded_apdu_without_the_dedicated_key_stays_encrypted() -> None:
    content = b"\x30" + (2).to_bytes(4, "big") + bytes(30)
    run = Run(keys={CLIENT_TITLE: (KEY, AUTH_KEY)})
    run.send(True, wrapper(_ciphered_aarq()))
    run.send(True, wrapper(bytes([0xD0, len(content)]) + content))
    assert run.events[1]["event"]["action"] == "ded_get_request"
    assert run.events[1]["dlms"]["scope"] == "dedicated"


def test_data_notification_readings() -> None:
    body = bytes.fromhex(
        "0203"
        "020309060100010800ff06000004d202020fff161e"  # 1-0:1.8.0 = 1234, scaler -1, Wh
        "020209060100200700ff120e6a"  # 1-0:32.7.0 = 3690 (no scaler)
        "020209060000010000ff0600000001"  # 0-0:1.0.0: not energy
    )
    notification = bytes.fromhex("0f0000000100") + body
    run = Run()
    run.send(False, wrapper(notification, 1, 16))
    event = run.events[0]
    assert event["event"]["action"] == "data_notification"
    readings = sorted(event["energy"]["readings"], key=lambda r: r["obis"])
    assert readings == [
        {
            "obis": "1-0:1.8.0*255",
            "value": 123.4,
            "raw_value": 1234,
            "scaler": -1,
            "unit": "Wh",
            "direction": "import",
            "quantity": "energy",
        },
        {"obis": "1-0:32.7.0*255", "value": 3690, "quantity": "voltage"},
    ]


# -- malformed and arbitrary bytes ------------------------------------------------------------


@pytest.mark.parametrize(
    "apdu",
    ["c0", "c001", "c001c1000f", "c4", "c40904", "60", "6005a1", "ff", "0f0000", "db0801",
     "c001c1000f0000280000ff0201" + "09"],
)  # fmt: skip
def test_malformed_apdus_give_an_event_and_an_error(apdu: str) -> None:
    run = Run()
    run.send(True, wrapper(bytes.fromhex(apdu)))
    (event,) = run.events
    assert event["dlms"]["anomalies"] == ["malformed"]
    assert event["dlms"]["raw"] == apdu[:128]
    assert run.stats.malformed == 1
    assert run.stats.errors


def test_mid_stream_capture_resynchronises() -> None:
    request = get_request(enums.CosemInterface.DATA, "0.0.42.0.0.255", 2)
    run = Run()
    run.send(True, wrapper(request)[5:] + wrapper(request))  # starts inside a wrapper PDU
    assert run.actions() == ["get_request"]
    assert run.stats.resyncs == 1
    frame = i_frame(request)
    hdlc_run = Run()
    hdlc_run.send(True, frame[9:] + frame)  # starts inside an HDLC frame
    assert hdlc_run.actions() == ["get_request"]
    assert hdlc_run.stats.resyncs == 1


def test_not_dlms_on_the_port_is_one_violation() -> None:
    run = Run()
    run.send(True, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    run.send(True, b"more")
    assert run.actions() == ["protocol_violation"]


def _frame(number: int, payload: bytes, udp: bool, seq: int) -> Frame:
    eth = bytes(6) + bytes([2]) * 6 + b"\x08\x00"
    if udp:
        transport = (40000).to_bytes(2, "big") + (4059).to_bytes(2, "big")
        transport += (8 + len(payload)).to_bytes(2, "big") + b"\x00\x00"
    else:
        transport = (40000).to_bytes(2, "big") + (4059).to_bytes(2, "big") + seq.to_bytes(4, "big")
        transport += (1).to_bytes(4, "big") + bytes([0x50, 0x18]) + b"\xff\xff\x00\x00\x00\x00"
    total = 20 + len(transport) + len(payload)
    ip = bytes([0x45, 0]) + total.to_bytes(2, "big") + b"\x00\x01\x40\x00\x40"
    ip += bytes([17 if udp else 6]) + b"\x00\x00" + CLIENT + SERVER
    return Frame(number, TS + number, 1, eth + ip + transport + payload)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=120),
            st.binary(max_size=60).map(lambda b: b"\x00\x01\x00\x10\x00\x01" + b),
            st.binary(max_size=60).map(lambda b: b"\x7e\xa0" + b),
        ),
        max_size=12,
    ),
    st.booleans(),
)
def test_arbitrary_bytes_on_port_4059_never_crash(payloads: list[bytes], udp: bool) -> None:
    collector = Collector(CollectSettings(dlms_ports=(4059,), dlms_udp_ports=(4059,)))
    seq = 1000
    for number, payload in enumerate(payloads, start=1):
        collector.frame(_frame(number, payload, udp, seq))
        seq += len(payload)
    collector.finish()
    for event in collector.take():
        assert event["event"]["dataset"] == "ics.dlms"
        assert "apdu_type" in event["dlms"]
        json.dumps(event)  # no bytes left in an event


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decode_apdu_gives_a_record_or_a_dissect_error(data: bytes) -> None:
    try:
        record = dlms.decode_apdu(data)
    except DissectError:
        return
    assert record["apdu_type"] in dlms.APDU_NAMES.values()
    json.dumps(record, default=bytes.hex)
