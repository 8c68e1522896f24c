"""Agreement of the DLMS/COSEM dissector with the corpus's independent references.

- **Gurux** (``<capture>.gurux.jsonl``: each wrapper PDU or HDLC frame translated to XML by the
  Gurux translator): for every PDU Gurux translates, our event for the same frame must have the
  same APDU type, and for plain APDUs the same invoke id and the same (class id, OBIS, attribute or
  method id) descriptors in order. Differences are named in ``KNOWN`` with their reason.
- **dlms-cosem test vectors**: every valid APDU vector decodes as its upstream test says.
- **Decryption**: the htanwar922 ciphered captures decrypt with the Gurux default keys of the
  manifest, and the Director's general-glo-ciphering APDU to what Gurux decrypted it to.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from collectors import dlms
from collectors.pipeline import Collector
from collectors.run import collect_files
from detectors.runner import ListSink
from soc.config import CollectSettings
from soc.errors import DissectError
from tests.conftest import corpus_path

PORTS = (4059, 4060, 4061, 4063, 4064)
CAPTURES = [
    "dlms-analysis-davxy/pcap-examples/DLMSDirector.pcap",
    "dlms-analysis-davxy/pcap-examples/DLMS_list.pcap",
    "dlms-analysis-davxy/pcap-examples/XmlDemo.pcap",
    "dlms-analysis-davxy/pcap-examples/data1.pcapng",
    "dlms-analysis-davxy/pcap-examples/data2.pcapng",
    "dlms-analysis-davxy/pcap-examples/data3.pcapng",
    "dlms-analysis-davxy/pcap-examples/data4.pcapng",
    "dlms-analysis-davxy/pcap-examples/data5.pcapng",
    "dlms-analysis-davxy/pcap-examples/original_data.pcapng",
    "ndpi/pcap/dlms.pcap",
    "wireshark-dlms-bearxiong99/sample.pcap",
    "wireshark-dlms-htanwar922/Output-Ciphered-Director.pcap",
    "wireshark-dlms-htanwar922/Output-Ciphered-HLS-AuthEnc.pcap",
    "wireshark-dlms-htanwar922/Output-Ciphered-HLS.pcap",
    "wireshark-dlms-htanwar922/Output-Ciphered.pcap",
    "wireshark-dlms-htanwar922/Output.pcap",
]
#: Gurux's XML element names -> our event.action
GURUX_TYPES = {
    "GetRequest": "get_request", "GetResponse": "get_response", "SetRequest": "set_request",
    "SetResponse": "set_response", "ActionRequest": "action_request",
    "ActionResponse": "action_response", "AssociationRequest": "aarq",
    "AssociationResponse": "aare", "ReleaseRequest": "rlrq", "ReleaseResponse": "rlre",
    "DataNotification": "data_notification", "EventNotificationRequest":
    "event_notification_request", "ExceptionResponse": "exception_response",
    "ConfirmedServiceError": "confirmed_service_error", "AccessRequest": "access_request",
    "AccessResponse": "access_response", "glo_GetRequest": "glo_get_request",
    "glo_GetResponse": "glo_get_response", "glo_SetRequest": "glo_set_request",
    "glo_SetResponse": "glo_set_response", "glo_ActionRequest": "glo_action_request",
    "glo_ActionResponse": "glo_action_response", "GeneralGloCiphering": "general_glo_ciphering",
    "Ua": "hdlc_ua",
}  # fmt: skip
#: (capture, frame) -> why our reading of a PDU Gurux translated differs from Gurux's: none
#: left (Gurux's quirks are read in :func:`gurux_pdu`: its "NextFrame" GET requests)
KNOWN: dict[tuple[str, int], str] = {}
#: PDUs Gurux prints as raw <Data> (not compared): tag 0x00 is no xDLMS APDU; the body is
#: Gurux's ciphered Access-Request/-Response sent with tag 0x00 (deciphered with the manifest's
#: keys it is D9 access-request / DA access-response); we give a malformed event
RAW_DATA = {
    "wireshark-dlms-htanwar922/Output-Ciphered.pcap": (34, 35),
    "wireshark-dlms-htanwar922/Output-Ciphered-HLS.pcap": (9, 10),
    "wireshark-dlms-htanwar922/Output-Ciphered-HLS-AuthEnc.pcap": (9, 10),
}


def _events(capture: Path, keys: dict[bytes, tuple[bytes, bytes]] | None = None) -> list[Any]:
    """The DLMS events of a capture, with keys given as ``collect.dlms_keys`` says."""
    entries = tuple(f"{t.hex()}:{b.hex()}:{a.hex()}" for t, (b, a) in (keys or {}).items())
    collector = Collector(CollectSettings(dlms_ports=PORTS, dlms_keys=entries))
    sink = ListSink()
    collect_files([capture], collector, sink)
    return [e for e in sink.events if e["event"]["dataset"] == "ics.dlms"]


def _gurux(capture: Path) -> list[dict[str, Any]]:
    with capture.with_name(capture.name + ".gurux.jsonl").open() as lines:
        return [json.loads(line) for line in lines]


_TOKEN = re.compile(r"<!--|-->")


def _strip_comments(xml: str) -> str:
    """The XML without its comments, which Gurux nests (its decryption notes hold comments)."""
    out, depth, last = [], 0, 0
    for match in _TOKEN.finditer(xml):
        if match.group() == "<!--":
            if depth == 0:
                out.append(xml[last : match.start()])
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                last = match.end()
    if depth == 0:
        out.append(xml[last:])
    return "".join(out)


def gurux_pdu(xml: str | None, segmented: bool = False) -> dict[str, Any] | None:
    """What Gurux's XML says of a PDU: its type, invoke id, descriptors; None when it has no PDU
    (HDLC link or intermediate segment frames, untranslatable bytes)."""
    if not xml:
        return None
    text = _strip_comments(xml)
    match = re.search(r"<PDU>\s*<(\w+)", text)
    next_frame = re.search(r"<NextFrame Value=\"(C0[0-9A-F]+)\"", text)
    if match is None and next_frame and not segmented:
        # Gurux prints some whole GET requests of unsegmented HDLC frames as "NextFrame" (it
        # takes them for a segment, after an I-frame sequence break): the Green Book layout of
        # their bytes says what they are (C0 01 invoke class(2) OBIS(6) attribute, C0 02 next)
        raw = bytes.fromhex(next_frame.group(1))
        descriptors = []
        if raw[1] == 1:
            obis = ".".join(str(b) for b in raw[5:11])
            descriptors = [(int.from_bytes(raw[3:5], "big"), obis, raw[11])]
        return {"type": "GetRequest", "invoke_id": raw[2] & 0x0F, "descriptors": descriptors,
                "next": raw[1] == 2, "gurux_next_frame": True}  # fmt: skip
    if match is None or match.group(1) == "Data":
        return None
    out: dict[str, Any] = {"type": match.group(1), "next": "<GetRequestForNextDataBlock>" in text}
    invoke = re.search(r"<InvokeIdAndPriority Value=\"([0-9A-F]+)\"", text)
    if invoke:
        out["invoke_id"] = int(invoke.group(1), 16) & 0x0F
    out["descriptors"] = [
        (int(c, 16), ".".join(str(b) for b in bytes.fromhex(i)), int(m, 16))
        for c, i, m in re.findall(
            r"<ClassId Value=\"([0-9A-F]+)\" />\s*<InstanceId Value=\"([0-9A-F]+)\" />\s*"
            r"<(?:AttributeId|MethodId) Value=\"([0-9A-F]+)\" />",
            text,
        )
    ]
    return out


def our_pdu(event: dict[str, Any]) -> dict[str, Any]:
    """The same reading of our event."""
    record = event["dlms"]
    out: dict[str, Any] = {"type": event["event"]["action"],
                           "next": record.get("request_type") == "next"}  # fmt: skip
    if "invoke_id" in record:
        out["invoke_id"] = record["invoke_id"]
    if not out["type"].endswith("_request"):
        out["descriptors"] = []  # a response carries its request's, not its own
        return out
    items = (
        [record] if "class_id" in record else record.get("attributes", record.get("methods", []))
    )
    out["descriptors"] = [
        (i["class_id"], i["obis_dotted"], i.get("attribute", i.get("method"))) for i in items
    ]
    return out


def compare(relative: str) -> tuple[int, int, list[str]]:
    """(Gurux PDUs compared, agreeing, unexplained differences) for one capture."""
    capture = corpus_path(relative)
    ours: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for event in _events(capture):
        if "frame" in event["dlms"]:
            ours[event["dlms"]["frame"]].append(event)
    compared = agreeing = 0
    differences = []
    for entry in _gurux(capture):
        hdlc = entry["framing"] == "hdlc"
        expected = gurux_pdu(entry["xml"], hdlc and bool(int(entry["pdu_hex"][2:4], 16) & 0x08))
        if expected is None:
            continue
        frame = entry["frames"][-1]
        compared += 1
        want = {"type": GURUX_TYPES.get(expected["type"], expected["type"])}
        candidates = ours.get(frame, [])
        index = next(
            (
                i
                for i, e in enumerate(candidates)
                if e["event"]["action"] == want["type"]
                and (e["dlms"].get("request_type") == "next") == expected["next"]
            ),
            0,
        )
        got = our_pdu(candidates.pop(index)) if candidates else None
        if got is not None and not want["type"].startswith(("glo_", "general_")):
            want.update(
                {k: v for k, v in expected.items() if k not in ("type", "gurux_next_frame")}
            )
            if expected["type"] in ("AssociationRequest", "AssociationResponse"):
                want["descriptors"] = []
            if expected["type"] == "AccessRequest":  # its descriptors are not followed
                got["descriptors"] = want["descriptors"]
            got = {k: got.get(k) for k in want}
        elif got is not None:
            got = {"type": got["type"]}
        if got == want:
            agreeing += 1
        elif (relative, frame) not in KNOWN:
            differences.append(f"{relative} frame {frame}: gurux {want} ours {got}")
    return compared, agreeing, differences


@pytest.mark.parametrize("relative", CAPTURES)
def test_agrees_with_gurux(relative: str) -> None:
    compared, agreeing, differences = compare(relative)
    assert not differences, "\n".join(differences[:20])
    assert compared == agreeing + sum(1 for c, _ in KNOWN if c == relative)


@pytest.mark.parametrize(("relative", "frames"), sorted(RAW_DATA.items()))
def test_gurux_raw_data_pdus_are_malformed_here(relative: str, frames: tuple[int, ...]) -> None:
    capture = corpus_path(relative)
    raw = [
        entry["frames"][-1]
        for entry in _gurux(capture)
        if entry["xml"] and re.search(r"<PDU>\s*<Data=", entry["xml"])
    ]
    assert tuple(raw) == frames
    events = [e for e in _events(capture) if e["dlms"].get("frame") in frames]
    assert [e["dlms"]["error"] for e in events] == ["unknown APDU tag 0x00"] * len(frames)
    plain = []
    for entry in _gurux(capture):
        if entry["frames"][-1] in frames:
            content = bytes.fromhex(entry["pdu_hex"])[10:]  # wrapper header, tag 00, length
            to_server = int(entry["pdu_hex"][8:12], 16) == 1  # destination wPort 1: the server
            title = b"MMM\x00\x00\xbcaN" if to_server else b"ABCDEFGH"
            record = {"ciphered_content": content}
            plain.append(dlms.decipher(record, title, *GURUX_KEYS[title])[0])
    assert plain == [0xD9, 0xDA]


def test_gurux_untranslatable_frames_are_ours_too() -> None:
    """data1's AARQ whose BER length was altered (frame 8) fails Gurux ("Invalid DLMS framing");
    its FCS no longer matches either, so we flag the frame bad_fcs and count it malformed."""
    capture = corpus_path("dlms-analysis-davxy/pcap-examples/data1.pcapng")
    events = [e for e in _events(capture) if e["dlms"].get("frame") == 8]
    assert [e["event"]["action"] for e in events] == ["hdlc_frame"]
    assert events[0]["dlms"]["hdlc"]["anomalies"] == ["bad_fcs"]


def test_gurux_rejected_aarq_with_a_bad_oid_length() -> None:
    """data3's AARQ (frame 8, good FCS) has an application-context-name whose OBJECT IDENTIFIER
    length (3) disagrees with its [1] wrapper (9): Gurux rejects it ("Invalid DLMS framing"),
    so do we (malformed, a counted parse error)."""
    capture = corpus_path("dlms-analysis-davxy/pcap-examples/data3.pcapng")
    (event,) = [e for e in _events(capture) if e["dlms"].get("frame") == 8]
    assert event["event"]["action"] == "aarq"
    assert event["dlms"]["anomalies"] == ["malformed"]
    assert "OBJECT IDENTIFIER length" in event["dlms"]["error"]


def test_gurux_empty_i_frames() -> None:
    """data4 and data5 carry I-frames with no information field (server to client, 25 in
    all), which Gurux rejects ("Invalid DLMS framing"): no APDU, so no event; counted as link
    frames."""
    for name in ("data4", "data5"):
        capture = corpus_path(f"dlms-analysis-davxy/pcap-examples/{name}.pcapng")
        rejected = {e["frames"][-1] for e in _gurux(capture) if e["error"]}
        for frame in rejected:
            record = dlms.parse_hdlc(
                bytes.fromhex(
                    next(e["pdu_hex"] for e in _gurux(capture) if e["frames"][-1] == frame)
                )
            )
            assert record.frame_type == "i"
            assert record.information == b""
            assert record.fcs_ok
        assert not [e for e in _events(capture) if e["dlms"].get("frame") in rejected]


def test_gurux_rlre_short_length() -> None:
    """Gurux's server sends an RLRE whose ACSE length is 3 bytes short of its user-information;
    Gurux reads it, so do we, flagged acse_length_mismatch."""
    capture = corpus_path("wireshark-dlms-htanwar922/Output.pcap")
    (event,) = [e for e in _events(capture) if e["event"]["action"] == "rlre"]
    assert event["dlms"]["anomalies"] == ["acse_length_mismatch"]
    assert event["dlms"]["reason"] == "normal"
    assert event["dlms"]["user_information"]["apdu_type"] == "initiate_response"


# -- decryption ------------------------------------------------------------------------------

GURUX_BLOCK_KEY = bytes(range(16))  # MANIFEST.md: Gurux defaults
GURUX_AUTHENTICATION_KEY = bytes(range(0xD0, 0xE0))
GURUX_KEYS = dict.fromkeys(
    (b"MMM\x00\x00\xbcaN", b"ABCDEFGH", b"CPS-LT10"), (GURUX_BLOCK_KEY, GURUX_AUTHENTICATION_KEY)
)


def test_ciphered_capture_decrypts_like_the_plain_one() -> None:
    """Output-Ciphered.pcap (glo-ciphering, encryption only) replays the session of Output.pcap:
    decrypted with the Gurux keys, its GETs name what Gurux read in the plain capture."""
    plain = corpus_path("wireshark-dlms-htanwar922/Output.pcap")
    ciphered = corpus_path("wireshark-dlms-htanwar922/Output-Ciphered.pcap")
    expected = [
        pdu["descriptors"]
        for pdu in (gurux_pdu(e["xml"]) for e in _gurux(plain))
        if pdu and pdu["type"] == "GetRequest"
    ]
    events = _events(ciphered, GURUX_KEYS)
    gets = [e for e in events if e["event"]["action"] == "get_request"]
    assert gets
    assert all(e["dlms"]["decrypted"] for e in gets)
    assert all(e["dlms"]["ciphered_apdu_type"] == "glo_get_request" for e in gets)
    assert [our_pdu(e)["descriptors"] for e in gets] == expected
    responses = [e for e in events if e["event"]["action"] == "get_response"]
    assert len(responses) == len(gets)


def test_director_general_glo_ciphering_decrypts_as_gurux() -> None:
    """The Director's general-glo-ciphering (system title CPS-LT10, authenticated and encrypted)
    decrypts to the Access-Request Gurux printed (long invoke id C0000013, 6 requests)."""
    capture = corpus_path("wireshark-dlms-htanwar922/Output-Ciphered-Director.pcap")
    events = _events(capture, GURUX_KEYS)
    (access,) = [e for e in events if e["event"]["action"] == "access_request"]
    assert access["dlms"]["long_invoke_id"] == 0x13
    assert access["dlms"]["items"] == 6
    assert access["dlms"]["system_title"] == b"CPS-LT10".hex()
    assert access["dlms"]["security_control"] == 0x30


def test_ciphered_without_keys_is_recorded_encrypted() -> None:
    capture = corpus_path("wireshark-dlms-htanwar922/Output-Ciphered-HLS-AuthEnc.pcap")
    events = _events(capture)
    ciphered = [e for e in events if e["event"]["action"].startswith("glo_")]
    assert ciphered
    for event in ciphered:
        record = event["dlms"]
        assert record["encrypted"] is True
        assert "invocation_counter" in record
        assert "security_suite" in record
        assert record["system_title"] in (b"MMM\x00\x00\xbcaN".hex(), b"ABCDEFGH".hex())


def test_bearxiong99_iec_61334_4_32_datagrams() -> None:
    """The 11 datagrams of bearxiong99's sample that Gurux cannot translate ("Invalid DLMS
    framing"): 10 are APDUs behind the 3-byte IEC 61334-4-32 LLC header 90 01 01, which the
    capture's own Wireshark plugin reads (first byte 0x90); one is an HDLC frame with a bad FCS.
    The APDU types below are the tags of their bytes (frames 41-51)."""
    capture = corpus_path("wireshark-dlms-bearxiong99/sample.pcap")
    events = _events(capture)
    llc = [e for e in events if e["dlms"].get("framing") == "iec_61334_4_32_llc"]
    assert [e["event"]["action"] for e in llc] == [
        "aarq", "exception_response", "aarq", "aare", "event_notification_request",
        "set_request", "set_response", "action_request", "action_response", "rlrq",
    ]  # fmt: skip
    assert llc[0]["dlms"]["authentication_mechanism"] == "lls"
    assert not [e for e in events if e["event"]["action"] == "protocol_violation"]
    bad = [e for e in events if e["event"]["action"] == "hdlc_frame"]
    assert [e["dlms"]["hdlc"]["anomalies"] for e in bad] == [["bad_fcs"]]


def test_no_secret_in_any_event() -> None:
    """The LLS password of bearxiong99's AARQ ("01234567") never appears in an event."""
    capture = corpus_path("wireshark-dlms-bearxiong99/sample.pcap")
    text = json.dumps(_events(capture))
    assert "3031323334353637" not in text
    assert "01234567" not in text


