"""A lean decoder of the OPC UA Binary encoding (OPC 10000-6 5.2), built from asyncua's
definitions of the standard types.

asyncua's own decoder (:mod:`asyncua.ua.ua_binary`) builds a dataclass, a ``NodeId`` object
and a ``Buffer`` read for every field: about 40 µs for a ReadRequest, most of the collector's
time. This module walks the same definitions (the field names, types, optional-field bits,
enumerations and encodings asyncua generates from the specification's NodeSet) with the same
resolution rules, but decodes with ``struct`` at offsets into the body and builds lighter
values an analyst's event needs:

- a structure is a :class:`Struct` (a tuple with the asyncua class's name and field names,
  read as attributes: ``request.Parameters.NodesToRead``);
- a NodeId (and ExpandedNodeId) is its text as OPC UA writes it (``ns=2;s=Tank.Level``);
- a QualifiedName is ``ns:Name`` (``Name`` in namespace 0), a LocalizedText its text;
- a StatusCode a :class:`StatusCode` (an ``int``); a Variant its value (reshaped by its
  dimensions); enumerations asyncua's own; anything rare (DiagnosticInfo, unknown
  ExtensionObjects, unions) asyncua's own object.

:func:`collectors.opcua_services.plain` renders both kinds the same, and a test compares this
decoder with asyncua's on every OPC UA message of the corpus. A body this decoder cannot read
raises; the caller then asks asyncua, the reference. Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
import uuid
from base64 import b64encode
from collections.abc import Callable
from enum import Enum, IntFlag
from operator import itemgetter
from typing import Any

from asyncua import ua
from asyncua.ua import ua_binary
from asyncua.ua.uatypes import (
    type_allow_subclass,
    type_from_list,
    type_from_optional,
    type_is_list,
    type_is_optional,
    type_is_union,
    types_or_list_from_union,
    win_epoch_to_datetime,
)

#: decodes one value at an offset of a body: (value, offset after it)
Decoder = Callable[[bytes, int], tuple[Any, int]]

_MAX_DIAGNOSTIC_DEPTH = 16


class CodecError(ValueError):
    """The bytes do not hold what the type says (or the type is one this decoder leaves to
    asyncua)."""


class Struct(tuple[Any, ...]):
    """A decoded structure: its field values in the order of asyncua's class, read by name."""

    __slots__ = ()
    _name: str = "Struct"
    _fields: tuple[str, ...] = ()

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in zip(self._fields, self, strict=True))
        return f"{self._name}({inner})"


class StatusCode(int):
    """A StatusCode (OPC 10000-4 7.39) as its 32-bit value."""

    __slots__ = ()


# -- built-in types (OPC 10000-6 5.2.2) ----------------------------------------------------------


def _primitive(fmt: str) -> Decoder:
    unpack = struct.Struct(fmt).unpack_from
    size = struct.calcsize(fmt)

    def decode(data: bytes, pos: int) -> tuple[Any, int]:
        return unpack(data, pos)[0], pos + size

    return decode


_PRIMITIVE_FORMATS = {
    "SByte": "<b",
    "Int16": "<h",
    "Int32": "<i",
    "Int64": "<q",
    "Byte": "<B",
    "Char": "<B",
    "UInt16": "<H",
    "UInt32": "<I",
    "UInt64": "<Q",
    "Boolean": "<?",
    "Double": "<d",
    "Float": "<f",
}
_PRIMITIVES: dict[str, Decoder] = {k: _primitive(v) for k, v in _PRIMITIVE_FORMATS.items()}
#: decoders of fixed-size values: their ``struct`` code and what turns the number into the value
_FIXED: dict[Decoder, tuple[str, Callable[[Any], Any] | None]] = {
    _PRIMITIVES[k]: (v[1], None) for k, v in _PRIMITIVE_FORMATS.items()
}
_I32 = struct.Struct("<i").unpack_from
_U16 = struct.Struct("<H").unpack_from
_H16 = struct.Struct("<h").unpack_from
_U32 = struct.Struct("<I").unpack_from
_I64 = struct.Struct("<q").unpack_from
_BH = struct.Struct("<BH").unpack_from
_HI = struct.Struct("<HI").unpack_from
_GUID = struct.Struct("<IHH").unpack_from


def _bytes(data: bytes, pos: int) -> tuple[bytes | None, int]:
    (length,) = _I32(data, pos)
    pos += 4
    if length == -1:
        return None, pos
    end = pos + length
    if length < 0 or end > len(data):
        raise CodecError(f"a length of {length} at offset {pos - 4} ({len(data) - pos} left)")
    return data[pos:end], end


