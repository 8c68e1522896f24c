"""Running the lab: the site's services, a normal period, then attack scenarios, with ground truth.

``soc lab run`` calls :func:`run_lab`, which

1. opens the loopback capture first (when permitted), so nothing the lab sends is missed;
2. starts the servers (PLC, OPC UA server, meters, MQTT broker), then the normal clients (HMI,
   SCADA, meter head-end, sensors), all in one asyncio event loop;
3. lets the plant run normally for ``normal_s`` seconds;
4. runs each scenario in turn from the attacker's address, recording its label (techniques,
   attacker, targets, start and end), with ``gap_s`` of normal traffic between scenarios;
5. stops everything and writes ``capture.pcap``, ``labels.json`` and ``values.json`` (the
   values the simulators actually had) into the output directory.

A scenario that fails (its target refused, a timeout) is labelled ``failed: <why>`` and the run
goes on: the labels say what really happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from collectors.capture import Frame
from lab.base import SCENARIOS, Label, LabSite, Service, cancel_and_wait, now_us
from soc.errors import CaptureError
from soc.event import format_timestamp

log = logging.getLogger(__name__)

SCENARIO_TIMEOUT_S = 60.0
#: libraries that log every refused login or dropped connection, which attacks cause on purpose
QUIET_LOGGERS = ("asyncua", "pymodbus", "dlms_cosem", "paho")
#: the modules that register scenarios (imported for their ``@scenario`` side effect)
SCENARIO_MODULES = (
    "lab.attacks_modbus",
    "lab.attacks_opcua",
    "lab.attacks_dlms",
    "lab.attacks_mqtt",
)


@dataclass
class LabResult:
    """What a run produced."""

    out: Path
    labels: list[Label]
    normal: tuple[int, int]  # start and end of the normal period, µs
    capture: Path | None
    capture_note: str  # why there is no capture, or the capture's counts
    services: list[str] = field(default_factory=list)
    failed_services: dict[str, str] = field(default_factory=dict)


def load_scenarios() -> dict[str, Any]:
    """Every registered scenario (importing the modules that register them)."""
    import importlib

    for module in SCENARIO_MODULES:
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(module)
    return dict(SCENARIOS)


def site_services(site: LabSite, seed: int) -> tuple[list[Service], list[Service]]:
    """The site's servers and its normal clients (started in that order)."""
    servers: list[Service] = []
    clients: list[Service] = []
    for module, name, role in SERVICE_CLASSES:
        try:
            factory: Callable[..., Service] = getattr(__import__(module, fromlist=[name]), name)
        except (ModuleNotFoundError, AttributeError):
            continue
        service = factory(site, seed=seed)
        (servers if role == "server" else clients).append(service)
    return servers, clients


#: (module, class, role): what the site runs
SERVICE_CLASSES: tuple[tuple[str, str, str], ...] = (
    ("lab.broker", "Broker", "server"),
    ("lab.plant", "PlcServer", "server"),
    ("lab.opcua_server", "OpcUaServer", "server"),
    ("lab.meters", "Meters", "server"),
    ("lab.hmi", "Hmi", "client"),
    ("lab.opcua_client", "OpcUaHmi", "client"),
    ("lab.head_end", "HeadEnd", "client"),
    ("lab.sensors", "Sensors", "client"),
)


def resolve_scenarios(names: Iterable[str]) -> list[str]:
    """Scenario names to run, in order (``all``: every registered one); unknown names refused."""
    known = load_scenarios()
    chosen: list[str] = []
    for name in names:
        if name == "all":
            chosen.extend(n for n in known if n not in chosen)
        elif name in known:
            chosen.append(name)
        else:
            raise KeyError(name)
    return chosen


