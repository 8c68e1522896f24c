"""Sigma rules shipped as package data: one folder per protocol, processing pipelines beside."""

from pathlib import Path


def rules_dir() -> Path:
    """Return the folder that holds the bundled Sigma rules."""
    return Path(__file__).parent
