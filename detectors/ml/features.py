"""Communication features per time window and pair: what the machine-learning detectors read.

Pure functions, no I/O. :func:`windows` cuts the request events of a period (as
:func:`detectors.baseline.request_of` reads them: the same notion of a request as learning mode)
into fixed windows of ``window_s`` seconds, aligned on multiples of ``window_s`` since the epoch
(so that the same events always fall in the same windows, whatever the period read), one series
per client, server and protocol. The answers a server sends back to the client count as errors
when their ``event.outcome`` is ``failure`` (Modbus exceptions, OPC UA bad status codes and
service faults, DLMS refused associations and data access failures); ``unanswered_request``
events (the collector's response timeout) count as unanswered.

Each :class:`Window` carries a numeric vector, one value per name of :data:`FEATURES`. The
features describe behaviour, never identity: which client or server it is, and whether the pair
is new, is learning mode's business (:mod:`detectors.baseline`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from detectors.baseline import Request, request_of
from soc.event import parse_timestamp
from soc.types import Event

#: The feature names, in the order of :attr:`Window.values`.
FEATURES: tuple[str, ...] = (
    "requests",  # requests in the window
    "requests_per_s",  # requests / window length
    "distinct_codes",  # Modbus function codes, OPC UA services, DLMS services+classes, MQTT types
    "write_share",  # share of requests that change something
    "read_share",  # share of requests that read
    "interarrival_mean_s",  # mean time between the pair's requests (capped at the window)
    "interarrival_std_s",  # their standard deviation
    "error_share",  # error answers per request (capped at 1)
    "unanswered",  # requests the server left unanswered
    "distinct_targets",  # Modbus unit+address ranges, OPC UA nodes, DLMS objects, MQTT topics
)

#: What each feature is, in an analyst's words, with its unit (for explanations).
UNITS: dict[str, str] = {
    "requests": "requests",
    "requests_per_s": "requests/s",
    "distinct_codes": "distinct function codes or services",
    "write_share": "of requests writing",
    "read_share": "of requests reading",
    "interarrival_mean_s": "s mean between requests",
    "interarrival_std_s": "s standard deviation between requests",
    "error_share": "of requests answered with an error",
    "unanswered": "unanswered requests",
    "distinct_targets": "distinct addresses, nodes, objects or topics",
}

_MODBUS_READS = frozenset({1, 2, 3, 4, 20, 24})
_OPCUA_READS = frozenset(
    {
        "ReadRequest",
        "HistoryReadRequest",
        "BrowseRequest",
        "BrowseNextRequest",
        "TranslateBrowsePathsToNodeIdsRequest",
    }
)
_DLMS_READS = frozenset({"get"})
_MQTT_READS = frozenset({"SUBSCRIBE"})


@dataclass(frozen=True)
class Window:
    """One window of one client, server and protocol: its time span (µs, ``end_us``
    exclusive), the ids of its request events and its feature vector (see :data:`FEATURES`)."""

    client: str
    server: str
    protocol: str
    start_us: int
    end_us: int
    event_ids: tuple[str, ...]
    values: tuple[float, ...]

    @property
    def features(self) -> dict[str, float]:
        """The feature vector by name."""
        return dict(zip(FEATURES, self.values, strict=True))

    @property
    def pair(self) -> tuple[str, str, str]:
        """Client, server and protocol."""
        return (self.client, self.server, self.protocol)


@dataclass
class _Acc:
    """A window being filled."""

    times: list[int]
    ids: list[str]
    codes: set[Any]
    targets: set[Any]
    writes: int = 0
    reads: int = 0
    errors: int = 0
    unanswered: int = 0


def code_of(request: Request) -> Any:
    """A request's code: the Modbus function code, OPC UA service, DLMS service and class,
    MQTT packet type."""
    if request.protocol == "modbus":
        return request.key[1]
    if request.protocol == "dlms":
        return (request.key[0], request.key[1])
    return request.key[0]


def is_read(request: Request) -> bool:
    """Whether a request reads (Modbus read functions, OPC UA Read and Browse, DLMS get, MQTT
    SUBSCRIBE)."""
    code = code_of(request)
    if request.protocol == "modbus":
        return code in _MODBUS_READS
    if request.protocol == "opcua":
        return code in _OPCUA_READS
    if request.protocol == "dlms":
        return code[0] in _DLMS_READS
    return code in _MQTT_READS


def targets_of(request: Request, doc: Event) -> tuple[Any, ...]:
    """What a request touches: Modbus unit and address range, OPC UA nodes, DLMS class and
    logical name, MQTT topics."""
    if request.protocol == "modbus":
        return tuple((request.key[0], request.key[1], r) for r in request.values) or (
            (request.key[0], request.key[1]),
        )
    if request.protocol == "opcua":
        nodes = (doc.get("opcua") or {}).get("nodes") or ()
        return tuple(n for n in nodes if isinstance(n, str))
    if request.protocol == "dlms":
        dlms = doc.get("dlms") or {}
        obis = dlms.get("obis")
        return ((str(dlms.get("class_id")), str(obis)),) if obis is not None else ()
    return request.values


def windows(events: Iterable[Event], window_s: float = 10.0) -> list[Window]:
    """The windows of ``events`` (any order), sorted by start, client, server and protocol.

    A window exists when its pair sent a request in it, or received an error answer or had a
    request unanswered in it. Inter-arrival times are measured from the pair's previous request
    (in an earlier window too), capped at ``window_s``; a window with no such gap has a mean of
    ``window_s`` and a deviation of 0.
    """
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    span = round(window_s * 1e6)
    rows: list[tuple[int, str, Event, Request | None]] = []
    for doc in events:
        ts = doc.get("@timestamp")
        if not ts:
            continue
        rows.append(
            (
                parse_timestamp(str(ts)),
                str(doc.get("event", {}).get("id", "")),
                doc,
                request_of(doc),
            )
        )
    rows.sort(key=lambda r: (r[0], r[1]))
    acc: dict[tuple[str, str, str, int], _Acc] = {}
    last_request: dict[tuple[str, str, str], int] = {}
    gaps: dict[tuple[str, str, str, int], list[float]] = {}

    def slot(pair: tuple[str, str, str], t: int) -> tuple[tuple[str, str, str, int], _Acc]:
        key = (*pair, t // span)
        if key not in acc:
            acc[key] = _Acc([], [], set(), set())
        return key, acc[key]

    for t, event_id, doc, request in rows:
        if request is not None:
            pair = (request.client, request.server, request.protocol)
            key, a = slot(pair, t)
            a.times.append(t)
            a.ids.append(event_id)
            a.codes.add(code_of(request))
            a.targets.update(targets_of(request, doc))
            a.writes += request.write
            a.reads += (not request.write) and is_read(request)
            previous = last_request.get(pair)
            if previous is not None:
                gaps.setdefault(key, []).append(min((t - previous) / 1e6, window_s))
            last_request[pair] = t
            continue
        event = doc.get("event") or {}
        dataset = str(event.get("dataset") or "")
        if not dataset.startswith("ics."):
            continue
        protocol = dataset.removeprefix("ics.")
        src, dst = doc.get("source") or {}, doc.get("destination") or {}
        if not src.get("ip") or not dst.get("ip"):
            continue
        if event.get("action") == "unanswered_request":
            slot((str(src["ip"]), str(dst["ip"]), protocol), t)[1].unanswered += 1
        elif event.get("outcome") == "failure":  # an answer: from the server to the client
            slot((str(dst["ip"]), str(src["ip"]), protocol), t)[1].errors += 1

    out = []
    for key, a in acc.items():
        client, server, protocol, index = key
        out.append(
            Window(
                client,
                server,
                protocol,
                index * span,
                (index + 1) * span,
                tuple(a.ids),
                _vector(a, gaps.get(key, []), window_s),
            )
        )
    out.sort(key=lambda w: (w.start_us, w.client, w.server, w.protocol))
    return out


def _vector(a: _Acc, gaps: list[float], window_s: float) -> tuple[float, ...]:
    n = len(a.times)
    mean = sum(gaps) / len(gaps) if gaps else window_s
    std = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps)) if gaps else 0.0
    return (
        float(n),
        n / window_s,
        float(len(a.codes)),
        a.writes / n if n else 0.0,
        a.reads / n if n else 0.0,
        mean,
        std,
        min(1.0, a.errors / max(n, 1)),
        float(a.unanswered),
        float(len(a.targets)),
    )
