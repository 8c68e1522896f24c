"""The passive asset inventory: what a user reads in ``soc assets``, checked against the traffic.

The corpus checks compute what to expect from tshark's dump beside each capture (and from what
``tshark -V`` prints where the dump has no column), never from our own output.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import re
import struct
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.pipeline import Collector
from collectors.run import collect_files
from soc.assets import AssetDoc, AssetInventory, ip_sort_key, merge, network_range
from soc.cli import main
from soc.event import format_timestamp, new_event, set_network
from soc.types import Event
from tests.conftest import corpus_path

EXAMPLE = "icsnpp-modbus/testing/traces/modbus_example.pcap"
EIT = "zeek/Traces/modbus/modbus-eit.pcap"
T0 = 1_714_557_600_000_000

# -- events as the collector writes them ---------------------------------------------------


def modbus(
    kind: str,
    client: str,
    server: str,
    *,
    ts_us: int = T0,
    unit: int = 1,
    fc: int = 3,
    client_mac: str | None = None,
    server_mac: str | None = None,
    port: int = 502,
    orphan: bool = False,
    identification: dict[str, str] | None = None,
    exception_code: int = 2,
) -> Event:
    """One ``ics.modbus`` event of ``kind`` (request, response, exception, unanswered_request,
    protocol_violation) between a client and a server."""
    to_server = kind in ("request", "unanswered_request", "protocol_violation")
    src, dst = (client, server) if to_server else (server, client)
    src_mac, dst_mac = (client_mac, server_mac) if to_server else (server_mac, client_mac)
    doc = new_event(ts_us=ts_us, dataset="ics.modbus", id_parts=(kind, client, server, ts_us))
    set_network(
        doc,
        transport="tcp",
        src_ip=src,
        dst_ip=dst,
        src_port=port if not to_server else 40000,
        dst_port=port if to_server else 40000,
        protocol="modbus",
        src_mac=src_mac,
        dst_mac=dst_mac,
    )
    record: dict[str, Any] = {"pdu_type": kind, "unit_id": unit, "function_code": fc}
    if orphan:
        record["orphan"] = True
    if kind == "exception":
        record["exception_code"] = exception_code
    if identification is not None:
        record["device_identification"] = identification
    if kind == "protocol_violation":
        record = {"pdu_type": kind, "anomalies": ["not_modbus"]}
    doc["modbus"] = record
    return doc


def fold(events: Iterable[Event]) -> dict[str, AssetDoc]:
    inventory = AssetInventory()
    inventory.observe_all(events)
    return {doc["ip"]: doc for doc in inventory.docs()}


# -- what an event says about its hosts ----------------------------------------------------


def test_request_source_is_the_client_and_destination_the_server() -> None:
    assets = fold(
        [
            modbus(
                "request",
                "10.0.0.5",
                "10.0.1.1",
                fc=3,
                unit=7,
                client_mac="AA-00-00-00-00-05",
                server_mac="AA-00-00-00-01-01",
            ),
            modbus("response", "10.0.0.5", "10.0.1.1", fc=3, unit=7, ts_us=T0 + 900),
            modbus("request", "10.0.0.5", "10.0.1.1", fc=16, unit=7, ts_us=T0 + 2000),
            modbus("exception", "10.0.0.5", "10.0.1.1", fc=16, unit=7, ts_us=T0 + 2500),
        ]
    )
    client, server = assets["10.0.0.5"], assets["10.0.1.1"]
    assert client["roles"] == ["client"]
    assert server["roles"] == ["server"]
    assert client["protocols"] == server["protocols"] == ["modbus"]
    assert client["macs"] == ["AA-00-00-00-00-05"]
    assert server["macs"] == ["AA-00-00-00-01-01"]
    assert server["modbus"]["unit_ids"] == [7]
    assert client["modbus"]["unit_ids"] == []
    assert server["ports"] == [502]
    assert client["ports"] == []
    assert client["modbus"]["function_codes"] == {"used": {"3": 1, "16": 1}, "served": {}}
    assert server["modbus"]["function_codes"] == {"used": {}, "served": {"3": 1, "16": 1}}
    assert server["modbus"]["exceptions_returned"] == 1
    assert client["modbus"]["exceptions_received"] == 1
    assert server["exceptions"] == client["exceptions"] == 1
    assert server["events"] == client["events"] == 4
    assert server["first_seen"] == format_timestamp(T0)
    assert server["last_seen"] == format_timestamp(T0 + 2500)
    assert client["peers"] == ["10.0.1.1"]
    assert server["peers"] == ["10.0.0.5"]


def test_a_response_without_its_request_still_counts_the_transaction() -> None:
    assets = fold([modbus("response", "10.0.0.5", "10.0.1.1", fc=4, orphan=True)])
    assert assets["10.0.1.1"]["modbus"]["function_codes"]["served"] == {"4": 1}
    assert assets["10.0.0.5"]["modbus"]["function_codes"]["used"] == {"4": 1}


def test_an_unanswered_request_counts_against_the_server_not_in_the_times() -> None:
    late = T0 + 5_000_000  # the deadline, not a packet
    assets = fold(
        [
            modbus("request", "10.0.0.5", "10.0.1.1"),
            modbus("unanswered_request", "10.0.0.5", "10.0.1.1", ts_us=late),
        ]
    )
    server = assets["10.0.1.1"]
    assert server["modbus"]["unanswered"] == 1
    assert server["modbus"]["function_codes"]["served"] == {"3": 1}  # the request, once
    assert server["last_seen"] == format_timestamp(T0)


def test_bytes_that_are_not_modbus_say_the_hosts_talked_but_not_their_roles() -> None:
    assets = fold([modbus("protocol_violation", "10.0.0.5", "10.0.1.1")])
    assert set(assets) == {"10.0.0.5", "10.0.1.1"}
    assert assets["10.0.1.1"]["roles"] == []
    assert assets["10.0.1.1"]["protocols"] == []
    assert "modbus" not in assets["10.0.1.1"]
    assert assets["10.0.1.1"]["events"] == 1


def test_one_asset_per_ip_with_every_mac_a_router_mac_fronts_many() -> None:
    router = "00-11-22-33-44-55"
    assets = fold(
        [
            modbus("request", "10.9.0.1", "10.0.1.1", client_mac=router),
            modbus("request", "10.9.0.2", "10.0.1.1", client_mac=router),
            modbus("request", "10.0.1.1", "10.0.2.2", client_mac="00-AA-00-00-00-01"),
            modbus("response", "10.9.0.1", "10.0.1.1", server_mac="00-AA-00-00-00-02"),
        ]
    )
    assert assets["10.9.0.1"]["macs"] == assets["10.9.0.2"]["macs"] == [router]
    # the same host, seen through two interfaces or a redundant gateway: both MACs kept
    assert assets["10.0.1.1"]["macs"] == ["00-AA-00-00-00-01", "00-AA-00-00-00-02"]
    assert assets["10.0.1.1"]["roles"] == ["client", "server"]


def test_unit_ids_and_device_identification_attach_to_the_server_that_answered() -> None:
    basic = {"vendor_name": "Acme", "product_code": "PLC-1", "major_minor_revision": "1.0"}
    assets = fold(
        [
            modbus("response", "10.0.0.5", "10.0.1.1", fc=43, unit=2, identification=basic),
            modbus(
                "response",
                "10.0.0.5",
                "10.0.1.1",
                fc=43,
                unit=1,
                ts_us=T0 + 1,
                identification={"vendor_name": "Acme", "model_name": "Gateway"},
            ),
            modbus(
                "response",
                "10.0.0.5",
                "10.0.1.1",
                fc=43,
                unit=2,
                ts_us=T0 + 2,
                identification={"major_minor_revision": "1.1", "vendor_url": "acme.test"},
            ),
        ]
    )
    server = assets["10.0.1.1"]
    units = server["modbus"]["device_identification"]
    assert set(units) == {"1", "2"}
    assert {k: v["value"] for k, v in units["2"].items()} == {
        "vendor_name": "Acme",
        "product_code": "PLC-1",
        "major_minor_revision": "1.1",  # the later answer wins, object by object
        "vendor_url": "acme.test",
    }
    assert server["identity"] == {"vendor": "Acme", "model": "Gateway", "source": "modbus unit 1"}
    assert "identity" not in assets["10.0.0.5"]


def test_events_of_other_datasets_and_unreadable_events_are_skipped() -> None:
    inventory = AssetInventory()
    other = new_event(ts_us=T0, dataset="ics.flow", id_parts=(1,))
    broken = modbus("request", "10.0.0.5", "10.0.1.1")
    del broken["source"]
    bad_time = modbus("request", "10.0.0.5", "10.0.1.1")
    bad_time["@timestamp"] = "yesterday"
    inventory.observe_all([other, broken, bad_time, {"event": None}])
    assert inventory.docs() == []
    assert inventory.skipped == 3


def test_other_timestamp_spellings_are_read_as_the_same_instant() -> None:
    event = modbus("request", "10.0.0.5", "10.0.1.1")
    event["@timestamp"] = "2024-05-01T12:00:00+02:00"
    assert fold([event])["10.0.1.1"]["first_seen"] == "2024-05-01T10:00:00.000000Z"


def test_an_event_without_pdu_type_takes_the_lower_port_as_the_server() -> None:
    event = modbus("request", "10.0.0.5", "10.0.1.1")
    del event["modbus"]["pdu_type"]
    event["source"], event["destination"] = event["destination"], event["source"]  # reversed
    assets = fold([event])
    assert assets["10.0.1.1"]["roles"] == ["server"]
    assert assets["10.0.1.1"]["modbus"]["function_codes"]["served"] == {"3": 1}


def test_assets_are_ordered_by_address_numerically_v4_before_v6() -> None:
    ips = ["10.0.0.10", "fe80::1", "10.0.0.2", "9.255.0.1"]
    docs = AssetInventory()
    docs.observe_all(modbus("request", ip, "10.0.0.1") for ip in ips)
    assert [d["ip"] for d in docs.docs()] == [
        "9.255.0.1",
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.10",
        "fe80::1",
    ]
    low, high = network_range("10.0.0.0/28")
    assert low <= ip_sort_key("10.0.0.10") <= high < ip_sort_key("10.0.0.16")


def test_drain_gives_deltas_and_the_count_of_hosts_stays() -> None:
    inventory = AssetInventory()
    inventory.observe(modbus("request", "10.0.0.5", "10.0.1.1"))
    first = inventory.drain()
    inventory.observe(modbus("request", "10.0.0.6", "10.0.1.1", ts_us=T0 + 5))
    second = inventory.drain()
    assert [d["ip"] for d in first] == ["10.0.0.5", "10.0.1.1"]
    assert [d["ip"] for d in second] == ["10.0.0.6", "10.0.1.1"]
    assert second[1]["events"] == 1  # a delta
    assert len(inventory) == 3
    assert inventory.drain() == []


# -- merging: the incremental update is the same as one pass --------------------------------

_IPS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::7"]
_KINDS = ["request", "response", "exception", "unanswered_request", "protocol_violation"]
_event = st.builds(
    modbus,
    st.sampled_from(_KINDS),
    st.sampled_from(_IPS),
    st.sampled_from(_IPS),
    ts_us=st.integers(T0, T0 + 10_000_000),
    unit=st.integers(0, 3),
    fc=st.sampled_from([1, 3, 16, 43]),
    client_mac=st.sampled_from([None, "00-00-00-00-00-01", "00-00-00-00-00-02"]),
    server_mac=st.sampled_from([None, "00-00-00-00-00-03"]),
    port=st.sampled_from([502, 5020]),
    orphan=st.booleans(),
    identification=st.one_of(
        st.none(),
        st.dictionaries(
            st.sampled_from(["vendor_name", "product_code", "model_name"]),
            st.sampled_from(["A", "B"]),
            max_size=2,
        ),
    ),
)


def _merged(parts: list[dict[str, AssetDoc]]) -> dict[str, AssetDoc]:
    out: dict[str, AssetDoc] = {}
    for part in parts:
        for ip, doc in part.items():
            out[ip] = merge(out[ip], doc) if ip in out else doc
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(_event, max_size=30), st.integers(0, 30), st.integers(0, 30))
def test_folding_in_pieces_and_merging_gives_one_pass(events: list[Event], i: int, j: int) -> None:
    i, j = sorted((min(i, len(events)), min(j, len(events))))
    a, b, c = fold(events[:i]), fold(events[i:j]), fold(events[j:])
    whole = fold(events)
    assert _merged([a, b, c]) == whole
    # associative and commutative: any grouping, any order
    assert _merged([c, _merged([a, b])]) == whole
    assert _merged([_merged([b, c]), a]) == whole


def test_merge_refuses_two_addresses() -> None:
    docs = fold([modbus("request", "10.0.0.5", "10.0.1.1")])
    with pytest.raises(ValueError, match="cannot merge"):
        merge(docs["10.0.0.5"], docs["10.0.1.1"])


# -- the corpus: the inventory against tshark's reading of the same captures ------------------


class _ListSink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def write(self, events: list[Event]) -> None:
        self.events += events

    def close(self) -> None:
        pass


def collected(capture: Path) -> list[Event]:
    sink = _ListSink()
    collect_files([capture], Collector(), sink)
    return sink.events


@functools.cache
def _tshark_pdus(capture: Path) -> list[dict[str, Any]]:
    """tshark's Modbus PDUs (several in one frame are ``;``-joined), with the frame's addresses."""
    rows = csv.DictReader(io.StringIO(capture.with_name(capture.name + ".tshark.csv").read_text()))
    out: list[dict[str, Any]] = []
    for row in rows:
        if not row["mbtcp.trans_id"]:
            continue
        units, codes = row["mbtcp.unit_id"].split(";"), row["modbus.func_code"].split(";")
        exceptions = row["modbus.exception_code"].split(";") if row["modbus.exception_code"] else []
        for n, (unit, code) in enumerate(zip(units, codes, strict=True)):
            out.append(
                {
                    "frame": int(row["frame.number"]),
                    "time": format_timestamp(round(float(row["frame.time_epoch"]) * 1e6)),
                    "src": row["ip.src"] or row["ipv6.src"],
                    "dst": row["ip.dst"] or row["ipv6.dst"],
                    "request": row["tcp.dstport"] == "502",
                    "port": int(
                        row["tcp.dstport"] if row["tcp.dstport"] == "502" else row["tcp.srcport"]
                    ),
                    "unit": int(unit),
                    "code": int(code),
                    "exception": n < len(exceptions),
                }
            )
    return out


def _expected(pdus: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per host, what the tshark dump says: roles, units, codes, exceptions, times, peers."""
    hosts: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "roles": set(),
            "units": set(),
            "used": Counter(),
            "served": Counter(),
            "ports": set(),
            "returned": 0,
            "received": 0,
            "times": [],
            "peers": set(),
            "events": 0,
        }
    )
    for pdu in pdus:
        client, server = (pdu["src"], pdu["dst"]) if pdu["request"] else (pdu["dst"], pdu["src"])
        for host, role, peer in ((client, "client", server), (server, "server", client)):
            hosts[host]["roles"].add(role)
            hosts[host]["times"].append(pdu["time"])
            hosts[host]["peers"].add(peer)
        for host in {client, server}:
            hosts[host]["events"] += 1
        hosts[server]["units"].add(pdu["unit"])
        hosts[server]["ports"].add(pdu["port"])
        if pdu["request"]:
            hosts[client]["used"][str(pdu["code"])] += 1
            hosts[server]["served"][str(pdu["code"])] += 1
        if pdu["exception"]:
            hosts[server]["returned"] += 1
            hosts[client]["received"] += 1
    return hosts


