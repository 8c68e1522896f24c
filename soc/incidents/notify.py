"""Notifications of incidents: a JSON webhook and syslog in ArcSight CEF.

Formats
  * Webhook: ``POST`` of ``{"change": ..., "sent": ..., "incident": {...}}`` (orjson, UTF-8,
    ``Content-Type: application/json``); ``change`` is "created", "escalated" or "updated",
    ``sent`` the UTC time the notification was made (ISO 8601, ``Z``; unchanged on retries, so
    the signature is too), ``incident`` the incident document as given. With a secret, the
    header ``X-SOC-Signature: sha256=<hex HMAC-SHA256 of the exact body>``.
  * Syslog: RFC 5424, facility local4, severity from the incident's level (critical 2, high 3,
    medium 4, low 5), APP-NAME ``ics-soc``, MSGID ``incident``, no structured data, and as MSG
    one CEF:0 line (UTF-8, no BOM). UDP: one datagram per message; TCP: RFC 6587 octet counting
    (``<length> <message>``), one connection per message (incidents are rare; a fresh
    connection never loses a message to a half-closed one).
  * CEF: ``CEF:0|ics-soc|ics-soc|<version>|incident-<change>|<title>|<0-10>|<extension>``; the
    severity is round(severity / 10) of the 0-100 score, or from the level when it is missing
    (low 3, medium 5, high 8, critical 10). Header values escape ``\\`` and ``|``; extension
    values escape ``\\``, ``=`` and newlines (``\\n``, ``\\r``); other control characters
    become spaces, so no text can break the framing.

Delivery: each channel whose minimum level is at most the incident's gets one message; each
channel has its own bounded queue (``queue_size``; when full the oldest is dropped and counted)
and its own daemon worker, so a stuck webhook never delays syslog. A queue is a heap of
(due time, message): a message waiting for its back-off never blocks fresh ones. Transient
failures (timeouts, connection errors, HTTP 408, 429, 5xx) are retried up to ``retries``
times after ``backoff_s * 2**n`` seconds (or Retry-After on 429/503, capped at
``RETRY_AFTER_MAX_S``); other HTTP statuses (redirects included) fail at once.
"""

from __future__ import annotations

import heapq
import hmac
import http.client
import ipaddress
import itertools
import logging
import math
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from hashlib import sha256
from types import TracebackType
from typing import Any, Literal

import orjson

import soc
from soc.config import LEVELS, NotifySettings

logger = logging.getLogger(__name__)

VENDOR = PRODUCT = APP_NAME = "ics-soc"
FACILITY = 20  # local4
SYSLOG_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5}
CEF_SEVERITY = {"low": 3, "medium": 5, "high": 8, "critical": 10}
RETRY_AFTER_MAX_S = 300.0
MAX_VALUE = 1023  # characters of one CEF extension value, at most
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _now_iso(now: datetime | None) -> str:
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def webhook_body(
    incident: Mapping[str, Any], change: str, *, sent: datetime | None = None
) -> bytes:
    """The webhook's JSON body: ``{"change", "sent", "incident"}``."""
    doc = {"change": change, "sent": _now_iso(sent), "incident": dict(incident)}
    return orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS)


def webhook_signature(body: bytes, secret: str) -> str:
    """``sha256=<hex HMAC-SHA256 of body>``, the value of X-SOC-Signature."""
    return "sha256=" + hmac.new(secret.encode(), body, sha256).hexdigest()


def cef_header_escape(value: object) -> str:
    """A CEF header value: ``\\`` and ``|`` escaped, line breaks and control characters spaced."""
    text = _CONTROL.sub(" ", str(value))
    return text.replace("\\", "\\\\").replace("|", "\\|")


def cef_extension_escape(value: object) -> str:
    """A CEF extension value: ``\\``, ``=`` escaped, newlines as ``\\n``/``\\r``."""
    text = str(value)[:MAX_VALUE].replace("\\", "\\\\").replace("=", "\\=")
    text = text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")
    return _CONTROL.sub(" ", text)


