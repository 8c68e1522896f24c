"""Readers for Zeek's outputs, as the corpus stores them: TSV logs and btest ``print`` baselines.

A Zeek ASCII log is tab-separated text led by ``#`` directives: ``#separator`` (written escaped,
``\\x09``), ``#set_separator``, ``#empty_field``, ``#unset_field``, ``#fields`` and ``#types``;
``#path``, ``#open`` and ``#close`` are informative, and a file may hold several header blocks
(btest's ``weird-combined.log``). Values are typed by ``#types``: an unset field is ``None``,
``count``/``int``/``port`` are ``int``, ``bool`` (``T``/``F``) is ``bool``, ``time`` is integer
microseconds since the epoch (``None`` when btest masked it as ``XXXXXXXXXX.XXXXXX``), ``set[...]``
and ``vector[...]`` are lists (``(empty)`` is ``[]``), anything else stays a ``str`` as written,
with Zeek's ``\\xNN`` escapes (see :func:`unescape`). A file cut by ``zeek-cut`` has no header:
pass its columns as ``fields``.

A btest ``print`` baseline is one line per printed event, ``event, c$id, headers, args...``
(a leading count when the test piped through ``sort | uniq -c``), records written
``[name=value, ...]``, vectors ``[v, v]``, booleans ``T``/``F``, ports ``502/tcp``; btest masks
some values as ``XXX`` (read as ``None``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")
_MASKED = re.compile(r"^X+(\.X+)?$")


def unescape(text: str) -> bytes:
    """The bytes of a Zeek string value (``\\xNN`` escapes decoded, other characters as Latin-1)."""
    out = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(text):
        out += text[pos : match.start()].encode("latin-1")
        out.append(int(match.group(1), 16))
        pos = match.end()
    out += text[pos:].encode("latin-1")
    return bytes(out)


def parse_time(text: str) -> int | None:
    """``seconds.fraction`` to integer microseconds, exactly (no float); ``None`` when masked."""
    if _MASKED.match(text):
        return None
    seconds, _, fraction = text.partition(".")
    return int(seconds) * 1_000_000 + int((fraction + "000000")[:6])


def _scalar(kind: str, text: str) -> Any:
    if kind in ("count", "int", "port"):
        return int(text)
    if kind == "bool":
        if text not in ("T", "F"):
            raise ValueError(f"not a Zeek bool: {text!r}")
        return text == "T"
    if kind == "time":
        return parse_time(text)
    if kind in ("double", "interval"):
        return float(text)
    return text


def _value(kind: str, text: str, header: dict[str, str]) -> Any:
    if text == header["unset_field"]:
        return None
    container = re.match(r"^(set|vector)\[(.+)\]$", kind)
    if container:
        if text == header["empty_field"]:
            return []
        inner = container.group(2)
        return [
            None if item == header["unset_field"] else _scalar(inner, item)
            for item in text.split(header["set_separator"])
        ]
    if text == header["empty_field"]:
        return ""
    return _scalar(kind, text)


def read_log(path: Path, fields: Sequence[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """The rows of a Zeek ASCII log as dicts keyed by field name (``id.orig_h``, ...).

    ``fields``: ``(name, type)`` columns for a log without a ``#fields``/``#types`` header (the
    output of ``zeek-cut``); a header in the file wins. A row whose column count does not match
    its header is an error, not a silent truncation.
    """
    header = {"separator": "\t", "set_separator": ",", "empty_field": "(empty)", "unset_field": "-"}
    names = [n for n, _ in fields] if fields else []
    types = [t for _, t in fields] if fields else []
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line:
            continue
        if line.startswith("#separator "):
            header["separator"] = unescape(line.split(" ", 1)[1]).decode("latin-1")
            continue
        if line.startswith("#"):
            key, _, rest = line[1:].partition(header["separator"])
            values = rest.split(header["separator"]) if rest else []
            if key in ("set_separator", "empty_field", "unset_field"):
                header[key] = values[0]
            elif key == "fields":
                names = values
            elif key == "types":
                types = values
            continue  # path, open, close, btest's own comment line
        cells = line.split(header["separator"])
        if not names or len(types) != len(names) or len(cells) != len(names):
            raise ValueError(f"{path}:{number}: {len(cells)} cells for fields {names}")
        rows.append(
            {
                name: _value(kind, cell, header)
                for name, kind, cell in zip(names, types, cells, strict=True)
            }
        )
    return rows


# -- btest print baselines -------------------------------------------------------------------


@dataclass(frozen=True)
class Print:
    """One printed Modbus event: ``count`` lines like it (1 unless ``uniq -c`` counted them)."""

    count: int
    event: str
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    tid: int | None  # None: masked by the baseline (XXX)
    pid: int
    unit: int
    function_code: int | None
    length: int
    args: tuple[Any, ...]


_PRINT = re.compile(
    r"^(?:(?P<count>\d+) )?(?P<event>\w+), "
    r"\[orig_h=(?P<orig_h>[^,]+), orig_p=(?P<orig_p>\d+)/tcp, "
    r"resp_h=(?P<resp_h>[^,]+), resp_p=(?P<resp_p>\d+)/tcp(?:, proto=\d+)?(?:, ctx=\[\])?\], "
    r"\[tid=(?P<tid>\w+), pid=(?P<pid>\d+), uid=(?P<unit>\d+), "
    r"function_code=(?P<fc>\w+), len=(?P<len>\d+)\](?P<rest>.*)$"
)


def _split_top(text: str) -> list[str]:
    """``a, [b, c], d`` to ``["a", "[b, c]", "d"]``: commas inside brackets stay."""
    parts: list[str] = []
    depth = 0
    current = ""
    i = 0
    while i < len(text):
        char = text[i]
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if depth == 0 and text.startswith(", ", i):
            parts.append(current)
            current = ""
            i += 2
            continue
        current += char
        i += 1
    if current:
        parts.append(current)
    return parts


def _print_value(text: str) -> Any:
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1]
        return [_print_value(item) for item in _split_top(inner)] if inner else []
    if text in ("T", "F"):
        return text == "T"
    if text.isdigit():
        return int(text)
    return text


def _masked_int(text: str) -> int | None:
    return None if _MASKED.match(text) else int(text)


def read_prints(path: Path) -> Iterator[Print]:
    """The Modbus events printed in a btest ``output`` baseline (other lines are skipped)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _PRINT.match(line)
        if not match:
            continue
        rest = match["rest"]
        args = tuple(_print_value(a) for a in _split_top(rest[2:])) if rest else ()
        yield Print(
            count=int(match["count"] or 1),
            event=match["event"],
            orig_h=match["orig_h"],
            orig_p=int(match["orig_p"]),
            resp_h=match["resp_h"],
            resp_p=int(match["resp_p"]),
            tid=_masked_int(match["tid"]),
            pid=int(match["pid"]),
            unit=int(match["unit"]),
            function_code=_masked_int(match["fc"]),
            length=int(match["len"]),
            args=args,
        )