@pytest.mark.parametrize("capture", [EXAMPLE, EIT])
def test_hosts_roles_units_and_function_codes_agree_with_tshark(capture: str) -> None:
    path = corpus_path(capture)
    expected = _expected(_tshark_pdus(path))
    assets = fold(collected(path))
    assert set(assets) == set(expected)
    for ip, want in expected.items():
        doc = assets[ip]
        part = doc["modbus"]
        assert set(doc["roles"]) == want["roles"], ip
        assert part["unit_ids"] == sorted(want["units"]), ip
        assert part["ports"] == sorted(want["ports"]), ip
        assert part["function_codes"] == {
            "used": dict(want["used"]),
            "served": dict(want["served"]),
        }, ip
        assert part["exceptions_returned"] == want["returned"], ip
        assert part["exceptions_received"] == want["received"], ip
        assert (doc["first_seen"], doc["last_seen"]) == (min(want["times"]), max(want["times"]))
        assert doc["peers"] == sorted(want["peers"]), ip
        assert doc["events"] == want["events"], ip


def test_modbus_example_matches_the_manifest() -> None:
    # MANIFEST.md: "17 function codes incl. 20/21, 22, 23, 24, 43 read device id; 9 unit ids;
    # 1 exception"
    assets = fold(collected(corpus_path(EXAMPLE)))
    servers = [d for d in assets.values() if "server" in d["roles"]]
    codes = {c for d in servers for c in d["modbus"]["function_codes"]["served"]}
    assert len(codes) == 17
    assert {"20", "21", "22", "23", "24", "43"} <= codes
    assert len({u for d in servers for u in d["modbus"]["unit_ids"]}) == 9
    assert sum(d["modbus"]["exceptions_returned"] for d in servers) == 1


