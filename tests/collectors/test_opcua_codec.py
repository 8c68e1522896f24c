"""The lean OPC UA decoder (:mod:`collectors.opcua_codec`) against asyncua's, the reference.

What an event shows of a message (:func:`plain` of the whole structure, and
:func:`service_fields`) must be the same from both decoders, and the bytes left after it too:
- on messages asyncua's own encoder writes (every built-in type, optional fields, arrays,
  matrices, nested ExtensionObjects), which run everywhere;
- on every OPC UA message of the corpus captures and fuzz streams, and on seeded mutants of
  them: where the lean decoder reads a mutant, asyncua must read it the same; where it cannot,
  :func:`decode_service` keeps the header alone or says why, at once (asyncua is no fallback:
  one of these mutants holds it for minutes).
"""

from __future__ import annotations

import random
import struct
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua import ua_binary

from collectors.normalize import FlowContext
from collectors.opcua_codec import CodecError, StatusCode, Struct, decode_message, struct_decoder
from collectors.opcua_events import OpcuaSession, OpcuaStats
from collectors.opcua_services import (
    Service,
    decode_service,
    plain,
    reference_decode,
    service_fields,
)
from collectors.pipeline import Collector
from collectors.run import collect_files
from detectors.runner import ListSink
from soc.errors import DissectError
from tests.conftest import CORPUS

ROOT = Path(__file__).resolve().parents[2]
SEED = 10_000_6


def header(handle: int = 7) -> ua.RequestHeader:
    h = ua.RequestHeader()
    h.RequestHandle = handle
    h.Timestamp = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    h.AuditEntryId = "audit-1"
    h.TimeoutHint = 10_000
    return h


def response_header(code: int = 0) -> ua.ResponseHeader:
    h = ua.ResponseHeader()
    h.RequestHandle = 7
    h.Timestamp = datetime(2024, 5, 1, 10, 0, 1, tzinfo=UTC)
    h.ServiceResult = ua.StatusCode(code)
    h.StringTable = ["a", "b"]
    return h


def read_request() -> Any:
    request = ua.ReadRequest()
    request.RequestHeader = header()
    request.Parameters.MaxAge = 500.0
    request.Parameters.TimestampsToReturn = ua.TimestampsToReturn.Both
    for nodeid in (
        ua.NodeId(2258),  # two-byte
        ua.NodeId(1000, 1),  # four-byte
        ua.NodeId(70_000, 300),  # numeric
        ua.NodeId("Tank.Level", 2),
        ua.NodeId(uuid.UUID("72962b91-fa75-4ae6-8d28-b404dc7daf63"), 3),
        ua.NodeId(b"\x01\x02opaque", 4, ua.NodeIdType.ByteString),
    ):
        item = ua.ReadValueId()
        item.NodeId = nodeid
        item.AttributeId = ua.AttributeIds.Value
        item.DataEncoding = ua.QualifiedName("Default Binary", 0)
        request.Parameters.NodesToRead.append(item)
    item = ua.ReadValueId()
    item.NodeId = ua.NodeId(5, 0)
    item.AttributeId = ua.AttributeIds.BrowseName
    item.IndexRange = "1:2"
    item.DataEncoding = ua.QualifiedName("Enc", 3)
    request.Parameters.NodesToRead.append(item)
    return request


