"""The meter head-end: the utility's system that reads the smart meters over DLMS/COSEM.

A dlms-cosem client (``DlmsClient`` on the library's ``TcpTransport``, the IEC 62056-4-7
wrapper). The library's ``BlockingTcpIO`` connects with ``socket.create_connection`` and no
source address; :class:`BoundTcpIO` is the same I/O with the socket bound to the head-end's
address (``site.head_end``), so captures show the head-end as its own host. The client is
blocking: every session runs in a worker thread (``asyncio.to_thread``), never in the event loop.

Every ``site.meter_poll_s`` the head-end reads each meter in turn, one session per meter, as a
scheduled reading does: TCP connect, AARQ as the management client (wPort 1, low-level security:
the password travels in clear), GET the clock, the disconnector's control_state, +A and -A,
instantaneous +P and -P and voltage L1 (the registers' scaler_unit once per meter), RLRQ, close.
Every ``profile_every_s`` it also reads the load profile since the last entry it has (selective
access by range on the clock column; the first time, the last two hours), which the meter sends
in GET blocks when it is longer than its PDU. :meth:`HeadEnd.history` is what it read.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from dlms_cosem import cosem, dlms_data, utils  # type: ignore[import-untyped, unused-ignore]
from dlms_cosem import enumerations as enums  # type: ignore[import-untyped, unused-ignore]
from dlms_cosem import exceptions as dlms_exceptions  # type: ignore[import-untyped, unused-ignore]
from dlms_cosem import time as dlms_time  # type: ignore[import-untyped, unused-ignore]
from dlms_cosem.client import DlmsClient  # type: ignore[import-untyped, unused-ignore]
from dlms_cosem.cosem.capture_object import (  # type: ignore[import-untyped, unused-ignore]
    CaptureObject,
)
from dlms_cosem.cosem.selective_access import (  # type: ignore[import-untyped, unused-ignore]
    RangeDescriptor,
)
from dlms_cosem.io import BlockingTcpIO, TcpTransport  # type: ignore[import-untyped, unused-ignore]
from dlms_cosem.parsers import (  # type: ignore[import-untyped, unused-ignore]
    ProfileGenericBufferParser,
)
from dlms_cosem.protocol import xdlms  # type: ignore[import-untyped, unused-ignore]
from dlms_cosem.security import (  # type: ignore[import-untyped, unused-ignore]
    LowLevelSecurityAuthentication,
    NoSecurityAuthentication,
)

from lab.base import LabSite, cancel_and_wait, now_us
from lab.meters import (
    CLOCK,
    DISCONNECT_CONTROL,
    ENERGY_EXPORT,
    ENERGY_IMPORT,
    LOAD_PROFILE,
    LOGICAL_DEVICE,
    MANAGEMENT_CLIENT,
    MANAGEMENT_PASSWORD,
    POWER_EXPORT,
    POWER_IMPORT,
    PUBLIC_CLIENT,
    VOLTAGE_L1,
    obis,
)

#: the head-end's system title (calling-AP-title of its AARQs): FLAG id ``HES`` and a number
HEAD_END_SYSTEM_TITLE = b"HES\x00\x00\x00\x00\x01"


class BoundTcpIO(BlockingTcpIO):  # type: ignore[misc]
    """dlms-cosem's blocking TCP I/O, connecting from a chosen source address."""

    tcp_socket: socket.socket | None

    def __init__(self, host: str, port: int, *, source: str | None, timeout: float = 5.0) -> None:
        super().__init__(host=host, port=port, timeout=timeout)
        self.source = source

    def connect(self) -> None:
        """Open the socket from ``source`` (any port)."""
        if self.tcp_socket:
            raise RuntimeError(f"There is already an active socket to {self.address}")
        try:
            self.tcp_socket = socket.create_connection(
                self.address,
                timeout=self.timeout,
                source_address=(self.source, 0) if self.source else None,
            )
        except OSError as exc:
            raise dlms_exceptions.CommunicationError("Unable to connect socket") from exc

    def disconnect(self) -> None:
        """Close the socket (quietly, when the meter already closed it)."""
        sock, self.tcp_socket = self.tcp_socket, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def make_client(
    host: str,
    port: int,
    *,
    source: str | None,
    client_sap: int = MANAGEMENT_CLIENT,
    password: bytes | None = MANAGEMENT_PASSWORD,
    system_title: bytes = HEAD_END_SYSTEM_TITLE,
    timeout: float = 5.0,
) -> Any:
    """A dlms-cosem ``DlmsClient`` for one meter over the TCP wrapper (LLS when ``password``)."""
    io = BoundTcpIO(host, port, source=source, timeout=timeout)
    transport = TcpTransport(
        client_logical_address=client_sap,
        server_logical_address=LOGICAL_DEVICE,
        io=io,
        timeout=int(timeout),
    )
    auth = (
        LowLevelSecurityAuthentication(secret=password)
        if password is not None
        else NoSecurityAuthentication()
    )
    return DlmsClient(transport=transport, authentication=auth, client_system_title=system_title)