# -- dlms-cosem test vectors -----------------------------------------------------------------

_INVALID = re.compile(r"wrong|raises|invalid|error_m|data_msg|has_data|holds|no_data|not_last"
                      r"|last_block_raises|other_than")  # fmt: skip
#: upstream test module -> the APDU type its valid vectors are
_MODULE_TYPES = {
    "test_get.py": ("get_request", "get_response"),
    "test_action.py": ("action_request", "action_response"),
    "test_aarq.py": ("aarq",),
    "test_aare.py": ("aare",),
    "test_rlrq.py": ("rlrq",),
    "test_rlre.py": ("rlre",),
    "test_data_notification.py": ("data_notification",),
    "test_general_global_cipher.py": ("general_glo_ciphering", "data_notification"),
    "test_initiate.py": (
        "initiate_request",
        "initiate_response",
        "glo_initiate_request",
        "glo_initiate_response",
    ),
}


def _vectors() -> list[dict[str, Any]]:
    path = corpus_path("dlms-cosem-u9n-vectors/dlms_cosem_test_vectors.json")
    vectors: list[dict[str, Any]] = json.loads(path.read_text())["vectors"]
    return vectors


def test_cosem_vectors_apdus() -> None:
    """Every valid APDU vector of dlms-cosem's tests decodes to the type its test is about; the
    vectors its tests expect to be rejected (wrong tag, wrong choice) are rejected or decode as
    the APDU their tag really names (a wrong-choice vector of one class is often a valid other
    choice)."""
    checked = 0
    rejected: dict[str, int] = defaultdict(int)
    for vector in _vectors():
        module = vector["file"].rsplit("/", 1)[-1]
        if vector["kind"] != "assign" or module not in _MODULE_TYPES:
            continue
        if vector.get("name") not in ("data", "dlms_data", "resulting_bytes"):
            continue
        data = bytes.fromhex(vector["hex"])
        if _INVALID.search(vector["test"].lower()):
            # a vector upstream rejects: either not an APDU for us either, or a valid APDU of
            # another choice or tag (dlms-cosem rejects what its class does not implement)
            try:
                other = dlms.decode_apdu(data)
            except DissectError:
                rejected["rejected"] += 1
            else:
                assert other["apdu_type"] == dlms.APDU_NAMES[data[0]]
                rejected["other_choice"] += 1
            continue
        record = dlms.decode_apdu(data)
        assert record["apdu_type"] in _MODULE_TYPES[module], vector
        checked += 1
    assert checked >= 40
    assert rejected["rejected"] + rejected["other_choice"] >= 40


