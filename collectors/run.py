"""Running a collection: sources in (capture files, a live interface), sinks out (JSON lines, the
store), with progress and the closing summary. The I/O edge around :class:`Collector`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Protocol

import orjson

from collectors.capture import Frame, iter_capture_files, read_capture
from collectors.pipeline import Collector
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
    """One ECS event per line (orjson), to a binary stream."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.written = 0

    def write(self, events: list[Event]) -> None:
        """Write the events as lines."""
        if events:
            self.stream.write(b"\n".join(map(orjson.dumps, events)) + b"\n")
            self.written += len(events)

    def close(self) -> None:
        """Flush the stream (the caller closes it)."""
        self.stream.flush()


class StoreSink:
    """The configured store, through a writer process (:class:`soc.store.writer.StoreWriter`)."""

    def __init__(self, settings: Settings) -> None:
        self.writer = StoreWriter(settings)
        self.written = 0
        self.duplicates = 0

    def write(self, events: list[Event]) -> None:
        """Send the events to the writer process."""
        if events:
            self.writer.write(events)

    def close(self) -> None:
        """Wait until every event is stored; raise the writer's error if it failed."""
        stats = self.writer.close()
        self.written, self.duplicates = stats.result.written, stats.result.duplicates


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
                _feed(read_capture(path), collector, sink, pace, progress)
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
    frames: Iterable[Frame],
    collector: Collector,
    sink: Sink,
    pace: PacedGC,
    progress: Callable[[int], None] | None,
) -> None:
    def hand_over(batch: list[Frame]) -> None:
        collector.frames(batch)
        sink.write(collector.take())
        pace.tick(len(batch))
        if progress:
            progress(sum(len(item.data) for item in batch) + 16 * len(batch))

    batch: list[Frame] = []
    append = batch.append
    try:
        for item in frames:
            append(item)
            if len(batch) == FLUSH_FRAMES:
                hand_over(batch)
                batch = []
                append = batch.append
    except CaptureError:
        hand_over(batch)  # the frames read before the damage are kept
        raise
    hand_over(batch)


def total_bytes(paths: Iterable[Path]) -> int:
    """The size of the captures a run will read (for a progress bar)."""
    return sum(f.stat().st_size for p in paths for f in iter_capture_files(p))
