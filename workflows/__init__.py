"""Deterministic orchestration only: no I/O, clocks, randomness or threads here."""