@contextlib.contextmanager
def dlms_session(
    host: str,
    port: int,
    *,
    source: str | None,
    client_sap: int = MANAGEMENT_CLIENT,
    password: bytes | None = MANAGEMENT_PASSWORD,
    system_title: bytes = HEAD_END_SYSTEM_TITLE,
    timeout: float = 5.0,
) -> Iterator[Any]:
    """Connect, associate, yield the client, release, close (the socket closed on any error).

    Blocking: run it in a worker thread. A refused association raises
    ``dlms_cosem.exceptions.DlmsClientException``."""
    client = make_client(
        host,
        port,
        source=source,
        client_sap=client_sap,
        password=password,
        system_title=system_title,
        timeout=timeout,
    )
    client.connect()
    try:
        client.associate()
        yield client
        client.release_association()
    finally:
        client.disconnect()


def attribute(class_id: int, code: str, attr: int) -> Any:
    """The library's Cosem-Attribute-Descriptor."""
    return cosem.CosemAttribute(enums.CosemInterface(class_id), obis(code), attr)


def get_attribute(client: Any, class_id: int, code: str, attr: int, selection: Any = None) -> Any:
    """GET one attribute: its encoded Data (``bytes``, GET blocks reassembled), or the meter's
    ``DataAccessResult`` when it refuses. ``DlmsClient.get`` raises on a refusal and hides the
    result code; this is the same exchange keeping it."""
    client.send(
        xdlms.GetRequestNormal(
            cosem_attribute=attribute(class_id, code, attr), access_selection=selection
        )
    )
    data = bytearray()
    while True:
        response = client.next_event()
        if isinstance(response, xdlms.GetResponseNormal):
            return bytes(response.data)
        if isinstance(
            response, xdlms.GetResponseNormalWithError | xdlms.GetResponseLastBlockWithError
        ):
            return response.error
        if isinstance(response, xdlms.GetResponseLastBlock):
            data.extend(response.data)
            return bytes(data)
        if isinstance(response, xdlms.GetResponseWithBlock):
            data.extend(response.data)
            client.send(
                xdlms.GetRequestNext(
                    invoke_id_and_priority=response.invoke_id_and_priority,
                    block_number=response.block_number,
                )
            )
            continue
        raise dlms_exceptions.LocalDlmsProtocolError(f"unexpected response {response!r}")


def read_value(client: Any, class_id: int, code: str, attr: int = 2) -> Any:
    """GET one attribute as a Python value (``DlmsClient.get`` and the library's A-XDR parser)."""
    return utils.parse_as_dlms_data(client.get(attribute(class_id, code, attr)))


def read_clock(client: Any) -> datetime:
    """The meter's clock (an aware datetime in its local time)."""
    raw = read_value(client, 8, CLOCK)
    when: datetime
    when, _status = dlms_time.datetime_from_bytes(bytes(raw))
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def read_register(client: Any, code: str, scaler: int) -> float:
    """A register's value in its unit (value x 10^scaler)."""
    return float(read_value(client, 3, code)) * 10.0**scaler


