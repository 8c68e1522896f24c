"""OPC UA Binary (OPC 10000-6, UA Connection Protocol and UA Secure Conversation): chunks and
service messages, bytes in, records out. Pure functions, no I/O.

Every chunk starts with the same header::

    MessageType   3 bytes   HEL ACK ERR RHE OPN MSG CLO
    ChunkType     1 byte    F (final), C (intermediate), A (abort)
    MessageSize   UInt32    the whole chunk, header included (little-endian, as every number)

then, by message type::

    HEL  ProtocolVersion ReceiveBufferSize SendBufferSize MaxMessageSize MaxChunkCount (UInt32)
         EndpointUrl (String)
    ACK  ProtocolVersion ReceiveBufferSize SendBufferSize MaxMessageSize MaxChunkCount
    ERR  Error (StatusCode) Reason (String)
    RHE  ServerUri (String) EndpointUrl (String)
    OPN  SecureChannelId (UInt32), asymmetric security header: SecurityPolicyUri (String)
         SenderCertificate (ByteString) ReceiverCertificateThumbprint (ByteString),
         sequence header: SequenceNumber RequestId (UInt32), body
    MSG  SecureChannelId, symmetric security header: TokenId (UInt32),
    CLO  sequence header, body

A service body is the NodeId of its binary encoding (``ReadRequest_Encoding_DefaultBinary``,
ns=0;i=631) and the structure; a message may span chunks (C... then F; A abandons it). This
module reads the chunk framing, with no dependency (a Modbus-only run never loads asyncua);
:mod:`collectors.opcua_services` decodes the structures. A body that does not decode (encrypted with
Sign and Encrypt, or asymmetrically in OPN) is never guessed at: the caller records its metadata
and ``encrypted: true``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from soc.errors import DissectError

MESSAGE_TYPES = frozenset({b"HEL", b"ACK", b"ERR", b"RHE", b"OPN", b"MSG", b"CLO"})
CHUNK_TYPES = frozenset({b"F", b"C", b"A"})
HEADER_SIZE = 8
MAX_CHUNK = 1 << 24  # 16 MiB: a larger MessageSize is not OPC UA (buffers are negotiated lower)
NONE_POLICY = "http://opcfoundation.org/UA/SecurityPolicy#None"
SECURITY_MODES = {1: "None", 2: "Sign", 3: "SignAndEncrypt"}
_U32 = struct.Struct("<I")
_HEADER = struct.Struct("<3ssI")
#: a MSG or CLO chunk after its header: secure channel id, token id, sequence number, request id
_SYMMETRIC = struct.Struct("<IIII")
_HELLO = struct.Struct("<IIIII")


@dataclass
class OpcuaStats:
    """Counts of one collection run."""

    messages: int = 0
    requests: int = 0
    responses: int = 0
    faults: int = 0
    encrypted: int = 0
    aborted: int = 0
    orphans: int = 0
    unanswered: int = 0
    malformed: int = 0
    partial: int = 0  # messages whose header decoded but not the rest of the body
    violations: int = 0
    resyncs: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Chunk:
    """One chunk's header fields and its body (the bytes after the sequence header)."""

    message_type: str
    chunk_type: str
    size: int
    secure_channel_id: int | None = None
    security_policy_uri: str | None = None
    sender_certificate_length: int | None = None
    receiver_thumbprint_length: int | None = None
    token_id: int | None = None
    sequence_number: int | None = None
    request_id: int | None = None
    body: bytes = b""


def chunk_size(head: bytes) -> int:
    """The size of the chunk starting with ``head`` (8 bytes): 0 when more bytes are needed,
    -1 when it is not an OPC UA chunk header."""
    if len(head) < HEADER_SIZE:
        return 0
    kind, chunk, size = _HEADER.unpack_from(head)
    if kind not in MESSAGE_TYPES or chunk not in CHUNK_TYPES or not 12 <= size <= MAX_CHUNK:
        return -1
    return int(size)


