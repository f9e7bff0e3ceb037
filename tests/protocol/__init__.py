"""The sans-I/O server-sent events codec."""
