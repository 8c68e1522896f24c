"""Synthetic full ECS events for the store benchmarks, shaped like the Modbus collector's."""

from __future__ import annotations

from collections.abc import Iterator

from soc.event import new_event, set_network
from soc.types import Event

FUNCTIONS = (
    (3, "read_holding_registers"),
    (4, "read_input_registers"),
    (6, "write_single_register"),
    (16, "write_multiple_registers"),
    (1, "read_coils"),
    (5, "write_single_coil"),
)
START_US = 1_714_521_600_000_000  # 2024-05-01T00:00:00Z


def modbus_events(n: int, start_us: int = START_US, step_us: int = 86_400) -> Iterator[Event]:
    """``n`` Modbus events ``step_us`` apart (by default 1,000,000 events span one day)."""
    for i in range(n):
        fc, name = FUNCTIONS[i % len(FUNCTIONS)]
        host = 10 + i % 20
        doc = new_event(
            ts_us=start_us + i * step_us,
            dataset="ics.modbus",
            id_parts=(i,),
            category=["network"],
            type_=["protocol", "info"],
            action=name,
            outcome="success",
        )
        set_network(
            doc,
            transport="tcp",
            src_ip=f"10.1.0.{host}",
            dst_ip="10.1.1.5",
            src_port=40000 + host,
            dst_port=502,
            protocol="modbus",
            src_mac="00:1d:9c:c7:b0:10",
            dst_mac="00:80:f4:03:fb:12",
        )
        doc["observer"] = {
            "hostname": "collector-1",
            "type": "sensor",
            "vendor": "ics-soc",
            "product": "soc collect",
        }
        doc["modbus"] = {
            "transaction_id": i % 65536,
            "unit_id": 1 + i % 4,
            "function_code": fc,
            "function_name": name,
            "request": {"address": (i * 7) % 1000, "quantity": 10},
            "response": {"values": [(i + k) % 65536 for k in range(10)]},
            "response_time_us": 800 + i % 400,
        }
        yield doc
