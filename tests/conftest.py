"""Shared fixtures: a fresh SQLite store per test, and the external corpus when present."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from soc.event import new_event, set_network
from soc.store.sqlite import SQLiteStore
from soc.types import Event

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def corpus_path(relative: str) -> Path:
    """A file of ../shared/corpus, or skip the test with a clear message when it is absent."""
    path = CORPUS / relative
    if not path.exists():
        pytest.skip(f"external corpus file not present: ../shared/corpus/{relative}")
    return path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore(tmp_path / "soc.db", batch_size=50) as db:
        yield db


def modbus_event(i: int, *, ts_us: int = 1_714_557_600_000_000, fc: int = 3) -> Event:
    """A small Modbus-shaped event; ``i`` makes it unique."""
    doc = new_event(ts_us=ts_us + i * 1000, dataset="ics.modbus", id_parts=(i,))
    set_network(
        doc,
        transport="tcp",
        src_ip=f"10.0.0.{1 + i % 3}",
        dst_ip="10.0.1.1",
        src_port=40000 + i % 3,
        dst_port=502,
        protocol="modbus",
    )
    doc["modbus"] = {"transaction_id": i, "unit_id": 1, "function_code": fc}
    return doc