def test_cosem_vectors_values() -> None:
    """The vectors whose asserts name values: OBIS, visible strings, date-times, GET fields."""
    by_test = defaultdict(list)
    for vector in _vectors():
        by_test[vector.get("test")].append(vector)
    get = dlms.decode_apdu(bytes.fromhex("c001c1000100002b0100ff0200"))  # test_get normal
    assert (get["class_id"], get["obis"], get["attribute"]) == (1, "0-0:43.1.0*255", 2)
    assert dlms.obis_text(bytes.fromhex("00002b0100ff")) == "0-0:43.1.0*255"
    for vector in by_test["TestVisibleString"]:
        raw, text = vector["values"]
        assert dlms.decode_data(bytes.fromhex(raw["hex"])) == text
    for vector in by_test["test_bytes_datetime_conversion"]:
        raw, source = vector["values"]
        expected = re.search(r'"(.+)"', source["src"]).group(1)  # type: ignore[union-attr]
        assert dlms.date_time_text(bytes.fromhex(raw["hex"])) == expected
    (with_list,) = list(by_test["TestGetResponseWithList.test_compound_objects_parsed_correctly"])
    record = dlms.decode_apdu(bytes.fromhex(with_list["hex"]))
    assert [r["data"] for r in record["results"]][:2] == [50, 0]
    for vector in by_test["test_gen_glo_cipher_load"]:
        if vector["name"] == "dlms_data":
            record = dlms.decode_apdu(bytes.fromhex(vector["hex"]))
            assert record["system_title"] == "2f19229199164103"
    array = next(iter(by_test["TestAxdrDecoder.test_decode_array_and_structure"]))
    value = dlms.decode_data(bytes.fromhex(array["hex"])[1:])  # after the "data present" flag
    # structure {octet-string 07E2020C05000000 00800000 (2018-02-12 00:00, deviation and
    # status unspecified), unsigned 0, double-long-unsigned 000186A0}, one per hour
    assert len(value) == 24
    assert value[0] == ["2018-02-12T00:00:00", 0, 100000]
    assert value[23][0] == "2018-02-12T23:00:00"


