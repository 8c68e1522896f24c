"""Passive collectors: capture sources, TCP reassembly, one dissector per protocol."""
