"""Benchmark: the API's incident list and get routes over a large store, beside its HTTP ceiling.

    python -m bench.api [--quick] [--incidents 100000] [--alerts 1000000] [--duration 20]
                        [--clients 32] [--auth token|key]

Builds, in a temporary directory, a SQLite store of N incidents (``Incident.doc()`` documents:
the lab's three sites, statuses, levels, owners, latest alert over eight weeks) and M alerts (ECS
alert documents of ~1.1 KB, M/N per incident), inserted with ``executemany`` in big
transactions, then ANALYZE; and an analyst user who logs in for a bearer token (``--auth key``:
an analyst API key). Starts ``soc serve`` (one uvicorn process, no workers) on a free loopback
port, the rate limit raised to 1,000,000/s (this measures throughput, not the limiter), and
drives it from a separate load process: C clients (default 32), each on one keep-alive HTTP/1.1
connection (asyncio streams, requests written and responses parsed by hand), closed loop, for S
seconds (default 20) after a 2 s warm-up. Workloads, each measured alone:

- list: ``GET /incidents?limit=50`` with varied filters (status, level, site) and cursor pages;
- get: ``GET /incidents/{id}`` with random ids of the store;

each writing one audit row per request (counted afterwards). Peers in the same run, same load:
``GET /health`` on the same server (same stack, one store read, no authentication, no audit)
and a bare ASGI app answering a constant JSON under uvicorn (uvicorn + HTTP alone).

The machine has 2 cores: the server is one process (the read routes run on its event loop, the
login and the report on its thread pool) and the load generator takes CPU from the same 2 cores.
Targets: >= 1,000 requests/s with p99 < 100 ms, for list and for get.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx
import orjson

from soc.access import hash_password, new_api_key
from soc.incidents.correlate import Incident, incident_id
from soc.store.base import encode_cursor
from soc.store.sqlite import SQLiteStore
from soc.store.sqlite_access import AccessTables

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SITES = {"water_plant": "127.0.10", "smart_grid": "127.0.20", "city_sensors": "127.0.30"}
STATUSES = {"resolved": 45, "false_positive": 15, "new": 15, "acknowledged": 10,
            "investigating": 15}  # fmt: skip
LEVELS = {"low": 40, "medium": 30, "high": 20, "critical": 10}
SEVERITY = {"low": 21, "medium": 47, "high": 73, "critical": 99}
# (rule id, title, level, technique, tactic)
RULES = (
    ("2e0e0a32-41c9-492f-8102-f371201124eb", "Modbus coil write burst", "high",
     ("T0836", "Modify Parameter"), ("TA0106", "Impair Process Control")),
    ("21507f87-8a00-4802-ad77-195a86541d67", "Modbus Force Listen Only", "critical",
     ("T0814", "Denial of Service"), ("TA0105", "Inhibit Response Function")),
    ("5b1c7e0a-9f3d-4c1e-8a77-0d2f4b6e9c11", "Modbus scan of unit ids", "medium",
     ("T0846", "Remote System Discovery"), ("TA0102", "Discovery")),
    ("8c4d2a19-6e5f-4b3a-9d10-7f1e2c3b4a55", "Unauthorised OPC UA write", "high",
     ("T0855", "Unauthorized Command Message"), ("TA0104", "Execution")),
    ("a7e3f0b2-1d4c-4e9a-b6f8-3c2d1e0f9a88", "MQTT subscription to all topics", "low",
     ("T0801", "Monitor Process State"), ("TA0100", "Collection")),
)  # fmt: skip
ANALYSTS = ("alice", "bob", "chen", "dana")
HOUR_US = 3_600_000_000
SPAN_US = 8 * 7 * 24 * HOUR_US
_INSERT_INCIDENT = (
    "INSERT INTO incidents (id, created_ts, updated_ts, status, severity, owner, site, first_ts,"
    " last_ts, level, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_ALERT = (
    "INSERT INTO alerts (id, ts, rule_id, severity, incident_id, group_key, end_ts, doc)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

# -- the store ---------------------------------------------------------------------------------


def _alert_doc(rng: random.Random, aid: str, rule: tuple[Any, ...], ts: int, end: int,
               attacker: str, asset: str) -> dict[str, Any]:  # fmt: skip
    rid, name, level, (tid, tname), (taid, taname) = rule
    count = rng.randint(1, 60)
    events = [f"{rng.getrandbits(128):032x}" for _ in range(min(count, 3))]
    start, stop = datetime.fromtimestamp(ts / 1e6, UTC), datetime.fromtimestamp(end / 1e6, UTC)
    return {
        "@timestamp": start,
        "event": {"kind": "alert", "dataset": "ics.alert", "id": aid,
                  "category": ["intrusion_detection"], "type": ["indicator"],
                  "severity": SEVERITY[level], "risk_score": float(SEVERITY[level]),
                  "start": start, "end": stop, "created": stop},
        "rule": {"id": rid, "uuid": rid, "name": name, "ruleset": "ics-soc", "category": "ics"},
        "labels": {"level": level},
        "threat": {"framework": "MITRE ATT&CK for ICS",
                   "technique": {"id": [tid], "name": [tname]},
                   "tactic": {"id": [taid], "name": [taname]}},
        "related": {"ip": sorted((attacker, asset))},
        "source": {"ip": attacker},
        "destination": {"ip": asset, "port": 502},
        "ics": {"alert": {"level": level, "correlation": "event_count",
                          "group": {"source.ip": attacker}, "timespan_s": 60, "metric": count,
                          "triggered": start, "event_count": count, "event_ids": events,
                          "event_ids_truncated": count > len(events)}},
    }  # fmt: skip


def build_store(path: Path, n: int, m: int, seed: int = 7) -> list[str]:
    """Write n incidents and m alerts (big transactions), ANALYZE; the incident ids."""
    rng = random.Random(seed)
    now = time.time_ns() // 1000
    store = SQLiteStore(path)
    conn = store._conn
    ids: list[str] = []
    incidents: list[tuple[Any, ...]] = []
    alerts: list[tuple[Any, ...]] = []

    def flush() -> None:
        with store._transaction():
            conn.executemany(_INSERT_INCIDENT, incidents)
            conn.executemany(_INSERT_ALERT, alerts)
        incidents.clear()
        alerts.clear()

    for i in range(n):
        site = rng.choice(list(SITES))
        status = rng.choices(list(STATUSES), list(STATUSES.values()))[0]
        level = rng.choices(list(LEVELS), list(LEVELS.values()))[0]
        attacker, asset = f"127.0.66.{rng.randint(2, 250)}", f"{SITES[site]}.{rng.randint(1, 120)}"
        first = now - rng.randrange(SPAN_US)
        last = first + rng.randrange(6 * HOUR_US)
        k = (i + 1) * m // n - i * m // n
        times = sorted([first, last, *(rng.randint(first, last) for _ in range(max(0, k - 2)))])
        rules = rng.sample(RULES, rng.randint(1, 3))
        alert_ids = [f"{rng.getrandbits(128):032x}" for _ in range(k)]
        iid = incident_id(alert_ids[0] if alert_ids else str(i))
        counts: dict[str, dict[str, Any]] = {}
        for j, aid in enumerate(alert_ids):
            rule, ts = rules[j % len(rules)], times[j]
            end = ts + rng.randint(1, 60) * 1_000_000
            entry = counts.setdefault(
                rule[0], {"id": rule[0], "name": rule[1], "level": rule[2], "count": 0,
                          "first": ts, "last": ts})  # fmt: skip
            entry["count"] += 1
            entry["last"] = ts
            text = orjson.dumps(
                _alert_doc(rng, aid, rule, ts, end, attacker, asset), option=orjson.OPT_UTC_Z
            ).decode()
            group = orjson.dumps([attacker]).decode()
            alerts.append((aid, ts, rule[0], SEVERITY[rule[2]], iid, group, end, text))
        incident = Incident(
            id=iid, site=site, created_us=min(first + 30_000_000, last), first_us=first, last_us=last,
            status=status, owner=None if status == "new" else rng.choice(ANALYSTS),
            attackers=[attacker], assets=[asset], criticality=level,
            alert_count=k, event_count=k * rng.randint(1, 40), rules=counts,
            techniques={r[3][0]: r[3][1] for r in rules}, tactics={r[4][0]: r[4][1] for r in rules},
            severity=SEVERITY[level] - rng.randint(0, 9), level=level,
            updated_us=last + (0 if status == "new" else rng.randrange(HOUR_US)),
        )  # fmt: skip
        idoc = incident.doc()
        incidents.append((iid, incident.created_us, incident.updated_us, status,
                          incident.severity, idoc["owner"], site, first, last, level,
                          orjson.dumps(idoc).decode()))  # fmt: skip
        ids.append(iid)
        if len(alerts) >= 200_000 or len(incidents) >= 20_000:
            flush()
    flush()
    store.optimize()
    store.close()
    return ids


def add_principal(path: Path, auth: str) -> tuple[str, str]:
    """An analyst: (user name, password) for ``token``, ("", API key) for ``key``."""
    now = time.time_ns() // 1000
    with SQLiteStore(path) as store:
        access = AccessTables(store)
        if auth == "key":
            key_id, key, secret_hash = new_api_key()
            access.add_key(key_id, "bench", secret_hash, ["analyst"], [], "bench", now)
            return "", key
        password = secrets.token_urlsafe(16)
        access.add_user("bench-analyst", hash_password(password), ["analyst"], [], now)
        return "bench-analyst", password


def cursors(path: Path, k: int, seed: int = 11) -> list[str]:
    """Cursors at k random positions of the incident list (as the list route encodes them)."""
    with SQLiteStore(path) as store:
        total = int(store._conn.execute("SELECT max(rowid) FROM incidents").get)
        rng = random.Random(seed)
        picks = [rng.randint(1, total) for _ in range(k)]
        sql = "SELECT last_ts, rowid FROM incidents WHERE rowid = ?"
        rows = [store.read_rows(sql, (r,))[0] for r in picks]
        return [encode_cursor(last, rowid) for last, rowid in rows]


def list_paths(rng: random.Random, pages: list[str], k: int) -> list[str]:
    """k list requests: no filter, status, level, site and combinations; 30% at a cursor."""
    filters = ("", "&status=new", "&status=new&status=acknowledged&status=investigating",
               "&level=high", "&level=critical", "&site={s}", "&site={s}&status=new",
               "&site={s}&level=high", "&status=resolved&level=medium")  # fmt: skip
    out = []
    for _ in range(k):
        path = "/incidents?limit=50" + rng.choice(filters).format(s=rng.choice(list(SITES)))
        if rng.random() < 0.3:
            path += "&cursor=" + rng.choice(pages)
        out.append(path)
    return out


# -- the load process ----------------------------------------------------------------------------


@dataclass
class Load:
    """What one workload measured."""

    done: int = 0  # answered within the measured window (after the warm-up)
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    ok_total: int = 0  # 2xx answers, warm-up included
    sample: str = ""  # the first error's body
    load_cpu_s: float = 0.0  # CPU seconds of the load process
    server_cpu_s: float = float("nan")  # of the server process (Linux /proc)

    def figures(self) -> tuple[float, float, float]:
        """(requests/s, p50 ms, p99 ms)."""
        if len(self.latencies_ms) < 2:
            return 0.0, float("nan"), float("nan")
        q = statistics.quantiles(self.latencies_ms, n=100, method="inclusive")
        return self.done / self.seconds, q[49], q[98]


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, close = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":  # the servers here always send Content-Length
            raise ValueError(f"a {value.decode()} response: not parsed")
        elif name == b"connection":
            close = value == b"close"
    return status, await reader.readexactly(length), close


async def _client(port: int, requests: list[bytes], offset: int, warm: float, end: float,
                  out: Load) -> None:  # fmt: skip
    writer: asyncio.StreamWriter | None = None
    i = offset
    while time.perf_counter() < end:
        start = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(requests[i % len(requests)])
            i += 1
            status, body, close = await _response(reader)
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            out.errors[type(exc).__name__] += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
            continue
        stop = time.perf_counter()
        ok = 200 <= status < 300
        out.ok_total += ok
        if start >= warm and stop <= end:
            out.done += 1
            out.latencies_ms.append((stop - start) * 1000)
            if not ok:
                out.errors[str(status)] += 1
        if not ok and not out.sample:
            out.sample = f"{status} {body[:300].decode(errors='replace')}"
        if close:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


def run_load(port: int, paths: list[str], header: str, clients: int, warmup: float,
             duration: float) -> Load:  # fmt: skip
    """Drive ``paths`` (cycled) from ``clients`` keep-alive connections (in the load process)."""
    extra = f"{header}\r\n" if header else ""
    requests = [f"GET {p} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{extra}\r\n".encode() for p in paths]
    out = Load(seconds=duration)

    async def drive() -> None:
        warm = time.perf_counter() + warmup
        end = warm + duration
        step = max(1, len(requests) // clients)
        await asyncio.gather(
            *(_client(port, requests, c * step, warm, end, out) for c in range(clients))
        )

    cpu = time.process_time()
    asyncio.run(drive())
    out.load_cpu_s = time.process_time() - cpu
    return out


# -- the servers ---------------------------------------------------------------------------------


async def constant_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app answering every request with a constant JSON (the HTTP stack's cost)."""
    body = b'{"status":"ok","store":"ok","version":"bench"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving(command: list[str], env: dict[str, str], cwd: Path, port: int) -> Iterator[int]:
    """Run a server until the block ends (terminate, then kill); wait for /health to be 200."""
    log = cwd / f"server-{port}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start:\n{log.read_text()[-3000:]}")
                try:
                    if httpx.get(f"http://{HOST}:{port}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            yield proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children (uvicorn's workers), all their
    threads (nan where /proc is missing)."""
    total, found = 0.0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            _, _, rest = stat.read_text().rpartition(")")
        except OSError:
            continue
        fields = rest.split()
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            found = True
    return total if found else float("nan")


def soc_command(port: int, workers: int = 1) -> list[str]:
    """``soc serve`` of this environment."""
    soc = Path(sys.executable).with_name("soc")
    base = (
        [str(soc)] if soc.exists() else [sys.executable, "-c", "from soc.cli import main; main()"]
    )
    return [*base, "serve", "--host", HOST, "--port", str(port), "--workers", str(workers)]


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 incidents, 5 s per workload")
    parser.add_argument("--incidents", type=int, default=None, help="default 100,000")
    parser.add_argument("--alerts", type=int, default=None, help="default 10 per incident")
    parser.add_argument("--duration", type=float, default=None, help="seconds; default 20")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--auth", choices=("token", "key"), default="token")
    parser.add_argument(
        "--workers", default="1,2", help="server processes to measure, comma-separated"
    )
    args = parser.parse_args()
    n = args.incidents or (10_000 if args.quick else 100_000)
    m = args.alerts if args.alerts is not None else 10 * n
    duration = args.duration or (5.0 if args.quick else 20.0)
    warmup = 1.0 if args.quick else 2.0
    rng = random.Random(3)
    results: dict[str, Load] = {}
    spawn = get_context("spawn")
    with (
        tempfile.TemporaryDirectory(prefix="soc-bench-api-") as tmp,
        ProcessPoolExecutor(1, mp_context=spawn) as pool,
    ):
        data = Path(tmp)
        db = data / "soc.db"
        began = time.perf_counter()
        ids = build_store(db, n, m)
        build_s = time.perf_counter() - began
        size_mb = sum(p.stat().st_size for p in data.glob("soc.db*")) / 2**20
        user, secret = add_principal(db, args.auth)
        paths = {
            "list": list_paths(rng, cursors(db, 500), 4000),
            "get": [f"/incidents/{i}" for i in rng.sample(ids, min(len(ids), 20_000))],
        }
        env = {
            **os.environ,
            "SOC_DATA_DIR": str(data),
            "SOC_API_RATE_PER_S": "1000000",
            "SOC_API_RATE_BURST": "1000000",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }

        def load(pid: int, port: int, workload: list[str], header: str = "") -> Load:
            before = cpu_seconds(pid)
            job = pool.submit(run_load, port, workload, header, args.clients, warmup, duration)
            result = job.result()
            result.server_cpu_s = cpu_seconds(pid) - before
            return result

        counts = [int(w) for w in args.workers.split(",")]
        for workers in counts:
            port = free_port()
            with serving(soc_command(port, workers), env, data, port) as pid:
                base = f"http://{HOST}:{port}"
                if args.auth == "key":
                    header = f"X-API-Key: {secret}"
                else:
                    form = {"grant_type": "password", "username": user, "password": secret}
                    reply = httpx.post(f"{base}/auth/token", data=form, timeout=30)
                    reply.raise_for_status()
                    header = f"Authorization: Bearer {reply.json()['access_token']}"
                name, _, value = header.partition(": ")
                for check in (paths["list"][0], paths["get"][0]):  # the routes answer first
                    reply = httpx.get(base + check, headers={name: value}, timeout=30)
                    assert reply.status_code == 200, (check, reply.status_code, reply.text[:300])
                if workers == counts[0]:
                    results["health"] = load(pid, port, ["/health"])
                results[f"list/{workers}"] = load(pid, port, paths["list"], header)
                results[f"get/{workers}"] = load(pid, port, paths["get"], header)
        with SQLiteStore(db) as store:
            sql = "SELECT count(*) FROM audit WHERE action IN ('list', 'read')"
            audited = int(store._conn.execute(sql).get)
        port = free_port()
        asgi = [sys.executable, "-m", "uvicorn", "bench.api:constant_app", "--host", HOST,
                "--port", str(port), "--log-level", "warning", "--no-access-log",
                "--lifespan", "off"]  # fmt: skip
        with serving(asgi, env, data, port) as pid:
            results["asgi"] = load(pid, port, ["/health"])

    print(f"api: {n:,} incidents, {m:,} alerts in SQLite (built in {build_s:.1f} s,"
          f" {size_mb:,.0f} MB)")  # fmt: skip
    report(results, audited, args.clients, duration, warmup, args.auth, counts)


def report(results: dict[str, Load], audited: int, clients: int, duration: float, warmup: float,
           auth: str, counts: list[int]) -> None:  # fmt: skip
    """Print the figures, ours beside the peers, and the targets."""
    print(
        f"  {clients} clients, keep-alive HTTP/1.1, closed loop, {duration:g} s per workload"
        f" after {warmup:g} s warm-up; auth: {'bearer token' if auth == 'token' else 'API key'}"
    )
    print("  rate limit raised to 1,000,000/s (SOC_API_RATE_PER_S/BURST): throughput, not limiter")
    print("  server: `soc serve --workers N` (uvicorn); the load process shares the 2 cores;")
    print("  cores: CPU seconds per wall second of the server + of the load process")
    print(f"  {'workload':<46} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'cores':>9}  errors")
    labels = {}
    for w in counts:
        labels[f"list/{w}"] = f"list  GET /incidents?limit=50, {w} worker{'s' * (w > 1)}"
        labels[f"get/{w}"] = f"get   GET /incidents/{{id}}, {w} worker{'s' * (w > 1)}"
    labels["health"] = f"peer  GET /health ({counts[0]} worker; no auth, audit)"
    labels["asgi"] = "peer  bare ASGI constant JSON under uvicorn"
    figures = {key: load.figures() for key, load in results.items()}
    for key, label in labels.items():
        rate, p50, p99 = figures[key]
        errors = ", ".join(f"{k}: {v}" for k, v in results[key].errors.items()) or "0"
        wall = duration + warmup
        cores = f"{results[key].server_cpu_s / wall:.2f}+{results[key].load_cpu_s / wall:.2f}"
        print(f"  {label:<46} {rate:>7,.0f} {p50:>7.1f} {p99:>7.1f} {cores:>9}  {errors}")
        if results[key].sample:
            print(f"    first error: {results[key].sample}")
    one = counts[0]
    for key in (f"list/{one}", f"get/{one}"):
        rate = figures[key][0]
        print(f"  {key:<6} at {rate / (figures['health'][0] or 1):.0%} of /health,"
              f" {rate / (figures['asgi'][0] or 1):.0%} of bare uvicorn")  # fmt: skip
    answered = sum(r.ok_total for k, r in results.items() if k.startswith(("list", "get")))
    answered += 2 * len(counts)  # the checks before timing
    print(f"  audit rows (list, read): {audited:,} for {answered:,} list/get answered 2xx")
    for key in (k for k in labels if k.startswith(("list", "get"))):
        rate, _, p99 = figures[key]
        print(f"  target {key}: >= 1,000 req/s {'met' if rate >= 1000 else 'NOT met'},"
              f" p99 < 100 ms {'met' if p99 < 100 else 'NOT met'}")  # fmt: skip


if __name__ == "__main__":
    main()