def _vector(by_test: dict[str, list[dict[str, Any]]], test: str, name: str) -> bytes:
    return bytes.fromhex(next(v["hex"] for v in by_test[test] if v.get("name") == name))


def test_cosem_vectors_initiate_conformance_wrapper() -> None:
    """InitiateRequest/-Response, conformance blocks, the UDP wrapper header and the
    glo-InitiateRequest deciphered with its test's keys."""
    by_test: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for vector in _vectors():
        by_test[vector.get("test") or ""].append(vector)
    for vector in by_test["test_conformance"]:
        source, raw = vector["values"]
        names = re.findall(r"(\w+)=True", source["src"])
        expected = {
            name.replace("priority_management", "priority_mgmt").replace(
                "attribute_0", "attribute0"
            )
            for name in names
        }
        assert set(dlms._conformance(bytes.fromhex(raw["hex"])[1:])) == expected
    simple = dlms.decode_apdu(_vector(by_test, "TestInitiateRequest.test_parse_simple", "data"))
    assert simple["client_max_receive_pdu_size"] == 1200
    assert simple["proposed_dlms_version"] == 6
    keyed = dlms.decode_apdu(
        _vector(by_test, "TestInitiateRequest.test_decode_with_dedicated_key", "data")
    )
    assert keyed["dedicated_key_present"] is True
    assert "00112233445566778899aabbccddeeff" not in json.dumps(keyed)
    response = dlms.decode_apdu(_vector(by_test, "TestInitiateResponse.test_parse_simple", "data"))
    assert (response["server_max_receive_pdu_size"], response["vaa_name"]) == (500, 7)
    quality = dlms.decode_apdu(
        _vector(by_test, "TestInitiateResponse.test_decode_with_non_default_quality", "data")
    )
    assert quality["negotiated_quality_of_service"] == 0
    header = dlms.parse_wrapper(_vector(by_test, "test_udp_message_from_bytes", "udp_header_data"))
    assert header == {"version": 1, "source_wport": 1, "destination_wport": 1, "length": 70}
    glo = dlms.decode_apdu(_vector(by_test, "TestGlobalCipherInitiateRequest.test_parse", "data"))
    assert glo["apdu_type"] == "glo_initiate_request"
    assert glo["invocation_counter"] == 0x01234567
    plain = dlms.decipher(
        glo,
        _vector(by_test, "TestGlobalCipherInitiateRequest.test_decrypt", "system_title"),
        _vector(by_test, "TestGlobalCipherInitiateRequest.test_decrypt", "encryption_key"),
        _vector(by_test, "TestGlobalCipherInitiateRequest.test_decrypt", "authentication_key"),
    )
    assert dlms.decode_apdu(plain)["apdu_type"] == "initiate_request"
    rlre = dlms.decode_apdu(
        _vector(by_test, "TestDecodeRLRE.test_with_ciphered_initiate_response", "data")
    )
    assert rlre["user_information"]["apdu_type"] == "glo_initiate_response"


