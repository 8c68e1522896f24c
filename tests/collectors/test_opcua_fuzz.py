"""The open62541 fuzz corpus through :class:`OpcuaSession`: robustness, and agreement with tshark.

``open62541-fuzz-corpus/fuzz_binary_message_corpus/generated/`` holds raw OPC UA client byte
streams (TCP payload only), each written by open62541's corpus generator for its
``fuzz_binary_message`` harness. That harness reads the LAST 4 bytes of every input as its memory
limit (``UA_memoryManager_setLimitFromLast4Bytes``, then ``size -= 4``): they are not OPC UA.
They are fed all the same (a stray tail must not upset the session; under 8 bytes it is never a
chunk header). ``fuzz_binary_message_corpus.tshark.csv`` is tshark's dissection of each file's
FIRST message: it is the reference, nothing expected here is derived from our own output (the
file names, ``client_00003_msg_GetEndpointsRequest.bin``, are a second reference).

Each file is fed as client-to-server data of a fresh session (``session.data`` then
``session.close``), whole and cut into pieces (every 7th byte, seeded random cuts), which must
give the same events. Every test skips when the external corpus is absent (CI).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import random
import re
import time
from collections import Counter
from typing import Any

import pytest

from collectors.normalize import FlowContext
from collectors.opcua_events import OpcuaSession, OpcuaStats
from soc.types import Event
from tests.conftest import corpus_path

CORPUS = "open62541-fuzz-corpus/fuzz_binary_message_corpus/generated"
TSHARK = "open62541-fuzz-corpus/fuzz_binary_message_corpus.tshark.csv"
NONE_POLICY = "http://opcfoundation.org/UA/SecurityPolicy#None"
TS_US = 1_714_557_600_000_000
PER_FILE_S = 1.0
ALL_FILES_S = 60.0
SEED = 62541

#: tshark column -> our ``opcua`` field, for the first message of each file.
FIELDS = {
    "opcua.transport.type": "message_type",
    "opcua.transport.chunk": "chunk_type",
    "opcua.transport.size": "message_size",
    "opcua.transport.scid": "secure_channel_id",
    "opcua.security.spu": "security_policy_uri",
    "opcua.security.seq": "sequence_number",
    "opcua.security.rqid": "request_id",
    "opcua.servicenodeid.numeric": "service_id",
    "opcua.RequestHandle": "request_handle",
}

_ENCRYPTED_OPN = (
    "OPC 10000-6 6.7.2 and 6.7.4: an OpenSecureChannel chunk whose SecurityPolicy is not None is "
    "asymmetrically encrypted from the sequence header on (sequence header, body, padding, "
    "signature); tshark reads the ciphertext as a sequence header (its Info: 'ServiceId 0'), we "
    "record no sequence number or request id rather than ciphertext"
)
#: (file, tshark column) -> why tshark's value is not the right one (OPC 10000-6).
KNOWN: dict[tuple[str, str], str] = {
    ("encryption_basic256sha256_00010_opn.bin", "opcua.security.seq"): _ENCRYPTED_OPN,
    ("encryption_basic256sha256_00010_opn.bin", "opcua.security.rqid"): _ENCRYPTED_OPN,
    ("encryption_basic128rsa15_00010_opn.bin", "opcua.security.seq"): _ENCRYPTED_OPN,
    ("encryption_basic128rsa15_00010_opn.bin", "opcua.security.rqid"): _ENCRYPTED_OPN,
}

_NAMED = re.compile(r"_\d+_(?:(?P<kind>hel|opn|clo)|msg_(?P<service>[A-Za-z0-9]+))\.bin$")

_CONTEXT = FlowContext(
    "tcp",
    "opcua",
    (bytes([192, 168, 10, 20]), 49152, bytes.fromhex("020000000001")),
    (bytes([192, 168, 10, 1]), 4840, bytes.fromhex("020000000002")),
)


@dataclasses.dataclass
class Run:
    """What one file gave: its events (in order), the run's counters, the time it took."""

    events: list[Event]
    stats: OpcuaStats
    seconds: float

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The ``opcua`` fields of the message events (not the end-of-flow unanswered ones)."""
        return [e["opcua"] for e in self.events if e["event"]["action"] != "unanswered_request"]


def dissect(name: str, data: bytes, cuts: list[int] | None = None) -> Run:
    """Feed ``data`` to a fresh session (to the server), whole or cut at ``cuts``; close it."""
    events: list[Event] = []
    stats = OpcuaStats()
    start = time.perf_counter()
    session = OpcuaSession(
        _CONTEXT,
        events.append,
        stats,
        {"type": "sensor"},
        lambda f: f"{name}: frame {f}",
        5_000_000,
    )
    bounds = [0, *(c for c in sorted(set(cuts or [])) if 0 < c < len(data)), len(data)]
    for begin, end in itertools.pairwise(bounds):
        session.data(True, data[begin:end], TS_US, 1, begin)
    session.close()
    return Run(events, stats, time.perf_counter() - start)


@pytest.fixture(scope="module")
def corpus() -> dict[str, bytes]:
    """Every file of the corpus, by name."""
    directory = corpus_path(CORPUS)
    files = {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}
    assert len(files) >= 900, f"{len(files)} files in ../shared/corpus/{CORPUS}"
    return files


@pytest.fixture(scope="module")
def tshark() -> dict[str, dict[str, str]]:
    """tshark's row for each file (its first message), by file name."""
    with corpus_path(TSHARK).open(newline="") as f:
        return {row["file"].rsplit("/", 1)[-1]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def runs(corpus: dict[str, bytes]) -> dict[str, Run]:
    """Each file dissected whole (an exception fails every test that needs it, naming the file)."""
    out: dict[str, Run] = {}
    for name, data in corpus.items():
        try:
            out[name] = dissect(name, data)
        except Exception as exc:  # reported with the file's name, not as a bare traceback
            pytest.fail(f"{name}: {type(exc).__name__}: {exc}")
    return out


# -- 1. robustness ---------------------------------------------------------------------------------


def test_every_file_is_dissected_without_exception_in_bounded_time(
    corpus: dict[str, bytes],
) -> None:
    failures: list[str] = []
    slow: list[str] = []
    total = 0.0
    for name, data in corpus.items():
        start = time.perf_counter()
        try:
            run = dissect(name, data)
        except Exception as exc:
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        elapsed = time.perf_counter() - start
        total += elapsed
        if elapsed >= PER_FILE_S:
            slow.append(f"{name}: {elapsed:.3f} s")
        if not run.messages:
            failures.append(f"{name}: no message event")
    assert not failures, failures
    assert not slow, slow
    assert total < ALL_FILES_S, f"{len(corpus)} files in {total:.1f} s"


@pytest.mark.parametrize("cutting", ["every 7th byte", "seeded random cuts"])
def test_segmented_streams_give_the_same_events(
    corpus: dict[str, bytes], runs: dict[str, Run], cutting: str
) -> None:
    """Reassembly across segment boundaries: the same event ids, fields and counters."""
    rng = random.Random(SEED)
    differ: list[str] = []
    for name, data in corpus.items():
        if cutting == "every 7th byte":
            cuts = list(range(7, len(data), 7))
        else:
            cuts = rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(1, 12)))
        pieces = dissect(name, data, cuts)
        whole = runs[name]
        if pieces.events != whole.events:
            differ.append(f"{name}: events differ (cuts {cuts[:12]})")
        elif dataclasses.asdict(pieces.stats) != dataclasses.asdict(whole.stats):
            differ.append(f"{name}: counters differ (cuts {cuts[:12]})")
    assert not differ, differ