def incident_level(incident: Mapping[str, Any]) -> str:
    """The incident's level, or one from its 0-100 severity (90, 70, 40) when missing."""
    level = incident.get("level")
    if level in LEVELS:
        return str(level)
    severity = _number(incident.get("severity")) or 0.0
    bands = (("critical", 90), ("high", 70), ("medium", 40))
    return next((name for name, floor in bands if severity >= floor), "low")


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _epoch_ms(value: Any) -> int | None:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list | tuple) else []


def cef_message(
    incident: Mapping[str, Any], change: str, *, product_version: str, hostname: str
) -> str:
    """One CEF:0 line for an incident (see the module docstring)."""
    score = _number(incident.get("severity"))
    if score is not None:
        severity = min(10, max(0, round(score / 10)))
    else:
        severity = CEF_SEVERITY[incident_level(incident)]
    title = incident.get("title") or "incident"
    header = [f"incident-{change}", title, severity]
    head = "|".join(cef_header_escape(v) for v in [VENDOR, PRODUCT, product_version, *header])
    ext: list[tuple[str, Any]] = []
    for key, field in (("rt", "updated"), ("start", "first_seen"), ("end", "last_seen")):
        ms = _epoch_ms(incident.get(field) or incident.get("created"))
        if ms is not None:
            ext.append((key, ms))
    attackers, assets = _strings(incident.get("attackers")), _strings(incident.get("assets"))
    for v4, v6, label, addresses in (
        ("src", "c6a2", "Source IPv6 Address", attackers),
        ("dst", "c6a3", "Destination IPv6 Address", assets),
    ):
        try:
            address = ipaddress.ip_address(addresses[0]) if addresses else None
        except ValueError:
            address = None
        if address is not None and address.version == 4:
            ext.append((v4, address))
        elif address is not None:
            ext += [(v6, address), (v6 + "Label", label)]
    ext.append(("dvchost", hostname))
    techniques = [
        f"{t.get('id', '')} {t.get('name', '')}".strip()
        for t in incident.get("techniques") or []
        if isinstance(t, Mapping)
    ]
    rules = [str(r.get("name", "")) for r in incident.get("rules") or [] if isinstance(r, Mapping)]
    custom = (
        ("cs1", "incidentId", incident.get("id")),
        ("cs2", "site", incident.get("site")),
        ("cs3", "techniques", ", ".join(techniques) or None),
        ("cs4", "tactics", ", ".join(_strings(incident.get("tactics"))) or None),
        ("cs5", "status", incident.get("status")),
        ("cs6", "assetCriticality", incident.get("asset_criticality")),
        ("cn1", "alertCount", _number(incident.get("alert_count"))),
    )
    for key, label, value in custom:
        if value is not None:
            value = int(value) if key == "cn1" else value
            ext += [(key, value), (key + "Label", label)]
    ext += [("act", change), ("cat", "incident/" + incident_level(incident))]
    summary = f"attackers: {', '.join(attackers) or '-'}; assets: {', '.join(assets) or '-'}"
    ext.append(("msg", summary + (f"; rules: {'; '.join(rules)}" if rules else "")))
    extension = " ".join(f"{key}={cef_extension_escape(value)}" for key, value in ext)
    return f"CEF:0|{head}|{extension}"


def syslog_frame(
    cef: str,
    *,
    hostname: str,
    transport: Literal["udp", "tcp"],
    level: str = "medium",
    now: datetime | None = None,
) -> bytes:
    """An RFC 5424 message carrying ``cef``; octet-counted (RFC 6587) for TCP."""
    pri = FACILITY * 8 + SYSLOG_SEVERITY.get(level, 4)
    host = "".join(c if 33 <= ord(c) <= 126 else "-" for c in hostname)[:255] or "-"
    message = f"<{pri}>1 {_now_iso(now)} {host} {APP_NAME} - incident - {cef}".encode()
    return b"%d %s" % (len(message), message) if transport == "tcp" else message