def test_cosem_vectors_data_security_selective_access() -> None:
    """A-XDR data vectors, the Green Book's authenticated-encryption example, a clock SET and
    GETs with a range descriptor."""
    by_test: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for vector in _vectors():
        by_test[vector.get("test") or ""].append(vector)
    for test in ("TestDlmsDataDecoder.test_decode_array_and_structure",
                 "TestDlmsDataDecoder.test_decode_array_and_structure_with_limit",
                 "test_lte_monitoring_quality_of_service", "test_gsm_diagnistics_cell_info"):  # fmt: skip
        assert dlms.decode_data(_vector(by_test, test, "data")) is not None
    han = dlms.decode_data(_vector(by_test, "test_parse_data_from_kamstrup_han_port", "data"))
    assert han[0] == "Kamstrup_V0001"
    assert han[1] == "0101000005ff"  # an OBIS code as an octet string
    buffer = dlms.decode_data(_vector(by_test, "test_parse_buffer", "data"))
    assert len(buffer) == 4
    assert buffer[0][0] == "2019-12-31T23:00:00+01:00"
    block = dlms.decode_apdu(_vector(by_test, "test_decode_long", "data"))
    assert (block["response_type"], block["last_block"], block["block_number"]) == (
        "with_datablock", False, 1,
    )  # fmt: skip
    green = "test_decrypt_authenticated"
    record = {
        "ciphered_content": b"\x30"
        + bytes.fromhex("01234567")
        + _vector(by_test, green, "ciphered_text")
    }
    plain = dlms.decipher(
        record,
        _vector(by_test, green, "system_title"),
        _vector(by_test, green, "encryption_key"),
        _vector(by_test, green, "authentication_key"),
    )
    assert plain == _vector(by_test, green, "plain_data")
    clock = dlms.decode_apdu(_vector(by_test, "TestSetRequestNormal.test_transform_bytes", "data"))
    assert (clock["class_id"], clock["obis"], clock["attribute"]) == (8, "0-0:1.0.0*255", 2)
    assert clock["value"] == "2021-01-24T14:48:57.80+01:00"
    name_wrong = dlms.decode_apdu(
        _vector(
            by_test, "TestDecodeAARE.test_no_ciphering_no_security_app_context_name_wrong", "data"
        )
    )
    assert (name_wrong["result"], name_wrong["diagnostic"]) == (
        "rejected_permanent", "application_context_name_not_supported",
    )  # fmt: skip
    version = dlms.decode_apdu(
        _vector(by_test, "TestDecodeAARE.test_no_cipher_no_security_incorrect_dlms_version", "data")
    )
    assert version["user_information"]["error"] == "dlms_version_too_low"
    hls = dlms.decode_apdu(_vector(by_test, "TestDecodeAARE.test_no_ciher_hls_ok", "data"))
    assert (hls["authentication_mechanism"], hls["diagnostic"]) == (
        "hls_gmac", "authentication_required",
    )  # fmt: skip
    ranged = dlms.decode_apdu(_vector(by_test, "test_parse_range_descriptor", "data"))
    assert (ranged["class_id"], ranged["obis"]) == (7, "1-0:99.1.0*255")
    assert ranged["access_selection"] is True
    assert ranged["access_selector"] == 1
    assert ranged["access_parameters"][0] == [8, "0000010000ff", 2, 0]


