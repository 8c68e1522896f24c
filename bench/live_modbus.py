"""Benchmark: live Modbus/TCP capture on loopback at rising packet rates, beside tshark.

    sudo python -m bench.live_modbus [--quick] [--rates 25k,50k,100k,top] [--packets N]
                                     [--seconds S] [--no-peer]

Builds, in a temporary directory, a replay capture of about N packets (default 1,000,000) from
the corpus's ``modbusBig.pcap``: its Modbus/TCP frames (port 502, 11,098 a copy, one flow),
repeated, each copy with its own client port (TCP checksum updated) so that every copy is a flow
of its own, and with locally administered MAC addresses so that loopback hands the frames to
packet sockets only (the IP stack drops them as addressed to another host: nothing is answered
or forwarded). The expected Modbus PDUs come from ``soc collect --pcap`` on the same file.

Then, for each rate, ``tcpreplay --pps=RATE`` (``--topspeed`` for ``top``) sends enough whole
copies to last ``--seconds`` at that rate (at most the whole file) onto ``lo`` while
``soc collect --iface lo --filter 'tcp port 502 and ether host 02:00:00:00:00:01' --jsonl
/dev/null --summary-json`` runs (the MAC address keeps other Modbus traffic on lo out), and
reads: what tcpreplay sent (its own report), the frames our collector saw, the kernel's drops
(full ring) from the summary, packets lost by us (sent but neither seen nor dropped), PDUs
decoded against the offline count. A step passes when nothing is dropped or lost and every PDU
is decoded. The same is done with tshark (``tshark -i lo -f FILTER -q -z io,stat``, dissecting
every frame silently, with a kernel buffer as large as our ring) as the peer; it writes nothing,
where ours writes every event as JSON (to /dev/null).

The capturer runs on CPU 0 and tcpreplay on CPU 1 (the kernel's loopback delivery, BPF filter and
ring copy run in tcpreplay's context). Readiness: the capturer's packet socket appears bound to
``lo`` in ``/proc/net/packet``. After the replay, the bench waits until the capturer's CPU time
stops growing (it has emptied its ring), then stops it with SIGINT. ``lag`` is how long it worked
after tcpreplay finished: near 0 when it kept up, seconds when the ring buffered a backlog (the
ring holds a few hundred thousand of these small packets, so a short step can pass without the
capturer keeping up: the "kept up" column says which).

Needs root or CAP_NET_RAW (prints why it skips otherwise); installs Debian's tcpreplay and
tshark when they are missing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.collect_modbus import SOURCE
from collectors.capture import read_capture
from collectors.live import BLOCK_SIZE, TPACKET3_HDRLEN, LiveCapture

ROOT = Path(__file__).resolve().parents[1]
IFACE = "lo"
MODBUS_PORT = 502
CLIENT_PORT_BASE = 10_000  # copy k uses client port 10,000 + k
MAX_COPIES = 50_000
GAP_US = 1_000_000  # between copies in capture time (distinct flows anyway)
CLIENT_MAC = bytes.fromhex("020000000001")  # locally administered: lo marks them OTHERHOST
SERVER_MAC = bytes.fromhex("020000000002")
# Only the replayed frames: other Modbus traffic on lo (the lab's simulated plant, tests) has
# all-zero MAC addresses and would otherwise be counted as ours.
BPF = "tcp port 502 and ether host 02:00:00:00:00:01"
DEFAULT_RATES = "25k,50k,100k,150k,200k,300k,top"
QUICK_RATES = "50k,100k,200k,top"
TARGET_PPS = 100_000
# Work after the replay beyond this: the ring was holding a backlog. It covers the fixed delays of
# a capturer that keeps up: our ring's block timeout (0.1 s), dumpcap's update interval (0.5 s).
KEPT_UP_LAG_S = 0.6
IDLE_WINDOW_S = 0.3  # CPU time flat for this long: the capturer has emptied its ring
SETTLE_S = 0.3  # after the socket is bound (dumpcap attaches its filter after binding)
CAP_NET_RAW = 13
CPU_CAPTURE, CPU_REPLAY = 0, 1


# -- tools and privileges -----------------------------------------------------------------------


def can_capture() -> bool:
    """Root, or CAP_NET_RAW in the effective set."""
    if os.geteuid() == 0:
        return True
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_RAW & 1)
    except OSError:
        pass
    return False


def ensure_tool(binary: str, package: str, *, required: bool) -> bool:
    """Install Debian's ``package`` when ``binary`` is missing; False when it stays missing."""
    if shutil.which(binary):
        return True
    print(f"{binary} is missing; installing Debian's {package} (apt-get install -y {package})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "install", "-y", package], env=env, check=False)
    except OSError as exc:
        print(f"cannot run apt-get: {exc}", file=sys.stderr)
    if shutil.which(binary):
        return True
    if required:
        print(f"could not install {package} (apt-get install -y {package})", file=sys.stderr)
        sys.exit(1)
    print(f"could not install {package}: going on without it", file=sys.stderr)
    return False


def soc_command() -> str:
    soc = ROOT / ".venv" / "bin" / "soc"
    return str(soc) if soc.exists() else shutil.which("soc") or str(soc)


@functools.cache
def can_pin() -> bool:
    """taskset is there and this process may run on both CPUs used (decided once, at start)."""
    return bool(shutil.which("taskset")) and {CPU_CAPTURE, CPU_REPLAY} <= os.sched_getaffinity(0)


def pinned(cmd: list[str], cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if can_pin() else cmd


# -- the replay capture -------------------------------------------------------------------------


@dataclass(frozen=True)
class Replay:
    path: Path
    copies: int
    per_copy: int  # frames in one copy
    ring_packets: int  # how many of these packets a ring of LiveCapture's default size holds


def _checksum_update(checksum: int, old: int, new: int) -> int:
    """RFC 1624: the ones' complement checksum after one 16-bit word changes from old to new."""
    total = (~checksum & 0xFFFF) + (~old & 0xFFFF) + new
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def modbus_frames() -> tuple[list[tuple[int, bytearray, int, int]], int]:
    """The port-502 IPv4/TCP frames of the source, MACs rewritten; and its span in µs.

    Each item: (ts_us, frame, offset of the client port, offset of the TCP checksum).
    """
    frames: list[tuple[int, bytearray, int, int]] = []
    first = last = 0
    for frame in read_capture(SOURCE):
        if frame.linktype != 1 or len(frame.data) < 54:
            continue
        data = bytearray(frame.data)
        if data[12:14] != b"\x08\x00" or data[23] != 6:  # Ethernet IPv4, TCP
            continue
        tcp = 14 + (data[14] & 0x0F) * 4
        sport, dport = struct.unpack_from("!HH", data, tcp)
        if MODBUS_PORT not in (sport, dport):
            continue
        to_server = dport == MODBUS_PORT
        data[0:6], data[6:12] = (SERVER_MAC, CLIENT_MAC) if to_server else (CLIENT_MAC, SERVER_MAC)
        first = first or frame.ts_us
        last = frame.ts_us
        frames.append((frame.ts_us, data, tcp if to_server else tcp + 2, tcp + 16))
    if not frames:
        raise SystemExit(f"no Modbus/TCP frame in {SOURCE}")
    return frames, last - first


def build_replay(out: Path, packets: int) -> Replay:
    """Whole copies of the source's Modbus frames, at least ``packets`` frames in all."""
    frames, span = modbus_frames()
    copies = min(max(1, math.ceil(packets / len(frames))), MAX_COPIES)
    record = struct.Struct("<IIII")
    with out.open("wb") as stream:
        stream.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65_535, 1))
        for copy in range(copies):
            shift = copy * (span + GAP_US)
            port = CLIENT_PORT_BASE + copy
            for ts, data, port_at, sum_at in frames:
                out_frame = bytearray(data)
                old = struct.unpack_from("!H", data, port_at)[0]
                checksum = struct.unpack_from("!H", data, sum_at)[0]
                struct.pack_into("!H", out_frame, port_at, port)
                struct.pack_into("!H", out_frame, sum_at, _checksum_update(checksum, old, port))
                ts += shift
                size = len(out_frame)
                stream.write(record.pack(ts // 1_000_000, ts % 1_000_000, size, size))
                stream.write(out_frame)
    # a TPACKET_V3 slot: header and sockaddr_ll, the MAC header aligned, then the frame
    mac_at = _align(TPACKET3_HDRLEN + 16) - 14
    slot = sum(_align(mac_at + len(f[1])) for f in frames) / len(frames)
    ring_mb = inspect.signature(LiveCapture.__init__).parameters["ring_mb"].default
    per_block = int((BLOCK_SIZE - 48) // slot)
    return Replay(out, copies, len(frames), per_block * int(ring_mb))


def _align(size: int) -> int:
    return (size + 15) & ~15


# -- offline reference --------------------------------------------------------------------------


def run_quiet(cmd: list[str]) -> str:
    """Run to completion; its standard error (and output), or exit naming the failure."""
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stderr + done.stdout


def summary_of(text: str) -> dict[str, Any]:
    import json

    try:
        summary = json.loads(text[text.index("{") : text.rindex("}") + 1])
    except ValueError as exc:
        raise ValueError(f"no JSON summary in the collector's output: {text[-500:]!r}") from exc
    if not isinstance(summary, dict):
        raise ValueError("the summary is not a JSON object")
    return summary


def find_key(tree: object, key: str) -> int | None:
    """The first integer under ``key`` anywhere in a JSON tree (the summary's layout may move)."""
    if isinstance(tree, dict):
        if isinstance(tree.get(key), int):
            return int(tree[key])
        for value in tree.values():
            found = find_key(value, key)
            if found is not None:
                return found
    return None


def offline_pdus(soc: str, pcap: Path) -> tuple[int, int]:
    """(frames, Modbus PDUs) of ``soc collect --pcap``."""
    cmd = [soc, "collect", "--pcap", str(pcap), "--jsonl", os.devnull]
    summary = summary_of(run_quiet([*cmd, "--summary-json", "--no-progress"]))
    return int(summary["frames"]), int(summary["pdus"].get("modbus", 0))


def io_stat(text: str) -> tuple[int, int] | None:
    """(tcp frames, mbtcp frames) from tshark's ``-z io,stat,0,tcp,mbtcp`` table."""
    for line in text.splitlines():
        if "<>" in line:
            cells = [c.strip() for c in line.split("|") if c.strip()]
            numbers = [int(c) for c in cells[1:] if c.isdigit()]
            if len(numbers) >= 4:
                return numbers[0], numbers[2]
    return None


def offline_tshark(pcap: Path) -> int | None:
    """Frames tshark dissects as Modbus/TCP in the file."""
    text = run_quiet(["tshark", "-r", str(pcap), "-q", "-z", "io,stat,0,tcp,mbtcp"])
    counts = io_stat(text)
    return None if counts is None else counts[1]


# -- processes ----------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found, todo = [pid], [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        todo += children
    return found


def cpu_ticks(pids: list[int]) -> int:
    """User and system CPU time of the processes, in clock ticks."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total


def cpu_busy(cpu: int) -> tuple[int, int]:
    """(busy, stolen) clock ticks of one CPU so far, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, line.split()[1:9])
            return user + nice + system + irq + softirq, steal
    return 0, 0


def other_load(seconds: float = 1.0) -> dict[int, float]:
    """Share of each CPU busy (or stolen by the hypervisor) over ``seconds``, before we start."""
    cpus = sorted({CPU_CAPTURE, CPU_REPLAY} if can_pin() else os.sched_getaffinity(0))
    before = {cpu: sum(cpu_busy(cpu)) for cpu in cpus}
    time.sleep(seconds)
    hz = os.sysconf("SC_CLK_TCK")
    return {cpu: (sum(cpu_busy(cpu)) - before[cpu]) / hz / seconds for cpu in cpus}


def capturing_on(pids: list[int], ifindex: int) -> bool:
    """A packet socket of one of these processes is bound to ``ifindex`` and running."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    if not inodes:
        return False
    # sk RefCnt Type Proto Iface R Rmem User Inode
    for line in Path("/proc/net/packet").read_text().splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 9 and cols[8] in inodes and int(cols[4]) == ifindex and cols[5] == "1":
            return True
    return False


def default_sigint() -> None:
    """In the child: SIGINT as the default (a background shell may have ignored it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Capturer:
    """A capturing process started for one step: readiness, drain and stop."""

    def __init__(self, cmd: list[str], log: Path, ifindex: int) -> None:
        self.log = log
        self.ifindex = ifindex
        self.pids: list[int] = []
        env = {**os.environ, "TMPDIR": str(log.parent)}  # tshark's spool file goes there
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                preexec_fn=default_sigint,
            )

    def wait_ready(self, timeout: float = 60.0) -> str | None:
        """None once capturing; else why not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"exited ({self.proc.returncode}) before capturing: {self.text()[-300:]}"
            pids = descendants(self.proc.pid)
            if capturing_on(pids, self.ifindex):
                self.pids = pids  # the process tree is complete once it captures
                time.sleep(SETTLE_S)
                return None
            time.sleep(0.02)
        return f"not capturing after {timeout:.0f} s"

    def wait_drained(self, after: float, timeout: float = 120.0) -> float:
        """When the process tree last used CPU (it stops once its ring is empty)."""
        tick = 1 / os.sysconf("SC_CLK_TCK")
        threshold = max(2, math.ceil(IDLE_WINDOW_S * 0.05 / tick))  # under 5% of a core
        deadline = time.monotonic() + timeout
        history: list[tuple[float, int]] = []
        last_busy = after
        while time.monotonic() < deadline and self.proc.poll() is None:
            now = time.monotonic()
            ticks = self.ticks()
            if history and ticks - history[-1][1] > 1:
                last_busy = now
            history.append((now, ticks))
            window = [t for when, t in history if when >= now - IDLE_WINDOW_S]
            settled = now - after >= IDLE_WINDOW_S + 0.2 and now - last_busy >= IDLE_WINDOW_S
            if settled and window[-1] - window[0] < threshold:
                return last_busy
            time.sleep(0.05)
        return time.monotonic()

    def stop(self, timeout: float = 60.0) -> tuple[bool, str]:
        """SIGINT, then wait: (ended by itself with status 0, its output)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return False, self.text() + f"\n(no exit {timeout:.0f} s after SIGINT: killed)"
        return self.proc.returncode == 0, self.text()

    def ticks(self) -> int:
        return cpu_ticks(self.pids)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """End the process and the children it started (dumpcap under tshark)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.pids[1:]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# -- one step -----------------------------------------------------------------------------------


@dataclass
class Sent:
    packets: int
    failed: int
    seconds: float
    pps: float
    started: float  # monotonic, when the first packet left
    ended: float


@dataclass
class Seen:
    frames: int | None
    dropped: int | None  # as the capturer reports it
    pdus: int | None
    drained: float
    clean: bool
    note: str = ""
    copies_per_drop: int = 1  # dumpcap on lo counts both copies (outgoing, incoming) of a packet
    others: float | None = None  # share of the capturer's CPU used by other processes, or stolen


def replay(pcap: Path, rate: int | None, limit: int) -> Sent:
    cmd = ["tcpreplay", f"--intf1={IFACE}", f"--limit={limit}", "--preload-pcap"]
    cmd += ["--topspeed"] if rate is None else [f"--pps={rate}"]
    done = subprocess.run(
        pinned([*cmd, str(pcap)], CPU_REPLAY), capture_output=True, text=True, check=False
    )
    ended = time.monotonic()
    out = done.stdout + done.stderr

    def number(pattern: str) -> float:
        match = re.search(pattern, out)
        if match is None:
            raise SystemExit(f"tcpreplay: no {pattern!r} in its report ({done.returncode}):\n{out}")
        return float(match.group(1))

    seconds = number(r"Actual: \d+ packets \(\d+ bytes\) sent in ([\d.]+) seconds")
    return Sent(
        packets=int(number(r"Successful packets:\s+(\d+)")),
        failed=int(number(r"Failed packets:\s+(\d+)")),
        seconds=seconds,
        pps=number(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps"),
        started=ended - seconds,
        ended=ended,
    )


def ours_command(soc: str) -> list[str]:
    cmd = [soc, "collect", "--iface", IFACE, "--filter", BPF, "--jsonl", os.devnull]
    return [*cmd, "--summary-json", "--no-progress"]


def tshark_command(ring_mb: int) -> list[str]:
    cmd = ["tshark", "-i", IFACE, "-f", BPF, "-B", str(ring_mb), "-n", "-q"]
    return [*cmd, "-z", "io,stat,0,tcp,mbtcp"]


Parsed = tuple[int | None, int | None, int | None, str]  # frames, dropped, PDUs, note


def read_ours(text: str) -> Parsed:
    try:
        summary = summary_of(text)
    except ValueError as exc:
        return None, None, None, str(exc)
    dropped = find_key(summary, "kernel_dropped")
    note = "" if dropped is not None else "no kernel_dropped in the summary"
    return int(summary["frames"]), dropped, int(summary["pdus"].get("modbus", 0)), note


def read_tshark(text: str) -> Parsed:
    captured = re.search(r"(\d+) packets? captured", text)
    dropped = sum(int(n) for n in re.findall(r"(\d+) packets? dropped", text))
    counts = io_stat(text)
    frames = int(captured.group(1)) if captured else None
    pdus = None if counts is None else counts[1]
    return frames, dropped, pdus, "" if captured and counts else "no packet count or io,stat"


@dataclass
class Step:
    tool: str
    target: int | None
    expected_pdus: int
    sent: Sent | None
    seen: Seen

    @property
    def lag(self) -> float:
        return 0.0 if self.sent is None else max(0.0, self.seen.drained - self.sent.ended)

    @property
    def lost(self) -> int | None:
        if self.sent is None or self.seen.frames is None:
            return None
        dropped = (self.seen.dropped or 0) // self.seen.copies_per_drop
        return self.sent.packets - self.seen.frames - dropped

    @property
    def work_pps(self) -> float:
        """Frames handled per second, from the first packet sent until the capturer went idle."""
        if self.sent is None or not self.seen.frames:
            return 0.0
        return self.seen.frames / max(1e-6, self.seen.drained - self.sent.started)

    @property
    def passed(self) -> bool:
        sent, seen = self.sent, self.seen
        return (
            sent is not None
            and sent.failed == 0
            and seen.clean
            and seen.dropped == 0
            and seen.frames == sent.packets
            and seen.pdus == self.expected_pdus
        )

    @property
    def kept_up(self) -> bool:
        return self.passed and self.lag <= KEPT_UP_LAG_S


def run_step(
    tool: str,
    cmd: list[str],
    parse: Callable[[str], Parsed],
    replay_file: Replay,
    rate: int | None,
    copies: int,
    per_copy_pdus: int,
    workdir: Path,
    ifindex: int,
) -> Step:
    label = "top" if rate is None else f"{rate}"
    capturer = Capturer(pinned(cmd, CPU_CAPTURE), workdir / f"{tool}-{label}.log", ifindex)
    expected = copies * per_copy_pdus
    try:
        problem = capturer.wait_ready()
        if problem is not None:
            capturer.kill()
            return Step(tool, rate, expected, None, Seen(None, None, None, 0, False, problem))
        busy0, own0, t0 = sum(cpu_busy(CPU_CAPTURE)), capturer.ticks(), time.monotonic()
        sent = replay(replay_file.path, rate, copies * replay_file.per_copy)
        drained = capturer.wait_drained(sent.ended)
        busy1, own1, t1 = sum(cpu_busy(CPU_CAPTURE)), capturer.ticks(), time.monotonic()
        clean, text = capturer.stop()
    finally:
        capturer.kill()
    frames, dropped, pdus, note = parse(text)
    notes = [note] if note else []
    if not clean:
        notes.append("did not exit cleanly on SIGINT: " + text[-300:])
    others = None
    if can_pin():
        others = ((busy1 - busy0) - (own1 - own0)) / os.sysconf("SC_CLK_TCK") / (t1 - t0)
        if others > 0.1:
            notes.append(
                f"CPU {CPU_CAPTURE} was {others:.0%} busy with other work (or stolen by the "
                "hypervisor) during this step: figures understated"
            )
    seen = Seen(
        frames,
        dropped,
        pdus,
        drained,
        clean,
        "; ".join(notes),
        copies_per_drop=2 if tool == "tshark" else 1,
        others=others,
    )
    return Step(tool, rate, expected, sent, seen)


# -- report -------------------------------------------------------------------------------------


def fmt(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def print_table(steps: list[Step]) -> None:
    head = (
        f"{'target':>8} {'achieved':>10} {'sent':>10} {'failed':>6} {'seen':>10} "
        f"{'k.drops':>8} {'lost':>7} {'PDUs':>10} {'expected':>10} {'lag s':>6} "
        f"{'handled/s':>10}  result"
    )
    print(head)
    for s in steps:
        target = "top" if s.target is None else f"{s.target:,}"
        if s.sent is None:
            print(f"{target:>8}  error: {s.seen.note}")
            continue
        result = "pass" if s.passed else "FAIL"
        if s.passed:
            result += ", kept up" if s.kept_up else ", ring backlog"
        print(
            f"{target:>8} {s.sent.pps:10,.0f} {s.sent.packets:10,} {s.sent.failed:6,} "
            f"{fmt(s.seen.frames):>10} {fmt(s.seen.dropped):>8} {fmt(s.lost):>7} "
            f"{fmt(s.seen.pdus):>10} {s.expected_pdus:>10,} {s.lag:6.2f} "
            f"{s.work_pps:10,.0f}  {result}"
        )
        if s.seen.note:
            print(f"{'':>8}  note: {s.seen.note}")


def best(steps: list[Step], *, kept_up: bool) -> Step | None:
    good = [s for s in steps if (s.kept_up if kept_up else s.passed) and s.sent is not None]
    return max(good, key=lambda s: s.sent.pps if s.sent else 0.0, default=None)


def headline(tool: str, steps: list[Step]) -> None:
    top = best(steps, kept_up=False)
    steady = best(steps, kept_up=True)

    def rate(step: Step | None) -> str:
        if step is None or step.sent is None:
            return "none"
        where = "the top-speed step" if step.target is None else f"the {step.target:,} step"
        met = "met" if step.sent.pps >= TARGET_PPS * 0.99 else "NOT met"
        return f"{step.sent.pps:,.0f} pkt/s ({where}; target {TARGET_PPS:,}: {met})"

    drops = sum(s.seen.dropped or 0 for s in steps)
    lost = sum(max(0, s.lost or 0) for s in steps)
    caveat = ""
    if top is not None and not top.kept_up:
        caveat = " (the ring absorbed a backlog: not sustained)"
    print(f"{tool}: highest rate with no drop: {rate(top)}{caveat}")
    print(f"{tool}: highest rate kept up with (no drop, no ring backlog): {rate(steady)}")
    print(f"{tool}: over all steps, dropped by the kernel {drops:,}, lost {lost:,}")
    shared = sum(1 for s in steps if s.seen.others is not None and s.seen.others > 0.1)
    if shared:
        print(
            f"{tool}: {shared} of {len(steps)} steps shared the capturer's CPU with other work "
            "(see the notes): rerun on a quiet machine for its own figure"
        )


# -- main ---------------------------------------------------------------------------------------


def parse_rates(text: str) -> list[int | None]:
    rates: list[int | None] = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        if item in ("top", "topspeed"):
            rates.append(None)
            continue
        scale = 1_000 if item.endswith("k") else 1
        try:
            value = int(float(item.removesuffix("k")) * scale)
        except ValueError:
            raise SystemExit(f"--rates: {item!r} is not a rate (e.g. 50000, 50k or top)") from None
        if value <= 0:
            raise SystemExit(f"--rates: {item!r} must be positive")
        rates.append(value)
    if not rates:
        raise SystemExit("--rates: no rate given")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rates, fewer packets")
    parser.add_argument(
        "--rates",
        help=f"comma-separated pkt/s, 'top' for --topspeed "
        f"(default {DEFAULT_RATES}; --quick {QUICK_RATES})",
    )
    parser.add_argument(
        "--packets",
        type=int,
        help="replay file size (default 1,000,000; "
        "--quick 250,000); each step sends whole copies, at most all",
    )
    parser.add_argument(
        "--seconds", type=float, help="how long a step lasts at its rate (default 5; --quick 2)"
    )
    parser.add_argument("--no-peer", action="store_true", help="skip tshark")
    args = parser.parse_args()
    rates = parse_rates(args.rates or (QUICK_RATES if args.quick else DEFAULT_RATES))
    packets = args.packets or (250_000 if args.quick else 1_000_000)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    if packets <= 0 or seconds <= 0:
        raise SystemExit("--packets and --seconds must be positive")

    if not sys.platform.startswith("linux"):
        print("skipped: live capture on loopback needs Linux")
        return
    if not can_capture():
        print(
            "skipped: live capture needs root or CAP_NET_RAW (run: sudo .venv/bin/python -m "
            "bench.live_modbus); tcpreplay needs it too"
        )
        return
    if not SOURCE.exists():
        print(f"skipped: the corpus capture {SOURCE.name} is missing ({SOURCE.parent})")
        return
    ensure_tool("tcpreplay", "tcpreplay", required=True)
    peer = not args.no_peer and ensure_tool("tshark", "tshark", required=False)
    try:
        ifindex = socket.if_nametoindex(IFACE)
    except OSError:
        print(f"skipped: no {IFACE} interface")
        return
    soc = soc_command()
    if can_pin():
        os.sched_setaffinity(0, {CPU_REPLAY})  # this process polls /proc: not on the capturer's CPU
    ring_mb = int(inspect.signature(LiveCapture.__init__).parameters["ring_mb"].default)

    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        workdir = Path(tmp)
        t = time.perf_counter()
        full = build_replay(workdir / "replay.pcap", packets)
        one = build_replay(workdir / "one.pcap", 1)
        print(
            f"replay capture: {full.copies} copies of modbusBig.pcap's Modbus/TCP frames "
            f"({full.per_copy:,} a copy, one flow each), {full.copies * full.per_copy:,} "
            f"packets, {full.path.stat().st_size / 1e6:,.0f} MB "
            f"(built in {time.perf_counter() - t:.1f} s)"
        )
        t = time.perf_counter()
        one_frames, per_copy = offline_pdus(soc, one.path)
        all_frames, all_pdus = offline_pdus(soc, full.path)
        print(
            f"offline (soc collect --pcap): {per_copy:,} Modbus PDUs a copy, {all_pdus:,} in "
            f"the file ({all_frames:,} frames, {time.perf_counter() - t:.1f} s)"
        )
        if all_pdus != per_copy * full.copies or one_frames != full.per_copy:
            print(
                "  warning: the file's PDUs are not copies x one copy's; expected counts "
                "per step assume they are"
            )
        peer_per_copy = offline_tshark(one.path) if peer else None
        if peer and peer_per_copy is None:
            print("tshark's io,stat table was not found: peer skipped")
            peer = False
        print(
            f"our ring: {ring_mb} MiB (LiveCapture's default, as soc collect uses it) holds "
            f"about {full.ring_packets:,} of these packets; tshark gets -B {ring_mb}"
        )
        placement = (
            f"capturer on CPU {CPU_CAPTURE}, tcpreplay (and the kernel's delivery) on CPU "
            f"{CPU_REPLAY}"
            if can_pin()
            else "no CPU pinning (taskset or 2 CPUs missing)"
        )
        print(f"{placement}; each step lasts about {seconds:g} s at its rate")
        load = other_load()
        busy = ", ".join(f"CPU {cpu} {share:.0%}" for cpu, share in load.items())
        print(f"load before the run: {busy}")
        if any(share > 0.1 for share in load.values()):
            print(
                "  warning: the machine is busy with other work (another benchmark?): "
                "the figures below will be understated"
            )
        print()

        ours: list[Step] = []
        theirs: list[Step] = []
        for rate in rates:
            want = full.copies if rate is None else math.ceil(rate * seconds / full.per_copy)
            copies = max(1, min(full.copies, want))
            step = run_step(
                "ours",
                ours_command(soc),
                read_ours,
                full,
                rate,
                copies,
                per_copy,
                workdir,
                ifindex,
            )
            ours.append(step)
            print(f"  ours  {'top' if rate is None else rate:>7}: {short(step)}", flush=True)
            if peer and peer_per_copy is not None:
                step = run_step(
                    "tshark",
                    tshark_command(ring_mb),
                    read_tshark,
                    full,
                    rate,
                    copies,
                    peer_per_copy,
                    workdir,
                    ifindex,
                )
                theirs.append(step)
                print(f"  tshark {'top' if rate is None else rate:>6}: {short(step)}", flush=True)

    print(f"\nours: soc collect --iface {IFACE} --filter '{BPF}' --jsonl /dev/null (one core)")
    print_table(ours)
    if theirs:
        print(
            f"\npeer: tshark -i {IFACE} -f '{BPF}' -B {ring_mb} -q -z io,stat,0,tcp,mbtcp "
            "(dumpcap captures and spools to a file, tshark dissects every frame; "
            "both on the same core as ours; PDUs: frames dissected as mbtcp)"
        )
        print_table(theirs)
        print(
            "  tshark's k.drops is dumpcap's count, which on lo includes the outgoing copy of "
            "each packet\n  (libpcap does not ignore outgoing packets): about twice the packets "
            "missing; 'lost' halves it"
        )
    print(
        "\nseen: frames the capturer got; k.drops: dropped by the kernel (ring full); "
        "lost: sent but neither seen nor dropped;\nlag: work after tcpreplay ended (backlog "
        f"in the ring; 'kept up': lag <= {KEPT_UP_LAG_S} s); handled/s: frames seen / "
        "(first packet sent .. capturer idle)\n"
    )
    headline("ours", ours)
    if theirs:
        headline("tshark", theirs)
    elif peer:
        print("tshark: no result")
    else:
        print("tshark: not measured (--no-peer, or not installed)")


def short(step: Step) -> str:
    if step.sent is None:
        return f"error: {step.seen.note}"
    verdict = "pass" if step.passed else "FAIL"
    return (
        f"{step.sent.pps:,.0f} pkt/s, sent {step.sent.packets:,}, seen {fmt(step.seen.frames)}, "
        f"dropped {fmt(step.seen.dropped)}, PDUs {fmt(step.seen.pdus)}/{step.expected_pdus:,}, "
        f"lag {step.lag:.2f} s: {verdict}"
    )


if __name__ == "__main__":
    main()
