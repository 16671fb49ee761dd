"""Fuzzers of the gateway's parsers, cores and packet paths (docs/robustness.md)."""