def test_cosem_vectors_hdlc_frames() -> None:
    """Every HDLC frame vector has a good HCS and FCS and the type its test names."""
    kinds = {"TestSnrmFrame": "snrm", "TestUAFrame": "ua", "TestInformationFrame": "i",
             "TestInformationResponseFrame": "i", "TestUnnumberedInformationFrame": "ui"}  # fmt: skip
    checked = 0
    for vector in _vectors():
        test = (vector.get("test") or "").split(".")[0]
        if test in kinds and vector.get("name") in ("out_data", "in_data", "total", "data"):
            frame = dlms.parse_hdlc(bytes.fromhex(vector["hex"]))
            assert frame.hcs_ok, vector
            assert frame.fcs_ok, vector
            assert frame.frame_type == kinds[test]
            checked += 1
    assert checked >= 6


def test_agreement_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints the Gurux agreement per capture (for the report); asserts nothing beyond the
    per-capture test."""
    for relative in CAPTURES:
        compared, agreeing, differences = compare(relative)
        print(f"{relative}: {agreeing}/{compared} ({len(differences)} unexplained)")


# -- A-XDR values against Gurux's ------------------------------------------------------------

_LEAF = re.compile(
    r"<(Structure|Array) Qty=\"([0-9A-F]+)\"|<(UInt\d+|Int\d+|Enum) Value=\"([0-9A-F]+)\""
    r"|<Boolean Value=\"(\w+)\"|<OctetString Value=\"([0-9A-F]*)\"|<String Value=\"([^\"]*)\""
    r"|<BitString Value=\"([01]*)\"|<(Float32|Float64|None|DateTime|Date|Time)\b"
)


def gurux_values(xml: str) -> list[tuple[str, Any]]:
    """The values of the first <Data> or <Value> of Gurux's XML, flattened in order: list
    lengths, integers, booleans, strings (octet strings as hex, or ISO when a COSEM date-time,
    as we write them); floats and dates are skipped."""
    text = _strip_comments(xml)
    start = max(text.find("<Data>"), text.find("<Value>"))
    out: list[tuple[str, Any]] = []
    for match in _LEAF.finditer(text[start:]):
        kind, qty, number_kind, number, boolean, octets, string, bits, _skip = match.groups()
        if kind:
            out.append(("list", int(qty, 16)))
        elif number_kind:
            value = int(number, 16)
            if number_kind.startswith("Int") and value >= 1 << (len(number) * 4 - 1):
                value -= 1 << (len(number) * 4)
            out.append(("int", value))
        elif boolean is not None:
            out.append(("bool", boolean in ("True", "true", "1")))
        elif octets is not None:
            raw = bytes.fromhex(octets)
            out.append(("str", dlms.date_time_text(raw) or raw.hex()))
        elif string is not None:
            out.append(("str", string))
        elif bits is not None:
            out.append(("str", bits))
    return out


def our_values(value: Any) -> list[tuple[str, Any]]:
    """The same flattening of our decoded value."""
    if isinstance(value, list):
        out: list[tuple[str, Any]] = [("list", len(value))]
        for item in value:
            out.extend(our_values(item))
        return out
    if isinstance(value, bool):
        return [("bool", value)]
    if isinstance(value, int):
        return [("int", value)]
    if isinstance(value, str):
        return [("str", value)]
    return []  # floats, null


@pytest.mark.parametrize("relative", [c for c in CAPTURES if "Ciphered" not in c])
def test_data_values_agree_with_gurux(relative: str) -> None:
    """Every GET response (normal) and SET request value Gurux prints: our decoded A-XDR data
    has the same structure, integers, booleans and strings in the same order."""
    compare_values(relative)


def test_data_values_compared() -> None:
    counts = [compare_values(c) for c in CAPTURES if "Ciphered" not in c]
    assert sum(counts) >= 100


def compare_values(relative: str) -> int:
    """The count of Gurux-printed values ours agree with (asserting each)."""
    capture = corpus_path(relative)
    ours: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for event in _events(capture):
        if event["event"]["action"] in ("get_response", "set_request"):
            ours[event["dlms"]["frame"]].append(event)
    compared = 0
    for entry in _gurux(capture):
        xml = entry["xml"] or ""
        if "<GetResponseNormal>" not in xml and "<SetRequestNormal>" not in xml:
            continue
        if "<Data>" not in xml and "<Value>" not in xml:
            continue
        events = ours[entry["frames"][-1]]
        assert events, entry["frames"]
        record = events.pop(0)["dlms"]
        value = record.get("data", record.get("value"))
        if record.get("truncated"):
            continue
        expected = gurux_values(xml)
        got = our_values(value)
        assert got == expected, (entry["frames"], got[:20], expected[:20])
        compared += 1
    return compared
