"""What the gateway shows of itself: metrics, traces, logs, the API dump."""
