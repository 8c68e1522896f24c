"""OPC UA service messages (OPC 10000-4, encoded as OPC 10000-6 5.2), decoded with asyncua's
definitions of every structure of the standard namespace, and the fields an analyst needs picked
from them (:func:`service_fields`). Pure functions, no I/O.

:func:`decode_service` reads a body with the lean decoder built from those definitions
(:mod:`collectors.opcua_codec`, about ten times faster) and, when that one cannot, with asyncua's
own codec (``asyncua.ua.ua_binary``, the reference: :func:`reference_decode`). A body that does
not decode (encrypted, truncated) is never guessed at: it raises, or keeps the header alone when
only the rest fails. Two asyncua 2.1 mistakes are corrected at import, for decoding only: a
nested DiagnosticInfo, and DataTypeAttributes (:mod:`collectors.opcua_codec`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua import ua_binary
from asyncua.ua.status_codes import get_name_and_doc

from collectors.opcua import SECURITY_MODES
from collectors.opcua_codec import (
    CodecError,
    StatusCode,
    Struct,
    decode_structure,
    service_class,
)
from soc.errors import DissectError

_MAX_DIAGNOSTIC_DEPTH = 16


def _diagnostic_info(data: Any, depth: int = 0) -> Any:
    """A DiagnosticInfo as OPC 10000-6 5.2.2.12 encodes it: a mask byte, then SymbolicId (0x01),
    NamespaceUri (0x02), Locale (0x08), LocalizedText (0x04) as Int32, AdditionalInfo (0x10) as
    String, InnerStatusCode (0x20), and InnerDiagnosticInfo (0x40), recursively."""
    if depth > _MAX_DIAGNOSTIC_DEPTH:
        raise ValueError(f"DiagnosticInfo nested deeper than {_MAX_DIAGNOSTIC_DEPTH}")
    int32, string = ua_binary.Primitives.Int32, ua_binary.Primitives.String
    mask = ua_binary.Primitives.Byte.unpack(data)
    info: Any = ua.DiagnosticInfo()
    if mask & 0x01:
        info.SymbolicId = int32.unpack(data)
    if mask & 0x02:
        info.NamespaceURI = int32.unpack(data)
    if mask & 0x08:
        info.Locale = int32.unpack(data)
    if mask & 0x04:
        info.LocalizedText = int32.unpack(data)
    if mask & 0x10:
        info.AdditionalInfo = string.unpack(data)
    if mask & 0x20:
        info.InnerStatusCode = ua.StatusCode(ua_binary.Primitives.UInt32.unpack(data))
    if mask & 0x40:
        info.InnerDiagnosticInfo = _diagnostic_info(data, depth + 1)
    return info


def _fix_diagnostic_info() -> None:
    """asyncua 2.1 types ``DiagnosticInfo.InnerDiagnosticInfo`` as an ExtensionObject, so a
    nested DiagnosticInfo (OPC 10000-6 5.2.2.12: recursive) derails the rest of the message, and
    maps the Locale and LocalizedText bits the other way round. Its codec is given ours for this
    one type (every other type is still asyncua's)."""
    original = ua_binary._create_dataclass_deserializer
    if getattr(original, "_soc_fixed", False):
        return

    def deserializer(objtype: Any) -> Any:
        if objtype is ua.DiagnosticInfo or objtype == "DiagnosticInfo":
            return _diagnostic_info
        return original(objtype)

    deserializer._soc_fixed = True  # type: ignore[attr-defined]
    ua_binary._create_dataclass_deserializer = deserializer  # type: ignore[assignment]
    for name in dir(ua_binary):  # deserializers built before (cached) may hold the old one
        cached = getattr(getattr(ua_binary, name), "cache_clear", None)
        if cached is not None:
            cached()


_fix_diagnostic_info()


@functools.lru_cache(maxsize=4096)
def status_name(code: int) -> str:
    """The symbolic name of a StatusCode (OPC 10000-6 A.2), ``Unknown`` when it has none."""
    try:
        return str(get_name_and_doc(code)[0])
    except (KeyError, ValueError):
        return "Good" if code == 0 else "Unknown"


def status_fields(code: int) -> dict[str, Any]:
    """``status_code`` (hex, as OPC UA writes them) and its symbolic name."""
    return {"status_code": f"0x{code:08X}", "status_name": status_name(code)}


def _code(value: Any) -> int:
    """A StatusCode's value, from either decoder."""
    return int(value) if isinstance(value, int) else int(value.value)


@dataclass
class Service:
    """A decoded service message (``value`` None when only its header decoded: ``error`` says
    what in the rest did not)."""

    type_id: int  # the numeric id of its binary encoding node (ns=0)
    name: str  # ReadRequest, ServiceFault, ...
    value: Any  # the asyncua structure
    trailing: int  # bytes after the structure (a signature, padding)
    header: Any = None  # the request or response header, when only it decoded
    error: str | None = None


def decode_service(body: bytes) -> Service:
    """The service message of a whole (reassembled) body; a :class:`DissectError` when the
    encoding is not a known standard type or the bytes do not decode (encrypted, truncated).

    Read by the lean decoder (:mod:`collectors.opcua_codec`) alone: asyncua's codec is not a
    fallback, as a crafted message can hold it for minutes (a Variant array of a billion Null
    elements, each read from no bytes)."""
    try:
        cls, type_id, start = service_class(body)
    except CodecError as exc:
        raise DissectError(str(exc)) from exc
    try:
        value, trailing = decode_structure(cls, body)
    except CodecError as exc:
        error = f"{cls.__name__} does not decode: {exc}"[:200]
        header_type = _header_type(cls.__name__)
        if header_type is None:
            raise DissectError(error) from exc
        try:
            header, _ = decode_structure(header_type, body, start)
        except CodecError:
            raise DissectError(error) from exc
        return Service(type_id, cls.__name__, None, 0, header, error)
    return Service(type_id, cls.__name__, value, trailing)


def _header_type(name: str) -> Any:
    """The header a service message starts with, by its name."""
    if name.endswith(("Response", "Fault")):
        return ua.ResponseHeader
    if name.endswith("Request"):
        return ua.RequestHeader
    return None


def reference_decode(body: bytes) -> Service:
    """:func:`decode_service` with asyncua's codec (the reference the lean decoder is tested
    against; not used on captured traffic, see :func:`decode_service`)."""
    buffer = Buffer(body)
    try:
        type_id = ua_binary.nodeid_from_binary(buffer)
    except Exception as exc:
        raise DissectError(f"no encoding NodeId: {exc}") from exc
    cls = ua.extension_objects_by_typeid.get(type_id)
    if cls is None or type_id.NamespaceIndex != 0:
        raise DissectError(f"unknown service encoding {type_id.to_string()}")
    buffer = Buffer(body)
    try:
        value: Any = ua_binary.struct_from_binary(cls, buffer)
    except Exception as exc:  # asyncua raises many kinds on bad bytes
        error = f"{cls.__name__} does not decode: {type(exc).__name__}: {exc}"[:200]
        header_type = _header_type(cls.__name__)
        if header_type is None:
            raise DissectError(error) from exc
        rest = Buffer(body)
        ua_binary.nodeid_from_binary(rest)
        try:
            header = ua_binary.struct_from_binary(header_type, rest)
        except Exception:
            raise DissectError(error) from exc
        return Service(int(type_id.Identifier), cls.__name__, None, 0, header, error)
    return Service(int(type_id.Identifier), cls.__name__, value, len(buffer))


# -- what an analyst reads of each service -------------------------------------------------------


def node(value: Any) -> str | None:
    """A NodeId as OPC UA writes it (``ns=2;s=Tank.Level``, ``i=2258``)."""
    if value is None or type(value) is str:
        return value
    try:
        return str(value.to_string())
    except Exception:
        return str(value)


_SCALARS = frozenset({type(None), bool, int, float, str})
_HIDDEN = frozenset({"TypeId", "Encoding"})  # the wire's, not the value's
MAX_DEPTH = 6


def plain(value: Any, depth: int = 0) -> Any:
    """A decoded value (of either decoder) as JSON: numbers, strings, lists; NodeIds as text,
    bytes as hex, times ISO 8601, status codes by name, structures as objects of their fields
    (at most :data:`MAX_DEPTH` levels deep, then their type's name)."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if isinstance(value, Struct):
        if value._name == "DataValue":
            return plain(value[1], depth)  # its Value (after its Encoding mask)
        if depth >= MAX_DEPTH:
            return value._name
        return {
            snake_case(k): plain(v, depth + 1)
            for k, v in zip(value._fields, value, strict=True)
            if k not in _HIDDEN
        }
    if kind is StatusCode:
        return status_name(value)
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, ua.NodeId):
        return node(value)
    if isinstance(value, ua.StatusCode):
        return status_name(int(value.value))
    if isinstance(value, ua.Variant):
        return plain(value.Value, depth)
    if isinstance(value, ua.DataValue):
        return plain(value.Value, depth)
    if isinstance(value, ua.LocalizedText):
        return value.Text
    if isinstance(value, ua.QualifiedName):
        return f"{value.NamespaceIndex}:{value.Name}" if value.NamespaceIndex else value.Name
    if isinstance(value, list | tuple):
        return [plain(v, depth + 1) for v in value[:100]]
    fields = getattr(value, "__dataclass_fields__", None)
    if fields:
        if depth >= MAX_DEPTH:
            return type(value).__name__
        return {
            snake_case(k): plain(getattr(value, k), depth + 1) for k in fields if k not in _HIDDEN
        }
    return str(value)[:200]


@functools.cache
def snake_case(name: str) -> str:
    """``ReadRequest`` -> ``read_request`` (field and action names)."""
    out = []
    for i, c in enumerate(name):
        if c.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(c.lower())
    return "".join(out)


IDENTITY_TOKENS = {
    "AnonymousIdentityToken": "anonymous",
    "UserNameIdentityToken": "username",
    "X509IdentityToken": "x509",
    "IssuedIdentityToken": "issued",
}


def service_fields(service: Service) -> dict[str, Any]:
    """The event fields of a service message: its header (handle, timestamp, result) and what
    it reads, writes, calls or opens (node ids in ``nodes``). Secrets never: a user name token
    gives its user name, not its password; signatures and certificates give their lengths."""
    value = service.value
    out: dict[str, Any] = {"service": service.name, "service_id": service.type_id}
    header = service.header or (
        getattr(value, "RequestHeader", None) or getattr(value, "ResponseHeader", None)
    )
    if header is not None:
        out["request_handle"] = header.RequestHandle
        if header.Timestamp is not None:
            out["timestamp"] = header.Timestamp.isoformat()
        result = getattr(header, "ServiceResult", None)
        if result is not None:
            out.update(status_fields(_code(result)))
    if value is None:  # only the header decoded
        out["anomalies"] = ["undecoded_body"]
        out["decode_error"] = service.error
        return out
    params = getattr(value, "Parameters", None)
    extract = _EXTRACT.get(service.name)
    if extract is not None:
        try:
            extract(out, params if params is not None else value)
        except (AttributeError, TypeError, ValueError) as exc:  # a structure asyncua left odd
            out.setdefault("anomalies", []).append("unexpected_structure")
            out["detail_error"] = f"{type(exc).__name__}: {exc}"[:200]
    return out


def _read(out: dict[str, Any], p: Any) -> None:
    out["nodes"] = [node(r.NodeId) for r in p.NodesToRead]
    out["read"] = {"attribute_ids": [r.AttributeId for r in p.NodesToRead], "max_age": p.MaxAge}


def _read_response(out: dict[str, Any], p: Any) -> None:
    results = p.Results or []
    out["read"] = {
        "values": [plain(r.Value) for r in results[:100]],
        "status_codes": [plain(r.StatusCode) for r in results[:100]],
    }


def _write(out: dict[str, Any], p: Any) -> None:
    out["nodes"] = [node(w.NodeId) for w in p.NodesToWrite]
    out["write"] = {
        "attribute_ids": [w.AttributeId for w in p.NodesToWrite],
        "values": [plain(w.Value) for w in p.NodesToWrite[:100]],
    }


def _results(out: dict[str, Any], p: Any) -> None:
    results = getattr(p, "Results", None) or []
    out["results"] = [plain(r) for r in results[:100]]


def _call(out: dict[str, Any], p: Any) -> None:
    calls = p.MethodsToCall
    out["nodes"] = [node(c.MethodId) for c in calls]
    out["call"] = [
        {
            "object_id": node(c.ObjectId),
            "method_id": node(c.MethodId),
            "input_arguments": [plain(a) for a in c.InputArguments[:50]],
        }
        for c in calls[:50]
    ]


def _browse(out: dict[str, Any], p: Any) -> None:
    out["nodes"] = [node(b.NodeId) for b in p.NodesToBrowse]


def _translate(out: dict[str, Any], p: Any) -> None:
    out["nodes"] = [node(b.StartingNode) for b in p.BrowsePaths]


def _monitored(out: dict[str, Any], p: Any) -> None:
    out["subscription_id"] = p.SubscriptionId
    out["nodes"] = [node(i.ItemToMonitor.NodeId) for i in p.ItemsToCreate]


def _history_read(out: dict[str, Any], p: Any) -> None:
    out["nodes"] = [node(n.NodeId) for n in p.NodesToRead]


def _history_update(out: dict[str, Any], p: Any) -> None:
    out["nodes"] = [node(getattr(d, "NodeId", None)) for d in p.HistoryUpdateDetails]


def _add_nodes(out: dict[str, Any], p: Any) -> None:
    out["nodes"] = [node(_expanded(n.RequestedNewNodeId)) for n in p.NodesToAdd]
    out["add_nodes"] = [
        {"parent": node(_expanded(n.ParentNodeId)), "browse_name": plain(n.BrowseName)}
        for n in p.NodesToAdd[:50]
    ]


def _expanded(value: Any) -> Any:
    """The NodeId of an ExpandedNodeId (asyncua decodes some as a NodeId already)."""
    return getattr(value, "NodeId", value)


def _delete_nodes(out: dict[str, Any], p: Any) -> None:
    out["nodes"] = [node(n.NodeId) for n in p.NodesToDelete]


def _create_session(out: dict[str, Any], p: Any) -> None:
    out["session"] = {
        "name": p.SessionName,
        "endpoint_url": p.EndpointUrl,
        "client_application_uri": p.ClientDescription.ApplicationUri,
        "client_application_name": plain(p.ClientDescription.ApplicationName),
        "requested_timeout_ms": p.RequestedSessionTimeout,
    }


def _create_session_response(out: dict[str, Any], p: Any) -> None:
    out["session"] = {
        "session_id": node(p.SessionId),
        "revised_timeout_ms": p.RevisedSessionTimeout,
        "server_certificate_length": len(p.ServerCertificate or b""),
    }
    out["endpoints"] = [_endpoint(e) for e in (p.ServerEndpoints or [])[:50]]


def _activate_session(out: dict[str, Any], p: Any) -> None:
    token = p.UserIdentityToken
    kind = IDENTITY_TOKENS.get(type(token).__name__, "unknown" if token is not None else "none")
    session: dict[str, Any] = {"identity_token": kind}
    if kind == "username":
        session["user_name"] = token.UserName
        session["encryption_algorithm"] = token.EncryptionAlgorithm
    if kind in ("username", "x509", "issued", "anonymous"):
        session["policy_id"] = token.PolicyId
    session["locale_ids"] = list(p.LocaleIds or [])
    out["session"] = session


def _get_endpoints(out: dict[str, Any], p: Any) -> None:
    out["endpoint_url"] = p.EndpointUrl


def _get_endpoints_response(out: dict[str, Any], p: Any) -> None:
    out["endpoints"] = [_endpoint(e) for e in (p.Endpoints or [])[:50]]


def _endpoint(e: Any) -> dict[str, Any]:
    return {
        "url": e.EndpointUrl,
        "security_policy_uri": e.SecurityPolicyUri,
        "security_mode": e.SecurityMode.name
        if isinstance(e.SecurityMode, Enum)
        else e.SecurityMode,
        "user_token_types": [t.TokenType.name for t in (e.UserIdentityTokens or [])],
        "application_uri": e.Server.ApplicationUri if e.Server is not None else None,
    }


def _open_channel(out: dict[str, Any], p: Any) -> None:
    out["security_mode"] = SECURITY_MODES.get(int(p.SecurityMode), str(p.SecurityMode))
    out["request_type"] = p.RequestType.name if isinstance(p.RequestType, Enum) else p.RequestType
    out["requested_lifetime_ms"] = p.RequestedLifetime


def _open_channel_response(out: dict[str, Any], p: Any) -> None:
    token = p.SecurityToken
    out["channel_token"] = {
        "channel_id": token.ChannelId,
        "token_id": token.TokenId,
        "revised_lifetime_ms": token.RevisedLifetime,
    }


def _subscription(out: dict[str, Any], p: Any) -> None:
    out["subscription"] = {
        "publishing_interval_ms": p.RequestedPublishingInterval,
        "max_notifications": p.MaxNotificationsPerPublish,
    }


def _cancel(out: dict[str, Any], p: Any) -> None:
    out["cancel_request_handle"] = p.RequestHandle


def _publish(out: dict[str, Any], p: Any) -> None:
    out["acknowledgements"] = [
        {"subscription_id": a.SubscriptionId, "sequence_number": a.SequenceNumber}
        for a in (p.SubscriptionAcknowledgements or [])[:100]
    ]


def _publish_response(out: dict[str, Any], p: Any) -> None:
    out["subscription_id"] = p.SubscriptionId
    out["more_notifications"] = p.MoreNotifications
    _notification_message(out, p)


def _notification_message(out: dict[str, Any], p: Any) -> None:
    """The notifications of a Publish or Republish answer: values of monitored items (client
    handle and value), events, status changes."""
    message = p.NotificationMessage
    if message is None:
        return
    out["notification"] = {
        "sequence_number": message.SequenceNumber,
        "publish_time": plain(message.PublishTime),
        "data": [plain(n) for n in (message.NotificationData or [])[:20]],
    }


def _republish(out: dict[str, Any], p: Any) -> None:
    out["subscription_id"] = p.SubscriptionId
    out["retransmit_sequence_number"] = p.RetransmitSequenceNumber


def _close_session(out: dict[str, Any], p: Any) -> None:
    out["delete_subscriptions"] = p.DeleteSubscriptions


def _find_servers(out: dict[str, Any], p: Any) -> None:
    out["endpoint_url"] = p.EndpointUrl


_EXTRACT = {
    "ReadRequest": _read,
    "ReadResponse": _read_response,
    "WriteRequest": _write,
    "WriteResponse": _results,
    "CallRequest": _call,
    "CallResponse": _results,
    "BrowseRequest": _browse,
    "TranslateBrowsePathsToNodeIdsRequest": _translate,
    "CreateMonitoredItemsRequest": _monitored,
    "HistoryReadRequest": _history_read,
    "HistoryUpdateRequest": _history_update,
    "AddNodesRequest": _add_nodes,
    "DeleteNodesRequest": _delete_nodes,
    "CreateSessionRequest": _create_session,
    "CreateSessionResponse": _create_session_response,
    "ActivateSessionRequest": _activate_session,
    "GetEndpointsRequest": _get_endpoints,
    "GetEndpointsResponse": _get_endpoints_response,
    "FindServersRequest": _find_servers,
    "OpenSecureChannelRequest": _open_channel,
    "OpenSecureChannelResponse": _open_channel_response,
    "CreateSubscriptionRequest": _subscription,
    "CancelRequest": _cancel,
    "PublishRequest": _publish,
    "PublishResponse": _publish_response,
    "RepublishRequest": _republish,
    "RepublishResponse": _notification_message,
    "CloseSessionRequest": _close_session,
    "HistoryReadResponse": _results,
    "HistoryUpdateResponse": _results,
    "AddNodesResponse": _results,
    "DeleteNodesResponse": _results,
    "CreateMonitoredItemsResponse": _results,
}
