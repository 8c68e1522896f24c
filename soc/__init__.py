"""Industrial SOC toolkit: core (configuration, events, store, CLI)."""

__version__ = "0.1.0"