def read_response() -> Any:
    response = ua.ReadResponse()
    response.ResponseHeader = response_header()
    when = datetime(2024, 5, 1, 9, 59, 59, 500000, tzinfo=UTC)
    values = [
        ua.DataValue(ua.Variant(42.5, ua.VariantType.Double), SourceTimestamp=when),
        ua.DataValue(ua.Variant([1, 2, 3], ua.VariantType.Int32), ServerTimestamp=when),
        ua.DataValue(ua.Variant([[1, 2], [3, 4]], ua.VariantType.UInt16, Dimensions=[2, 2])),
        ua.DataValue(ua.Variant("text", ua.VariantType.String)),
        ua.DataValue(ua.Variant(True, ua.VariantType.Boolean)),
        ua.DataValue(ua.Variant(ua.LocalizedText("Pompe", "fr-FR"))),
        ua.DataValue(ua.Variant(ua.QualifiedName("Name", 2))),
        ua.DataValue(ua.Variant(b"\x00\xff", ua.VariantType.ByteString)),
        ua.DataValue(ua.Variant(when, ua.VariantType.DateTime)),
        ua.DataValue(ua.Variant(ua.NodeId("x", 5), ua.VariantType.NodeId)),
        ua.DataValue(ua.Variant(uuid.UUID(int=5), ua.VariantType.Guid)),
        ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)),
        ua.DataValue(ua.Variant(None, ua.VariantType.Null)),
        ua.DataValue(ua.Variant([ua.Variant(1, ua.VariantType.Byte)], ua.VariantType.Variant)),
        ua.DataValue(ua.Variant(ua.Argument(Name="in", DataType=ua.NodeId(11)))),
    ]
    response.Results = values
    response.DiagnosticInfos = [ua.DiagnosticInfo(SymbolicId=3, AdditionalInfo="more")]
    return response


def write_request() -> Any:
    request = ua.WriteRequest()
    request.RequestHeader = header()
    for value in (
        ua.Variant(12, ua.VariantType.Int16),
        ua.Variant([0.5, 1.5], ua.VariantType.Float),
    ):
        item = ua.WriteValue()
        item.NodeId = ua.NodeId("Pump.Speed", 2)
        item.AttributeId = ua.AttributeIds.Value
        item.Value = ua.DataValue(value)
        request.Parameters.NodesToWrite.append(item)
    return request


def call_request() -> Any:
    request = ua.CallRequest()
    request.RequestHeader = header()
    method = ua.CallMethodRequest()
    method.ObjectId = ua.NodeId("Line1", 2)
    method.MethodId = ua.NodeId("Line1.Stop", 2)
    method.InputArguments = [ua.Variant(3, ua.VariantType.UInt32), ua.Variant("now")]
    request.Parameters.MethodsToCall = [method]
    return request


def call_response() -> Any:
    response = ua.CallResponse()
    response.ResponseHeader = response_header()
    result = ua.CallMethodResult()
    result.StatusCode = ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)
    result.InputArgumentResults = [ua.StatusCode(0)]
    result.OutputArguments = [ua.Variant(1.25)]
    response.Results = [result]
    return response


def activate_session() -> Any:
    request = ua.ActivateSessionRequest()
    request.RequestHeader = header()
    token = ua.UserNameIdentityToken()
    token.PolicyId = "username"
    token.UserName = "operator"
    token.Password = b"secret"
    token.EncryptionAlgorithm = "http://www.w3.org/2001/04/xmlenc#rsa-oaep"
    request.Parameters.UserIdentityToken = token
    request.Parameters.LocaleIds = ["en", "fr"]
    return request


def create_session_response() -> Any:
    response = ua.CreateSessionResponse()
    response.ResponseHeader = response_header()
    response.Parameters.SessionId = ua.NodeId(uuid.UUID(int=9), 1)
    response.Parameters.AuthenticationToken = ua.NodeId(b"\x10" * 8, 0, ua.NodeIdType.ByteString)
    response.Parameters.RevisedSessionTimeout = 60_000.0
    endpoint = ua.EndpointDescription()
    endpoint.EndpointUrl = "opc.tcp://plc:4840"
    endpoint.SecurityMode = ua.MessageSecurityMode.SignAndEncrypt
    endpoint.SecurityPolicyUri = "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256"
    endpoint.Server.ApplicationUri = "urn:plc"
    endpoint.Server.ApplicationName = ua.LocalizedText("PLC")
    endpoint.UserIdentityTokens = [
        ua.UserTokenPolicy(PolicyId="anon", TokenType=ua.UserTokenType.Anonymous)
    ]
    response.Parameters.ServerEndpoints = [endpoint]
    return response