def _string(data: bytes, pos: int) -> tuple[str | None, int]:
    raw, pos = _bytes(data, pos)
    return (None if raw is None else raw.decode("utf-8", "surrogateescape")), pos


def _null(data: bytes, pos: int) -> tuple[None, int]:
    return None, pos


def _datetime(data: bytes, pos: int) -> tuple[Any, int]:
    return win_epoch_to_datetime(_I64(data, pos)[0]), pos + 8


def _guid(data: bytes, pos: int) -> tuple[uuid.UUID, int]:
    if pos + 16 > len(data):
        raise CodecError(f"a Guid at offset {pos} ({len(data) - pos} left)")
    head = struct.pack(">IHH", *_GUID(data, pos))
    return uuid.UUID(bytes=head + data[pos + 8 : pos + 16]), pos + 16


_TWO_BYTE = tuple(f"i={i}" for i in range(256))
_NUMERIC_CACHE: dict[bytes, str] = {}


def _nodeid_parts(data: bytes, pos: int) -> tuple[int, Any, str, int]:
    """(namespace index, identifier, text, offset after) of a NodeId or ExpandedNodeId
    (OPC 10000-6 5.2.2.9-10), its text as asyncua's ``to_string`` writes it."""
    mask = data[pos]
    kind = mask & 0x3F
    pos += 1
    ident: Any
    if kind == 0:
        ns, ident = 0, data[pos]
        text = _TWO_BYTE[ident]
        pos += 1
    elif kind == 1:
        ns, ident = _BH(data, pos)
        text = f"ns={ns};i={ident}" if ns else f"i={ident}"
        pos += 3
    elif kind == 2:
        ns, ident = _HI(data, pos)
        text = f"ns={ns};i={ident}" if ns else f"i={ident}"
        pos += 6
    elif kind in (3, 4, 5):
        (ns,) = _U16(data, pos)
        pos += 2
        if kind == 3:
            ident, pos = _string(data, pos)
            text = f"s={ident!s}"
        elif kind == 4:
            ident, pos = _guid(data, pos)
            text = f"g={ident!s}"
        else:
            ident, pos = _bytes(data, pos)
            text = f"b={b64encode(ident).decode('ascii')}" if ident is not None else "b="
        if ns:
            text = f"ns={ns};{text}"
    else:
        raise CodecError(f"NodeId encoding {kind} at offset {pos - 1}")
    if mask & 0xC0:
        uri = server = None
        if mask & 0x80:
            uri, pos = _string(data, pos)
        if mask & 0x40:
            (server,), pos = _U32(data, pos), pos + 4
        if server:
            text += f";srv={server}"
        if uri:
            text += f";nsu={uri}"
    return ns, ident, text, pos


def _nodeid(data: bytes, pos: int) -> tuple[str, int]:
    mask = data[pos]
    if mask == 0:
        return _TWO_BYTE[data[pos + 1]], pos + 2
    if mask == 1 or mask == 2:
        end = pos + (4 if mask == 1 else 7)
        key = data[pos:end]
        text = _NUMERIC_CACHE.get(key)
        if text is not None and end <= len(data):
            return text, end
        _, _, text, end = _nodeid_parts(data, pos)
        if len(_NUMERIC_CACHE) < 65_536:
            _NUMERIC_CACHE[key] = text
        return text, end
    _, _, text, pos = _nodeid_parts(data, pos)
    return text, pos


def _qualified_name(data: bytes, pos: int) -> tuple[str | None, int]:
    (ns,) = _H16(data, pos)  # asyncua reads the index as an Int16
    name, pos = _string(data, pos + 2)
    return (f"{ns}:{name}" if ns else name), pos


def _localized_text(data: bytes, pos: int) -> tuple[str | None, int]:
    mask = data[pos]
    pos += 1
    text = None
    if mask & 0x01:
        _, pos = _string(data, pos)
    if mask & 0x02:
        text, pos = _string(data, pos)
    return text, pos


def _status_code(data: bytes, pos: int) -> tuple[StatusCode, int]:
    return StatusCode(_U32(data, pos)[0]), pos + 4


_FIXED[_datetime] = ("q", win_epoch_to_datetime)
_FIXED[_status_code] = ("I", StatusCode)


