"""Notifications of incidents: formats (JSON, CEF, RFC 5424) and delivery to real local sockets."""

from __future__ import annotations

import hmac
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from hashlib import sha256
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from soc.config import NotifySettings
from soc.incidents.notify import (
    Notifier,
    cef_extension_escape,
    cef_header_escape,
    cef_message,
    syslog_frame,
    webhook_body,
    webhook_signature,
)

RFC5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) "
    r"(?P<msgid>\S+) (?P<sd>-|\[.*?\]) (?P<msg>.*)$",
    re.DOTALL,
)


def incident(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "5b0c7f1e-0000-4000-8000-000000000001",
        "title": "Modbus write command from a host that is not an allowed master on 127.0.10.1",
        "status": "new",
        "owner": None,
        "site": "water_plant",
        "severity": 88,
        "level": "critical",
        "created": "2026-11-25T20:45:24.251213Z",
        "updated": "2026-11-25T20:46:00Z",
        "first_seen": "2026-11-25T20:45:20Z",
        "last_seen": "2026-11-25T20:45:59Z",
        "attackers": ["127.0.66.6"],
        "assets": ["127.0.10.1"],
        "asset_criticality": "critical",
        "alert_count": 12,
        "rules": [{"id": "r1", "name": "Modbus write", "level": "high", "count": 3}],
        "techniques": [{"id": "T0855", "name": "Unauthorized Command Message"}],
        "tactics": ["Impair Process Control"],
    }
    doc.update(overrides)
    return doc


# --- local receivers -------------------------------------------------------------------------


class Recorder(ThreadingHTTPServer):
    """A webhook receiver: answers ``codes`` in turn (then 200), holds requests until released."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[tuple[Any, bytes, float]] = []  # headers, body, time
        self.codes: list[int] = []
        self.retry_after: str | None = None
        self.release = threading.Event()
        self.release.set()
        self.cond = threading.Condition()
        self.started = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)


class Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_POST(self) -> None:
        srv = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with srv.cond:
            srv.started += 1
            srv.cond.notify_all()
        srv.release.wait(10)
        with srv.cond:
            code = srv.codes.pop(0) if srv.codes else 200
            srv.requests.append((self.headers, body, time.monotonic()))
            srv.cond.notify_all()
        self.send_response(code)
        if srv.retry_after is not None and code in (429, 503):
            self.send_header("Retry-After", srv.retry_after)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "*")


@pytest.fixture
def server() -> Iterator[Recorder]:
    srv = Recorder()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        yield sock


@pytest.fixture
def tcp() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.settimeout(5)
        yield sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


@pytest.fixture
def make() -> Iterator[Callable[..., Notifier]]:
    made: list[Notifier] = []

    def factory(**settings: Any) -> Notifier:
        settings.setdefault("backoff_s", 0.01)
        notifier = Notifier(NotifySettings(**settings), product_version="1.2", hostname="soc-test")
        made.append(notifier)
        return notifier

    yield factory
    for notifier in made:
        notifier.close(timeout=5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- formats ---------------------------------------------------------------------------------


def test_webhook_body_is_the_documented_json() -> None:
    doc = incident()
    body = webhook_body(doc, "created", sent=datetime(2026, 11, 25, 20, 45, 24, 5000, tzinfo=UTC))
    assert orjson.loads(body) == {
        "change": "created",
        "sent": "2026-11-25T20:45:24.005Z",
        "incident": doc,
    }
    assert orjson.loads(webhook_body({}, "updated"))["incident"] == {}


def test_signature_is_hmac_sha256() -> None:
    # RFC 4231, test case 2
    assert webhook_signature(b"what do ya want for nothing?", "Jefe") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [  # the CEF specification's examples for header values
        ("detected a | in message", r"detected a \| in message"),
        ("detected a \\ in packet", r"detected a \\ in packet"),
        ("detected a = in message", "detected a = in message"),  # "=" needs no escape here
        ("two\nlines", "two lines"),  # a header never spans lines
    ],
)
def test_cef_header_escaping(text: str, expected: str) -> None:
    assert cef_header_escape(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [  # the CEF specification's examples for extension values
        ("blocked a = ", r"blocked a \= "),
        ("blocked a \\ ", r"blocked a \\ "),
        ("blocked a | ", "blocked a | "),  # "|" needs no escape here
        ("Detected a threat.\nNo action needed.", r"Detected a threat.\nNo action needed."),
        ("a\r\nb\rc", r"a\nb\rc"),
    ],
)
def test_cef_extension_escaping(text: str, expected: str) -> None:
    assert cef_extension_escape(text) == expected


def split_header(line: str) -> list[str]:
    """The CEF header's fields and the extension: split on the pipes that are not escaped."""
    fields, current, chars = [], "", iter(line)
    for char in chars:
        if char == "\\":
            current += char + next(chars)
        elif char == "|" and len(fields) < 7:
            fields.append(current)
            current = ""
        else:
            current += char
    return [*fields, current]


