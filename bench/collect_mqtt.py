"""Benchmark: MQTT collection from a pcap, beside tshark's field extraction and scapy's naive
path on the same file.

    python -m bench.collect_mqtt [--messages 200000] [--quick]

Builds, in a temporary directory, one pcap of at least N MQTT control packets by repeating the
corpus's MQTT captures (``suricata-verify/tests/mqtt*``, ``arkime``'s and ``ndpi``'s MQTT
captures, of their most common link type) on fresh client ports (:mod:`bench.replay`). Then
measures, on that file, one core each: ``soc collect --jsonl /dev/null``; ``tshark -T fields``
extracting the MQTT fields we decode; scapy's ``PcapReader`` (sampled); and peak memory. Installs
Debian's tshark when it is missing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench.collect_modbus import ensure_tshark, one_core, run, summary_of
from bench.replay import build_pcap, load_sources, scapy_rate, soc_command
from soc.config import CollectSettings

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
PORTS = frozenset(CollectSettings().mqtt_ports)
QUICK = 20_000
TSHARK_FIELDS = [
    "frame.number", "mqtt.msgtype", "mqtt.clientid", "mqtt.topic", "mqtt.qos", "mqtt.msgid",
    "mqtt.username", "mqtt.conack.val", "mqtt.ver",
]  # fmt: skip


def mqtt_paths() -> list[Path]:
    found = sorted((CORPUS / "suricata-verify" / "tests").glob("mqtt*/*.pcap"))
    found += [CORPUS / "arkime/tests/pcap/mqtt_synthetic.pcap", CORPUS / "ndpi/pcap/mqtt.pcap"]
    return [p for p in found if p.exists()]


def tshark_messages(path: Path) -> int:
    """MQTT control packets in tshark's field output (message types, several a frame)."""
    column = TSHARK_FIELDS.index("mqtt.msgtype")
    with path.open(encoding="utf-8", errors="replace") as lines:
        return sum(
            cols[column].count(",") + 1
            for cols in (line.rstrip("\n").split("\t") for line in lines)
            if len(cols) > column and cols[column]
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK:,} messages")
    args = parser.parse_args()
    wanted = QUICK if args.quick else args.messages
    sources = load_sources(mqtt_paths(), "mqtt")
    if not sources:
        print(f"no MQTT capture under {CORPUS} (nothing to measure)")
        return
    ensure_tshark()
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        pcap = Path(tmp) / "mqtt.pcap"
        copies, frames, planned = build_pcap(pcap, sources, wanted, PORTS)
        print(f"capture: {copies:,} copies of {len(sources)} MQTT captures, {frames:,} frames")
        cmd = [soc_command(), "collect", "--pcap", str(pcap), "--jsonl", os.devnull]
        ours_s, ours_kb, err = run(one_core([*cmd, "--no-progress", "--summary-json"]))
        summary = summary_of(err)
        fields = Path(tmp) / "fields.tsv"
        cmd = ["tshark", "-r", str(pcap), "-Y", "mqtt", "-T", "fields"]
        for field in TSHARK_FIELDS:
            cmd += ["-e", field]
        with fields.open("wb") as out:
            tshark_s, tshark_kb, _ = run(one_core(cmd), stdout=out.fileno())
        theirs = tshark_messages(fields)
        scapy_frames, scapy_s = scapy_rate(pcap, PORTS)
    messages = summary["pdus"].get("mqtt", 0)
    print(f"\n{messages:,} MQTT control packets in {summary['frames']:,} frames, one core each\n")
    print(f"{'':28} {'packets/s':>10} {'seconds':>9} {'peak RSS':>10}")
    print(
        f"{'ours -> jsonl /dev/null':28} {messages / ours_s:10,.0f} {ours_s:9.2f} {ours_kb / 1024:7.0f} MB"
    )
    print(
        f"{'tshark -T fields':28} {messages / tshark_s:10,.0f} {tshark_s:9.2f} {tshark_kb / 1024:7.0f} MB"
    )
    per_frame = scapy_s / scapy_frames
    print(f"{'scapy dissect (sampled)':28} {messages / (per_frame * summary['frames']):10,.0f}"
          f" {per_frame * summary['frames']:9.2f}   (first {scapy_frames:,} frames)")  # fmt: skip
    print(f"\nratio ours / tshark fields: {tshark_s / ours_s:.2f}x")
    print(
        f"check: ours {messages:,} packets, tshark {theirs:,}, parse errors "
        f"{summary['parse_errors']:,}; built for ~{planned:,}"
    )


if __name__ == "__main__":
    main()