def read_profile(client: Any, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Load-profile entries with ``start <= clock <= end`` (selective access by range)."""
    selection = RangeDescriptor(
        restricting_object=CaptureObject(attribute(8, CLOCK, 2)),
        from_value=start,
        to_value=end,
    )
    raw = client.get(attribute(7, LOAD_PROFILE, 2), access_descriptor=selection)
    parser = ProfileGenericBufferParser(
        capture_objects=[
            attribute(8, CLOCK, 2),
            attribute(3, ENERGY_IMPORT, 2),
            attribute(3, ENERGY_EXPORT, 2),
        ],
        capture_period=15,
    )
    rows = []
    for entry in parser.parse_bytes(raw):
        clock, imp, exp = (column.value if column is not None else None for column in entry)
        rows.append({"clock": clock, "energy_import_wh": imp, "energy_export_wh": exp})
    return rows


#: the registers read every cycle: (OBIS, history key)
REGISTERS = (
    (ENERGY_IMPORT, "energy_import_wh"),
    (ENERGY_EXPORT, "energy_export_wh"),
    (POWER_IMPORT, "import_w"),
    (POWER_EXPORT, "export_w"),
    (VOLTAGE_L1, "voltage_v"),
)


class HeadEnd:
    """Reads every meter of the site every ``site.meter_poll_s`` from ``site.head_end``."""

    name = "head_end"

    def __init__(
        self,
        site: LabSite,
        *,
        seed: int = 0,
        password: bytes = MANAGEMENT_PASSWORD,
        profile_every_s: float = 60.0,
        timeout_s: float = 3.0,
    ) -> None:
        self.site = site
        self.seed = seed  # the head-end is deterministic: nothing to draw
        self._password = password
        self._profile_every_s = profile_every_s
        self._timeout_s = timeout_s
        self._rows: list[dict[str, Any]] = []
        self._scalers: dict[tuple[str, str], int] = {}
        self._profile_until: dict[str, datetime] = {}
        self._last_profile = 0.0
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[list[dict[str, Any]]] | None = None
        self._stopping = False

    async def start(self) -> None:
        """Begin polling (the first cycle starts at once, in the background)."""
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="head-end")

    async def stop(self) -> None:
        """Stop polling; wait for a session in progress to close its socket (idempotent)."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(inflight, timeout=self._timeout_s * 3 + 1)

    def history(self) -> list[dict[str, Any]]:
        """What the head-end read: one row per meter and cycle (``kind`` reading, profile or
        error), with the meter's clock and its offset from the head-end's own clock."""
        return list(self._rows)

    async def _run(self) -> None:
        period = self.site.meter_poll_s
        next_at = time.monotonic()
        while True:
            profile = time.monotonic() - self._last_profile >= self._profile_every_s
            if profile:
                self._last_profile = time.monotonic()
            self._inflight = asyncio.ensure_future(asyncio.to_thread(self.poll_all, profile))
            self._rows.extend(await asyncio.shield(self._inflight))
            self._inflight = None
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at, time.monotonic() - period)

    def poll_all(self, profile: bool) -> list[dict[str, Any]]:
        """One reading cycle over every meter (blocking; runs in a worker thread)."""
        rows: list[dict[str, Any]] = []
        for meter in self.site.meters:
            if self._stopping:
                break
            try:
                rows.extend(self.read_meter(meter, profile))
            except Exception as exc:  # a meter down or refusing: the head-end logs and goes on
                rows.append(
                    {
                        "ts_us": now_us(),
                        "device": meter,
                        "kind": "error",
                        "reader": self.site.head_end,
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                )
        return rows

    def read_meter(self, meter: str, profile: bool) -> list[dict[str, Any]]:
        """One session with one meter: the readings (and the profile's new entries)."""
        rows: list[dict[str, Any]] = []
        with dlms_session(
            meter,
            self.site.dlms_port,
            source=self.site.head_end,
            password=self._password,
            timeout=self._timeout_s,
        ) as client:
            clock = read_clock(client)
            wall = datetime.now(UTC)
            row: dict[str, Any] = {"ts_us": now_us(), "device": meter, "kind": "reading"}
            row["reader"] = self.site.head_end
            row["meter_clock"] = clock.isoformat()
            row["clock_offset_s"] = round((clock - wall).total_seconds(), 3)
            row["control_state"] = int(read_value(client, 70, DISCONNECT_CONTROL, 3))
            for code, key in REGISTERS:
                if (meter, code) not in self._scalers:
                    scaler, _unit = read_value(client, 3, code, 3)
                    self._scalers[(meter, code)] = int(scaler)
                scaler = self._scalers[(meter, code)]
                value = read_register(client, code, scaler)
                row[key] = int(value) if scaler >= 0 else round(value, -scaler)
            rows.append(row)
            if profile:
                start = self._profile_until.get(meter, clock - timedelta(hours=2))
                if start >= clock:  # the meter's clock went back: read its last two hours
                    start = clock - timedelta(hours=2)
                entries = read_profile(client, start + timedelta(seconds=1), clock)
                if entries:
                    self._profile_until[meter] = entries[-1]["clock"]
                rows.append(
                    {
                        "ts_us": now_us(),
                        "device": meter,
                        "kind": "profile",
                        "reader": self.site.head_end,
                        "entries": [
                            {**entry, "clock": entry["clock"].isoformat()} for entry in entries
                        ],
                    }
                )
        return rows


def public_session(host: str, port: int, *, source: str | None, timeout: float = 5.0) -> Any:
    """A session as the public client (wPort 16, no authentication)."""
    return dlms_session(
        host,
        port,
        source=source,
        client_sap=PUBLIC_CLIENT,
        password=None,
        timeout=timeout,
    )


def encode_datetime(when: datetime) -> bytes:
    """A clock ``time`` value for SET: octet-string(12) (date, time, deviation, status)."""
    return bytes(dlms_data.OctetStringData(dlms_time.datetime_to_bytes(when)).to_bytes())