def parse_extension(text: str) -> dict[str, str]:
    """Key=value pairs, values unescaped per the specification."""
    pairs = re.findall(r"(\w+)=((?:[^\\=]|\\.)*?)(?= \w+=|$)", text)
    unescape = {"\\\\": "\\", "\\=": "=", "\\n": "\n", "\\r": "\r"}
    return {k: re.sub(r"\\.", lambda m: unescape[m.group()], v) for k, v in pairs}


def test_cef_message_fields() -> None:
    line = cef_message(incident(), "created", product_version="1.2", hostname="soc-test")
    assert line.startswith(
        "CEF:0|ics-soc|ics-soc|1.2|incident-created|Modbus write command from a host that is not"
        " an allowed master on 127.0.10.1|9|"
    )
    fields = parse_extension(split_header(line)[7])
    assert fields["src"] == "127.0.66.6"
    assert fields["dst"] == "127.0.10.1"
    assert fields["rt"] == str(int(datetime(2026, 11, 25, 20, 46, tzinfo=UTC).timestamp() * 1000))
    assert (fields["cs1Label"], fields["cs1"]) == ("incidentId", incident()["id"])
    assert (fields["cs2Label"], fields["cs2"]) == ("site", "water_plant")
    assert fields["cs3"] == "T0855 Unauthorized Command Message"
    assert (fields["cn1Label"], fields["cn1"]) == ("alertCount", "12")
    assert fields["act"] == "created"
    assert fields["dvchost"] == "soc-test"


def test_cef_hostile_text_keeps_the_framing() -> None:
    site = "a=b\\c\nd|e"
    doc = incident(title="detected a | in \\ message\n", site=site, severity=None, level="high")
    line = cef_message(doc, "escalated", product_version="1.0|x", hostname="h")
    assert "\n" not in line
    assert line.startswith(
        r"CEF:0|ics-soc|ics-soc|1.0\|x|incident-escalated|detected a \| in \\ message |8|"
    )
    assert r"cs2=a\=b\\c\nd|e cs2Label=site" in line
    header = split_header(line)
    assert len(header) == 8
    assert parse_extension(header[7])["cs2"] == site


@pytest.mark.parametrize(
    ("overrides", "severity"),
    [({"severity": 88}, "9"), ({"severity": 3}, "0"), ({"severity": 100}, "10")]
    + [({"severity": None, "level": level}, s) for level, s in [("low", "3"), ("critical", "10")]],
)
def test_cef_severity(overrides: dict[str, Any], severity: str) -> None:
    line = cef_message(incident(**overrides), "updated", product_version="1", hostname="h")
    assert split_header(line)[6] == severity


def test_cef_tolerates_a_bare_incident() -> None:
    line = cef_message({"attackers": ["not an ip"]}, "updated", product_version="1", hostname="h")
    assert line.startswith("CEF:0|ics-soc|ics-soc|1|incident-updated|incident|3|")
    assert "src=" not in line