#: shared, never changed: most headers carry an empty DiagnosticInfo and AdditionalHeader
_NO_DIAGNOSTICS = ua.DiagnosticInfo()
_EMPTY_EXTENSION_OBJECT = ua.ExtensionObject()


def _diagnostic_info(data: bytes, pos: int, depth: int = 0) -> tuple[Any, int]:
    """As :func:`collectors.opcua_services._diagnostic_info` (asyncua's object, rare)."""
    if depth > _MAX_DIAGNOSTIC_DEPTH:
        raise CodecError(f"DiagnosticInfo nested deeper than {_MAX_DIAGNOSTIC_DEPTH}")
    mask = data[pos]
    pos += 1
    if not mask:
        return _NO_DIAGNOSTICS, pos
    info: Any = ua.DiagnosticInfo()
    if mask & 0x01:
        (info.SymbolicId,), pos = _I32(data, pos), pos + 4
    if mask & 0x02:
        (info.NamespaceURI,), pos = _I32(data, pos), pos + 4
    if mask & 0x08:
        (info.Locale,), pos = _I32(data, pos), pos + 4
    if mask & 0x04:
        (info.LocalizedText,), pos = _I32(data, pos), pos + 4
    if mask & 0x10:
        info.AdditionalInfo, pos = _string(data, pos)
    if mask & 0x20:
        info.InnerStatusCode, pos = ua.StatusCode(_U32(data, pos)[0]), pos + 4
    if mask & 0x40:
        info.InnerDiagnosticInfo, pos = _diagnostic_info(data, pos, depth + 1)
    return info, pos


def _extension_object(data: bytes, pos: int) -> tuple[Any, int]:
    """OPC 10000-6 5.2.2.15, as asyncua reads it: a known standard encoding decoded from its
    body, an empty one (TypeId 0) or an unknown one as asyncua's ExtensionObject."""
    ns, ident, _, pos = _nodeid_parts(data, pos)
    encoding = data[pos]
    pos += 1
    body: bytes | None = None
    body_start = -1
    if encoding & 0x01:
        (length,) = _I32(data, pos)
        pos += 4
        if length == -1:  # asyncua's interop rule: the body is the rest, read in place
            body_start = pos
        elif length < 1:
            body = b""
        else:
            end = pos + length
            if end > len(data):
                raise CodecError(f"an ExtensionObject body of {length} ({len(data) - pos} left)")
            body, pos = data[pos:end], end
    if ident == 0:
        return _EMPTY_EXTENSION_OBJECT, pos
    cls = _EXTENSION_CLASSES.get((ns, ident))
    if cls is not None:
        decode = struct_decoder(cls)
        if body_start >= 0:
            return decode(data, body_start)
        if body is None:
            raise CodecError(f"ExtensionObject {cls.__name__} without a body")
        return decode(body, 0)[0], pos
    if body_start >= 0:
        body, pos = data[body_start:], len(data)
    return ua.ExtensionObject(TypeId=ua.NodeId(ident, ua.Int16(ns)), Body=body), pos  # type: ignore[arg-type]


def _fix_data_type_attributes() -> None:
    """asyncua 2.1 registers its own ``DataTypeAttributes`` for the encoding i=372, with a
    ``DataTypeDefinition`` field the specification does not have (its own FIXME says so), so a
    standard AddNodes request for a DataType node runs out of bytes. The specification's type
    (asyncua's generated one) decodes it; set for both decoders."""
    from asyncua.ua import uaprotocol_auto

    encoding = ua.NodeId(ua.Int32(372), ua.Int16(0))
    standard = getattr(uaprotocol_auto, "DataTypeAttributes", None)
    if standard is not None and ua.extension_objects_by_typeid.get(encoding) is not standard:
        ua.extension_objects_by_typeid[encoding] = standard


_fix_data_type_attributes()

#: the standard structures by the (namespace, numeric id) of their binary encoding node
_EXTENSION_CLASSES: dict[tuple[int, Any], type] = {
    (key.NamespaceIndex, key.Identifier): cls for key, cls in ua.extension_objects_by_typeid.items()
}

_MAX_DIMENSION_ELEMENTS = ua_binary.MAX_RESHAPE_ELEMENTS


def _reshape(flat: list[Any], dims: list[int]) -> list[Any]:
    """As asyncua's ``_reshape`` (a multi-dimensional Variant as nested lists)."""
    subdims = dims[1:]
    subsize = 1
    for i in subdims:
        subsize *= i or 1
    if dims[0] * subsize > _MAX_DIMENSION_ELEMENTS:
        raise CodecError(f"Variant dimensions {dims} declare too many elements")
    while dims[0] * subsize > len(flat):
        flat.append([])
    if not subdims or subdims == [0]:
        return flat
    return [_reshape(flat[i : i + subsize], subdims) for i in range(0, len(flat), subsize)]


