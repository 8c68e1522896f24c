"""One base exception carrying a location, and one subclass per layer.

A location says where the fault is: a pcap with frame number and byte offset, a rule file with
its line, a configuration key, or a database file. ``str(error)`` prints ``message (in location)``
so a user can go straight to it.
"""

from __future__ import annotations


class SocError(Exception):
    """Base of every error the toolkit raises on purpose."""

    def __init__(self, message: str, *, location: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.location = location

    def __str__(self) -> str:
        if self.location:
            return f"{self.message} (in {self.location})"
        return self.message


class ConfigError(SocError):
    """A configuration value is missing, unknown or of the wrong type; the location is the key."""


class StoreError(SocError):
    """The store cannot be opened, read or written; the location is the file or the cluster."""


class DissectError(SocError):
    """Bytes that do not parse as the protocol claims; the location is capture, frame, offset."""


class RuleError(SocError):
    """A detection rule that does not load or compile; the location is the rule file and line."""


class AuthError(SocError):
    """Authentication or authorisation failed."""


class CaptureError(SocError):
    """A capture cannot be read (not a pcap, truncated, no permission); the location is the file."""


class IncidentError(SocError):
    """A change an incident cannot take; the location names the field at fault."""