def test_syslog_frame_rfc5424_and_octet_counting() -> None:
    now = datetime(2026, 11, 25, 20, 45, 24, 251213, tzinfo=UTC)
    message = b"<163>1 2026-11-25T20:45:24.251Z host-name ics-soc - incident - CEF:0|x"
    frame = syslog_frame("CEF:0|x", hostname="host name", transport="udp", level="high", now=now)
    assert frame == message  # local4 (20) * 8 + error (3) = 163
    tcp = syslog_frame("CEF:0|x", hostname="host name", transport="tcp", level="high", now=now)
    assert tcp == b"%d " % len(message) + message


# --- delivery --------------------------------------------------------------------------------


def test_webhook_delivered_and_signed(server: Recorder, make: Callable[..., Notifier]) -> None:
    notifier = make(webhook_url=server.url, webhook_secret="s3cret")
    notifier.notify(incident(), "created")
    assert server.wait(lambda: len(server.requests) == 1)
    headers, body, _ = server.requests[0]
    assert headers["Content-Type"] == "application/json"
    expected = "sha256=" + hmac.new(b"s3cret", body, sha256).hexdigest()
    assert hmac.compare_digest(headers["X-SOC-Signature"], expected)
    doc = orjson.loads(body)
    assert doc["change"] == "created"
    assert doc["incident"] == incident()
    notifier.close()
    assert notifier.stats["webhook"].sent == 1


@pytest.mark.parametrize("code", [500, 503, 408, 429])
def test_webhook_transient_errors_retried(
    server: Recorder, make: Callable[..., Notifier], code: int
) -> None:
    server.codes = [code, 500]
    notifier = make(webhook_url=server.url)
    notifier.notify(incident(), "created")
    notifier.close()
    assert len(server.requests) == 3
    stats = notifier.stats["webhook"]
    assert (stats.sent, stats.retried, stats.failed) == (1, 2, 0)


def test_webhook_retry_after_honoured(server: Recorder, make: Callable[..., Notifier]) -> None:
    server.codes, server.retry_after = [429], "0.2"
    notifier = make(webhook_url=server.url)
    notifier.notify(incident(), "created")
    notifier.close()
    assert len(server.requests) == 2
    assert server.requests[1][2] - server.requests[0][2] >= 0.18


@pytest.mark.parametrize("code", [400, 401, 404, 307])
def test_webhook_other_statuses_not_retried(
    server: Recorder, make: Callable[..., Notifier], caplog: pytest.LogCaptureFixture, code: int
) -> None:
    server.codes = [code]
    notifier = make(webhook_url=server.url)
    with caplog.at_level(logging.WARNING, logger="soc.incidents.notify"):
        notifier.notify(incident(), "created")
        notifier.close()
    assert len(server.requests) == 1
    stats = notifier.stats["webhook"]
    assert (stats.sent, stats.retried, stats.failed) == (0, 0, 1)
    assert len(caplog.records) == 1


def test_connection_refused_retried_then_failed(
    make: Callable[..., Notifier], caplog: pytest.LogCaptureFixture
) -> None:
    notifier = make(webhook_url=f"http://127.0.0.1:{free_port()}/", retries=2)
    with caplog.at_level(logging.WARNING, logger="soc.incidents.notify"):
        notifier.notify(incident(), "created")
        notifier.close()
    stats = notifier.stats["webhook"]
    assert (stats.sent, stats.retried, stats.failed) == (0, 2, 1)
    assert len(caplog.records) == 1  # one warning per failure, none per retry


def test_stuck_webhook_blocks_neither_caller_nor_syslog(
    server: Recorder, udp: socket.socket, make: Callable[..., Notifier]
) -> None:
    server.release.clear()
    notifier = make(webhook_url=server.url, syslog_address=address(udp), timeout_s=2.0, retries=0)
    start = time.perf_counter()
    notifier.notify(incident(), "created")
    assert time.perf_counter() - start < 0.05
    assert server.wait(lambda: server.started == 1)  # the webhook is now stuck
    start = time.perf_counter()
    notifier.notify(incident(level="medium", severity=50, id="second"), "created")
    assert time.perf_counter() - start < 0.05
    received = [udp.recv(65536), udp.recv(65536)]
    assert time.perf_counter() - start < 1.0  # well before the webhook's timeout
    assert b"cs1=second" in received[1]
    server.release.set()
    notifier.close()
    assert notifier.stats["syslog"].sent == 2


