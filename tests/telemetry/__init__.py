"""Metrics, traces, logs and the API dump."""