def add_nodes_request() -> Any:
    request = ua.AddNodesRequest()
    request.RequestHeader = header()
    item = ua.AddNodesItem()
    item.ParentNodeId = ua.ExpandedNodeId("Parent", 2, NamespaceUri="urn:x", ServerIndex=1)
    item.RequestedNewNodeId = ua.ExpandedNodeId(123, 2)
    item.BrowseName = ua.QualifiedName("NewVar", 2)
    item.NodeClass = ua.NodeClass.Variable
    attributes = ua.VariableAttributes()
    attributes.DisplayName = ua.LocalizedText("New")
    attributes.Value = ua.Variant(1)
    attributes.SpecifiedAttributes = ua.NodeAttributesMask.DisplayName
    item.NodeAttributes = attributes
    item.TypeDefinition = ua.ExpandedNodeId(63)
    request.Parameters.NodesToAdd = [item]
    return request


def service_fault() -> Any:
    fault = ua.ServiceFault()
    fault.ResponseHeader = response_header(ua.StatusCodes.BadSessionIdInvalid)
    return fault


def browse_request() -> Any:
    request = ua.BrowseRequest()
    request.RequestHeader = header()
    description = ua.BrowseDescription()
    description.NodeId = ua.NodeId(85)
    description.BrowseDirection = ua.BrowseDirection.Both
    description.ResultMask = 63
    request.Parameters.NodesToBrowse = [description, description]
    return request


BUILDERS = [
    read_request,
    read_response,
    write_request,
    call_request,
    call_response,
    activate_session,
    create_session_response,
    add_nodes_request,
    service_fault,
    browse_request,
]


def agree(body: bytes) -> None:
    """Both decoders read ``body`` the same (whole value, event fields, bytes left)."""
    value, type_id, trailing = decode_message(body)
    reference = reference_decode(body)
    assert reference.value is not None
    assert (value._name, type_id, trailing) == (
        reference.name,
        reference.type_id,
        reference.trailing,
    )
    assert plain(value) == plain(reference.value)
    assert service_fields(decode_service(body)) == service_fields(reference)


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__)
def test_asyncua_encoded_messages_decode_the_same(build: Any) -> None:
    body = ua_binary.struct_to_binary(build())
    agree(body)
    agree(body + b"\x00" * 5)  # a signature or padding after it: counted, not read


def test_lean_values_are_what_an_analyst_reads() -> None:
    value, type_id, _ = decode_message(ua_binary.struct_to_binary(read_request()))
    assert isinstance(value, Struct)
    assert type_id == 631
    nodes = [r.NodeId for r in value.Parameters.NodesToRead]
    assert nodes == [
        "i=2258",
        "ns=1;i=1000",
        "ns=300;i=70000",
        "ns=2;s=Tank.Level",
        "ns=3;g=72962b91-fa75-4ae6-8d28-b404dc7daf63",
        "ns=4;b=AQJvcGFxdWU=",
        "i=5",
    ]
    assert value.Parameters.NodesToRead[-1].DataEncoding == "3:Enc"
    fault, _, _ = decode_message(ua_binary.struct_to_binary(service_fault()))
    assert isinstance(fault.ResponseHeader.ServiceResult, StatusCode)
    assert plain(fault.ResponseHeader.ServiceResult) == "BadSessionIdInvalid"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "empty"),
        (b"\x01\x00\x77\x02", "unknown encoding i=631 in namespace 0? no: i=631 truncated"),
        (b"\x02\x00\x01\x00\x00\x00", "an unknown encoding id"),
        (ua_binary.struct_to_binary(read_request())[:40], "truncated"),
    ],
)
def test_what_does_not_decode_raises(body: bytes, why: str) -> None:
    with pytest.raises(CodecError):
        decode_message(body)


def test_a_billion_null_elements_are_refused_at_once() -> None:
    """A Variant array of Null elements reads no byte per element: asyncua builds the list for
    minutes; the lean decoder refuses a count beyond the bytes left and keeps the header."""
    response = ua.ReadResponse()
    response.ResponseHeader = response_header()
    response.Results = [ua.DataValue(ua.Variant(5, ua.VariantType.Int32))]
    body = ua_binary.struct_to_binary(response)
    assert body.count(b"\x06\x05\x00\x00\x00") == 1
    body = body.replace(b"\x06\x05\x00\x00\x00", b"\x80\xff\xff\xff\x7f")
    start = time.perf_counter()
    service = decode_service(body)
    assert time.perf_counter() - start < 0.5
    assert service.value is None
    assert service.header.RequestHandle == 7
    assert "array of 2147483647 elements" in (service.error or "")
    assert service_fields(service)["anomalies"] == ["undecoded_body"]


