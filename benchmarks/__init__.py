"""Benchmarks: measured by running them, never asserted by tests."""