def plausible(payload: bytes) -> bool:
    """Whether a flow's first bytes look like OPC UA Binary (dynamic protocol detection)."""
    return chunk_size(payload[:HEADER_SIZE]) > 0


def parse_chunk(data: bytes) -> Chunk:
    """The header and security/sequence headers of one whole chunk (``len(data)`` = its size)."""
    kind, chunk_type, size = _HEADER.unpack_from(data)
    if (kind == b"MSG" or kind == b"CLO") and len(data) >= 24:  # the usual case: one unpack
        channel, token, sequence, request = _SYMMETRIC.unpack_from(data, HEADER_SIZE)
        return Chunk(
            kind.decode(), chunk_type.decode(), size, channel, None, None, None, token,
            sequence, request, data[24:],
        )  # fmt: skip
    chunk = Chunk(kind.decode(), chunk_type.decode(), size)
    reader = _Reader(data, HEADER_SIZE)
    if kind in (b"HEL", b"ACK", b"ERR", b"RHE"):
        chunk.body = data[HEADER_SIZE:]
        return chunk
    chunk.secure_channel_id = reader.u32()
    if kind == b"OPN":
        chunk.security_policy_uri = reader.string()
        chunk.sender_certificate_length = reader.byte_string_length()
        chunk.receiver_thumbprint_length = reader.byte_string_length()
        # the rest is asymmetrically encrypted when there is a receiver certificate to encrypt
        # for: OPC 10000-6 6.7.2.3, the thumbprint is null when the message is not encrypted
        if (
            chunk.security_policy_uri not in (None, NONE_POLICY)
            and (chunk.receiver_thumbprint_length or 0) > 0
        ):
            chunk.body = data[reader.offset :]
            return chunk
    else:
        chunk.token_id = reader.u32()
    chunk.sequence_number = reader.u32()
    chunk.request_id = reader.u32()
    chunk.body = data[reader.offset :]
    return chunk


def connection_fields(kind: str, body: bytes) -> dict[str, Any]:
    """The fields of a HEL, ACK, ERR or RHE body (or of an abort chunk's, as ERR)."""
    reader = _Reader(body, 0)
    if kind in ("HEL", "ACK"):
        if len(body) < _HELLO.size:
            raise DissectError(f"{kind} body of {len(body)} bytes is shorter than 20")
        version, receive, send, max_message, max_chunks = _HELLO.unpack_from(body)
        out: dict[str, Any] = {
            "protocol_version": version,
            "receive_buffer_size": receive,
            "send_buffer_size": send,
            "max_message_size": max_message,
            "max_chunk_count": max_chunks,
        }
        if kind == "HEL":
            reader.offset = _HELLO.size
            out["endpoint_url"] = reader.string()
        return out
    if kind == "ERR":
        from collectors.opcua_services import status_fields  # asyncua: only when OPC UA is seen

        code = reader.u32()
        return {**status_fields(code), "reason": reader.string()}
    return {"server_uri": reader.string(), "endpoint_url": reader.string()}  # RHE


class _Reader:
    """Little-endian OPC UA primitives over bytes, with clear errors at the end of data."""

    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.offset = offset

    def u32(self) -> int:
        if self.offset + 4 > len(self.data):
            raise DissectError(f"truncated at byte {self.offset}: a UInt32 needs 4 bytes")
        (value,) = _U32.unpack_from(self.data, self.offset)
        self.offset += 4
        return int(value)

    def _length(self) -> int:
        length = self.u32()
        return length - (1 << 32) if length >= 1 << 31 else length

    def string(self) -> str | None:
        length = self._length()
        if length < 0:
            return None
        end = self.offset + length
        if end > len(self.data):
            raise DissectError(f"truncated at byte {self.offset}: a String of {length} bytes")
        text = self.data[self.offset : end].decode("utf-8", "replace")
        self.offset = end
        return text

    def byte_string_length(self) -> int:
        length = self._length()
        if length > 0:
            if self.offset + length > len(self.data):
                raise DissectError(f"truncated at byte {self.offset}: a ByteString of {length}")
            self.offset += length
        return length
