from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from soc.event import (
    community_id,
    event_id,
    format_timestamp,
    get_field,
    missing_fields,
    new_event,
    parse_timestamp,
)


def test_community_id_matches_the_specification_example() -> None:
    # Example from the Community ID specification (corelight/community-id-spec README).
    expected = "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
    assert community_id("tcp", "128.232.110.120", "66.35.250.204", 34855, 80) == expected
    # The id is the same for both directions of the flow.
    assert community_id("tcp", "66.35.250.204", "128.232.110.120", 80, 34855) == expected


def test_timestamp_is_utc_with_microseconds() -> None:
    assert format_timestamp(1_714_557_600_000_001) == "2024-05-01T10:00:00.000001Z"
    assert parse_timestamp("2024-05-01T12:00:00.000001+02:00") == 1_714_557_600_000_001


def test_timestamp_without_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        parse_timestamp("2024-05-01T10:00:00")


@given(st.integers(min_value=0, max_value=253_402_300_799_999_999))
def test_timestamp_round_trip(ts_us: int) -> None:
    assert parse_timestamp(format_timestamp(ts_us)) == ts_us


def test_event_id_is_deterministic_and_time_ordered() -> None:
    a = event_id(1_000, "ics.modbus", b"frame", 0)
    assert a == event_id(1_000, "ics.modbus", b"frame", 0)
    assert a != event_id(1_000, "ics.modbus", b"frame", 1)
    assert event_id(1, "x", "ab", "c") != event_id(1, "x", "a", "bc")
    assert sorted([event_id(t, "x") for t in (5, 1, 300)]) == [
        event_id(t, "x") for t in (1, 5, 300)
    ]


def test_new_event_carries_the_required_ecs_fields() -> None:
    doc = new_event(ts_us=1_714_557_600_000_000, dataset="ics.modbus", id_parts=(b"x",))
    assert missing_fields(doc) == []
    assert get_field(doc, "event.dataset") == "ics.modbus"
    assert get_field(doc, "@timestamp") == "2024-05-01T10:00:00.000000Z"
    assert get_field(doc, "ecs.version")
    assert missing_fields({"event": {"id": "x"}}) == ["@timestamp", "event.dataset"]