def test_device_identification_agrees_with_tshark() -> None:
    # tshark -V on frame 94 (unit 1): "Object String Value: Zeek Modbus Test",
    # "Protocol Parsing is fun!", "1.2.3.6" for objects VendorName (0), ProductCode (1),
    # MajorMinorRevision (2)
    assets = fold(collected(corpus_path(EXAMPLE)))
    server = assets["127.0.0.1"]
    units = server["modbus"]["device_identification"]
    assert list(units) == ["1"]
    assert {k: v["value"] for k, v in units["1"].items()} == {
        "vendor_name": "Zeek Modbus Test",
        "product_code": "Protocol Parsing is fun!",
        "major_minor_revision": "1.2.3.6",
    }
    assert server["identity"]["vendor"] == "Zeek Modbus Test"
    assert server["identity"]["revision"] == "1.2.3.6"
    assert "identity" not in assets["3.15.227.20"]


def test_an_empty_identification_answer_and_macs_agree_with_tshark() -> None:
    # tshark -V on modbus-eit.pcap: frame 2 answers unit 0 with "Number of Objects: 0" and
    # frame 4 is an exception for unit 255; Ethernet: 192.168.88.100 is 00:e0:62:40:57:66
    # (HostEngi), 192.168.2.42 is 00:07:7c:1a:61:83 (Westermo)
    assets = fold(collected(corpus_path(EIT)))
    server, client = assets["192.168.88.100"], assets["192.168.2.42"]
    assert "identity" not in server
    assert server["modbus"].get("device_identification", {}) == {}
    assert server["macs"] == ["00-E0-62-40-57-66"]
    assert client["macs"] == ["00-07-7C-1A-61-83"]