def _variant(data: bytes, pos: int) -> tuple[Any, int]:
    """OPC 10000-6 5.2.2.16: the value alone (what an event shows of a Variant)."""
    mask = data[pos]
    pos += 1
    kind = mask & 0x3F
    if mask & 0x80:
        value, pos = _builtin_array(kind)(data, pos)
    else:
        value, pos = _builtin(kind)(data, pos)
    if mask & 0x40:
        dims, pos = _builtin_array(6)(data, pos)
        if value is not None:
            value = _reshape(value, dims or [])
    return value, pos


@functools.cache
def _builtin(kind: int) -> Decoder:
    """The decoder of a built-in type by its id (1 Boolean ... 25 DiagnosticInfo), as asyncua
    maps it (an id above 25 as a ByteString)."""
    if kind > 25:
        return _bytes
    return _uatype(ua.VariantType(kind).name)


@functools.cache
def _builtin_array(kind: int) -> Decoder:
    """An array of a built-in type: None for length -1, as asyncua reads it."""
    name = "ByteString" if kind > 25 else ua.VariantType(kind).name
    fmt = _PRIMITIVE_FORMATS.get(name)
    if fmt is not None:
        code = fmt[1]
        size = struct.calcsize(fmt)

        def primitives(data: bytes, pos: int) -> tuple[list[Any] | None, int]:
            (length,) = _I32(data, pos)
            pos += 4
            if length == -1:
                return None, pos
            if length < 0 or pos + length * size > len(data):
                raise CodecError(f"an array of {length} {name} at offset {pos - 4}")
            return list(struct.unpack_from(f"<{length}{code}", data, pos)), pos + length * size

        return primitives
    return _array(_builtin(kind), none_when_null=True)


def _array(element: Decoder, none_when_null: bool) -> Decoder:
    """An array (OPC 10000-6 5.2.5): asyncua gives None for length -1 of a built-in type, an
    empty list for any negative length of a structure."""

    def decode(data: bytes, pos: int) -> tuple[list[Any] | None, int]:
        (length,) = _I32(data, pos)
        pos += 4
        if length < 0:
            return (None if length == -1 and none_when_null else []), pos
        if length > len(data) - pos:  # every element takes at least one byte
            raise CodecError(f"an array of {length} elements at offset {pos - 4}")
        out: list[Any] = []
        append = out.append
        for _ in range(length):
            value, pos = element(data, pos)
            append(value)
        return out, pos

    return decode


_BUILTINS: dict[str, Decoder] = {
    **_PRIMITIVES,
    "Null": _null,
    "String": _string,
    "CharArray": _string,
    "Bytes": _bytes,
    "ByteString": _bytes,
    "DateTime": _datetime,
    "Guid": _guid,
    "NodeId": _nodeid,
    "ExpandedNodeId": _nodeid,
    "StatusCode": _status_code,
    "QualifiedName": _qualified_name,
    "LocalizedText": _localized_text,
    "ExtensionObject": _extension_object,
    "Variant": _variant,
    "DiagnosticInfo": _diagnostic_info,
}


@functools.cache
def _uatype(name: str) -> Decoder:
    """A built-in type by its VariantType name, as asyncua's ``_create_uatype_deserializer``."""
    decoder = _BUILTINS.get(name)
    if decoder is not None:
        return decoder
    cls = getattr(ua, name, None)
    if cls is None:
        raise CodecError(f"no decoder for the built-in type {name}")
    return struct_decoder(cls)


# -- structures, enumerations, lists (as asyncua's _create_type_deserializer resolves them) ------


def _type_decoder(uatype: Any, owner: Any) -> Decoder:
    uatype, optional = ua_binary.resolve_uatype(uatype)
    if not optional and type_is_union(uatype):
        array, uatype = types_or_list_from_union(uatype)
        if not array:
            return _type_decoder(uatype, uatype)
    if type_is_list(uatype):
        element = ua_binary._resolve_type_in_dataclass_context(type_from_list(uatype), owner)
        if isinstance(element, type) and hasattr(ua.VariantType, element.__name__):
            return _builtin_array(getattr(ua.VariantType, element.__name__).value)
        return _lazy_list(element)
    name = getattr(uatype, "__name__", "")
    if hasattr(ua.VariantType, name):
        return _uatype(name)
    if name in _BUILTINS:
        return _BUILTINS[name]
    if uatype is owner:  # a structure holding itself: resolved when first met
        return lambda data, pos: struct_decoder(uatype)(data, pos)
    return struct_decoder(uatype)


