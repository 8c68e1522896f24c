"""Where the simulated city is, and where its sun is: shared by the meters (photovoltaic
production) and the wellbeing sensors (daylight, ozone)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


@dataclass(frozen=True)
class City:
    """Where the city is: the sun and the clock of its traffic and households depend on it."""

    latitude: float = 48.86
    longitude: float = 2.35
    timezone: str = "Europe/Paris"

    def tz(self) -> tzinfo:
        """The city's time zone (a fixed UTC+1 when the system has no tz database)."""
        try:
            return ZoneInfo(self.timezone)
        except ZoneInfoNotFoundError:
            return timezone(timedelta(hours=1))


def sun_sin_elevation(t: float, latitude: float, longitude: float) -> float:
    """Sine of the sun's elevation at unix time ``t`` (NOAA's approximation)."""
    return _sin_elevation(datetime.fromtimestamp(t, UTC), latitude, longitude)


def solar_elevation(when: datetime, latitude: float, longitude: float) -> float:
    """The sun's elevation above the horizon in degrees (NOAA's approximation, ~0.5°)."""
    sin_elev = _sin_elevation(when.astimezone(UTC), latitude, longitude)
    return math.degrees(math.asin(max(-1.0, min(1.0, sin_elev))))


def _sin_elevation(utc: datetime, latitude: float, longitude: float) -> float:
    doy = utc.timetuple().tm_yday
    hours = utc.hour + utc.minute / 60 + utc.second / 3600
    gamma = 2 * math.pi / 365 * (doy - 1 + (hours - 12) / 24)
    eqtime = 229.18 * (
        0.000075
        + 0.001868 * math.cos(gamma)
        - 0.032077 * math.sin(gamma)
        - 0.014615 * math.cos(2 * gamma)
        - 0.040849 * math.sin(2 * gamma)
    )
    decl = (
        0.006918
        - 0.399912 * math.cos(gamma)
        + 0.070257 * math.sin(gamma)
        - 0.006758 * math.cos(2 * gamma)
        + 0.000907 * math.sin(2 * gamma)
        - 0.002697 * math.cos(3 * gamma)
        + 0.00148 * math.sin(3 * gamma)
    )
    hour_angle = math.radians((hours * 60 + eqtime + 4 * longitude) / 4 - 180)
    lat = math.radians(latitude)
    return math.sin(lat) * math.sin(decl) + math.cos(lat) * math.cos(decl) * math.cos(hour_angle)
