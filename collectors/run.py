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

FLUSH_FRAMES = 4096  # frames between hand-overs of events to the sink


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
            frame = collector.frame
            for item in batch:
                frame(item)
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
    frame = collector.frame
    count = consumed = 0
    for item in frames:
        frame(item)
        count += 1
        consumed += len(item.data) + 16
        if count == FLUSH_FRAMES:
            sink.write(collector.take())
            pace.tick(count)
            if progress:
                progress(consumed)
            count = consumed = 0
    if progress:
        progress(consumed)


def total_bytes(paths: Iterable[Path]) -> int:
    """The size of the captures a run will read (for a progress bar)."""
    return sum(f.stat().st_size for p in paths for f in iter_capture_files(p))
