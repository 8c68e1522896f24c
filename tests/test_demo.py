"""`soc demo` end to end, as a new user runs it: it ends by itself, shows the attacks in the
store, and leaves no process or port behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.base import LabSite

SOC = Path(sys.executable).parent / "soc"


@pytest.mark.slow
def test_the_demo_runs_the_lab_collects_and_shows_the_attacker(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [str(SOC), "demo", "--duration", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "SOC_DATA_DIR": str(tmp_path / "soc-data")},
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert elapsed < 180
    out = result.stdout
    site = LabSite()
    assert "Demo done" in out
    stored = int(out.split("Events stored: ")[1].split()[0].replace(",", ""))
    assert stored > 1000
    hosts = out.split("Hosts found")[1]
    assert site.attacker in hosts
    assert site.plc in hosts
    assert site.hmi in hosts
    assert "modbus_request_flood" in out
    alerts = int(out.split("Detection (inline")[1].split("): ")[1].split()[0].replace(",", ""))
    assert alerts >= 5  # the Modbus attacks raise alerts
    assert "  alert: " in result.stderr  # said as they were raised, while the lab ran
    assert "Modbus request flood" in out
    assert "Traceback" not in result.stderr
    if os.geteuid() == 0:  # a live capture: the pcap and the labels are there
        runs = list((tmp_path / "soc-data" / "lab").iterdir())
        assert (runs[0] / "capture.pcap").stat().st_size > 0
        assert (runs[0] / "labels.json").exists()
    for host, port in ((site.plc, site.modbus_port), (site.broker, site.mqtt_port)):
        with socket.socket() as probe:  # every server is gone: the ports are free again
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
