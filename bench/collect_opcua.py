"""Benchmark: OPC UA Binary collection from a pcap, beside tshark's field extraction on the file.

    python -m bench.collect_opcua [--messages 200000] [--quick] [--profile]

Builds, in a temporary directory, one pcap holding at least N OPC UA messages by repeating the
OPC UA sessions of the corpus (``../shared/corpus/icsnpp-opcua-binary/pcaps/*.pcap``) and of
``tests/traces/*.pcap``. Each copy of a capture gets its own client ports (every TCP port other
than the OPC UA ports is mapped to a fresh one, the TCP checksum updated) and its timestamps
shifted to start (previous copy's end + 400 s), so the idle timeout (300 s) closes its flows and
no two copies share a TCP conversation. The messages a copy adds are counted as our collector
counts them (``summary["opcua"]["messages"]`` of each source alone). Written copy by copy.

Then measures, wall time on that one file, both pinned to one core:
- ``soc collect --jsonl /dev/null`` (full service decoding, events serialised);
- ``tshark -T fields`` extracting the OPC UA fields we decode;
and peak memory (max RSS). ``--profile`` adds a cProfile of ours, in process, on the same file;
``--decode`` the time a message takes to decode, ours beside asyncua's codec, in process, over
every service message of the source captures (best of 10 rounds each).
Installs Debian's tshark when it is missing (as ``bench.collect_modbus`` does).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.collect_modbus import ensure_tshark, one_core, run, summary_of
from bench.replay import Source, build_pcap, load_sources
from collectors.pipeline import Collector
from collectors.run import JsonlSink, collect_files
from soc.config import CollectSettings

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "icsnpp-opcua-binary"
SOURCES = (CORPUS / "pcaps", ROOT / "tests" / "traces")
OPCUA_PORTS = frozenset(CollectSettings().opcua_ports)
QUICK_MESSAGES = 20_000
TSHARK_FIELDS = [
    "frame.number",
    *(f"opcua.transport.{f}" for f in ("type", "chunk", "size", "scid", "endpoint", "error")),
    *(f"opcua.security.{f}" for f in ("spu", "tokenid", "seq", "rqid")),
    *(f"opcua.{f}" for f in ("RequestHandle", "Timestamp", "ServiceResult", "AttributeId")),
    *(f"opcua.{f}" for f in ("servicenodeid.numeric", "nodeid.numeric", "nodeid.string")),
    *("opcua.transport.reason", "opcua.MessageSecurityMode"),
]


def tshark_count(path: Path) -> tuple[int, int]:
    """(OPC UA chunks, messages: chunks less intermediate ones) in tshark's field output."""
    type_col = TSHARK_FIELDS.index("opcua.transport.type")
    chunk_col = TSHARK_FIELDS.index("opcua.transport.chunk")
    chunks = intermediate = 0
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            cols = line.rstrip("\n").split("\t")
            if len(cols) > chunk_col and cols[type_col]:
                chunks += cols[type_col].count(",") + 1
                intermediate += cols[chunk_col].split(",").count("C")
    return chunks, chunks - intermediate


