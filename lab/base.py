"""What every part of the lab shares: the addresses of the simulated site, the scenario registry
and the ground-truth labels.

The lab is a small site on loopback. Each device has its own 127.0.0.0/8 address (Linux routes
the whole block to ``lo`` and lets a socket bind any of it), so captures show distinct hosts,
as a plant network does, and the asset inventory has something to find:

======================  ==================  ======================================
device                  address             service
======================  ==================  ======================================
PLC (water tank)        127.0.10.1          Modbus/TCP ``modbus_port``
OPC UA server           127.0.10.2          OPC UA binary ``opcua_port``
HMI / SCADA client      127.0.10.100        polls the PLC and the OPC UA server
smart meters            127.0.20.1 ...      DLMS/COSEM TCP wrapper ``dlms_port``
meter head-end          127.0.20.100        reads the meters
MQTT broker             127.0.30.1          MQTT ``mqtt_port`` (mosquitto)
wellbeing sensors       127.0.30.11 ...     publish to the broker
attacker                127.0.66.6          the scenarios' source
======================  ==================  ======================================

Ports default to unprivileged ones (5020 for Modbus instead of 502) so the lab runs without
root; the collectors find each protocol by content on any port.

A scenario is an ``async`` function given a :class:`LabSite` that attacks it and returns what
it did (targets, details); :func:`scenario` registers it with its ATT&CK for ICS techniques, and
the lab wraps each run in a :class:`Label` (start and end times, attacker, targets).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class LabSite:
    """Addresses and ports of the simulated site (see the module's table)."""

    plc: str = "127.0.10.1"
    opcua: str = "127.0.10.2"
    hmi: str = "127.0.10.100"
    meters: tuple[str, ...] = ("127.0.20.1", "127.0.20.2", "127.0.20.3", "127.0.20.4")
    head_end: str = "127.0.20.100"
    broker: str = "127.0.30.1"
    sensors: tuple[str, ...] = ("127.0.30.11", "127.0.30.12", "127.0.30.13")
    attacker: str = "127.0.66.6"
    modbus_port: int = 5020
    opcua_port: int = 4840
    dlms_port: int = 4059
    mqtt_port: int = 1883
    modbus_unit: int = 1
    #: the PLC's process clock: physics steps per second
    tick_hz: float = 10.0
    #: the HMI's polling period, and the head-end's meter reading period, in seconds
    poll_s: float = 0.5
    meter_poll_s: float = 2.0
    #: OPC UA user-name accounts the server accepts (user -> password)
    opcua_users: tuple[tuple[str, str], ...] = (("operator", "operator-pass-7"),)

    @property
    def ports(self) -> dict[str, int]:
        """Each protocol's port, for the collector's settings."""
        return {
            "modbus": self.modbus_port,
            "opcua": self.opcua_port,
            "dlms": self.dlms_port,
            "mqtt": self.mqtt_port,
        }


@dataclass
class Label:
    """The ground truth of one scenario run (written to ``labels.json``)."""

    scenario: str
    techniques: list[str]
    protocol: str
    description: str
    attacker: str
    targets: list[str]
    start: str  # ISO 8601, UTC, microseconds
    end: str
    start_us: int
    end_us: int
    outcome: str = "done"  # or "failed: <why>"
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON)."""
        return asdict(self)


ScenarioRun = Callable[[LabSite], Awaitable[dict[str, Any]]]
"""An attack: given the site, does its work and returns ``{"targets": [...], ...details}``."""


@dataclass(frozen=True)
class Scenario:
    """An attack scenario: its name, ATT&CK for ICS technique ids, protocol and what it does."""

    name: str
    techniques: tuple[str, ...]
    protocol: str
    description: str
    run: ScenarioRun


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str, techniques: tuple[str, ...], protocol: str, description: str
) -> Callable[[ScenarioRun], ScenarioRun]:
    """Register an attack scenario (a decorator)."""

    def register(run: ScenarioRun) -> ScenarioRun:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} registered twice")
        SCENARIOS[name] = Scenario(name, techniques, protocol, description, run)
        return run

    return register


def now_us() -> int:
    """Wall-clock time in microseconds since the epoch (what captures record)."""
    return time.time_ns() // 1000


class Service(Protocol):
    """A simulator or a normal client of the lab, run in the lab's asyncio event loop."""

    name: str

    async def start(self) -> None:
        """Bind, connect and begin its clock; return once it is serving (or polling)."""
        ...

    async def stop(self) -> None:
        """Stop and release every socket and task (idempotent)."""
        ...

    def history(self) -> list[dict[str, Any]]:
        """The values it actually had (process values, meter readings, sensor samples), as
        rows ``{"ts_us": int, "device": str, ...values}``, for ``values.json``."""
        ...


async def cancel_and_wait(task: asyncio.Task[Any] | None, timeout_s: float = 3.0) -> bool:
    """Cancel a service's task and wait for it, at most ``timeout_s`` (a library may hold a
    cancelled request until its own timeout, or a worker thread cannot be interrupted): a stop
    must never hang. True when the task ended in time."""
    if task is None:
        return True
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if done and not task.cancelled():
        with contextlib.suppress(Exception):
            task.result()  # retrieved, so asyncio does not report it as never retrieved
    return bool(done)
