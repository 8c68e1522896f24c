"""Agreement with the ICSNPP OPC UA baselines of the corpus, message by message.

ICSNPP's ``opcua_binary.log`` (cisagov/icsnpp-opcua-binary at efca88a3f6, btest baselines
``analyzer.basic`` and ``analyzer.no-handshake``) has no ``#fields`` header in the corpus; its
columns, from the plugin's ``OPCUA_Binary::Info`` record and the rows themselves: 7 msg_type,
8 is_final, 9 msg_size, 12-17 the HEL/ACK fields (version, receive and send buffer sizes,
max message size, max chunk count, endpoint url), 18 the secure channel id (``0,3`` for an OPN:
the request's 0 and the response's channel), 20 the security policy URI, 25-31 the request's
sequence number, size, request id, encoding mask, namespace, identifier and service name, and,
for the paired response, the last eleven columns: its size, sequence number, ..., identifier
and name at -7 and -6. One row per request/response pair (a CLO has no response: ``-``).

Each row is matched to our events by connection (originator port) and order; compared: message
type, request id, the request's service (name and encoding node id), the response's (name and
node id, through our pairing: ``opcua.request_event_id``), the security policy of an OPN, the
HEL/ACK fields. Nothing expected is derived from our own output.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from collectors.pipeline import Collector
from collectors.run import collect_files
from detectors.runner import ListSink
from soc.config import CollectSettings
from tests.conftest import corpus_path

CASES = {
    "analyzer.basic": "icsnpp-opcua-binary/tests/traces/open62541_client-server_mainloop.pcap",
    "analyzer.no-handshake": (
        "icsnpp-opcua-binary/tests/traces/open62541_client-server_mainloop-no-handshake.pcap"
    ),
}


def _events(path: Path) -> list[dict[str, Any]]:
    sink = ListSink()
    collect_files([path], Collector(CollectSettings()), sink)
    return [e for e in sink.events if e["event"]["dataset"] == "ics.opcua"]


def _baseline(name: str) -> list[list[str]]:
    log = corpus_path(f"icsnpp-opcua-binary/tests/baseline/{name}/opcua_binary.log")
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    return [r for r in rows if len(r) > 30 and not r[0].startswith("#")]


def _theirs(row: list[str]) -> tuple[Any, ...]:
    kind = row[6]
    if kind in ("HEL", "ACK"):
        return (kind, *row[11:16], row[16] if kind == "HEL" else "-")
    response = (row[-6], row[-7]) if row[-6] != "-" else ("-", "-")
    policy = row[19] if kind == "OPN" else "-"
    return (kind, row[26], row[30], row[29], *response, policy)


def _ours(events: list[dict[str, Any]]) -> dict[int, list[tuple[Any, ...]]]:
    by_request = {
        e["opcua"]["request_event_id"]: e for e in events if "request_event_id" in e["opcua"]
    }
    rows: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for e in events:
        o = e["opcua"]
        port = (
            e["source"]["port"]
            if e["event"]["action"] != "acknowledge"
            else e["destination"]["port"]
        )
        kind = o.get("message_type")
        if kind in ("HEL", "ACK"):
            fields = ("protocol_version", "receive_buffer_size", "send_buffer_size",
                      "max_message_size", "max_chunk_count")  # fmt: skip
            url = o.get("endpoint_url") or "-" if kind == "HEL" else "-"
            rows[port].append((kind, *(str(o[f]) for f in fields), url))
            continue
        service = o.get("service", "")
        if o.get("orphan"):  # a response whose request was not captured: ICSNPP logs it alone
            client = e["destination"]["port"]
            rows[client].append((kind, "-", "-", "-", service, str(o["service_id"]), "-"))
            continue
        if not service.endswith("Request") or e["event"]["action"] == "unanswered_request":
            continue
        answer = by_request.get(e["event"]["id"])
        response = (
            (answer["opcua"]["service"], str(answer["opcua"]["service_id"]))
            if answer is not None
            else ("-", "-")
        )
        policy = o.get("security_policy_uri") or "-" if kind == "OPN" else "-"
        rows[port].append(
            (kind, str(o["request_id"]), service, str(o["service_id"]), *response, policy)
        )
    return rows


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_icsnpp_message_agrees(case: str) -> None:
    events = _events(corpus_path(CASES[case]))
    ours = _ours(events)
    theirs: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for row in _baseline(case):
        theirs[int(row[3])].append(_theirs(row))
    assert sorted(theirs) == sorted(ours)
    total = 0
    for port, rows in theirs.items():
        # ICSNPP writes a pair when its response arrives (requests in response order); compare
        # as multisets per connection, then the requests' own order by request id
        assert sorted(rows) == sorted(ours[port]), port
        total += len(rows)
    assert total == len(_baseline(case)) >= 29


def test_encrypted_channel_is_recorded_not_decoded() -> None:
    """python-opcua with Basic256Sha256: the OPN bodies are asymmetrically encrypted; they are
    events with their policy and ``encrypted``, never service names guessed from ciphertext."""
    events = _events(
        corpus_path("icsnpp-opcua-binary/pcaps/python_opcua-client-server_encrypted.pcap")
    )
    opn = [e["opcua"] for e in events if e["opcua"].get("message_type") == "OPN"]
    assert opn
    assert all(o["encrypted"] for o in opn if o.get("security_policy_uri", "").endswith("Sha256"))
    assert all("service" not in o for o in opn if o.get("encrypted"))
    assert any(o.get("security_policy_uri", "").endswith("#Basic256Sha256") for o in opn)


_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _spec_guid(wire: str) -> str:
    """ICSNPP prints a Guid's 16 bytes in wire order; OPC 10000-6 5.1.3 encodes Data1, Data2 and
    Data3 little-endian, so its text form swaps those (as tshark and asyncua print it)."""
    return str(uuid.UUID(bytes_le=bytes.fromhex(wire.replace("-", ""))))


def _log(case: str, name: str) -> list[list[str]]:
    log = corpus_path(f"icsnpp-opcua-binary/tests/baseline/{case}/opcua_binary_{name}.log")
    return [line.split("\t") for line in log.read_text().splitlines() if line[:1] != "#"]


def test_sessions_carry_icsnpp_session_id_and_identity() -> None:
    """ICSNPP's create-session and activate-session logs give the session id, the
    AuthenticationToken and the user; every request of that session after its activation
    carries the id and the identity, and neither the token (a bearer secret) nor the password
    appears in any event."""
    events = _events(corpus_path(CASES["analyzer.basic"]))
    (response,) = [r for r in _log("analyzer.basic", "create_session") if r[6] == "F"]
    guids = [(i, c) for i, c in enumerate(response) if _GUID.fullmatch(c)]
    (at_id, session_guid), (_, token_guid) = guids[:2]
    session_id = (
        f"ns={response[at_id - 3]};g={_spec_guid(session_guid)}"  # encoding, ns, -, -, guid
    )
    (activate,) = [r for r in _log("analyzer.basic", "activate_session") if r[6] == "T"]
    kind = activate.index("UserNameIdentityToken")
    policy, user, password = activate[kind + 2 : kind + 5]
    identity = {
        "session_id": session_id,
        "identity_token": "username",
        "user_name": user,
        "policy_id": policy,
    }

    created = [e for e in events if e["opcua"].get("service") == "CreateSessionResponse"]
    assert [e["opcua"]["session"]["session_id"] for e in created] == [session_id]
    services = [e["opcua"].get("service", "") for e in events]
    start = services.index("ActivateSessionResponse") + 1
    end = services.index("CloseSessionRequest") if "CloseSessionRequest" in services else None
    requests = [
        e["opcua"]
        for e in events[start:end]
        if e["opcua"].get("service", "").endswith("Request") and "request_id" in e["opcua"]
    ]
    assert len(requests) >= 5
    for request in requests:
        assert {k: request["session"].get(k) for k in identity} == identity, request["service"]
    text = json.dumps(events)
    for secret in (token_guid, _spec_guid(token_guid), password):
        assert secret not in text