def _lazy_list(element_type: Any) -> Decoder:
    holder: list[Decoder] = []

    def decode(data: bytes, pos: int) -> tuple[Any, int]:
        if not holder:
            holder.append(_array(_type_decoder(element_type, type(None)), none_when_null=False))
        return holder[0](data, pos)

    return decode


def _enum(cls: type[Enum]) -> Decoder:
    if issubclass(cls, IntFlag):
        typename = cls.datatype() if hasattr(cls, "datatype") else "UInt32"
        unpack = _PRIMITIVES[typename]
    else:
        unpack = _PRIMITIVES["Int32"]
    members = cls._value2member_map_

    def member(value: int) -> Any:
        found = members.get(value)
        return found if found is not None else cls(value)

    def decode(data: bytes, pos: int) -> tuple[Any, int]:
        value, pos = unpack(data, pos)
        return member(value), pos

    _FIXED[decode] = (_FIXED[unpack][0], member)
    return decode


@functools.cache
def struct_class(name: str, fields: tuple[str, ...]) -> type[Struct]:
    """The :class:`Struct` subclass of an asyncua structure: its fields read by name."""
    namespace: dict[str, Any] = {"__slots__": (), "_name": name, "_fields": fields}
    for i, field in enumerate(fields):
        namespace[field] = property(itemgetter(i))
    return type(name, (Struct,), namespace)


