"""Interceptions, the inner loop, passthrough, resilience and faults over loopback."""
