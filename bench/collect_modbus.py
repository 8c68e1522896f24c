"""Benchmark: Modbus/TCP collection from a pcap, beside tshark and scapy on the same file.

    python -m bench.collect_modbus [--pdus 1000000]

Builds, in a temporary directory, one pcap holding at least N Modbus PDUs by repeating the
corpus's ``modbusBig.pcap`` (5,548 Modbus PDUs a copy) with each copy's timestamps shifted by
(capture duration + 400 s), so the idle timeout (300 s) closes its flows before the next copy.
The file is written copy by copy (memory stays flat).

Then measures, wall time on that one file:
- ``soc collect`` to JSON lines (one core);
- ``soc collect`` into the SQLite store (two processes by design: collector and writer);
- ``tshark -T fields`` extracting the Modbus fields we decode (one core);
- ``tshark -q`` dissecting silently (one core);
- scapy's ``PcapReader`` dissecting every packet (sampled: the first 200,000 frames);
and peak memory (max RSS). Installs Debian's tshark when it is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from collectors.capture import read_capture

ROOT = Path(__file__).resolve().parents[1]
SOURCE = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "corpus"
    / "zeek"
    / "Traces"
    / "modbus"
    / "modbusBig.pcap"
)
PDUS_PER_COPY = 5_548
GAP_US = 400_000_000  # beyond the 300 s idle timeout
SCAPY_FRAMES = 200_000
TSHARK_FIELDS = [
    "frame.number",
    "mbtcp.trans_id",
    "mbtcp.unit_id",
    "modbus.func_code",
    "modbus.exception_code",
    "modbus.reference_num",
    "modbus.word_cnt",
    "modbus.bit_cnt",
]
TIME = Path("/usr/bin/time")


def ensure_tshark() -> None:
    if shutil.which("tshark"):
        return
    print("tshark is missing; installing Debian's tshark (apt-get install -y tshark)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        result = subprocess.run(["apt-get", "install", "-y", "tshark"], env=env, check=False)
    except OSError as exc:
        print(f"cannot run apt-get: {exc}", file=sys.stderr)
        sys.exit(1)
    if result.returncode != 0 or not shutil.which("tshark"):
        print(
            "could not install tshark (apt-get install -y tshark failed; root needed?)",
            file=sys.stderr,
        )
        sys.exit(1)


def build_pcap(out: Path, pdus: int) -> tuple[int, int]:
    """Write at least ``pdus`` Modbus PDUs; (copies, frames)."""
    first = last = None
    linktype = None
    for frame in read_capture(SOURCE):
        first = frame.ts_us if first is None else first
        last = frame.ts_us
        linktype = frame.linktype
    assert first is not None
    assert last is not None
    assert linktype is not None
    shift = (last - first) + GAP_US
    copies = -(-pdus // PDUS_PER_COPY)
    frames = 0
    record = struct.Struct("<IIII")
    with out.open("wb") as stream:
        stream.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262_144, linktype))
        for copy in range(copies):
            offset = copy * shift
            for frame in read_capture(SOURCE):
                ts = frame.ts_us + offset
                size = len(frame.data)
                stream.write(record.pack(ts // 1_000_000, ts % 1_000_000, size, size))
                stream.write(frame.data)
                frames += 1
    return copies, frames


def one_core(cmd: list[str]) -> list[str]:
    return ["taskset", "-c", "0", *cmd] if shutil.which("taskset") else cmd


def run(
    cmd: list[str], *, env: dict[str, str] | None = None, stdout: int | None = None
) -> tuple[float, int, str]:
    """(seconds, peak RSS in kB of the command and its reaped children, stderr)."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL if stdout is None else stdout,
        stderr=subprocess.PIPE,
        env=env,
    )
    begin = time.perf_counter()
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - begin
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = err.decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text}")
    return seconds, usage.ru_maxrss, text


def summary_of(stderr: str) -> dict:
    return json.loads(stderr[stderr.index("{") : stderr.rindex("}") + 1])


