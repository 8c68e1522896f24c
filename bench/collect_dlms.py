"""Benchmark: DLMS/COSEM collection from a pcap, beside scapy's naive path on the same file
(Debian's tshark has no DLMS/COSEM dissector: nothing to set beside ours there).

    python -m bench.collect_dlms [--messages 200000] [--quick]

Builds, in a temporary directory, one pcap of at least N DLMS APDUs by repeating the corpus's
plain (not ciphered) DLMS captures of their most common link type (``dlms-analysis-davxy``,
``wireshark-dlms-htanwar922/Output.pcap``, ``ndpi/pcap/dlms.pcap``) on fresh client ports
(:mod:`bench.replay`), with the captures' server ports set as DLMS ports. Then measures, on
that file, one core each: ``soc collect --jsonl /dev/null`` (wrapper and HDLC framing, APDU and
A-XDR decoding, meter readings); scapy's ``PcapReader`` (sampled); and peak memory.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench.collect_modbus import one_core, run, summary_of
from bench.replay import build_pcap, load_sources, scapy_rate, soc_command
from soc.config import CollectSettings

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
PORTS = (4059, 4060, 4061, 4063, 4064)  # the corpus captures' server ports
QUICK = 20_000


def dlms_paths() -> list[Path]:
    found = sorted((CORPUS / "dlms-analysis-davxy" / "pcap-examples").glob("*.pcap*"))
    found += [CORPUS / "wireshark-dlms-htanwar922/Output.pcap", CORPUS / "ndpi/pcap/dlms.pcap"]
    return [p for p in found if p.exists() and not p.name.endswith((".csv", ".txt", ".jsonl"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK:,} messages")
    args = parser.parse_args()
    wanted = QUICK if args.quick else args.messages
    settings = CollectSettings(dlms_ports=PORTS)
    sources = load_sources(dlms_paths(), "dlms", settings)
    if not sources:
        print(f"no DLMS capture under {CORPUS} (nothing to measure)")
        return
    with tempfile.TemporaryDirectory(prefix="bench-dlms-") as tmp:
        pcap = Path(tmp) / "dlms.pcap"
        copies, frames, planned = build_pcap(pcap, sources, wanted, frozenset(PORTS))
        print(f"capture: {copies:,} copies of {len(sources)} DLMS captures, {frames:,} frames")
        env = {**os.environ, "SOC_COLLECT_DLMS_PORTS": ",".join(map(str, PORTS))}
        cmd = [soc_command(), "collect", "--pcap", str(pcap), "--jsonl", os.devnull]
        ours_s, ours_kb, err = run(one_core([*cmd, "--no-progress", "--summary-json"]), env=env)
        summary = summary_of(err)
        scapy_frames, scapy_s = scapy_rate(pcap, frozenset(PORTS))
    messages = summary["pdus"].get("dlms", 0)
    scapy_total = scapy_s / scapy_frames * summary["frames"]
    print(f"\n{messages:,} DLMS APDUs in {summary['frames']:,} frames, one core each\n")
    print(f"{'':28} {'APDUs/s':>10} {'seconds':>9} {'peak RSS':>10}")
    print(
        f"{'ours -> jsonl /dev/null':28} {messages / ours_s:10,.0f} {ours_s:9.2f} {ours_kb / 1024:7.0f} MB"
    )
    print(f"{'scapy dissect (sampled)':28} {messages / scapy_total:10,.0f} {scapy_total:9.2f}"
          f"   (first {scapy_frames:,} frames)")  # fmt: skip
    print(f"\nratio ours / scapy: {scapy_total / ours_s:.2f}x")
    print(
        f"check: ours {messages:,} APDUs, {summary['dlms']}, parse errors "
        f"{summary['parse_errors']:,}; built for ~{planned:,}"
    )


if __name__ == "__main__":
    main()