@functools.cache
def struct_decoder(cls: Any) -> Decoder:
    """The decoder of one of asyncua's structures (or enumerations), as asyncua's
    ``_create_dataclass_deserializer`` reads it: field by field in declaration order, an
    ``Encoding`` mask switching the optional ones, absent ones at their defaults."""
    if isinstance(cls, str):
        cls = getattr(ua, cls)
    if issubclass(cls, Enum):
        return _enum(cls)
    if issubclass(cls, ua.UaUnion):
        return _union(cls)
    hints = ua_binary.get_safe_type_hints(cls, {"ua": ua})
    fields = dataclasses.fields(cls)
    steps: list[tuple[int, int, Decoder]] = []  # (field index, optional bit or -1: mask, decoder)
    defaults: list[Any] = []
    bit = 0
    for index, field in enumerate(fields):
        ftype = hints[field.name]
        optional = 0
        if type_is_optional(ftype):
            optional = 1 << bit
            bit += 1
            ftype = type_from_optional(ftype)
        if type_allow_subclass(ftype):
            decoder: Decoder = _extension_object
        else:
            decoder = _type_decoder(ftype, cls)
        steps.append((index, -1 if field.name == "Encoding" else optional, decoder))
        if field.default is not dataclasses.MISSING:
            defaults.append(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            defaults.append(field.default_factory())
        else:
            defaults.append(None)
    if cls is ua.DataValue:
        steps = _spec_order(steps, [f.name for f in fields])
    return _compile(
        cls.__name__, struct_class(cls.__name__, tuple(f.name for f in fields)), steps, defaults
    )


#: OPC 10000-6 5.2.2.17: a DataValue's source picoseconds come right after its source timestamp;
#: asyncua declares (so reads and writes) them after the server timestamp
_DATA_VALUE_ORDER = (
    "Encoding", "Value", "StatusCode", "SourceTimestamp", "SourcePicoseconds",
    "ServerTimestamp", "ServerPicoseconds",
)  # fmt: skip


def _spec_order(
    steps: list[tuple[int, int, Decoder]], names: list[str]
) -> list[tuple[int, int, Decoder]]:
    """A DataValue's fields in the specification's order (their mask bits are asyncua's and
    right: 0x10 source picoseconds, 0x08 server timestamp)."""
    by_name = {names[index]: step for step in steps for index in (step[0],)}
    if set(by_name) != set(_DATA_VALUE_ORDER):
        return steps
    return [by_name[name] for name in _DATA_VALUE_ORDER]


def _compile(
    name: str, out_cls: type[Struct], steps: list[tuple[int, int, Decoder]], defaults: list[Any]
) -> Decoder:
    """One structure's decoder as Python source, compiled: runs of fixed-size fields (numbers,
    DateTime, StatusCode, enumerations) read with one ``struct`` call, the others by their
    decoders, an optional field only when its bit of the mask is set."""
    namespace: dict[str, Any] = {"new": tuple.__new__, "cls": out_cls}
    lines = ["def decode(data, pos):", "    mask = 0"]
    run: list[tuple[int, str, Callable[[Any], Any] | None]] = []

    def flush() -> None:
        if not run:
            return
        fmt = "<" + "".join(code for _, code, _ in run)
        unpack = f"u{run[0][0]}"
        namespace[unpack] = struct.Struct(fmt).unpack_from
        lines.append(f"    {''.join(f'v{i}, ' for i, _, _ in run)}= {unpack}(data, pos)")
        lines.append(f"    pos += {struct.calcsize(fmt)}")
        for i, _, convert in run:
            if convert is not None:
                namespace[f"c{i}"] = convert
                lines.append(f"    v{i} = c{i}(v{i})")
        run.clear()

    for index, optional, decoder in steps:
        fixed = _FIXED.get(decoder)
        if fixed is not None and optional == 0:
            run.append((index, *fixed))
            continue
        flush()
        namespace[f"d{index}"] = decoder
        if optional == -1:  # the Encoding mask
            lines.append(f"    v{index}, pos = d{index}(data, pos)")
            lines.append(f"    mask = v{index}")
        elif optional:
            namespace[f"f{index}"] = defaults[index]
            lines.append(f"    if mask & {optional}:")
            lines.append(f"        v{index}, pos = d{index}(data, pos)")
            lines.append("    else:")
            lines.append(f"        v{index} = f{index}")
        else:
            lines.append(f"    v{index}, pos = d{index}(data, pos)")
    flush()
    values = "".join(f"v{index}, " for index in sorted(index for index, _, _ in steps))
    lines.append(f"    return new(cls, ({values})), pos")
    exec(compile("\n".join(lines), f"<opcua decoder of {name}>", "exec"), namespace)  # noqa: S102 - source built above from asyncua's definitions
    decode: Decoder = namespace["decode"]
    return decode


def _union(cls: Any) -> Decoder:
    """A union (switch field then one of its types), as asyncua's own object (rare)."""
    options = [_type_decoder(t, cls) for t in cls._union_types]
    switch = _PRIMITIVES["UInt32"]
    for field in dataclasses.fields(cls):
        if field.name == "Encoding":
            hint = ua_binary.get_safe_type_hints(cls, {"ua": ua})["Encoding"]
            switch = _type_decoder(hint, type(None))

    def decode(data: bytes, pos: int) -> tuple[Any, int]:
        encoding, pos = switch(data, pos)
        obj: Any = cls()
        obj.Encoding = encoding
        obj.Value = None
        if 0 < encoding <= len(options):
            obj.Value, pos = options[encoding - 1](data, pos)
        return obj, pos

    return decode


def service_class(body: bytes) -> tuple[type, int, int]:
    """The structure a service message's encoding NodeId names (namespace 0): (its asyncua
    class, the encoding's numeric id, where the structure's own fields start after it)."""
    try:
        ns, ident, _, pos = _nodeid_parts(body, 0)
    except (struct.error, IndexError, ValueError) as exc:
        raise CodecError(f"no encoding NodeId: {type(exc).__name__}: {exc}") from exc
    cls = _EXTENSION_CLASSES.get((ns, ident)) if ns == 0 else None
    if cls is None:
        raise CodecError(f"unknown service encoding {f'ns={ns};' if ns else ''}i={ident}")
    return cls, ident, pos


def decode_structure(cls: Any, body: bytes, start: int = 0) -> tuple[Any, int]:
    """One structure of asyncua's at ``start``: (the :class:`Struct`, bytes left after it);
    a :class:`CodecError` when the bytes do not hold it."""
    try:
        value, pos = struct_decoder(cls)(body, start)
    except CodecError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, RecursionError) as exc:
        raise CodecError(f"{type(exc).__name__}: {exc}") from exc
    return value, len(body) - pos


def decode_message(body: bytes) -> tuple[Any, int, int]:
    """A service message (its encoding NodeId, then the structure that NodeId names, from the
    NodeId on, as asyncua's classes hold it as ``TypeId``): (the :class:`Struct`, the
    encoding's numeric id, bytes left after it). A :class:`CodecError` when it does not decode."""
    cls, ident, _ = service_class(body)
    value, trailing = decode_structure(cls, body)
    return value, ident, trailing