def test_mutated_files_never_raise(corpus: dict[str, bytes]) -> None:
    """Seeded byte flips and truncations of every file (a cheap fuzz round): no exception, and
    still bounded in time; whole and cut every 5th byte."""
    rng = random.Random(SEED)
    failures: list[str] = []
    slow: list[str] = []
    for name, data in corpus.items():
        for round_ in range(4):
            mutant = bytearray(data)
            for _ in range(rng.randint(1, 6)):
                mutant[rng.randrange(len(mutant))] = rng.randrange(256)
            if round_ == 3:
                mutant = mutant[: rng.randrange(len(mutant))]
            for cuts in (None, list(range(5, len(mutant), 5))):
                start = time.perf_counter()
                try:
                    dissect(name, bytes(mutant), cuts)
                except Exception as exc:
                    failures.append(f"{name} mutant {round_}: {type(exc).__name__}: {exc}")
                if time.perf_counter() - start >= PER_FILE_S:
                    slow.append(f"{name} mutant {round_}")
    assert not failures, failures[:20]
    assert not slow, slow[:20]


# -- 2. agreement with tshark ----------------------------------------------------------------------


def test_first_message_agrees_with_tshark_field_by_field(
    corpus: dict[str, bytes], runs: dict[str, Run], tshark: dict[str, dict[str, str]]
) -> None:
    missing = sorted(set(corpus) - set(tshark))
    assert not missing, f"files without a tshark row: {missing[:10]}"
    compared: Counter[str] = Counter()
    agreed: Counter[str] = Counter()
    disagreements: list[str] = []
    seen_known: set[tuple[str, str]] = set()
    for name, run in runs.items():
        row = tshark[name]
        assert int(row["size"]) == len(corpus[name]), name
        first = run.messages[0]
        for column, ours in FIELDS.items():
            theirs = row[column]
            if theirs == "":  # tshark did not decode it: nothing to compare
                continue
            compared[column] += 1
            value = first.get(ours)
            if value is not None and str(value) == theirs:
                agreed[column] += 1
            elif (name, column) in KNOWN:
                seen_known.add((name, column))
            else:
                disagreements.append(f"{name}: {column} tshark {theirs!r}, ours {ours}={value!r}")
    stale = sorted(k for k in KNOWN if k[0] in corpus and k not in seen_known)
    assert not stale, f"KNOWN entries that now agree (remove them): {stale}"
    assert not disagreements, disagreements
    assert sum(compared.values()) - len(seen_known) == sum(agreed.values())
    # what both decode: every file's type, chunk type and size at least
    assert compared["opcua.transport.type"] == len(corpus)
    assert compared["opcua.servicenodeid.numeric"] >= 800