# -- the corpus ----------------------------------------------------------------------------------


def corpus_bodies() -> list[bytes]:
    """Every OPC UA message body the collector decodes in the corpus captures, tests/traces and
    the open62541 fuzz streams (recorded as the session hands them to the decoder)."""
    import collectors.opcua_events as events

    bodies: list[bytes] = []
    original = events.decode_service

    def record(body: bytes) -> Any:
        bodies.append(bytes(body))
        return original(body)

    captures = sorted((CORPUS / "icsnpp-opcua-binary").rglob("*.pcap"))
    captures += sorted((ROOT / "tests" / "traces").glob("*.pcap"))
    fuzz = sorted((CORPUS / "open62541-fuzz-corpus").rglob("*.bin"))
    if not captures[:1] or not fuzz:
        pytest.skip("external corpus not present: ../shared/corpus (OPC UA captures, fuzz)")
    events.decode_service = record
    try:
        for capture in captures:
            collect_files([capture], Collector(), ListSink())
        for path in fuzz:
            context = FlowContext(
                "tcp", "opcua", (b"\n\0\0\1", 49152, b""), (b"\n\0\0\2", 4840, b"")
            )
            session = OpcuaSession(context, lambda e: None, OpcuaStats(), {}, str, 10**9)
            session.data(True, path.read_bytes(), 1, 1, 0)
            session.close()
    finally:
        events.decode_service = original
    return bodies


@pytest.fixture(scope="module")
def bodies() -> list[bytes]:
    return corpus_bodies()


def test_every_corpus_message_decodes_the_same(bodies: list[bytes]) -> None:
    assert len(bodies) > 1000
    for body in bodies:
        agree(body)


def test_mutants_decode_the_same_or_say_why(bodies: list[bytes]) -> None:
    rng = random.Random(SEED)
    read = refused = 0
    for body in bodies:
        for _ in range(4):
            mutant = bytearray(body)
            if rng.random() < 0.3:
                del mutant[rng.randrange(4, len(mutant)) :]
            else:
                for _ in range(rng.randint(1, 3)):
                    mutant[rng.randrange(4, len(mutant))] = rng.randrange(256)
            data = bytes(mutant)
            try:
                decode_message(data)
            except CodecError:
                refused += 1
                start = time.perf_counter()
                try:
                    service: Service | None = decode_service(data)
                except DissectError as exc:
                    why, service = str(exc), None
                    assert why, "a refusal says why"
                assert time.perf_counter() - start < 0.5
                if service is not None:
                    assert service.value is None
                    assert service.error
                    assert service_fields(service)["anomalies"] == ["undecoded_body"]
                continue
            read += 1
            agree(data)
    assert read > 1000
    assert refused > 1000


def test_data_value_picoseconds_in_the_specification_order() -> None:
    """OPC 10000-6 5.2.2.17 (Table 26): Value, StatusCode, SourceTimestamp, SourcePicoseconds,
    ServerTimestamp, ServerPicoseconds. asyncua 2.1 reads (and writes) the source picoseconds
    after the server timestamp: on a DataValue with both it swaps them. Ours follows the
    specification; this is the one place the two decoders are meant to differ."""
    epoch = datetime(1601, 1, 1, tzinfo=UTC)
    source = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
    server = datetime(2024, 5, 1, 10, 0, 1, tzinfo=UTC)

    def ticks(when: datetime) -> bytes:
        return struct.pack("<q", (when - epoch) // timedelta(microseconds=1) * 10)

    body = bytes([0x3D, 0x0B]) + struct.pack("<d", 1.5)  # mask; a Double Variant
    body += ticks(source) + struct.pack("<H", 7) + ticks(server) + struct.pack("<H", 9)
    value, pos = struct_decoder(ua.DataValue)(body, 0)
    assert pos == len(body)
    assert (value.Value, value.SourceTimestamp, value.SourcePicoseconds) == (1.5, source, 7)
    assert (value.ServerTimestamp, value.ServerPicoseconds) == (server, 9)
    theirs = ua_binary.struct_from_binary(ua.DataValue, Buffer(body))
    assert theirs.ServerTimestamp != server  # asyncua's order
