"""`soc demo` end to end, as a new user runs it: it runs the lab, shows the attacks, the alerts
and the incidents in the store, serves the API with demo accounts (an engineer logs in and sees
the water plant's incident), stops cleanly on Ctrl-C, and leaves no process or port behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lab.base import LabSite

SOC = Path(sys.executable).parent / "soc"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _get(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _wait_for(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.slow
def test_the_demo_runs_the_lab_collects_detects_and_serves(tmp_path: Path) -> None:
    port = _free_port()
    started = time.monotonic()
    process = subprocess.Popen(
        [str(SOC), "demo", "--duration", "3", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "SOC_DATA_DIR": str(tmp_path / "soc-data")},
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        while time.monotonic() - started < 180:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("serving on"):
                break
        out = "".join(lines)
        assert "serving on" in out, out[-3000:]
        assert time.monotonic() - started < 180
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
        assert "  alert: " in out  # said as they were raised, while the lab ran
        assert "Modbus request flood" in out
        assert "opcua_anonymous_login" in out  # the OPC UA attacks ran, were dissected, alerted
        assert "OPC UA session activated anonymously" in out
        incidents = int(out.split("Incidents (")[1].split("): ")[1].split()[0])
        assert incidents >= 1
        assert "Traceback" not in out

        password = out.split("    engineer  ")[1].split()[0]
        form = urllib.parse.urlencode(
            {"grant_type": "password", "username": "engineer", "password": password}
        ).encode()
        base = f"http://127.0.0.1:{port}"
        _wait_for(f"{base}/health")
        with urllib.request.urlopen(f"{base}/auth/token", data=form, timeout=10) as response:
            token = json.load(response)["access_token"]
        listed = _get(f"{base}/incidents", token)["items"]
        assert listed
        assert {i["site"] for i in listed} == {"water_plant"}  # the engineer's site only
        assert site.attacker in listed[0]["attackers"]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
            if process.stdout is not None:
                process.stdout.close()
    assert process.returncode == 0
    if os.geteuid() == 0:  # a live capture: the pcap and the labels are there
        runs = list((tmp_path / "soc-data" / "lab").iterdir())
        assert (runs[0] / "capture.pcap").stat().st_size > 0
        assert (runs[0] / "labels.json").exists()
    for host, port_ in (
        (site.plc, site.modbus_port),
        (site.broker, site.mqtt_port),
        ("127.0.0.1", port),
    ):
        with socket.socket() as probe:  # every server is gone: the ports are free again
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port_))