def scapy_sample(path: Path) -> tuple[int, int, float]:
    """(frames, Modbus PDUs, seconds) over the first SCAPY_FRAMES frames."""
    from scapy.layers.inet import TCP
    from scapy.packet import Raw
    from scapy.utils import PcapReader

    frames = pdus = 0
    begin = time.perf_counter()
    with PcapReader(str(path)) as reader:
        for pkt in reader:
            pkt.layers()
            frames += 1
            if TCP in pkt and 502 in (pkt[TCP].sport, pkt[TCP].dport) and Raw in pkt:
                pdus += 1
            if frames >= SCAPY_FRAMES:
                break
    return frames, pdus, time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pdus", type=int, default=1_000_000)
    args = parser.parse_args()
    ensure_tshark()
    soc = str(ROOT / ".venv" / "bin" / "soc")
    if not Path(soc).exists():
        soc = shutil.which("soc") or soc

    with tempfile.TemporaryDirectory(prefix="bench-collect-") as tmp:
        tmpdir = Path(tmp)
        pcap = tmpdir / "modbus.pcap"
        t = time.perf_counter()
        copies, frames = build_pcap(pcap, args.pdus)
        size_mb = pcap.stat().st_size / 1e6
        print(
            f"capture: {copies} copies of modbusBig.pcap, {frames:,} frames, "
            f"{size_mb:,.0f} MB (built in {time.perf_counter() - t:.1f} s)"
        )

        # a. ours to JSON lines, one core
        jsonl = tmpdir / "events.jsonl"
        cmd = [soc, "collect", "--pcap", str(pcap), "--jsonl", str(jsonl)]
        cmd += ["--no-progress", "--summary-json"]
        jsonl_s, jsonl_kb, err = run(one_core(cmd))
        pdus = summary_of(err)["pdus"]["modbus"]
        jsonl.unlink()

        # b. ours into SQLite: collector and writer processes (two cores by design)
        env = {**os.environ, "SOC_DATA_DIR": str(tmpdir / "data")}
        cmd = [soc, "collect", "--pcap", str(pcap), "--no-progress", "--summary-json"]
        sqlite_s, sqlite_kb, err = run(cmd, env=env)
        sqlite_pdus = summary_of(err)["pdus"]["modbus"]

        # c. tshark field extraction, d. tshark silent dissection, one core
        cmd = ["tshark", "-r", str(pcap), "-Y", "mbtcp", "-T", "fields"]
        for field in TSHARK_FIELDS:
            cmd += ["-e", field]
        fields_s, fields_kb, _ = run(one_core(cmd))
        silent_s, silent_kb, _ = run(one_core(["tshark", "-r", str(pcap), "-q", "-Y", "mbtcp"]))

        # e. scapy, in this process, sampled
        os.sched_setaffinity(0, {0})
        scapy_frames, scapy_pdus, scapy_s = scapy_sample(pcap)

    rows = [
        ("ours -> jsonl (1 core)", pdus / jsonl_s, jsonl_s),
        ("ours -> sqlite (2 procs)", sqlite_pdus / sqlite_s, sqlite_s),
        ("tshark fields (1 core)", pdus / fields_s, fields_s),
        ("tshark silent (1 core)", pdus / silent_s, silent_s),
        ("scapy dissect (sampled)", scapy_pdus / scapy_s, scapy_s),
    ]
    base = pdus / fields_s
    print(f"\n{pdus:,} Modbus PDUs ({sqlite_pdus:,} into SQLite)\n")
    print(f"{'':26} {'PDUs/s':>12} {'seconds':>9} {'vs tshark fields':>17}")
    for name, rate, seconds in rows:
        print(f"{name:26} {rate:12,.0f} {seconds:9.2f} {rate / base:16.2f}x")
    print(
        f"\nscapy: first {scapy_frames:,} frames only ({scapy_pdus:,} Modbus PDUs), "
        f"{scapy_frames / scapy_s:,.0f} packets/s; PDUs/s extrapolated from the sample"
    )
    print("ours -> sqlite runs the collector and a writer process (two cores) by design")
    print("\npeak memory (max RSS):")
    print(f"  ours -> jsonl            {jsonl_kb / 1024:7.0f} MB")
    print(f"  ours -> sqlite           {sqlite_kb / 1024:7.0f} MB (largest of collector, writer)")
    print(f"  tshark fields            {fields_kb / 1024:7.0f} MB")
    print(f"  tshark silent            {silent_kb / 1024:7.0f} MB")

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    jsonl_rate, sqlite_rate, silent_rate = pdus / jsonl_s, sqlite_pdus / sqlite_s, pdus / silent_s
    peak_mb = max(jsonl_kb, sqlite_kb) / 1024
    print("\ntargets:")
    print(f"  jsonl >= 5x tshark fields: {jsonl_rate / base:.2f}x  {mark(jsonl_rate >= 5 * base)}")
    print(
        f"  jsonl faster than tshark silent: {jsonl_rate / silent_rate:.2f}x  "
        f"{mark(jsonl_rate > silent_rate)}"
    )
    print(
        f"  sqlite >= 3x tshark fields: {sqlite_rate / base:.2f}x  {mark(sqlite_rate >= 3 * base)}"
    )
    print(f"  peak memory < 300 MB: {peak_mb:.0f} MB  {mark(peak_mb < 300)}")


if __name__ == "__main__":
    main()