@dataclass
class ChannelStats:
    """Counters of one channel: messages sent, retries, permanent failures, messages dropped."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    dropped: int = 0


class _Transient(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an HTTPError: a permanent failure


@dataclass
class _Message:
    seq: int
    payload: bytes
    incident: str
    attempt: int = 0


class _Channel:
    """One destination: a heap of (due, seq, message), a worker thread and its counters."""

    def __init__(self, name: str, send: Callable[[bytes], None], settings: NotifySettings) -> None:
        self.name, self.send, self.settings = name, send, settings
        self.cond = threading.Condition()
        self.heap: list[tuple[float, int, _Message]] = []
        self.stats = ChannelStats()
        self.deadline: float | None = None  # set by close()
        self.thread = threading.Thread(target=self._run, name=f"soc-notify-{name}", daemon=True)
        self.thread.start()

    def put(self, message: _Message, due: float) -> None:
        with self.cond:
            if self.deadline is not None and message.attempt == 0:  # closed meanwhile
                self.stats.dropped += 1
                return
            if len(self.heap) >= self.settings.queue_size:
                oldest = min(range(len(self.heap)), key=lambda i: self.heap[i][1])
                self.heap[oldest] = self.heap[-1]
                self.heap.pop()
                heapq.heapify(self.heap)
                self.stats.dropped += 1
                if self.stats.dropped % 1000 == 1:
                    logger.warning(
                        "%s notifications: queue full, %d dropped", self.name, self.stats.dropped
                    )
            heapq.heappush(self.heap, (due, message.seq, message))
            self.cond.notify()

    def _next(self) -> _Message | None:
        with self.cond:
            while True:
                now = time.monotonic()
                if self.deadline is not None and (not self.heap or now >= self.deadline):
                    if self.heap:
                        logger.warning(
                            "%s: %d notifications undelivered at close", self.name, len(self.heap)
                        )
                    self.stats.dropped += len(self.heap)
                    self.heap.clear()
                    return None
                if self.heap and self.heap[0][0] <= now:
                    return heapq.heappop(self.heap)[2]
                until = self.heap[0][0] if self.heap else math.inf
                until = min(until, self.deadline if self.deadline is not None else math.inf)
                self.cond.wait(None if until == math.inf else until - now)

    def _run(self) -> None:
        while (message := self._next()) is not None:
            try:
                self.send(message.payload)
            except _Transient as err:
                if message.attempt < self.settings.retries:
                    delay = self.settings.backoff_s * 2**message.attempt
                    if err.retry_after is not None:
                        delay = max(delay, min(err.retry_after, RETRY_AFTER_MAX_S))
                    logger.debug(
                        "%s of %s: %s; retry in %.2fs", self.name, message.incident, err, delay
                    )
                    with self.cond:
                        self.stats.retried += 1
                    self.put(
                        replace(message, attempt=message.attempt + 1), time.monotonic() + delay
                    )
                    continue
                self._failed(message, f"{err} (after {message.attempt + 1} attempts)")
            except Exception as err:  # permanent: any other error
                self._failed(message, str(err) or type(err).__name__)
            else:
                with self.cond:
                    self.stats.sent += 1

    def _failed(self, message: _Message, reason: str) -> None:
        with self.cond:
            self.stats.failed += 1
        logger.warning(
            "%s notification of incident %s failed: %s", self.name, message.incident, reason
        )


class Notifier:
    """Sends incidents to the configured webhook and syslog receiver, in the background."""

    def __init__(
        self,
        settings: NotifySettings,
        *,
        product_version: str = soc.__version__,
        hostname: str | None = None,
    ) -> None:
        self.settings, self.product_version = settings, product_version
        self.hostname = hostname or socket.gethostname()
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._closed = False
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._channels: dict[str, tuple[_Channel, str]] = {}
        if settings.webhook_url is not None:
            channel = _Channel("webhook", self._post, settings)
            self._channels["webhook"] = (channel, settings.webhook_min_level)
        if settings.syslog_address is not None:
            host, _, port = settings.syslog_address.rpartition(":")
            self._syslog_target = (host.strip("[]"), int(port))
            channel = _Channel("syslog", self._syslog, settings)
            self._channels["syslog"] = (channel, settings.syslog_min_level)

    @property
    def stats(self) -> dict[str, ChannelStats]:
        """A copy of each configured channel's counters."""
        copies = {}
        for name, (channel, _) in self._channels.items():
            with channel.cond:
                copies[name] = replace(channel.stats)
        return copies

    def notify(self, incident: Mapping[str, Any], change: str) -> None:
        """Queue the incident for each channel whose minimum level it reaches; never blocks."""
        with self._lock:
            if self._closed:
                logger.debug("notification after close ignored")
                return
        try:
            level = incident_level(incident)
            ident = str(incident.get("id", "?"))
            for name, (channel, min_level) in self._channels.items():
                if LEVELS.index(level) < LEVELS.index(min_level):
                    continue
                if name == "webhook":
                    payload = webhook_body(incident, change)
                else:
                    cef = cef_message(
                        incident,
                        change,
                        product_version=self.product_version,
                        hostname=self.hostname,
                    )
                    payload = syslog_frame(
                        cef,
                        hostname=self.hostname,
                        transport=self.settings.syslog_transport,
                        level=level,
                    )
                channel.put(_Message(next(self._seq), payload, ident), time.monotonic())
        except Exception:  # a notification must never break detection
            logger.exception("cannot build the notification of an incident")

    def _post(self, body: bytes) -> None:
        url = self.settings.webhook_url
        if url is None or not url.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {url!r}")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"{PRODUCT}/{self.product_version}",
        }
        if self.settings.webhook_secret:
            headers["X-SOC-Signature"] = webhook_signature(body, self.settings.webhook_secret)
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - scheme checked above
        try:
            with self._opener.open(request, timeout=self.settings.timeout_s) as response:
                response.read(65536)
        except urllib.error.HTTPError as err:
            err.close()
            retry_after = _number(err.headers.get("Retry-After")) if err.headers else None
            if err.code in (408, 429) or 500 <= err.code < 600:
                raise _Transient(
                    f"HTTP {err.code}", retry_after if err.code in (429, 503) else None
                ) from err
            raise
        except OSError as err:  # URLError, timeouts, refused or reset connections
            raise _Transient(str(getattr(err, "reason", err)) or type(err).__name__) from err
        except http.client.HTTPException as err:  # a broken response
            raise _Transient(f"{type(err).__name__}: {err}") from err

    def _syslog(self, frame: bytes) -> None:
        host, port = self._syslog_target
        timeout = self.settings.timeout_s
        try:
            if self.settings.syslog_transport == "tcp":
                with socket.create_connection((host, port), timeout=timeout) as sock:
                    sock.sendall(frame)
            else:
                family, kind, proto, _, address = socket.getaddrinfo(
                    host, port, type=socket.SOCK_DGRAM
                )[0]
                with socket.socket(family, kind, proto) as sock:
                    sock.settimeout(timeout)
                    sock.sendto(frame, address)
        except OSError as err:
            raise _Transient(str(err) or type(err).__name__) from err

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting; deliver what is queued for at most ``timeout`` seconds; stop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + timeout
        for channel, _ in self._channels.values():
            with channel.cond:
                channel.deadline = deadline
                channel.cond.notify()
        for channel, _ in self._channels.values():
            channel.thread.join(max(0.0, deadline - time.monotonic()))
            if channel.thread.is_alive():
                logger.warning(
                    "%s notifications: a delivery still in progress at close", channel.name
                )

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