def profile(pcap: Path, top: int = 15) -> None:
    """cProfile of ours in process (one core, JSON lines to /dev/null): time by module, then
    the functions with the most own time."""
    os.sched_setaffinity(0, {0})
    profiler = cProfile.Profile()
    with open(os.devnull, "wb") as null:
        sink = JsonlSink(null)
        profiler.enable()
        collect_files([pcap], Collector(), sink)
        profiler.disable()
    stats = pstats.Stats(profiler)
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    by_module: dict[str, float] = defaultdict(float)
    for (file, _, _), (_, _, own, _, _) in raw.items():
        parts = Path(file).parts
        if "site-packages" in parts:
            name = parts[parts.index("site-packages") + 1]
        elif file.startswith("~") or file.startswith("<"):
            name = "builtins (C)"
        else:
            name = "/".join(parts[-2:])
        by_module[name] += own
    print(f"\nprofile of ours (cProfile, {total:.1f} s own time with its overhead):")
    for name, own in sorted(by_module.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {own / total:6.1%} {own:7.2f} s  {name}")
    print("\n  ours by cumulative time (share of the run, calls, own s, cumulative s):")
    ours = [kv for kv in raw.items() if "/site-packages/" not in kv[0][0] and kv[0][1]]
    whole = max(v[3] for _, v in ours)
    for (file, _, func), (_, calls, own, cum, _) in sorted(ours, key=lambda kv: -kv[1][3])[:top]:
        print(f"  {cum / whole:6.1%} {calls:>9,} {own:6.2f} {cum:6.2f} {func} ({Path(file).name})")
    print(f"\n  top {top} functions by own time:")
    rows = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    for (file, line, func), (_, calls, own, cum, _) in rows:
        where = f"{Path(file).name}:{line}" if line else file
        print(f"  {own / total:6.1%} {own:6.2f} s cum {cum:6.2f} {calls:>9,} {func} ({where})")


def decode_figures(sources: list[Source], rounds: int = 10) -> None:
    """Our lean decoder beside asyncua's codec on every service message body of the sources."""
    import collectors.opcua_events as events
    from collectors.opcua_codec import decode_message
    from collectors.opcua_services import decode_service, reference_decode, service_fields

    bodies: list[bytes] = []
    original = events.decode_service

    def record(body: bytes) -> Any:
        bodies.append(bytes(body))
        return original(body)

    events.decode_service = record
    try:
        with open(os.devnull, "wb") as null:
            collect_files([s.path for s in sources], Collector(), JsonlSink(null))
    finally:
        events.decode_service = original

    def best(decode: Any) -> float:
        fastest = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            for body in bodies:
                decode(body)
            fastest = min(fastest, time.perf_counter() - start)
        return fastest / len(bodies) * 1e6

    ours = best(decode_message)
    fields = best(lambda body: service_fields(decode_service(body)))
    theirs = best(reference_decode)
    print(f"\ndecoding {len(bodies):,} service messages (best of {rounds} rounds, in process):")
    print(f"  ours (collectors.opcua_codec)     {ours:6.1f} µs a message")
    print(f"  ours with the event's fields      {fields:6.1f} µs a message")
    print(f"  asyncua's codec (the reference)   {theirs:6.1f} µs a message ({theirs / ours:.1f}x)")


def report(
    summary: dict[str, Any],
    ours: tuple[float, int],
    tshark: tuple[float, int],
    tshark_counts: tuple[int, int],
    planned: int,
) -> None:
    """Ours beside tshark: rates, peak memory, the message-count check, the target."""
    (ours_s, ours_kb), (tshark_s, tshark_kb) = ours, tshark
    tshark_chunks, tshark_messages = tshark_counts
    messages = summary["opcua"]["messages"]
    ours_rate, tshark_rate = messages / ours_s, messages / tshark_s
    ratio = ours_rate / tshark_rate
    opcua = summary["opcua"]
    print(f"\n{messages:,} OPC UA messages in {summary['frames']:,} frames, one core each\n")
    print(f"{'':28} {'msgs/s':>10} {'seconds':>9} {'peak RSS':>10}")
    print(
        f"{'ours -> jsonl /dev/null':28} {ours_rate:10,.0f} {ours_s:9.2f} {ours_kb / 1024:7.0f} MB"
    )
    print(
        f"{'tshark -T fields':28} {tshark_rate:10,.0f} {tshark_s:9.2f} {tshark_kb / 1024:7.0f} MB"
    )
    print(f"\nratio ours / tshark fields: {ratio:.2f}x")
    print(
        f"ours: {opcua['requests']:,} requests, {opcua['responses']:,} responses, "
        f"{opcua['encrypted']:,} encrypted, {opcua['malformed']:,} malformed, "
        f"{opcua['partial']:,} partial, {summary['parse_errors']:,} parse errors, "
        f"{summary['events']:,} events, {summary['flows']:,} flows"
    )
    diff = (tshark_messages - messages) / messages if messages else 0.0
    print(
        f"check: ours {messages:,} messages, tshark {tshark_messages:,} "
        f"({tshark_chunks:,} chunks), difference {diff:+.2%} "
        f"{'ok' if abs(diff) <= 0.01 else 'MISMATCH'}; built for ~{planned:,}"
    )
    verdict = "met" if ratio >= 5 else "NOT met"
    print(f"\ntarget: ours >= 5x tshark fields, one core: {ratio:.2f}x  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MESSAGES:,} messages")
    parser.add_argument("--profile", action="store_true", help="cProfile ours, in process")
    parser.add_argument("--decode", action="store_true", help="ours beside asyncua's decoding")
    args = parser.parse_args()
    wanted = QUICK_MESSAGES if args.quick else args.messages
    if not (CORPUS / "pcaps").is_dir():
        print(f"external corpus not present: {CORPUS} (nothing to measure)")
        return
    paths = sorted(p for d in SOURCES if d.is_dir() for p in d.glob("*.pcap"))
    sources = load_sources(paths, "opcua")
    if not sources:
        print("no OPC UA capture with messages in the corpus or tests/traces (nothing to measure)")
        return
    ensure_tshark()
    soc = str(ROOT / ".venv" / "bin" / "soc")
    if not Path(soc).exists():
        soc = str(Path(sys.executable).with_name("soc"))

    with tempfile.TemporaryDirectory(prefix="bench-opcua-") as tmp:
        tmpdir = Path(tmp)
        pcap = tmpdir / "opcua.pcap"
        t = time.perf_counter()
        copies, frames, planned = build_pcap(pcap, sources, wanted, OPCUA_PORTS)
        print(
            f"capture: {copies:,} copies of {len(sources)} OPC UA captures, {frames:,} frames, "
            f"{pcap.stat().st_size / 1e6:,.0f} MB, ~{planned:,} messages "
            f"(built in {time.perf_counter() - t:.1f} s)"
        )

        # a. ours to JSON lines (/dev/null), one core
        cmd = [soc, "collect", "--pcap", str(pcap), "--jsonl", os.devnull]
        cmd += ["--no-progress", "--summary-json"]
        ours_s, ours_kb, err = run(one_core(cmd))
        summary = summary_of(err)

        # b. tshark extracting the same fields, one core
        fields = tmpdir / "fields.tsv"
        cmd = ["tshark", "-r", str(pcap), "-Y", "opcua", "-T", "fields"]
        for port in sorted(OPCUA_PORTS):
            cmd += ["-d", f"tcp.port=={port},opcua"]
        for field in TSHARK_FIELDS:
            cmd += ["-e", field]
        with fields.open("wb") as out:
            tshark_s, tshark_kb, _ = run(one_core(cmd), stdout=out.fileno())
        tshark_counts = tshark_count(fields)
        fields.unlink()

        report(summary, (ours_s, ours_kb), (tshark_s, tshark_kb), tshark_counts, planned)
        if args.profile:
            profile(pcap)
    if args.decode:
        decode_figures(sources)


if __name__ == "__main__":
    main()