# -- soc assets, and soc collect keeping the table up to date -------------------------------


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("SOC_"):
            monkeypatch.delenv(key)
    return CliRunner()


def _split_pcap(capture: Path, after_frame: int, first: Path, second: Path) -> None:
    """A classic pcap cut in two files after frame ``after_frame`` (1-based)."""
    data = capture.read_bytes()
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    offset, frame = 24, 0
    while frame < after_frame:
        (length,) = struct.unpack_from(order + "I", data, offset + 8)
        offset += 16 + length
        frame += 1
    first.write_bytes(data[:offset])
    second.write_bytes(data[:24] + data[offset:])


def _assets(runner: CliRunner, data_dir: Path, *args: str) -> list[AssetDoc]:
    result = runner.invoke(main, ["assets", "--json", *args], env={"SOC_DATA_DIR": str(data_dir)})
    assert result.exit_code == 0, result.output
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def _collect(runner: CliRunner, data_dir: Path, *captures: Path) -> str:
    args = [a for c in captures for a in ("--pcap", str(c))]
    result = runner.invoke(main, ["collect", *args], env={"SOC_DATA_DIR": str(data_dir)})
    assert result.exit_code == 0, result.output
    return result.stderr


def test_two_collections_of_a_split_capture_give_the_table_of_one(
    runner: CliRunner, tmp_path: Path
) -> None:
    capture = corpus_path(EXAMPLE)
    # cut between two transactions, in the middle: after a response (tshark's frame numbers)
    responses = [p["frame"] for p in _tshark_pdus(capture) if not p["request"]]
    cut = responses[len(responses) // 2]
    _split_pcap(capture, cut, tmp_path / "a.pcap", tmp_path / "b.pcap")
    _collect(runner, tmp_path / "one", capture)
    first = _collect(runner, tmp_path / "two", tmp_path / "a.pcap")
    second = _collect(runner, tmp_path / "two", tmp_path / "b.pcap")
    stored = [int(m[1]) for out in (first, second) if (m := re.search(r"stored (\d+) ev", out))]
    assert len(stored) == 2
    assert min(stored) > 0
    assert sum(stored) == len(_tshark_pdus(capture))  # every message, in one run or the other
    assert _assets(runner, tmp_path / "two") == _assets(runner, tmp_path / "one")


def test_soc_assets_lists_filters_and_rebuilds_from_ingested_events(
    runner: CliRunner, tmp_path: Path
) -> None:
    capture = str(corpus_path(EXAMPLE))
    stderr = _collect(runner, tmp_path / "store", corpus_path(EXAMPLE), corpus_path(EIT))
    assert "assets 5 hosts seen" in stderr
    collected_docs = _assets(runner, tmp_path / "store")
    assert [d["ip"] for d in collected_docs] == [
        "3.15.227.20",
        "127.0.0.1",
        "192.168.1.6",
        "192.168.2.42",
        "192.168.88.100",
    ]
    servers = _assets(runner, tmp_path / "store", "--role", "slave", "--ip", "192.168.0.0/16")
    assert [d["ip"] for d in servers] == ["192.168.88.100"]

    table = runner.invoke(
        main, ["assets", "--protocol", "modbus"], env={"SOC_DATA_DIR": str(tmp_path / "store")}
    )
    assert table.exit_code == 0, table.output
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["IP", "ROLES", "PROTOCOLS"]
    line = next(r for r in rows if r.startswith("127.0.0.1 "))
    assert "Zeek Modbus Test" in line
    assert "client,server" in line

    # the same events imported as JSON lines: --rebuild recomputes the same table
    jsonl = tmp_path / "events.jsonl"
    for source in (capture, str(corpus_path(EIT))):
        out = runner.invoke(main, ["collect", "--pcap", source, "--jsonl", "-"])
        with jsonl.open("ab") as f:
            f.write(out.stdout_bytes)
    env = {"SOC_DATA_DIR": str(tmp_path / "ingested")}
    ingest = runner.invoke(main, ["events", "ingest", str(jsonl)], env=env)
    assert ingest.exit_code == 0, ingest.output
    assert _assets(runner, tmp_path / "ingested") == []
    rebuilt = runner.invoke(main, ["assets", "--rebuild", "--json"], env=env)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "rebuilt 5 assets" in rebuilt.stderr
    assert [orjson.loads(line) for line in rebuilt.stdout.splitlines()] == collected_docs


def test_soc_assets_without_a_store_says_so(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["assets"])
    assert result.exit_code == 2
    assert "no store here yet" in result.stderr
    assert not (tmp_path / "soc-data" / "soc.db").exists()  # nothing created on the way


def test_jsonl_collection_reports_the_assets_and_leaves_the_store_alone(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = runner.invoke(
        main, ["collect", "--pcap", str(corpus_path(EIT)), "--jsonl", "-", "--summary-json"]
    )
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stderr)["assets"] == len(
        {p["src"] for p in _tshark_pdus(corpus_path(EIT))}
    )
    assert not (tmp_path / "soc-data").exists()


def _opcua(action: str, src: str, dst: str, sport: int, dport: int, **fields: object) -> dict:
    return {
        "@timestamp": "2026-11-25T10:00:00.000000Z",
        "event": {"dataset": "ics.opcua", "action": action},
        "source": {"ip": src, "port": sport},
        "destination": {"ip": dst, "port": dport},
        "opcua": fields,
    }


def test_opcua_fold_names_client_server_services_policies_and_endpoints() -> None:
    policy = "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256"
    events = [
        _opcua("hello", "10.0.0.5", "10.0.0.9", 50000, 4840, message_type="HEL"),
        _opcua("acknowledge", "10.0.0.9", "10.0.0.5", 4840, 50000, message_type="ACK"),
        _opcua(
            "read",
            "10.0.0.5",
            "10.0.0.9",
            50000,
            4840,
            message_type="MSG",
            service="ReadRequest",
            security_policy_uri=policy,
        ),
        _opcua(
            "read",
            "10.0.0.9",
            "10.0.0.5",
            4840,
            50000,
            message_type="MSG",
            service="ReadResponse",
            status_code="0x00000000",
        ),
        _opcua(
            "service_fault",
            "10.0.0.9",
            "10.0.0.5",
            4840,
            50000,
            message_type="MSG",
            service="ServiceFault",
            status_code="0x80340000",
        ),
        _opcua(
            "get_endpoints",
            "10.0.0.9",
            "10.0.0.5",
            4840,
            50000,
            message_type="MSG",
            service="GetEndpointsResponse",
            status_code="0x00000000",
            endpoints=[
                {
                    "url": "opc.tcp://plc:4840",
                    "security_policy_uri": policy,
                    "security_mode": "SignAndEncrypt",
                    "user_token_types": ["UserName"],
                    "application_uri": "urn:plant:plc",
                }
            ],
        ),
    ]
    inventory = AssetInventory()
    inventory.observe_all(events)
    docs = {d["ip"]: d for d in inventory.docs()}
    client, server = docs["10.0.0.5"], docs["10.0.0.9"]
    assert client["opcua"]["roles"] == ["client"]
    assert server["opcua"]["roles"] == ["server"]
    assert server["opcua"]["ports"] == [4840]
    assert server["opcua"]["services"]["served"] == {"Read": 1}
    assert server["opcua"]["security_policies"] == ["Basic256Sha256"]
    assert server["opcua"]["exceptions_returned"] == 1
    assert server["identity"]["application_uri"] == "urn:plant:plc"
    assert server["identity"]["security_policies_offered"] == "Basic256Sha256"


def test_the_lab_reference_capture_inventories_meters_head_end_broker_and_stations() -> None:
    """The lab's reference capture (in the repository): the DLMS and MQTT folds give the lab's
    own roles (lab.base.LabSite, lab.sensors.stations_for): meters serve DLMS to the head-end,
    the broker serves MQTT to the stations, each station's client id is its station id, and
    the attacker is a client of all four protocols."""
    from detectors.runner import collect_captures
    from lab.base import LabSite
    from lab.sensors import stations_for

    site = LabSite()
    reference = Path(__file__).resolve().parents[2] / "lab" / "reference" / "capture.pcap.gz"
    inventory = AssetInventory()
    inventory.observe_all(collect_captures([reference]))
    docs = {d["ip"]: d for d in inventory.docs()}
    for meter in site.meters:
        assert docs[meter]["dlms"]["roles"] == ["server"]
        assert docs[meter]["dlms"]["services"]["served"]["get"] > 0
        assert "lls" in docs[meter]["dlms"]["authentication"]
    assert docs[site.head_end]["dlms"]["roles"] == ["client"]
    assert set(docs[site.head_end]["peers"]) == set(site.meters)
    broker = docs[site.broker]["mqtt"]
    assert broker["roles"] == ["server"]
    stations = stations_for(site)
    assert {s.station_id for s in stations} <= set(broker["client_ids"])
    for station in stations:
        doc = docs[station.address]
        assert doc["mqtt"]["roles"] == ["client"]
        assert doc["mqtt"]["packets"]["used"]["PUBLISH"] > 0
        assert doc["identity"]["client_id"] == station.station_id
    assert docs[site.attacker]["protocols"] == ["dlms", "modbus", "mqtt", "opcua"]
    assert docs[site.attacker]["roles"] == ["client"]
