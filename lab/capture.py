"""Recording the lab's traffic: loopback captured live into a pcap file, in a thread.

The capture uses the collectors' own live source (:class:`collectors.live.LiveCapture`, an
AF_PACKET ring), so it needs root or CAP_NET_RAW; without it :class:`LoopbackRecorder` raises
``CaptureError`` at once and the lab runs without a capture. The BPF filter keeps only the lab's
addresses (127.0.10.0/24 plant, 127.0.20.0/24 meters, 127.0.30.0/24 sensors, the attacker),
so other loopback traffic (the API, a database) stays out of the labelled capture.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from collectors.capture import Frame, PcapWriter
from collectors.live import LiveCapture, LiveStats
from lab.base import LabSite
from soc.errors import CaptureError


def lab_filter(site: LabSite) -> str:
    """A BPF expression matching the traffic of the site's hosts (TCP and UDP only)."""
    hosts = {site.plc, site.opcua, site.hmi, site.head_end, site.broker, site.attacker}
    hosts.update(site.meters)
    hosts.update(site.sensors)
    return "(tcp or udp) and (" + " or ".join(f"host {h}" for h in sorted(hosts)) + ")"


class LoopbackRecorder:
    """Capture loopback into ``path`` from :meth:`start` to :meth:`stop` (a background thread)."""

    def __init__(
        self,
        path: Path,
        bpf: str | None = None,
        iface: str = "lo",
        consumer: Callable[[list[Frame]], None] | None = None,
    ) -> None:
        """``consumer``, if given, also gets each batch of frames as it arrives (in the capture
        thread): ``soc demo`` collects live this way while the pcap is written."""
        self.path = path
        self.consumer = consumer
        self.error: CaptureError | None = None
        self.live_stats: LiveStats | None = None
        self._stop = threading.Event()
        self._live = LiveCapture(iface, bpf, ring_mb=32, timeout_ms=50)  # CaptureError here
        self._out = PcapWriter(path, self._live.linktype)
        self._thread = threading.Thread(target=self._run, name="lab-capture", daemon=True)

    @property
    def frames(self) -> int:
        """Frames written so far."""
        return self._out.frames

    def start(self) -> None:
        """Begin recording (the socket is already open: nothing sent from now on is missed)."""
        self._thread.start()

    def stop(self) -> LiveStats | None:
        """Stop, flush and close the file; the kernel's counters (drops) of the capture."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._out.close()
        return self.live_stats

    def _run(self) -> None:
        try:
            with self._live as live:
                for batch in live.batches(stop=self._stop):
                    for frame in batch:
                        self._out.write(frame)
                    self._out.flush()
                    if self.consumer is not None:
                        self.consumer(batch)
                self.live_stats = live.stats()
        except CaptureError as exc:
            self.error = exc
        except Exception as exc:  # the consumer failed: report it, do not die silently
            self.error = CaptureError(f"{type(exc).__name__}: {exc}", location=self.path.name)