def test_every_message_decodes_cleanly(
    runs: dict[str, Run], tshark: dict[str, dict[str, str]]
) -> None:
    """tshark raised no expert info on any of these messages: neither may we (no malformed or
    partially decoded message, no parse error)."""
    assert all(tshark[name]["_ws.expert.message"] == "" for name in runs)
    unclean: list[str] = []
    for name, run in runs.items():
        anomalies = sorted({a for o in run.messages for a in o.get("anomalies", [])})
        if anomalies or run.stats.errors or run.stats.malformed or run.stats.partial:
            detail = [m for _, m in run.stats.errors] or anomalies
            unclean.append(f"{name}: {detail}")
    assert not unclean, unclean


# -- 3. agreement with the file names ---------------------------------------------------------------


def test_file_names_name_the_message(runs: dict[str, Run]) -> None:
    checked = 0
    wrong: list[str] = []
    for name, run in runs.items():
        match = _NAMED.search(name)
        if match is None:  # a hash: a fuzzer finding, no expectation in its name
            continue
        checked += 1
        if match["service"]:
            first_msg = next((o for o in run.messages if o.get("message_type") == "MSG"), {})
            if first_msg.get("service") != match["service"]:
                wrong.append(f"{name}: service {first_msg.get('service')!r}")
        elif run.messages[0].get("message_type") != match["kind"].upper():
            wrong.append(f"{name}: message_type {run.messages[0].get('message_type')!r}")
    assert not wrong, wrong
    assert checked >= 900


# -- 4. encrypted OPN ---------------------------------------------------------------------------------


def test_encrypted_open_secure_channel_is_flagged_not_decoded(
    runs: dict[str, Run], tshark: dict[str, dict[str, str]]
) -> None:
    """Files whose first message tshark reads as an OPN with a policy other than None."""
    secured = [
        name
        for name in runs
        if tshark[name]["opcua.transport.type"] == "OPN"
        and tshark[name]["opcua.security.spu"] not in ("", NONE_POLICY)
    ]
    assert secured, "no OPN with a security policy other than None in the corpus"
    for name in secured:
        first = runs[name].messages[0]
        assert first["message_type"] == "OPN", name
        assert first.get("encrypted") is True, (name, first)
        assert "service" not in first, (name, first)
        assert "sequence_number" not in first, (name, first)
        assert "request_id" not in first, (name, first)
        assert first["security_policy_uri"] == tshark[name]["opcua.security.spu"], name


def test_a_16_mib_chunk_in_small_segments_is_collected_once() -> None:
    """A chunk of the largest size accepted (16 MiB) arriving 1,460 bytes at a time: the parts
    are joined once, when whole (appending each segment to one buffer would copy the buffer
    again for each of its 11,500 segments: gigabytes, a stall an attacker can cause). One
    event, its bytes intact, in a fraction of the time a copy per segment takes."""
    from asyncua import ua
    from asyncua.ua import ua_binary

    request = ua.WriteRequest()
    item = ua.WriteValue()
    item.NodeId = ua.NodeId("Big", 2)
    item.AttributeId = ua.AttributeIds.Value
    size = (1 << 24) - 128
    item.Value = ua.DataValue(ua.Variant(b"\x00" * size, ua.VariantType.ByteString))
    request.Parameters.NodesToWrite = [item]
    body = ua_binary.struct_to_binary(request)
    chunk = b"MSGF" + (24 + len(body)).to_bytes(4, "little") + bytes(16) + body
    assert len(chunk) <= 1 << 24
    events: list[Event] = []
    context = FlowContext("tcp", "opcua", (b"\n\0\0\1", 49152, b""), (b"\n\0\0\2", 4840, b""))
    session = OpcuaSession(context, events.append, OpcuaStats(), {}, str, 10**9)
    start = time.perf_counter()
    for begin in range(0, len(chunk), 1460):
        session.data(True, chunk[begin : begin + 1460], TS_US, begin // 1460, begin)
    session.close()
    assert time.perf_counter() - start < 2  # 0.1 s here; 5 s when copied per segment
    (event,) = [e for e in events if e["opcua"].get("service") == "WriteRequest"]
    assert event["opcua"]["message_size"] == len(chunk)
    assert event["opcua"]["nodes"] == ["ns=2;s=Big"]
