"""Shared type aliases."""

from __future__ import annotations

from typing import Any

#: An Elastic Common Schema document: nested dicts of JSON values, keyed by ECS field sets.
Event = dict[str, Any]

#: A JSON value as stored and returned.
JSON = Any
