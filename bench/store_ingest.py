"""Benchmark: SQLite store ingest rate and query latency, beside a naive insert.

    python -m bench.store_ingest [--events 1000000] [--naive 10000]

Prints, from one run on this machine:
- the collectors' path: events prepared (validated, serialised) in this process and inserted by a
  writer process (``soc.store.writer.StoreWriter``); the writer's events/s on its own core, the
  producer's prepare rate, and the whole pipeline's wall rate including building each event;
- one process doing everything (``SQLiteStore.write_events`` on events built untimed in chunks),
  wall and CPU;
- a naive insert (``json.dumps``, one row per transaction, SQLite's default settings) on the
  same events;
- the latency of "count events by modbus.function_code over one hour" after ANALYZE;
- peak memory (max RSS) of the process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from bench._events import START_US, modbus_events
from soc.config import Settings, SqliteSettings
from soc.runtime import PacedGC
from soc.store.base import EventQuery
from soc.store.sqlite import SQLiteStore, prepare_rows
from soc.store.writer import StoreWriter

HOUR_US = 3_600_000_000


def ours(path: Path, n: int, chunk: int) -> tuple[float, float, float]:
    """(events/s wall, events/s CPU, events/s wall including construction)."""
    store = SQLiteStore(path)
    events = modbus_events(n)
    wall = cpu = 0.0
    begin = time.perf_counter()
    while batch := list(itertools.islice(events, chunk)):
        t, c = time.perf_counter(), time.process_time()
        store.write_events(batch)
        wall += time.perf_counter() - t
        cpu += time.process_time() - c
    total = time.perf_counter() - begin
    store.optimize()
    store.close()
    return n / wall, n / cpu, n / total


def pipeline(path: Path, n: int, chunk: int) -> tuple[float, float, float, float]:
    """(writer events/s busy, writer events/s CPU, producer prepare events/s, pipeline events/s).

    The producer builds each chunk of events, prepares rows and sends them; the writer process
    inserts them meanwhile. Building is part of the pipeline's wall time, not of the prepare rate.
    """
    settings = Settings(sqlite=SqliteSettings(path=path))
    events = modbus_events(n)
    prepare = 0.0
    begin = time.perf_counter()
    with PacedGC() as pace, StoreWriter(settings) as writer:  # as the collectors run
        while batch := list(itertools.islice(events, chunk)):
            t = time.perf_counter()
            for start in range(0, len(batch), settings.store.batch_size):
                part = batch[start : start + settings.store.batch_size]
                writer.write_prepared(prepare_rows(part))
            prepare += time.perf_counter() - t
            pace.tick(len(batch))
    total = time.perf_counter() - begin
    stats = writer.stats
    assert stats.result.written == n, stats
    return n / stats.busy_seconds, n / stats.cpu_seconds, n / prepare, n / total


def naive(path: Path, n: int) -> float:
    """events/s of one INSERT and COMMIT per event, json.dumps, SQLite defaults."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events (id TEXT PRIMARY KEY, ts TEXT, doc TEXT)")
    start = time.perf_counter()
    for doc in modbus_events(n):
        conn.execute(
            "INSERT OR IGNORE INTO events VALUES (?, ?, ?)",
            (doc["event"]["id"], doc["@timestamp"], json.dumps(doc)),
        )
        conn.commit()
    rate = n / (time.perf_counter() - start)
    conn.close()
    return rate


def query_latency(path: Path, n: int, runs: int = 21) -> tuple[float, list[tuple[object, int]]]:
    """Median ms of counting by function code over one hour, on hours spread over the data."""
    store = SQLiteStore(path)
    span_hours = max(1, n * 86_400 // HOUR_US)
    times = []
    result: list[tuple[object, int]] = []
    for k in range(runs):
        start = START_US + (k % span_hours) * HOUR_US
        query = EventQuery(start_us=start, end_us=start + HOUR_US)
        t = time.perf_counter()
        result = store.count_events(query, by="modbus.function_code")
        times.append((time.perf_counter() - t) * 1000)
    store.close()
    return statistics.median(times), result


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--naive", type=int, default=10_000, help="events for the naive insert")
    parser.add_argument("--chunk", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soc-bench-") as tmp:
        db = Path(tmp) / "soc.db"
        busy, busy_cpu, prep, piped = pipeline(Path(tmp) / "piped.db", args.events, args.chunk)
        wall, cpu, with_build = ours(db, args.events, args.chunk)
        size_mb = sum(p.stat().st_size for p in Path(tmp).glob("soc.db*")) / 2**20
        ms, counts = query_latency(db, args.events)
        naive_rate = naive(Path(tmp) / "naive.db", args.naive)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_writer = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"store_ingest: {args.events:,} full ECS events into SQLite (WAL, batch 5,000)")
    print("  collectors' path: prepare here, insert in a writer process")
    print(
        f"  writer      {busy:>10,.0f} events/s on its core (wall while busy; {busy_cpu:,.0f}/s CPU)"
    )
    print(f"  prepare     {prep:>10,.0f} events/s in the producer (validate, serialise, send)")
    print(f"  pipeline    {piped:>10,.0f} events/s wall, including building each event")
    print("  one process: events built untimed in chunks, write_events timed")
    print(f"  ours        {wall:>10,.0f} events/s wall   {cpu:>10,.0f} events/s CPU")
    print(f"  ours+build  {with_build:>10,.0f} events/s wall (including building each event)")
    print(
        f"  naive       {naive_rate:>10,.0f} events/s wall (one row per transaction, {args.naive:,} events)"
    )
    print(f"  speed-up    {busy / naive_rate:>10.1f}x writer, {wall / naive_rate:.1f}x one process")
    print(f"  database    {size_mb:>10,.0f} MB ({size_mb * 2**20 / args.events:,.0f} bytes/event)")
    print(
        f"  query       {ms:>10.2f} ms median: count by modbus.function_code over one hour {counts}"
    )
    print(f"  peak memory {peak:>10,.0f} MB (max RSS), writer process {peak_writer:,.0f} MB")


if __name__ == "__main__":
    main()