async def run_lab(
    site: LabSite,
    scenarios: list[str],
    out: Path,
    *,
    normal_s: float = 30.0,
    gap_s: float = 3.0,
    capture: bool = True,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    consumer: Callable[[list[Frame]], None] | None = None,
) -> LabResult:
    """Run the site, then the scenarios; write the capture, labels and values into ``out``.

    ``consumer`` gets the captured frames as they arrive (live collection), in the capture's
    thread.
    """
    say = progress or (lambda _m: None)
    out.mkdir(parents=True, exist_ok=True)
    for noisy in QUIET_LOGGERS:  # refused logins and dropped sessions are the scenarios' point
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    known = load_scenarios()
    recorder = None
    capture_note = "not requested"
    pcap = out / "capture.pcap"
    if capture:
        from lab.capture import LoopbackRecorder, lab_filter

        try:
            recorder = LoopbackRecorder(pcap, lab_filter(site), consumer=consumer)
            recorder.start()
            capture_note = "capturing loopback"
        except CaptureError as exc:
            capture_note = f"no capture: {exc.message}"
            say(capture_note + "; the simulation runs anyway")
    servers, clients = site_services(site, seed)
    started: list[Service] = []
    failed: dict[str, str] = {}
    labels: list[Label] = []
    try:
        for service in [*servers, *clients]:
            try:
                await asyncio.wait_for(service.start(), timeout=30)
                started.append(service)
                say(f"started {service.name}")
            except Exception as exc:  # one simulator down must not stop the others
                failed[service.name] = f"{type(exc).__name__}: {exc}"
                say(f"could not start {service.name}: {failed[service.name]}")
        normal_start = now_us()
        say(f"normal operation for {normal_s:g} s")
        await asyncio.sleep(normal_s)
        normal_end = now_us()
        for name in scenarios:
            labels.append(await _run_scenario(known[name], site, say))
            await asyncio.sleep(gap_s)
    finally:
        for service in reversed(started):
            stopping = asyncio.ensure_future(service.stop())
            done, _ = await asyncio.wait({stopping}, timeout=15)
            if not done:
                await cancel_and_wait(stopping)
                log.warning("stopping %s: no end after 15 s", service.name)
            elif not stopping.cancelled() and stopping.exception() is not None:
                log.warning("stopping %s: %s", service.name, stopping.exception())
        if recorder is not None:
            await asyncio.sleep(0.3)  # the last packets reach the ring
            stats = recorder.stop()
            if recorder.error is not None:
                capture_note = f"capture failed: {recorder.error.message}"
            else:
                dropped = stats.kernel_dropped if stats else 0
                capture_note = f"{recorder.frames:,} frames captured, {dropped:,} dropped"
    result = LabResult(
        out=out,
        labels=labels,
        normal=(normal_start, normal_end),
        capture=pcap if recorder is not None and recorder.error is None else None,
        capture_note=capture_note,
        services=[s.name for s in started],
        failed_services=failed,
    )
    _write_outputs(result, site, started)
    return result


async def _run_scenario(scenario: Any, site: LabSite, say: Callable[[str], None]) -> Label:
    say(f"scenario {scenario.name} ({', '.join(scenario.techniques)})")
    start = now_us()
    outcome, details = "done", {}
    task = asyncio.ensure_future(scenario.run(site))
    done, _ = await asyncio.wait({task}, timeout=SCENARIO_TIMEOUT_S)
    if not done:
        await cancel_and_wait(task)
        outcome = f"failed: no end after {SCENARIO_TIMEOUT_S:g} s"
    elif task.cancelled():
        outcome = "failed: cancelled"
    elif task.exception() is not None:
        exc = task.exception()
        outcome = f"failed: {type(exc).__name__}: {exc}"
    else:
        details = task.result()
    if outcome != "done":
        say(f"  {outcome}")
    end = now_us()
    details = dict(details or {})
    targets = [str(t) for t in details.pop("targets", [])]
    return Label(
        scenario=scenario.name,
        techniques=list(scenario.techniques),
        protocol=scenario.protocol,
        description=scenario.description,
        attacker=site.attacker,
        targets=targets,
        start=format_timestamp(start),
        end=format_timestamp(end),
        start_us=start,
        end_us=end,
        outcome=outcome,
        details=details,
    )


def _write_outputs(result: LabResult, site: LabSite, services: list[Service]) -> None:
    labels = {
        "site": asdict(site),
        "capture": result.capture.name if result.capture else None,
        "capture_note": result.capture_note,
        "normal": {
            "start": format_timestamp(result.normal[0]),
            "end": format_timestamp(result.normal[1]),
            "start_us": result.normal[0],
            "end_us": result.normal[1],
        },
        "services": result.services,
        "failed_services": result.failed_services,
        "scenarios": [label.to_dict() for label in result.labels],
    }
    option = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    (result.out / "labels.json").write_bytes(orjson.dumps(labels, option=option))
    values: dict[str, Any] = {}
    for service in services:
        try:
            values[service.name] = service.history()
        except Exception as exc:
            values[service.name] = {"error": str(exc)}
    (result.out / "values.json").write_bytes(
        orjson.dumps(values, option=orjson.OPT_NON_STR_KEYS, default=str)
    )
