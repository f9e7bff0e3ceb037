"""The HTTP layer: bad input, connections, the server's limits."""
