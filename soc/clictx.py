"""What every command module shares: the settings ``soc`` loaded, and times given as options.

``soc/cli.py`` attaches command groups that live with their packages (``detectors.report_cli``,
``soc.incidents.cli``, ``api.cli``); each reads the configuration through :func:`settings` so
that ``soc --config FILE ...`` applies to them too, and runs alone in tests as well.
"""

from __future__ import annotations

import click

from soc.config import Settings, load_settings
from soc.event import parse_timestamp


def settings(ctx: click.Context) -> Settings:
    """The settings ``soc`` loaded (``--config``), or the configuration read here."""
    obj = ctx.find_root().obj
    if isinstance(obj, dict):
        if "settings" not in obj:
            obj["settings"] = load_settings(obj.get("config"))
        found: Settings = obj["settings"]
        return found
    return load_settings()


def parse_time(value: str | None, option: str) -> int | None:
    """µs since the epoch from an ISO 8601 option (UTC when it names no zone; a date alone is
    its midnight); a clear error naming the option otherwise."""
    if value is None:
        return None
    for text in (value, value + "+00:00", value + "T00:00:00+00:00"):
        try:
            return parse_timestamp(text)
        except ValueError:
            continue
    raise click.BadParameter(f"not an ISO 8601 time: {value!r}", param_hint=option)