def test_level_filtering(
    server: Recorder, udp: socket.socket, make: Callable[..., Notifier]
) -> None:
    notifier = make(
        webhook_url=server.url,
        webhook_min_level="high",
        syslog_address=address(udp),
        syslog_min_level="medium",
    )
    notifier.notify(incident(level="medium", severity=50), "created")
    notifier.notify(incident(level="low", severity=20), "created")
    assert b"CEF:0|" in udp.recv(65536)
    notifier.close()
    assert server.requests == []
    assert notifier.stats["webhook"].sent == 0
    assert notifier.stats["syslog"].sent == 1


def test_syslog_udp(udp: socket.socket, make: Callable[..., Notifier]) -> None:
    notifier = make(syslog_address=address(udp))
    notifier.notify(incident(), "escalated")
    match = RFC5424.match(udp.recv(65536).decode())
    assert match is not None
    assert int(match["pri"]) == 20 * 8 + 2  # local4, critical
    assert (match["host"], match["app"], match["sd"]) == ("soc-test", "ics-soc", "-")
    assert datetime.fromisoformat(match["ts"]).tzinfo is not None
    assert match["msg"].startswith("CEF:0|ics-soc|ics-soc|1.2|incident-escalated|Modbus write")


def test_syslog_tcp_octet_counting(tcp: socket.socket, make: Callable[..., Notifier]) -> None:
    notifier = make(syslog_address=address(tcp), syslog_transport="tcp")
    notifier.notify(incident(id="one"), "created")
    notifier.notify(incident(id="two", level="high"), "updated")
    stream = b""
    for _ in range(2):
        conn, _ = tcp.accept()
        with conn:
            conn.settimeout(5)
            while chunk := conn.recv(65536):
                stream += chunk
    messages = []
    while stream:
        length, _, rest = stream.partition(b" ")
        messages.append(rest[: int(length)].decode())
        stream = rest[int(length) :]
    assert len(messages) == 2
    for message, pri, ident in zip(messages, (162, 163), ("one", "two"), strict=True):
        match = RFC5424.match(message)
        assert match is not None
        assert int(match["pri"]) == pri
        assert f"cs1={ident} " in match["msg"]


def test_queue_overflow_drops_the_oldest(server: Recorder, make: Callable[..., Notifier]) -> None:
    server.release.clear()
    notifier = make(webhook_url=server.url, queue_size=2, retries=0)
    notifier.notify(incident(id="1"), "created")
    assert server.wait(lambda: server.started == 1)  # in flight, no longer queued
    for ident in "234":
        notifier.notify(incident(id=ident), "created")
    assert notifier.stats["webhook"].dropped == 1
    server.release.set()
    notifier.close()
    ids = [orjson.loads(body)["incident"]["id"] for _, body, _ in server.requests]
    assert ids == ["1", "3", "4"]
    assert notifier.stats["webhook"].sent == 3


def test_close_and_context_manager(udp: socket.socket) -> None:
    with Notifier(NotifySettings(syslog_address=address(udp)), hostname="h") as notifier:
        notifier.notify(incident(), "created")
    assert notifier.stats["syslog"].sent == 1
    notifier.notify(incident(), "updated")  # after close: ignored, no error
    notifier.close()
    assert notifier.stats["syslog"].sent == 1


def test_notify_tolerates_odd_incidents(udp: socket.socket, make: Callable[..., Notifier]) -> None:
    notifier = make(syslog_address=address(udp), syslog_min_level="low")
    notifier.notify({}, "created")
    notifier.notify({"severity": "not a number", "rules": "x", "techniques": [1]}, "updated")
    assert udp.recv(65536).startswith(b"<165>1 ")
    assert udp.recv(65536).startswith(b"<165>1 ")
