"""Running a collection: sources in (capture files, a live interface), sinks out (JSON lines, the
store), with progress and the closing summary. The I/O edge around :class:`Collector`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Protocol

import orjson

from collectors.capture import Frame, RawFrame, iter_capture_files, read_batches
from collectors.pipeline import Collector
from soc.assets import AssetInventory
from soc.config import Settings
from soc.errors import CaptureError
from soc.runtime import PacedGC
from soc.store.writer import StoreWriter
from soc.types import Event

#: frames between hand-overs of events to the sink: small batches are serialised while their
#: events are still in the CPU's cache (256 runs 1.3x faster than 4096)
FLUSH_FRAMES = 256


class Sink(Protocol):
    """Where events go: ``write`` batches, ``close`` at the end."""

    def write(self, events: list[Event]) -> None:
        """Take a batch of events, in order."""
        ...

    def close(self) -> None:
        """Flush and release."""
        ...


class JsonlSink:
    """One ECS event per line (orjson), to a binary stream; assets are only counted."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.written = 0
        self.inventory = AssetInventory()

    def write(self, events: list[Event]) -> None:
        """Write the events as lines."""
        if events:
            self.stream.write(b"\n".join(map(orjson.dumps, events)) + b"\n")
            self.written += len(events)
            self.inventory.observe_all(events)

    def close(self) -> None:
        """Flush the stream (the caller closes it)."""
        self.stream.flush()


class StoreSink:
    """The configured store, through a writer process (:class:`soc.store.writer.StoreWriter`).

    The events' assets are folded here (:class:`soc.assets.AssetInventory`) and what changed is
    sent to the same writer every ``assets_every_s`` seconds of wall time and at close, so the
    assets table follows a live capture while it runs.
    """

    ASSETS_EVERY_S = 5.0

    def __init__(self, settings: Settings, assets_every_s: float = ASSETS_EVERY_S) -> None:
        self.writer = StoreWriter(settings)
        self.written = 0
        self.duplicates = 0
        self.assets = 0  # asset documents merged into the store
        self.inventory = AssetInventory()
        self.assets_every_s = assets_every_s
        self._assets_due = time.monotonic() + assets_every_s

    def write(self, events: list[Event]) -> None:
        """Send the events to the writer process (and, when due, the assets they changed)."""
        if events:
            self.writer.write(events)
            self.inventory.observe_all(events)
            if time.monotonic() >= self._assets_due:
                self.send_assets()

    def send_assets(self) -> None:
        """Send the assets changed since the last send to the writer."""
        self.writer.write_assets(self.inventory.drain())
        self._assets_due = time.monotonic() + self.assets_every_s

    def close(self) -> None:
        """Wait until every event and asset is stored; raise the writer's error if it failed."""
        try:
            self.send_assets()
        finally:
            stats = self.writer.close()
        self.written, self.duplicates = stats.result.written, stats.result.duplicates
        self.assets = stats.assets


def collect_files(
    paths: Iterable[Path],
    collector: Collector,
    sink: Sink,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Every capture named (files, directories) through the collector into the sink.

    A capture that cannot be read whole is counted with its location and the run goes on;
    ``progress`` gets the bytes consumed as the files are read.
    """
    files = [f for p in paths for f in iter_capture_files(p)]
    with PacedGC() as pace:
        for path in files:
            collector.source = str(path)
            try:
                _feed(read_batches(path, FLUSH_FRAMES), collector, sink, pace, progress)
            except CaptureError as exc:
                collector.capture_error(exc.location or str(path), exc.message)
            sink.write(collector.take())
        collector.finish()
        sink.write(collector.take())


def collect_frames(frames: Iterable[list[Frame]], collector: Collector, sink: Sink) -> None:
    """Batches of frames from a live source through the collector into the sink."""
    with PacedGC() as pace:
        for batch in frames:
            collector.frames(batch)
            sink.write(collector.take())
            pace.tick(len(batch))
        collector.finish()
        sink.write(collector.take())


def _feed(
    batches: Iterable[list[RawFrame]],
    collector: Collector,
    sink: Sink,
    pace: PacedGC,
    progress: Callable[[int], None] | None,
) -> None:
    feed, take, write = collector.frames, collector.take, sink.write
    for batch in batches:
        feed(batch)
        write(take())
        pace.tick(len(batch))
        if progress:
            progress(sum(len(item[3]) for item in batch) + 16 * len(batch))


def total_bytes(paths: Iterable[Path]) -> int:
    """The size of the captures a run will read (for a progress bar)."""
    return sum(f.stat().st_size for p in paths for f in iter_capture_files(p))
